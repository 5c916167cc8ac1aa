"""Bad input found by a user walkthrough: each gets one line naming what was wrong and what was
expected (exit status 2), before any work is done, and nothing already computed is lost."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from harness_helpers import write_suite

from mgrq import records
from mgrq.cli import main
from mgrq.errors import ConfigError, ReconstructionError
from mgrq.runner import executors as ex
from mgrq.runner.layout import Cell, records_under
from mgrq.runner.suite import load_suite
from mgrq.zoo import tiny_weights_path

QUANT = ["quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--quiet"]


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: "), err
    return err[-1]


@pytest.fixture
def no_work(monkeypatch):
    """Make any quantization or training fail the test: the error must come first."""
    import mgrq.run
    import mgrq.zoo

    def boom(*a, **k):
        raise AssertionError("work started before the input was checked")

    monkeypatch.setattr(mgrq.run, "execute", boom)
    monkeypatch.setattr(mgrq.zoo, "train_tiny", boom)


def test_zoo_train_replaces_the_shipped_checkpoint_only_when_told(tmp_path, monkeypatch, capsys):
    import mgrq.zoo

    calls = []
    monkeypatch.setattr(mgrq.zoo, "train_tiny", lambda name, out, **k: calls.append(out) or {"out": out})
    assert main(["zoo", "train", "tiny_vit", "--force", "--quiet"]) == 0  # the shipped path, replaced
    assert main(["zoo", "train", "tiny_vit", "--out", str(tmp_path / "t.pth"), "--quiet"]) == 0
    (tmp_path / "old.pth").write_bytes(b"an earlier checkpoint")
    assert main(["zoo", "train", "tiny_vit", "--out", str(tmp_path / "old.pth"), "--force", "--quiet"]) == 0
    monkeypatch.setattr(mgrq.zoo, "WEIGHTS_DIR", tmp_path / "none")  # a missing checkpoint is made
    assert main(["zoo", "train", "tiny_vit", "--quiet"]) == 0
    assert calls == [None, str(tmp_path / "t.pth"), str(tmp_path / "old.pth"), None]


def test_check_writable(tmp_path):
    f = tmp_path / "f.json"
    f.write_text("{}")
    assert records.check_writable(f, "--record") == f  # an existing file is overwritten
    assert records.check_writable(tmp_path / "a" / "b.json", "--record") == tmp_path / "a" / "b.json"
    assert records.check_writable(tmp_path / "new", "--out", folder=True) == tmp_path / "new"
    assert not (tmp_path / "a").exists() and not (tmp_path / "new").exists()  # creates nothing
    with pytest.raises(ConfigError, match=r"--record '.*' is a folder; expected a file path"):
        records.check_writable(tmp_path, "--record")
    with pytest.raises(ConfigError, match=r"--out '.*f.json' is a file; expected a folder"):
        records.check_writable(f, "--out", folder=True)
    with pytest.raises(ConfigError, match=r"f.json' is a file, so nothing can be created below it"):
        records.check_writable(f / "x" / "r.json", "--record")
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]  # the write probes leave nothing behind
    # a folder where no file can be created: /proc (os.access says yes to root: the probe finds out)
    with pytest.raises(ConfigError, match=r"--record '/proc/x.json': (cannot create a file in '/proc' \(|the folder "
                                          r"'/proc' is not writable)"):
        records.check_writable("/proc/x.json", "--record")


@pytest.mark.parametrize(("argv", "message"), [
    (QUANT + ["--record", "{tmp}"], r"--record '.*' is a folder; expected a file path"),
    (QUANT + ["--record", "{tmp}/file/r.json"], r"is a file, so nothing can be created below it"),
    (QUANT + ["--data-root", "{tmp}"], r"--data-root .*: model tiny_vit is from the tiny zoo .* expected --data-root "
                                       r"only with an ImageNet"),
    (["zoo", "train", "tiny_vit", "--out", "{tmp}/file/z.pth"], r"--out .* is a file, so nothing can be created"),
    (["zoo", "train", "tiny_vit", "--threads", "-2"], r"--threads -2: expected 0 \(torch's default\) or a positive"),
    (["zoo", "train", "tiny_vit"], r"zoo train tiny_vit: .*tiny_vit.pth and .*tiny_vit.json exist \(the shipped "
                                   r"checkpoint every tiny-zoo result was computed with, and its metadata\); expected "
                                   r"--out PATH for a new checkpoint, or --force to replace them"),
    (["zoo", "train", "tiny_vit", "--out", "{repo}/mgrq/../mgrq/zoo_weights/tiny_vit.pth"],  # the shipped file
     r"zoo train tiny_vit: .*/mgrq/zoo_weights/tiny_vit.pth and .* exist \(the shipped checkpoint"),
    (["zoo", "train", "tiny_vit", "--out", "{repo}/mgrq/zoo_weights/tiny_deit.pth"],  # another model's, even with --force
     r"zoo train tiny_vit: --out .*tiny_deit.pth: .*zoo_weights holds the shipped checkpoints, one NAME.pth \(and its "
     r"NAME.json\) per tiny model; expected a path elsewhere, or no --out \(with --force\) to replace tiny_vit.pth"),
    (["zoo", "train", "tiny_vit", "--out", "{repo}/mgrq/zoo_weights/tiny_vit.pt", "--force"],  # would write tiny_vit.json
     r"zoo_weights holds the shipped checkpoints"),
    (["zoo", "train", "tiny_vit", "--out", "{tmp}/file"], r"zoo train tiny_vit: .*/file exists; expected a new --out "
                                                          r"PATH, or --force to replace it$"),
    (["zoo", "train", "tiny_vit", "--out", "{tmp}/meta.pth"], r"zoo train tiny_vit: .*/meta.json exists; expected a "
                                                              r"new --out PATH, or --force to replace it$"),
    (["zoo", "train", "tiny_vit", "--out", "{tmp}/t.json"],  # its metadata would be written over the weights
     r"zoo train tiny_vit: --out .*/t.json: the weights are written with torch.save, and their metadata beside them "
     r"as t.json; expected a path such as t.pth$"),
    (["zoo", "train", "tiny_vit", "--out", "{tmp}/T.JSON"],  # on a case-blind disk T.json would replace it
     r"--out .*/T.JSON: the weights are written with torch.save, .* expected a path such as T.pth$"),
    (["zoo", "train", "tiny_vit", "--out", "{tmp}/t.safetensors"],  # torch.save's format under a safetensors name
     r"--out .*/t.safetensors: the weights are written with torch.save, .* expected a path such as t.pth$"),
    (["zoo", "train", "tiny_vt"], r"unknown tiny-zoo model 'tiny_vt'. Did you mean 'tiny_vit'.*\? Known tiny-zoo models: "
                                  r"tiny_deit, tiny_swin, tiny_vit$"),
    (["zoo", "train", "deit_tiny_patch16_224"], r"zoo train deit_tiny_patch16_224: only the tiny zoo is trained here; "
                                                r"expected one of tiny_deit, tiny_swin, tiny_vit"),
    (["suite", "run", "demo", "--out", "{tmp}/file", "--no-mirror"], r"--out '.*file' is a file; expected a folder"),
])
def test_bad_paths_fail_before_any_work(tmp_path, capsys, no_work, argv, message):
    (tmp_path / "file").write_text("x")
    (tmp_path / "meta.json").write_text("{}")  # the metadata a checkpoint meta.pth would write over
    repo = str(Path(__file__).resolve().parents[1])
    assert main([a.replace("{tmp}", str(tmp_path)).replace("{repo}", repo) for a in argv]) == 2
    assert re.search(message, error_line(capsys))


def test_failed_quantize_keeps_a_done_record(tmp_path, capsys, monkeypatch):
    rec = tmp_path / "r.json"
    records.write_record(rec, {"id": "x", "status": "done", "spec": {}, "metrics": {"top1": 90.0}})
    bad = tmp_path / "bad.pth"
    bad.write_text("not a checkpoint")
    assert main(QUANT + ["--checkpoint", str(bad), "--record", str(rec)]) == 2  # refused before any work
    assert "not a readable" in capsys.readouterr().err
    assert json.loads(rec.read_text())["metrics"] == {"top1": 90.0}

    def boom(spec, progress=True):  # a run that fails after the checks passed
        raise ReconstructionError("unit blocks.0: the loss became nan at iteration 3")

    monkeypatch.setattr("mgrq.run.execute", boom)
    assert main(QUANT + ["--record", str(rec)]) == 2
    err = capsys.readouterr().err
    assert "holds a done record; the failure is not written over it" in err and "the loss became nan" in err
    assert json.loads(rec.read_text())["metrics"] == {"top1": 90.0}


def test_checkpoint_messages(tmp_path, capsys):
    assert main(QUANT + ["--checkpoint", str(tmp_path)]) == 2
    assert "is a folder; expected a weights file" in error_line(capsys)
    wrong = tmp_path / "wrong.pth"
    torch.save({"w": torch.zeros(2)}, wrong)
    assert main(QUANT + ["--checkpoint", str(wrong)]) == 2
    line = error_line(capsys)
    assert "does not fit model tiny_vit: " in line and "1 unexpected (e.g. w)" in line and "\t" not in line
    assert line.endswith("expected the weights of model tiny_vit")
    ddp = tmp_path / "ddp.pth"  # a DistributedDataParallel save: every key under 'module.'
    prefixed = {f"module.{k}": v for k, v in torch.load(tiny_weights_path("tiny_vit")).items()}
    torch.save(prefixed, ddp)
    assert main(QUANT + ["--checkpoint", str(ddp)]) == 2
    line = error_line(capsys)
    assert "missing (e.g. cls_token); " in line and "unexpected (e.g. module.cls_token); expected the weights of " \
        "model tiny_vit in its key layout: the file's keys carry the 'module.' prefix of a DDP save, to be stripped" in line
    torch.save({**prefixed, "module.cls_token": torch.zeros(1, 1, 7)}, ddp)  # another model's: no hint
    assert main(QUANT + ["--checkpoint", str(ddp)]) == 2
    assert error_line(capsys).endswith("unexpected (e.g. module.cls_token); expected the weights of model tiny_vit")


def test_checkpoints_that_are_not_state_dicts_say_what_they_hold(tmp_path, capsys):
    from mgrq import zoo

    whole = tmp_path / "model.pth"
    torch.save(zoo.create_model("tiny_vit"), whole)  # a whole pickled model
    assert main(QUANT + ["--checkpoint", str(whole)]) == 2
    line = error_line(capsys)
    assert line == (f"error: checkpoint {whole}: holds Python objects besides tensors (e.g. "
                    "timm.models.vision_transformer.VisionTransformer: a whole pickled model, or a training checkpoint "
                    "with its arguments), which are not unpickled (they could run code); expected a state_dict of "
                    "tensors: save model.state_dict() with torch.save") and "\x1b" not in line
    text = tmp_path / "text.pth"
    text.write_text("not a checkpoint at all")
    assert main(QUANT + ["--checkpoint", str(text)]) == 2
    assert error_line(capsys).endswith(f"checkpoint {text}: not a readable torch/safetensors weights file "
                                       "(UnpicklingError: Unsupported operand 110); expected a whole file written "
                                       "by torch.save or safetensors (a truncated copy fails so too)")
    cut = tmp_path / "cut.pth"  # a copy that stopped half-way
    cut.write_bytes(tiny_weights_path("tiny_vit").read_bytes()[:50_000])
    assert main(QUANT + ["--checkpoint", str(cut)]) == 2
    assert re.search(rf"checkpoint {re.escape(str(cut))}: not a readable torch/safetensors weights file \((OSError|"
                     r"RuntimeError): .*\); expected a whole file written by torch.save or safetensors "
                     r"\(a truncated copy fails so too\)$", error_line(capsys))
    ema = tmp_path / "ema.pth"
    torch.save({"model_ema": {"w": torch.zeros(2)}, "epoch": 3}, ema)  # a wrapper key we do not read
    assert main(QUANT + ["--checkpoint", str(ema)]) == 2
    assert error_line(capsys) == (f"error: checkpoint {ema}: expected a state_dict of tensors, or a dict holding one "
                                  "under 'state_dict' or 'model'; it holds model_ema (dict), epoch (int)")


def test_layer_policy_override_must_match_a_point(tmp_path, capsys, no_work):
    assert main(QUANT + ["--bits-override", "reduction=fp"]) == 2  # Swin's patch merging: not in a ViT
    line = error_line(capsys)
    assert line.startswith("error: --bits-override: layer policy pattern 'reduction' matches no quantization "
                           "point of tiny_vit; expected a regex (re.search) for point names such as patch_embed.")
    # a suite's overrides apply to every model: one model of the grid having the point is enough
    mixed = write_suite(tmp_path / "mix.yaml", models=["tiny_vit", "tiny_swin"], bits_overrides={"reduction": 8})
    assert load_suite(mixed).with_options().bits_overrides == (("reduction", 8),)
    typo = write_suite(tmp_path / "typo.yaml", models=["tiny_vit", "tiny_swin"],
                       methods=[{"name": "percentile", "bits_overrides": {"reductoin": 8}}])
    with pytest.raises(ConfigError, match=r"typo.yaml: methods\[0\]\.bits_overrides: layer policy pattern 'reductoin' "
                                          r"matches no quantization point of tiny_vit, tiny_swin"):
        load_suite(typo).with_options()
    # set through the per-method overrides: named there, not at the method's entry
    typo = write_suite(tmp_path / "typo2.yaml", models=["tiny_vit"], methods=["base_ptq", "percentile"],
                       overrides={"percentile": {"bits_overrides": {"reductoin": 8}}})
    with pytest.raises(ConfigError, match=r"typo2.yaml: overrides\.percentile\.bits_overrides: layer policy pattern"):
        load_suite(typo).with_options()


def test_unit_pattern_must_match_a_unit_of_every_model(tmp_path, capsys, no_work):
    """The engine refuses a ``units`` regex that matches none of a model's units; that is
    checked before any work, not after each cell's calibration."""
    assert main(["quantize", "--model", "tiny_vit", "--method", "qdrop", "--w-bits", "4", "--a-bits", "4",
                 "--set", "units=block\\.0"]) == 2  # the unit is 'blocks.0'
    assert error_line(capsys) == ("error: --set: units='block\\.0' matches none of the units of tiny_vit; expected a "
                                  "regex (re.search) for unit names such as patch_embed, blocks.0, blocks.1, blocks.2, "
                                  "blocks.3, head")
    # in a suite it must match in every model: Swin's 'downsample' units are not in a ViT
    swin_only = write_suite(tmp_path / "u.yaml", models=["tiny_swin", "tiny_vit"],
                            methods=[{"name": "brecq", "config": {"units": "downsample"}}])
    with pytest.raises(ConfigError, match=r"u.yaml: method brecq: units='downsample' matches none of the units of "
                                          r"tiny_vit; expected .* patch_embed, blocks\.0"):
        load_suite(swin_only).with_options()
    both = write_suite(tmp_path / "ok.yaml", models=["tiny_swin", "tiny_vit"],
                       methods=[{"name": "brecq", "config": {"units": "blocks\\.0$|head"}}])
    assert load_suite(both).with_options().methods[0].config == (("units", "blocks\\.0$|head"),)


