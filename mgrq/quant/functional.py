"""Quantization as functions: integer ranges, LSQ gradient scaling, affine fake-quantization
(bit-exact with torch's fake-quant ops, with straight-through and LSQ gradients), exact
quantiles, and the log2 / log-sqrt2 quantizers used for post-softmax values.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from mgrq.errors import ConfigError

MIN_BITS, MAX_BITS = 2, 16
SCALE_FLOOR = 1e-8  # zero-width ranges (constant tensors) get this step instead of 0


def check_bits(bits: int, field: str = "bits") -> int:
    """Validate a bit-width: an int in 2..16, else ``ConfigError`` (a ``ValueError``) naming
    ``field``."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{field}={bits!r}: expected an integer bit-width in {MIN_BITS}..{MAX_BITS}")
    return bits


def qrange(bits: int, signed: bool) -> tuple[int, int]:
    """Integer range: unsigned ``[0, 2^b - 1]``, signed ``[-2^(b-1), 2^(b-1) - 1]``."""
    check_bits(bits)
    if signed:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def check_finite(x: torch.Tensor, where: str) -> None:
    """``ValueError`` naming ``where`` when ``x`` holds NaN or Inf."""
    if not bool(torch.isfinite(x).all()):
        bad = "NaN" if bool(torch.isnan(x).any()) else "Inf"
        raise ValueError(f"{where}: input contains {bad}; expected finite values")


def grad_scale(x: torch.Tensor, g: float) -> torch.Tensor:
    """Forward ``x``, backward gradient multiplied by ``g`` (LSQ's step-size gradient scale)."""
    return (x - x * g).detach() + x * g


def lsq_parts(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(x_hat, inr, gs)``: the fake-quantized value (as :func:`fake_quant`), the input's gradient
    multiplier ``inr`` (1 where the code ``round(x/s) + z`` lies in ``[qmin, qmax]``, its ends
    included, 0 beyond) and the step's, LSQ's ``x_hat/s - inr * x/s``. An infinite ``x`` gives the
    clamped value and a NaN ``gs`` (``inf * 0``), as the engine's eager LSQ step does (torch's
    learnable fake-quant kernel gives a finite step gradient there on the CPU)."""
    v = x * torch.reciprocal(scale)
    q = torch.round(v) + zero_point
    c = torch.clamp(q, qmin, qmax)
    inr = (c == q).to(x.dtype)
    c = c - zero_point
    return c * scale, inr, c - v * inr


class _FakeQuantLSQ(torch.autograd.Function):
    """:func:`fake_quant` with the gradients of :func:`lsq_parts`: the forward saves the two
    multipliers (only ``inr`` for a fixed step), the backward is ``dy * inr`` and ``sum(dy * gs)``
    over the step's broadcast."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int,
                qmax: int) -> torch.Tensor:
        out, inr, gs = lsq_parts(x, scale, zero_point, qmin, qmax)
        ctx.shapes = x.shape, scale.shape
        ctx.save_for_backward(inr, gs if ctx.needs_input_grad[1] else None)  # a fixed step: one tensor kept
        return out

    @staticmethod
    def backward(ctx: Any, dy: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        inr, gs = ctx.saved_tensors
        x_shape, s_shape = ctx.shapes
        dx = (dy * inr).sum_to_size(x_shape) if ctx.needs_input_grad[0] else None
        ds = (dy * gs).sum_to_size(s_shape) if ctx.needs_input_grad[1] else None
        return dx, ds, None, None, None


# How ``x / s`` is computed without gradients (the ``division`` field of ``repq_vit``, ``ptq4vit`` and
# ``base_ptq``): ``x * (1 / s)`` as torch's fused fake-quant kernels, or ``x / s`` as the reference code.
DIVISIONS = ("reciprocal", "divide")


def fake_quant(
    x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int, divide: bool = False
) -> torch.Tensor:
    """Affine fake-quantization ``(clamp(round(x / s) + z, qmin, qmax) - z) * s``.

    ``scale`` and ``zero_point`` broadcast against ``x``. The division is computed as
    ``x * (1 / s)`` exactly as torch's ``fake_quantize_per_*_affine`` kernels do, so results are
    bit-identical for integer zero points; fractional zero points (RepQ-ViT's reparameterized
    activations) are allowed. Gradients, as torch's ``_fake_quantize_learnable_*`` kernels and the
    engine's eager LSQ step give them: straight-through for ``x`` whose code lies in
    ``[qmin, qmax]``, its ends included, and zero beyond; LSQ's for ``scale`` when it requires
    grad (``x_hat/s - x/s`` inside, ``x_hat/s`` beyond); none for ``zero_point`` (one that requires
    grad is refused).

    With gradients this is an autograd function (:func:`lsq_parts` forward, two multiplies and a
    sum backward), not the composite formula: ``torch.clamp``'s own gradient is 0 at exactly
    ``qmin``/``qmax`` on torch 2.14 (1 up to 2.12; pytorch/pytorch#184574), and rounding puts many
    elements exactly there, where they carry the large terms of the step's gradient. It is the
    engine's compiled LSQ step (``torch.compile`` traces the function and fuses both passes). Its
    backward reads the two saved multipliers only. On a 2-core CPU the compiled steps stage of
    ``benchmarks.vs_brecq`` took 16.3 and 18.0 ms per iteration with it against 34.1 and 30.6 ms
    with the previous form, which let the gradients in through terms that are exactly zero
    forward (tree against tree, ``docs/benchmarks/vs_brecq-intel-steps-ab2.txt``).

    An infinite ``x`` is treated as the eager step treats it: its value is clamped to the range's
    end and passes no input gradient, and a learned step gets a NaN gradient, so the step is NaN
    after the update and the engine reports a non-finite loss at the next iteration, or after a
    unit's last iteration that the learned steps became NaN (the composite form before gave a
    NaN value at once). With a fixed step it is clamped silently.

    ``divide=True`` computes ``x / s`` as RepQ-ViT's quantizer code does (``round(x / delta)``),
    for calibration and evaluation only: the two differ in the last bit of some quotients, which
    moves a code where the quotient lies at a rounding tie (the ``division`` switch of ``repq_vit``,
    ``ptq4vit`` and ``base_ptq``).
    """
    if not (torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)):
        v = x / scale if divide else x * torch.reciprocal(scale)
        return (torch.clamp(torch.round(v) + zero_point, qmin, qmax) - zero_point) * scale
    if divide:
        raise ValueError("fake_quant: divide=True with gradients; expected it only without (calibration and "
                         "evaluation: the learned-step forms compute x * (1 / s))")
    if zero_point.requires_grad:
        raise ValueError("fake_quant: zero_point requires grad; expected a fixed zero point (the step is "
                         "learned, the zero point is not, as in LSQ)")
    out: torch.Tensor = _FakeQuantLSQ.apply(x, scale, zero_point, qmin, qmax)
    return out


