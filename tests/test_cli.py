"""The mgrq command line: listings, a real quantization run with its record, and bad inputs."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from mgrq import zoo
from mgrq.cli import main
from mgrq.methods import all_methods


def run_cli(capsys, *argv):
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_models_and_methods_listing(capsys):
    code, out, _ = run_cli(capsys, "models")
    names = [line.split()[0] for line in out.splitlines()]
    assert code == 0 and names == list(zoo.ZOO)
    code, out, _ = run_cli(capsys, "methods")
    names = [line.split()[0] for line in out.splitlines() if line.strip()]
    assert code == 0 and {"percentile", "repq_vit", "ptq4vit", "base_ptq", "brecq", "qdrop", "mgrq"} <= set(names)
    code, out, _ = run_cli(capsys, "methods", "qdrop")
    fields = {k.strip(): v.strip() for k, v in (line.split(" # ", 1)[0].split(" = ", 1) for line in out.splitlines()[1:])}
    assert code == 0 and fields["iters"] == "20000" and fields["input_prob"] == "0.5", out


def _field_lines(capsys, method):
    """``mgrq methods METHOD`` as {field: (default, meaning and choices)}."""
    code, out, _ = run_cli(capsys, "methods", method)
    assert code == 0, out
    lines = out.splitlines()[1:]
    parsed = {}
    for line in lines:
        assert len(line) <= 120, f"{method}: line longer than 120 characters: {line!r}"
        left, sep, right = line.partition(" # ")
        name, _, default = left.partition(" = ")
        assert sep and right.strip(), f"{method}: no meaning on {line!r}"
        parsed[name.strip()] = (default.strip(), right)
    return parsed


def test_methods_cli_prints_meaning_and_choices(capsys):
    from mgrq.methods.fields import GLOSSARY, OVERRIDES
    from mgrq.recon.config import COMPILE_MODES, FUSIONS

    brecq = _field_lines(capsys, "brecq")
    assert brecq["lr_round"] == ("0.001", GLOSSARY["lr_round"])
    assert brecq["iters"] == ("20000", OVERRIDES["brecq"]["iters"])  # brecq's own meaning
    assert brecq["compile"] == ("'none'", f"{GLOSSARY['compile']} [{'|'.join(COMPILE_MODES)}]")
    assert brecq["fusion"][1].endswith(f"[{'|'.join(FUSIONS)}]")
    assert _field_lines(capsys, "qdrop")["iters"] == ("20000", GLOSSARY["iters"])
    assert _field_lines(capsys, "mgrq_sum_fusion")["fusion"] == ("'sum'", f"{GLOSSARY['fusion']} [fixed here]")
    for m in all_methods():  # every method: every field line has a meaning and fits 120 columns
        assert list(_field_lines(capsys, m.name)) == [f.name for f in dataclasses.fields(m.config_cls)]


def test_method_fields_all_described_none_stale():
    from mgrq.methods.fields import CHOICES, GLOSSARY, OVERRIDES, describe

    fields_of = {m.name: {f.name for f in dataclasses.fields(m.config_cls)} for m in all_methods()}
    undescribed = [f"{m}.{d.name}" for m in fields_of for d in describe(m) if not d.meaning]
    assert undescribed == [], f"config fields without a line in mgrq/methods/fields.py: {undescribed}"
    every_field = set().union(*fields_of.values())
    assert set(GLOSSARY) - every_field == set(), "GLOSSARY lines for fields no method has"
    assert set(CHOICES) - every_field == set(), "CHOICES for fields no method has"
    for method, over in OVERRIDES.items():
        assert method in fields_of, f"OVERRIDES for unregistered method {method}"
        assert set(over) <= fields_of[method], f"OVERRIDES[{method!r}]: fields it does not have"
        assert all(text != GLOSSARY.get(f) for f, text in over.items()), f"OVERRIDES[{method!r}] repeats GLOSSARY"


def _expected_names(message):
    """The names an ``expected one of a, b`` / ``expected 'a', 'b' or 'c'`` error lists."""
    import re

    return set(re.findall(r"[\w+]+(?:\.\w+)*", message.split("expected", 1)[1])) - {"one", "of", "or"}


def test_method_fields_choices_are_what_validation_accepts():
    """Shown choices = what each config's validation accepts: every choice builds a config, and
    the error for any other value lists exactly the choices."""
    from mgrq.errors import ConfigError
    from mgrq.methods.fields import CHOICES, describe

    checked = 0
    for m in all_methods():
        names = {f.name for f in dataclasses.fields(m.config_cls)}
        for d in describe(m):
            if d.choices is None:
                continue
            fixed = getattr(m.config_cls, "FIXED", {})
            if d.name in fixed:  # an MGRQ variant's switched-off part: one value only
                assert d.choices == (fixed[d.name],) == (d.default,)
                continue
            if d.name in getattr(m.make_config(), "inert", set)():  # that part's settings: the default only
                assert d.choices == (d.default,)
                with pytest.raises(ConfigError, match=f"{d.name}=.*: only used with "):
                    other = next(c for c in CHOICES[d.name] if c != d.default) if d.name in CHOICES else d.default + 1
                    m.make_config({d.name: other})
                continue
            # weight_init etc. need init=percentile; init=repq_vit needs brecq's act_reinit=false
            ctx = {k: v for k, v in {"init": "percentile", "act_reinit": False}.items() if k in names and k != d.name}
            for value in d.choices:
                m.make_config({**ctx, d.name: value})
            with pytest.raises(ConfigError) as e:
                m.make_config({**ctx, d.name: "no_such_choice"})
            msg = str(e.value)
            assert f"{d.name}='no_such_choice'" in msg and _expected_names(msg) == set(d.choices), (m.name, msg)
            checked += 1
    assert checked >= 80  # 89 today (11 methods): the loop did check something


def test_every_field_validated_against_a_fixed_set_shows_its_choices():
    """A string field whose config refuses an unknown value with "expected one of ..." must have
    its set in CHOICES (so a new enum field cannot be added without showing its values)."""
    from mgrq.errors import ConfigError
    from mgrq.methods.fields import CHOICES

    missing = []
    for m in all_methods():
        names = {f.name for f in dataclasses.fields(m.config_cls)}
        ctx = {k: v for k, v in {"init": "percentile", "act_reinit": False}.items() if k in names}
        for f in dataclasses.fields(m.config_cls):
            if not isinstance(f.default, str) or f.name in getattr(m.config_cls, "FIXED", {}) or f.name == "units":
                continue
            try:
                m.make_config({**ctx, f.name: "no_such_choice"})
            except ConfigError as e:
                if "expected" in str(e) and f.name not in CHOICES:
                    missing.append(f"{m.name}.{f.name}: {e}")
    assert missing == [], missing


def test_path_options_with_a_tilde_the_shell_left_alone(tmp_path, monkeypatch, capsys):
    """`--checkpoint=~/x.pth` (no shell expands a ~ after =) loads, and the record names the file
    by its absolute path with its SHA-256; `--record=~/r.json` is written there, not to ./~/."""
    import hashlib

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "home").mkdir()
    ck = tmp_path / "home" / "x.pth"
    shutil.copy(zoo.tiny_weights_path("tiny_vit"), ck)
    import torch

    threads = torch.get_num_threads()
    try:
        assert main(["quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "8", "--a-bits", "8",
                     "--calib", "8", "--eval-limit", "20", "--quiet", "--checkpoint=~/x.pth", "--record=~/r.json",
                     "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    rec = json.loads((tmp_path / "home" / "r.json").read_text())
    assert rec["torch_threads"] == 1
    # --eval-limit: the record says which images (spread over the set); one without the field kept the first N
    from mgrq.tracking import flat_params

    assert rec["data"]["eval_subset"] == "spread" and flat_params(rec)["eval_subset"] == "spread"
    old = {**rec, "data": {k: v for k, v in rec["data"].items() if k != "eval_subset"}}
    assert flat_params(old)["eval_subset"] == "first"
    assert "eval_subset" not in flat_params({**rec, "spec": {**rec["spec"], "eval_limit": None}})
    assert not (tmp_path / "~").exists()
    assert rec["weights"] == {"file": str(ck), "sha256": hashlib.sha256(ck.read_bytes()).hexdigest()}
    assert rec["spec"]["checkpoint"] == str(ck)


def test_quantize_tiny_vit_w8a8_and_w4a4_records(tmp_path, capsys):
    rec8 = tmp_path / "w8.json"
    code, out, _ = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile",
                           "--w-bits", "8", "--a-bits", "8", "--record", str(rec8), "--quiet", "--device", "cpu")
    assert code == 0 and "FP top-1" in out
    r = json.loads(rec8.read_text())
    t = r["torch_threads"]  # what a rerun needs to match it, printed and recorded
    assert t == torch.get_num_threads() and f"; cpu, {t} thread{'s' * (t != 1)}; quantize" in out
    m = r["metrics"]
    assert r["status"] == "done" and r["id"] == "tiny_vit.percentile.w8a8.s0"
    assert m["fp_top1"] > 90 and m["fp_top1"] - m["top1"] < 0.5, m
    for key in ("spec", "timings", "peak_mem_mb", "versions", "git_sha", "calibration", "data", "method"):
        assert key in r
    assert r["calibration"]["n"] == 32 and len(r["calibration"]["ids_hash"]) == 16
    assert r["versions"]["torch"] == torch.__version__.split("+")[0] or r["versions"]["torch"].startswith(torch.__version__.split("+")[0])

    rec4 = tmp_path / "w4.json"
    code, _, _ = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile",
                         "--w-bits", "4", "--a-bits", "4", "--record", str(rec4), "--quiet")
    r4 = json.loads(rec4.read_text())
    assert code == 0 and r4["status"] == "done"
    assert 10 < r4["metrics"]["top1"] <= m["top1"]  # W4A4 valid, and not better than W8A8
    assert r4["hash"] != r["hash"]


def test_set_values_are_recorded_as_the_fields_types(tmp_path, capsys):
    """``--set`` values are kept as the config fields' types (True, not the string 'true'), as in
    a suite cell, so the record says what ran and one spelling of a value hashes like another."""
    recs = [tmp_path / "a.json", tmp_path / "b.json"]
    for rec, flag in zip(recs, ("true", "True"), strict=True):
        code, _, _ = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "repq_vit", "--w-bits", "4",
                             "--a-bits", "4", "--eval-limit", "50", "--set", f"reparameterize={flag}", "--record",
                             str(rec), "--quiet")
        assert code == 0
    a, b = (json.loads(r.read_text()) for r in recs)
    assert a["spec"]["method_config"] == {"reparameterize": True} and a["hash"] == b["hash"]


def test_method_config_override(tmp_path, capsys):
    code, _, err = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile",
                           "--w-bits", "4", "--a-bits", "4", "--set", "no_such_field=1", "--quiet")
    assert code == 2 and "unknown field(s) no_such_field" in err


@pytest.mark.parametrize("argv,match", [
    (["--model", "tiny_vt", "--method", "percentile", "--w-bits", "4", "--a-bits", "4"], "unknown model 'tiny_vt'. Did you mean 'tiny_vit'"),
    (["--model", "tiny_vit", "--method", "percentil", "--w-bits", "4", "--a-bits", "4"], "unknown method 'percentil'. Did you mean 'percentile'"),
    (["--model", "tiny_vit", "--method", "RepQ-ViT", "--w-bits", "4", "--a-bits", "4"], "unknown method 'RepQ-ViT'. Did you mean 'repq_vit'?"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "1", "--a-bits", "4"], r"error: --w-bits 1: expected an integer bit-width in 2\.\.16$"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "17"], r"error: --a-bits 17: expected an integer bit-width in 2\.\.16$"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--image-bits", "1"],
     r"error: --image-bits 1: expected an integer bit-width in 2\.\.16$"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--calib", "-3"],
     r"error: --calib -3: expected a positive integer$"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--eval-limit", "0"],
     r"error: --eval-limit 0: expected a positive integer$"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--seed", "-1"],
     r"error: --seed -1: expected a non-negative integer$"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--bits-override", r"^head\.=99"],
     r"override '\^head\\\.'=99: expected an integer bit-width in 2\.\.16 or 'fp'"),
    (["--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--device", "bogus"],
     "device 'bogus': expected auto, cpu, cuda or cuda:N"),
    (["--model", "tiny_vit", "--method", "qdrop", "--w-bits", "4", "--a-bits", "4", "--set", "softmax_quantizer=uniform",
      "--set", "init=repq_vit"], "only used with init='percentile'"),
    (["--model", "tiny_vit", "--method", "qdrop", "--w-bits", "4", "--a-bits", "4", "--set", "iters=0"],
     "error: qdrop: iters=0: expected iters >= 1$"),  # the field that is wrong, and only it
])
def test_bad_inputs_one_line_errors(capsys, argv, match):
    import re

    code, out, err = run_cli(capsys, "quantize", *argv, "--quiet")
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and re.search(match, lines[0]), err


def test_first_line_of_an_error_cuts_at_a_word():
    from mgrq.errors import first_line

    assert first_line(ValueError("short\nsecond line")) == "short"
    out = first_line(RuntimeError("word " * 50), 40)
    assert out.endswith("…") and len(out) <= 41 and out[:-1].split(" ")[-1] == "word"
    assert first_line(ValueError(""), empty="empty file") == "empty file"
    assert first_line("x" * 200, 50) == "x" * 50 + "…"  # no space to cut at: a hard cut


def test_missing_data_folder(tmp_path, capsys):
    ckpt = tmp_path / "deit3.pth"
    import timm

    torch.save(timm.create_model("deit_tiny_patch16_224", num_classes=3).state_dict(), ckpt)
    code, _, err = run_cli(capsys, "quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile",
                           "--w-bits", "4", "--a-bits", "4", "--checkpoint", str(ckpt),
                           "--data-root", str(tmp_path / "imagenet"), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"data root {tmp_path / 'imagenet'}: folder not found; expected layout" in err
    code, _, err = run_cli(capsys, "quantize", "--model", "deit_tiny_patch16_224", "--method", "percentile",
                           "--w-bits", "4", "--a-bits", "4", "--checkpoint", str(ckpt), "--quiet")
    assert code == 2 and "needs an ImageNet-layout folder; pass --data-root" in err


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage"])
def test_corrupt_checkpoint(tmp_path, capsys, content):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(content)
    rec = tmp_path / "rec.json"
    code, _, err = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile",
                           "--w-bits", "4", "--a-bits", "4", "--checkpoint", str(bad), "--record", str(rec), "--quiet")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"checkpoint {bad}: not a readable torch/safetensors weights file" in err
    assert not rec.exists()  # checked before any work, as a timm model's weights are: nothing ran to record


def test_checkpoint_of_wrong_model(tmp_path, capsys):
    wrong = tmp_path / "swin.pth"
    torch.save(zoo.ZOO["tiny_swin"].build().state_dict(), wrong)
    code, _, err = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile",
                           "--w-bits", "4", "--a-bits", "4", "--checkpoint", str(wrong), "--quiet")
    assert code == 2 and f"checkpoint {wrong}: does not fit model tiny_vit: " in err
    assert "52 missing (e.g. cls_token); 88 unexpected (e.g. patch_embed.norm.weight)" in err


def test_console_script_exit_status():
    """``python -m mgrq`` (the same main() as the ``mgrq`` console script) exits non-zero on
    errors, checked as a real subprocess; so does the installed ``mgrq`` script where it is on PATH."""
    bad = ["quantize", "--model", "nope", "--method", "percentile", "--w-bits", "4", "--a-bits", "4"]
    commands = [[sys.executable, "-m", "mgrq"]]
    script = shutil.which("mgrq", path=os.path.dirname(sys.executable))
    if script:
        commands.append([script])
    for cmd in commands:
        p = subprocess.run(cmd + bad, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.startswith("error: unknown model 'nope'"), (cmd, p.stderr)
        p = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0 and "quantize" in p.stdout and "methods" in p.stdout, cmd


@pytest.mark.parametrize("argv,match", [
    (["--device", "cuda"], "no CUDA device is available here"),
    (["--method", "qdrop", "--set", "compile=cudagraphs"], "CUDA graphs need a CUDA device"),
])
def test_cuda_only_options_on_a_cpu_machine(capsys, monkeypatch, argv, match):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a CPU machine, also on a GPU one
    base = {"--model": "tiny_vit", "--method": "percentile", "--w-bits": "4", "--a-bits": "4"}
    args = [x for k, v in base.items() if k not in argv for x in (k, v)] + argv
    code, _, err = run_cli(capsys, "quantize", *args, "--quiet")
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and match in lines[0], err


def test_a_failed_run_keeps_the_warnings_given_before_it_failed(monkeypatch):
    import mgrq.methods
    from mgrq.errors import ReconstructionError
    from mgrq.methods.registry import Method
    from mgrq.run import execute, failed_record
    from mgrq.spec import RunSpec

    real = mgrq.methods.get_method("percentile")

    def quantize(qmodel, calib, cfg, ctx):
        ctx.warnings.append("unit blocks.0 (joint stage): its output error rose 9x")
        raise ReconstructionError("unit blocks.1: the loss became nan")

    monkeypatch.setattr(mgrq.methods, "get_method", lambda name: Method("boom", "", real.config_cls, quantize, 8, ""))
    spec = RunSpec(model="tiny_vit", method="percentile", w_bits=4, a_bits=4, calib=8, eval_limit=10)
    with pytest.raises(ReconstructionError) as e:
        execute(spec, progress=False)
    rec = failed_record(spec, e.value, "now")
    assert rec["status"] == "failed" and rec["warnings"] == ["unit blocks.0 (joint stage): its output error rose 9x"]
    assert "nan" in rec["error"]["message"]


def test_every_command_help_says_what_the_command_does(capsys):
    """`mgrq CMD --help` opens with what CMD does (the line of the command list), for every
    command and subcommand."""
    import argparse

    from mgrq.cli import build_parser

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, p in action.choices.items():
                    yield [*path, name], p
                    yield from walk(p, [*path, name])

    commands = list(walk(build_parser(), []))
    assert {"models", "mirror", "suite list", "zoo train"} <= {" ".join(c) for c, _ in commands}
    for cmd, p in commands:
        with pytest.raises(SystemExit):
            main([*cmd, "--help"])
        text = capsys.readouterr().out
        assert p.description and p.description.split("\n")[0][:40] in text, cmd


def test_rerun_runs_a_record_again_as_it_ran_and_says_whether_the_result_is_the_same(tmp_path, capsys, one_thread,
                                                                                      monkeypatch):
    """`mgrq rerun RECORD`: the record's spec on its device type with its torch threads (on a CPU a
    reconstruction's result depends on them); exit 0 when top-1/top-5/FP/n are the same, 1 when not."""
    a = tmp_path / "a.json"
    code, _, _ = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "4",
                         "--a-bits", "4", "--calib", "8", "--eval-limit", "20", "--device", "cpu", "--threads", "1",
                         "--quiet", "--record", str(a))
    rec = json.loads(a.read_text())
    assert code == 0 and rec["torch_threads"] == 1
    code, out, _ = run_cli(capsys, "rerun", str(a), "--quiet", "--record", str(tmp_path / "b.json"))
    assert code == 0, out
    assert "as it ran on cpu, 1 thread" in out and "same as the record, bit for bit: top1 " in out
    assert "differs" not in out and "note:" not in out
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["hash"] == rec["hash"] and b["metrics"] == rec["metrics"] and b["torch_threads"] == 1
    assert len(rec["data"]["eval_ids_hash"]) == 16 and b["data"]["eval_ids_hash"] == rec["data"]["eval_ids_hash"]
    # a record without the input hashes (an older one): the verdict says which checks it could not make
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps({**rec, "weights": None, "calibration": None, "data": {**rec["data"], "eval_ids_hash": None}}))
    code, out, _ = run_cli(capsys, "rerun", str(bare), "--quiet")
    assert code == 0 and out.splitlines()[-2:] == [
        "note: the record holds no weights.sha256, calibration.ids_hash, data.eval_ids_hash, so those were not "
        "compared: the verdict below covers the rest", out.splitlines()[-1]]
    assert out.splitlines()[-1].startswith("same as the record, bit for bit: top1 ")
    # a record that says otherwise (as from another thread count or machine): named, exit 1; the
    # rerun takes the record's threads (2 here) and says where it ran
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**rec, "torch_threads": 2, "device_name": "Some Other CPU",
                                 "metrics": {**rec["metrics"], "top1": rec["metrics"]["top1"] - 5},
                                 "data": {**rec["data"], "eval_ids_hash": "0" * 16}}))
    code, out, _ = run_cli(capsys, "rerun", str(other), "--quiet", "--record", str(tmp_path / "c.json"))
    assert code == 1 and "as it ran on cpu, 2 threads" in out
    assert (f"differs from the record: eval_ids_hash {'0' * 16} -> {rec['data']['eval_ids_hash']}; "
            f"top1 {rec['metrics']['top1'] - 5} -> {rec['metrics']['top1']}") in out
    assert f"note: the record ran on Some Other CPU, this run on {rec['device_name']}" in out
    assert json.loads((tmp_path / "c.json").read_text())["torch_threads"] == 2
    # other inputs than the record says: the weights file's bytes, a method default changed since
    cfg = rec["method"]["config"]
    assert cfg["softmax_quantizer"] == "log_sqrt2"
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps({**rec, "weights": {**rec["weights"], "sha256": "f" * 64},
                                  "method": {**rec["method"], "config": {**cfg, "softmax_quantizer": "log2"}}}))
    code, out, _ = run_cli(capsys, "rerun", str(inputs), "--quiet", "--threads", "2")
    assert code == 1 and f"weights sha256 {'f' * 16} -> {rec['weights']['sha256'][:16]}" in out
    assert "method.config.softmax_quantizer 'log2' -> 'log_sqrt2'" in out
    assert "note: it ran with 1 torch thread(s), this run with --threads 2" in out
    # bad input: one line, exit 2, nothing run
    (tmp_path / "x.json").write_text("[1]")
    failed = tmp_path / "f.json"
    failed.write_text(json.dumps({**rec, "status": "failed"}))
    (gpu := tmp_path / "gpu.json").write_text(json.dumps({**rec, "device": "cuda:0", "device_name": "NVIDIA H200"}))
    monkeypatch.setattr("mgrq.runner.executors.cuda_count", lambda: 0)
    (bad_t := tmp_path / "t.json").write_text(json.dumps({**rec, "torch_threads": True}))
    plugin = tmp_path / "p.json"
    plugin.write_text(json.dumps({**rec, "spec": {**rec["spec"], "method": "minmax_gone"},
                                  "method": {**rec["method"], "name": "minmax_gone", "module": "my_methods"}}))
    for argv, says in ((["rerun", str(tmp_path / "x.json")], "not a done run record (not a JSON object)"),
                       (["rerun", str(tmp_path)], "not a done run record (a folder)"),
                       (["rerun", str(gpu)], "it ran on cuda:0 (NVIDIA H200) and this machine has no CUDA device; "
                                             "expected a GPU, or --device cpu"),
                       (["rerun", str(bad_t)], "torch_threads is True; expected a positive integer"),
                       (["rerun", str(plugin)], "method minmax_gone came from module my_methods, which is not loaded "
                                                "here; expected MGRQ_METHODS=my_methods"),
                       (["rerun", str(tmp_path / "none.json")], "not a done run record (no such file)"),
                       (["rerun", str(failed)], "its status is 'failed': there is no result to compare with"),
                       (["rerun", str(a), "--record", str(a)], "the record being rerun; expected another path"),
                       (["rerun", str(a), "--data-root", str(tmp_path)],
                        f"--data-root {tmp_path}: {a} names no data_root (spec.data_root is null); expected --data-root "
                        "only for a record whose spec names one"),
                       (["rerun", str(a), "--checkpoint", str(a)],
                        f"--checkpoint {a}: {a} names no checkpoint (spec.checkpoint is null)"),
                       (["rerun", str(a), "--record", str(tmp_path)], f"--record '{tmp_path}' is a folder; expected a file")):
        code, out, err = run_cli(capsys, *argv)
        assert code == 2 and says in err and err.count("\n") == 1 and "FP top-1" not in out, (argv, err)


