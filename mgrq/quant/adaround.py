"""AdaRound: learned up/down rounding of weights (Nagel et al., "Up or Down? Adaptive Rounding for
Post-Training Quantization", ICML 2020), as used by BRECQ and QDrop.

``W_hat = s * (clamp(floor(W / s) + h(V) + z, qmin, qmax) - z)`` with the rectified sigmoid
``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)``, ``zeta = 1.1``, ``gamma = -0.1``.
``V`` starts where ``h(V) = frac(W / s)``, so the soft weight equals ``W`` (inside the clipping
range) before any training; :meth:`AdaRoundQuantizer.harden` replaces ``h(V)`` by ``1[V >= 0]``.

The step ``s`` and zero point ``z`` come from an initialized
:class:`~mgrq.quant.quantizers.UniformQuantizer` and stay fixed. ``floor(W / s) + z`` is computed
once (the weight is frozen during reconstruction), so a soft forward costs a sigmoid, two clamps
and an affine map on weight-sized tensors.
"""

from __future__ import annotations

import torch
from torch import nn

from mgrq.quant.quantizers import UniformQuantizer

ZETA, GAMMA = 1.1, -0.1


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    """``h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1)`` (same shape as ``v``)."""
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0.0, 1.0)


def inverse_rectified_sigmoid(rest: torch.Tensor) -> torch.Tensor:
    """``V`` with ``h(V) = rest`` for ``rest`` in ``[0, 1)``."""
    return -torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1.0)


class AdaRoundQuantizer(nn.Module):
    """Weight quantizer with learned rounding. ``forward(w)`` returns the soft-rounded weight
    (while training) or the hard-rounded one (after :meth:`harden`); ``w`` must be the weight the
    quantizer was built from (its shape is checked; its values were captured at construction).

    Args:
        weight: the weight ``[out, ...]`` (captured; not modified).
        scale, zero_point: steps and zero points broadcastable to ``weight`` (e.g. ``[out, 1]``).
        qmin, qmax: the integer range.
    """

    alpha: nn.Parameter | None

    def __init__(self, weight: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor, qmin: int, qmax: int):
        super().__init__()
        w = weight.detach().float()
        scale = scale.detach().float().to(w.device)
        zero_point = zero_point.detach().float().to(w.device)
        self.qmin, self.qmax = int(qmin), int(qmax)
        x = w / scale
        floor = torch.floor(x)
        self.register_buffer("scale", scale.clone())
        self.register_buffer("zero_point", zero_point.clone())
        self.register_buffer("base", floor + zero_point)  # floor(W / s) + z, fixed
        self.register_buffer("value", torch.empty(0))  # the hard-rounded weight after harden()
        self.alpha = nn.Parameter(inverse_rectified_sigmoid(x - floor))
        self.shape = tuple(w.shape)

    @classmethod
    def from_uniform(cls, q: UniformQuantizer, weight: torch.Tensor) -> AdaRoundQuantizer:
        """Build from an initialized uniform weight quantizer (any granularity) and its weight."""
        if not q.initialized:
            raise RuntimeError("AdaRoundQuantizer.from_uniform: the uniform quantizer is not initialized")
        w = weight.detach()
        return cls(w, q._view(q.scale.detach(), w), q._view(q.zero_point, w), q.qmin, q.qmax)

    @property
    def hard(self) -> bool:
        return self.alpha is None

    def soft_targets(self) -> torch.Tensor:
        """``h(V)``, same shape as the weight."""
        if self.alpha is None:
            raise RuntimeError("AdaRoundQuantizer: already hardened")
        return rectified_sigmoid(self.alpha)

    def round_loss(self, beta: torch.Tensor | float) -> torch.Tensor:
        """AdaRound's regularizer ``sum(1 - |2 h(V) - 1|^beta)`` (a scalar)."""
        return (1.0 - (2.0 * self.soft_targets() - 1.0).abs().pow(beta)).sum()

    def codes(self) -> torch.Tensor:
        """Integer codes ``clamp(floor(W/s) + 1[V >= 0] + z, qmin, qmax)`` (float tensor)."""
        if self.alpha is None:
            return torch.round(self.value / self.scale + self.zero_point)
        return torch.clamp(self.base + (self.alpha.detach() >= 0).float(), self.qmin, self.qmax)

    def soft_weight(self) -> torch.Tensor:
        return (torch.clamp(self.base + self.soft_targets(), self.qmin, self.qmax) - self.zero_point) * self.scale

    @torch.no_grad()
    def harden(self) -> None:
        """Fix the rounding: ``W_hat = s * (clamp(floor(W/s) + 1[V >= 0] + z) - z)``; drops ``V``."""
        if self.alpha is None:
            return
        self.value = (self.codes() - self.zero_point) * self.scale
        self.alpha = None

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if tuple(w.shape) != self.shape:
            raise ValueError(f"AdaRoundQuantizer: weight shape {tuple(w.shape)} != {self.shape} it was built for")
        if self.alpha is None:
            return self.value.to(w.dtype)
        return self.soft_weight().to(w.dtype)

    def extra_repr(self) -> str:
        return f"shape={self.shape}, range=[{self.qmin}, {self.qmax}], hard={self.hard}"
