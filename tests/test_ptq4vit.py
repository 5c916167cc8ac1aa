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


@pytest.mark.parametrize("metric", ["hessian", "mse", "cosine"])
def test_scores_are_the_references_in_its_order_and_layout(metric):
    """Every score of every search against the reference's similarity code written out with its
    tensors' shapes and layouts (candidates batched into one tensor, as its parallel_eq_n does),
    bit for bit: a float32 reduction's result follows its order and layout, and where two
    candidates score within round-off another order picks another step. Candidate outputs are
    given directly (an identity weight: ``F.linear(y, I) = y`` exactly)."""
    torch.manual_seed(0)
    n = 5
    grad_of = (lambda t: t) if metric == "hessian" else (lambda t: None)  # noqa: E731

    # PTQSLBatchingQuantLinear: [b, tokens, n, n_V, rows], mean over rows, then tokens, sum over b
    b, tokens, oc = 8, 197, 12
    raw, g = torch.randn(b * tokens, oc), torch.randn(b * tokens, oc)
    ys = [raw + 0.3 * torch.randn_like(raw) for _ in range(n)]
    eye = torch.eye(oc)
    scorer = Scorer(metric, raw, grad_of(g), images=b)
    for n_v in (1, 3):
        raw_x = torch.cat(torch.chunk(raw.view(b, tokens, 1, 1, oc), chunks=n_v, dim=-1), dim=-2)
        out = torch.cat(torch.chunk(torch.cat([y.view(b, tokens, oc) for y in ys], -1).unsqueeze(-2), chunks=n, dim=-1), dim=-2)
        out = torch.cat(torch.chunk(out.unsqueeze(-2), chunks=n_v, dim=-1), dim=-2)
        ref = _ref_similarity(metric, raw_x, out, g.view(b, tokens, oc)).mean(1).sum(0)  # n, n_V
        assert torch.equal(scorer.stack([scorer.linear(y, eye, n_v) for y in ys]), -ref), n_v
    if metric == "cosine":  # the data tells layouts apart: candidate-major, the tokens' mean takes another order
        per_candidate = torch.stack([scorer.linear(y, eye, 1) for y in ys])  # [n, M, 1]
        assert not torch.equal(per_candidate.view(n, b, tokens, 1).mean(2).sum(1)[:, 0], -ref[:, 0])
    ref = _ref_similarity(metric, raw.view(b, tokens, 1, oc), torch.stack([y.view(b, tokens, oc) for y in ys], 2),
                          g.view(b, tokens, oc)).mean(1).sum(0)  # the input search: [b, tokens, n] -> n
    assert torch.equal(scorer.stack([scorer.linear(y, eye, 3, whole=True) for y in ys], whole=True)[:, 0], -ref)

    # PTQSLBatchingQuantMatMul: [n, B, H, rows, cols], mean over cols, then rows, sum over B;
    # SoSPTQSLBatchingQuantMatMul's split search: the mean over heads and rows together
    B, H, rows, cols = 8, 3, 65, 16
    raw, g = torch.randn(B, H, rows, cols), torch.randn(B, H, rows, cols)
    ys = [raw + 0.3 * torch.randn_like(raw) for _ in range(n)]
    eye = torch.eye(cols).expand(B, H, cols, cols)
    scorer = Scorer(metric, raw, grad_of(g))
    ref = _ref_similarity(metric, raw.unsqueeze(0), torch.stack(ys), g).mean([3]).sum(dim=1)  # n, H
    assert torch.equal(torch.stack([scorer.matmul(y, eye) for y in ys]), -ref)
    ref = torch.cat([_ref_similarity(metric, raw.unsqueeze(0), y.unsqueeze(0), g).mean([2, 3]).sum(dim=1, keepdim=True)
                     for y in ys]).sum(1)
    assert torch.equal(torch.stack([scorer.matmul(y, eye, whole=True) for y in ys]), -ref)

    # convs: our rows [images x positions, O]; the reference's output [b, n, oc, fw, fh]
    b, fw, fh = 8, 14, 14
    raw, g = torch.randn(b * fw * fh, oc), torch.randn(b * fw * fh, oc)
    ys = [raw + 0.3 * torch.randn_like(raw) for _ in range(n)]
    eye = torch.eye(oc)
    nchw = lambda y: y.view(b, fw, fh, oc).permute(0, 3, 1, 2).contiguous()  # noqa: E731
    raw_out, g_out = nchw(raw).unsqueeze(1), nchw(g)
    out = torch.cat(torch.chunk(torch.cat([nchw(y) for y in ys], 1).unsqueeze(1), chunks=n, dim=2), dim=1)
    # BatchingEasyQuantConv2d's weight search: over the channels (dim -3), the positions, sum over b
    ref = torch.mean(_ref_similarity(metric, raw_out, out, g_out, dim=-3), [2, 3]).sum(0)
    scorer = Scorer(metric, raw, grad_of(g), images=b, conv=True)
    assert torch.equal(scorer.stack([scorer.linear(y, eye, 1) for y in ys])[:, 0], -ref)
    # ChannelwiseBatchingQuantConv2d: per channel over the positions, sum over b; its input search
    # (the candidates' outputs transposed to [b, n, ...]): the mean over channels and positions
    if metric == "cosine":
        sim = F.cosine_similarity(raw_out.view(b, 1, oc, -1), out.view(b, n, oc, -1), dim=-1).view(b, n, oc, 1, 1)
    else:
        sim = _ref_similarity(metric, raw_out, out, g_out, reduce=False)
    scorer = Scorer(metric, raw, grad_of(g), images=b, conv=True, per_image=True)
    losses = [scorer.linear(y, eye, oc) for y in ys]
    assert torch.equal(scorer.stack(losses), -torch.mean(sim, [3, 4]).sum(0))
    if metric == "cosine":  # the same cosines over positions laid out [images, positions, O] give other bits
        strided = torch.stack([F.cosine_similarity(y.view(b, -1, oc), raw.view(b, -1, oc), dim=1) for y in ys], 1).sum(0)
        assert not torch.equal(-strided, scorer.stack(losses))
    out = torch.cat(torch.chunk(torch.cat([nchw(y) for y in ys], 0).unsqueeze(0), chunks=n, dim=1), dim=0).transpose_(0, 1)
    if metric == "cosine":
        sim = F.cosine_similarity(raw_out.view(b, 1, oc, -1), out.view(b, n, oc, -1), dim=-1).view(b, n, oc, 1, 1)
    else:
        sim = _ref_similarity(metric, raw_out, out, g_out, reduce=False)
    ref = torch.mean(sim, dim=[2, 3, 4]).sum(0)
    assert torch.equal(scorer.stack([scorer.linear(y, eye, oc, whole=True) for y in ys], whole=True)[:, 0], -ref)


