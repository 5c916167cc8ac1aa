r"""``mgrq``: MGRQ, mixed-granularity reconstruction for ViTs, and its ablation variants.

Paper: L. Yang, Z. Li, J. Xiao, H. Gong, Q. Gu, "MGRQ: Post-Training Quantization For Vision
Transformer With Mixed Granularity Reconstruction", IEEE ICIP 2024 (arXiv 2406.09229). No public
code exists; only the abstract-level description was available. The spec this module implements
is this project's reading of it, written out below.

MGRQ runs on the shared reconstruction engine (:mod:`mgrq.recon`): it adds loss terms through
the engine's ``extra_terms`` hook (:mod:`mgrq.methods.mgrq_terms`), it has no private path.

**What the paper says** (its abstract, paraphrased; the quoted phrases below are its words):
block-wise reconstruction helps CNNs but gives limited gains on ViTs; MGRQ keeps an *Optimized
Block-wise Reconstruction* as its base, adds an *Extra-Block Global Supervision* that relates
each block's output to the model's output, an *Intra-Block Local Supervision* that aligns the
distribution of the outputs of every layer inside the block with the full-precision ones (to
reduce the generalization error), and a *Mixed Granularity Loss Fusion* of the three.

**This project's reading, field by field** (every choice the paper leaves open is a field):

- OBWR (the paper names it; everything below is ours):
  ``init`` = ``repq_vit`` (start from RepQ-ViT's calibrated quantizers, the same lab's previous
  method; ``percentile`` switches that off), on the first ``init_calib`` = 32 calibration images
  (RepQ-ViT's protocol; ``weight_init``/``act_init``/``softmax_quantizer`` only apply to
  ``init=percentile``). Units in forward order (patch embedding, each block / patch merging,
  head); AdaRound rounding and LSQ activation steps learned *jointly* (``lr_round`` 1e-3,
  ``lr_step`` 4e-5 with cosine decay, ``round_weight`` 0.01, beta ``beta_start`` 20 ->
  ``beta_end`` 2 after a ``warmup`` of 0.2: the BRECQ/QDrop lineage's constants), ``iters``
  per unit (20,000 at paper scale), ``batch`` 32. ``input_mode``: ``qdrop`` (default: the unit
  input is ``where(rand < input_prob, X_q, X_f)`` element-wise and every activation quantizer of
  the unit drops with probability ``act_drop``), ``quant`` or ``fp`` (no dropping in those two).
  Every uniform activation quantizer of the unit gets an LSQ step; the log-sqrt2 post-softmax
  quantizer keeps its calibrated step (straight-through gradient), as in ``brecq``/``qdrop``.
  ``block_loss``: ``mse`` (squared error summed over channels, averaged over tokens and batch)
  or ``fisher`` (weights ``(|g| + fisher_damping)^2``, 1 as BRECQ codes it; ``fisher_damping=0``
  gives the plain squared gradient). The head unit's block loss is the KL on logits (the engine's,
  at temperature 1: ``global_tau`` is EBGS's and does not change it).
- EBGS (the paper: it "considers the relationship between block outputs and the model's output,
  aiding block-wise reconstruction through global supervision"; the formula is ours):
  ``w_global * tau^2 * KL(softmax(z_F/tau) || softmax(T_k(U_k^Q(X))/tau))`` with the frozen FP
  tail ``T_k`` and cached FP logits ``z_F``; ``global_tau`` = 1; cost bounded by
  ``global_every`` (evaluated every n-th iteration, its weight is not rescaled) and
  ``global_batch`` (the first images of the batch; 0 = all). Not added to the head unit (global
  and block coincide there, at ``global_tau`` = 1), unless ``w_block = 0`` switches the block
  term off: then the head trains on it (its tail is empty). ``w_global = 0`` switches it off.
  ``w_block = 0`` needs ``w_global > 0``: without either, the patch embedding and the head (no
  IBLS there) would learn from the rounding regularizer alone.
- IBLS (the paper: it "reduces generalization errors by aligning the distribution of outputs at
  each layer within a block"; the statistics are ours): on every quantized Linear of block and
  merge units (``qkv``, ``proj``, ``fc1``, ``fc2``; Swin ``reduction``), ``local_metric`` =
  ``moments`` (the default, as MGRQ.md reads it: per-channel mean and std over batch and tokens,
  ``mean_l [||mu_Q - mu_F||^2 + ||sigma_Q - sigma_F||^2] / C_l``), ``kl`` (per-token softmax
  over channels) or ``mse``. The quantized side comes from the engine's taps of the training
  forward (no second pass); the FP side of ``moments`` from per-image statistics cached once per
  unit, while ``kl`` and ``mse`` run one no-grad FP forward of the unit per iteration.
  ``w_local = 0`` switches it off.
- MGLF (the paper: MGRQ "is further optimized for reconstruction through Mixed Granularity Loss
  Fusion"; the fusion's form is ours, the normalization after APHQ-ViT's port of BRECQ):
  ``fusion`` = ``normalized``: ``L = L_block/L_block0 + w_global L_global/L_global0 +
  w_local L_local/L_local0 + round_weight * L_round``, each ``L_0`` the term's detached value at
  its first evaluation in the unit; ``fusion=sum`` is the raw weighted sum. ``w_b`` is 1 (the
  engine's block term). With normalized fusion the data terms start near their weights whatever
  their scale, while ``round_weight * L_round`` keeps its raw scale: so the ratio of ``w_b`` to
  ``round_weight`` matters, not only the ratios among the data terms' weights (Adam is blind, up
  to its eps, to one factor on all of them: ``w_b=2, round_weight=0.02`` runs as ``w_b=1,
  round_weight=0.01``), and the regularizer's pull relative to the data differs from QDrop's raw
  sum by each unit's first block loss: ``L_b/L_b0 + w R`` runs as ``L_b + (w L_b0) R``. Measured
  on ``obwr-parts`` (``docs/results/obwr-parts-intel/fusion-pull.md``; medians per model and
  unit kind): ``L_b0`` is 0.001-0.04 for the head and patch-embedding units and 0.9-4.2 for
  blocks and Swin merges, yet the fraction of weights not rounded to nearest moves by at most 0.7
  points, except in the patch embedding (7.3-7.5% under the sum, 4.9-5.2% normalized, tiny ViT
  and DeiT), and top-1 within seed noise (``mgrq_obwr`` against the same with ``fusion=sum``:
  every paired interval contains 0).

Defaults ``w_global``, ``w_local``, ``global_every``, ``local_metric`` (chosen on the ``tune``
split, never on the held-out digits): see "Defaults" at the end of this docstring.

**Variants** (registered methods, so suites can list them; each fixes its switched-off part and
refuses a config that turns it back on): ``mgrq`` (everything), ``mgrq_obwr`` (``w_global=0``,
``w_local=0``), ``mgrq_obwr_global`` (``w_local=0``), ``mgrq_obwr_local`` (``w_global=0``),
``mgrq_sum_fusion`` (``fusion=sum``). ``mgrq_obwr`` is the engine's QDrop reconstruction from
the RepQ-ViT init: bit for bit the result of ``qdrop`` with ``init=repq_vit``,
``init_calib=32`` and ``fusion=normalized`` (tested). A switched-off term's own settings
(``global_tau``, ``global_every``, ``global_batch`` with ``w_global=0``; ``local_metric`` with
``w_local=0``) are refused at other values than their defaults, not ignored: the record and the
cell's hash would claim them (``inert()`` names them; reports compare ablation rows without them).

**Defaults**, chosen on the ``tune`` split (500 digits carved from the 4,000 training images;
the held-out digits were never evaluated; calibration draws from the other 3,500. The tiny FP
models were trained on all 4,000, ``tune`` included, so it is unseen by the quantization, not
by the FP training: a weaker validation than fresh images, the only one the offline data allow), W3A3, tiny zoo, 256 calibration images, 100
iterations per unit, seeds 0-2 for every cell, by ``suites/mgrq-sweep2.yaml``::

    mgrq suite run mgrq-sweep2 --label sweep2

    top-1 on `tune`, mean +- std over seeds 0-2
    row        tiny_vit        tiny_deit       tiny_swin       mean (9 cells)
    obwr       93.73 +- 0.81   93.13 +- 0.61   97.27 +- 0.31   94.71   (extra terms off)
    gl0.03     93.33 +- 0.83   91.33 +- 0.50   97.53 +- 0.31   94.07   <- the defaults
    gl1-sum    92.60 +- 1.04   92.13 +- 0.76   97.07 +- 0.42   93.93   (gl1, raw-sum fusion)
    g0.03      93.13 +- 0.50   90.93 +- 0.83   97.20 +- 0.53   93.76   (EBGS only)
    obwr-sum   92.73 +- 0.70   91.53 +- 0.83   96.80 +- 0.35   93.69   (terms off, raw-sum fusion)
    l0.03      92.93 +- 0.42   91.13 +- 0.46   96.73 +- 0.90   93.60   (IBLS only)
    gl1        92.60 +- 0.72   90.60 +- 0.40   96.80 +- 0.53   93.33   (the first sweep's pick)

The rule (the first sweep's): the best row among those that run every part. Chosen: ``w_global``
= 0.03 and ``w_local`` = 0.03, ``global_every`` = 1, ``global_batch`` = 8, ``fusion`` =
``normalized``. The rows above ran ``local_metric`` = ``kl``, the first sweep's pick (its
table, in this docstring at afa36f1: l1-kl 94.07 against l1, on moments, 93.87, most cells on one
seed). Both at the chosen weights, 3 seeds each, on one machine (rows ``gl0.03`` and
``gl0.03-mom`` of ``suites/mgrq-sweep2.yaml``)::

    mgrq suite run mgrq-sweep2 --label s29tune --only '\.(obwr|gl0\.03|gl0\.03-mom)\.'

    top-1 on `tune`, mean +- std over seeds 0-2 (quantization wall time, CPU, 2 jobs x 1 thread)
    row          tiny_vit              tiny_deit             tiny_swin             mean (9 cells)
    obwr         93.47 +- 0.12 (27 s)  92.60 +- 0.40 (29 s)  97.33 +- 0.81 (60 s)  94.47
    gl0.03       92.53 +- 0.46 (50 s)  91.47 +- 0.42 (39 s)  97.40 +- 0.00 (79 s)  93.80   (kl)
    gl0.03-mom   93.00 +- 0.53 (47 s)  91.53 +- 0.83 (42 s)  96.80 +- 0.53 (61 s)  93.78   (moments)

The two metrics tie (``kl`` minus ``moments``, paired by seed, 95% intervals: -0.47 +- 2.01,
-0.07 +- 2.74, +0.60 +- 1.31), and the tie goes to the spec's default: ``local_metric`` =
``moments``, which also needs no FP forward of the unit. Until 2026-11-28 the default was
``kl``; the results run before then say so where they are shown.

The learning rates stay the paper-scale ones by default; the suites' short budget (100 iterations) uses ``lr_round`` 1e-2 and ``lr_step`` 1e-3
(the first sweep, seed 0, vit/deit/swin: 93.6/93.0/97.2 against 89.6/90.0/96.0 with the
paper rates).

**What the sweeps say plainly.** No extra term beats OBWR alone in the mean over the 9 cells
of the tune split, at any weight tried (0.03 here; 0.1 to 3 in the first sweep,
``suites/mgrq-sweep.yaml``, label sweep1, whose rows' means were all below obwr's too). In
single columns some do: on tiny_swin, gl0.03 above (97.53 against 97.27) and, in the first
sweep, l0.3 and l1 (97.60) and g1 (97.40) against obwr's 97.20. At this budget all these gaps
are inside the run-to-run noise: on tiny_deit W3A3, obwr over seeds 0-5 gives 93.0 93.8 92.6
91.2 90.6 91.2 (92.07 +- 1.25, sample std), and the same runs with an EBGS term of weight 1e-9
(no effect in expectation; it only perturbs the optimization trajectory) give 92.6 94.0 92.6
91.2 91.6 91.0 (92.17 +- 1.13); the suite
``mgrq-noise`` reruns both. A term evaluated with zero weight leaves the run bit-identical
(tests/test_mgrq.py), so the spread is the optimization's, not a side effect of switching a term
on. Differences under about 1.5 points between means of 3 seeds are not resolved here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from mgrq.data import Calibration
from mgrq.methods.mgrq_terms import LOCAL_METRICS, GlobalKL, LocalAlignment
from mgrq.methods.registry import RunContext, register_method
from mgrq.recon import LossTerm, ReconConfig, Reconstructor, Stage
from mgrq.recon.config import engine_kwargs
from mgrq.recon.init import check_start_fields, initial_quantizers, refuse_idle
from mgrq.surgery import QuantModel
from mgrq.surgery.wrap import Unit

PAPER_CALIB = 1024
TERM_SETTINGS = {"w_global": ("global_tau", "global_every", "global_batch"), "w_local": ("local_metric",)}  # EBGS, IBLS


@dataclass(frozen=True)
class MGRQConfig:
    """MGRQ's settings (see the module docstring for what each one means and where it comes
    from). ``iters`` etc. are paper-scale; suites and tests set fewer."""

    # OBWR: initial quantizers
    init: str = "repq_vit"
    init_calib: int = 32
    weight_init: str = "percentile"
    act_init: str = "percentile"
    softmax_quantizer: str = "log_sqrt2"
    # OBWR: the joint reconstruction
    iters: int = 20000
    batch: int = 32
    lr_round: float = 1e-3
    lr_step: float = 4e-5
    round_weight: float = 0.01
    warmup: float = 0.2
    beta_start: float = 20.0
    beta_end: float = 2.0
    input_mode: str = "qdrop"
    input_prob: float = 0.5
    act_drop: float = 0.5
    block_loss: str = "mse"
    fisher_damping: float = 1.0
    w_block: float = 1.0
    # EBGS
    w_global: float = 0.03
    global_tau: float = 1.0
    global_every: int = 1
    global_batch: int = 8
    # IBLS
    w_local: float = 0.03
    local_metric: str = "moments"
    # MGLF
    fusion: str = "normalized"
    # operational (the engine's)
    units: str = ""  # regex: reconstruct only matching units ("" = all)
    cache: str = "auto"
    compile: str = "none"
    matmul_precision: str = "high"
    autocast: str = "none"
    check_every: int = 50

    FIXED: ClassVar[dict[str, Any]] = {}  # fields a variant pins (its switched-off parts)
    KEEPS: ClassVar[tuple[str, ...]] = ()  # weights a variant needs above 0 (the part it adds)
    METHOD: ClassVar[str] = "mgrq"

    def __post_init__(self) -> None:
        check_start_fields(self)
        if self.local_metric not in LOCAL_METRICS:
            raise ValueError(f"local_metric={self.local_metric!r}: expected one of {', '.join(LOCAL_METRICS)}")
        for f in ("w_block", "w_global", "w_local"):
            if not getattr(self, f) >= 0:
                raise ValueError(f"{f}={getattr(self, f)}: expected >= 0 (0 switches the term off)")
        if self.w_block == self.w_global == self.w_local == 0:
            raise ValueError("w_block, w_global and w_local are all 0: nothing to reconstruct")
        if self.w_block == self.w_global == 0:  # IBLS runs in block and merge units only
            raise ValueError("w_block=0 and w_global=0: the patch-embedding and head units would learn from the "
                             "rounding regularizer alone (IBLS runs in block and merge units only); expected "
                             "w_block > 0 or w_global > 0")
        if not self.global_tau > 0:
            raise ValueError(f"global_tau={self.global_tau}: expected > 0")
        if self.global_every < 1:
            raise ValueError(f"global_every={self.global_every}: expected >= 1")
        if self.global_batch < 0 or (self.w_global > 0 and self.global_batch > self.batch):  # fits, when EBGS runs
            raise ValueError(f"global_batch={self.global_batch}: expected 0 (the whole batch) .. batch={self.batch}")
        for f, v in self.FIXED.items():
            if getattr(self, f) != v:
                raise ValueError(f"{f}={getattr(self, f)!r}: method {self.METHOD} fixes {f}={v!r} (its switched-off "
                                 f"part); use method mgrq with {f}=... instead")
        for f in self.KEEPS:
            if getattr(self, f) == 0:
                raise ValueError(f"{f}=0: method {self.METHOD} runs that term (expected {f} > 0); without "
                                 "it the run is another variant, use that one instead")
        # a switched-off part's own settings are refused, not ignored
        for w, names in TERM_SETTINGS.items():
            off = f"{w}=0 here" + (f" (method {self.METHOD} fixes it; method mgrq sets it)" if w in self.FIXED else "")
            refuse_idle(self, names, getattr(self, w) > 0, f"{w} > 0", off)
        refuse_idle(self, ("input_prob", "act_drop"), self.input_mode == "qdrop", "input_mode='qdrop'",
                    f"input_mode={self.input_mode!r} here")
        self.stage()
        self.engine()

    def stage(self) -> Stage:
        """The one joint pass (rounding and steps together)."""
        return Stage("joint", self.iters, learn_rounding=True, learn_steps=True, acts=True,
                     lr_round=self.lr_round, lr_step=self.lr_step)

    def engine(self) -> ReconConfig:
        """The engine settings; QDrop's dropping only with ``input_mode='qdrop'``."""
        kw = engine_kwargs(self)  # the fields named as in ReconConfig, plus w_block
        kw["block_weight"] = self.w_block
        if self.input_mode != "qdrop":
            kw["act_drop"] = 0.0
        return ReconConfig(**kw)

    def inert(self) -> set[str]:
        """The fields that do not act in this config: those the variant pins (its switched-off
        parts) and a switched-off term's weight and settings. A report compares the rows of an
        ablation table on the other fields only."""
        return self.inert_of({w: getattr(self, w) for w in TERM_SETTINGS})

    @classmethod
    def inert_of(cls, values: dict[str, Any]) -> set[str]:
        """:meth:`inert` from a record's raw config values (strings, or fields of older code),
        without building (validating) a config: a record written before a check existed is read
        as it ran. A weight absent or unreadable counts as its default."""
        out = set(cls.FIXED)
        for w, names in TERM_SETTINGS.items():
            try:
                weight = float(values.get(w, getattr(cls, w)))
            except (TypeError, ValueError):
                weight = float(getattr(cls, w))
            if weight == 0:
                out |= {w, *names}
        return out

    def parts(self) -> dict[str, Any]:
        """Which of MGRQ's parts this config runs (for the run record)."""
        return {"block": self.w_block > 0, "ebgs": self.w_global > 0, "ibls": self.w_local > 0, "mglf": self.fusion}

    def extra_terms(self, unit: Unit, stage: Stage) -> list[LossTerm]:
        """EBGS and IBLS terms of ``unit`` (the engine adds the block term itself)."""
        terms: list[LossTerm] = []
        # the head's block term is the logit KL, EBGS itself: EBGS is added there only when
        # w_block = 0 switches the block term off (so the head keeps a data term)
        if self.w_global > 0 and (unit.kind != "head" or self.w_block == 0):
            terms.append(GlobalKL(self.w_global, self.global_tau, self.global_every, self.global_batch))
        if self.w_local > 0 and unit.kind in ("block", "merge"):
            terms.append(LocalAlignment(self.w_local, self.local_metric))
        return terms