def test_init_calib_beyond_the_calibration_images_is_refused(tmp_path, capsys, no_work):
    """An explicit init_calib larger than the run's calibration set used to be cut to the set
    silently, while the record kept the larger number."""
    assert main(["quantize", "--model", "tiny_vit", "--method", "mgrq", "--w-bits", "4", "--a-bits", "4",
                 "--calib", "64", "--set", "init_calib=500"]) == 2
    assert error_line(capsys) == ("error: --set init_calib=500: more than the 64 calibration images of the run "
                                  "(calib); expected at most 64 (the first N of them), or 0 for all")
    s = write_suite(tmp_path / "s.yaml", methods=[{"name": "qdrop", "calib": 128, "config": {"init_calib": 128}}])
    assert load_suite(s).with_options().methods[0].calib == 128  # equal is fine
    with pytest.raises(ConfigError, match=r"s.yaml: method qdrop: \(with --calib\) init_calib=128: more than the 16 "):
        load_suite(s).with_options(calib=16)
    s = write_suite(tmp_path / "d.yaml", methods=[{"name": "qdrop", "config": {"init_calib": 2000}}],
                    calibration={"n": None})
    with pytest.raises(ConfigError, match=r"init_calib=2000: more than the 1024 calibration images of the run "
                                          r"\(qdrop's default calib\)"):
        load_suite(s).with_options()