def _reference_channelwise_conv_cosine(x, w, bias, stride, wb, ab, f, rounds):
    """The reference's ChannelwiseBatchingQuantConv2d search with the cosine metric, written out
    (one calibration batch): per-channel weight steps scored by the cosine over each image's
    positions summed over the images, then the input step by its mean over the channels."""
    wq, aq = 2 ** (wb - 1), 2 ** (ab - 1)

    def q(t, s, qmax):
        return (t / s).round().clamp(-qmax, qmax - 1) * s

    raw = F.conv2d(x, w, bias, stride).unsqueeze(1).flatten(3)  # b, 1, oc, positions
    s_w = w.abs().amax([1, 2, 3], keepdim=True) / (wq - 0.5)
    s_a = x.abs().max() / (aq - 0.5)
    cw, ca = f.view(-1, 1, 1, 1, 1) * s_w[None], f * s_a
    for _ in range(rounds):
        out = torch.stack([F.conv2d(q(x, s_a, aq), q(w, c, wq), bias, stride) for c in cw], 1).flatten(3)
        sim = F.cosine_similarity(raw, out, dim=-1).sum(0)  # n, oc
        s_w = cw.gather(0, sim.argmax(0).view(1, -1, 1, 1, 1))[0]
        out = torch.stack([F.conv2d(q(x, c, aq), q(w, s_w, wq), bias, stride) for c in ca], 1).flatten(3)
        s_a = ca[int(F.cosine_similarity(raw, out, dim=-1).mean(2).sum(0).argmax())]
    return s_w.flatten(), s_a


def test_cosine_channelwise_conv_search_matches_reference_formula():
    """``base_ptq`` with ``channelwise_conv`` on tiny_vit's patch embedding (its input at 4 bits):
    one step per output channel and one input step, those of the reference's formula."""
    _, qm = _qm("tiny_vit", overrides=(("^patch_embed\\.proj\\.act_q$", 4),))
    site = next(s for s in find_sites(qm) if s.name == "patch_embed.proj")
    images = torch.randn(6, 1, 32, 32)
    with torch.no_grad():
        logits = qm(images)
    cfg = BasePTQConfig(n_candidates=25, rounds=2, channelwise_conv=True)
    capture(qm, [site], images, logits, cfg)
    conv = site.module
    x = torch.cat([t[0] for t in site.inputs])
    s_w, s_a = _reference_channelwise_conv_cosine(x, conv.weight.detach(), conv.bias.detach(), conv.stride, 4, 4,
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
