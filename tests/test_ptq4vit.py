"""PTQ4ViT / Base PTQ: quantizer placement, the search against a literal re-implementation of
the reference's formulas, the Hessian-gradient switch, the run record."""

import pytest
import torch
import torch.nn.functional as F

from baselines.ptq4vit import (
    BasePTQConfig,
    PTQ4ViTConfig,
    Scorer,
    Stats,
    capture,
    find_sites,
    quantize_base_ptq,
    quantize_ptq4vit,
    reference_batching,
    search_linear,
    search_matmul,
)
from mgrq import zoo
from mgrq.config import build_config
from mgrq.data import Calibration
from mgrq.errors import ConfigError
from mgrq.methods import RunContext
from mgrq.quant import point as P
from mgrq.quant.quantizers import UniformQuantizer
from mgrq.quant.twin import PostGeluTwinQuantizer, SoftmaxTwinQuantizer, softmax_twin_quant
from mgrq.surgery import LayerPolicy, quantize_model
from mgrq.surgery.layers import QuantLinear

CPU = RunContext(device=torch.device("cpu"), progress=False)
FAST = {"n_candidates": 12, "rounds": 2}


def _calib(n=8):
    return Calibration(torch.randn(n, 1, 32, 32), torch.zeros(n, dtype=torch.long), [str(i) for i in range(n)], "x", 0)


def _qm(name, bits=4, overrides=()):
    torch.manual_seed(0)
    model = zoo.ZOO[name].build().eval()
    return model, quantize_model(model, LayerPolicy(bits, bits, overrides=overrides))


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_swin"])
def test_ptq4vit_quantizer_placement(name):
    model, qm = _qm(name)
    info = quantize_ptq4vit(qm, _calib(), PTQ4ViTConfig(**FAST), CPU)
    assert info["searches"] > 0
    for p in qm.active_points():
        assert p.enabled and p.quantizer is not None, p.name
        q = p.quantizer
        if p.tag == P.POST_SOFTMAX:
            assert isinstance(q, SoftmaxTwinQuantizer) and q.mode == "select"
            assert float(q.split) in [2.0**-i for i in range(20)]
        elif p.tag == P.POST_GELU:
            assert isinstance(q, PostGeluTwinQuantizer)
        else:
            assert isinstance(q, UniformQuantizer) and q.symmetric and q.signed, p.name
            if p.name.endswith("qkv.weight_q"):
                assert q.granularity.kind == "group" and q.granularity.groups == 3
            elif p.name == "patch_embed.proj.weight_q":
                assert q.granularity.kind == "channel"
            elif p.kind == "weight" or p.tag in (P.IMAGE, P.POST_LN, P.ATTN_OUT, P.HEAD_IN):
                assert q.scale.dim() == 0, p.name
            else:  # q, k, v: one step per head
                assert q.granularity.kind == "channel" and q.granularity.axis == 1
    x = torch.randn(4, 1, 32, 32)
    with torch.no_grad():
        out = qm(x)
        assert torch.isfinite(out).all()
        with qm.quant_off():
            torch.testing.assert_close(qm(x), model(x), rtol=0, atol=1e-5)  # weights untouched


def test_capture_grouping_does_not_change_results():
    """A small ``capture_mb`` splits the units over several capture passes; same steps."""
    calib = _calib(4)
    steps = []
    for mb in (1, 4096):
        _, qm = _qm("tiny_vit")
        info = quantize_ptq4vit(qm, calib, PTQ4ViTConfig(n_candidates=8, rounds=1, capture_mb=mb), CPU)
        steps.append({p.name: getattr(p.quantizer, "scale", getattr(p.quantizer, "split", None)) for p in qm.active_points()})
        assert (info["capture_passes"] > 1) == (mb == 1)
    assert steps[0].keys() == steps[1].keys()
    for k in steps[0]:
        torch.testing.assert_close(steps[0][k], steps[1][k], rtol=0, atol=0, msg=k)


def _reference_grid(alpha, beta, n):
    """The reference's candidate factors, written out: ``alpha + i (beta - alpha) / n``, i = 0..n-1
    (beta itself is not a candidate)."""
    return torch.tensor([alpha + i * (beta - alpha) / n for i in range(n)])