def test_a_suite_calibration_beyond_the_tiny_training_split_fails_at_setup(tmp_path, capsys):
    """Each cell used to fail on it after the FP evaluation; now the suite stops before any work."""
    big = write_suite(tmp_path / "big.yaml", calibration={"n": 99999})
    assert main(["suite", "run", str(big), "--dry-run"]) == 2
    assert error_line(capsys) == (f"error: {big}: method percentile: calib=99999: more than the 4000 training digits "
                                  "calibration draws from (tiny zoo); expected at most 4000")
    ok = write_suite(tmp_path / "tune.yaml", data={"eval_split": "tune"})
    with pytest.raises(ConfigError, match=r"method percentile: \(with --calib\) calib=3501: more than the 3500 "
                                          r"training digits outside the tune split"):
        load_suite(ok).with_options(calib=3501)
    assert load_suite(ok).with_options(calib=3500).calib == 3500


def test_method_config_type_errors_name_the_type(capsys):
    assert main(["quantize", "--model", "tiny_vit", "--method", "qdrop", "--w-bits", "4", "--a-bits", "4",
                 "--set", "iters=abc"]) == 2
    assert error_line(capsys).endswith("qdrop.iters='abc': expected an integer")


def test_suite_grid_duplicates_and_scalar_methods(tmp_path):
    with pytest.raises(ConfigError, match=r"field 'models\[1\]': 'tiny_vit' listed twice"):
        load_suite(write_suite(tmp_path / "m.yaml", models=["tiny_vit", "tiny_vit"]))
    with pytest.raises(ConfigError, match=r"field 'bits\[1\]': 'w4a4' is bits\[0\] again"):
        load_suite(write_suite(tmp_path / "b.yaml", bits=["W4A4", "w4a4"]))
    assert [m.name for m in load_suite(write_suite(tmp_path / "s.yaml", methods="percentile")).methods] == ["percentile"]


