"""timm ViT/DeiT/Swin -> quantizable models (see :mod:`mgrq.surgery.wrap`)."""

from mgrq.surgery.wrap import (
    FP,
    SUPPORTED,
    LayerPolicy,
    QuantModel,
    Unit,
    family_of,
    quantize_model,
)

__all__ = ["FP", "SUPPORTED", "LayerPolicy", "QuantModel", "Unit", "family_of", "quantize_model"]
