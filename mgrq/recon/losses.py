"""Loss terms of the reconstruction objective, and the hook for adding new ones.

The objective of one iteration is

    L = sum_i w_i * L_i / n_i  +  round_weight * gate(t) * sum_layers sum(1 - |2h(V) - 1|^beta(t))

over the active loss terms ``i`` (``n_i = 1`` with ``fusion='sum'``; with ``fusion='normalized'``
``n_i`` is the term's detached value at its first evaluation in the unit), plus AdaRound's
rounding regularizer while rounding is learned.

**The hook.** A loss term is a :class:`LossTerm` subclass. The engine calls, per unit and stage:

1. ``term.setup(recon)`` once before iteration 0, with a :class:`~mgrq.recon.engine.UnitRecon`
   (the unit, its cached inputs/targets, the frozen FP tail, cached FP logits, the unit's
   quantized layers and a helper for FP per-layer outputs). Precompute what the term needs
   here (e.g. FP per-layer statistics of the calibration images).
2. ``term(ctx)`` inside the traced training step, on iterations ``it`` with
   ``it % term.every == 0``, with a :class:`StepContext`; it returns a scalar tensor. It must be
   free of host synchronisation (no ``.item()``, no data-dependent shapes) so the step can run
   under ``torch.compile`` and CUDA graphs.
3. ``term.teardown()`` after the unit (free cached tensors).

Set ``needs_taps = True`` to get ``ctx.taps``: the outputs of every quantized Linear/Conv of the
unit on the quantized path of this iteration (forward hooks; no second forward pass). Set
``needs_fp_taps = True`` to also get ``ctx.fp_taps``, the same layers in full precision on the
batch's FP input (one extra no-grad FP forward of the unit); per-image FP statistics can instead
be precomputed in ``setup`` with ``recon.fp_taps(x)`` and gathered with ``ctx.idx``.

Fusion note: with ``fusion='normalized'`` every term starts near ``w_i`` while the rounding
regularizer keeps its raw scale (``round_weight`` times a sum over all weights of the unit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from mgrq.recon.engine import UnitRecon


@dataclass
class StepContext:
    """What a loss term sees in one iteration (tensors on the compute device).

    Attributes:
        idx: ``[B]`` int64 indices of this batch in the calibration set (index cached per-image
            tensors with ``t.index_select(0, ctx.idx)``).
        x: ``[B, ...]`` the unit input actually used (after QDrop mixing).
        x_q, x_fp: ``[B, ...]`` the batch's cached inputs from the quantized and the FP model.
        out: ``[B, ...]`` the unit output on the quantized path (requires grad).
        target: ``[B, ...]`` the cached FP output of the unit for the same images.
        fisher: ``[B, ...]`` Fisher weights of the output error, or None.
        taps: quantized-layer fqn -> output ``[B, ..., C_out]`` of that layer in this forward
            (filled only when some active term has ``needs_taps``).
        fp_taps: the same layers' outputs when the unit runs in full precision on ``x_fp`` (no
            grad; filled only when some active term has ``needs_fp_taps``; costs one FP forward).
        step: ``[]`` float32, the iteration index (a device tensor: use it, not a Python int, in
            schedules so that a compiled/captured step stays valid).
        recon: the unit's :class:`~mgrq.recon.engine.UnitRecon` (tail, FP logits, ...).
    """

    idx: torch.Tensor
    x: torch.Tensor
    x_q: torch.Tensor
    x_fp: torch.Tensor
    out: torch.Tensor
    target: torch.Tensor
    fisher: torch.Tensor | None
    taps: dict[str, torch.Tensor]
    fp_taps: dict[str, torch.Tensor]
    step: torch.Tensor
    recon: UnitRecon


class LossTerm:
    """Base class of a loss term (see the module docstring for the protocol).

    Attributes:
        name: key of the term in the run record (unique within a unit).
        weight: ``w_i`` in the fused objective.
        every: evaluate on iterations ``it`` with ``it % every == 0`` (1 = every iteration);
            the engine keeps one traced step per set of active terms.
        needs_taps: fill ``ctx.taps`` with the quantized layers' outputs.
        needs_fp_taps: fill ``ctx.fp_taps`` (one extra FP forward of the unit, no grad).
    """

    name: str = "term"
    weight: float = 1.0
    every: int = 1
    needs_taps: bool = False
    needs_fp_taps: bool = False

    def setup(self, recon: UnitRecon) -> None:
        """Called once per unit before the first iteration."""

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        raise NotImplementedError

    def teardown(self) -> None:
        """Called after the unit (also when it failed)."""


def channel_error(out: torch.Tensor, target: torch.Tensor, p: float = 2.0, weight: torch.Tensor | None = None) -> torch.Tensor:
    """``|out - target|^p`` (times ``weight``) summed over the last (channel) dim, averaged over
    every other dim (tokens / positions and batch): ``[B, ..., C] -> []``."""
    d = (out.float() - target.float()).abs()
    e = d.square() if p == 2.0 else d.pow(p)
    if weight is not None:
        e = e * weight
    return e.sum(-1).mean()


class OutputError(LossTerm):
    """The block term: output error ``|y_hat - y|^p`` summed over channels, averaged over tokens
    and batch (BRECQ/QDrop's ``lp_loss`` with the channel dim of a ``[B, N, C]`` tensor)."""

    name = "block"

    def __init__(self, p: float = 2.0, weight: float = 1.0):
        self.p, self.weight = p, weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return channel_error(ctx.out, ctx.target, self.p)


class FisherError(LossTerm):
    """BRECQ's Fisher-diagonal block term: ``(y_hat - y)^2 * w`` with cached ``w = (|g| + d)^2``,
    ``g`` the gradient of the model's KL loss w.r.t. the unit output; summed over channels,
    averaged over tokens and batch."""

    name = "block"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        if ctx.fisher is None:
            raise RuntimeError("FisherError needs Fisher weights in the cache (block_loss='fisher')")
        return channel_error(ctx.out, ctx.target, 2.0, ctx.fisher)


def logit_kl(logits: torch.Tensor, fp_logits: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
    """``tau^2 * KL(softmax(fp / tau) || softmax(logits / tau))``, averaged over the batch
    (``[B, K], [B, K] -> []``)."""
    logp = F.log_softmax(logits.float() / tau, dim=-1)
    logq = F.log_softmax(fp_logits.float() / tau, dim=-1)
    return (tau * tau) * F.kl_div(logp, logq, reduction="batchmean", log_target=True)


class LogitKL(LossTerm):
    """The head unit's term: KL between the FP logits and the quantized logits (APHQ-ViT's ViT
    port of BRECQ/QDrop)."""

    name = "block"

    def __init__(self, weight: float = 1.0):
        self.weight = weight

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        return logit_kl(ctx.out, ctx.target)


# ---- schedules (tensor functions of the iteration index, safe inside a captured step) --------
def beta_at(step: torch.Tensor, iters: int, warmup: float, start: float, end: float) -> torch.Tensor:
    """AdaRound's temperature at iteration ``step`` (0-based): ``start`` until the warm-up ends,
    then linear to ``end`` (BRECQ's ``LinearTempDecay`` evaluated at ``count = step + 1``)."""
    t = step + 1.0
    t0 = warmup * iters
    rel = ((t - t0) / max(iters - t0, 1e-9)).clamp(0.0, 1.0)
    return torch.where(t < t0, torch.full_like(t, start), end + (start - end) * (1.0 - rel))


def round_gate(step: torch.Tensor, iters: int, warmup: float) -> torch.Tensor:
    """1 once the warm-up is over (``count = step + 1 >= warmup * iters``), else 0."""
    return ((step + 1.0) >= warmup * iters).float()


def cosine_lr(step: torch.Tensor, base: float, iters: int) -> torch.Tensor:
    """``CosineAnnealingLR(T_max=iters, eta_min=0)``: ``base * (1 + cos(pi * step / iters)) / 2``."""
    return base * 0.5 * (1.0 + torch.cos(step * (math.pi / iters)))
