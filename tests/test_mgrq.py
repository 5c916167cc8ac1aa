"""MGRQ (``mgrq/methods/mgrq.py``, ``mgrq_terms.py``): switches, the OBWR == QDrop equivalence,
EBGS gradients through the tail, IBLS statistics, the fusion, NaN handling."""

import dataclasses
import math
import re

import pytest
import torch

from mgrq import zoo
from mgrq.data import Calibration
from mgrq.errors import ConfigError, ReconstructionError
from mgrq.methods import get_method
from mgrq.methods import mgrq_terms as T
from mgrq.methods.registry import RunContext
from mgrq.recon import LossTerm, ReconConfig, Reconstructor, Stage
from mgrq.recon.init import initial_quantizers
from mgrq.surgery import LayerPolicy, quantize_model

CPU = torch.device("cpu")
VARIANTS = ("mgrq", "mgrq_obwr", "mgrq_obwr_global", "mgrq_obwr_local", "mgrq_sum_fusion")


pytestmark = pytest.mark.usefixtures("one_thread")


def _calib(n, shape=(1, 32, 32), seed=0):
    g = torch.Generator().manual_seed(seed)
    return Calibration.of_images(torch.randn((n, *shape), generator=g), seed)


def _cfg(method, **over):
    return get_method(method).make_config({k: str(v) for k, v in over.items()})