def test_tiny_cells_ignore_the_data_root(tmp_path, capsys):
    s = load_suite(write_suite(tmp_path / "t.yaml"))
    with_root = s.with_options(data_root=str(tmp_path))
    assert [c.data_root for c in with_root.specs()] == [None]
    assert [c.content_hash for c in with_root.specs()] == [c.content_hash for c in s.specs()]
    assert main(["suite", "run", str(tmp_path / "t.yaml"), "--out", str(tmp_path / "runs"),
                 "--data-root", str(tmp_path), "--dry-run"]) == 0
    assert "note: --data-root is not used: every model of suite t is from the tiny zoo" in capsys.readouterr().err
    in_file = write_suite(tmp_path / "f.yaml", data={"root": "/nonexistent"})
    assert main(["suite", "run", str(in_file), "--out", str(tmp_path / "runs"), "--dry-run"]) == 0
    assert f"note: {in_file}: data.root is not used: every model of suite f" in capsys.readouterr().err


def test_malformed_records_are_named_not_crashed_on(tmp_path, capsys):
    from reports.build import build_report

    path = write_suite(tmp_path / "mal.yaml", seeds=[0, 1])
    out = tmp_path / "runs"
    assert main(["suite", "run", str(path), "--out", str(out), "--label", "L", "--executor", "debug",
                 "--no-mirror", "--no-report"]) == 0
    rec_path, ok_path = sorted((out / "mal" / "L").glob("*/record.json"))
    good = json.loads(rec_path.read_text())
    assert records.problem(good) is None
    assert records.problem({**good, "metrics": None}) == "a done record without a 'metrics' object"
    assert records.problem({**good, "spec": {"model": "tiny_vit"}}).startswith("spec.method is None")
    assert records.problem({**good, "warnings": ["a", "b"]}) is None
    assert records.problem({**good, "warnings": 3}) == "warnings is 3, expected a list of strings"
    spec = good["spec"]
    assert records.problem({**good, "spec": {k: v for k, v in spec.items() if k != "image_bits"}}) is None  # default
    assert records.problem({**good, "spec": {**spec, "bits_overrides": [["^head", 8]], "eval_limit": 5}}) is None
    for field, value, says in (("bits_overrides", "abc", "a list of [regex, bits] pairs or null"),
                               ("bits_overrides", [["x"]], "a list of [regex, bits] pairs or null"),
                               ("bits_overrides", [[1, 2]], "a list of [regex, bits] pairs or null"),
                               ("method_config", "abc", "an object of field: value or null"),
                               ("eval_limit", "abc", "an integer or null"), ("calib", True, "an integer or null"),
                               ("checkpoint", 3, "a string or null"), ("image_bits", None, "an integer"),
                               ("image_bits", "8", "an integer"), ("device", None, "a string")):
        broken = {**good, "spec": {**spec, field: value}}
        assert records.problem(broken) == f"spec.{field} is {value!r}, expected {says}"
        (tmp_path / "broken.json").write_text(json.dumps(broken))  # `mgrq rerun` of it: one line, exit 2
        assert main(["rerun", str(tmp_path / "broken.json")]) == 2
        assert error_line(capsys).endswith(f"broken.json: not a done run record (spec.{field} is {value!r}, expected "
                                           f"{says}); expected a record.json of a finished cell or a `mgrq quantize "
                                           "--record` file")
    rec_path.write_text(json.dumps({**good, "metrics": None}))
    cell = Cell(good["id"], good["hash"], rec_path.parent, {})
    assert cell.record() is None and cell.status() == "corrupt"
    bad: list = []
    assert [p for p, _ in records_under(out / "mal" / "L", bad)] == [ok_path]
    assert bad == [(rec_path, "a done record without a 'metrics' object")]
    note, grid = build_report(out, "mal", "L", pdf="no", figures=False).notes
    assert note.startswith("1 record file(s) left out, unreadable or malformed") and rec_path.parent.name in note
    assert grid.startswith(f"1 of the 2 cells of the grid have no finished result: 1 corrupt ({good['id']})")
    capsys.readouterr()
    assert main(["suite", "run", str(path), "--out", str(out), "--label", "L", "--dry-run"]) == 0
    assert "1 with an unreadable record -> 1 to run" in capsys.readouterr().out
    assert main(["suite", "status", str(path), "--out", str(out), "--label", "L"]) == 0  # a YAML path works too
    assert capsys.readouterr().out.strip().endswith("1 corrupt, 1 done")
    from mgrq.tracking import mirror

    res = mirror(out, "mal", "L")
    assert res.created == 1 and res.unreadable == [f"{rec_path} (a done record without a 'metrics' object)"]
    assert "; 1 unreadable record(s) left out: " in res.counts()


