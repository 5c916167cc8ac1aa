"""The reconstruction engine: training-time quantizers, schedules, the unit loop, the loss-term
hook, error handling and state restoration (tiny_vit, CPU)."""

import math
import re

import pytest
import torch

from mgrq import zoo
from mgrq.errors import ConfigError, ReconstructionError, UnknownNameError
from mgrq.methods.registry import RunContext
from mgrq.quant import functional as QF
from mgrq.quant.adaround import AdaRoundQuantizer
from mgrq.quant.quantizers import LogQuantizer, UniformQuantizer
from mgrq.recon import LossTerm, ReconConfig, Reconstructor, Stage, StepContext, channel_error
from mgrq.recon.init import initial_quantizers
from mgrq.recon.learnable import LSQAct, SteAct, bernoulli_mask, log_sqrt2_fast
from mgrq.recon.losses import beta_at, cosine_lr, round_gate
from mgrq.surgery import LayerPolicy, quantize_model

CPU = torch.device("cpu")


# ---- training-time quantizers ------------------------------------------------------------------
def test_lsq_act_matches_torch_learnable_fake_quant():
    x = torch.randn(4, 50, 30) * 3
    q = UniformQuantizer(4)
    q.init_minmax(x)
    a = LSQAct(q, learn=True)
    xa = x.clone().requires_grad_(True)
    dy = torch.randn_like(x)
    out = a(xa)
    out.backward(dy)
    s = torch.nn.Parameter(q.scale.clone().reshape(1))
    xb = x.clone().requires_grad_(True)
    g = 1.0 / (x.numel() * q.qmax) ** 0.5
    ref = torch._fake_quantize_learnable_per_tensor_affine(xb, s, q.zero_point.reshape(1), 0, 15, g)
    ref.backward(dy)
    assert torch.equal(out, ref) and torch.equal(out, q(x))
    assert torch.equal(xa.grad, xb.grad)
    assert torch.allclose(a.scale.grad.reshape(1), s.grad, rtol=1e-4)


@pytest.mark.parametrize("drop", [0.0, 0.5])
def test_lsq_act_compiled_gives_the_eager_gradients_at_the_ends_of_the_range(drop):
    """Under ``torch.compile`` (the engine's ``compile`` modes) the LSQ step is ``QF.fake_quant``'s
    autograd function; its output and gradients equal the eager step's, also on the many elements
    whose code is exactly qmin or qmax (``torch.clamp``'s own gradient is 0 there on torch 2.14,
    which gave a step gradient 20x the eager one). ``aot_eager``: traced as the engine's step is,
    without a C++ compiler."""
    x = torch.randn(4, 50, 30, generator=torch.Generator().manual_seed(0)) * 3
    q = UniformQuantizer(4)
    q.init_minmax(x * 0.5)  # a range that half the values reach past: many codes at both ends
    codes = torch.round(x / q.scale) + q.zero_point
    assert int((codes == q.qmin).sum()) > 50 and int((codes == q.qmax).sum()) > 50
    dy = torch.randn_like(x)
    got = []
    for compiled in (False, True):
        torch._dynamo.reset()
        a = LSQAct(q, learn=True, drop=drop)
        step = torch.compile(a, backend="aot_eager", fullgraph=True) if compiled else a
        torch.manual_seed(0)
        xr = x.clone().requires_grad_(True)
        out = step(xr)
        out.backward(dy)
        got.append((out.detach(), xr.grad, a.scale.grad))
    (out_e, gx_e, gs_e), (out_c, gx_c, gs_c) = got
    assert torch.equal(out_e, out_c)
    assert torch.allclose(gx_e, gx_c, rtol=1e-5, atol=1e-6)  # dy * (1/s) * s: round-off inside the range
    assert torch.allclose(gs_e, gs_c, rtol=1e-4, atol=1e-7), (gs_e, gs_c)


def test_lsq_act_refuses_a_dividing_quantizer():
    q = UniformQuantizer(4, divide=True)
    q.init_minmax(torch.randn(8, 16))
    with pytest.raises(ValueError, match="LSQAct: the quantizer divides"):
        LSQAct(q, learn=True)