def test_rerun_finds_a_weights_file_that_moved(tmp_path, capsys, one_thread):
    """A record's weights file elsewhere on this machine: without --checkpoint one line says where
    the record looked and how to point at it; with it the rerun compares the weights by SHA-256
    and the hash as if the file had not moved, and its record names the record it reran. The same
    file by another name (a link) is no move."""
    from mgrq.spec import RunSpec

    ck = tmp_path / "w.pth"
    shutil.copy(zoo.tiny_weights_path("tiny_vit"), ck)
    a = tmp_path / "a.json"
    code, _, _ = run_cli(capsys, "quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "4",
                         "--a-bits", "4", "--calib", "8", "--eval-limit", "20", "--threads", "1", "--quiet",
                         "--checkpoint", str(ck), "--record", str(a))
    rec = json.loads(a.read_text())
    assert code == 0 and rec["hash"] == RunSpec.from_dict(rec["spec"]).content_hash
    (tmp_path / "link.pth").symlink_to(ck)
    code, out, _ = run_cli(capsys, "rerun", str(a), "--quiet", "--checkpoint", str(tmp_path / "link.pth"))
    assert code == 0 and "same as the record, bit for bit" in out and "note:" not in out, out
    moved = tmp_path / "elsewhere" / "w.pth"
    moved.parent.mkdir()
    ck.rename(moved)
    code, out, err = run_cli(capsys, "rerun", str(a), "--quiet")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert (f"{a}: spec.checkpoint {ck}: no such file here; expected it there, or --checkpoint FILE where it is on "
            "this machine") in err
    (bad := tmp_path / "bad.pth").write_bytes(b"not weights")
    code, out, err = run_cli(capsys, "rerun", str(a), "--quiet", "--checkpoint", str(bad), "--record", str(tmp_path / "r.json"))
    assert code == 2 and out == "" and err.startswith(f"error: --checkpoint {bad}: not a readable") and err.count("\n") == 1
    assert not (tmp_path / "r.json").exists()  # nothing run, no failed record written
    code, out, _ = run_cli(capsys, "rerun", str(a), "--quiet", "--checkpoint", str(moved), "--record", str(tmp_path / "r.json"))
    assert code == 0 and "same as the record, bit for bit" in out, out
    assert f"note: spec.checkpoint {ck} -> {moved} (--checkpoint): the cell hash takes the path" in out
    again = json.loads((tmp_path / "r.json").read_text())
    assert again["spec"]["checkpoint"] == str(moved) and again["weights"]["sha256"] == rec["weights"]["sha256"]
    assert again["rerun_of"] == {"record": str(a), "id": rec["id"], "hash": rec["hash"]}


