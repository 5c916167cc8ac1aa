"""Training-time activation quantizers used while a unit is reconstructed.

The engine puts these in place of a point's quantizer for the duration of a unit and puts the
original back afterwards (writing the learned step into it):

- :class:`LSQAct` wraps a :class:`~mgrq.quant.quantizers.UniformQuantizer`: the step becomes a
  parameter trained with LSQ's gradient (Esser et al., ICLR 2020), scaled by
  ``1 / sqrt(numel_per_step * qmax)`` as in QDrop's ``LSQFakeQuantize``.
- :class:`SteAct` wraps any other quantizer (the log-sqrt2 post-softmax one) with a fixed step:
  exact forward, identity (straight-through) backward, so gradients reach the layers before it.

Both also apply QDrop's dropping (``drop``: each element bypasses the quantizer with that
probability; this is what ``QuantPoint.drop_prob`` does, done here inside one pass, so the
engine leaves ``drop_prob`` at 0).

Speed: in eager mode the forward computes the value and two float multipliers in one no-grad
pass, so the backward is a multiply (``dx = dy * gx``) and a dot product (``ds = g * <dy, gs>``),
instead of the ~20 kernels of the autograd graph of the composite formula (``torch.where`` and
torch's fused fake-quant kernel are slow on CPU; arithmetic is vectorized). Under
``torch.compile`` :func:`mgrq.quant.functional.fake_quant` is traced instead (the same two
multipliers, out of place) and inductor fuses both passes. Forward values equal the wrapped
quantizer's (same operations in the same order).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from mgrq.quant import functional as QF
from mgrq.quant.quantizers import LogQuantizer, UniformQuantizer

_BIT_TABLES: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _bit_table(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``[256, 8]``: row ``b`` holds the 8 bits of ``b`` as 0/1 values."""
    key = (device, dtype)
    if key not in _BIT_TABLES:
        _BIT_TABLES[key] = ((torch.arange(256)[:, None] >> torch.arange(8)) & 1).to(device=device, dtype=dtype)
    return _BIT_TABLES[key]