# ---- configs and switches -------------------------------------------------------------------
def test_variants_and_switches():
    qm = quantize_model(zoo.ZOO["tiny_swin"].build().eval(), LayerPolicy(4, 4))
    by_kind = {u.kind: u for u in qm.units()}
    assert set(by_kind) == {"embed", "block", "merge", "head"}
    stage = Stage("joint", 10, True, True)

    def names(cfg, kind):
        return [t.name for t in cfg.extra_terms(by_kind[kind], stage)]

    full = _cfg("mgrq")
    assert (names(full, "embed"), names(full, "block"), names(full, "merge"), names(full, "head")) == (
        ["global"], ["global", "local"], ["global", "local"], [])
    assert full.parts() == {"block": True, "ebgs": True, "ibls": True, "mglf": "normalized"}
    e = full.engine()
    assert (e.input_mode, e.input_prob, e.act_drop, e.fusion, e.block_loss) == ("qdrop", 0.5, 0.5, "normalized", "mse")
    assert full.init == "repq_vit" and full.stage().learn_rounding and full.stage().learn_steps
    # each part off alone
    assert names(_cfg("mgrq", w_global=0), "block") == ["local"]
    assert names(_cfg("mgrq", w_local=0), "block") == ["global"]
    assert _cfg("mgrq", fusion="sum").engine().fusion == "sum"
    assert _cfg("mgrq", input_mode="quant").engine().act_drop == 0.0  # no dropping without QDrop
    assert _cfg("mgrq", init="percentile").init == "percentile"
    assert _cfg("mgrq", w_block=0).engine().block_weight == 0.0 and full.engine().block_weight == 1.0
    # the head's block term is the logit KL, EBGS itself: EBGS stands in for it when w_block=0
    no_block = _cfg("mgrq", w_block=0)
    assert (names(no_block, "embed"), names(no_block, "head")) == (["global"], ["global"])
    with pytest.raises(ConfigError, match=r"w_block=0 and w_global=0: the patch-embedding and head units would learn "
                                          r"from the rounding regularizer alone"):
        _cfg("mgrq", w_block=0, w_global=0)
    # the registered variants
    assert names(_cfg("mgrq_obwr"), "block") == []
    assert names(_cfg("mgrq_obwr_global"), "block") == ["global"]
    assert names(_cfg("mgrq_obwr_local"), "block") == ["local"]
    assert _cfg("mgrq_sum_fusion").engine().fusion == "sum" and names(_cfg("mgrq_sum_fusion"), "block") == ["global", "local"]
    for m in VARIANTS:
        assert get_method(m).default_calib == 1024
    g = names(_cfg("mgrq", global_every=4, global_batch=8), "block")
    assert g[0] == "global"
    term = _cfg("mgrq", global_every=4, global_batch=8).extra_terms(by_kind["block"], stage)[0]
    assert (term.every, term.batch) == (4, 8)
    # a variant refuses to switch its part back on; bad values name the field
    with pytest.raises(ConfigError, match="mgrq_obwr fixes w_global=0.0"):
        _cfg("mgrq_obwr", w_global=1)
    with pytest.raises(ConfigError, match="mgrq_sum_fusion fixes fusion='sum'"):
        _cfg("mgrq_sum_fusion", fusion="normalized")
    # ... nor to switch off the part it adds (it would be another variant under this name)
    for variant, field in (("mgrq_obwr_global", "w_global"), ("mgrq_obwr_local", "w_local")):
        with pytest.raises(ConfigError, match=f"{field}=0: method {variant} runs that term"):
            _cfg(variant, **{field: 0})
    # a switched-off part's own settings are refused, not silently ignored (the record and the
    # cell's hash would claim them); their defaults pass, and so do they where the part is on
    for variant, over, msg in (
            ("mgrq_obwr", {"local_metric": "kl"}, "local_metric='kl': only used with w_local > 0; w_local=0 "
             "here (method mgrq_obwr fixes it; method mgrq sets it), so the run would ignore it"),
            ("mgrq_obwr_local", {"global_tau": 2.0, "global_every": 4}, "global_tau=2.0, global_every=4: only used "
             "with w_global > 0"),
            ("mgrq", {"w_local": 0, "local_metric": "mse"}, "local_metric='mse': only used with w_local > 0; w_local=0 "
             "here, so"),
            ("mgrq", {"input_mode": "quant", "act_drop": 0.3}, "act_drop=0.3: only used with input_mode='qdrop'"),
            ("mgrq", {"fisher_damping": 2.0}, "fisher_damping=2.0: only used with block_loss='fisher'")):
        with pytest.raises(ConfigError, match=re.escape(msg)):
            _cfg(variant, **over)
    assert _cfg("mgrq_obwr", local_metric="moments", global_tau=1.0).w_local == 0  # the defaults, given
    for variant in ("mgrq_obwr", "mgrq_obwr_local"):  # a batch below EBGS's default global_batch, EBGS off
        assert _cfg(variant, batch=4).batch == 4
    with pytest.raises(ConfigError, match=r"global_batch=8: expected 0 \(the whole batch\) \.\. batch=4"):
        _cfg("mgrq", batch=4)  # EBGS on: its batch must fit
    assert _cfg("mgrq_obwr_global", global_every=4).global_every == 4
    assert _cfg("mgrq", block_loss="fisher", fisher_damping=2.0).fisher_damping == 2.0
    for bad, field in (({"local_metric": "l1"}, "local_metric"), ({"w_local": -1}, "w_local"),
                       ({"global_batch": 64}, "global_batch"), ({"global_every": 0}, "global_every"),
                       ({"global_tau": 0}, "global_tau"), ({"fusion": "max"}, "fusion"), ({"init": "x"}, "init"),
                       ({"w_block": 0, "w_global": 0, "w_local": 0}, "nothing to reconstruct")):
        with pytest.raises(ConfigError, match=field):
            _cfg("mgrq", **bad)


# ---- IBLS statistics, by hand ---------------------------------------------------------------
def test_moments_by_hand():
    # one image, two tokens, two channels: mu_Q = [2, 3], sigma_Q = [1, 1]
    q = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
    mu_f, sigma_f = torch.tensor([1.0, 3.0]), torch.tensor([2.0, 1.0])
    # (|2-1|^2 + |3-3|^2 + |1-2|^2 + |1-1|^2) / C = 2 / 2
    assert float(T.moment_gap(q, mu_f, sigma_f)) == pytest.approx(1.0, abs=1e-6)
    # pooled from per-image token moments: image 1 tokens {0, 2}, image 2 tokens {4, 6} (one channel)
    m, v = torch.tensor([[1.0], [5.0]]), torch.tensor([[1.0], [1.0]])
    mu, sigma = T.pooled_moments(m, v)
    # all four values {0, 2, 4, 6}: mean 3, variance (9 + 1 + 1 + 9) / 4 = 5
    assert float(mu) == 3.0 and float(sigma) == pytest.approx(math.sqrt(5.0), rel=1e-6)
    # pooled == direct on random data, duplicates included (batches are drawn with replacement)
    x = torch.randn(6, 5, 3) * 3 + 1
    idx = torch.tensor([0, 2, 2, 5])
    vv, mm = torch.var_mean(x, dim=1, correction=0)
    mu_p, s_p = T.pooled_moments(mm[idx], vv[idx])
    mu_d, s_d = T.moments(x[idx])
    assert torch.allclose(mu_p, mu_d, atol=1e-5) and torch.allclose(s_p, s_d, atol=1e-5)
    # token KL: zero for equal inputs, the closed form for a two-channel case
    a = torch.tensor([[[0.0, 0.0]]])
    b = torch.tensor([[[math.log(3.0), 0.0]]])  # softmax [3/4, 1/4]
    assert float(T.token_kl(a, a)) == 0.0
    assert float(T.token_kl(b, a)) == pytest.approx(0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25), rel=1e-5)


