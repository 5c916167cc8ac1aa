"""``ptq4vit`` and ``base_ptq``: PTQ4ViT's Hessian-guided scale search with twin-uniform
quantizers, and its own baseline "Base PTQ", calibration only.

Paper: Z. Yuan, C. Xue, Y. Chen, Q. Wu, G. Sun, "PTQ4ViT: Post-Training Quantization for Vision
Transformers with Twin Uniform Quantization", ECCV 2022 (arXiv 2111.12293).
Reference: github.com/hahnyuan/PTQ4ViT at commit b42c790 (``configs/PTQ4ViT.py``,
``configs/BasePTQ.py``, ``quant_layers/{linear,matmul,conv}.py``, ``utils/quant_calib.py``
``HessianQuantCalibrator.batching_quant_calib`` as called by ``example/test_all.py``).

What ``ptq4vit`` does (constants from the reference):

- Symmetric signed uniform quantizers ``clamp(round(x / d), -2^(b-1), 2^(b-1) - 1) * d``. Each
  step starts at ``d0 = max|x| / (2^(b-1) - 0.5)`` and is searched over
  ``d0 * (alpha + i (beta - alpha) / n)``, ``i = 0..n-1`` (alpha 0.01, beta 1.2, n 100).
- Per layer, ``rounds`` (3) alternating searches: the weight step(s) with the input quantized
  at its current step, then the input step with the weights quantized at theirs. Each candidate
  is scored on the layer's output ``O``: Hessian-guided ``sum((g * (O - O_hat))^2)``, ``g`` the
  gradient of the task loss w.r.t. ``O``.
- Granularity: Linear weights per tensor, ``qkv`` with one step per q / k / v row block;
  Linear inputs per tensor; both matmul operands head-wise (one step per head); the
  patch-embedding conv weight per output channel.
- Twin-uniform quantizers (:mod:`mgrq.quant.twin`) for the input of ``fc2`` (post-GELU:
  negative step fixed at 0.16997 / 2^(b-1), positive step searched; the paper's constraint that
  the two steps differ by a power of two is not enforced, as in the code) and for the post-softmax
  operand (one split per layer searched in ``2^-i``, ``i = 0..19``, steps ``1 / (2^(b-1) - 1)``
  for the high range and ``split / (2^(b-1) - 1)`` for the low one, as coded; during that search
  the second operand ``v`` stays unquantized, as coded).
- Parallel calibration: every layer is calibrated on full-precision inputs and outputs of the
  calibration images (32 by default), never on the outputs of already-quantized layers. Which
  32 images: the project's protocol draws them from the training split with the run's seed, the
  same draw for every method (the reference draws with seed 3).

``base_ptq`` (``configs/BasePTQ.py``): the same framework with alpha 0.5, one round, the
cosine-similarity metric (row-wise cosine of ``O`` and ``O_hat``), plain uniform quantizers
instead of the twin ones, and a per-tensor patch-embedding weight. (The repository's
``example/test_all.py`` overrides the metric of both configs to ``hessian``; we keep the
config file's cosine, the setting its README describes.)

Switches (config fields, recorded in the run record's ``method.config``):

- ``hessian_grad``: the loss whose gradient weighs the metric. ``ce_fp_label`` (default):
  cross-entropy of the model w.r.t. the full-precision model's top-1 prediction, the paper's
  intent (its gradient is non-zero). ``kl_fp_fp`` (as coded): ``KL(softmax(FP) || FP)`` with the
  model in full precision, logits of the full batch vs those of batches of ``grad_batch``
  images, whose gradient is only float round-off (~1e-8; a noise-weighted squared error).
- ``twin_softmax``: ``select`` (default, the paper: each value quantized in its own range) or
  ``sum`` (as coded: both ranges' outputs added, biased by up to ``split``). ``select`` is not
  monotone at splits that the high range rounds down (``mgrq.quant.twin``); among the search's
  ``2^-i`` these are those under half a high-range step, which at 3 bits the search picks: 1 or
  2 of the 4 (ViT, DeiT) or 6 (Swin) softmax quantizers of each W3A3 cell of ``ablation-mgrq``
  (none in tiny Swin's seed 1) took a split of 0.125 or 0.0625.
- ``metric`` (``hessian`` | ``cosine`` | ``mse``), ``alpha``, ``beta``, ``n_candidates``,
  ``rounds``, ``twin``, ``channelwise_conv``: the framework's knobs (``base_ptq`` sets them).
- ``division``: ``reciprocal`` (default) or ``divide`` (as coded): how the uniform quantizers the
  search installs compute ``x / d`` in calibration and evaluation (see the deviations below).
- ``grad_batch``: images per forward/backward when collecting gradients (4 in the reference).
- ``capture_mb``: memory budget for cached layer inputs and gradients; units (embedding,
  blocks, head) are captured in as few full-model passes as fit (results do not depend on it).

Deviations from the reference (the search itself is the same):

- Inputs, outputs and gradients of all layers are collected in one forward/backward pass over
  the calibration images (per group of units within ``capture_mb``) instead of 8 passes per
  layer: in parallel calibration the network is in full precision during every pass, so the
  tensors are the same.
- A search whose other operand's step did not change since its last run is skipped: it would
  return the same step (searches are deterministic), so later rounds often cost nothing.
- The image input: the reference leaves it in full precision; the project's protocol quantizes
  it at the layer policy's ``image_bits`` (8) for every method, and here its step is searched
  like any Linear input (the reference's code path for a quantized conv input). For the
  reference's setting pass ``--bits-override 'patch_embed\\.proj\\.act_q=fp'``.
- The reference cannot wrap DeiT's distillation head (``head_dist`` is missing from its module
  table); here it is a per-tensor classifier like ``head``. Swin: timm >= 1.0 (see repq_vit).
- The reference's ``bias_correction`` flag is set but unused on its batching path: no bias
  correction here either.
- The division (``division``): the search divides, ``round(x / d)``, as the reference's code;
  the uniform quantizers it installs (weights, Linear inputs, head-wise matmul operands) compute
  ``x * (1 / d)`` by default, as torch's fused fake-quant kernels do, which moves a code where a
  quotient lies at a rounding tie. It was the cause of the logit differences left against the
  reference's own ``test_all.py`` on tiny ViT and DeiT; ``division=divide`` computes ``x / d``
  there too (``docs/results/reference-code/results_ptq4vit.md``). The twin quantizers divide in
  both settings.
- Summation order: every score is the reference's similarity computed and reduced in its
  order, with its candidates laid out as its batched code lays them out, its memory-budget
  batching included (``Scorer``, ``reference_batching``; written out against its code in
  ``tests/test_ptq4vit.py``), since the result of a float32 reduction follows both. A plain
  mean over all rows picked another step where two candidates scored within float32 round-off:
  two heads of tiny_swin W4A4's ``matmul1`` (cosine; 1.6e-7 and 1.2e-7 apart in float64, where
  the reference's order picked the float64 winner) and tiny_deit W6A6's ``blocks.3.mlp.fc1``
  input. The Hessian and MSE scores took their sums in another order until
  this was extended to them (2026-11-29). Not matched: the candidates' outputs come from one
  product per candidate here and from one over a batch of candidates there, which a BLAS library
  may round differently (every step equal on the tiny zoo where compared).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mgrq.data import Calibration
from mgrq.errors import ConfigError
from mgrq.methods.registry import RunContext, register_method
from mgrq.quant import point as P
from mgrq.quant.functional import DIVISIONS, SCALE_FLOOR
from mgrq.quant.quantizers import PER_TENSOR, UniformQuantizer, per_channel, per_group
from mgrq.quant.twin import (
    TWIN_MODES,
    PostGeluTwinQuantizer,
    SoftmaxTwinQuantizer,
    post_gelu_twin_quant,
    softmax_twin_quant,
)
from mgrq.surgery import QuantModel
from mgrq.surgery.layers import QuantConv2d, QuantLinear, QuantMatMul

METRICS = ("hessian", "cosine", "mse")
HESSIAN_GRADS = ("ce_fp_label", "kl_fp_fp")
SPLITS = 20  # post-softmax split candidates 2^-i, i < 20


@dataclass(frozen=True)
class PTQ4ViTConfig:
    alpha: float = 0.01
    beta: float = 1.2
    n_candidates: int = 100
    rounds: int = 3
    metric: str = "hessian"
    hessian_grad: str = "ce_fp_label"
    twin: bool = True
    twin_softmax: str = "select"
    channelwise_conv: bool = True
    grad_batch: int = 4
    capture_mb: int = 4096
    division: str = "reciprocal"

    def __post_init__(self) -> None:
        if not 0 <= self.alpha < self.beta:
            raise ValueError(f"alpha={self.alpha}, beta={self.beta}: expected 0 <= alpha < beta")
        for f in ("n_candidates", "rounds", "grad_batch", "capture_mb"):
            if getattr(self, f) < 1:
                raise ValueError(f"{f}={getattr(self, f)}: expected >= 1")
        if self.metric not in METRICS:
            raise ValueError(f"metric={self.metric!r}: expected one of {', '.join(METRICS)}")
        if self.hessian_grad not in HESSIAN_GRADS:
            raise ValueError(f"hessian_grad={self.hessian_grad!r}: expected one of {', '.join(HESSIAN_GRADS)}")
        if self.twin_softmax not in TWIN_MODES:
            raise ValueError(f"twin_softmax={self.twin_softmax!r}: expected one of {', '.join(TWIN_MODES)}")
        if self.division not in DIVISIONS:
            raise ValueError(f"division={self.division!r}: expected one of {', '.join(DIVISIONS)}")

    def factors(self) -> torch.Tensor:
        """The search grid ``alpha + i (beta - alpha) / n``, ``i = 0..n-1`` (as the reference)."""
        n = self.n_candidates
        return torch.tensor([self.alpha + i * (self.beta - self.alpha) / n for i in range(n)])


@dataclass(frozen=True)
class BasePTQConfig(PTQ4ViTConfig):
    alpha: float = 0.5
    rounds: int = 1
    metric: str = "cosine"
    twin: bool = False
    channelwise_conv: bool = False


def fq_sym(x: torch.Tensor, step: torch.Tensor, bits: int, axis: int | None = None, low: int | None = None) -> torch.Tensor:
    """Symmetric signed fake-quantization ``clamp(round(x / d), -2^(b-1), 2^(b-1) - 1) * d``, as
    the reference computes it (one step, or one per index of ``axis``); ``low`` overrides the
    lowest code (0 for the positive half of the post-GELU quantizer)."""
    half = 2 ** (bits - 1)
    if axis is not None:
        shape = [1] * x.dim()
        shape[axis] = -1
        step = step.reshape(shape)
    return torch.div(x, step).round_().clamp_(-half if low is None else low, half - 1).mul_(step)


def init_step(x: torch.Tensor, bits: int, positive: bool = False) -> torch.Tensor:
    """``max|x| / (2^(b-1) - 0.5)`` (``max x`` when ``positive``)."""
    m = x.amax() if positive else x.abs().amax()
    return (m / (2 ** (bits - 1) - 0.5)).clamp_min(SCALE_FLOOR)


# --------------------------------------------------------------------------------------------
# Layers to calibrate ("sites") and their cached tensors
# --------------------------------------------------------------------------------------------


@dataclass
class Site:
    name: str
    module: nn.Module
    points: list[P.QuantPoint]
    inputs: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    grads: list[torch.Tensor] = field(default_factory=list)

    def active(self) -> bool:
        return any(p.bits is not None for p in self.points)


def find_sites(qmodel: QuantModel) -> list[Site]:
    """Every QuantLinear / QuantConv2d / QuantMatMul with an active point, in forward order."""
    sites = []
    for name, m in qmodel.model.named_modules():
        if isinstance(m, (QuantLinear, QuantConv2d)):
            s = Site(name, m, [m.weight_q, m.act_q])
        elif isinstance(m, QuantMatMul):
            s = Site(name, m, [m.a_q, m.b_q])
        else:
            continue
        if s.active():
            sites.append(s)
    return sites


def unit_groups(qmodel: QuantModel, sites: list[Site], images: torch.Tensor, budget_mb: int) -> list[list[Site]]:
    """Consecutive units' sites grouped so that one group's cached tensors fit ``budget_mb``
    (sizes measured by a one-image forward)."""
    unit_of: dict[int, int] = {}
    for i, u in enumerate(qmodel.units()):
        for mod in u.modules:
            for sub in mod.modules():
                unit_of.setdefault(id(sub), i)
    sizes: dict[int, int] = {}

    def probe(s: Site):
        def hook(mod, inputs, out):
            sizes[id(s)] = sum(t.numel() for t in inputs) + out.numel()
        return hook

    handles = [s.module.register_forward_hook(probe(s)) for s in sites]
    with torch.no_grad():
        qmodel(images[:1])
    for h in handles:
        h.remove()
    groups: list[list[Site]] = []
    cur: list[Site] = []
    cur_bytes, cur_unit = 0, -1
    for s in sites:
        b = sizes.get(id(s), 0) * 4 * len(images)
        u = unit_of.get(id(s.module), cur_unit)
        if cur and u != cur_unit and cur_bytes + b > budget_mb * 2**20:
            groups.append(cur)
            cur, cur_bytes = [], 0
        cur.append(s)
        cur_bytes += b
        cur_unit = u
    if cur:
        groups.append(cur)
    return groups


def capture(qmodel: QuantModel, sites: list[Site], images: torch.Tensor, fp_logits: torch.Tensor, cfg: PTQ4ViTConfig) -> None:
    """Full-precision forward (and, for the Hessian metric, backward) passes over ``images`` in
    batches of ``grad_batch``, caching each site's inputs and output gradient."""
    need_grad = cfg.metric == "hessian"

    def hook(s: Site):
        def fn(mod, inputs, out):
            s.inputs.append(tuple(t.detach() for t in inputs))
            if need_grad:
                out.register_hook(lambda g: s.grads.append(g.detach()))
        return fn

    handles = [s.module.register_forward_hook(hook(s)) for s in sites]
    params = [p for p in qmodel.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with qmodel.quant_off():
            if not need_grad:
                with torch.no_grad():
                    for chunk in images.split(cfg.grad_batch):
                        qmodel(chunk)
            else:
                labels = fp_logits.argmax(-1)
                fp_prob = F.softmax(fp_logits, dim=-1)
                for i in range(0, len(images), cfg.grad_batch):
                    x = images[i : i + cfg.grad_batch].clone().requires_grad_(True)
                    pred = qmodel(x)
                    if cfg.hessian_grad == "ce_fp_label":
                        loss = F.cross_entropy(pred, labels[i : i + cfg.grad_batch])
                    else:
                        loss = F.kl_div(F.log_softmax(pred, dim=-1), fp_prob[i : i + cfg.grad_batch], reduction="batchmean")
                    loss.backward()
    finally:
        for h in handles:
            h.remove()
        for p in params:
            p.requires_grad_(True)
    for s in sites:  # backward visits sites in reverse order within each batch: one grad per batch
        if need_grad and len(s.grads) != len(s.inputs):
            raise RuntimeError(f"{s.name}: {len(s.grads)} gradients for {len(s.inputs)} inputs")


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------


class Scorer:
    """Loss of candidate outputs against the FP output (lower is better): the reference's
    similarity negated, computed and reduced in its order and layout, since the result of a
    float32 reduction follows both (where two candidates score within round-off, another order
    picks another step). Per element: ``(g (O - O_hat))^2`` (``hessian``), ``(O - O_hat)^2``
    (``mse``) or, per feature vector, ``-cos(O, O_hat)`` (``cosine``).

    - Linear (PTQSLBatchingQuantLinear): the mean over each row's group of columns, then over
      the tokens, summed over the images (dim 0 of the cached input: windows on Swin), the
      candidates laid out ``[images, tokens, n, groups]``; the input search scores the whole row.
    - Matmul (PTQSLBatchingQuantMatMul): the mean over the columns, then the rows, summed over
      the batch, per head; the twin split search (SoS...MatMul) takes the mean over heads and rows
      together.
    - Conv, laid out as its output ``[images, O, positions]``: per tensor (BatchingEasyQuantConv2d)
      the mean (or cosine) over the channels, then the mean over the positions, summed over the
      images (its input search, which fails as coded and no config runs, as its comments give
      the shapes: the candidates laid out ``[k, images]``, so the image sum is contiguous); per channel
      (ChannelwiseBatchingQuantConv2d, ``channelwise``) the mean (cosine) over each channel's
      positions, summed over the images, and for its input search the mean over channels and
      positions together (cosine: over the channels' cosines).

    The reference batches its work to fit a memory budget (:func:`reference_batching`): the
    candidates ``chunk`` at a time (a Linear's or conv's chunk laid out and reduced on its own),
    and, where even two candidates would not fit, the images ``batch`` at a time, summed per batch
    and then over the batches; both are followed here.
    """

    def __init__(self, metric: str, raw: torch.Tensor, grad: torch.Tensor | None, bias: torch.Tensor | None = None,
                 images: int = 1, conv: bool = False, channelwise: bool = False, chunk: int = 0, batch: int = 0):
        self.metric, self.raw, self.grad, self.bias, self.images, self.conv = metric, raw, grad, bias, images, conv
        self.channelwise = conv and channelwise
        self.chunk, self.batch = chunk, batch  # 0: all at once
        if conv:
            self.raw_maps = self._maps(raw)
            self.grad_maps = None if grad is None else self._maps(grad)

    def _maps(self, y: torch.Tensor) -> torch.Tensor:
        """Conv output rows ``[images x positions, O]`` -> ``[images, O, positions]``, contiguous:
        the layout of the reference's conv output."""
        return y.view(self.images, -1, y.shape[1]).transpose(1, 2).contiguous()

    def _elements(self, y: torch.Tensor, raw: torch.Tensor, grad: torch.Tensor | None) -> torch.Tensor:
        d = torch.sub(raw, y, out=y)  # y is this candidate's own output
        if grad is not None:
            d.mul_(grad)
        return d.square_()

    def _loss(self, y: torch.Tensor, raw: torch.Tensor, grad: torch.Tensor | None, dim: int) -> torch.Tensor:
        """The loss reduced over ``dim``: minus the cosine, or the mean of the elements."""
        if self.metric == "cosine":
            return -F.cosine_similarity(y, raw, dim=dim)
        return self._elements(y, raw, grad).mean(dim)

    def linear(self, x: torch.Tensor, w: torch.Tensor, groups: int, whole: bool = False) -> torch.Tensor:
        """``x`` [M, K], ``w`` [O, K] -> one candidate's partial loss, for :meth:`stack`: Linear
        ``[M, groups]`` (``whole``: ``[M, 1]``); conv ``[images]``, or per channel ``[images, O]``
        (``whole``: ``[images]``)."""
        y = F.linear(x, w, self.bias)
        if not self.conv:
            m, g = y.shape[0], 1 if whole else groups
            grad = None if self.grad is None else self.grad.view(m, g, -1)
            return self._loss(y.view(m, g, -1), self.raw.view(m, g, -1), grad, -1)
        y = self._maps(y)
        if not self.channelwise:
            return self._loss(y, self.raw_maps, self.grad_maps, 1).mean(-1)
        if not whole:
            return self._loss(y, self.raw_maps, self.grad_maps, -1)
        if self.metric == "cosine":
            return self._loss(y, self.raw_maps, None, -1).mean(1)
        return self._elements(y, self.raw_maps, self.grad_maps).mean((1, 2))

    def _batch_sums(self, t: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Sums over ``dim`` (the images), one per calibration batch, stacked in its place."""
        return torch.stack([part.sum(dim) for part in t.split(self.batch or t.shape[dim], dim)], dim)

    def stack(self, losses: list[torch.Tensor], whole: bool = False) -> torch.Tensor:
        """One :meth:`linear` result per candidate -> ``[n, groups]`` (``whole``: ``[n, 1]``):
        per chunk of candidates, laid out ``[images, tokens, k, groups]`` (Linear, the mean over
        the tokens first) or ``[images, k(, O)]`` (conv; the per-tensor conv's input search
        ``[k, images]``), summed per calibration batch; the chunks side by side, summed over the
        batches."""
        step = self.chunk or len(losses)
        cand = 0 if whole and self.conv and not self.channelwise else 1  # the candidates' dim; the images' is the other
        parts = []
        for i in range(0, len(losses), step):
            t = torch.stack(losses[i:i + step], cand)
            if not self.conv:
                t = t.view(self.images, -1, *t.shape[1:]).mean(1)
            parts.append(self._batch_sums(t, 1 - cand))
        out = torch.cat(parts, cand).sum(1 - cand)
        return out if out.dim() == 2 else out[:, None]

    def matmul(self, a: torch.Tensor, b: torch.Tensor, whole: bool = False) -> torch.Tensor:
        """``a`` [B, H, N, D] @ ``b`` [B, H, D, N2] -> loss per head [H] (``whole``: a scalar)."""
        rows = self._loss(torch.matmul(a, b), self.raw, self.grad, -1)  # [B, H, N]
        return self._batch_sums(rows.mean((1, 2)) if whole else rows.mean(2)).sum(0)


def reference_batching(numel: int, images: int, budget_gib: int) -> tuple[int, int]:
    """The reference's ``_initialize_calib_parameters``: from ``numel``, the element count it
    budgets for all ``images`` (Linear and conv: twice input plus output; matmul: both inputs
    plus twice the output), and its budget (3 GiB Linear and matmul, 15 GiB conv), the candidates
    per batched product and the calibration images per batch (halved until two candidates fit),
    in its float arithmetic."""
    batch = images
    while batch:
        chunk = int((budget_gib * 1024 * 1024 * 1024 / 4) // (numel / images * batch))
        if chunk > 1:
            return chunk, batch
        batch //= 2
    raise ConfigError(f"one calibration image's tensors ({numel // images} elements) exceed the reference's "
                      f"{budget_gib} GiB budget")


def _pick(losses: torch.Tensor, cands: torch.Tensor) -> torch.Tensor:
    """``losses`` [n, G], ``cands`` [n, G] -> the best candidate per group (the first of equals)."""
    best = losses.argmin(0)
    return cands.gather(0, best[None]).squeeze(0)


@dataclass
class Stats:
    searches: int = 0
    skipped: int = 0


def search_linear(s: Site, cfg: PTQ4ViTConfig, stats: Stats) -> None:
    m = s.module
    wp, ap = m.weight_q, m.act_q
    conv = isinstance(m, QuantConv2d)
    x = torch.cat([t[0] for t in s.inputs])
    n_img, n_in = x.shape[0], x.numel()  # the cached input's, as the reference counts it
    w = m.weight.detach()
    if conv:
        k, st = m.kernel_size, m.stride
        if tuple(k) != tuple(st) or any(m.padding) or tuple(m.dilation) != (1, 1) or m.groups != 1:
            raise ConfigError(f"{s.name}: PTQ4ViT supports patch-embedding convs (stride = kernel, no padding)")
        x = F.unfold(x, k, stride=st).transpose(1, 2)
        w = w.reshape(w.shape[0], -1)
    x = x.reshape(-1, x.shape[-1])
    bias = None if m.bias is None else m.bias.detach()
    raw = F.linear(x, w, bias)
    grad = None
    if s.grads:
        g = torch.cat(s.grads)
        grad = (g.permute(0, 2, 3, 1) if conv else g).reshape(raw.shape)
    s.inputs, s.grads = [], []
    out_ch = w.shape[0]
    if conv:
        groups = out_ch if cfg.channelwise_conv else 1
    else:
        groups = 3 if s.name.endswith("qkv") and out_ch % 3 == 0 else 1
    chunk, batch = reference_batching(2 * (n_in + raw.numel()), n_img, 15 if conv else 3)
    scorer = Scorer(cfg.metric, raw, grad, bias, images=n_img, conv=conv, channelwise=conv and cfg.channelwise_conv,
                    chunk=chunk, batch=batch)
    f = cfg.factors().to(x.device)

    wb, ab = wp.bits, ap.bits
    gelu = cfg.twin and ap.tag == P.POST_GELU
    s_w = s_a = None
    if wb is not None:
        s_w = (w.abs().reshape(groups, -1).amax(1) / (2 ** (wb - 1) - 0.5)).clamp_min(SCALE_FLOOR)
        cand_w = f[:, None] * s_w[None]
    if ab is not None:
        s_a = init_step(x, ab, positive=gelu)
        cand_a = f * s_a
        neg = PostGeluTwinQuantizer(ab).neg_scale if gelu else 0.0

    if gelu:  # twin: the negative half has a fixed step, the positive half is searched
        x_pos = x.clamp_min(0)
        x_neg = post_gelu_twin_quant(x.clamp_max(0), 1.0, neg, ab)

    def qx(step: torch.Tensor | None) -> torch.Tensor:
        if step is None:
            return x
        if gelu:
            return fq_sym(x_pos, step, ab, low=0).add_(x_neg)
        return fq_sym(x, step, ab)

    def qw(step: torch.Tensor) -> torch.Tensor:
        if groups == 1:
            return fq_sym(w, step, wb)
        return fq_sym(w, step.repeat_interleave(out_ch // groups), wb, axis=0)

    seen_a: torch.Tensor | None | str = "never"
    seen_w: torch.Tensor | str = "never"
    divide = cfg.division == "divide"
    for _ in range(cfg.rounds):
        if wb is not None:
            if isinstance(seen_a, str) or not _same(seen_a, s_a):
                xq = qx(s_a)
                s_w = _pick(scorer.stack([scorer.linear(xq, qw(c), groups) for c in cand_w]), cand_w)
                seen_a = s_a
                stats.searches += 1
            else:
                stats.skipped += 1
        if ab is not None:
            if isinstance(seen_w, str) or not _same(seen_w, s_w):
                wq = w if s_w is None else qw(s_w)
                losses = [scorer.linear(qx(c), wq, groups, whole=True) for c in cand_a]
                s_a = _pick(scorer.stack(losses, whole=True), cand_a[:, None])[0]
                seen_w = s_w
                stats.searches += 1
            else:
                stats.skipped += 1

    if wb is not None:
        gran = (per_channel(0) if groups == out_ch else PER_TENSOR) if conv else (per_group(0, 3) if groups == 3 else PER_TENSOR)
        wq_ = UniformQuantizer(wb, signed=True, symmetric=True, granularity=gran, divide=divide).to(x.device)
        wq_.set_params(s_w if groups > 1 else s_w[0], torch.zeros_like(s_w if groups > 1 else s_w[0]))
        wp.quantizer = wq_
    if ab is not None:
        if gelu:
            aq: nn.Module = PostGeluTwinQuantizer(ab).to(x.device)
            aq.set_scale(s_a)
        else:
            aq = UniformQuantizer(ab, signed=True, symmetric=True, divide=divide).to(x.device)
            aq.set_params(s_a, torch.zeros_like(s_a))
        ap.quantizer = aq


def _same(a: torch.Tensor | None, b: torch.Tensor | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return bool(torch.equal(a, b))


def search_matmul(s: Site, cfg: PTQ4ViTConfig, stats: Stats) -> None:
    m = s.module
    pa, pb = m.a_q, m.b_q
    a = torch.cat([t[0] for t in s.inputs])
    b = torch.cat([t[1] for t in s.inputs])
    grad = torch.cat(s.grads) if s.grads else None
    s.inputs, s.grads = [], []
    raw = torch.matmul(a, b)
    _, batch = reference_batching(a.numel() + b.numel() + 2 * raw.numel(), a.shape[0], 3)
    scorer = Scorer(cfg.metric, raw, grad, images=a.shape[0], batch=batch)
    heads = a.shape[1]
    f = cfg.factors().to(a.device)
    twin = cfg.twin and pa.tag == P.POST_SOFTMAX and pa.bits is not None

    def head_init(t: torch.Tensor, bits: int) -> torch.Tensor:
        return (t.abs().amax((0, 2, 3)) / (2 ** (bits - 1) - 0.5)).clamp_min(SCALE_FLOOR)

    def hq(t: torch.Tensor, step: torch.Tensor, bits: int) -> torch.Tensor:
        return fq_sym(t, step, bits, axis=1)

    s_a = s_b = None
    if pa.bits is not None:
        if twin:
            cand_a = torch.tensor([2.0 ** (-i) for i in range(SPLITS)], device=a.device)

            def qa(step: torch.Tensor) -> torch.Tensor:
                return softmax_twin_quant(a, step, pa.bits, cfg.twin_softmax)
        else:
            s_a = head_init(a, pa.bits)
            cand_a = f[:, None] * s_a[None]

            def qa(step: torch.Tensor) -> torch.Tensor:
                return hq(a, step, pa.bits)
    if pb.bits is not None:
        s_b = head_init(b, pb.bits)
        cand_b = f[:, None] * s_b[None]

    seen_b: torch.Tensor | None | str = "never"
    seen_a: torch.Tensor | None | str = "never"
    for _ in range(cfg.rounds):
        if pa.bits is not None:
            if twin:  # split search: v unquantized (as coded), so it never changes after round 1
                if isinstance(seen_b, str):
                    s_a = cand_a[torch.stack([scorer.matmul(qa(c), b, whole=True) for c in cand_a]).argmin()]
                    seen_b = s_b
                    stats.searches += 1
                else:
                    stats.skipped += 1
            elif isinstance(seen_b, str) or not _same(seen_b, s_b):
                bq = b if s_b is None else hq(b, s_b, pb.bits)
                s_a = _pick(torch.stack([scorer.matmul(qa(c), bq) for c in cand_a]), cand_a)
                seen_b = s_b
                stats.searches += 1
            else:
                stats.skipped += 1
        if pb.bits is not None:
            if isinstance(seen_a, str) or not _same(seen_a, s_a):
                aq = a if s_a is None else qa(s_a)
                s_b = _pick(torch.stack([scorer.matmul(aq, hq(b, c, pb.bits)) for c in cand_b]), cand_b)
                seen_a = s_a
                stats.searches += 1
            else:
                stats.skipped += 1

    if pa.bits is not None:
        if twin:
            tq = SoftmaxTwinQuantizer(pa.bits, cfg.twin_softmax).to(a.device)
            tq.set_split(s_a)
            pa.quantizer = tq
        else:
            pa.quantizer = _head_quantizer(pa.bits, s_a, heads, cfg.division == "divide")
    if pb.bits is not None:
        pb.quantizer = _head_quantizer(pb.bits, s_b, heads, cfg.division == "divide")


def _head_quantizer(bits: int, step: torch.Tensor, heads: int, divide: bool) -> UniformQuantizer:
    q = UniformQuantizer(bits, signed=True, symmetric=True, granularity=per_channel(1), divide=divide).to(step.device)
    q.set_params(step if heads > 1 else step[0], torch.zeros_like(step if heads > 1 else step[0]))
    return q


# --------------------------------------------------------------------------------------------
# The methods
# --------------------------------------------------------------------------------------------


def run(qmodel: QuantModel, calib: Calibration, cfg: PTQ4ViTConfig, ctx: RunContext) -> dict[str, Any]:
    qmodel.to(ctx.device)
    for p in qmodel.points():
        p.enabled = False
    images = calib.images.to(ctx.device)
    sites = find_sites(qmodel)
    with torch.no_grad():
        fp_logits = qmodel(images)  # the full batch at once, as the reference's raw_pred
    groups = unit_groups(qmodel, sites, images, cfg.capture_mb)
    stats = Stats()
    from tqdm import tqdm

    bar = tqdm(total=len(sites), desc="ptq4vit search", disable=not ctx.progress, leave=False)
    for group in groups:
        capture(qmodel, group, images, fp_logits, cfg)
        for s in group:
            (search_matmul if isinstance(s.module, QuantMatMul) else search_linear)(s, cfg, stats)
            bar.update(1)
    bar.close()
    for p in qmodel.active_points():
        p.enabled = p.quantizer is not None
    return {"sites": len(sites), "capture_passes": len(groups), "searches": stats.searches,
            "searches_skipped": stats.skipped}


@register_method(
    "ptq4vit", PTQ4ViTConfig,
    "PTQ4ViT (ECCV 2022): Hessian-guided step search, twin-uniform post-GELU/softmax quantizers",
    default_calib=32,
)
def quantize_ptq4vit(qmodel: QuantModel, calib: Calibration, cfg: PTQ4ViTConfig, ctx: RunContext) -> dict[str, Any]:
    return run(qmodel, calib, cfg, ctx)


@register_method(
    "base_ptq", BasePTQConfig,
    "Base PTQ (PTQ4ViT's baseline): cosine-metric step search, alpha 0.5, one round, no twin quantizers",
    default_calib=32,
)
def quantize_base_ptq(qmodel: QuantModel, calib: Calibration, cfg: BasePTQConfig, ctx: RunContext) -> dict[str, Any]:
    return run(qmodel, calib, cfg, ctx)
