"""``brecq`` and ``qdrop``: configs, their stages, and end-to-end runs (CLI, ViT, DeiT, Swin)."""

import json

import pytest
import torch

from mgrq import zoo
from mgrq.data import Calibration
from mgrq.errors import ConfigError, ReconstructionError
from mgrq.methods import get_method
from mgrq.methods.registry import RunContext
from mgrq.surgery import LayerPolicy, quantize_model

pytestmark = pytest.mark.usefixtures("one_thread")


def test_configs_and_stages():
    brecq = get_method("brecq").make_config({"iters": "7", "act_iters": "3", "block_loss": "fisher"})
    (s1, e1), (s2, e2) = brecq.stages()
    assert (s1.iters, s1.learn_rounding, s1.learn_steps, s1.acts, s1.lr_round) == (7, True, False, False, 1e-3)
    assert (s2.iters, s2.learn_rounding, s2.learn_steps, s2.acts, s2.lr_step, s2.p) == (3, False, True, True, 4e-4, 2.4)
    assert (e1.input_mode, e1.block_loss, e2.block_loss) == ("quant", "fisher", "mse")
    # pass 2's input: the quantized model's by default, the FP model's as the reference code runs it
    assert e2.input_mode == "quant"
    (_, f1), (_, f2) = get_method("brecq").make_config({"act_input": "fp"}).stages()
    assert (f1.input_mode, f2.input_mode) == ("quant", "fp")
    with pytest.raises(ConfigError, match=r"act_input='qdrop': expected one of quant, fp"):
        get_method("brecq").make_config({"act_input": "qdrop"})
    qdrop = get_method("qdrop").make_config({})
    ((s, e),) = qdrop.stages()
    assert (s.iters, s.learn_rounding, s.learn_steps, s.lr_step) == (20000, True, True, 4e-5)
    assert (e.input_mode, e.input_prob, e.act_drop, e.batch) == ("qdrop", 0.5, 0.5, 32)
    assert get_method("qdrop").default_calib == get_method("brecq").default_calib == 1024
    with pytest.raises(ConfigError, match="act_reinit"):
        get_method("brecq").make_config({"init": "repq_vit"})
    assert get_method("brecq").make_config({"init": "repq_vit", "act_reinit": "false"}).init == "repq_vit"
    for bad, field in (({"compile": "fast"}, "compile"), ({"init": "nope"}, "init"),
                       ({"input_prob": "2"}, "input_prob"), ({"iters": "0"}, "iters"), ({"bogus": "1"}, "bogus")):
        with pytest.raises(ConfigError, match=field):
            get_method("qdrop").make_config(bad)


def test_qdrop_through_the_cli_records_per_unit_stats(tmp_path, capsys):
    from mgrq.cli import main

    rec = tmp_path / "r.json"
    rc = main(["quantize", "--model", "tiny_vit", "--method", "qdrop", "--w-bits", "4", "--a-bits", "4",
               "--calib", "32", "--eval-limit", "50", "--device", "cpu", "--quiet", "--record", str(rec),
               "--set", "iters=4", "--set", "init_calib=16", "--set", "check_every=2",
               "--set", "weight_init=percentile", "--set", "act_init=percentile"])
    assert rc == 0, capsys.readouterr().err
    r = json.loads(rec.read_text())
    assert r["status"] == "done" and r["method"]["config"]["iters"] == 4
    info = r["method"]["info"]
    assert info["init"]["method"] == "percentile" and info["calib_images"] == 32
    (recon,) = info["recon"]
    assert recon["compile"] == "none" and recon["device"] == "cpu"
    units = recon["stages"][0]["units"]
    assert [u["unit"] for u in units] == ["patch_embed", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "head"]
    for u in units:
        assert u["iters"] == 4 and u["wall_s"] > 0 and u["s_per_iter"] > 0
        # a unit's peak is sampled inside the run's, so it can't exceed it
        assert u["peak_mem_kind"] == r["peak_mem_kind"] == "cpu_rss_sampled" and 0 < u["peak_mem_mb"] <= r["peak_mem_mb"]
        assert set(u["terms_first"]) == {"block"}

    # MLflow's step metrics (one step per unit) and the tag naming the units, from this record
    from mgrq.tracking import unit_metrics

    metrics, tags = unit_metrics(r)
    assert tags == {"unit.joint": ",".join(u["unit"] for u in units)}
    assert [(i, v) for k, v, i in metrics if k == "unit.joint.out_mse_final"] == \
        [(i, u["out_mse"]["final"]) for i, u in enumerate(units)]
    assert {k for k, _, _ in metrics} == {f"unit.joint.{f}" for f in ("out_mse_init", "out_mse_final", "wall_s",
                                                                      "rounding_changed")}


