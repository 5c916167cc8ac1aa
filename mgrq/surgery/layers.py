"""Quantizable layers. Each keeps the original module's parameters (the same ``Parameter``
objects) and adds :class:`~mgrq.quant.point.QuantPoint` children, so quantization off means the
original computation.

- ``QuantLinear`` / ``QuantConv2d``: ``act_q`` on the input, ``weight_q`` on the weight.
- ``QuantMatMul``: ``a_q`` and ``b_q`` on both operands of ``a @ b``.
- ``QuantAttention`` (timm ``Attention``) and ``QuantWindowAttention`` (timm Swin
  ``WindowAttention``): an attention forward of our own with the two matmuls as
  ``QuantMatMul`` (``matmul1``: ``q @ k^T``, ``matmul2``: ``softmax @ v``), computed explicitly
  whatever timm's fused-attention setting is.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mgrq.quant import point as P


class QuantLinear(nn.Linear):
    """``y = linear(act_q(x), weight_q(W), b)``; x: ``[..., in]`` -> y: ``[..., out]``."""

    act_q: P.QuantPoint
    weight_q: P.QuantPoint

    @classmethod
    def wrap(cls, m: nn.Linear, act_tag: str) -> QuantLinear:
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        q.in_features, q.out_features = m.in_features, m.out_features
        q.weight = m.weight
        q.bias = m.bias
        q.act_q = P.QuantPoint("act", act_tag)
        q.weight_q = P.QuantPoint("weight", P.WEIGHT)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(self.act_q(x), self.weight_q(self.weight), self.bias)


class QuantConv2d(nn.Conv2d):
    """``y = conv2d(act_q(x), weight_q(W), b)``; the patch embedding (image input)."""

    act_q: P.QuantPoint
    weight_q: P.QuantPoint

    @classmethod
    def wrap(cls, m: nn.Conv2d, act_tag: str = P.IMAGE) -> QuantConv2d:
        q = cls.__new__(cls)
        nn.Module.__init__(q)
        for attr in ("in_channels", "out_channels", "kernel_size", "stride", "padding",
                     "dilation", "transposed", "output_padding", "groups", "padding_mode",
                     "_reversed_padding_repeated_twice"):
            setattr(q, attr, getattr(m, attr))
        q.weight, q.bias = m.weight, m.bias
        q.act_q = P.QuantPoint("act", act_tag)
        q.weight_q = P.QuantPoint("weight", P.WEIGHT)
        return q

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(self.act_q(x), self.weight_q(self.weight), self.bias)


class QuantMatMul(nn.Module):
    """``a_q(a) @ b_q(b)`` for attention operands ``[B, H, N, d] @ [B, H, d, N]`` (or
    ``[B, H, N, N] @ [B, H, N, d]``)."""

    def __init__(self, a_tag: str, b_tag: str):
        super().__init__()
        self.a_q = P.QuantPoint("act", a_tag)
        self.b_q = P.QuantPoint("act", b_tag)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.a_q(a) @ self.b_q(b)


class QuantAttention(nn.Module):
    """timm ``Attention`` with quantizable matmuls. x: ``[B, N, C]`` -> ``[B, N, C]``.

    ``attn = matmul1(q, k^T) * scale`` (RepQ-ViT's placement: the q operand is quantized before
    scaling), optional mask, softmax, ``matmul2(attn, v)``.
    """

    def __init__(self, m: nn.Module):
        super().__init__()
        self.num_heads, self.head_dim = m.num_heads, m.head_dim
        self.attn_dim = getattr(m, "attn_dim", m.num_heads * m.head_dim)
        self.scale = m.scale
        self.qkv = m.qkv
        self.q_norm, self.k_norm = m.q_norm, m.k_norm
        self.norm = getattr(m, "norm", nn.Identity())
        self.gate = getattr(m, "gate", None)
        self.attn_drop, self.proj, self.proj_drop = m.attn_drop, m.proj, m.proj_drop
        self.matmul1 = QuantMatMul(P.Q, P.K)
        self.matmul2 = QuantMatMul(P.POST_SOFTMAX, P.V)

    def forward(
        self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False
    ) -> torch.Tensor:
        B, N, _ = x.shape
        gate = self.gate(x).sigmoid() if self.gate is not None else None
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = self.q_norm(q), self.k_norm(k)
        attn = self.matmul1(q, k.transpose(-2, -1)) * self.scale
        if is_causal:
            attn = attn + attn.new_full((N, N), float("-inf")).triu_(1)
        elif attn_mask is not None:
            if attn_mask.dtype == torch.bool:
                attn = attn.masked_fill(~attn_mask, float("-inf"))
            else:
                attn = attn + attn_mask
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.matmul2(attn, v)
        x = x.transpose(1, 2).reshape(B, N, self.attn_dim)
        x = self.norm(x)
        if gate is not None:
            x = x * gate
        return self.proj_drop(self.proj(x))


class QuantWindowAttention(nn.Module):
    """timm Swin ``WindowAttention`` with quantizable matmuls. x: ``[nW*B, N, C]``.

    ``attn = matmul1(q * scale, k^T)`` (timm's and the Swin forwards of RepQ-ViT / PTQ4ViT: the
    q operand is quantized after scaling), relative position bias, mask, softmax, ``matmul2``.
    """

    def __init__(self, m: nn.Module):
        super().__init__()
        self.num_heads, self.scale = m.num_heads, m.scale
        self.window_area = m.window_area
        self.relative_position_bias_table = m.relative_position_bias_table
        self.register_buffer("relative_position_index", m.relative_position_index, persistent=False)
        self.qkv, self.attn_drop, self.proj, self.proj_drop = m.qkv, m.attn_drop, m.proj, m.proj_drop
        self.matmul1 = QuantMatMul(P.Q, P.K)
        self.matmul2 = QuantMatMul(P.POST_SOFTMAX, P.V)

    def _rel_pos_bias(self) -> torch.Tensor:
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        bias = bias.view(self.window_area, self.window_area, -1).permute(2, 0, 1)
        return bias.unsqueeze(0)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B_, N, _ = x.shape
        qkv = self.qkv(x).reshape(B_, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        # q is scaled before the matmul, as timm's Swin and RepQ-ViT / PTQ4ViT's Swin forwards do
        attn = self.matmul1(q * self.scale, k.transpose(-2, -1))
        attn = attn + self._rel_pos_bias()
        if mask is not None:
            num_win = mask.shape[0]
            attn = attn.view(-1, num_win, self.num_heads, N, N) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, self.num_heads, N, N)
        attn = self.attn_drop(attn.softmax(dim=-1))
        x = self.matmul2(attn, v)
        x = x.transpose(1, 2).reshape(B_, N, -1)
        return self.proj_drop(self.proj(x))