# ---- the terms on real units (EBGS through the tail, IBLS on FP taps) -------------------------
class _Probe(LossTerm):
    """Wraps the real terms: checks them against FP references, and their gradients."""

    name, needs_taps = "probe", True

    def __init__(self, metric):
        self.glob = T.GlobalKL(1.0, tau=1.0, every=1, batch=0)  # the whole batch: compared image by image
        self.local = T.LocalAlignment(1.0, metric)
        self.needs_fp_taps = self.local.needs_fp_taps  # kl / mse read the engine's FP taps
        self.seen: dict = {}

    def setup(self, recon):
        self.recon = recon
        self.glob.setup(recon)
        self.local.setup(recon)

    def __call__(self, ctx):
        r = self.recon
        # the engine's taps dict is refilled by any forward of the unit (fp_taps below included)
        ctx = dataclasses.replace(ctx, taps=dict(ctx.taps))
        if not self.seen:
            # FP unit output through the tail gives back the FP logits: KL 0
            fp_out = r.cache.y.index_select(0, ctx.idx)
            fp_ctx = dataclasses.replace(ctx, out=fp_out, taps={})
            self.seen["global_fp"] = float(self.glob(fp_ctx))
            # FP taps of the same images: every local metric is 0
            _, taps = r.fp_taps(r.cache.x_f.index_select(0, ctx.idx))
            self.seen["local_fp"] = float(self.local(dataclasses.replace(ctx, out=fp_out, taps=taps)))
            g = self.glob(ctx)
            loc = self.local(ctx)
            self.seen["global_q"], self.seen["local_q"] = float(g.detach()), float(loc.detach())
            alphas = [a.alpha for a in r.session.adarounds]
            steps = r.session.step_params
            ga = torch.autograd.grad(g, alphas + steps, retain_graph=True, allow_unused=True)
            self.seen["global_grads"] = [0.0 if t is None else float(t.abs().sum()) for t in ga]
            self.seen["n_alpha"] = len(alphas)
        return self.glob(ctx) + self.local(ctx)


@pytest.mark.parametrize("model,units,metrics", [
    ("tiny_vit", r"^blocks\.1$", {"block": "moments"}),
    ("tiny_swin", r"^layers\.1\.blocks\.1$|^layers\.2\.downsample$", {"block": "kl", "merge": "mse"}),
])
def test_global_and_local_terms_on_real_units(model, units, metrics):
    qm = quantize_model(zoo.create_model(model) if model == "tiny_vit" else zoo.ZOO[model].build().eval(),
                        LayerPolicy(4, 4))
    cal = _calib(24)
    initial_quantizers(qm, cal, "percentile", 24, RunContext(device=CPU, progress=False))
    probes = []

    def extra(u, s):
        probes.append(_Probe(metrics[u.kind]))
        return [probes[-1]]

    Reconstructor(qm, cal.images, ReconConfig(batch=8, input_mode="qdrop", act_drop=0.5, check_every=2), device=CPU,
                  progress=False, extra_terms=extra, units=units).run([Stage("joint", 2, True, True)])
    assert len(probes) == len(metrics)
    for p in probes:
        s = p.seen
        assert s["global_fp"] == pytest.approx(0.0, abs=1e-5)
        assert s["local_fp"] == pytest.approx(0.0, abs=1e-5)
        assert s["global_q"] > 1e-6 and s["local_q"] > 1e-6
        # EBGS gradients reach every learned rounding variable and steps of the unit through the tail
        n = s["n_alpha"]
        assert n >= 1 and all(v > 0 for v in s["global_grads"][:n]), s["global_grads"]
        assert sum(v > 0 for v in s["global_grads"][n:]) >= 1