def test_search_grid_and_defaults_are_the_references():
    cfg = PTQ4ViTConfig()
    assert (cfg.alpha, cfg.beta, cfg.n_candidates, cfg.rounds) == (0.01, 1.2, 100, 3)  # BASELINES.md
    torch.testing.assert_close(PTQ4ViTConfig(alpha=0.5, beta=1.3, n_candidates=4).factors(),
                               torch.tensor([0.5, 0.7, 0.9, 1.1]), rtol=0, atol=1e-7)
    f = cfg.factors()
    assert len(f) == 100 and f[0] == 0.01 and f[-1] < 1.2 - 1e-3  # beta excluded
    torch.testing.assert_close(f, _reference_grid(0.01, 1.2, 100), rtol=0, atol=0)


def test_base_ptq_settings_and_placement():
    cfg = BasePTQConfig()
    assert (cfg.alpha, cfg.beta, cfg.rounds, cfg.metric, cfg.twin, cfg.channelwise_conv) == (0.5, 1.2, 1, "cosine", False, False)
    _, qm = _qm("tiny_vit", overrides=((r"patch_embed\.proj\.act_q", "fp"),))
    quantize_base_ptq(qm, _calib(), BasePTQConfig(n_candidates=12), CPU)
    assert qm.point("patch_embed.proj.act_q").quantizer is None  # the reference's FP image
    sm = qm.point("blocks.0.attn.matmul2.a_q").quantizer
    assert isinstance(sm, UniformQuantizer) and sm.granularity.axis == 1  # plain head-wise uniform
    assert isinstance(qm.point("blocks.0.mlp.fc2.act_q").quantizer, UniformQuantizer)
    assert qm.point("patch_embed.proj.weight_q").quantizer.scale.dim() == 0


@pytest.mark.parametrize("method", ["ptq4vit", "base_ptq"])
def test_division_divide_reaches_every_uniform_quantizer(method):
    """``division=divide``: every uniform quantizer the search installs divides (weights, inputs,
    the head-wise matmul operands); the default's none."""
    run, cfg = {"ptq4vit": (quantize_ptq4vit, PTQ4ViTConfig), "base_ptq": (quantize_base_ptq, BasePTQConfig)}[method]
    for division, divide in (("divide", True), ("reciprocal", False)):
        _, qm = _qm("tiny_swin")
        quantize = run(qm, _calib(), cfg(n_candidates=6, rounds=1, division=division), CPU)
        assert quantize["sites"] > 0
        uniform = [p for p in qm.active_points() if isinstance(p.quantizer, UniformQuantizer)]
        kinds = {(p.kind, p.quantizer.granularity.kind) for p in uniform}
        assert {("weight", "tensor"), ("act", "tensor"), ("act", "channel")} <= kinds
        assert all(p.quantizer.divide is divide for p in uniform)
        assert all(not p.quantizer._fast for p in uniform) if divide else any(p.quantizer._fast for p in uniform)


def _ref_similarity(metric, raw, out, grad, dim=-1, reduce=True):
    """The reference's ``_get_similarity`` (linear.py, matmul.py, conv.py): the cosine over
    ``dim``, or minus the squared (gradient-weighted) error, averaged over ``dim``."""
    if metric == "cosine":
        return F.cosine_similarity(raw, out, dim=dim)
    s = -(grad.reshape_as(raw) * (raw - out)) ** 2 if metric == "hessian" else -(raw - out) ** 2
    return torch.mean(s, dim=dim) if reduce else s


def _spans(total, step):
    """The reference's loops ``for st in range(0, total, step)``: ``(st, min(total, st + step))``."""
    return [(st, min(total, st + step)) for st in range(0, total, step)]