@pytest.mark.slow
def test_zoo_train_records_a_command_that_makes_the_same_checkpoint(tmp_path, capsys, one_thread):
    """A tiny-zoo checkpoint's JSON holds the command that made it, with its thread count (on a
    CPU the weights depend on it, as a reconstruction's result does): run again, it gives the same
    bytes. One epoch (about 20 s each)."""
    import shlex

    code, out, _ = run_cli(capsys, "zoo", "train", "tiny_vit", "--out", str(tmp_path / "a" / "t.pth"), "--epochs", "1",
                           "--threads", "1", "--quiet")
    meta = json.loads(out)
    assert code == 0 and meta["torch_threads"] == 1 and meta["cpu"]
    argv = shlex.split(meta["command"])
    assert argv[:3] == ["mgrq", "zoo", "train"] and argv[argv.index("--threads") + 1] == "1"
    argv[argv.index("--out") + 1] = str(tmp_path / "b" / "t.pth")  # same file name: torch.save writes it inside
    code, out, _ = run_cli(capsys, *argv[1:], "--quiet")
    assert code == 0 and json.loads(out)["sha256"] == meta["sha256"]


@pytest.mark.parametrize(("limit", "noted"), [(1500, True), (1000, False), (None, False)])
def test_an_eval_limit_above_the_eval_set_is_noted(capsys, monkeypatch, limit, noted):
    """--eval-limit keeps N images spread over the eval set; a limit above its size evaluates
    every image, and says so (the record's n_eval is the count evaluated)."""
    def fake(spec, progress=True):  # what execute() returns for the 1,000 held-out digits
        return {"metrics": {"fp_top1": 95.0, "top1": 90.0, "n_eval": 1000}, "device": "cpu", "torch_threads": 1,
                "timings": {"quantize_s": 1.0, "total_s": 2.0}}

    monkeypatch.setattr("mgrq.run.execute", fake)
    argv = ["quantize", "--model", "tiny_vit", "--method", "percentile", "--w-bits", "4", "--a-bits", "4", "--quiet"]
    code, out, err = run_cli(capsys, *argv, *(["--eval-limit", str(limit)] if limit else []))
    assert code == 0 and "1000 images" in out
    note = "note: the eval limit 1500 is more than the 1000 images of the eval set: every image was evaluated\n"
    assert err == (note if noted else ""), err