# ---- OBWR == the engine's QDrop reconstruction from the RepQ-ViT init -----------------------
def _run(method, cal, **over):
    qm = quantize_model(zoo.create_model("tiny_vit"), LayerPolicy(4, 4))
    cfg = _cfg(method, iters=4, batch=8, check_every=2, init_calib=16, **over)
    torch.manual_seed(0)
    info = get_method(method).quantize(qm, cal, cfg, RunContext(device=CPU, seed=3, progress=False))
    return qm, info


def _state(qm):
    return {k: v.clone() for k, v in qm.state_dict().items()}


def test_obwr_equals_qdrop_from_repq_vit_init_bit_for_bit():
    cal = _calib(32)
    qa, ia = _run("mgrq_obwr", cal)
    qb, ib = _run("qdrop", cal, init="repq_vit", fusion="normalized")
    x = torch.randn(16, 1, 32, 32)
    with torch.no_grad():
        ya, yb = qa(x), qb(x)
    assert torch.equal(ya, yb)
    sa, sb = _state(qa), _state(qb)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ia["init"]["method"] == ib["init"]["method"] == "repq_vit"
    la = [u["loss_last"] for u in ia["recon"][0]["stages"][0]["units"]]
    lb = [u["loss_last"] for u in ib["recon"][0]["stages"][0]["units"]]
    assert la == lb and len(la) == 6
    assert ia["parts"] == {"block": True, "ebgs": False, "ibls": False, "mglf": "normalized"}


def test_ebgs_and_ibls_change_the_result_on_the_same_units():
    """Same init, seeds, images and reconstructed unit (``blocks.0``): only the extra terms differ,
    so any difference from OBWR comes from EBGS / IBLS."""
    cal = _calib(32)
    one = r"^blocks\.0$"
    runs = {m: _run(m, cal, units=one) for m in ("mgrq_obwr", "mgrq_obwr_global", "mgrq_obwr_local", "mgrq")}
    x = torch.randn(16, 1, 32, 32)
    out, units = {}, {}
    for m, (qm, info) in runs.items():
        with torch.no_grad():
            out[m] = qm(x)
        (u,) = info["recon"][0]["stages"][0]["units"]
        assert u["unit"] == "blocks.0", m
        units[m] = u
    assert set(units["mgrq_obwr"]["terms_first"]) == {"block"}
    assert set(units["mgrq_obwr_global"]["terms_first"]) == {"block", "global"}
    assert set(units["mgrq_obwr_local"]["terms_first"]) == {"block", "local"}
    assert set(units["mgrq"]["terms_first"]) == {"block", "global", "local"}
    # the block term at iteration 0 is computed before any update: identical in every run
    assert len({u["terms_first"]["block"] for u in units.values()}) == 1
    # ... the reconstructed models are not
    for m in ("mgrq_obwr_global", "mgrq_obwr_local", "mgrq"):
        assert not torch.equal(out["mgrq_obwr"], out[m]), m
        sa, sm = _state(runs["mgrq_obwr"][0]), _state(runs[m][0])
        assert sa.keys() == sm.keys() and not all(torch.equal(sa[k], sm[k]) for k in sa), m


def test_without_the_block_term_the_head_trains_on_the_logit_kl():
    """``w_block=0``: the head unit (no tail) keeps a data term, EBGS's KL on its own logits."""
    _, info = _run("mgrq", _calib(32), units=r"^head$", w_block=0, w_local=0)
    (u,) = info["recon"][0]["stages"][0]["units"]
    assert u["unit"] == "head" and set(u["terms_first"]) == {"block", "global"}
    assert u["terms_first"]["global"] > 0 and math.isfinite(u["loss_last"])
    assert info["parts"]["block"] is False