@pytest.mark.parametrize("chunk, batch", [(0, 0), (2, 4)], ids=["one-chunk", "chunked-batched"])
@pytest.mark.parametrize("metric", ["hessian", "mse", "cosine"])
def test_scores_are_the_references_in_its_order_and_layout(metric, chunk, batch):
    """Every score of every search against the reference's similarity code written out with its
    loops (candidates ``parallel_eq_n`` at a time, images ``calib_batch_size`` at a time) and its
    tensors' shapes and layouts, bit for bit: a float32 reduction's result follows its order and
    layout, and where two candidates score within round-off another order picks another step.
    Candidate outputs are given directly (an identity weight: ``F.linear(y, I) = y`` exactly)."""
    torch.manual_seed(0)
    n = 5
    grad_of = (lambda t: t) if metric == "hessian" else (lambda t: None)  # noqa: E731

    # PTQSLBatchingQuantLinear: [b, tokens, k, n_V, rows], mean over rows, then tokens, sum over b
    b, tokens, oc = 8, 197, 12
    peq, cb = chunk or n, batch or b
    raw, g = torch.randn(b * tokens, oc), torch.randn(b * tokens, oc)
    ys = [raw + 0.3 * torch.randn_like(raw) for _ in range(n)]
    eye = torch.eye(oc)
    scorer = Scorer(metric, raw, grad_of(g), images=b, chunk=chunk, batch=batch)
    img = lambda t, s, e: t.view(b, -1, oc)[s:e]  # noqa: E731  (images s..e, [e-s, tokens, oc])
    for n_v in (1, 3):
        per_batch = []
        for b0, b1 in _spans(b, cb):
            raw_x = torch.cat(torch.chunk(img(raw, b0, b1).unsqueeze(-2).unsqueeze(-2), chunks=n_v, dim=-1), dim=-2)
            sims = []
            for p0, p1 in _spans(n, peq):
                out = torch.cat([img(y, b0, b1) for y in ys[p0:p1]], -1)  # the batched product's layout
                out = torch.cat(torch.chunk(out.unsqueeze(-2), chunks=p1 - p0, dim=-1), dim=-2)
                out = torch.cat(torch.chunk(out.unsqueeze(-2), chunks=n_v, dim=-1), dim=-2)
                sims.append(_ref_similarity(metric, raw_x, out, img(g, b0, b1)).mean(1).sum(dim=0, keepdim=True))
            per_batch.append(torch.cat(sims, dim=1))
        ref = torch.cat(per_batch, dim=0).sum(dim=0)  # n, n_V
        assert torch.equal(scorer.stack([scorer.linear(y, eye, n_v) for y in ys]), -ref), n_v
    if metric == "cosine" and not chunk:  # the data tells layouts apart: candidate-major, the tokens' mean takes another order
        per_candidate = torch.stack([scorer.linear(y, eye, 1) for y in ys])  # [n, M, 1]
        assert not torch.equal(per_candidate.view(n, b, tokens, 1).mean(2).sum(1)[:, 0], -ref[:, 0])
    per_batch = []
    for b0, b1 in _spans(b, cb):  # the input search: [b, tokens, k, oc], the mean over the whole row
        sims = [_ref_similarity(metric, img(raw, b0, b1).unsqueeze(2), torch.stack([img(y, b0, b1) for y in ys[p0:p1]], 2),
                                img(g, b0, b1)).mean(1).sum(dim=0, keepdim=True) for p0, p1 in _spans(n, peq)]
        per_batch.append(torch.cat(sims, dim=1))
    ref = torch.cat(per_batch, dim=0).sum(dim=0)
    assert torch.equal(scorer.stack([scorer.linear(y, eye, 3, whole=True) for y in ys], whole=True)[:, 0], -ref)

    # PTQSLBatchingQuantMatMul: [k, b, H, rows, cols], mean over cols, then rows, sum over b;
    # SoSPTQSLBatchingQuantMatMul's split search: the mean over heads and rows together
    B, H, rows, cols = 8, 3, 65, 16
    raw, g = torch.randn(B, H, rows, cols), torch.randn(B, H, rows, cols)
    ys = [raw + 0.3 * torch.randn_like(raw) for _ in range(n)]
    eye = torch.eye(cols).expand(B, H, cols, cols)
    scorer = Scorer(metric, raw, grad_of(g), images=B, chunk=chunk, batch=batch)
    per_batch, per_batch_split = [], []
    for b0, b1 in _spans(B, cb):
        sims = [_ref_similarity(metric, raw[b0:b1].unsqueeze(0), torch.stack([y[b0:b1] for y in ys[p0:p1]]), g[b0:b1])
                .mean([3]).sum(dim=1, keepdim=True) for p0, p1 in _spans(n, peq)]
        per_batch.append(torch.cat(sims, 0))
        per_batch_split.append(torch.cat([_ref_similarity(metric, raw[b0:b1].unsqueeze(0), y[b0:b1].unsqueeze(0), g[b0:b1])
                                          .mean([2, 3]).sum(dim=1, keepdim=True) for y in ys], 0))
    ref = torch.cat(per_batch, dim=1).sum(dim=1)  # n, H
    assert torch.equal(torch.stack([scorer.matmul(y, eye) for y in ys]), -ref)
    ref = torch.cat(per_batch_split, dim=1).sum(dim=1)
    assert torch.equal(torch.stack([scorer.matmul(y, eye, whole=True) for y in ys]), -ref)

    # convs: our rows [images x positions, O]; the reference's output [b, k, oc, fw, fh]
    b, fw, fh = 32, 14, 14
    cb = batch or b
    raw, g = torch.randn(b * fw * fh, oc), torch.randn(b * fw * fh, oc)
    ys = [raw + 0.3 * torch.randn_like(raw) for _ in range(n)]
    eye = torch.eye(oc)
    nchw = lambda y, s, e: y.view(b, fw, fh, oc)[s:e].permute(0, 3, 1, 2).contiguous()  # noqa: E731

    def cw_similarity(raw_out, out, g_out):  # ChannelwiseBatchingQuantConv2d._get_similarity
        m, k = out.shape[:2]
        if metric == "cosine":
            return F.cosine_similarity(raw_out.view(m, 1, oc, -1), out.reshape(m, k, oc, -1), dim=-1).view(m, k, oc, 1, 1)
        return _ref_similarity(metric, raw_out, out, g_out, reduce=False)

    easy_w, easy_a, cw_w, cw_a = [], [], [], []
    for b0, b1 in _spans(b, cb):
        raw_out, g_out = nchw(raw, b0, b1).unsqueeze(1), nchw(g, b0, b1)
        sims_easy, sims_easy_a, sims_w, sims_a = [], [], [], []
        for p0, p1 in _spans(n, peq):
            k = p1 - p0
            out = torch.cat([nchw(y, b0, b1) for y in ys[p0:p1]], 1)  # the weight search's: b, k*oc, fw, fh
            out = torch.cat(torch.chunk(out.unsqueeze(1), chunks=k, dim=2), dim=1)
            # BatchingEasyQuantConv2d's weight search: over the channels (dim -3), the positions, sum over b
            sims_easy.append(torch.mean(_ref_similarity(metric, raw_out, out, g_out, dim=-3), [2, 3]).sum(dim=0, keepdim=True))
            # ChannelwiseBatchingQuantConv2d: per channel over the positions, sum over b
            sims_w.append(torch.mean(cw_similarity(raw_out, out, g_out), [3, 4]).sum(dim=0, keepdim=True))
            # the input searches' outputs: k*b, oc, fw, fh -> k, b, oc, fw, fh
            out = torch.cat([nchw(y, b0, b1) for y in ys[p0:p1]], 0)
            out = torch.cat(torch.chunk(out.unsqueeze(0), chunks=k, dim=1), dim=0)
            # BatchingEasyQuantConv2d's: as coded, torch.mean(similarity, dim=[3, 4]) of a 4-dim
            # tensor raises; its comment's shape "parallel_eq_n,b" is the mean over dims [2, 3]
            sim = _ref_similarity(metric, nchw(raw, b0, b1).unsqueeze(0), out, g_out, dim=-3)
            with pytest.raises(IndexError):
                torch.mean(sim, dim=[3, 4])
            sims_easy_a.append(torch.mean(sim, dim=[2, 3]).sum(dim=1, keepdim=True))
            # ChannelwiseBatchingQuantConv2d's (transposed to [b, k, ...]): over channels and positions
            out = out.transpose_(0, 1)
            sims_a.append(torch.mean(cw_similarity(raw_out, out, g_out), dim=[2, 3, 4]).sum(dim=0, keepdim=True))
        easy_w.append(torch.cat(sims_easy, dim=1))
        easy_a.append(torch.cat(sims_easy_a, dim=0))
        cw_w.append(torch.cat(sims_w, dim=1))
        cw_a.append(torch.cat(sims_a, dim=1))
    scorer = Scorer(metric, raw, grad_of(g), images=b, conv=True, chunk=chunk, batch=batch)
    assert torch.equal(scorer.stack([scorer.linear(y, eye, 1) for y in ys])[:, 0], -torch.cat(easy_w).sum(0))
    assert torch.equal(scorer.stack([scorer.linear(y, eye, 1, whole=True) for y in ys], whole=True)[:, 0],
                       -torch.cat(easy_a, dim=1).sum(dim=1))
    scorer = Scorer(metric, raw, grad_of(g), images=b, conv=True, channelwise=True, chunk=chunk, batch=batch)
    losses = [scorer.linear(y, eye, oc) for y in ys]
    assert torch.equal(scorer.stack(losses), -torch.cat(cw_w).sum(0))
    if metric == "cosine" and not chunk:  # the same cosines over positions laid out [images, positions, O] give other bits
        strided = torch.stack([F.cosine_similarity(y.view(b, -1, oc), raw.view(b, -1, oc), dim=1) for y in ys], 1).sum(0)
        assert not torch.equal(-strided, scorer.stack(losses))
    assert torch.equal(scorer.stack([scorer.linear(y, eye, oc, whole=True) for y in ys], whole=True)[:, 0],
                       -torch.cat(cw_a).sum(0))