def bernoulli_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """A float mask shaped like ``like``: 1 with probability ``p``, else 0. ``p = 0.5`` (QDrop's
    value) draws one random byte per 8 elements and expands its bits through a lookup table
    (8x less random-number generation, no comparison pass)."""
    if p == 0.5:
        n = like.numel()
        idx = torch.randint(0, 256, ((n + 7) // 8,), device=like.device)
        bits = _bit_table(like.device, like.dtype).index_select(0, idx)
        return bits.view(-1)[:n].view(like.shape)
    return (torch.rand_like(like) < p).to(like.dtype)


def mix(a: torch.Tensor, b: torch.Tensor, take_b: torch.Tensor) -> torch.Tensor:
    """Element-wise ``b where take_b == 1 else a`` for a 0/1 float mask (exact: ``lerp`` with a
    weight of exactly 0 or 1 returns an endpoint)."""
    return torch.lerp(a, b, take_b)


def _lsq_forward_math(x: torch.Tensor, s: torch.Tensor, z: torch.Tensor, keep: torch.Tensor | None,
                      qmin: int, qmax: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Out-of-place form of :class:`_LSQFakeQuant`'s forward (for ``compile='kernels'``):
    ``(x_hat, gx, gs)``."""
    out, inr, gs = QF.lsq_parts(x, s, z, qmin, qmax)
    if keep is None:
        return out, inr, gs
    return torch.lerp(out, x, keep), torch.maximum(inr, keep), gs * (1.0 - keep)


def _lsq_backward_math(dy: torch.Tensor, gx: torch.Tensor, gs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return dy * gx, (dy * gs).sum()


def _log_forward_math(x: torch.Tensor, scale: torch.Tensor, keep: torch.Tensor | None, bits: int) -> torch.Tensor:
    out = QF.log_sqrt2_quant(x, scale, bits)
    return out if keep is None else torch.lerp(out, x, keep)


_KERNELS: dict[str, Any] = {}


def kernel(name: str) -> Any:
    """The ``torch.compile``d (dynamic shapes) version of an element-wise kernel above: one fused
    loop per kernel instead of one pass per operation (compiled once per process)."""
    if name not in _KERNELS:
        fn = {"lsq_fwd": _lsq_forward_math, "lsq_bwd": _lsq_backward_math, "log_fwd": _log_forward_math}[name]
        _KERNELS[name] = torch.compile(fn, dynamic=True, fullgraph=True)
    return _KERNELS[name]


class _LSQFakeQuant(torch.autograd.Function):
    """``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s``, optionally dropped to ``x``
    where ``keep == 1``. Gradients: ``dx = dy * (in_range or kept)``; LSQ's
    ``ds = g * sum(dy * (x_hat/s - in_range * x/s))`` over the quantized elements."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, s: torch.Tensor, z: torch.Tensor,
                keep: torch.Tensor | None, qmin: int, qmax: int, g: float, kernels: bool) -> torch.Tensor:
        ctx.g, ctx.scale_shape, ctx.s_shape = g, scale.shape, s.shape
        ctx.kernels = kernels = kernels and s.numel() == 1
        if kernels:
            with torch.no_grad():
                out, gx, gs = kernel("lsq_fwd")(x, s, z, keep, qmin, qmax)
            ctx.save_for_backward(gx, gs)
            return out
        with torch.no_grad():
            v = x * torch.reciprocal(s)
            qq = torch.round(v).add_(z)  # round(x/s) + z
            cq = torch.clamp(qq, qmin, qmax)
            inr = torch.eq(cq, qq, out=qq)  # 1.0 inside the integer range (reuses qq)
            c = cq.sub_(z)  # x_hat / s
            out = c * s
            gs = c.sub_(v.mul_(inr))  # x_hat/s - in_range * x/s
            if keep is not None:
                out = mix(out, x, keep)
                gx = torch.maximum(inr, keep, out=v)  # kept elements pass the gradient through
                gs.addcmul_(gs, keep, value=-1.0)  # no step gradient from kept elements
            else:
                gx = inr
        ctx.save_for_backward(gx, gs)
        return out

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        gx, gs = ctx.saved_tensors
        if ctx.kernels:
            dx, ds = kernel("lsq_bwd")(dy, gx, gs)
            dscale = (ds * ctx.g).reshape(ctx.scale_shape) if ctx.needs_input_grad[1] else None
            return dx, dscale, None, None, None, None, None, None, None
        dx = dy * gx if ctx.needs_input_grad[0] else None
        dscale = None
        if ctx.needs_input_grad[1]:
            if len(ctx.s_shape) == 0 or all(d == 1 for d in ctx.s_shape):
                ds = torch.dot(dy.reshape(-1), gs.reshape(-1))
            else:
                ds = (dy * gs).sum_to_size(ctx.s_shape).reshape(-1)
                if ds.numel() != ctx.scale_shape.numel():  # group granularity: sum each group
                    ds = ds.view(ctx.scale_shape.numel(), -1).sum(1)
            dscale = (ds * ctx.g).reshape(ctx.scale_shape)
        return dx, dscale, None, None, None, None, None, None, None


def log_sqrt2_fast(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """:func:`mgrq.quant.functional.log_sqrt2_quant` with in-place operations (no ``%``, no
    ``where``): the same operations on the same values, so the same result bit for bit
    (``q mod 2 = 2 ceil(q/2) - q`` for the non-negative integers ``q``)."""
    levels = 2**bits
    q = torch.div(x, scale).log2_().mul_(-2.0).round_()
    alive = torch.lt(q, levels, out=torch.empty_like(q))  # 0 where the unclamped q >= 2^b
    q.clamp_(0, levels - 1)
    half = torch.div(q, 2).ceil_()
    odd = half.mul(2.0).sub_(q).mul_(math.sqrt(2.0) - 1.0).add_(1.0)
    return half.neg_().exp2_().mul_(scale).mul_(odd).mul_(alive)


class _Ste(torch.autograd.Function):
    """Forward ``fn(x, keep)`` (the quantized value, dropped to ``x`` where ``keep == 1``) without
    recording it; backward the identity."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fn: Any, keep: torch.Tensor | None) -> torch.Tensor:
        with torch.no_grad():
            return fn(x, keep)

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        return dy, None, None


class LSQAct(nn.Module):
    """LSQ-trainable copy of a uniform activation quantizer (``learn=False``: fixed step,
    straight-through gradient for the input), with QDrop dropping probability ``drop``.
    :meth:`commit` writes the step back into the wrapped quantizer."""

    def __init__(self, q: UniformQuantizer, learn: bool, drop: float = 0.0, kernels: bool = False):
        super().__init__()
        self.kernels = kernels
        if not q.initialized:
            raise RuntimeError("LSQAct: the quantizer is not initialized")
        if q.divide:  # its forms below compute x * (1 / s); divide is for calibration and evaluation
            raise ValueError("LSQAct: the quantizer divides (repq_vit division=divide); expected one that "
                             "multiplies by the reciprocal (the default), as the learned-step forms do")
        self.q = q  # the original (kept for commit and for its granularity view)
        self.qmin, self.qmax = q.qmin, q.qmax
        self.learn, self.drop = learn, drop
        self.scale = nn.Parameter(q.scale.detach().clone().float(), requires_grad=learn)
        self.register_buffer("zero_point", q.zero_point.detach().clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        n_per_step = xf.numel() / max(self.scale.numel(), 1)
        g = 1.0 / (n_per_step * self.qmax) ** 0.5
        s, z = self.q._view(self.scale, xf), self.q._view(self.zero_point, xf)
        keep = bernoulli_mask(xf, self.drop) if self.drop > 0 else None
        if torch.compiler.is_compiling():
            out = QF.fake_quant(xf, QF.grad_scale(s, g) if self.learn else s, z, self.qmin, self.qmax)
            if keep is not None:
                out = mix(out, xf, keep)
        else:
            out = _LSQFakeQuant.apply(xf, self.scale, s, z, keep, self.qmin, self.qmax, g, self.kernels)
        return out.to(x.dtype)

    @torch.no_grad()
    def commit(self) -> None:
        """Write the (learned) step into the wrapped quantizer."""
        if self.learn:
            self.q.set_params(self.scale.detach().clamp_min(QF.SCALE_FLOOR), self.zero_point)


class SteAct(nn.Module):
    """Any quantizer with a fixed step, straight-through backward (e.g. log-sqrt2 post-softmax),
    with QDrop dropping probability ``drop``."""

    def __init__(self, q: nn.Module, drop: float = 0.0, kernels: bool = False):
        super().__init__()
        self.q, self.drop, self.learn, self.kernels = q, drop, False, kernels
        self.fast = isinstance(q, LogQuantizer) and q.base == "sqrt2"

    def _quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.fast:
            return log_sqrt2_fast(x, self.q.scale, self.q.bits)
        return self.q(x)

    def _quant_mix(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        if self.fast and self.kernels:
            return kernel("log_fwd")(x, self.q.scale, keep, self.q.bits)
        out = self._quant(x)
        return out if keep is None else mix(out, x, keep)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        keep = bernoulli_mask(x, self.drop) if self.drop > 0 else None
        if torch.compiler.is_compiling():
            out = x + (self.q(x) - x).detach()
            return out if keep is None else mix(out, x, keep)
        return _Ste.apply(x, self._quant_mix, keep)

    def commit(self) -> None:
        pass