def test_lsq_act_fractional_zero_point_and_dropping():
    x = torch.randn(2, 40, 16)
    q = UniformQuantizer(3)
    q.init_minmax(x)
    q.set_params(q.scale, q.zero_point + 0.37)  # RepQ-ViT-style fractional zero point
    assert torch.equal(LSQAct(q, learn=False)(x), q(x))
    torch.manual_seed(0)
    a = LSQAct(q, learn=True, drop=0.5)
    xr = x.clone().requires_grad_(True)
    out = a(xr)
    kept = out == x
    assert 0.4 < kept.float().mean() < 0.7  # ~half bypass the quantizer (plus exact grid hits)
    quantized = ~kept
    assert torch.equal(out[quantized], q(x)[quantized])
    out.sum().backward()
    assert (xr.grad[kept] == 1).all()  # dropped elements pass the gradient straight through


def test_ste_log_quantizer_is_exact_and_straight_through():
    x = torch.randn(4, 3, 17, 17).softmax(-1)
    x[0, 0, 0, :3] = 0
    lq = LogQuantizer(4)
    lq.init_percentile(x)
    assert torch.equal(log_sqrt2_fast(x, lq.scale, 4), QF.log_sqrt2_quant(x, lq.scale, 4))
    xr = x.clone().requires_grad_(True)
    out = SteAct(lq)(xr)
    assert torch.equal(out, lq(x))
    out.backward(torch.full_like(x, 2.0))
    assert (xr.grad == 2.0).all()


def test_bernoulli_mask():
    torch.manual_seed(0)
    for p in (0.5, 0.2):
        m = bernoulli_mask(torch.empty(3, 1001), p)
        assert m.shape == (3, 1001) and set(m.unique().tolist()) <= {0.0, 1.0}
        assert abs(float(m.mean()) - p) < 0.03


def test_schedules_match_the_reference_formulas():
    iters, warm = 100, 0.2
    for i in (0, 18, 19, 20, 50, 99):
        t = i + 1  # BRECQ/QDrop count from 1
        ref = 20 if t < warm * iters else 2 + 18 * max(0.0, 1 - (t - warm * iters) / (iters - warm * iters))
        assert float(beta_at(torch.tensor(float(i)), iters, warm, 20.0, 2.0)) == pytest.approx(ref)
        assert float(round_gate(torch.tensor(float(i)), iters, warm)) == float(t >= warm * iters)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=4e-5)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=iters, eta_min=0.0)
    for i in range(iters):
        assert float(cosine_lr(torch.tensor(float(i)), 4e-5, iters)) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-5)
        opt.step()
        sched.step()


def test_channel_error_sums_channels_and_averages_the_rest():
    out, tgt = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    tgt[0, 0] = 3.0
    assert float(channel_error(out, tgt)) == pytest.approx((4 * 9 + 5 * 4) / 6)


# ---- the engine on tiny_vit --------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    # one thread: on a shared 2-core machine, two OpenMP threads that wait for each other make
    # the hundreds of small kernels of a step many times slower
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = zoo.create_model("tiny_vit")
    images = torch.randn(64, 1, 32, 32)
    yield model, images
    torch.set_num_threads(threads)


def _qmodel(tiny, bits=4):
    from mgrq.data import Calibration

    model, images = tiny
    qm = quantize_model(model, LayerPolicy(bits, bits))
    initial_quantizers(qm, Calibration.of_images(images), "percentile", 32, RunContext(device=CPU, progress=False))
    return qm, images


def _unit_error(qm, images, name):
    """Output MSE of unit ``name`` (quantized) against FP on the FP inputs of ``images``."""
    units = qm.units()
    k = [u.name for u in units].index(name)
    with torch.no_grad():
        with qm.quant_off():
            h = images
            for u in units[:k]:
                h = u.fn(h)
            ref = units[k].fn(h)
        return float(channel_error(units[k].fn(h), ref))


def _chain_error(qm, images, k):
    """MSE of unit ``k``'s output on the quantized model's inputs against the FP model's."""
    from mgrq.evaluate import eval_mode

    units = qm.units()
    with torch.no_grad(), eval_mode(qm):
        h, ref = images, images
        for u in units[: k + 1]:
            h = u.fn(h)
        with qm.quant_off():
            for u in units[: k + 1]:
                ref = u.fn(ref)
        return float((h - ref).double().square().mean())


def _state(qm):
    return ([(p.name, type(p.quantizer).__name__, p.enabled, p.drop_prob) for p in qm.points()],
            [m.training for m in qm.modules()])


