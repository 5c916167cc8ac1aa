"""The block-reconstruction engine shared by BRECQ, QDrop and MGRQ.

``Reconstructor(qmodel, images, cfg, device=...).run(stages)`` reconstructs the units of a
:class:`~mgrq.surgery.QuantModel` (patch embedding, each block / patch merging, the head) in
forward order, once per :class:`~mgrq.recon.config.Stage`. Per unit and stage:

1. cache ``x_q``, ``x_f``, the FP target ``y`` (and Fisher weights) for every calibration image
   (:mod:`mgrq.recon.cache`);
2. install AdaRound / LSQ training quantizers (:mod:`mgrq.recon.session`);
3. call ``setup`` of every loss term (the block term, plus any extra terms a method adds through
   ``extra_terms``; see :mod:`mgrq.recon.losses`);
4. run ``stage.iters`` Adam steps (eager, compiled or CUDA-graph replayed; :mod:`.runner`); the
   step has no host synchronisation: the loss is read every ``check_every`` iterations for the
   progress bar and the NaN/Inf check (which names the unit and the first bad iteration); after
   the last iteration the learned parameters are checked once (the last update has no loss after
   it);
5. harden the rounding, write the learned steps back, put the originals back;
6. before step 2 and after step 5, measure the unit's output error on the calibration images
   (``out_mse``: MSE against the FP target, quantized inputs); a rise of more than
   :data:`REGRESSION_RATIO` times is a warning, not an error (see ``_check_regression``).

While a stage runs, every model parameter has ``requires_grad=False`` and the points of the
units after the current one are switched off, so chaining those units is the frozen FP tail
(MGRQ's global term runs the unit output through it). Everything (gradient flags, point
switches, TF32 flags) is restored when :meth:`Reconstructor.run` returns or raises.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mgrq.errors import ConfigError, ReconstructionError, compile_regex
from mgrq.evaluate import eval_mode, pick_device
from mgrq.memory import PeakMemory
from mgrq.quant.point import QuantPoint
from mgrq.recon.cache import BatchSource, UnitCache, nbytes
from mgrq.recon.config import ReconConfig, Stage
from mgrq.recon.losses import FisherError, LogitKL, LossTerm, OutputError, StepContext, logit_kl
from mgrq.recon.runner import StepRunner
from mgrq.recon.session import UnitSession, quant_layers, stage_points
from mgrq.recon.trainer import UnitTrainer
from mgrq.surgery import QuantModel
from mgrq.surgery.wrap import Unit

TermFactory = Callable[[Unit, Stage], Sequence[LossTerm]]

# A unit's output error (MSE against the FP output on the calibration images, quantized inputs)
# after its stage over the same error at the start of the stage, above which the run warns.
# Measured on the tiny zoo only: at most 1.07 over every unit of the 42 reconstruction cells of
# ablation-mgrq (seed 0; brecq's cells as rerun at ecf4c51; brecq's steps stage, which minimises |err|^2.4, and the head, trained
# on the logit KL, end slightly above 1 on a few units); 3.7 to 20 on the units flagged by runs
# diverged with lr_round=1e6.
REGRESSION_RATIO = 1.5


@contextlib.contextmanager
def switched(unit: Unit, switches: Iterable[tuple[QuantPoint, bool]]) -> Iterator[None]:
    """The unit's points switched as ``switches`` says (``(point, on)`` pairs) for a while; every
    point of the unit gets its switch back on exit."""
    saved = [(p, p.enabled) for p in unit.points()]
    try:
        for p, on in switches:
            p.enabled = on
        yield
    finally:
        for p, e in saved:
            p.enabled = e


def points_off(unit: Unit) -> contextlib.AbstractContextManager[None]:
    """Run ``unit`` in full precision for a while (its points' switches are restored)."""
    return switched(unit, [(p, False) for p in unit.points()])


def stage_switches(unit: Unit, stage: Stage) -> contextlib.AbstractContextManager[None]:
    """The unit's points switched as ``stage`` runs them, with their current quantizers, for a
    while (the switches are restored)."""
    return switched(unit, stage_points(unit.points(), stage))


@contextlib.contextmanager
def no_drop(unit: Unit) -> Iterator[None]:
    """QDrop's dropping off for a while (e.g. while caching or computing Fisher weights): the
    points' ``drop_prob`` and the training wrappers' ``drop``."""
    saved = [(p, p.drop_prob, getattr(p.quantizer, "drop", None)) for p in unit.points()]
    try:
        for p, _, wdrop in saved:
            p.drop_prob = 0.0
            if wdrop is not None:
                p.quantizer.drop = 0.0  # type: ignore[union-attr]
        yield
    finally:
        for p, d, wdrop in saved:
            p.drop_prob = d
            if wdrop is not None:
                p.quantizer.drop = wdrop  # type: ignore[union-attr]


@dataclass
class UnitRecon:
    """What loss terms get in ``setup``: one unit being reconstructed in one stage.

    Attributes:
        unit, index, units: the unit, its position and the model's unit list.
        stage: the current :class:`Stage`.
        cache: its :class:`UnitCache` (``x_q``, ``x_f``, ``y``, ``fisher``; ``[n, ...]``).
        device: the compute device.
        layers: fqn -> the unit's QuantLinear / QuantConv2d modules (the keys of ``ctx.taps``).
        session: the installed training quantizers (``adarounds``, ``acts``).
    """

    unit: Unit
    index: int
    units: list[Unit]
    stage: Stage
    cache: UnitCache
    device: torch.device
    layers: dict[str, nn.Module]
    session: UnitSession
    engine: Reconstructor

    @property
    def tail(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The frozen FP tail (units ``index+1..L``): unit output ``[B, ...]`` -> logits
        ``[B, K]``, differentiable w.r.t. its input; None for the head unit."""
        rest = self.units[self.index + 1:]
        if not rest:
            return None

        def tail(h: torch.Tensor) -> torch.Tensor:
            for u in rest:
                h = u.fn(h)
            return h

        return tail

    def fp_logits(self) -> torch.Tensor:
        """FP logits ``[n, K]`` of the calibration images (computed once per engine)."""
        return self.engine.fp_logits()

    def fp_taps(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The unit in full precision on ``x`` ``[b, ...]`` (no grad): its output and the output
        of each quantized layer (same keys as ``ctx.taps``)."""
        taps: dict[str, torch.Tensor] = {}
        with points_off(self.unit), tap_hooks(self.layers, taps), torch.no_grad():
            out = self.unit.fn(x.to(self.device))
        return out, taps


@contextlib.contextmanager
def tap_hooks(layers: dict[str, nn.Module], store: dict[str, torch.Tensor]) -> Iterator[None]:
    """Forward hooks writing each layer's output into ``store[fqn]``."""
    handles = []
    for name, m in layers.items():
        def hook(_m: nn.Module, _args: Any, out: torch.Tensor, name: str = name) -> None:
            store[name] = out
        handles.append(m.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Reconstructor:
    """Block reconstruction of ``qmodel`` on calibration ``images`` ``[n, C, H, W]``.

    Args:
        qmodel: a quantized model whose active points already have initialized quantizers.
        images: the calibration images (CPU or device).
        cfg: the engine settings.
        device: the compute device.
        seed: base seed (index schedules and QDrop masks are derived per stage and unit).
        progress: show a progress bar per unit.
        extra_terms: ``f(unit, stage) -> [LossTerm, ...]`` added to the block term (MGRQ's hook).
        units: regex; reconstruct only units whose name matches (others keep their quantizers).
        desc: label of progress bars and errors (e.g. the method name).
        warnings: a list the engine appends its warnings to (``RunContext.warnings``: the run
            record's); default: a list of its own (:attr:`warnings`).
    """

    def __init__(
        self, qmodel: QuantModel, images: torch.Tensor, cfg: ReconConfig, *, device: torch.device,
        seed: int = 0, progress: bool = True, extra_terms: TermFactory | None = None,
        units: str = "", desc: str = "recon", warnings: list[str] | None = None,
    ):
        self.qmodel, self.images, self.cfg, self.device = qmodel, images, cfg, pick_device(device)
        self.seed, self.progress, self.extra_terms, self.desc = seed, progress, extra_terms, desc
        self.units = qmodel.units()
        self.select = compile_regex(units, "units", "a regex searched in unit names") if units else None
        if self.select is not None and not any(self.select.search(u.name) for u in self.units):
            raise ConfigError(f"units='{units}' matches none of the model's units: {', '.join(u.name for u in self.units)}")
        self._fp_logits: torch.Tensor | None = None
        # units whose output error rose (see _check_regression); a method passes its run's list
        self.warnings: list[str] = warnings if warnings is not None else []

    # ---- FP helpers -------------------------------------------------------------------------
    def fp_logits(self) -> torch.Tensor:
        if self._fp_logits is None:
            with self.qmodel.quant_off(), torch.no_grad():
                outs = [self.qmodel(x.to(self.device)) for x in self.images.split(self.cfg.chunk)]
            self._fp_logits = torch.cat(outs).float()
        return self._fp_logits

    def _place(self, est_bytes: int) -> torch.device:
        """Where a unit's cache lives: the device, or the CPU (pinned, streamed)."""
        if self.device.type != "cuda" or self.cfg.cache == "device":
            return self.device
        if self.cfg.cache == "cpu":
            return torch.device("cpu")
        free, _ = torch.cuda.mem_get_info(self.device)
        return self.device if est_bytes < self.cfg.cache_fraction * free else torch.device("cpu")

    def _outputs(self, unit: Unit, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """``unit.fn`` over ``x`` ``[n, ...]``, one float32 output per chunk of ``cfg.chunk``
        images, on the compute device (current quantization state, no dropping, no grad)."""
        with no_drop(unit), torch.no_grad():
            for chunk in x.split(self.cfg.chunk):
                yield unit.fn(chunk.to(self.device, non_blocking=True)).float()

    def _map(self, unit: Unit, x: torch.Tensor, place: torch.device) -> torch.Tensor:
        """``unit.fn`` over ``x`` (:meth:`_outputs`); the result ``[n, ...]`` is stored on
        ``place`` (pinned when it is the CPU and the compute device is not)."""
        out: torch.Tensor | None = None
        i = 0
        for y in self._outputs(unit, x):
            if out is None:
                pin = place.type == "cpu" and self.device.type == "cuda"
                out = torch.empty((x.shape[0], *y.shape[1:]), dtype=y.dtype, device=place, pin_memory=pin)
            out[i:i + len(y)].copy_(y, non_blocking=True)
            i += len(y)
        assert out is not None
        return out

    def _fisher(self, k: int, unit: Unit, x_q: torch.Tensor) -> torch.Tensor:
        """BRECQ's Fisher weights ``(|dKL/dz| + damping)^2`` of unit ``k``'s output ``z`` with the
        model quantized up to unit ``k`` and FP after it, KL(FP logits || logits) averaged over
        a batch of ``cfg.batch`` images."""
        fp = self.fp_logits()
        rest = self.units[k + 1:]
        parts = []
        with no_drop(unit):
            for i, chunk in enumerate(x_q.split(self.cfg.batch)):
                with torch.no_grad():
                    z = unit.fn(chunk.to(self.device)).float()
                z.requires_grad_(True)
                h = z
                for u in rest:
                    h = u.fn(h)
                lo = i * self.cfg.batch
                loss = logit_kl(h, fp[lo:lo + len(chunk)])
                (g,) = torch.autograd.grad(loss, z)
                parts.append(((g.abs() + self.cfg.fisher_damping) ** 2).to(x_q.device))
        return torch.cat(parts)

    # ---- the run ----------------------------------------------------------------------------
    def run(self, stages: Sequence[Stage], first: int = 0) -> dict[str, Any]:
        """Reconstruct every (selected) unit once per stage. ``first`` is the position of
        ``stages[0]`` in the method's sequence of stages: a method that runs its stages through
        several engines (BRECQ's two passes have different engine settings) passes it so that each
        stage draws its own batch schedule and masks, as one engine running all of them would.
        Returns the record info:
        ``{"stages": [{"stage", ..., "units": [per-unit stats]}], "compile", "matmul_precision", ...}``."""
        t0 = time.perf_counter()
        params = list(self.qmodel.parameters())
        grad_flags = [p.requires_grad for p in params]
        precision = (torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32)
        out: dict[str, Any] = {"compile": self.cfg.compile, "autocast": self.cfg.autocast,
                               "matmul_precision": self.cfg.matmul_precision,
                               "device": str(self.device), "stages": []}
        try:
            for p in params:
                p.requires_grad_(False)
            torch.set_float32_matmul_precision(self.cfg.matmul_precision)
            if self.device.type == "cuda":
                torch.backends.cudnn.allow_tf32 = self.cfg.matmul_precision != "highest"
            with eval_mode(self.qmodel), _dynamo_limits(self.cfg.compile != "none"):  # each module's
                for si, stage in enumerate(stages, start=first):  # training flag comes back on exit
                    out["stages"].append(self._run_stage(si, stage))
        finally:
            for p, f in zip(params, grad_flags):
                p.requires_grad_(f)
            torch.set_float32_matmul_precision(precision[0])
            torch.backends.cudnn.allow_tf32 = precision[1]
        out["total_s"] = time.perf_counter() - t0
        return out

    def _selected(self, unit: Unit) -> bool:
        return self.select is None or bool(self.select.search(unit.name))

    def _run_stage(self, si: int, stage: Stage) -> dict[str, Any]:
        saved = [(p, p.enabled) for p in self.qmodel.points()]
        info: dict[str, Any] = {"stage": stage.name, "iters": stage.iters, "learn_rounding": stage.learn_rounding,
                                "learn_steps": stage.learn_steps, "acts": stage.acts, "lr_round": stage.lr_round,
                                "lr_step": stage.lr_step, "p": stage.p, "input_mode": self.cfg.input_mode, "units": []}
        last = max((k for k, u in enumerate(self.units) if self._selected(u)), default=-1)
        try:
            for p, _ in saved:
                p.enabled = False
            x_q = x_f = self.images
            for k, unit in enumerate(self.units[: last + 1]):
                t = time.perf_counter()
                extra = 1 if self.cfg.block_loss == "fisher" else 0
                place = self._place((4 + extra) * nbytes(x_f))  # x_q, x_f, y, next x_q (+ Fisher)
                same = x_q is x_f
                x_f = _to(x_f, place, self.device)
                x_q = x_f if same else _to(x_q, place, self.device)
                with points_off(unit):
                    y = self._map(unit, x_f, place)
                if not self._selected(unit):
                    for p, on in stage_points(unit.points(), stage):
                        p.enabled = on
                else:
                    cache_s = time.perf_counter() - t
                    with stage_switches(unit, stage):
                        mse_init = self._out_mse(unit, x_q, y)
                    stats = self._reconstruct(si, k, unit, stage, UnitCache(x_q, x_f, y), cache_s)
                    stats["out_mse"] = {"init": mse_init, "final": self._out_mse(unit, x_q, y)}
                    info["units"].append(stats)
                    self._check_regression(stage, unit, mse_init, stats["out_mse"]["final"])
                if k < last:
                    x_q = self._map(unit, x_q, place)
                x_f = y
        finally:
            for p, e in saved:
                p.enabled = e
        return info

    def _out_mse(self, unit: Unit, x: torch.Tensor, y: torch.Tensor) -> float:
        """Mean squared error of ``unit.fn(x)`` (:meth:`_outputs`) against ``y`` ``[n, ...]``."""
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        for out, yc in zip(self._outputs(unit, x), y.split(self.cfg.chunk)):
            total += (out - yc.to(self.device, non_blocking=True)).double().square().sum()
        return float(total) / max(y.numel(), 1)

    def _check_regression(self, stage: Stage, unit: Unit, before: float, after: float) -> None:
        """A unit whose output error ends more than :data:`REGRESSION_RATIO` times where the stage
        started it (a reconstruction that diverged but stayed finite, e.g. a learning rate far
        too high) is not an error: the run goes on, and the unit is named on stderr and in
        :attr:`warnings` (the run record's ``warnings``)."""
        if not after <= REGRESSION_RATIO * before:  # NaN counts as a rise
            ratio = after / before if before > 0 else float("inf")
            rates = " and ".join(n for n, on in (("lr_round", stage.learn_rounding), ("lr_step", stage.learn_steps)) if on)
            msg = (f"{self.desc}: unit {unit.name} ({stage.name} stage): its output error on the calibration "
                   f"images rose {ratio:.3g}x during reconstruction, from {before:.4g} to {after:.4g} (MSE against "
                   f"the FP output); {rates or 'the learning rate'} may be too high for this budget")
            self.warnings.append(msg)
            print(f"warning: {msg}", file=sys.stderr, flush=True)

    def _terms(self, unit: Unit, stage: Stage) -> list[LossTerm]:
        w = self.cfg.block_weight
        if unit.kind == "head":
            block: LossTerm = LogitKL(weight=w)
        elif self.cfg.block_loss == "fisher":
            block = FisherError(weight=w)
        else:
            block = OutputError(p=stage.p, weight=w)
        terms = [block, *(self.extra_terms(unit, stage) if self.extra_terms else [])]
        names = [t.name for t in terms]
        if len(set(names)) != len(names):
            raise ValueError(f"loss term names must be unique within a unit, got {names}")
        return terms

    def _reconstruct(self, si: int, k: int, unit: Unit, stage: Stage, cache: UnitCache, cache_s: float) -> dict[str, Any]:
        cfg = self.cfg
        unit_seed = (self.seed * 1_000_003 + 7919 * si + k) % (2**62)
        torch.manual_seed(unit_seed)
        terms = self._terms(unit, stage)
        stats: dict[str, Any] = {"unit": unit.name, "kind": unit.kind, "stage": stage.name, "iters": stage.iters,
                                 "cache_s": cache_s, "cache_place": str(cache.x_f.device)}
        with PeakMemory(self.device) as mem, \
                UnitSession(unit, self.qmodel.model, stage, cfg.act_drop, kernels=cfg.compile == "kernels") as session:
            if not session.adarounds and not session.step_params:
                stats.update(skipped="nothing to learn")
                return stats
            if cfg.block_loss == "fisher" and unit.kind != "head":
                t = time.perf_counter()
                cache.fisher = self._fisher(k, unit, cache.x_q)
                stats["fisher_s"] = time.perf_counter() - t
            recon = UnitRecon(unit, k, self.units, stage, cache, self.device,
                              quant_layers(unit, self.qmodel.model), session, self)
            source = BatchSource(cache, cfg.batch, stage.iters, unit_seed, self.device)
            trainer = UnitTrainer(recon, terms, source, cfg)
            try:
                for term in terms:
                    term.setup(recon)
                stats.update(self._loop(trainer, recon))
            finally:
                for term in terms:
                    term.teardown()
                trainer.close()
        stats["peak_mem_mb"], stats["peak_mem_kind"] = round(mem.mb, 1), mem.kind
        return stats

    def _loop(self, tr: UnitTrainer, recon: UnitRecon) -> dict[str, Any]:
        from tqdm import tqdm

        cfg, stage, unit = self.cfg, recon.stage, recon.unit
        runner = StepRunner(tr.forward, tr.update, tr.zero_grad, cfg.compile, self.device)
        pbar = tqdm(total=stage.iters, desc=f"{self.desc} {stage.name} {unit.name}", disable=not self.progress, leave=False)
        side = torch.cuda.Stream(self.device) if runner.use_graphs else None
        stream_ctx = torch.cuda.stream(side) if side is not None else contextlib.nullcontext()
        if side is not None:
            side.wait_stream(torch.cuda.current_stream(self.device))
        t0 = time.perf_counter()
        checks: list[tuple[int, float]] = []
        curve: list[tuple[int, float]] = []
        first: dict[str, float] = {}

        def stop(what: str, expected: str) -> ReconstructionError:
            """The error that stops the run at this unit and stage (the caller puts the model back)."""
            return ReconstructionError(f"{self.desc}: unit {unit.name} ({stage.name} stage): {what}; the run stops; "
                                       f"expected {expected} (try a lower learning rate, lr_round or lr_step, or "
                                       "check the weights and the calibration images)")

        try:
            with stream_ctx:
                for it in range(stage.iters):
                    tr.source.prepare(it)
                    runner(tr.variant(it))
                    if it == 0:
                        first = tr.read()
                    if (it + 1) % cfg.check_every == 0 or it + 1 == stage.iters:
                        now = tr.read()
                        if now["bad_at"] >= 0:
                            raise stop(f"the loss became {now['bad_value']} at iteration {int(now['bad_at'])} "
                                       f"of {stage.iters}", "a finite loss")
                        checks.append((it + 1, time.perf_counter()))
                        curve.append((it + 1, now["total"]))
                        pbar.set_postfix(loss=f"{now['total']:.4g}")
                        pbar.update(it + 1 - pbar.n)
        finally:
            if side is not None:
                torch.cuda.current_stream(self.device).wait_stream(side)
            runner.close()
            pbar.close()
        wall = time.perf_counter() - t0
        last = tr.read()
        bad = tr.nonfinite_learned()  # the last update has no loss after it to show a NaN
        if bad:
            raise stop(f"the learned {bad} in the last update (iteration {stage.iters} of {stage.iters}, after a "
                       "finite loss)", "finite steps and rounding variables that are not NaN")
        steady = wall / stage.iters
        if len(checks) >= 3:
            (i1, t1), (i2, t2) = checks[1], checks[-1]
            steady = (t2 - t1) / (i2 - i1)
        return {"wall_s": wall, "s_per_iter": steady, "loss_first": first["total"], "loss_last": last["total"],
                "terms_first": first["terms"], "terms_last": last["terms"],
                "learned": tr.learned_counts(), "rounding_changed": tr.rounding_changed(),
                "loss_curve": [list(c) for c in curve[:: max(1, len(curve) // 50)]]}


def _to(x: torch.Tensor, place: torch.device, device: torch.device) -> torch.Tensor:
    """``x`` on ``place`` (pinned when that is the CPU and the compute device is CUDA)."""
    if place.type == "cpu" and device.type == "cuda":
        return x if x.device.type == "cpu" and x.is_pinned() else x.to("cpu").pin_memory()
    return x if x.device == place else x.to(place)


@contextlib.contextmanager
def _dynamo_limits(active: bool) -> Iterator[None]:
    """Let torch.compile keep one compiled step per unit and variant (instead of silently
    falling back to eager after 8 recompilations of the same code)."""
    if not active:
        yield
        return
    import torch._dynamo.config as dc

    names = [n for n in ("cache_size_limit", "recompile_limit", "accumulated_cache_size_limit",
                         "accumulated_recompile_limit") if hasattr(dc, n)]
    old = {n: getattr(dc, n) for n in names}
    try:
        for n in names:
            setattr(dc, n, max(old[n], 512))
        yield
    finally:
        for n, v in old.items():
            setattr(dc, n, v)


__all__ = ["Reconstructor", "StepContext", "TermFactory", "UnitRecon", "no_drop", "points_off", "tap_hooks"]