def test_version_names_the_package_and_its_source_tree(capsys):
    import re

    from mgrq.records import git_sha

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "pyproject.toml")) as f:
        pyproject = f.read()
    want = re.search(r'^version = "([^"]+)"$', pyproject, re.M).group(1)  # the version pip installs
    sha = git_sha()
    assert out == f"mgrq {want}" + (f" (source tree {sha})" if sha else "") + "\n"
    assert sha is None or re.fullmatch(r"[0-9a-f]{40}(\+dirty\.[0-9a-f]{8})?", sha)


def test_a_spec_field_error_names_its_field_and_survives_pickling():
    """RunSpec's range errors keep the field, value and expectation (quantize names the option
    from them) and pickle whole, as a submitit job returns an exception to its driver."""
    import pickle

    from mgrq.errors import ConfigError
    from mgrq.spec import FieldError, RunSpec

    with pytest.raises(FieldError) as e:
        RunSpec(model="tiny_vit", method="percentile", w_bits=4, a_bits=4, eval_limit=0)
    back = pickle.loads(pickle.dumps(e.value))
    assert isinstance(back, ConfigError) and str(back) == str(e.value) == "eval_limit=0: expected a positive integer"
    assert (back.field, back.value, back.expected) == ("eval_limit", 0, "expected a positive integer")
