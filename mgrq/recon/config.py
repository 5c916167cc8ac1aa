"""Settings of the reconstruction engine: what one pass over the units learns
(:class:`Stage`) and how every pass runs (:class:`ReconConfig`).

The defaults are the BRECQ/QDrop lineage's (BRECQ and QDrop reference code, see ``baselines/brecq.py``): batch 32, Adam 1e-3 on
the rounding variables, Adam 4e-5 with cosine decay on the activation steps, rounding weight 0.01,
beta 20 -> 2 after a 0.2 warm-up (20,000 iterations per unit is the methods' ``iters`` default;
:class:`Stage` has none).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

INPUT_MODES = ("quant", "fp", "qdrop")
BLOCK_LOSSES = ("mse", "fisher")
FUSIONS = ("sum", "normalized")
CACHE_PLACES = ("auto", "device", "cpu")
COMPILE_MODES = ("none", "kernels", "compile", "cudagraphs", "compile+cudagraphs")
AUTOCASTS = ("none", "bf16")
MATMUL_PRECISIONS = ("highest", "high", "medium")  # torch.set_float32_matmul_precision


@dataclass(frozen=True)
class Stage:
    """One pass over all units.

    Attributes:
        name: label in the run record (``joint``, ``rounding``, ``steps``).
        iters: optimizer steps per unit.
        learn_rounding: learn AdaRound variables of the unit's weights (else weights keep their
            current quantizer: nearest rounding, or the hard rounding of an earlier pass).
        learn_steps: learn the LSQ steps of the unit's uniform activation quantizers.
        acts: activation quantization on during this pass (BRECQ's first pass runs without).
        lr_round, lr_step: Adam learning rates (the step one decays with a cosine to 0).
        p: exponent of the output error ``|y_hat - y|^p`` (BRECQ's activation pass uses 2.4).
    """

    name: str
    iters: int
    learn_rounding: bool
    learn_steps: bool
    acts: bool = True
    lr_round: float = 1e-3
    lr_step: float = 4e-5
    p: float = 2.0

    def __post_init__(self) -> None:
        if self.iters < 1:
            raise ValueError(f"stage {self.name}: iters={self.iters}, expected >= 1")
        if not (self.learn_rounding or self.learn_steps):
            raise ValueError(f"stage {self.name}: learns nothing (learn_rounding and learn_steps both off)")
        if self.learn_steps and not self.acts:
            raise ValueError(f"stage {self.name}: learn_steps needs acts=True")
        for f in ("lr_round", "lr_step", "p"):
            if not getattr(self, f) > 0:
                raise ValueError(f"stage {self.name}: {f}={getattr(self, f)}, expected > 0")


@dataclass(frozen=True)
class ReconConfig:
    """How the engine runs every stage.

    Attributes:
        batch: images per iteration, drawn with replacement from the cached calibration set.
        input_mode: unit input ``quant`` (from the already-quantized model), ``fp`` (from the FP
            model) or ``qdrop`` (element-wise ``where(rand < input_prob, X_quant, X_fp)``).
        input_prob: QDrop's probability of taking the quantized input element.
        act_drop: QDrop's dropping inside the unit's activation quantizers: the probability that
            an element bypasses its quantizer (0 = off).
        round_weight, beta_start, beta_end, warmup: AdaRound's regularizer
            ``round_weight * sum(1 - |2h - 1|^beta)``, off during the first ``warmup`` fraction of
            the iterations, beta then linear from ``beta_start`` to ``beta_end``.
        block_loss: ``mse`` or ``fisher`` (error weighted by ``(|dKL/dy| + fisher_damping)^2``,
            BRECQ's as-coded Fisher diagonal; ``fisher_damping=0`` gives the plain squared gradient).
            The head unit always uses the KL between FP and quantized logits.
        block_weight: weight ``w_b`` of the block term in the fused objective.
        fusion: ``sum`` (``sum_i w_i L_i``) or ``normalized`` (each term divided by its value at
            its first evaluation in the unit, detached).
        cache: where cached unit inputs/targets live: ``device``, ``cpu`` (pinned, streamed) or
            ``auto`` (device when they take less than ``cache_fraction`` of free device memory).
        chunk: images per forward when building caches.
        compile: ``none`` (eager), ``kernels`` (eager step; only the training quantizers'
            element-wise kernels are compiled: ~20 s once per process, the CPU choice for
            short runs), ``compile`` (torch.compile of the whole forward+loss; ~14 s per unit
            on CPU, the CPU choice for long runs), ``cudagraphs`` (the whole
            iteration captured in one CUDA graph) or ``compile+cudagraphs``.
        matmul_precision: ``torch.set_float32_matmul_precision`` during the reconstruction:
            ``highest`` (fp32 products everywhere), ``high`` (TF32 on CUDA; fp32 on CPU) or
            ``medium`` (also bf16 products with fp32 accumulation on CPUs whose oneDNN has them,
            AMX or AVX-512 BF16: the CPU fast mode, with bf16 numerics; on CUDA as ``high``).
        autocast: ``bf16`` runs the unit forward under bfloat16 autocast (quantizers in fp32).
        check_every: iterations between host reads of the loss (progress bar, NaN check).
    """

    batch: int = 32
    input_mode: str = "quant"
    input_prob: float = 0.5
    act_drop: float = 0.0
    round_weight: float = 0.01
    beta_start: float = 20.0
    beta_end: float = 2.0
    warmup: float = 0.2
    block_loss: str = "mse"
    block_weight: float = 1.0
    fisher_damping: float = 1.0
    fusion: str = "sum"
    cache: str = "auto"
    cache_fraction: float = 0.5
    chunk: int = 64
    compile: str = "none"
    matmul_precision: str = "high"
    autocast: str = "none"
    check_every: int = 50

    def __post_init__(self) -> None:
        choices = {"input_mode": INPUT_MODES, "block_loss": BLOCK_LOSSES, "fusion": FUSIONS,
                   "cache": CACHE_PLACES, "compile": COMPILE_MODES, "autocast": AUTOCASTS,
                   "matmul_precision": MATMUL_PRECISIONS}
        for f, allowed in choices.items():
            if getattr(self, f) not in allowed:
                raise ValueError(f"{f}={getattr(self, f)!r}: expected one of {', '.join(allowed)}")
        for f in ("batch", "chunk", "check_every"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f}={getattr(self, f)}: expected >= 1")
        for f in ("input_prob", "act_drop", "warmup"):
            if not 0.0 <= getattr(self, f) <= 1.0:
                raise ValueError(f"{f}={getattr(self, f)}: expected a probability in [0, 1]")
        if not 0.0 < self.cache_fraction <= 1.0:
            raise ValueError(f"cache_fraction={self.cache_fraction}: expected in (0, 1]")
        for f in ("round_weight", "fisher_damping", "block_weight"):
            if getattr(self, f) < 0:
                raise ValueError(f"{f}={getattr(self, f)}: expected >= 0")
        if not self.beta_start > 0 or not self.beta_end > 0:
            raise ValueError(f"beta_start={self.beta_start}, beta_end={self.beta_end}: expected > 0")


def engine_kwargs(cfg: Any) -> dict[str, Any]:
    """The fields of a method's config dataclass that are also :class:`ReconConfig` fields, with
    their values: what a reconstruction method passes to the engine as it is."""
    names = {f.name for f in dataclasses.fields(ReconConfig)}
    return {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name in names}
