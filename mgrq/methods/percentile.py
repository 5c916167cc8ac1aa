"""``percentile``: basic PTQ with RepQ-ViT's quantizers and calibration, *without* its scale
reparameterization. The reference point every other method must beat.

- weights: uniform asymmetric, per output channel, three-percentile MSE search
  (``weight_init='lp'``: BRECQ's 80-step L2.4 shrink search; ``'minmax'``: min/max);
- activations: uniform asymmetric per tensor, three-percentile MSE search (post-LayerNorm
  activations included: without reparameterization they cannot be per-channel);
- post-softmax: log-sqrt2 (``softmax_quantizer='uniform'`` for a plain uniform one);
- the image input: 8-bit (the layer policy's ``image_bits``).

Calibration: the calibration images go through one forward pass with quantization on; each
quantizer initializes from the first tensor that reaches it, so later quantizers see
already-quantized inputs (RepQ-ViT's protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from mgrq.data import Calibration
from mgrq.methods.registry import RunContext, register_method
from mgrq.quant import point as P
from mgrq.quant.calib import lazy_init
from mgrq.quant.quantizers import PER_TENSOR, LogQuantizer, UniformQuantizer, per_channel
from mgrq.surgery import QuantModel

INITS = ("percentile", "lp", "minmax")
SOFTMAX_QUANTIZERS = ("log_sqrt2", "log2", "uniform")  # the post-softmax quantizer: log base sqrt2 or 2, or uniform


def check_softmax_quantizer(value: str) -> None:
    if value not in SOFTMAX_QUANTIZERS:
        raise ValueError(f"softmax_quantizer={value!r}: expected one of {', '.join(SOFTMAX_QUANTIZERS)}")


@dataclass(frozen=True)
class PercentileConfig:
    weight_init: str = "percentile"
    act_init: str = "percentile"
    softmax_quantizer: str = "log_sqrt2"

    def __post_init__(self) -> None:
        for f in ("weight_init", "act_init"):
            if getattr(self, f) not in INITS:
                raise ValueError(f"{f}={getattr(self, f)!r}: expected one of {', '.join(INITS)}")
        check_softmax_quantizer(self.softmax_quantizer)


def init_uniform(q: UniformQuantizer, x: torch.Tensor, how: str) -> None:
    if how == "percentile":
        q.init_percentile(x)
    elif how == "lp":
        q.init_lp_search(x)
    else:
        q.init_minmax(x)


def make_quantizer(p: P.QuantPoint, x: torch.Tensor, cfg: PercentileConfig) -> torch.nn.Module:
    """The quantizer ``percentile`` puts at point ``p``, initialized from ``x``."""
    assert p.bits is not None
    if p.kind == "weight":
        q = UniformQuantizer(p.bits, granularity=per_channel(0)).to(x.device)
        init_uniform(q, x, cfg.weight_init)
        return q
    if p.tag == P.POST_SOFTMAX and cfg.softmax_quantizer != "uniform":
        lq = LogQuantizer(p.bits, "sqrt2" if cfg.softmax_quantizer == "log_sqrt2" else "2").to(x.device)
        lq.init_percentile(x)
        return lq
    q = UniformQuantizer(p.bits, granularity=PER_TENSOR).to(x.device)
    init_uniform(q, x, cfg.act_init)
    return q


@torch.no_grad()
def calibrate_forward(qmodel: QuantModel, calib: Calibration, device: torch.device) -> None:
    """Push all calibration images through the model in one forward: each quantizer is set from
    the first tensor that reaches it (:func:`~mgrq.quant.calib.lazy_init`), so a forward in
    batches would calibrate on the first batch only."""
    qmodel(calib.images.to(device))


@register_method("percentile", PercentileConfig, "basic PTQ: RepQ-ViT's quantizers and percentile search, no reparameterization")
def quantize(qmodel: QuantModel, calib: Calibration, cfg: PercentileConfig, ctx: RunContext) -> dict[str, Any]:
    qmodel.to(ctx.device)
    points = qmodel.active_points()
    for p in qmodel.points():
        p.enabled = False

    def init(p: P.QuantPoint, x: torch.Tensor) -> None:
        p.quantizer = make_quantizer(p, x, cfg)
        p.enabled = True

    with lazy_init(points, init):
        calibrate_forward(qmodel, calib, ctx.device)
    return {"points": len(points)}