@pytest.mark.parametrize("metric", ["kl", "moments"])
def test_terms_have_no_side_effect_beyond_their_gradient(monkeypatch, metric):
    """EBGS and IBLS evaluated every iteration (tail forwards, FP taps, hooks, normalization) but
    multiplied by 0: the run is bit for bit OBWR's. So any difference a term makes comes from its
    gradient (mgrq-noise: even a 1e-9 weight moves the trajectory), not from switching it on."""
    for cls in (T.GlobalKL, T.LocalAlignment):
        real = cls.__call__
        monkeypatch.setattr(cls, "__call__", lambda self, ctx, real=real: real(self, ctx) * 0.0)
    cal = _calib(32)
    one = r"^blocks\.0$"
    qa, ia = _run("mgrq_obwr", cal, units=one)
    qb, ib = _run("mgrq", cal, units=one, w_global=1, w_local=1, local_metric=metric)
    (ua,) = ia["recon"][0]["stages"][0]["units"]
    (ub,) = ib["recon"][0]["stages"][0]["units"]
    assert set(ub["terms_last"]) == {"block", "global", "local"}  # the terms did run
    assert ua["loss_last"] == ub["loss_last"]
    sa, sb = _state(qa), _state(qb)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


# ---- fusion ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", ["normalized", "sum"])
def test_fusion_of_block_global_local(fusion):
    qm = quantize_model(zoo.create_model("tiny_vit"), LayerPolicy(4, 4))
    cal = _calib(16)
    cfg = _cfg("mgrq", init="percentile", init_calib=16, iters=10, batch=8, check_every=5, w_global=0.5,
               w_local=2.0, fusion=fusion, units=r"^blocks\.2$")
    info = get_method("mgrq").quantize(qm, cal, cfg, RunContext(device=CPU, progress=False))
    (u,) = info["recon"][0]["stages"][0]["units"]
    first = u["terms_first"]
    assert set(first) == {"block", "global", "local"} and all(v > 0 for v in first.values())
    # iteration 0 is inside the warm-up (no rounding loss): the total is the fused terms alone
    if fusion == "normalized":
        assert u["loss_first"] == pytest.approx(1.0 + 0.5 + 2.0, rel=1e-6)
    else:
        expect = first["block"] + 0.5 * first["global"] + 2.0 * first["local"]
        assert u["loss_first"] == pytest.approx(expect, rel=1e-5)


# ---- NaN handling (the engine's) --------------------------------------------------------------
def test_nan_in_a_term_stops_the_unit_names_it_and_restores(monkeypatch):
    real = T.logit_kl
    monkeypatch.setattr(T, "logit_kl", lambda *a, **k: real(*a, **k) * float("nan"))
    qm = quantize_model(zoo.create_model("tiny_vit"), LayerPolicy(4, 4))
    cal = _calib(16)
    cfg = _cfg("mgrq", init="percentile", init_calib=16, iters=4, batch=8, check_every=2, units=r"^blocks\.1$")
    grads0 = [p.requires_grad for p in qm.parameters()]
    with pytest.raises(ReconstructionError,
                       match=r"mgrq: unit blocks\.1 \(joint stage\): the loss became nan at iteration 0 of 4"):
        get_method("mgrq").quantize(qm, cal, cfg, RunContext(device=CPU, progress=False))
    # the unit keeps its initial quantizers (no AdaRound left behind, no dropping)
    pts = [p for p in qm.points() if p.name.startswith("blocks.1.")]
    assert pts and all(type(p.quantizer).__name__ in ("UniformQuantizer", "LogQuantizer") for p in pts if p.quantizer)
    assert all(p.drop_prob == 0.0 for p in pts)
    assert [p.requires_grad for p in qm.parameters()] == grads0


def test_channel_moments_gradient():
    x = torch.randn(3, 5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: T.moments(t), (x,))
    var, mu = torch.var_mean(x.detach(), dim=(0, 1), correction=0)
    m, s = T.moments(x)
    assert torch.allclose(m, mu) and torch.allclose(s, (var + T.STD_EPS).sqrt())