def test_reference_batching_is_the_references_arithmetic():
    """``_initialize_calib_parameters``, written out: candidates per batched product from a
    3 GiB (15 GiB for convs) budget of float32 elements, the calibration batch halved until two
    candidates fit."""
    def ref(numel, calib_size, gib):
        calib_batch_size = calib_size
        while True:
            parallel_eq_n = int((gib * 1024 * 1024 * 1024 / 4) // (numel / calib_size * calib_batch_size))
            if parallel_eq_n <= 1:
                calib_batch_size //= 2
            else:
                return parallel_eq_n, calib_batch_size

    x, out = 32 * 197 * 768, 32 * 197 * 3072  # ViT-B fc1, 32 images
    assert reference_batching(2 * (x + out), 32, 3) == ref(2 * (x + out), 32, 3) == (16, 32)
    for images in (32, 256, 1024):
        for numel in (10**6, 4 * 10**8, 2 * 10**9):
            assert reference_batching(numel * images // 32, images, 3) == ref(numel * images // 32, images, 3)
    assert reference_batching(2 * 10**9, 32, 3) == (3, 4)  # batched: 4 images at a time
    with pytest.raises(ConfigError, match="budget"):
        reference_batching(10**12, 1, 3)


def _reference_channelwise_conv(x, w, bias, stride, g, wb, ab, f, rounds):
    """The reference's ChannelwiseBatchingQuantConv2d search, written out (one calibration
    batch): per-channel weight steps scored per image over the positions (the cosine, or minus
    the mean of ``(g (O - O_hat))^2`` when a gradient ``g`` is given) summed over the images, then
    the input step by the mean over the channels (cosine) or over channels and positions."""
    wq, aq = 2 ** (wb - 1), 2 ** (ab - 1)

    def q(t, s, qmax):
        return (t / s).round().clamp(-qmax, qmax - 1) * s

    raw = F.conv2d(x, w, bias, stride).unsqueeze(1).flatten(3)  # b, 1, oc, positions

    def sim(out):  # b, n, oc
        if g is None:
            return F.cosine_similarity(raw, out, dim=-1)
        return -(g.flatten(2).unsqueeze(1) * (raw - out)).square().mean(-1)

    s_w = w.abs().amax([1, 2, 3], keepdim=True) / (wq - 0.5)
    s_a = x.abs().max() / (aq - 0.5)
    cw, ca = f.view(-1, 1, 1, 1, 1) * s_w[None], f * s_a
    for _ in range(rounds):
        out = torch.stack([F.conv2d(q(x, s_a, aq), q(w, c, wq), bias, stride) for c in cw], 1).flatten(3)
        s_w = cw.gather(0, sim(out).sum(0).argmax(0).view(1, -1, 1, 1, 1))[0]
        out = torch.stack([F.conv2d(q(x, c, aq), q(w, s_w, wq), bias, stride) for c in ca], 1).flatten(3)
        s_a = ca[int(sim(out).mean(2).sum(0).argmax())]
    return s_w.flatten(), s_a


@pytest.mark.parametrize("method", ["ptq4vit", "base_ptq"])
def test_channelwise_conv_search_matches_reference_formula(method):
    """The patch embedding with ``channelwise_conv`` (``ptq4vit``'s default, Hessian metric;
    ``base_ptq`` with the cosine), its input at 4 bits: one step per output channel and one input
    step, those of the reference's formula (the gradient in the conv output's layout)."""
    _, qm = _qm("tiny_vit", overrides=(("^patch_embed\\.proj\\.act_q$", 4),))
    site = next(s for s in find_sites(qm) if s.name == "patch_embed.proj")
    images = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        logits = qm(images)
    cfg = (PTQ4ViTConfig(n_candidates=25, rounds=2, grad_batch=3) if method == "ptq4vit"
           else BasePTQConfig(n_candidates=25, rounds=2, channelwise_conv=True))
    capture(qm, [site], images, logits, cfg)
    conv = site.module
    x = torch.cat([t[0] for t in site.inputs])
    g = torch.cat(site.grads) if site.grads else None
    assert (g is not None) == (method == "ptq4vit") and (g is None or g.abs().max() > 1e-6)
    s_w, s_a = _reference_channelwise_conv(x, conv.weight.detach(), conv.bias.detach(), conv.stride, g, 4, 4,
                                           _reference_grid(cfg.alpha, cfg.beta, 25), 2)
    search_linear(site, cfg, Stats())
    assert conv.weight_q.quantizer.granularity.kind == "channel"
    torch.testing.assert_close(conv.weight_q.quantizer.scale, s_w, rtol=1e-6, atol=0)
    torch.testing.assert_close(conv.act_q.quantizer.scale, s_a, rtol=1e-6, atol=0)


def _reference_linear_search(x, w, b, g, wb, ab, f, rounds):
    """The reference's PTQSLBatchingQuantLinear search, written out literally (per-tensor
    weight and input, Hessian metric): similarity = -mean((g (O - O_hat))^2), argmax."""
    raw = F.linear(x, w, b)
    s_w = w.abs().max() / (2 ** (wb - 1) - 0.5)
    s_a = x.abs().max() / (2 ** (ab - 1) - 0.5)
    cw, ca = f * s_w, f * s_a

    def q(t, s, bits):
        return (t / s).round().clamp(-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) * s

    for _ in range(rounds):
        sims = [-((g * (raw - F.linear(q(x, s_a, ab), q(w, c, wb), b))) ** 2).mean() for c in cw]
        s_w = cw[int(torch.stack(sims).argmax())]
        sims = [-((g * (raw - F.linear(q(x, c, ab), q(w, s_w, wb), b))) ** 2).mean() for c in ca]
        s_a = ca[int(torch.stack(sims).argmax())]
    return s_w, s_a


def test_linear_search_matches_reference_formula():
    _, qm = _qm("tiny_vit")
    site = next(s for s in find_sites(qm) if s.name == "blocks.1.attn.proj")
    images = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        logits = qm(images)
    cfg = PTQ4ViTConfig(n_candidates=25, rounds=3, grad_batch=3)
    capture(qm, [site], images, logits, cfg)
    x = torch.cat([t[0] for t in site.inputs]).reshape(-1, 96)
    g = torch.cat(site.grads).reshape(-1, 96)
    assert g.abs().max() > 1e-6  # the default objective has a real gradient
    lin: QuantLinear = site.module
    grid = _reference_grid(cfg.alpha, cfg.beta, 25)  # not cfg.factors(): the code under test
    s_w, s_a = _reference_linear_search(x, lin.weight.detach(), lin.bias.detach(), g, 4, 4, grid, 3)
    search_linear(site, cfg, Stats())
    torch.testing.assert_close(lin.weight_q.quantizer.scale, s_w, rtol=1e-6, atol=0)
    torch.testing.assert_close(lin.act_q.quantizer.scale, s_a, rtol=1e-6, atol=0)


def _reference_matmul_search(a, b, g, bits, f, rounds, twin_mode=None):
    """The reference's head-wise PTQSLBatchingQuantMatMul search (SoS split search for the
    post-softmax operand, with ``b`` unquantized during it), written out literally."""
    raw = a @ b
    half = 2 ** (bits - 1)

    def hq(t, s):  # s: [H]
        s = s.view(1, -1, 1, 1)
        return (t / s).round().clamp(-half, half - 1) * s

    def sim(out):  # per head: -mean over (batch, rows, cols) of (g (raw - out))^2
        return -((g * (raw - out)) ** 2).mean((0, 2, 3))

    s_b = b.abs().amax((0, 2, 3)) / (half - 0.5)
    cb = f[:, None] * s_b[None]
    if twin_mode is None:
        s_a = a.abs().amax((0, 2, 3)) / (half - 0.5)
        ca = f[:, None] * s_a[None]
    splits = torch.tensor([2.0**-i for i in range(20)])
    for _ in range(rounds):
        if twin_mode is None:
            sims = torch.stack([sim(hq(a, c) @ hq(b, s_b)) for c in ca])
            s_a = ca.gather(0, sims.argmax(0)[None])[0]
            aq = hq(a, s_a)
        else:
            sims = torch.stack([sim(softmax_twin_quant(a, c, bits, twin_mode) @ b).mean() for c in splits])
            s_a = splits[int(sims.argmax())]
            aq = softmax_twin_quant(a, s_a, bits, twin_mode)
        sims = torch.stack([sim(aq @ hq(b, c)) for c in cb])
        s_b = cb.gather(0, sims.argmax(0)[None])[0]
    return s_a, s_b


@pytest.mark.parametrize("which", ["matmul1", "matmul2"])
def test_matmul_search_matches_reference_formula(which):
    _, qm = _qm("tiny_vit")
    site = next(s for s in find_sites(qm) if s.name == f"blocks.2.attn.{which}")
    images = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        logits = qm(images)
    cfg = PTQ4ViTConfig(n_candidates=20, rounds=2, grad_batch=3, twin_softmax="sum")
    capture(qm, [site], images, logits, cfg)
    a, b = (torch.cat([t[i] for t in site.inputs]) for i in (0, 1))
    g = torch.cat(site.grads)
    grid = _reference_grid(cfg.alpha, cfg.beta, 20)  # not cfg.factors(): the code under test
    s_a, s_b = _reference_matmul_search(a, b, g, 4, grid, 2, "sum" if which == "matmul2" else None)
    search_matmul(site, cfg, Stats())
    qa, qb = site.module.a_q.quantizer, site.module.b_q.quantizer
    torch.testing.assert_close(qa.split if which == "matmul2" else qa.scale, s_a, rtol=1e-6, atol=0)
    torch.testing.assert_close(qb.scale, s_b, rtol=1e-6, atol=0)


def test_hessian_gradient_switch():
    """``kl_fp_fp`` (as coded) differentiates KL(FP || FP): only round-off survives."""
    grads = {}
    images = torch.randn(8, 1, 32, 32)
    for how in ("ce_fp_label", "kl_fp_fp"):
        _, qm = _qm("tiny_vit")
        with torch.no_grad():
            logits = qm(images)
        site = next(s for s in find_sites(qm) if s.name == "head")
        capture(qm, [site], images, logits, PTQ4ViTConfig(hessian_grad=how))
        grads[how] = torch.cat(site.grads).abs().max()
    assert grads["ce_fp_label"] > 1e-3
    assert grads["kl_fp_fp"] < 1e-5


def test_config_is_validated_and_recorded(tmp_path):
    with pytest.raises(ConfigError, match="metric"):
        build_config(PTQ4ViTConfig, {"metric": "kl"})
    with pytest.raises(ConfigError, match="alpha"):
        build_config(PTQ4ViTConfig, {"alpha": "2.0"})
    with pytest.raises(ConfigError, match=r"division='floor': expected one of reciprocal, divide"):
        build_config(BasePTQConfig, {"division": "floor"})
    from mgrq.run import execute
    from mgrq.spec import RunSpec

    spec = RunSpec(model="tiny_vit", method="ptq4vit", w_bits=6, a_bits=6, calib=8, eval_limit=50,
                   method_config={"n_candidates": 8, "rounds": 1, "twin_softmax": "sum"}, device="cpu")
    rec = execute(spec, progress=False)
    cfg = rec["method"]["config"]
    assert cfg["hessian_grad"] == "ce_fp_label" and cfg["twin_softmax"] == "sum" and cfg["n_candidates"] == 8
    assert rec["metrics"]["top1"] > 50  # W6A6 on the trained tiny ViT stays far above chance