def test_unit_metrics_name_a_stage_met_again_by_its_pass():
    from mgrq.tracking import unit_metrics

    def stage(name, *mse):
        return {"stage": name, "units": [{"unit": f"u{i}", "out_mse": {"init": 1.0, "final": v}}
                                         for i, v in enumerate(mse)]}

    rec = {"method": {"info": {"recon": [{"stages": [stage("joint", 0.5, None)]},
                                         {"stages": [stage("joint", 0.25), "junk"]}, "junk"]}}}
    metrics, tags = unit_metrics(rec)
    assert tags == {"unit.joint": "u0,u1", "unit.joint.1": "u0"}
    assert ("unit.joint.out_mse_final", 0.5, 0) in metrics and ("unit.joint.1.out_mse_final", 0.25, 0) in metrics
    assert not any(k == "unit.joint.out_mse_final" and i == 1 for k, _, i in metrics)  # a null is no point
    assert unit_metrics({"method": {"info": {"recon": "not a list"}}}) == ([], {})


def _calib(n, shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Calibration.of_images(torch.randn((n, *shape), generator=g), seed)


def test_brecq_on_swin_merge_block_and_head():
    model = zoo.create_model("tiny_swin")
    qm = quantize_model(model, LayerPolicy(4, 4))
    cfg = get_method("brecq").make_config({"iters": "4", "act_iters": "3", "init_calib": "16", "check_every": "2", "act_init": "percentile",
                                            "units": r"^(layers\.1\.downsample|layers\.1\.blocks\.1|head)$"})
    info = get_method("brecq").quantize(qm, _calib(24, (1, 32, 32)), cfg, RunContext(device=torch.device("cpu"), progress=False))
    rounding, steps = info["recon"]
    names = [u["unit"] for u in rounding["stages"][0]["units"]]
    assert names == ["layers.1.downsample", "layers.1.blocks.1", "head"]
    assert [u["iters"] for u in steps["stages"][0]["units"]] == [3, 3, 3]
    assert all(p.enabled and p.quantizer is not None for p in qm.active_points())
    with torch.no_grad():
        assert torch.isfinite(qm(torch.randn(2, 1, 32, 32))).all()


def test_brecq_passes_draw_their_own_batches(monkeypatch):
    """BRECQ's second pass draws its batches afresh (``randperm`` from the global generator), so
    the steps stage must not replay the rounding stage's schedule; a rerun draws the same ones."""
    from mgrq.recon import engine

    drawn: list[torch.Tensor] = []

    class Recording(engine.BatchSource):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            drawn.append(self.schedule.clone())

    monkeypatch.setattr(engine, "BatchSource", Recording)

    def run():
        drawn.clear()
        qm = quantize_model(zoo.ZOO["tiny_vit"].build().eval(), LayerPolicy(4, 4))
        cfg = get_method("brecq").make_config({"iters": "6", "act_iters": "6", "batch": "4", "init_calib": "16",
                                                "check_every": "3", "units": r"^blocks\.1$"})
        get_method("brecq").quantize(qm, _calib(64, (1, 32, 32)), cfg, RunContext(device=torch.device("cpu"), progress=False))
        return list(drawn)

    rounding, steps = run()
    assert rounding.shape == steps.shape == (6, 4)
    assert not torch.equal(rounding, steps)
    again = run()
    assert len(again) == 2 and all(torch.equal(a, b) for a, b in zip(again, (rounding, steps)))


def test_brecq_act_input_chooses_the_unit_input_of_pass_2():
    """``act_input=fp`` runs pass 2 on the FP model's unit inputs, as BRECQ's code does (its
    activation pass calls ``block_reconstruction`` without ``asym``); each stage records its input."""
    def run(act_input):
        qm = quantize_model(zoo.ZOO["tiny_vit"].build().eval(), LayerPolicy(4, 4))
        cfg = get_method("brecq").make_config({"iters": "4", "act_iters": "4", "batch": "4", "init_calib": "16",
                                                "check_every": "2", "units": r"^blocks\.1$", "act_input": act_input})
        info = get_method("brecq").quantize(qm, _calib(32, (1, 32, 32)), cfg,
                                            RunContext(device=torch.device("cpu"), progress=False))
        steps = [p.quantizer.scale.clone() for p in qm.points(kind="act") if p.name.startswith("blocks.1.")]
        return [r["stages"][0]["input_mode"] for r in info["recon"]], steps

    (modes_q, steps_q), (modes_f, steps_f) = run("quant"), run("fp")
    assert modes_q == ["quant", "quant"] and modes_f == ["quant", "fp"]
    assert steps_q and not all(torch.equal(a, b) for a, b in zip(steps_q, steps_f, strict=True))


@pytest.mark.parametrize("method", ["brecq", "qdrop"])
def test_fisher_block_loss_and_distilled_deit_head(method):
    model = zoo.ZOO["tiny_deit"].build().eval()  # weights do not matter here
    qm = quantize_model(model, LayerPolicy(3, 3))
    over = {"iters": "3", "init_calib": "16", "check_every": "3", "act_init": "percentile", "block_loss": "fisher",
            "units": r"^(blocks\.3|head)$"}
    if method == "brecq":
        over["act_iters"] = "0"  # rounding pass only
    cfg = get_method(method).make_config(over)
    info = get_method(method).quantize(qm, _calib(16, (1, 32, 32)), cfg, RunContext(device=torch.device("cpu"), progress=False))
    (rounding,) = info["recon"]
    (stage,) = rounding["stages"]
    blk, head = stage["units"]
    assert blk["unit"] == "blocks.3" and "fisher_s" in blk and head["unit"] == "head"
    assert blk["iters"] == head["iters"] == 3
    assert "fisher_s" not in head and set(head["terms_first"]) == {"block"}  # the head keeps its logit KL
    assert head["learned"]["rounding"] == 2 * 10 * 96  # both the class and the distillation head
    # brecq's rounding pass learns rounding only; qdrop learns rounding and activation steps jointly
    assert stage["stage"] == {"brecq": "rounding", "qdrop": "joint"}[method]
    assert blk["learned"]["rounding"] > 0
    assert (blk["learned"]["steps"] > 0) == (method == "qdrop")
    with torch.no_grad():
        out = qm(torch.randn(2, 1, 32, 32))
    assert torch.isfinite(out).all()


def test_diverging_run_is_recorded_as_failed(monkeypatch):
    from mgrq.recon import losses
    from mgrq.run import execute, failed_record
    from mgrq.spec import RunSpec

    real = losses.channel_error
    monkeypatch.setattr(losses, "channel_error", lambda *a, **k: real(*a, **k) * float("inf"))
    spec = RunSpec(model="tiny_vit", method="qdrop", w_bits=4, a_bits=4, calib=16, eval_limit=50, device="cpu",
                   method_config=(("iters", 4), ("init_calib", 16), ("check_every", 2), ("act_init", "percentile"),
                                  ("units", r"^blocks\.0$")))
    with pytest.raises(ReconstructionError, match=r"qdrop: unit blocks\.0 \(joint stage\): the loss became inf at iteration 0 of 4") as e:
        execute(spec, progress=False)
    rec = failed_record(spec, e.value, "now")
    assert rec["status"] == "failed" and rec["error"]["type"] == "ReconstructionError" and rec["error"]["user_error"]
