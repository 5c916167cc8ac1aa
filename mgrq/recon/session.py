"""What a unit looks like while it is reconstructed, and putting it back afterwards.

:class:`UnitSession` is a context manager around the reconstruction of one unit in one stage:

- on entry: the unit's weight points are switched on and (when rounding is learned) get an
  :class:`~mgrq.quant.adaround.AdaRoundQuantizer` built from their uniform quantizer; activation
  points are switched on or off as the stage says and get an LSQ (uniform) or straight-through
  (log) training wrapper that also applies QDrop's dropping (``QuantPoint.drop_prob``'s
  semantics, fused with the quantizer; the point's own ``drop_prob`` stays 0);
- on a normal exit (:meth:`commit`): rounding is hardened (the AdaRound quantizer stays, with
  fixed integer codes), learned steps are written into the original activation quantizers, the
  originals are put back and every ``drop_prob`` returns to 0;
- on an exception: everything is restored exactly as it was (quantizer objects, switches,
  ``drop_prob``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mgrq.errors import ConfigError
from mgrq.quant.adaround import AdaRoundQuantizer
from mgrq.quant.point import QuantPoint
from mgrq.quant.quantizers import UniformQuantizer
from mgrq.recon.config import Stage
from mgrq.recon.learnable import LSQAct, SteAct
from mgrq.surgery.layers import QuantConv2d, QuantLinear
from mgrq.surgery.wrap import Unit


def stage_points(points: list[QuantPoint], stage: Stage) -> list[tuple[QuantPoint, bool]]:
    """The points a stage switches, each with its switch: weight points on, activation points
    on when ``stage.acts``. Points the layer policy leaves in full precision (no bits or no
    quantizer) are not listed."""
    return [(p, p.kind == "weight" or stage.acts) for p in points if p.bits is not None and p.quantizer is not None]


def quant_layers(unit: Unit, root: nn.Module) -> dict[str, nn.Module]:
    """The unit's QuantLinear / QuantConv2d modules by fully qualified name (forward order)."""
    ids = {id(m) for top in unit.modules for m in top.modules()}
    return {n: m for n, m in root.named_modules() if id(m) in ids and isinstance(m, (QuantLinear, QuantConv2d))}


class UnitSession:
    """Install the training-time quantizers of ``unit`` for ``stage`` (see module docstring).

    Attributes after entry:
        adarounds: the AdaRound quantizers being learned.
        acts: the activation wrappers (:class:`LSQAct` / :class:`SteAct`).
        step_params: the LSQ step parameters being learned.
    """

    def __init__(self, unit: Unit, root: nn.Module, stage: Stage, act_drop: float, kernels: bool = False):
        self.unit, self.root, self.stage, self.act_drop, self.kernels = unit, root, stage, act_drop, kernels
        self.adarounds: list[AdaRoundQuantizer] = []
        self.acts: list[LSQAct | SteAct] = []
        self._saved: list[tuple[QuantPoint, Any, bool, float]] = []
        self._wrapped: list[tuple[QuantPoint, nn.Module]] = []

    @property
    def step_params(self) -> list[nn.Parameter]:
        return [a.scale for a in self.acts if isinstance(a, LSQAct) and a.learn]

    def __enter__(self) -> UnitSession:
        points = self.unit.points()
        self._saved = [(p, p.quantizer, p.enabled, p.drop_prob) for p in points]
        weight_of = {id(m.weight_q): m.weight for m in quant_layers(self.unit, self.root).values()}
        try:
            for p, on in stage_points(points, self.stage):
                p.enabled = on
                if p.kind == "weight":
                    if self.stage.learn_rounding:
                        self._learn_rounding(p, weight_of[id(p)])
                elif on:
                    self._wrap_act(p)
        except BaseException:
            self._restore()
            raise
        return self

    def _learn_rounding(self, p: QuantPoint, weight: torch.Tensor) -> None:
        q = p.quantizer
        if isinstance(q, AdaRoundQuantizer):
            raise ConfigError(f"{p.name}: rounding was already learned and hardened; a second rounding stage is not supported")
        if not isinstance(q, UniformQuantizer):
            raise ConfigError(f"{p.name}: AdaRound needs a uniform weight quantizer, got {type(q).__name__}")
        ar = AdaRoundQuantizer.from_uniform(q, weight)
        p.quantizer = ar
        self.adarounds.append(ar)

    def _wrap_act(self, p: QuantPoint) -> None:
        q = p.quantizer
        assert q is not None
        drop = self.act_drop
        w: LSQAct | SteAct = (LSQAct(q, learn=self.stage.learn_steps, drop=drop, kernels=self.kernels)
                              if isinstance(q, UniformQuantizer) else SteAct(q, drop=drop, kernels=self.kernels))
        self._wrapped.append((p, q))
        p.quantizer = w
        p.drop_prob = 0.0  # the wrapper drops (same semantics, fused with the quantizer)
        self.acts.append(w)

    def commit(self) -> None:
        """Harden rounding, write learned steps back, put the original act quantizers back."""
        with torch.no_grad():
            for ar in self.adarounds:
                ar.harden()
            for a in self.acts:
                a.commit()
        for p, q in self._wrapped:
            p.quantizer = q
            p.drop_prob = 0.0
        self._wrapped.clear()

    def _restore(self) -> None:
        for p, q, enabled, drop in self._saved:
            p.quantizer, p.enabled, p.drop_prob = q, enabled, drop
        self._wrapped.clear()

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.commit()
        else:
            self._restore()