def test_reconstruction_beats_round_to_nearest_and_restores_state(tiny):
    qm, images = _qmodel(tiny, bits=3)
    before = _unit_error(qm, images, "blocks.1")
    qm.model.blocks[0].train()  # mixed training flags: each module must get its own back
    state0 = _state(qm)
    grads0 = [p.requires_grad for p in qm.parameters()]
    cfg = ReconConfig(input_mode="qdrop", act_drop=0.5, check_every=20)
    init = _chain_error(qm, images, 2)
    engine = Reconstructor(qm, images, cfg, device=CPU, progress=False, units=r"^blocks\.1$")
    info = engine.run([Stage("joint", 60, learn_rounding=True, learn_steps=True, lr_round=1e-2)])
    after = _unit_error(qm, images, "blocks.1")
    print(f"blocks.1 output error: round-to-nearest {before:.4f}, reconstructed {after:.4f}")
    assert after < 0.9 * before, (before, after)
    u = info["stages"][0]["units"][0]
    # the recorded output errors: blocks.1 before (initial quantizers: rounding to nearest) and
    # after, both on quantized inputs (blocks.0 keeps its initial quantizers) against FP
    assert u["out_mse"]["init"] == pytest.approx(init, rel=1e-5)
    assert u["out_mse"]["final"] == pytest.approx(_chain_error(qm, images, 2), rel=1e-5)
    assert u["out_mse"]["final"] < 0.9 * u["out_mse"]["init"] and engine.warnings == []
    assert u["unit"] == "blocks.1" and u["wall_s"] > 0 and u["rounding_changed"] > 0
    assert u["peak_mem_kind"] == "cpu_rss_sampled"  # sampled for this unit, not the process's all-time peak
    assert math.isfinite(u["loss_last"])
    # state after the context: hardened AdaRound weights, original act quantizers, no dropping
    state1 = _state(qm)
    assert state1[1] == state0[1]  # training flags
    for (n, t0, e0, _d0), (_, t1, e1, d1) in zip(state0[0], state1[0]):
        assert (e1, d1) == (e0, 0.0)
        assert t1 == ("AdaRoundQuantizer" if n.startswith("blocks.1.") and n.endswith("weight_q") else t0)
    assert all(isinstance(p.quantizer, AdaRoundQuantizer) and p.quantizer.hard
               for p in qm.points(kind="weight") if p.name.startswith("blocks.1."))
    assert [p.requires_grad for p in qm.parameters()] == grads0


def test_a_diverged_unit_is_named_and_the_run_goes_on(tiny, capsys):
    qm, images = _qmodel(tiny)
    cfg = ReconConfig(check_every=10)
    runs_warnings = ["an earlier pass's warning"]
    engine = Reconstructor(qm, images, cfg, device=CPU, progress=False, desc="qdrop", units=r"^blocks\.0$",
                           warnings=runs_warnings)
    info = engine.run([Stage("joint", 30, learn_rounding=True, learn_steps=True, lr_round=1e6)])
    u = info["stages"][0]["units"][0]
    assert u["out_mse"]["final"] > 1.5 * u["out_mse"]["init"], u["out_mse"]  # finite, but far worse
    assert engine.warnings is runs_warnings and len(runs_warnings) == 2  # appended to the run's list
    assert re.search(r"qdrop: unit blocks\.0 \(joint stage\): its output error .* rose [\d.]+x", runs_warnings[1])
    assert "warning: " + runs_warnings[1] in capsys.readouterr().err


def test_learned_steps_stay_positive_as_qdrop_keeps_them(tiny):
    """A learning rate far too large drives LSQ steps through 0; after each Adam step the engine
    makes them ``|s|`` and at least float32's eps, as QDrop's LSQFakeQuantize does, so none ends
    at the commit's floor (1e-8, what a negative step would become)."""
    from mgrq.recon.trainer import STEP_EPS, keep_steps_positive

    steps = [torch.tensor([-0.5, 0.0, 1e-9, 0.3]), torch.tensor(-2.0)]
    keep_steps_positive(steps)
    assert steps[0].tolist() == [0.5, STEP_EPS, STEP_EPS, pytest.approx(0.3)] and float(steps[1]) == 2.0
    qm, images = _qmodel(tiny)
    acts = [p.quantizer for p in qm.points() if p.name.startswith("blocks.0.") and isinstance(p.quantizer, UniformQuantizer)
            and p.kind != "weight"]
    before = [q.scale.detach().clone() for q in acts]
    assert len(acts) >= 4 and max(float(s.max()) for s in before) < 1.0
    engine = Reconstructor(qm, images, ReconConfig(check_every=10), device=CPU, progress=False,
                           units=r"^blocks\.0$")
    engine.run([Stage("joint", 10, learn_rounding=False, learn_steps=True, lr_step=1.0)])
    after = [q.scale.detach() for q in acts]
    assert max(float((a - b).abs().max()) for a, b in zip(after, before)) > 0.1  # the steps did move far
    assert min(float(a.min()) for a in after) >= STEP_EPS


