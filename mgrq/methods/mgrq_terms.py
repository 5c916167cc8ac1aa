"""MGRQ's two extra loss terms, plugged into the reconstruction engine's :class:`LossTerm` hook.

- :class:`GlobalKL` (EBGS, extra-block global supervision): the quantized unit's output goes
  through the frozen full-precision tail (units ``k+1..L`` of the FP model) to logits, compared
  with the cached FP logits of the same images by
  ``tau^2 * KL(softmax(z_F / tau) || softmax(T_k(U_k^Q(X)) / tau))``. Gradients flow back through
  the tail into the unit's learned rounding variables and steps.
- :class:`LocalAlignment` (IBLS, intra-block local supervision): per quantized layer of the unit
  (ViT/DeiT/Swin: ``qkv``, ``proj``, ``fc1``, ``fc2``; Swin merge units: ``reduction``) the
  output distribution on the quantized path of this iteration (the engine's taps: no second
  forward pass) against the FP path on the same images:

  - ``moments``: ``mean_l [ ||mu_Q - mu_F||^2 + ||sigma_Q - sigma_F||^2 ] / C_l`` with
    per-channel mean and standard deviation over batch and tokens. The FP side is exact for the
    batch at a cost of ``2 C_l`` floats per image and layer: per image, the per-channel mean
    ``m_i`` and variance ``v_i`` over tokens are cached once; a batch's FP moments are then
    ``mu = mean_i m_i`` and ``var = mean_i v_i + mean_i (m_i - mu)^2`` (every image has the same
    number of tokens);
  - ``kl``: per token, ``KL(softmax_c(F) || softmax_c(Q))`` over the channels, averaged over
    tokens, batch and layers (the FP outputs come from the engine's ``fp_taps``: one extra
    no-grad FP forward of the unit per evaluation);
  - ``mse``: the mean squared error of the layer outputs, averaged over layers (same FP side).

Layer outputs of shape ``[B * windows, tokens, C]`` (Swin window attention) or ``[B, H, W, C]``
are viewed as ``[B, T, C]`` per image (windows of one image are contiguous), so every metric
compares the same images.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from mgrq.recon.losses import LossTerm, StepContext, logit_kl

if TYPE_CHECKING:
    from mgrq.recon.engine import UnitRecon

LOCAL_METRICS = ("moments", "kl", "mse")
STD_EPS = 1e-8  # sigma = sqrt(var + STD_EPS): a finite gradient for constant channels


def per_image(t: torch.Tensor, b: int) -> torch.Tensor:
    """A layer output ``[b * w, ..., C]`` as ``[b, T, C]`` (float32)."""
    return t.float().reshape(b, -1, t.shape[-1])


class _ChannelMoments(torch.autograd.Function):
    """``[B, T, C] -> ([C], [C])``: per-channel ``E[x]`` and ``E[x^2]`` over batch and tokens, with
    a one-pass backward ``dx = (g_1 + 2 g_2 x) / n`` (4x faster on CPU than autograd through
    ``var_mean``)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0] * x.shape[1]
        with torch.no_grad():
            mean = x.sum((0, 1)).div_(n)
            mean_sq = x.square().sum((0, 1)).div_(n)
        ctx.save_for_backward(x)
        return mean, mean_sq

    @staticmethod
    def backward(ctx: Any, g1: torch.Tensor, g2: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        n = x.shape[0] * x.shape[1]
        return torch.addcmul(g1 / n, x, g2 * (2.0 / n))


def moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation over batch and tokens: ``[B, T, C] -> [C], [C]``
    (population variance ``E[x^2] - E[x]^2`` in float32, ``sigma = sqrt(var + STD_EPS)``)."""
    if torch.compiler.is_compiling():
        mean, mean_sq = x.mean((0, 1)), x.square().mean((0, 1))
    else:
        mean, mean_sq = _ChannelMoments.apply(x)
    var = (mean_sq - mean.square()).clamp_min(0.0)
    return mean, (var + STD_EPS).sqrt()


def pooled_moments(m: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Moments of a batch from per-image token moments ``m, v`` ``[B, C]`` (equal token counts):
    ``mu = mean_i m_i``, ``var = mean_i v_i + mean_i (m_i - mu)^2``; returns ``[C], [C]``."""
    mu = m.mean(0)
    var = v.mean(0) + (m - mu).square().mean(0)
    return mu, (var + STD_EPS).sqrt()


def moment_gap(q: torch.Tensor, mu_f: torch.Tensor, sigma_f: torch.Tensor) -> torch.Tensor:
    """``(||mu_Q - mu_F||^2 + ||sigma_Q - sigma_F||^2) / C`` for ``q`` ``[B, T, C]`` -> ``[]``."""
    mu_q, sigma_q = moments(q)
    return ((mu_q - mu_f).square().sum() + (sigma_q - sigma_f).square().sum()) / q.shape[-1]


def token_kl(q: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
    """``KL(softmax(f) || softmax(q))`` over the last dim, averaged over the rest -> ``[]``."""
    lq = torch.log_softmax(q, dim=-1)
    lf = torch.log_softmax(f, dim=-1)
    return (lf.exp() * (lf - lq)).sum(-1).mean()


class GlobalKL(LossTerm):
    """EBGS: KL between the cached FP logits and the logits of the unit's quantized output sent
    through the frozen FP tail.

    Args:
        weight: ``w_g``.
        tau: the softmax temperature (the loss is multiplied by ``tau^2``).
        every: evaluate on every ``every``-th iteration (the engine skips it otherwise).
        batch: images of the batch sent through the tail (the first ``batch`` of the randomly
            drawn batch; 0 = all).
    """

    name = "global"

    def __init__(self, weight: float, tau: float, every: int, batch: int):  # no defaults: MGRQConfig's are the ones
        self.weight, self.tau, self.every, self.batch = weight, tau, every, batch
        self._tail: Callable[[torch.Tensor], torch.Tensor] | None = None
        self._fp: torch.Tensor | None = None

    def setup(self, recon: UnitRecon) -> None:
        # the head unit (no tail) outputs the logits: there the term is its block loss, the logit
        # KL, which MGRQ adds as EBGS only when w_block = 0 switches the block term off
        self._tail = recon.tail or (lambda h: h)
        self._fp = recon.fp_logits()

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        assert self._tail is not None and self._fp is not None, "setup() was not called"
        out, idx = ctx.out, ctx.idx
        if 0 < self.batch < out.shape[0]:
            out, idx = out[: self.batch], idx[: self.batch]
        return logit_kl(self._tail(out.float()), self._fp.index_select(0, idx), self.tau)

    def teardown(self) -> None:
        self._tail, self._fp = None, None


class LocalAlignment(LossTerm):
    """IBLS: per-layer output distribution alignment inside the unit (see the module docstring).

    Args:
        weight: ``w_l``.
        metric: ``moments`` (FP side from per-image statistics cached in ``setup``), ``kl`` or
            ``mse`` (FP side from the engine's ``ctx.fp_taps``: one no-grad FP forward of the
            unit on the batch's FP input per evaluation).
    """

    name = "local"
    needs_taps = True

    def __init__(self, weight: float, metric: str):
        if metric not in LOCAL_METRICS:
            raise ValueError(f"local_metric={metric!r}: expected one of {', '.join(LOCAL_METRICS)}")
        self.weight, self.metric = weight, metric
        self.needs_fp_taps = metric != "moments"
        self.layers: list[str] = []
        self._fp: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def setup(self, recon: UnitRecon) -> None:
        """``moments``: the FP per-image token mean and variance ``[n, C_l]`` of every layer on
        every cached FP input ``x_f``, on the compute device."""
        self.layers = list(recon.layers)
        if not self.layers:
            raise ValueError(f"LocalAlignment: unit {recon.unit.name} has no quantized layer")
        if self.metric != "moments":
            return
        parts: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {n: [] for n in self.layers}
        for chunk in recon.cache.x_f.split(recon.engine.cfg.chunk):
            _, taps = recon.fp_taps(chunk)
            for name in self.layers:
                v, m = torch.var_mean(per_image(taps[name], len(chunk)), dim=1, correction=0)
                parts[name].append((m, v))
        self._fp = {n: (torch.cat([m for m, _ in p]).to(recon.device), torch.cat([v for _, v in p]).to(recon.device))
                    for n, p in parts.items()}

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        b = ctx.out.shape[0]
        vals = []
        for name in self.layers:
            q = per_image(ctx.taps[name], b)
            if self.metric == "moments":
                m, v = self._fp[name]
                vals.append(moment_gap(q, *pooled_moments(m.index_select(0, ctx.idx), v.index_select(0, ctx.idx))))
            elif self.metric == "kl":
                vals.append(token_kl(q, per_image(ctx.fp_taps[name], b)))
            else:
                vals.append((q - per_image(ctx.fp_taps[name], b)).square().mean())
        return torch.stack(vals).mean()

    def teardown(self) -> None:
        self._fp = {}
