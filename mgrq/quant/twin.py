"""Twin-uniform quantizers (PTQ4ViT, Yuan et al., ECCV 2022): two uniform ranges with different
steps inside one b-bit code, one bit of which flags the range.

- :class:`PostGeluTwinQuantizer` (the input of ``fc2``): negative values on the step
  ``neg_scale`` with codes ``[-2^(b-1), 0]``, positive values on the step ``scale`` with codes
  ``[0, 2^(b-1) - 1]``. PTQ4ViT fixes ``neg_scale = 0.16997 / 2^(b-1)`` (GELU's minimum is
  -0.16997) and searches ``scale``. Each value is quantized in the range of its sign; the
  reference code *adds* the two ranges' outputs, which gives the same values here, because the
  range a value does not belong to always rounds it to 0.

- :class:`SoftmaxTwinQuantizer` (post-softmax values in ``[0, 1]``): codes ``[0, 2^(b-1) - 1]``
  in each range; the low range ``R1`` has the step ``split / (2^(b-1) - 1)`` (it ends exactly at
  ``split``), the high range ``R2`` the step ``1 / (2^(b-1) - 1)`` (it ends exactly at 1).

  * ``mode="select"`` (the paper): ``x < split`` -> ``R1``, else ``R2``. Not monotone where
    ``R2`` rounds the split down (``round(split (2^(b-1) - 1)) / (2^(b-1) - 1) < split``): a value
    just below the split comes back as ``split``, one just above it lower. Every split under half
    a high step, ``0.5 / (2^(b-1) - 1)``, is such a split (at 3 bits: under 1/6; there values just
    above it come back as 0). The paper's definition, kept.
  * ``mode="sum"`` (the reference code as written, ``quant_input_A`` of
    ``SoSPTQSLBatchingQuantMatMul``): ``x_hat = Q_R1(min(x, split)) + Q_R2(max(x, split))``, so a
    value in ``R2`` comes back ``split`` too large and a value in ``R1`` comes back
    ``Q_R2(split)`` too large (0 when ``split < 0.5 / (2^(b-1) - 1)``).

Both take any tensor shape and return the same shape. Reference: hahnyuan/PTQ4ViT@b42c790,
``quant_layers/linear.py`` (``PostGeluPTQSLBatchingQuantLinear``) and ``quant_layers/matmul.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from mgrq.quant import functional as QF

GELU_MIN = 0.16997124254703522  # -min_x GELU(x), the constant of PTQ4ViT's post-GELU quantizer
TWIN_MODES = ("select", "sum")


def post_gelu_twin_quant(
    x: torch.Tensor, scale: torch.Tensor | float, neg_scale: float, bits: int
) -> torch.Tensor:
    """``x >= 0``: ``clamp(round(x / scale), 0, 2^(b-1) - 1) * scale``;
    ``x < 0``: ``clamp(round(x / neg_scale), -2^(b-1), 0) * neg_scale``. ``scale`` broadcasts."""
    half = 2 ** (bits - 1)
    pos = torch.clamp(torch.round(x / scale), 0, half - 1) * scale
    neg = torch.clamp(torch.round(x / neg_scale), -half, 0) * neg_scale
    return torch.where(x >= 0, pos, neg)


def softmax_twin_quant(
    x: torch.Tensor, split: torch.Tensor | float, bits: int, mode: str = "select"
) -> torch.Tensor:
    """Twin-uniform quantization of values in ``[0, 1]`` with the range boundary ``split``
    (``split`` broadcasts). See the module docstring for ``mode``."""
    if mode not in TWIN_MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(TWIN_MODES)}")
    top = 2 ** (bits - 1) - 1
    split = torch.as_tensor(split, dtype=x.dtype, device=x.device)
    low_step = split / top
    if mode == "sum":
        high = torch.clamp(torch.round(torch.maximum(x, split).clamp(max=1.0) * top), 0, top) / top
        low = torch.clamp(torch.round(torch.minimum(x, split).clamp(min=0.0) / low_step), 0, top) * low_step
        return high + low
    high = torch.clamp(torch.round(x * top), 0, top) / top
    low = torch.clamp(torch.round(x / low_step), 0, top) * low_step
    return torch.where(x < split, low, high)


class PostGeluTwinQuantizer(nn.Module):
    """PTQ4ViT's post-GELU twin-uniform quantizer (one positive step per tensor)."""

    scale: torch.Tensor

    def __init__(self, bits: int, neg_scale: float | None = None):
        super().__init__()
        QF.check_bits(bits)
        self.bits = bits
        self.neg_scale = GELU_MIN / 2 ** (bits - 1) if neg_scale is None else float(neg_scale)
        if self.neg_scale <= 0:
            raise ValueError(f"neg_scale={self.neg_scale}: expected > 0")
        self.register_buffer("scale", torch.ones(()))
        self.initialized = False

    def set_scale(self, scale: torch.Tensor | float) -> None:
        s = torch.as_tensor(scale, dtype=torch.float32).detach().reshape(())
        if not float(s) > 0:
            raise ValueError(f"scale={float(s)}: expected > 0")
        self.scale = s.clone().to(self.scale.device)
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            raise RuntimeError("PostGeluTwinQuantizer used before set_scale")
        return post_gelu_twin_quant(x, self.scale, self.neg_scale, self.bits)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, neg_scale={self.neg_scale:.6g}"


class SoftmaxTwinQuantizer(nn.Module):
    """PTQ4ViT's post-softmax twin-uniform quantizer (one split per tensor)."""

    split: torch.Tensor

    def __init__(self, bits: int, mode: str = "select"):
        super().__init__()
        QF.check_bits(bits)
        if mode not in TWIN_MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(TWIN_MODES)}")
        self.bits, self.mode = bits, mode
        self.register_buffer("split", torch.ones(()))
        self.initialized = False

    def set_split(self, split: torch.Tensor | float) -> None:
        s = torch.as_tensor(split, dtype=torch.float32).detach().reshape(())
        if not 0 < float(s) <= 1:
            raise ValueError(f"split={float(s)}: expected in (0, 1]")
        self.split = s.clone().to(self.split.device)
        self.initialized = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            raise RuntimeError("SoftmaxTwinQuantizer used before set_split")
        return softmax_twin_quant(x, self.split, self.bits, self.mode)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, mode={self.mode}"