def test_regression_check_threshold(tiny, capsys):
    qm, images = _qmodel(tiny)
    engine = Reconstructor(qm, images, ReconConfig(), device=CPU, progress=False, desc="brecq")
    unit = qm.units()[1]
    rounding = Stage("rounding", 10, learn_rounding=True, learn_steps=False, acts=False)
    for before, after in ((1.0, 0.5), (1.0, 1.4), (1.0, 1.5), (0.0, 0.0)):
        engine._check_regression(rounding, unit, before, after)
    assert engine.warnings == [] and capsys.readouterr().err == ""
    engine._check_regression(rounding, unit, 1.0, 1.6)
    engine._check_regression(Stage("steps", 10, learn_rounding=False, learn_steps=True), unit, 2.0, float("nan"))
    assert len(engine.warnings) == 2
    assert "rose 1.6x" in engine.warnings[0] and "; lr_round may be too high" in engine.warnings[0]
    assert "(steps stage)" in engine.warnings[1] and "; lr_step may be too high" in engine.warnings[1]


def test_deterministic_on_cpu(tiny):
    outs = []
    for _ in range(2):
        qm, images = _qmodel(tiny)
        cfg = ReconConfig(input_mode="qdrop", act_drop=0.5, check_every=5)
        Reconstructor(qm, images, cfg, device=CPU, seed=3, progress=False, units=r"^blocks\.0$").run(
            [Stage("joint", 6, True, True)])
        with torch.no_grad():
            outs.append(qm(images[:8]))
    assert torch.equal(outs[0], outs[1])


