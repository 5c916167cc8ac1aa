"""What each method config field means, for ``mgrq methods NAME``.

:data:`GLOSSARY` gives every field name one short line; :data:`OVERRIDES` replaces it for the
methods where the same name means something else (brecq's ``iters`` is its first pass only).
:data:`CHOICES` names the fixed sets a field is validated against: the very constants the
config validation imports, never a copy (``tests/test_cli.py`` checks them against what each
config accepts). An MGRQ variant's ``FIXED`` fields allow one value only: the one it fixes.

A new config field needs a line here: the tests fail for a field without a meaning and for a
line no registered method uses. A method of one's own outside this package (``$MGRQ_METHODS``)
gives its fields' meanings in their metadata instead: ``field(default=..., metadata={"help": ...})``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

from baselines.brecq import ACT_INPUTS
from baselines.ptq4vit import HESSIAN_GRADS, METRICS
from mgrq.methods.mgrq_terms import LOCAL_METRICS
from mgrq.methods.percentile import INITS as SEARCHES
from mgrq.methods.percentile import SOFTMAX_QUANTIZERS
from mgrq.methods.registry import Method, get_method
from mgrq.quant.functional import DIVISIONS, QUANTILE_MODES
from mgrq.quant.twin import TWIN_MODES
from mgrq.recon.config import (
    AUTOCASTS,
    BLOCK_LOSSES,
    CACHE_PLACES,
    COMPILE_MODES,
    FUSIONS,
    INPUT_MODES,
    MATMUL_PRECISIONS,
)
from mgrq.recon.init import INITS as RECON_INITS

# Field -> the constant its validation checks membership in.
CHOICES: dict[str, tuple[Any, ...]] = {
    "init": RECON_INITS,  # mgrq/recon/init.py check_start_fields
    "weight_init": SEARCHES,  # percentile.PercentileConfig and check_start_fields
    "act_init": SEARCHES,
    "softmax_quantizer": SOFTMAX_QUANTIZERS,  # percentile, repq_vit and check_start_fields
    "input_mode": INPUT_MODES,  # mgrq/recon/config.py ReconConfig
    "block_loss": BLOCK_LOSSES,
    "fusion": FUSIONS,
    "cache": CACHE_PLACES,
    "compile": COMPILE_MODES,
    "matmul_precision": MATMUL_PRECISIONS,
    "autocast": AUTOCASTS,
    "metric": METRICS,  # baselines/ptq4vit.py PTQ4ViTConfig
    "hessian_grad": HESSIAN_GRADS,
    "twin_softmax": TWIN_MODES,
    "local_metric": LOCAL_METRICS,  # mgrq/methods/mgrq.py MGRQConfig
    "act_input": ACT_INPUTS,  # baselines/brecq.py BrecqConfig
    "quantile": QUANTILE_MODES,  # baselines/repq_vit.py RepQViTConfig
    "division": DIVISIONS,  # repq_vit, ptq4vit, base_ptq (mgrq/quant/functional.py)
}

# Field -> meaning. Where several methods share a name, the line holds for all of them unless
# OVERRIDES says otherwise.
GLOSSARY: dict[str, str] = {
    # calibration-only methods (percentile, repq_vit, ptq4vit, base_ptq)
    "reparameterize": "fold per-channel post-LayerNorm scales into LN + next Linear (false: keep them)",
    "quantile": "pct as given, or as the ref. code's torch.quantile",
    "division": "x * (1/d) as torch's fake-quant, or x / d as the ref. code",
    "alpha": "smallest step factor searched: candidates d0 * (alpha + i (beta - alpha) / n)",
    "beta": "end of the step factor range searched, exclusive (see alpha)",
    "n_candidates": "step candidates per search (n)",
    "rounds": "alternating weight-step / input-step searches per layer",
    "metric": "score of a step candidate on the layer output",
    "hessian_grad": "metric=hessian: CE to FP top-1 (paper) or code's KL (~0)",
    "twin": "twin-uniform quantizers for the post-GELU and post-softmax inputs",
    "twin_softmax": "twin=true: own range per value (paper) or sum (ref. code)",
    "channelwise_conv": "patch-embedding conv weight: one step per output channel (false: per tensor)",
    "grad_batch": "images per forward/backward pass when collecting layer inputs and gradients",
    "capture_mb": "memory budget (MiB) for cached layer inputs and gradients (results unaffected)",
    # initial quantizers of the reconstruction methods
    "init": "calibration method giving the starting quantizers",
    "init_calib": "calibration images for the initial quantizers (the first N; 0 = all)",
    "weight_init": "weight step search, init=percentile only",
    "act_init": "activation step search, init=percentile only",
    "softmax_quantizer": "post-softmax quantizer, init=percentile only",
    # the reconstruction
    "iters": "iterations per unit of the one joint pass (rounding and steps learned together)",
    "batch": "images per iteration, drawn with replacement from the cached calibration set",
    "lr_round": "Adam learning rate of the AdaRound rounding variables",
    "lr_step": "Adam learning rate of the LSQ activation steps (cosine decay to 0)",
    "round_weight": "weight of AdaRound's rounding regularizer sum(1 - |2h - 1|^beta)",
    "warmup": "fraction of the iterations before the rounding regularizer turns on",
    "beta_start": "regularizer exponent beta at the end of the warm-up (then linear to beta_end)",
    "beta_end": "regularizer exponent beta at the last iteration",
    "input_mode": "unit input: quantized, FP, or mixed (qdrop: input_prob, act_drop)",
    "input_prob": "QDrop: probability that a unit input element comes from the quantized model",
    "act_drop": "QDrop: probability that an activation element in the unit skips its quantizer",
    "block_loss": "unit output error: squared, or Fisher-weighted (head unit: logit KL)",
    "fisher_damping": "block_loss=fisher weights (|dKL/dy| + fisher_damping)^2; 0 = squared gradient",
    "fusion": "loss terms: raw sum, or each over its first value in the unit",
    "act_iters": "iterations per unit of pass 2 (LSQ activation steps, activations on); 0 skips it",
    "act_p": "exponent p of pass 2's output error |y_hat - y|^p",
    "act_reinit": "re-calibrate the activation quantizers on the hard-rounded weights before pass 2",
    "act_input": "pass 2's unit input: quantized model's, or FP model's (BRECQ's code)",
    # MGRQ's terms
    "w_block": "weight of the block term (unit output error); 0 switches it off",
    "w_global": "EBGS weight: logit KL via the frozen FP tail; 0 = off",
    "global_tau": "EBGS KL temperature (loss times tau^2; the head's own KL stays at 1)",
    "global_every": "EBGS on every n-th iteration only (its weight is not rescaled)",
    "global_batch": "EBGS: first N images of each batch through the FP tail (0 = all)",
    "w_local": "IBLS weight: per-layer output alignment in block/merge units; 0 = off",
    "local_metric": "IBLS metric: per-channel mean/std, per-token KL, or MSE",
    # operational (the engine's)
    "units": "regex: reconstruct only the units whose name it matches (re.search); '' = all",
    "cache": "where unit inputs/targets are cached (auto: by free memory)",
    "compile": "how the training step runs",
    "matmul_precision": "float32 matmul precision (high: TF32 on CUDA, fp32 on CPU)",
    "autocast": "bf16: unit forward under bfloat16 autocast (quantizers stay fp32)",
    "check_every": "iterations between host reads of the loss (progress bar, NaN/Inf check)",
}

# Method -> field -> meaning, where a method's field differs from GLOSSARY.
OVERRIDES: dict[str, dict[str, str]] = {
    "percentile": {
        "weight_init": "weight step search (lp: BRECQ's L2.4 shrink)",
        "act_init": "activation step search (lp: BRECQ's L2.4 shrink)",
        "softmax_quantizer": "post-softmax quantizer: log base sqrt2 or 2, or uniform",
    },
    "repq_vit": {
        "softmax_quantizer": "post-softmax quantizer (RepQ-ViT: log base sqrt2)",
    },
    "brecq": {
        "iters": "iterations per unit of pass 1 (AdaRound rounding, activations off)",
        "lr_step": "Adam learning rate of the LSQ activation steps in pass 2 (cosine decay to 0)",
        "block_loss": "pass 1's unit output error (pass 2: |err|^act_p; head: logit KL)",
    },
}


class FieldDoc(NamedTuple):
    name: str
    default: Any
    meaning: str | None  # None: no line in GLOSSARY/OVERRIDES (the tests refuse that)
    choices: tuple[Any, ...] | None  # the allowed values, where validation has a fixed set


def meaning(method: str, field: str) -> str | None:
    """The meaning of ``field`` in ``method`` (its override, else the glossary line)."""
    return OVERRIDES.get(method, {}).get(field, GLOSSARY.get(field))


def choices(method: Method, field: str) -> tuple[Any, ...] | None:
    """The values ``field`` accepts in ``method``, where validation checks a fixed set."""
    fixed = getattr(method.config_cls, "FIXED", {})  # an MGRQ variant's switched-off parts
    if field in fixed:
        return (fixed[field],)
    inert_of = getattr(method.config_cls, "inert_of", None)  # with its defaults, as they are for every run
    if inert_of is not None and field in inert_of({}):  # settings of a part the variant switches off: the default
        return (getattr(method.config_cls, field),)
    return CHOICES.get(field)


def describe(method: Method | str) -> list[FieldDoc]:
    """One :class:`FieldDoc` per config field of ``method``, in the dataclass's order."""
    m = get_method(method) if isinstance(method, str) else method
    out = []
    for f in dataclasses.fields(m.config_cls):
        default = f.default if f.default is not dataclasses.MISSING else "(required)"
        out.append(FieldDoc(f.name, default, f.metadata.get("help") or meaning(m.name, f.name), choices(m, f.name)))
    return out