def affine_params(
    x_min: torch.Tensor, x_max: torch.Tensor, bits: int, signed: bool, symmetric: bool,
    integer_zero_point: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step and zero point that map ``[x_min, x_max]`` onto the integer range.

    Symmetric: ``s = max(|min|, |max|) / ((qmax - qmin) / 2)``, ``z = 0`` for signed ranges and
    ``z = 2^(b-1)`` for unsigned. Asymmetric: ``s = (max - min) / (qmax - qmin)``,
    ``z = qmin - round(min / s)``. Zero-width ranges get the step ``SCALE_FLOOR``.
    """
    qmin, qmax = qrange(bits, signed)
    if symmetric:
        amax = torch.maximum(x_min.abs(), x_max.abs())
        scale = (amax / ((qmax - qmin) / 2)).clamp_min(SCALE_FLOOR)
        zp = torch.zeros_like(scale) if signed else torch.full_like(scale, float(2 ** (bits - 1)))
        return scale, zp
    scale = ((x_max - x_min) / (qmax - qmin)).clamp_min(SCALE_FLOOR)
    zp = qmin - x_min / scale
    if integer_zero_point:
        zp = zp.round()
    return scale, zp


def channels_first(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """``[C, rest]`` view of ``x`` with ``axis`` first, or ``[1, numel]`` for ``axis=None``."""
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


# How a percentile search takes its quantiles (``quantile_rows``'s ``mode``; ``repq_vit``'s
# ``quantile`` field): q as given, or as the reference's ``torch.quantile`` call computes it on
# the torch releases up to 2.13 (``torch2.13``) or from 2.14 on (``torch2.14``).
QUANTILE_MODES = ("exact", "torch2.13", "torch2.14")
TORCH_QUANTILE_CAP = 2**24  # torch.quantile's input limit before 2.14 ("input tensor is too large")


def quantile_rows(x2d: torch.Tensor, q: float, mode: str = "exact") -> torch.Tensor:
    """Per-row quantile of ``x2d`` ``[R, n]`` with linear interpolation, without
    ``torch.quantile``'s 16M-element input limit. Returns ``[R]``.

    ``mode`` (:data:`QUANTILE_MODES`):

    - ``exact`` (default): the rank ``q * (n - 1)`` from ``q`` as given, in float64.
    - ``torch2.13``: what RepQ-ViT's reference code gets on every torch release up to 2.13, bit
      for bit: ``torch.quantile`` rounds ``q`` to float32 (0.999 becomes 0.99900001287) and
      takes the rank ``q * (n - 1)`` in float32 too, so its fraction coarsens as ``n`` grows;
      rows over 2^24 elements it refuses, and the reference's ``except`` branch then takes
      ``numpy.percentile(x, q * 100)`` (float64 rank), cast to float32, which is computed here
      by the same call.
    - ``torch2.14``: what ``torch.quantile`` computes from torch 2.14 on, bit for bit: ``q``
      rounded to float32, the rank in float64, no size limit.

    The two ``torch`` modes stand for float32 rows (torch rounds ``q`` to the input's dtype), so
    they refuse any other dtype. The modes differ by a few 1e-4 relative on random rows of a few
    million elements, enough to move a calibration that is sequential and discrete (RepQ-ViT's:
    ``baselines/README.md``)."""
    if mode not in QUANTILE_MODES:
        raise ValueError(f"quantile mode {mode!r}: expected one of {', '.join(QUANTILE_MODES)}")
    if mode != "exact" and x2d.dtype != torch.float32:
        raise ValueError(f"quantile mode {mode!r} stands for torch.quantile on float32 rows; got {x2d.dtype}")
    n = x2d.shape[1]
    if mode == "torch2.13" and n > TORCH_QUANTILE_CAP:
        rows = x2d.detach().cpu().numpy()
        vals = [torch.tensor(np.percentile(r, q * 100), dtype=torch.float32) for r in rows]
        return torch.stack(vals).to(x2d.device)
    if mode == "torch2.13":
        rank32 = torch.tensor(q, dtype=torch.float32) * (n - 1)
        lo = int(rank32)
        frac: float | torch.Tensor = rank32 - lo  # float32, exact
    else:
        if mode == "torch2.14":
            q = torch.tensor(q, dtype=torch.float32).item()
        pos = q * (n - 1)
        lo = math.floor(pos)
        frac = pos - lo
    v_lo = torch.kthvalue(x2d, lo + 1, dim=1).values
    if float(frac) == 0.0 or lo == n - 1:
        return v_lo
    v_hi = torch.kthvalue(x2d, lo + 2, dim=1).values
    if mode == "exact":
        return v_lo + (v_hi - v_lo) * frac
    return torch.lerp(v_lo, v_hi, torch.as_tensor(frac, dtype=x2d.dtype).to(x2d.device))


def lp_error(x2d: torch.Tensor, x_hat2d: torch.Tensor, p: float) -> torch.Tensor:
    """Per-row mean ``|x - x_hat|^p`` of ``[R, n]`` tensors, ``[R]``."""
    return (x2d - x_hat2d).abs().pow(p).mean(dim=1)


def log2_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Log2 quantizer for values in ``[0, scale]``: ``q = clamp(round(-log2(x / s)), 0, 2^b - 1)``,
    ``x_hat = s * 2^-q``; entries whose unclamped ``q >= 2^b`` (including zeros) become 0."""
    levels = 2**bits
    q = torch.round(-torch.log2(x / scale))
    underflow = q >= levels
    q = q.clamp(0, levels - 1)
    return torch.where(underflow, torch.zeros_like(x), scale * torch.exp2(-q))


def log_sqrt2_quant(x: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """RepQ-ViT's log-sqrt2 quantizer: ``q = clamp(round(-2 log2(x / s)), 0, 2^b - 1)``,
    ``x_hat = s * 2^(-ceil(q/2)) * (1 + (q mod 2)(sqrt2 - 1))``; unclamped ``q >= 2^b`` -> 0."""
    levels = 2**bits
    q = torch.round(-2.0 * torch.log2(x / scale))
    underflow = q >= levels
    q = q.clamp(0, levels - 1)
    odd = (q % 2) * (math.sqrt(2.0) - 1.0) + 1.0
    x_hat = scale * torch.exp2(-torch.ceil(q / 2)) * odd
    return torch.where(underflow, torch.zeros_like(x), x_hat)
