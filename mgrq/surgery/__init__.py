"""timm ViT/DeiT/Swin -> quantizable models (see :mod:`mgrq.surgery.wrap`)."""

from mgrq.surgery.wrap import (
    FP,
    SUPPORTED,
    LayerPolicy,
    QuantModel,
    Unit,
    family_of,
    point_names,
    quantize_model,
    unmatched_overrides,
)

__all__ = ["FP", "SUPPORTED", "LayerPolicy", "QuantModel", "Unit", "family_of", "point_names", "quantize_model",
           "unmatched_overrides"]
