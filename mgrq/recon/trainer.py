"""The training step of one unit: batch, input mixing, forward, fused loss, Adam.

Everything the step reads or writes lives in device tensors (iteration counter, learning
rates, loss values, the first bad iteration), so the step never synchronises with the host and
keeps the same shapes every iteration: it can be compiled and captured in a CUDA graph
(:mod:`mgrq.recon.runner`). The host reads the bookkeeping tensors with :meth:`UnitTrainer.read`
every ``check_every`` iterations.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any

import torch

from mgrq.recon.cache import BatchSource
from mgrq.recon.config import ReconConfig
from mgrq.recon.learnable import bernoulli_mask, mix
from mgrq.recon.losses import LossTerm, StepContext, beta_at, cosine_lr, round_gate

if TYPE_CHECKING:
    from mgrq.recon.engine import UnitRecon

# After each Adam step the learned LSQ steps are made |s| and at least float32's eps, as QDrop's
# LSQFakeQuantize does before each forward (wimh966/QDrop ef37616, qdrop/quantization/fake_quant.py:
# ``scale.data.abs_(); scale.data.clamp_(min=eps)``). BRECQ's code (e455d62) has no such guard; a
# step at or below 0 has no meaning there either, and for a positive step both are the identity.
STEP_EPS = torch.finfo(torch.float32).eps


@torch.no_grad()
def keep_steps_positive(steps: list[torch.Tensor]) -> None:
    """``s <- max(|s|, STEP_EPS)`` in place, without host synchronisation (see :data:`STEP_EPS`)."""
    torch._foreach_abs_(steps)
    torch._foreach_clamp_min_(steps, STEP_EPS)


class UnitTrainer:
    """Optimizer and step functions for one unit (see module docstring).

    ``forward(variant) -> total`` computes the objective with the terms flagged in ``variant``;
    ``update(total)`` runs backward, the learning-rate schedule, Adam and the bookkeeping.
    """

    def __init__(self, recon: UnitRecon, terms: list[LossTerm], source: BatchSource, cfg: ReconConfig):
        from mgrq.recon.engine import tap_hooks

        self.recon, self.terms, self.source, self.cfg = recon, terms, source, cfg
        self.stage = stage = recon.stage
        self.unit = recon.unit
        dev = recon.device
        self.session = recon.session
        self.adarounds = list(self.session.adarounds)
        self.ups0 = [a.alpha.detach() >= 0 for a in self.adarounds if a.alpha is not None]
        self.count = torch.zeros((), device=dev)
        self.bad_at = torch.full((), -1.0, device=dev)
        self.bad_value = torch.zeros((), device=dev)
        self.last_total = torch.zeros((), device=dev)
        self.term_last = [torch.zeros((), device=dev) for _ in terms]
        self.term_first = [torch.ones((), device=dev) for _ in terms]
        self.first_seen = [False] * len(terms)
        self.normalized = cfg.fusion == "normalized"
        self.taps: dict[str, torch.Tensor] = {}
        self._hooks = contextlib.ExitStack()
        if any(t.needs_taps or t.needs_fp_taps for t in terms):
            self._hooks.enter_context(tap_hooks(recon.layers, self.taps))
        self.points = self.unit.points()
        self.autocast: Any = (torch.autocast(dev.type, dtype=torch.bfloat16) if cfg.autocast == "bf16"
                              else contextlib.nullcontext())
        self.lr_step = torch.tensor(float(stage.lr_step), device=dev)
        groups: list[dict[str, Any]] = []
        if self.adarounds:
            groups.append({"params": [a.alpha for a in self.adarounds], "lr": torch.tensor(float(stage.lr_round), device=dev)})
        if self.session.step_params:
            groups.append({"params": self.session.step_params, "lr": self.lr_step})
        self.learn_steps = bool(self.session.step_params)
        self.opt = torch.optim.Adam(groups, fused=True, capturable=dev.type == "cuda")
        mix = cfg.input_mode
        self.mix = mix if mix != "qdrop" or recon.cache.x_q is not recon.cache.x_f else "quant"

    # ---- the step ---------------------------------------------------------------------------
    def variant(self, it: int) -> tuple[bool, ...]:
        return tuple(it % t.every == 0 for t in self.terms)

    def forward(self, variant: tuple[bool, ...]) -> torch.Tensor:
        b = self.source.get()
        if self.mix == "qdrop":
            x = mix(b["x_f"], b["x_q"], bernoulli_mask(b["x_q"], self.cfg.input_prob))
        else:
            x = b["x_f"] if self.mix == "fp" else b["x_q"]
        with self.autocast:
            out = self.unit.fn(x)
        taps = dict(self.taps)
        fp_taps: dict[str, torch.Tensor] = {}
        if any(on and t.needs_fp_taps for t, on in zip(self.terms, variant)):
            fp_taps = self._fp_taps(b["x_f"])
        ctx = StepContext(idx=self.source.idx, x=x, x_q=b["x_q"], x_fp=b["x_f"], out=out, target=b["y"],
                          fisher=b.get("fisher"), taps=taps, fp_taps=fp_taps, step=self.count, recon=self.recon)
        total = torch.zeros((), device=self.count.device)
        for i, (term, on) in enumerate(zip(self.terms, variant)):
            if not on:
                continue
            v = term(ctx).float()
            self.term_last[i].copy_(v.detach())
            if self.normalized:
                if not self.first_seen[i]:
                    self.term_first[i].copy_(v.detach().abs().clamp_min(1e-12))
                    self.first_seen[i] = True
                v = v / self.term_first[i]
            total = total + term.weight * v
        if self.adarounds and self.cfg.round_weight > 0:
            it, st, cfg = self.count, self.stage, self.cfg
            beta = beta_at(it, st.iters, cfg.warmup, cfg.beta_start, cfg.beta_end)
            reg = torch.stack([a.round_loss(beta) for a in self.adarounds]).sum()
            total = total + cfg.round_weight * round_gate(it, st.iters, cfg.warmup) * reg
        return total

    def _fp_taps(self, x_fp: torch.Tensor) -> dict[str, torch.Tensor]:
        """The unit's layer outputs in full precision on ``x_fp`` (no grad, points switched off
        and back with plain attribute writes so that the step stays traceable)."""
        saved = [p.enabled for p in self.points]
        for p in self.points:
            p.enabled = False
        with torch.no_grad():
            self.unit.fn(x_fp)
        for p, e in zip(self.points, saved):
            p.enabled = e
        return dict(self.taps)

    def update(self, total: torch.Tensor) -> None:
        total.backward()
        if self.learn_steps:
            self.lr_step.copy_(cosine_lr(self.count, self.stage.lr_step, self.stage.iters))
        self.opt.step()
        if self.learn_steps:
            keep_steps_positive(self.session.step_params)
        t = total.detach()
        new_bad = ~torch.isfinite(t) & (self.bad_at < 0)
        self.bad_value.copy_(torch.where(new_bad, t, self.bad_value))
        self.bad_at.copy_(torch.where(new_bad, self.count, self.bad_at))
        self.last_total.copy_(t)
        self.count.add_(1.0)

    def zero_grad(self) -> None:
        self.opt.zero_grad(set_to_none=True)

    # ---- host side --------------------------------------------------------------------------
    def read(self) -> dict[str, Any]:
        """Host copy of the bookkeeping (synchronises)."""
        return {"total": float(self.last_total), "bad_at": float(self.bad_at), "bad_value": float(self.bad_value),
                "terms": {t.name: float(v) for t, v in zip(self.terms, self.term_last)}}

    def nonfinite_learned(self) -> str | None:
        """What went bad among the learned tensors (``"steps became NaN or Inf"``, ...), or None
        (a host read per kind). The loss check cannot see the last update's result. A step must be
        finite; a rounding variable must not be NaN (an infinite one is a decided rounding:
        hardening keeps only its sign)."""
        alphas = [a.alpha for a in self.adarounds if a.alpha is not None]
        checks = {"rounding variables became NaN": [~torch.isnan(a).any() for a in alphas],
                  "steps became NaN or Inf": [torch.isfinite(s).all() for s in self.session.step_params]}
        bad = [what for what, ok in checks.items() if ok and not bool(torch.stack(ok).all())]
        return " and ".join(bad) or None

    def learned_counts(self) -> dict[str, int]:
        return {"rounding": sum(a.alpha.numel() for a in self.adarounds if a.alpha is not None),
                "steps": len(self.session.step_params)}

    def rounding_changed(self) -> float | None:
        """Fraction of learned weights whose rounding differs from round-to-nearest."""
        if not self.adarounds:
            return None
        diff = sum(int(((a.alpha.detach() >= 0) != u).sum()) for a, u in zip(self.adarounds, self.ups0) if a.alpha is not None)
        total = sum(u.numel() for u in self.ups0)
        return diff / max(total, 1)

    def close(self) -> None:
        self._hooks.close()
