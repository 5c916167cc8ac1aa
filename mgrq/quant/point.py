"""Named quantization points.

A :class:`QuantPoint` sits where a tensor is quantized (a Linear's input or weight, a matmul
operand, the image). It holds a quantizer chosen by a method and an on/off switch; with the
switch off (or no quantizer) it returns its input unchanged, so a wrapped model with every point
off computes exactly what the original model does.

Methods observe or initialize points with ordinary forward pre-hooks on the point module (see
:func:`mgrq.quant.calib.lazy_init`), around a plain forward loop.
"""

from __future__ import annotations

import torch
from torch import nn

# Tags: what a point quantizes. Methods choose quantizers by tag.
WEIGHT = "weight"
IMAGE = "image"  # the patch-embedding conv input (8-bit by default)
POST_LN = "post_ln"  # input of qkv / fc1 / Swin reduction (after a LayerNorm)
POST_GELU = "post_gelu"  # input of fc2
ATTN_OUT = "attn_out"  # input of attn.proj
HEAD_IN = "head_in"  # input of the classifier (after the final norm; never reparameterized)
LINEAR_IN = "linear_in"  # any other Linear input
Q, K, V = "q", "k", "v"  # matmul operands (k arrives transposed: [B, H, d, N])
POST_SOFTMAX = "post_softmax"  # first operand of softmax @ v
TAGS = (WEIGHT, IMAGE, POST_LN, POST_GELU, ATTN_OUT, HEAD_IN, LINEAR_IN, Q, K, V, POST_SOFTMAX)


class QuantPoint(nn.Module):
    """One named place where a tensor is quantized.

    Attributes:
        name: fully qualified name in the wrapped model (set by surgery), e.g.
            ``blocks.0.attn.qkv.act_q``.
        kind: ``"weight"`` or ``"act"``.
        tag: one of :data:`TAGS`.
        bits: the bit-width the layer policy assigned (methods build quantizers with it).
        quantizer: the quantizer module, or None.
        enabled: quantize when True (and a quantizer is set).
        drop_prob: QDrop's activation dropping: with probability ``p`` per element the point
            returns the full-precision value (0 = off; set only during reconstruction).
    """

    def __init__(self, kind: str, tag: str, bits: int = 8):
        super().__init__()
        if kind not in ("weight", "act"):
            raise ValueError(f"kind={kind!r}: expected 'weight' or 'act'")
        if tag not in TAGS:
            raise ValueError(f"tag={tag!r}: expected one of {', '.join(TAGS)}")
        self.name = ""
        self.kind, self.tag, self.bits = kind, tag, bits
        self.quantizer: nn.Module | None = None
        self.enabled = False
        self.drop_prob = 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or self.quantizer is None:
            return x
        xq = self.quantizer(x)
        if self.drop_prob > 0.0:
            return torch.where(torch.rand_like(x) < self.drop_prob, x, xq)
        return xq

    def extra_repr(self) -> str:
        return f"{self.name or '?'}: {self.kind}/{self.tag}, bits={self.bits}, enabled={self.enabled}"