def test_mirror_unknown_suite_or_label(tmp_path, capsys):
    out = tmp_path / "runs"
    records.write_record(out / "s1" / "L1" / "suite.json", {"created": "x"})
    assert main(["mirror", "--out", str(out), "--suite", "s2"]) == 2
    line = error_line(capsys)
    assert "unknown suite 's2' under --out" in line and line.endswith("Known suites: s1")
    assert main(["mirror", "--out", str(out), "--label", "L2"]) == 2
    assert "unknown label 'L2' of any suite under --out" in error_line(capsys)


def test_report_options_that_do_not_apply(tmp_path, capsys):
    out = str(tmp_path / "runs")
    assert main(["report", "s", "--out", out, "--strict"]) == 2
    assert "--strict: not used by a report of one label" in error_line(capsys)
    assert main(["report", "s", "--out", out, "--compare", "A", "B", "--paired", "x", "--no-figures"]) == 2
    assert "--paired, --no-figures: not used by the comparison of two labels" in error_line(capsys)
    assert main(["report", "s", "--out", out, "--tracking-uri", "sqlite:///x.db"]) == 2
    assert "--tracking-uri: only used with --from mlflow" in error_line(capsys)


def test_executor_option_shapes(tmp_path, capsys):
    with pytest.raises(ConfigError, match=r"p.yaml: executor option additional=\[1, 2\]: expected a mapping"):
        ex.resolve_options("slurm", {}, {"slurm": {"additional": [1, 2]}}, {}, "p.yaml: ")
    with pytest.raises(ConfigError, match=r"executor option setup=5: expected a shell line"):
        ex.resolve_options("slurm", {}, {"slurm": {"setup": 5}}, {}, "p.yaml: ")
    # every bad option of one layer in one error, not one per attempt
    with pytest.raises(ConfigError, match=r"^p.yaml: executor options: threads='abc': expected an integer >= 1; "
                                          r"mem_gb=-1: expected a positive number$"):
        ex.resolve_options("slurm", {}, {"slurm": {"threads": "abc", "mem_gb": -1}}, {}, "p.yaml: ")
    with pytest.raises(ConfigError, match=r"^p.yaml: executor options: threads='abc': expected an integer >= 1; "
                                          r"setup=5: expected a shell line or a list of them$"):
        ex.resolve_options("slurm", {}, {"slurm": {"setup": 5, "threads": "abc"}}, {}, "p.yaml: ")
    with pytest.raises(ConfigError, match=r"^p.yaml: executor options: mem_gb=-1: expected a positive number; "
                                          r"timeout_min=3: expected >= 5 for slurm"):
        ex.resolve_options("slurm", {}, {"slurm": {"timeout_min": 3, "mem_gb": -1}}, {}, "p.yaml: ")
    one_line = ex.resolve_options("slurm", {}, {"slurm": {"setup": "module load cuda", "additional": {"gres": "x"}}}, {})
    assert (one_line.setup, one_line.additional) == (("module load cuda",), (("gres", "x"),))
    # a suite file's executor block is checked with the rest of the file: a line for each problem
    path = write_suite(tmp_path / "exm.yaml", bits=["W4A4", "W44"],
                       executor={"timeout_min": -5, "mem_gb": -1, "threads": "abc"})
    assert main(["suite", "run", str(path), "--out", str(tmp_path / "runs"), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert f"error: {path}: 4 problems:" in err
    for says in ("field 'bits[1]': ", "field 'executor.timeout_min': expected minutes >= 1, got -5",
                 "field 'executor.mem_gb': expected a positive number, got -1",
                 "field 'executor.threads': expected an integer >= 1, got 'abc'"):
        assert says in err, says
    opts = ex.resolve_options("slurm", {"additional": (("mail_type", "END"),)}, {}, {})
    assert opts.additional == (("mail_type", "END"),)


def test_dry_run_writes_nothing_so_any_out_will_do(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert main(["suite", "run", "demo", "--out", str(tmp_path / "file" / "runs"), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "48 cells: 0 done" in out  # ... and it says what the run would refuse
    assert f"note: the run would stop here: --out '{tmp_path / 'file' / 'runs'}': '{tmp_path / 'file'}' is a file" in out


def test_method_config_type_names():
    from mgrq.config import _type_name

    assert _type_name(int) == "an integer" and _type_name(int | None) == "an integer or none"
    assert _type_name(bool) == "a boolean (true/false)" and _type_name(str) == "a string"


def test_typed_suite_values_are_checked_and_numbers_must_be_finite(tmp_path):
    for value, shown in ((10.5, "iters=10.5 (float): expected an integer"),
                         (True, "iters=True (bool): expected an integer")):
        bad = write_suite(tmp_path / "t.yaml", methods=[{"name": "qdrop", "config": {"iters": value}}])
        with pytest.raises(ConfigError, match=re.escape(f"field 'methods[0].config': qdrop.{shown}")):
            load_suite(bad)
    ok = write_suite(tmp_path / "ok.yaml", methods=[{"name": "qdrop", "config": {"iters": 10, "lr_step": 1}}])
    assert dict(load_suite(ok).methods[0].config) == {"iters": 10, "lr_step": 1}
    inf = write_suite(tmp_path / "inf.yaml", methods=[{"name": "qdrop", "config": {"lr_step": float("inf")}}])
    with pytest.raises(ConfigError, match=r"qdrop.lr_step=inf: expected a finite number"):
        load_suite(inf)
    from mgrq.methods import get_method

    with pytest.raises(ConfigError, match=r"qdrop.lr_round=nan: expected a finite number"):
        get_method("qdrop").make_config({"lr_round": "nan"})  # --set lr_round=nan


def test_bits_override_regex_is_checked_in_quantize(capsys, no_work):
    assert main(QUANT + ["--bits-override", "(=4"]) == 2
    assert error_line(capsys).startswith("error: bits override '(': not a valid regular expression (missing )")


def test_every_user_regex_gets_the_same_kind_of_message(tmp_path, capsys, no_work):
    """A suite's bits_overrides key and ``--only`` are checked like ``--bits-override``: what was
    wrong, why, and what was expected, before any work."""
    bad = write_suite(tmp_path / "re.yaml", bits_overrides={"(": 8})
    with pytest.raises(ConfigError, match=r"re.yaml: field 'bits_overrides.\(': layer pattern '\(': not a valid "
                                          r"regular expression \(missing \).*\); expected a regex searched in layer names"):
        load_suite(bad)
    ok = write_suite(tmp_path / "ok.yaml")
    assert main(["suite", "run", str(ok), "--out", str(tmp_path / "runs"), "--only", "tiny[", "--dry-run"]) == 2
    assert re.match(r"error: --only 'tiny\[': not a valid regular expression \(.*\); expected a regex searched "
                    r"in the cell ids", error_line(capsys))
    # a pattern that matches nothing is quoted as typed (its repr doubled the backslash)
    assert main(["suite", "run", str(ok), "--out", str(tmp_path / "runs"), "--only", r"tiny_vitt\.", "--dry-run"]) == 2
    assert error_line(capsys).startswith(r"error: --only 'tiny_vitt\.': matches none of the ")


def test_imagenet_data_root_checked_before_the_model_loads(tmp_path, capsys, monkeypatch):
    import mgrq.zoo

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the data root was checked")

    monkeypatch.setattr(mgrq.zoo, "create_model", no_load)
    imagenet = ["quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile", "--w-bits", "4",
                "--a-bits", "4", "--quiet"]
    assert main(imagenet) == 2
    assert "model deit_tiny_patch16_224 needs an ImageNet-layout folder; pass --data-root" in error_line(capsys)
    (tmp_path / "train").mkdir()
    assert main(imagenet + ["--data-root", str(tmp_path)]) == 2
    assert f"data root {tmp_path}: folder {tmp_path / 'val'} not found; expected layout" in error_line(capsys)


def test_pdb_needs_the_debug_executor(tmp_path, capsys):
    assert main(["suite", "run", "demo", "--out", str(tmp_path), "--pdb", "--dry-run"]) == 2
    assert "--pdb: opens pdb in this process, so it needs --executor debug (not local)" in error_line(capsys)


def test_label_may_not_be_empty_or_a_reserved_word(tmp_path, capsys):
    assert main(["suite", "run", "demo", "--out", str(tmp_path), "--label", "", "--dry-run"]) == 2
    assert "--label '': expected letters" in error_line(capsys)
    for word, means in (("latest", "newest label"), ("previous", "label before the newest")):
        assert main(["suite", "run", "demo", "--out", str(tmp_path), "--label", word, "--dry-run"]) == 2
        assert f"--label {word}: a reserved word (`report`, `suite status` and `--compare` read it as the {means})" \
            in error_line(capsys)


def test_records_under_skips_nothing_usable(tmp_path):
    p = Path(tmp_path) / "c" / "record.json"
    p.parent.mkdir()
    p.write_text("{trunc")
    bad: list = []
    assert records_under(tmp_path, bad) == [] and bad == [(p, "unreadable (not a JSON object)")]


def test_report_from_a_missing_sqlite_store_creates_nothing(tmp_path, capsys):
    db = tmp_path / "new.db"
    assert main(["report", "s", "--out", str(tmp_path), "--from", "mlflow", "--tracking-uri", f"sqlite:///{db}"]) == 2
    assert "no such sqlite store" in error_line(capsys) and not db.exists()


def test_no_run_hint_names_a_suite_file_only_when_one_exists(tmp_path, capsys):
    assert main(["report", "nosuch", "--out", str(tmp_path)]) == 2
    line = error_line(capsys)
    assert f"run its file with `mgrq suite run FILE --out {tmp_path}`, or see `mgrq suite list`" in line
    assert "mgrq suite run nosuch" not in line
    assert main(["report", "demo", "--out", str(tmp_path)]) == 2
    assert f"(run `mgrq suite run demo --out {tmp_path}`;" in error_line(capsys)


def test_suite_checkpoints_are_fit_checked_before_submitting(tmp_path):
    from mgrq import zoo
    from mgrq.errors import CheckpointError

    other = str(zoo.tiny_weights_path("tiny_deit"))
    s = write_suite(tmp_path / "ck.yaml", checkpoints={"tiny_vit": other})
    with pytest.raises(CheckpointError, match=re.escape(  # the first shape that differs tells the model apart
            f"ck.yaml: checkpoints.tiny_vit: checkpoint {other}: does not fit model tiny_vit: 1 tensor(s) of another "
            "shape (first: pos_embed [1, 66, 96] in the file, [1, 65, 96] in the model); 3 unexpected (e.g. "
            "dist_token); expected the weights of model tiny_vit")):
        load_suite(s).with_options()
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match=r"^--checkpoint tiny_vit=\.\.\.: checkpoint .*garbage.pth: not a readable"):
        load_suite(s).with_options(checkpoints={"tiny_vit": str(garbage)})  # from the command line, not ck.yaml
    fits = load_suite(s).with_options(checkpoints={"tiny_vit": str(zoo.tiny_weights_path("tiny_vit"))})
    assert dict(fits.checkpoints) == {"tiny_vit": str(zoo.tiny_weights_path("tiny_vit").resolve())}


def test_cli_checkpoint_is_named_as_the_flag(tmp_path, capsys):
    ok = write_suite(tmp_path / "ok.yaml")
    assert main(["suite", "run", str(ok), "--out", str(tmp_path / "runs"), "--dry-run",
                 "--checkpoint", "tiny_vit=bad.pth"]) == 2
    assert error_line(capsys) == f"error: --checkpoint tiny_vit=...: weights file {Path('bad.pth').resolve()} not found"


@pytest.mark.parametrize(("argv", "message"), [
    (["--set", "iters=5", "--set", "iters=6"], "--set 'iters=6': iters given twice (also --set iters=5); expected each once"),
    (["--set", "act_innit=minmax"], "percentile: unknown field(s) act_innit (did you mean 'act_init'?); expected "
                                    "one of"),
    (["--bits-override", "head"], "--bits-override 'head': expected REGEX=BITS"),
    (["--bits-override", "head=8", "--bits-override", "head=fp"], "--bits-override 'head=fp': head given twice"),
])
def test_assignment_flags(capsys, no_work, argv, message):
    assert main(QUANT + argv) == 2
    assert error_line(capsys).startswith(f"error: {message}")


def test_checkpoint_flag_form(tmp_path, capsys):
    ok = write_suite(tmp_path / "ok.yaml")
    assert main(["suite", "run", str(ok), "--out", str(tmp_path), "--dry-run", "--checkpoint", "tiny_vit"]) == 2
    assert error_line(capsys) == "error: --checkpoint 'tiny_vit': expected MODEL=PATH"


def test_executor_flags_of_another_executor_are_refused(tmp_path, capsys, monkeypatch):
    # the scheduler's own check of the options (sbatch --test-only: tests/test_slurm.py) is not this test's
    monkeypatch.setattr(ex, "test_submission", lambda *a: "accepted")
    ok = write_suite(tmp_path / "ok.yaml")
    run = ["suite", "run", str(ok), "--out", str(tmp_path), "--dry-run"]
    assert main([*run, "--partition", "gpu", "--mem-gb", "8"]) == 2
    assert error_line(capsys) == ("error: --partition, --mem-gb: not used by the local executor; expected "
                                  "--executor slurm, or no --partition or --mem-gb")
    assert main([*run, "--executor", "slurm", "--parallelism", "2"]) == 2
    assert error_line(capsys) == ("error: --parallelism: not used by the slurm executor; expected "
                                  "--array-parallelism, or no --parallelism")
    assert main([*run, "--executor", "debug", "--parallelism", "2", "--gpus", "1"]) == 2
    assert error_line(capsys) == ("error: --parallelism, --gpus: not used by the debug executor; expected "
                                  "--executor local or slurm, or no --parallelism or --gpus")
    assert main([*run, "--executor", "slurm", "--partition", "gpu"]) == 0
    assert main([*run, "--gpus", "0", "--timeout-min", "30"]) == 0  # the local executor reads both


def test_cuda_device_with_an_executor_that_runs_here(tmp_path, capsys, monkeypatch):
    """local and debug run the cells on this machine: --device cuda without a GPU here fails
    before anything runs (each cell failed with a traceback); slurm's nodes may have GPUs."""
    from mgrq.runner import executors as ex

    monkeypatch.setattr(ex, "cuda_count", lambda: 0)
    ok = write_suite(tmp_path / "ok.yaml")
    run = ["suite", "run", str(ok), "--out", str(tmp_path), "--device", "cuda", "--no-mirror"]
    for kind in ("local", "debug"):
        assert main([*run, "--executor", kind]) == 2
        assert error_line(capsys) == (f"error: --device cuda: the {kind} executor runs the cells on this machine, "
                                      "which has no CUDA device; expected cpu or auto, or --executor slurm")
    assert not (tmp_path / "ok").exists()  # no label was started
    assert main([*run, "--executor", "slurm", "--dry-run"]) == 0
    # two GPUs here: a local job sees one, as cuda:0; debug sees both
    monkeypatch.setattr(ex, "cuda_count", lambda: 2)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert main([*run[:-2], "cuda:1", "--executor", "local", "--dry-run"]) == 2
    assert "each local job sees one GPU, as cuda:0 (CUDA_VISIBLE_DEVICES); expected --device cuda" in error_line(capsys)
    assert main([*run, "--gpus", "0", "--dry-run"]) == 2
    assert "--gpus 0 gives its jobs no GPU; expected --device cpu" in error_line(capsys)
    assert main([*run[:-2], "cuda:2", "--executor", "debug", "--dry-run"]) == 2
    assert error_line(capsys).endswith("which has 2 CUDA device(s); expected cuda:0 to cuda:1")
    assert main([*run[:-2], "cuda:1", "--executor", "debug", "--dry-run"]) == 0
    assert main([*run, "--dry-run"]) == 0


def test_a_suite_name_or_a_folder(tmp_path, capsys, monkeypatch):
    """A folder named like a suite in the working directory does not hide the suite; a folder
    given as the suite file is named as one."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert main(["suite", "run", "demo", "--dry-run", "--out", str(tmp_path / "runs")]) == 0
    from mgrq.runner import suite as suite_mod

    demo = Path(suite_mod.__file__).resolve().parents[2] / "suites" / "demo.yaml"
    assert capsys.readouterr().out.startswith(f"suite demo ({demo})")
    (tmp_path / "grids").mkdir()
    assert main(["suite", "run", "grids", "--dry-run"]) == 2
    assert error_line(capsys).startswith("error: suite file grids: is a folder; expected a suite YAML file or a "
                                         "suite name (ablation-mgrq, ")


@pytest.mark.parametrize("argv, named, hint", [
    (["quantize", "--modle", "tiny_vit", "--method", "percentile"], "--modle", "--model"),
    (["suite", "run", "demo", "--paralelism=2"], "--paralelism", "--parallelism"),
    (["report", "demo", "--compre", "a", "b"], "--compre", "--compare"),
])
def test_a_misspelt_option_is_named_before_missing_required_ones(argv, named, hint, capsys, no_work):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one line, no usage block
    prog = "mgrq " + " ".join(argv[:2] if argv[0] == "suite" else argv[:1])
    assert err[0] == f"error: {prog}: unrecognized option {named} (did you mean '{hint}'?); see '{prog} --help'"
    # argparse's own errors (a value of the wrong type, a missing argument) are one line too
    for bad, what in ((["quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "abc",
                        "--a-bits", "4"], "argument --w-bits: invalid int value: 'abc'"),
                      (["suite", "run", "demo", "--executor", "lokal"], "argument --executor: invalid choice: 'lokal'"),
                      (["quantize", "--model", "tiny_vit"], "the following arguments are required: --method")):
        with pytest.raises(SystemExit) as e:
            main(bad)
        err = capsys.readouterr().err.strip().splitlines()
        assert e.value.code == 2 and len(err) == 1 and what in err[0] and err[0].startswith("error: mgrq "), err
    # an abbreviation argparse accepts is left alone
    with pytest.raises(SystemExit) as e:
        main(["quantize", "--mod", "tiny_vit", "--help"])
    assert e.value.code == 0 and "unrecognized" not in capsys.readouterr().err


def test_option_values_that_look_like_options_are_values(capsys, no_work):
    """argparse reads a token with a space, or the token after an option that takes a value, as
    a value: the unknown-option check must too (sbatch habits: ``--slurm-param --gres=gpu:1``)."""
    from mgrq.cli import build_parser

    args = build_parser().parse_args(["suite", "run", "demo", "--only", "--x y", "--slurm-setup", "--a b", "--dry-run"])
    assert (args.only, args.setup, args.dry_run) == ("--x y", ["--a b"], True)
    with pytest.raises(SystemExit):
        main(["suite", "run", "demo", "--slurm-param", "--gres=gpu:1"])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "argument --slurm-param: expected one argument" in last and "unrecognized" not in last


def test_a_calibration_size_beyond_the_training_split_fails_before_the_fp_evaluation(monkeypatch, capsys):
    """The draw comes before the FP pass over the evaluation images (minutes on ImageNet)."""
    import mgrq.evaluate

    def boom(*a, **k):
        raise AssertionError("the FP evaluation ran before the calibration size was checked")

    monkeypatch.setattr(mgrq.evaluate, "evaluate", boom)
    assert main(QUANT + ["--calib", "5000"]) == 2
    assert "calib=5000: expected 1..4000 (size of the training split)" in error_line(capsys)


def test_a_checkpoint_torch_accepts_is_not_refused():
    """The wording of a misfit comes after torch's strict load fails, not instead of it: a
    BatchNorm state without num_batches_tracked (torch accepts it) loads."""
    from mgrq.zoo import _load_into

    def net():
        return torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))

    src, m = net(), net()
    with torch.no_grad():
        src[1].running_mean.fill_(3.0)  # values the target does not have yet
    sd = {k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    assert not torch.equal(m[0].weight, src[0].weight)
    _load_into(m, sd, "bn.pth")
    for k, v in sd.items():
        assert torch.equal(m.state_dict()[k], v), k


def test_a_record_that_is_not_utf8_reads_as_unusable(tmp_path):
    bad = tmp_path / "record.json"
    bad.write_bytes(b'{"status": "\xff"}')
    assert records.read_record(bad) is None


@pytest.mark.parametrize("limit", [0, -3, "abc", True, 2.5])
def test_a_spec_refuses_an_eval_limit_that_is_not_a_positive_integer(limit):
    from mgrq.spec import RunSpec

    with pytest.raises(ConfigError, match=rf"^eval_limit={re.escape(repr(limit))}: expected a positive integer$"):
        RunSpec(model="tiny_vit", method="percentile", w_bits=4, a_bits=4, eval_limit=limit)


def test_a_tilde_in_a_path_option_means_home_not_a_folder_named_tilde(tmp_path, monkeypatch, capsys):
    """``--out=~/x`` or a quoted ``~`` reaches us unexpanded; every path option expands it (a
    folder literally named ``~`` in the working directory was made before)."""
    import mgrq.zoo
    from mgrq.cli import build_parser
    from mgrq.runner.layout import default_out

    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(tmp_path)
    parse = build_parser().parse_args
    assert parse(["suite", "run", "demo", "--out=~/runs"]).out == str(home / "runs")
    rep = parse(["report", "demo", "--out", "~/runs", "--dest", "~/rep", "--published-csv", "~/p.csv"])
    assert (rep.out, rep.dest, rep.published_csv) == (str(home / "runs"), str(home / "rep"), str(home / "p.csv"))
    monkeypatch.setenv("MGRQ_RUNS", "~/env-runs")
    assert default_out() == home / "env-runs"
    calls = []
    monkeypatch.setattr(mgrq.zoo, "train_tiny", lambda name, out, **k: calls.append(out) or {"out": out})
    assert main(["zoo", "train", "tiny_vit", "--out=~/t.pth", "--quiet"]) == 0
    assert calls == [str(home / "t.pth")]
    assert not (tmp_path / "~").exists()


@pytest.mark.parametrize("argv", [
    ["suite", "run", "demo", "--out", ""],
    ["report", "demo", "--dest="],
    ["quantize", "--model", "tiny_vit", "--method", "percentile", "--record", ""],
    ["rerun", ""],
])
def test_an_empty_path_option_is_refused_not_taken_for_its_default(argv, capsys):
    """``--out "$UNSET"`` used to mean the default folder; now argparse names the option."""
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    assert "expected a path, got an empty string" in capsys.readouterr().err