@dataclass(frozen=True)
class MGRQObwrConfig(MGRQConfig):
    """``mgrq_obwr``: block loss only (EBGS and IBLS off)."""

    w_global: float = 0.0
    w_local: float = 0.0
    FIXED: ClassVar[dict[str, Any]] = {"w_global": 0.0, "w_local": 0.0}
    METHOD: ClassVar[str] = "mgrq_obwr"


@dataclass(frozen=True)
class MGRQObwrGlobalConfig(MGRQConfig):
    """``mgrq_obwr_global``: block + global terms (IBLS off)."""

    w_local: float = 0.0
    FIXED: ClassVar[dict[str, Any]] = {"w_local": 0.0}
    KEEPS: ClassVar[tuple[str, ...]] = ("w_global",)
    METHOD: ClassVar[str] = "mgrq_obwr_global"


@dataclass(frozen=True)
class MGRQObwrLocalConfig(MGRQConfig):
    """``mgrq_obwr_local``: block + local terms (EBGS off)."""

    w_global: float = 0.0
    FIXED: ClassVar[dict[str, Any]] = {"w_global": 0.0}
    KEEPS: ClassVar[tuple[str, ...]] = ("w_local",)
    METHOD: ClassVar[str] = "mgrq_obwr_local"


@dataclass(frozen=True)
class MGRQSumFusionConfig(MGRQConfig):
    """``mgrq_sum_fusion``: every term, raw weighted sum instead of the normalized fusion."""

    fusion: str = "sum"
    FIXED: ClassVar[dict[str, Any]] = {"fusion": "sum"}
    METHOD: ClassVar[str] = "mgrq_sum_fusion"


