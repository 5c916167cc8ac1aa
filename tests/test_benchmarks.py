"""The speed benchmarks' input handling (their figures come from running them, not from tests)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from benchmarks import vs_brecq
from mgrq.quant.quantizers import UniformQuantizer


@pytest.fixture
def clean_quant(monkeypatch):
    """Keep a fake BRECQ ``quant`` package from leaking into other tests (sys.path, sys.modules)."""
    monkeypatch.setattr(sys, "path", list(sys.path))
    saved = {k: v for k, v in sys.modules.items() if k == "quant" or k.startswith("quant.")}
    for k in saved:
        del sys.modules[k]
    yield
    for k in [k for k in sys.modules if k == "quant" or k.startswith("quant.")]:
        del sys.modules[k]
    sys.modules.update(saved)


def fake_checkout(root, body="    device = 'cuda'\n    return torch.zeros(1).to(device).device.type\n"):
    pkg = root / "quant"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "block_recon.py").write_text(f"import torch\n\ndef block_reconstruction():\n{body}")
    return root


def test_vs_brecq_refuses_a_folder_that_is_not_the_brecq_checkout(tmp_path, capsys, clean_quant):
    with pytest.raises(SystemExit) as e:
        vs_brecq.main(["--brecq", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "nowhere" in err and "quant/block_recon.py" in err and vs_brecq.BRECQ_COMMIT in err

    other = fake_checkout(tmp_path / "other", body="    device = 'cuda:1'\n")
    with pytest.raises(vs_brecq.CheckoutError, match="expected one line"):
        vs_brecq.load_brecq(str(other))

    broken = fake_checkout(tmp_path / "broken")
    (broken / "quant" / "__init__.py").write_text("import linklink  # a package BRECQ's checkout would bring\n")
    with pytest.raises(vs_brecq.CheckoutError, match="importing its quant package failed"):
        vs_brecq.load_brecq(str(broken))


def test_vs_brecq_loads_block_recon_with_the_device_replaced(tmp_path, clean_quant):
    root = fake_checkout(tmp_path / "brecq")
    mod = vs_brecq.load_brecq(str(root))
    assert mod.block_reconstruction() == "cpu"
    assert mod.__file__ == str(root / "quant" / "block_recon.py")
    # a second checkout in the same process would silently reuse the first one's package: refused
    with pytest.raises(vs_brecq.CheckoutError, match="different 'quant' package"):
        vs_brecq.load_brecq(str(fake_checkout(tmp_path / "second")))


@pytest.mark.parametrize(("argv", "message"), [
    (["--stages", "weights"], "--stages 'weights': unknown or empty; expected a comma list of rounding, steps"),
    (["--precisions", "high"], "--precisions 'high': unknown or empty; expected a comma list of highest, medium"),
    (["--modes", "none,cudagraphs"], "--modes 'none,cudagraphs': unknown or empty; expected a comma list of none, "
                                     "kernels, compile"),
    (["--iters", "2"], "--iters must be >= 5"),
])
def test_vs_brecq_rejects_bad_options_before_any_work(argv, message, tmp_path, capsys):
    # the checkout path is valid-looking but never read: options are checked first
    with pytest.raises(SystemExit) as e:
        vs_brecq.main(["--brecq", str(tmp_path), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "block_recon.py" not in err


def test_vs_brecq_floor_runs_the_products_of_a_real_rounding_step(monkeypatch):
    """The floor row times exactly the matrix products the engine's rounding step runs (same
    operators, shapes and count), so BRECQ / floor bounds what equal numerics can gain."""
    import collections

    import torch
    from torch.profiler import ProfilerActivity, profile

    import mgrq.recon.trainer as trainer
    from mgrq import zoo
    from mgrq.recon import ReconConfig

    torch.manual_seed(0)
    fp = zoo.create_model("tiny_vit")
    ours = vs_brecq.OurSide(fp, torch.randn(64, 1, 32, 32), iters=6)
    prof = profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    update, done = trainer.UnitTrainer.update, []

    def counted(tr, total):  # profile iterations 3 to 5: each one's forward, backward and update
        update(tr, total)
        done.append(1)
        if len(done) == 2:
            prof.start()
        elif len(done) == 5:
            prof.stop()

    monkeypatch.setattr(trainer.UnitTrainer, "update", counted)
    ours.run("rounding", "none", "highest", vs_brecq.Clock("wall"))
    step = collections.Counter((e.name, tuple(tuple(s) for s in e.input_shapes if s)) for e in prof.events()
                               if e.name in ("aten::mm", "aten::addmm", "aten::bmm"))
    floor = vs_brecq.Floor(fp.blocks[0], ReconConfig().batch, 65)
    want = collections.Counter((f"aten::{f.__name__}", tuple(tuple(a.shape) for a in args)) for f, args in floor.products)
    assert sum(want.values()) == 17
    assert step == collections.Counter({k: 3 * n for k, n in want.items()})


def test_a_saved_benchmark_holds_its_table_figures_and_where_they_came_from(tmp_path, capsys, one_thread):
    """``--save FILE.json``: the table as printed, each row's figures, the command, source tree,
    device, CPU and versions, so a figure quoted in a document names the file and command behind it."""
    import json

    from benchmarks import engine_speed
    from mgrq import records

    with pytest.raises(SystemExit) as e:  # a folder: refused before the block is built
        engine_speed.main(["--device", "cpu", "--save", str(tmp_path)])
    assert e.value.code == 2 and f"--save '{tmp_path}' is a folder; expected a file path" in capsys.readouterr().err
    path = tmp_path / "es.json"
    argv = ["--device", "cpu", "--iters", "6", "--modes", "none", "--save", str(path)]
    assert engine_speed.main(argv) == 0
    out = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["command"] == "python -m benchmarks.engine_speed " + " ".join(argv)
    here = records.tree_sha(Path(engine_speed.__file__).resolve().parent.parent, (*records.CODE_PATHS, "benchmarks"))
    assert saved["git_sha"] == here and "mgrq_source" not in saved  # this checkout, its benchmarks/ counted
    assert saved["cpu"] == records.cpu_name() and saved["versions"]["torch"] == records.versions()["torch"]
    assert saved["table"] and all(line in out for line in saved["table"]) and f"saved: {path}" in out
    (row,) = saved["rows"]
    assert row["mode"] == "none" and f"| none | {row['ms_per_iter']:.2f} | 1.00x |" in saved["table"][2]
    assert out.splitlines()[0] == f"source tree {here or 'not a git checkout'} | CPU, 1 thread | processor {saved['cpu']}"


def test_quantizer_paths_times_the_three_paths_and_checks_the_fused_one_is_bit_identical(tmp_path, capsys, one_thread):
    """Each tensor's row: the quantizer took the path under test (fused only where it says so),
    the fused kernel's output equals the composite formula's element for element, all saved."""
    import json

    from benchmarks import quantizer_paths

    path = tmp_path / "qp.json"
    argv = ["--size", "tiny", "--threads", "1", "--rounds", "2", "--calls", "1", "--save", str(path)]
    assert quantizer_paths.main(argv) == 0
    out = capsys.readouterr().out
    saved = json.loads(path.read_text())
    assert saved["command"] == "python -m benchmarks.quantizer_paths " + " ".join(argv)
    assert [r["tensor"] for r in saved["rows"]] == list(quantizer_paths.cases("tiny"))
    for row in saved["rows"]:
        assert row["differ_from_composite"]["fused"] == 0 and row["differ_from_composite"]["composite"] == 0
        assert set(row["ms"]) == set(quantizer_paths.PATHS) and all(v > 0 for v in row["ms"].values())
        assert row["ratio_to_fused"]["fused"] == 1.0
    assert all(line in out for line in saved["table"]) and len(saved["table"]) == 2 + 4
    x = torch.randn(16, 8)  # the fused path times the kernel itself; the others the forward with it off
    g = quantizer_paths.cases("tiny")["weight, per channel"][1]
    fused, composite = quantizer_paths.quantizer("fused", x, g), quantizer_paths.quantizer("composite", x, g)
    assert fused.__func__ is UniformQuantizer._fused and isinstance(composite, UniformQuantizer) and not composite._fast


@pytest.mark.parametrize("argv, message", [
    (["--threads", "0"], "--threads '0': expected a comma list of positive integers"),
    (["--threads", "two"], "--threads 'two': expected a comma list of positive integers"),
    (["--rounds", "0"], "--rounds 0, --calls 10: expected both >= 1"),
    (["--device", "tpu"], "--device 'tpu': expected cpu or cuda"),
    (["--save", ""], "argument --save: expected a path, got an empty string"),
])
def test_quantizer_paths_rejects_bad_options(argv, message, capsys):
    from benchmarks import quantizer_paths

    with pytest.raises(SystemExit) as e:
        quantizer_paths.main(argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