class _Probe(LossTerm):
    """A term that checks what the hook hands it (eager mode: Python side effects are fine)."""

    name, weight, every, needs_taps, needs_fp_taps = "probe", 0.5, 3, True, True

    def setup(self, recon):
        self.recon, self.calls, self.values = recon, 0, []
        fp_out, taps = recon.fp_taps(recon.cache.x_f[:4])
        assert torch.allclose(fp_out, recon.cache.y[:4], atol=1e-5)
        assert list(taps) == list(recon.layers) == [f"blocks.0.{n}" for n in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")]
        self.fp_logits = recon.fp_logits()
        assert self.fp_logits.shape == (recon.cache.n, 10)

    def __call__(self, ctx: StepContext) -> torch.Tensor:
        self.calls += 1
        assert set(ctx.taps) == set(self.recon.layers) and ctx.taps["blocks.0.mlp.fc1"].shape[-1] == 384
        assert ctx.taps["blocks.0.mlp.fc1"].requires_grad  # quantized path of this very forward
        _, fp = self.recon.fp_taps(ctx.x_fp)  # FP path, same images
        assert set(ctx.fp_taps) == set(fp) and not ctx.fp_taps["blocks.0.mlp.fc2"].requires_grad
        assert torch.allclose(ctx.fp_taps["blocks.0.mlp.fc2"], fp["blocks.0.mlp.fc2"])
        assert not torch.allclose(ctx.taps["blocks.0.mlp.fc2"], fp["blocks.0.mlp.fc2"])
        assert torch.equal(ctx.x_fp, self.recon.cache.x_f.index_select(0, ctx.idx))
        logits = self.recon.tail(ctx.out[:4])
        assert logits.shape == (4, 10) and logits.requires_grad
        fp = self.fp_logits.index_select(0, ctx.idx[:4])
        kl = torch.nn.functional.kl_div(logits.log_softmax(-1), fp.log_softmax(-1), reduction="batchmean", log_target=True)
        self.values.append(float(kl.detach()))
        return kl


def test_loss_term_hook(tiny):
    qm, images = _qmodel(tiny)
    probes = []

    def extra(unit, stage):
        probes.append(_Probe())
        return [probes[-1]]

    cfg = ReconConfig(fusion="normalized", check_every=4)
    info = Reconstructor(qm, images, cfg, device=CPU, progress=False, extra_terms=extra, units=r"^blocks\.0$").run(
        [Stage("joint", 10, True, True)])
    assert len(probes) == 1 and probes[0].calls == 4  # iterations 0, 3, 6, 9
    u = info["stages"][0]["units"][0]
    assert set(u["terms_first"]) == {"block", "probe"}
    # the engine records the term's raw value of its first and last call (iterations 0 and 9) ...
    p = probes[0]
    assert u["terms_first"]["probe"] == pytest.approx(p.values[0], rel=1e-6)
    assert u["terms_last"]["probe"] == pytest.approx(p.values[-1], rel=1e-6)
    # ... a KL between the FP logits and those of a quantized unit (whose taps differ from FP,
    # checked in the probe), so strictly positive
    assert p.values[0] > 1e-8
    # normalized fusion at iteration 0 (warm-up: no rounding loss): w_block * 1 + w_probe * 1
    assert u["loss_first"] == pytest.approx(1.0 + 0.5, rel=1e-6)


class _NaNAfter(LossTerm):
    name = "nan"

    def __call__(self, ctx):
        return torch.where(ctx.step >= 3, torch.tensor(float("nan")), torch.tensor(0.0))


def test_nan_loss_raises_naming_unit_and_iteration_and_restores(tiny):
    qm, images = _qmodel(tiny)
    qm.model.blocks[0].attn.train()
    state0 = _state(qm)
    grads0 = [p.requires_grad for p in qm.parameters()]
    cfg = ReconConfig(check_every=4)
    engine = Reconstructor(qm, images, cfg, device=CPU, progress=False, desc="qdrop",
                           extra_terms=lambda u, s: [_NaNAfter()], units=r"^blocks\.0$")
    with pytest.raises(ReconstructionError, match=r"unit blocks\.0 .*nan at iteration 3 of 12"):
        engine.run([Stage("joint", 12, True, True)])
    assert _state(qm) == state0  # original quantizers, switches and drop probabilities
    assert [p.requires_grad for p in qm.parameters()] == grads0


class _NaNGradAtLast(LossTerm):
    """Value 0 at every iteration; at the last one its gradient is NaN (``sqrt`` at 0 times 0)."""
    name = "nangrad"

    def __init__(self, last: int):
        super().__init__()
        self.last = last

    def __call__(self, ctx):
        early = (ctx.step < self.last).float()
        return ((ctx.out * 0).sum() + early).sqrt() - early


def test_nan_in_the_last_update_raises_instead_of_committing(tiny):
    """The loss is finite at every iteration, but the last update makes the learned parameters
    NaN: no later loss shows it, so the engine checks them once after the loop."""
    qm, images = _qmodel(tiny)
    state0 = _state(qm)
    engine = Reconstructor(qm, images, ReconConfig(check_every=4), device=CPU, progress=False, desc="qdrop",
                           extra_terms=lambda u, s: [_NaNGradAtLast(11)], units=r"^blocks\.0$")
    with pytest.raises(ReconstructionError, match=r"unit blocks\.0 \(joint stage\): the learned rounding "
                                                  r"variables became NaN and steps became NaN or Inf in the "
                                                  r"last update "
                                                  r"\(iteration 12 of 12"):
        engine.run([Stage("joint", 12, True, True)])
    assert _state(qm) == state0
    ok = Reconstructor(qm, images, ReconConfig(check_every=4), device=CPU, progress=False,
                       extra_terms=lambda u, s: [_NaNGradAtLast(12)], units=r"^blocks\.0$")
    assert ok.run([Stage("joint", 12, True, True)])["stages"][0]["units"][0]["loss_last"] >= 0  # no NaN: runs


class _PrecisionSeen(LossTerm):
    name, weight = "seen", 0.0

    def __call__(self, ctx):
        self.seen = torch.get_float32_matmul_precision()
        return ctx.out.sum() * 0


def test_matmul_precision_holds_during_the_run_only(tiny):
    qm, images = _qmodel(tiny)
    before = torch.get_float32_matmul_precision()
    term = _PrecisionSeen()
    cfg = ReconConfig(matmul_precision="medium" if before != "medium" else "highest", check_every=2)
    info = Reconstructor(qm, images, cfg, device=CPU, progress=False, extra_terms=lambda u, s: [term],
                         units=r"^blocks\.0$").run([Stage("joint", 2, True, True)])
    assert term.seen == cfg.matmul_precision == info["matmul_precision"]
    assert torch.get_float32_matmul_precision() == before
    with pytest.raises(ValueError, match=r"matmul_precision='bf16': expected one of highest, high, medium"):
        ReconConfig(matmul_precision="bf16")


def test_config_validation(tiny):
    qm, images = _qmodel(tiny)
    with pytest.raises(ConfigError, match=r"matches none of the model's units: patch_embed, blocks\.0"):
        Reconstructor(qm, images, ReconConfig(), device=CPU, units="^block$")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        Reconstructor(qm, images, ReconConfig(), device=CPU, units="(")
    with pytest.raises(ValueError, match="input_mode"):
        ReconConfig(input_mode="mixed")
    with pytest.raises(ValueError, match="learns nothing"):
        Stage("x", 10, False, False)
    with pytest.raises(ValueError, match="needs acts"):
        Stage("x", 10, False, True, acts=False)
    with pytest.raises(ValueError, match="CUDA graphs"):
        from mgrq.recon.runner import StepRunner

        StepRunner(lambda v: torch.zeros(()), lambda t: None, lambda: None, "cudagraphs", CPU)


def test_repq_vit_init_or_clear_error(tiny, monkeypatch):
    from mgrq.methods import registry

    qm, images = _qmodel(tiny)
    from mgrq.data import Calibration

    cal = Calibration(images, torch.zeros(len(images), dtype=torch.long), [str(i) for i in range(64)], "h", 0)
    real = registry.get_method

    def missing(name):
        if name == "repq_vit":
            raise UnknownNameError("unknown method 'repq_vit'")
        return real(name)

    monkeypatch.setattr(registry, "get_method", missing)
    with pytest.raises(ConfigError, match="repq_vit method is not registered"):
        initial_quantizers(qm, cal, "repq_vit", 32, RunContext(device=CPU, progress=False))
    monkeypatch.setattr(registry, "get_method", real)
    info = initial_quantizers(qm, cal, "repq_vit", 16, RunContext(device=CPU, progress=False))
    assert info["method"] == "repq_vit" and info["images"] == 16
    assert all(p.quantizer is not None and p.enabled for p in qm.active_points())


@pytest.mark.gpu
def test_cuda_fast_modes_and_streamed_cache_match_eager(require_cuda, tiny):
    """CUDA: CUDA graphs / torch.compile and the pinned-CPU streamed cache give the eager result
    (same random numbers; differences only from floating-point reassociation)."""
    dev = require_cuda
    base, images = _qmodel(tiny)
    base.to(dev)
    runs = {}
    for mode, cache in (("none", "device"), ("none", "cpu"), ("cudagraphs", "device"), ("compile+cudagraphs", "device")):
        import copy

        qm = copy.deepcopy(base)
        cfg = ReconConfig(input_mode="qdrop", act_drop=0.5, check_every=10, compile=mode, cache=cache)
        info = Reconstructor(qm, images, cfg, device=dev, seed=1, progress=False, units=r"^blocks\.0$").run(
            [Stage("joint", 40, True, True)])
        codes = torch.cat([p.quantizer.codes().flatten() for p in qm.points(kind="weight") if p.name.startswith("blocks.0.")])
        runs[(mode, cache)] = (info["stages"][0]["units"][0], codes)
    ref_stats, ref_codes = runs[("none", "device")]
    assert ref_stats["cache_place"].startswith("cuda")
    assert runs[("none", "cpu")][0]["cache_place"] == "cpu"
    for key, (stats, codes) in runs.items():
        assert stats["loss_last"] == pytest.approx(ref_stats["loss_last"], rel=1e-2), key
        assert (codes == ref_codes).float().mean() > 0.99, key


def test_batch_source_refuses_a_cache_split_across_devices():
    from mgrq.recon.cache import BatchSource, UnitCache

    x = torch.zeros(4, 3)
    cache = UnitCache(x, x, torch.zeros(4, 3, device="meta"))
    with pytest.raises(ValueError, match="several devices"):
        BatchSource(cache, batch=2, iters=3, seed=0, device=torch.device("cpu"))