def quantize_mgrq(qmodel: QuantModel, calib: Calibration, cfg: MGRQConfig, ctx: RunContext) -> dict[str, Any]:
    """Initial quantizers, then one joint reconstruction pass with MGRQ's terms. Returns the
    method info for the run record (init, parts, engine settings, per-unit stats)."""
    from mgrq.config import config_dict

    qmodel.to(ctx.device)
    init = initial_quantizers(qmodel, calib, cfg.init, cfg.init_calib, ctx, cfg.weight_init, cfg.act_init,
                              cfg.softmax_quantizer)
    ecfg = cfg.engine()
    engine = Reconstructor(qmodel, calib.images, ecfg, device=ctx.device, seed=ctx.seed, progress=ctx.progress,
                           extra_terms=cfg.extra_terms, units=cfg.units, desc=cfg.METHOD, warnings=ctx.warnings)
    recon = engine.run([cfg.stage()])
    return {"init": init, "calib_images": len(calib.ids), "parts": cfg.parts(), "engine": config_dict(ecfg),
            "recon": [recon]}


_DESCRIPTIONS = {
    "mgrq": "MGRQ (ICIP 2024): block reconstruction from RepQ-ViT + global (tail KL) + local (per-layer KL), fused",
    "mgrq_obwr": "MGRQ ablation: optimized block-wise reconstruction only (RepQ-ViT init, QDrop, block loss)",
    "mgrq_obwr_global": "MGRQ ablation: block loss + extra-block global supervision",
    "mgrq_obwr_local": "MGRQ ablation: block loss + intra-block local supervision",
    "mgrq_sum_fusion": "MGRQ ablation: all terms, raw weighted sum instead of the normalized fusion",
}
for _cls in (MGRQConfig, MGRQObwrConfig, MGRQObwrGlobalConfig, MGRQObwrLocalConfig, MGRQSumFusionConfig):
    register_method(_cls.METHOD, _cls, _DESCRIPTIONS[_cls.METHOD], default_calib=PAPER_CALIB)(quantize_mgrq)
