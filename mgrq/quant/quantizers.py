"""Quantizer modules: uniform affine (any granularity, optional LSQ step learning) and log2 /
log-sqrt2 for post-softmax values, with their initializers (min-max, percentile search, Lp
search over a shrink grid).

A quantizer maps a tensor to its fake-quantized value (same shape, same dtype). It is placed at a
:class:`~mgrq.quant.point.QuantPoint`, which decides whether it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from mgrq.quant import functional as QF

PERCENTILES = (0.999, 0.9999, 0.99999)  # RepQ-ViT's three-percentile search


@dataclass(frozen=True)
class Granularity:
    """Which entries share a step: the whole tensor, each index of ``axis`` (``channel``), or
    ``groups`` equal slices of ``axis`` (``group``, e.g. one step per attention head)."""

    kind: str = "tensor"
    axis: int = -1
    groups: int = 1

    def __post_init__(self) -> None:
        if self.kind not in ("tensor", "channel", "group"):
            raise ValueError(f"granularity.kind={self.kind!r}: expected 'tensor', 'channel' or 'group'")
        if self.kind == "group" and self.groups < 1:
            raise ValueError(f"granularity.groups={self.groups}: expected >= 1")

    def reduce_axis(self) -> int | None:
        return None if self.kind == "tensor" else self.axis


PER_TENSOR = Granularity()


def per_channel(axis: int) -> Granularity:
    return Granularity("channel", axis)


def per_group(axis: int, groups: int) -> Granularity:
    return Granularity("group", axis, groups)


def _rows(x: torch.Tensor, g: Granularity) -> torch.Tensor:
    """``x`` as ``[R, n]``: one row per step (1 row per tensor, C per channel, G per group)."""
    x2 = QF.channels_first(x.detach(), g.reduce_axis())
    if g.kind == "group":
        c = x2.shape[0]
        if c % g.groups:
            raise ValueError(f"granularity.groups={g.groups} does not divide {c} channels")
        x2 = x2.reshape(g.groups, -1)
    return x2.float()


class UniformQuantizer(nn.Module):
    """Uniform affine quantizer ``x_hat = (clamp(round(x / s) + z, qmin, qmax) - z) * s``.

    Args:
        bits: 2..16.
        signed: integer range ``[-2^(b-1), 2^(b-1) - 1]`` instead of ``[0, 2^b - 1]``.
        symmetric: zero point fixed at the middle of the range (0 for signed).
        granularity: per tensor, per channel of an axis, or per group of an axis.
        integer_zero_point: round the zero point at init (RepQ-ViT's reparameterization later
            sets a fractional one through :meth:`set_params`).
        divide: compute ``round(x / s)`` as RepQ-ViT's code, not ``round(x * (1 / s))`` as torch's
            fused fake-quant kernels (which it then does not use); without gradients only.
    """

    def __init__(
        self,
        bits: int,
        signed: bool = False,
        symmetric: bool = False,
        granularity: Granularity = PER_TENSOR,
        integer_zero_point: bool = True,
        divide: bool = False,
    ):
        super().__init__()
        QF.check_bits(bits)
        self.bits, self.signed, self.symmetric = bits, signed, symmetric
        self.granularity = granularity
        self.integer_zero_point = integer_zero_point
        self.divide = divide
        self.qmin, self.qmax = QF.qrange(bits, signed)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.initialized = False
        self.lsq = False
        self._fast = False
        self._zp_int = torch.zeros((), dtype=torch.int32)

    # ---- parameters ------------------------------------------------------------------------
    def set_params(self, scale: torch.Tensor, zero_point: torch.Tensor) -> None:
        """Set the step(s) and zero point(s); shapes ``[]`` per tensor, ``[R]`` otherwise."""
        scale = scale.detach().float().reshape(-1 if scale.numel() > 1 else ())
        zero_point = zero_point.detach().float().reshape(scale.shape)
        with torch.no_grad():
            if isinstance(self.scale, nn.Parameter):
                self.scale = nn.Parameter(scale.clone().to(self.scale.device), requires_grad=self.scale.requires_grad)
            else:
                self.scale = scale.clone().to(self.scale.device)
            self.zero_point = zero_point.clone().to(self.zero_point.device)
        self.initialized = True
        self._refresh_fast_path()

    def _refresh_fast_path(self) -> None:
        """torch's fused fake-quant kernels apply (bit-identical) when the zero point is an
        integer inside the integer range; fractional or out-of-range zero points (RepQ-ViT,
        percentile ranges that exclude 0) use the composite path, and so does ``divide``.
        ``python -m benchmarks.quantizer_paths`` times both (``docs/benchmarks/quantizer_paths-intel.json``,
        a 2-core Intel Xeon, ViT-B sizes): the composite form took 0.25-0.4x the kernel's time on
        per-channel weights and head-wise matmul operands at 1 and 2 threads; on Linear inputs
        0.4-0.7x at 1 thread and 1.1-1.6x at 2 (earlier, unsaved runs gave 0.7-0.9x there). A tiny_vit and
        a tiny_swin W4A4 evaluation took the same time either way within noise, so the kernels
        stay in use."""
        z = self.zero_point
        self._fast = not self.divide and bool(
            torch.equal(z, z.round()) and bool((z >= self.qmin).all()) and bool((z <= self.qmax).all())
        )
        self._zp_int = z.round().to(torch.int32)

    def learn_scale(self, enabled: bool = True) -> None:
        """Make the step a learnable parameter trained with LSQ's gradient scaling."""
        if enabled and not isinstance(self.scale, nn.Parameter):
            s = self.scale.detach().clone()
            del self.scale
            self.scale = nn.Parameter(s)
        elif not enabled and isinstance(self.scale, nn.Parameter):
            s = self.scale.detach().clone()
            del self.scale
            self.register_buffer("scale", s)
        self.lsq = enabled

    def _view(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        g = self.granularity
        if g.kind == "tensor" or t.dim() == 0:
            return t
        axis = g.axis % x.dim()
        if g.kind == "group":
            t = t.repeat_interleave(x.shape[axis] // g.groups)
        shape = [1] * x.dim()
        shape[axis] = -1
        return t.view(shape)

    # ---- initializers ----------------------------------------------------------------------
    def _params_for(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return QF.affine_params(lo, hi, self.bits, self.signed, self.symmetric, self.integer_zero_point)

    def _quant_rows(self, rows: torch.Tensor, scale: torch.Tensor, zp: torch.Tensor) -> torch.Tensor:
        return QF.fake_quant(rows, scale[:, None], zp[:, None], self.qmin, self.qmax, self.divide)

    def init_minmax(self, x: torch.Tensor) -> None:
        """Steps from the min/max of ``x`` (range widened to include 0)."""
        QF.check_finite(x, "UniformQuantizer.init_minmax")
        rows = _rows(x, self.granularity)
        lo = rows.amin(dim=1).clamp(max=0)
        hi = rows.amax(dim=1).clamp(min=0)
        self.set_params(*self._params_for(lo, hi))

    def init_percentile(self, x: torch.Tensor, percentiles: Sequence[float] = PERCENTILES, p: float = 2.0,
                        quantile: str = "exact") -> None:
        """RepQ-ViT's search: for each ``pct``, ``max = quantile(x, pct)``,
        ``min = quantile(x, 1 - pct)``; keep, per step, the candidate with the lowest mean
        ``|x - x_hat|^p``. ``quantile``: how the quantiles are taken (``exact``, or as the
        reference's ``torch.quantile`` call: :func:`~mgrq.quant.functional.quantile_rows`)."""
        QF.check_finite(x, "UniformQuantizer.init_percentile")
        rows = _rows(x, self.granularity)
        best_err = best_s = best_z = None
        for pct in percentiles:
            hi = QF.quantile_rows(rows, pct, quantile)
            lo = QF.quantile_rows(rows, 1.0 - pct, quantile)
            s, z = self._params_for(lo, hi)
            err = QF.lp_error(rows, self._quant_rows(rows, s, z), p)
            if best_err is None:
                best_err, best_s, best_z = err, s, z
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_s = torch.where(better, s, best_s)
                best_z = torch.where(better, z, best_z)
        assert best_s is not None and best_z is not None
        self.set_params(best_s, best_z)

    def init_lp_search(self, x: torch.Tensor, p: float = 2.4, n: int = 80, step: float = 0.01) -> None:
        """Shrink-grid search (BRECQ/QDrop weight init): candidates ``[min, max] * (1 - i*step)``
        for ``i < n``; keep, per step, the lowest mean ``|x - x_hat|^p``."""
        QF.check_finite(x, "UniformQuantizer.init_lp_search")
        rows = _rows(x, self.granularity)
        x_min, x_max = rows.amin(dim=1).clamp(max=0), rows.amax(dim=1).clamp(min=0)
        best_err = torch.full_like(x_min, float("inf"))
        best_s, best_z = self._params_for(x_min, x_max)
        for i in range(n):
            f = 1.0 - i * step
            s, z = self._params_for(x_min * f, x_max * f)
            err = QF.lp_error(rows, self._quant_rows(rows, s, z), p)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            best_s, best_z = torch.where(better, s, best_s), torch.where(better, z, best_z)
        self.set_params(best_s, best_z)

    # ---- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            raise RuntimeError("UniformQuantizer used before initialization (call an init_* method)")
        if self._fast and not (torch.is_grad_enabled() and (x.requires_grad or self.scale.requires_grad)):
            return self._fused(x)
        s = self._view(self.scale, x)
        if self.lsq:
            n_per_step = x.numel() / max(self.scale.numel(), 1)
            s = QF.grad_scale(s, 1.0 / (n_per_step * self.qmax) ** 0.5)
        return QF.fake_quant(x, s, self._view(self.zero_point, x), self.qmin, self.qmax, self.divide)

    def _fused(self, x: torch.Tensor) -> torch.Tensor:
        scale, zp = self.scale.detach(), self._zp_int.to(x.device)
        if self.granularity.kind == "tensor" or scale.dim() == 0:
            return torch.fake_quantize_per_tensor_affine(x, scale.reshape(()), zp.reshape(()), self.qmin, self.qmax)
        axis = self.granularity.axis % x.dim()
        if self.granularity.kind == "group":
            rep = x.shape[axis] // self.granularity.groups
            scale, zp = scale.repeat_interleave(rep), zp.repeat_interleave(rep)
        return torch.fake_quantize_per_channel_affine(x, scale, zp, axis, self.qmin, self.qmax)

    def _apply(self, fn, recurse=True):  # keep the int zero point on the module's device
        out = super()._apply(fn, recurse)
        self._zp_int = self.zero_point.round().to(torch.int32)
        return out

    def extra_repr(self) -> str:
        g = self.granularity
        groups = f", groups={g.groups}" if g.kind == "group" else ""
        gran = g.kind if g.kind == "tensor" else f"{g.kind}(axis={g.axis}{groups})"
        return (f"bits={self.bits}, {'signed' if self.signed else 'unsigned'}, "
                f"{'symmetric' if self.symmetric else 'asymmetric'}, {gran}, lsq={self.lsq}"
                + (", divide" if self.divide else ""))


class LogQuantizer(nn.Module):
    """Log quantizer for post-softmax values in ``[0, 1]``: base 2 (``log2``) or base sqrt(2)
    (``sqrt2``, RepQ-ViT's log-sqrt2). One step per tensor."""

    def __init__(self, bits: int, base: str = "sqrt2"):
        super().__init__()
        QF.check_bits(bits)
        if base not in ("2", "sqrt2"):
            raise ValueError(f"base={base!r}: expected '2' or 'sqrt2'")
        self.bits, self.base = bits, base
        self.register_buffer("scale", torch.ones(()))
        self.initialized = False

    def quant(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        fn = QF.log_sqrt2_quant if self.base == "sqrt2" else QF.log2_quant
        return fn(x, scale, self.bits)

    def set_scale(self, scale: torch.Tensor) -> None:
        with torch.no_grad():
            self.scale = scale.detach().float().reshape(()).clone().to(self.scale.device)
        self.initialized = True

    def init_percentile(self, x: torch.Tensor, percentiles: Sequence[float] = PERCENTILES,
                        quantile: str = "exact") -> None:
        """RepQ-ViT's search: candidate steps ``quantile(x, pct)``; keep the lowest MSE
        (``quantile``: as for :meth:`UniformQuantizer.init_percentile`)."""
        QF.check_finite(x, "LogQuantizer.init_percentile")
        rows = x.detach().float().reshape(1, -1)
        best = None
        for pct in percentiles:
            d = QF.quantile_rows(rows, pct, quantile)[0].clamp_min(QF.SCALE_FLOOR)
            err = float(((rows - self.quant(rows, d)) ** 2).mean())
            if best is None or err < best[0]:
                best = (err, d)
        assert best is not None
        self.set_scale(best[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.initialized:
            raise RuntimeError("LogQuantizer used before initialization (call init_percentile)")
        return self.quant(x, self.scale)

    def extra_repr(self) -> str:
        return f"bits={self.bits}, base={self.base}"
