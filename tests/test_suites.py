"""Suite files: the shipped suites validate, the grid expands into frozen specs, and malformed
files fail before anything is submitted with one line naming the file, the field and what was
expected. Also site profiles and executor options (suite < profile < flags)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from harness_helpers import ROOT, write_suite

from mgrq.cli import main
from mgrq.errors import ConfigError, DataError, UnknownNameError
from mgrq.runner import executors as ex
from mgrq.runner.suite import list_suites, load_suite

REPQ_TABLE_MODELS = {
    "vit_small_patch16_224", "vit_base_patch16_224", "deit_tiny_patch16_224",
    "deit_small_patch16_224", "deit_base_patch16_224", "swin_tiny_patch4_window7_224",
    "swin_small_patch4_window7_224",
}


def test_shipped_suites_validate_and_expand():
    names = {p.stem for p in list_suites()}
    assert {"demo", "imagenet-w4a4", "imagenet-w6a6", "imagenet-w3a3", "ablation-mgrq"} <= names
    demo = load_suite("demo")
    specs = demo.specs()
    assert len(specs) == len(demo.models) * len(demo.bits) * len(demo.methods) * len(demo.seeds)
    assert len({s.content_hash for s in specs}) == len(specs)  # every cell its own hash
    assert len({s.run_id for s in specs}) == len(specs)
    assert not demo.needs_data_root and demo.ablation
    for b in ("w4a4", "w6a6", "w3a3"):
        s = load_suite(f"imagenet-{b}")
        assert set(s.models) >= REPQ_TABLE_MODELS, b
        assert s.needs_data_root and s.bits == ((int(b[1]), int(b[3])),)
        assert s.name == f"imagenet-{b}" and "suite-imagenet" in s.command


def test_shipped_suites_run_every_registered_method():
    from mgrq.methods.registry import all_methods

    registered = {m.name for m in all_methods()}
    ablation_rows = {n for n in registered if n.startswith("mgrq_")}  # MGRQ's ablation variants
    main = registered - ablation_rows
    for name in ("demo", "imagenet-w4a4", "imagenet-w6a6", "imagenet-w3a3", "ablation-mgrq"):
        listed = {m.method for m in load_suite(name).methods}
        assert main <= listed, (name, sorted(main - listed))
    assert ablation_rows | {"mgrq"} <= {m.method for m in load_suite("ablation-mgrq").methods}


def test_ablation_suite_rows_are_mgrq_variants_beside_every_baseline():
    s = load_suite("ablation-mgrq")
    variants = ("mgrq_obwr", "mgrq_obwr_global", "mgrq_obwr_local", "mgrq_sum_fusion", "mgrq")
    assert s.ablation == variants  # the ablation table: MGRQ's parts switched off one at a time
    assert {m.name for m in s.methods} >= {*variants, "base_ptq", "ptq4vit", "repq_vit", "brecq", "qdrop"}
    assert s.seeds == (0, 1, 2) and s.bits == ((4, 4), (3, 3)) and s.eval_split == "heldout"
    recon = {m.name: m for m in s.methods if m.name in {*variants, "brecq", "qdrop"}}
    assert {m.calib for m in recon.values()} == {256}  # one shared reconstruction budget
    assert s.paired == "mgrq" and load_suite("tiny-swin-seeds").paired == "mgrq"

def test_variants_and_per_method_overrides(tmp_path):
    path = write_suite(
        tmp_path / "grid.yaml", bits=["W4A4", "w6a6"], seeds=[0, 1],
        methods=["percentile",
                 {"name": "percentile", "variant": "pct-minmax", "config": {"act_init": "minmax"}}],
        overrides={"percentile": {"calib": 16, "config": {"weight_init": "lp"}},
                   "pct-minmax": {"calib": 4}},
        bits_overrides={"^head\\.": 8},
    )
    s = load_suite(path)
    specs = s.specs()
    assert len(specs) == 2 * 2 * 2
    by_id = {sp.run_id: sp for sp in specs}
    plain = by_id["tiny_vit.percentile.w6a6.s1"]
    var = by_id["tiny_vit.pct-minmax.w4a4.s0"]
    assert plain.calib == 16 and dict(plain.method_config) == {"weight_init": "lp"}
    # variant: method overrides, then variant overrides, then the entry's own config
    assert var.method == "percentile" and var.variant == "pct-minmax" and var.calib == 4
    assert dict(var.method_config) == {"weight_init": "lp", "act_init": "minmax"}
    assert plain.bits_overrides == (("^head\\.", 8),)
    assert plain.eval_limit == 100 and plain.eval_split == "heldout"
    smoke = s.with_options(calib=2, eval_limit=10).specs()
    assert {sp.calib for sp in smoke} == {2} and {sp.eval_limit for sp in smoke} == {10}


BAD = [
    # (fields, field named in the message, expectation named in the message)
    ({"bits": ["W4A4", "W44"]}, "bits[1]", "expected WxAy"),
    ({"bits": ["W1A4"]}, "bits[0]", "expected 2..16"),
    ({"modles": ["tiny_vit"]}, "modles", "did you mean 'models'"),
    ({"seeds": [0, -1]}, "seeds", "non-negative integers"),
    ({"methods": []}, "methods", "non-empty list"),
    ({"methods": ["percentile", "percentile"]}, "methods", "distinct 'variant'"),
    ({"methods": [{"name": "percentile", "config": {"act_innit": "minmax"}}]}, "methods[0].config",
     "unknown field(s) act_innit (did you mean 'act_init'?)"),
    ({"methods": [{"name": "percentile", "config": {1: 2, "act_innit": 3}}]}, "methods[0].config",
     "unknown field(s) 1, act_innit"),  # a YAML key may be a number
    ({"methods": [{"name": "percentile", "config": {"act_init": "bogus"}}]}, "methods[0].config",
     "expected one of percentile, lp, minmax"),
    ({"methods": [{"name": "percentile", "config": [1, 2]}]}, "methods[0].config",
     "expected a mapping of config fields"),
    ({"overrides": {"percentile": {"config": "minmax"}}}, "overrides.percentile.config",
     "expected a mapping of config fields"),
    ({"calibration": {"n": 0}}, "calibration.n", "integer >= 1"),
    ({"data": {"eval_split": "test"}}, "data.eval_split", "'heldout' or 'tune'"),
    ({"overrides": {"brecq": {"calib": 4}}}, "overrides.brecq", "unknown method 'brecq' of this suite"),
    ({"executor": {"gpus": 1}}, "executor.gpus", "unknown field"),
    ({"description": ""}, "description", "non-empty string"),
    ({"command": 3}, "command", "expected a non-empty string, or the field left out"),
    ({"report": {"paired": "percentil"}}, "report.paired",
     "unknown method 'percentil' of this suite. Did you mean 'percentile'? Known methods: percentile"),
    ({"report": {"ablation": ["percentile", "nosuch"]}}, "report.ablation[1]", "unknown method 'nosuch' of this suite"),
    ({"report": {"paired": ["percentile"]}}, "report.paired", "expected one method name (the reference of the paired "
     "table), got ['percentile']"),
    ({"report": {"main": "percentile"}}, "report.main", "expected a non-empty list of the rows the main table"),
    ({"report": {"main": ["percentil"]}}, "report.main[0]", "unknown method 'percentil' of this suite. Did you mean"),
    ({"checkpoints": {"tiny_vitt": "/w.pth"}}, "checkpoints.tiny_vitt", "Did you mean 'tiny_vit'?"),
    # a value from overrides is named where it was written, not as the methods entry it lands in
    ({"overrides": {"percentile": {"calib": "abc"}}}, "overrides.percentile.calib", "expected an integer >= 1"),
    ({"overrides": {"percentile": {"image_bits": 1}}}, "overrides.percentile.image_bits", "integer 2..16"),
    ({"overrides": {"percentile": {"bits_overrides": {"head": 1}}}}, "overrides.percentile.bits_overrides.head",
     "expected a bit-width 2..16"),
    ({"overrides": {"percentile": {"config": {"act_init": "bogus"}}}}, "overrides.percentile.config",
     "expected one of percentile, lp, minmax"),
    ({"methods": [{"name": "percentile", "variant": "pv"}], "overrides": {"pv": {"calib": 0}}},
     "overrides.pv.calib", "expected an integer >= 1"),
    ({"only": 3}, "only", "expected a regex searched in the cell ids (MODEL.METHOD.WxAy.sSEED)"),
    ({"only": "(tiny"}, "only", "only '(tiny': not a valid regular expression (missing ), unterminated subpattern"),
    ({"only": "^tiny_deit\\."}, "only", "'^tiny_deit\\.' matches none of the 1 cells of models x bits x methods x seeds"),
    # a variant named after another method: its rows and runs would read as that method
    ({"methods": [{"name": "percentile", "variant": "base_ptq"}]}, "methods[0].variant",
     "'base_ptq' is the name of another method; expected a name of its own for this percentile variant"),
]


@pytest.mark.parametrize("fields,where,expect", BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_malformed_suite_names_file_field_and_expectation(tmp_path, fields, where, expect):
    path = write_suite(tmp_path / "bad.yaml", **fields)
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    msg = str(e.value)
    assert str(path) in msg and f"'{where}'" in msg and expect in msg, msg
    assert "\n" not in msg


def test_a_suite_file_with_several_problems_names_them_all_in_one_error(tmp_path, capsys):
    """Every field is checked before the error, so one run names every problem (a line each);
    a field checked against another that is wrong (``report.ablation`` against ``methods``) waits
    until that one is right, so it is not named falsely."""
    path = write_suite(tmp_path / "bad.yaml", bits=["W4A4", "W4X4"], seeds=[0, 0], colour="red", size=3,
                       methods=["percentile", "percentil"], report={"ablation": ["percentile", "nosuch"]},
                       data={"eval_split": "test"})
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    lines = str(e.value).splitlines()
    assert lines[0] == f"{path}: 6 problems:", lines
    assert [ln.split("'")[1] for ln in lines[1:]] == ["colour", "size", "bits[1]", "methods[1].name", "seeds",
                                                      "data.eval_split"], lines
    assert all(ln.startswith("  field '") for ln in lines[1:]), lines
    assert "unknown method 'percentil'. Did you mean 'percentile'" in lines[4]
    assert main(["suite", "run", str(path), "--dry-run"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {path}: 6 problems:\n  field 'colour': unknown field")
    # an overrides block that a method and its variant share is checked for each: one problem, one line
    path = write_suite(tmp_path / "bad.yaml", methods=["percentile", {"name": "percentile", "variant": "pv"}],
                       overrides={"percentile": {"calibb": 4}})
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    assert str(e.value) == (f"{path}: field 'overrides.percentile.calibb': unknown field (did you mean 'calib'?); "
                            "expected one of calib, config, image_bits, bits_overrides")
    # an overrides block with a bad field is named, and the entries it applies to are still checked;
    # an overrides key naming no method is checked against the names as written
    path = write_suite(tmp_path / "bad.yaml", methods=["percentile", {"name": "qdrop", "config": {"iterz": 3}}],
                       overrides={"qdrop": {"calbi": 4}, "percentile": {"config": {"weight_int": "lp"}},
                                  "qdorp": {"calib": 3}})
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    assert [ln.split("'")[1] for ln in str(e.value).splitlines()[1:]] == [
        "overrides.qdrop.calbi", "overrides.percentile.config", "methods[1].config", "overrides.qdorp"], str(e.value)
    # one misspelt method is one problem: its override (of the right name) is not a second one; a
    # block's known fields still apply beside its unknown one (no false complaint follows from it)
    for fields, where in (({"methods": ["percentil"], "overrides": {"percentile": {"calib": 4}}}, "methods[0].name"),
                          ({"methods": [{"name": "brecq", "config": {"init": "repq_vit"}}],
                            "overrides": {"brecq": {"calbi": 4, "config": {"act_reinit": False}}}}, "overrides.brecq.calbi")):
        path = write_suite(tmp_path / "bad.yaml", **fields)
        with pytest.raises((ConfigError, UnknownNameError)) as e:
            load_suite(path)
        assert "\n" not in str(e.value) and f"field '{where}'" in str(e.value), str(e.value)
    path = write_suite(tmp_path / "bad.yaml", report={"ablation": ["percentile", "nosuch"]})  # now it is checked
    with pytest.raises(ConfigError, match=r"field 'report.ablation\[1\]': unknown method 'nosuch'"):
        load_suite(path)


def test_a_suite_or_profile_that_is_not_utf8_is_one_error_line(tmp_path, capsys, monkeypatch):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(b"name: t\ndescription: caf\xe9\nmodels: [tiny_vit]\nbits: [W4A4]\nmethods: [percentile]\n")
    assert main(["suite", "run", str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {bad}: not UTF-8 text (byte 0xe9 at position 24); expected a UTF-8 YAML file\n"
    ok = write_suite(tmp_path / "ok.yaml")
    assert main(["suite", "run", str(ok), "--dry-run", "--executor", "slurm", "--profile", str(bad)]) == 2
    assert f"error: site profile {bad}: not UTF-8 text" in capsys.readouterr().err
    (tmp_path / "suites").mkdir()  # `suite list` (./suites first) shows it as not runnable
    (tmp_path / "suites" / "latin1.yaml").write_bytes(bad.read_bytes())
    monkeypatch.chdir(tmp_path)
    assert main(["suite", "list"]) == 0
    assert "latin1                    - cells  NOT RUNNABLE: " in capsys.readouterr().out


def test_config_from_overrides_and_entry_is_checked_together(tmp_path):
    """Each layer may be invalid alone (alpha < beta): only the merged config is required to be
    valid; when it is not and no layer fails alone, the methods entry is named."""
    ok = write_suite(tmp_path / "ok.yaml", methods=[{"name": "ptq4vit", "config": {"beta": 3.0}}],
                     overrides={"ptq4vit": {"config": {"alpha": 2.0}}})
    assert dict(load_suite(ok).methods[0].config) == {"alpha": 2.0, "beta": 3.0}
    bad = write_suite(tmp_path / "bad.yaml", methods=[{"name": "ptq4vit", "config": {"beta": 1.0}}],
                      overrides={"ptq4vit": {"config": {"alpha": 1.1}}})
    with pytest.raises(ConfigError, match=r"field 'methods\[0\]\.config': .*alpha=1.1, beta=1.0: expected 0 <= alpha"):
        load_suite(bad)


def test_a_number_yaml_reads_as_a_string_is_the_cell_of_that_number(tmp_path):
    """YAML 1.1 reads `1e-3` as the string '1e-3'. The cell is the one of `0.001` (same value in
    the spec, same hash, same folder); numbers stay as written, so earlier cells keep their hash."""
    def spec(name: str, text: str):
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\ndescription: d\ncommand: c\nmodels: [tiny_vit]\nbits: [W4A4]\nmethods:\n  - name: qdrop\n    config:\n{text}")
        (s,) = load_suite(path).specs()
        return s

    a = spec("a", "      lr_round: 1e-3\n      iters: '20'\n")
    b = spec("b", "      lr_round: 0.001\n      iters: 20\n")
    assert yaml.safe_load("x: 1e-3")["x"] == "1e-3"  # the trap itself
    assert dict(a.method_config) == {"lr_round": 0.001, "iters": 20}
    assert a.content_hash == b.content_hash
    one = spec("c", "      round_weight: 1\n").method_config  # a float field's int stays an int
    assert one == (("round_weight", 1),) and type(one[0][1]) is int


@pytest.mark.parametrize("text,line,key", [
    ("models: [tiny_vit]\nbits: [W4A4]\nmethods: [percentile]\nmodels: [tiny_deit]\n", 4, "models"),
    ("models: [tiny_vit]\nbits: [W4A4]\nmethods:\n  - name: percentile\n    config:\n      act_init: lp\n"
     "      act_init: minmax\n", 7, "act_init"),
])
def test_duplicate_key_names_file_key_and_line(tmp_path, text, line, key):
    path = tmp_path / "dup.yaml"
    path.write_text("description: d\ncommand: c\n" + text)
    with pytest.raises(ConfigError) as e:
        load_suite(path)
    assert str(e.value) == f"{path}: line {line + 2}: key '{key}' appears twice; expected each key once"


def test_yaml_merge_keys_may_still_override(tmp_path):
    from mgrq.runner.suite import read_yaml

    path = tmp_path / "m.yaml"
    path.write_text("a: &x {k: 1, j: 2}\nb:\n  <<: *x\n  k: 3\n")
    assert read_yaml(path) == {"a": {"k": 1, "j": 2}, "b": {"k": 3, "j": 2}}
    # a merge of a mapping that merges (PyYAML rewrites the inner one in place while building it)
    path.write_text("defs: {base: &base {x: 1}, mid: &mid {<<: *base, x: 2}}\nchild: {<<: *mid}\n")
    assert read_yaml(path) == yaml.safe_load(path.read_text())


def test_yaml_syntax_error_names_line(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: broken\nmodels: [tiny_vit\nbits: [W4A4]\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML \(line \d+"):
        load_suite(path)


@pytest.mark.parametrize("field,value,hint", [
    ("methods", ["percentil"], "Did you mean 'percentile'"),
    ("models", ["tiny_vitt"], "Did you mean 'tiny_vit'"),
])
def test_unknown_method_or_model_in_suite(tmp_path, field, value, hint):
    path = write_suite(tmp_path / "names.yaml", **{field: value})
    with pytest.raises(UnknownNameError) as e:
        load_suite(path)
    msg = str(e.value)
    assert str(path) in msg and f"'{field}[0" in msg and hint in msg, msg


def test_imagenet_suite_needs_a_data_root(tmp_path):
    s = load_suite("imagenet-w4a4")
    with pytest.raises(ConfigError, match=r"imagenet-w4a4.yaml: data.root: model vit_small_patch16_224 "
                                          r"needs an ImageNet-layout folder; pass --data-root"):
        s.with_options()
    with pytest.raises(DataError, match=r"^--data-root: data root .*nowhere: folder not found; expected layout "
                                        r"ROOT/train/<class>"):  # the flag gave it, not the file
        s.with_options(data_root=str(tmp_path / "nowhere"))
    import dataclasses

    with pytest.raises(DataError, match=r"^.*imagenet-w4a4.yaml: data.root: data root .*nowhere: folder not found"):
        dataclasses.replace(s, data_root=str(tmp_path / "nowhere")).with_options()
    (tmp_path / "inet" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match=r"inet/val not found"):
        s.with_options(data_root=str(tmp_path / "inet"))


def test_cli_bad_suite_fails_before_submitting(tmp_path, capsys):
    bad = write_suite(tmp_path / "bad.yaml", bits=["W4A9x"])
    out = tmp_path / "runs"
    code = main(["suite", "run", str(bad), "--out", str(out), "--no-mirror"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "bits[0]" in err and str(bad) in err
    assert not out.exists()  # nothing was planned, written or submitted
    code = main(["suite", "run", "imagenet-w4a4", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--data-root" in err and not out.exists()
    code = main(["suite", "run", str(write_suite(tmp_path / "ok.yaml")), "--out", str(out), "--device", "cdua"])
    err = capsys.readouterr().err
    assert code == 2 and "command line: executor option device='cdua': expected auto, cpu, cuda or cuda:N" in err
    assert not out.exists()


def test_a_site_profile_sets_the_cells_device_unless_the_flag_does(tmp_path, capsys):
    prof = tmp_path / "site.yaml"
    prof.write_text("slurm:\n  device: cuda\n")
    run = ["suite", "run", str(write_suite(tmp_path / "ok.yaml")), "--out", str(tmp_path / "runs"), "--dry-run",
           "--executor", "slurm", "--profile", str(prof)]
    assert main(run) == 0
    assert "executor: slurm (timeout_min=720, cells_per_job=1, array_parallelism=32, max_num_timeout=3, device=cuda): " \
        "1 cell(s) per task, 1 CPU thread(s) each" in capsys.readouterr().out
    assert main([*run, "--device", "cpu"]) == 0
    assert "device=cpu)" in capsys.readouterr().out
    # the dry run says how the run would spread the cells: the jobs and threads it prints when it starts
    local = [*run[:-4], "--executor", "local", "--parallelism", "2", "--threads", "3", "--device", "cpu"]
    assert main(local) == 0
    assert ("executor: local (parallelism=2, threads=3, timeout_min=720, device=cpu): 1 job(s) side by side, "
            "3 torch thread(s) each") in capsys.readouterr().out  # one cell: one job
    prof.write_text("slurm:\n  setup: [module load cuda/12.4, source venv/bin/activate]\n"
                    "  additional: {comment: 'night: 1'}\n")  # one sbatch --test-only accepts
    assert main(run) == 0
    assert ("setup=[module load cuda/12.4, source venv/bin/activate], additional={comment: 'night: 1'}"
            in capsys.readouterr().out)
    # a bad value in the profile is blamed on the profile's file and section
    prof.write_text("slurm:\n  mem_gb: lots\n")
    assert main(run) == 2
    err = capsys.readouterr().err
    assert f"error: site profile {prof}, section slurm: executor option mem_gb='lots': expected a positive" in err
    prof.write_text("local:\n  device: tpu\n")  # checked with the other options, so the profile is named
    assert main([*run[:-4], "--profile", str(prof)]) == 2
    assert (f"error: site profile {prof}, section local: executor option device='tpu': expected auto, cpu, cuda or "
            "cuda:N") in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Executor options and site profiles
# --------------------------------------------------------------------------------------------


def test_site_profile_precedence_and_sbatch_parameters(tmp_path, monkeypatch):
    profile = tmp_path / "site.yaml"
    profile.write_text(yaml.safe_dump({
        "slurm": {"partition": "gpu", "account": "lab42", "qos": "normal", "cpus_per_task": 8,
                  "mem_gb": 64, "gpus_per_node": 1, "timeout_min": 240,
                  "setup": ["module load cuda"], "additional": {"gres": "gpu:a100:1"}},
        "local": {"parallelism": 3},
    }))
    monkeypatch.setenv(ex.PROFILE_ENV, str(profile))
    prof, where = ex.load_profile()
    assert where == str(profile)
    suite_defaults = {"timeout_min": 60, "cpus_per_task": 4, "array_parallelism": 8}
    opts = ex.resolve_options("slurm", suite_defaults, prof, {"partition": "debug", "account": None})
    # flags win over the profile, the profile over the suite, unset flags change nothing
    assert (opts.partition, opts.account, opts.cpus_per_task) == ("debug", "lab42", 8)
    assert (opts.timeout_min, opts.array_parallelism) == (240, 8)
    executor = ex.slurm_executor(tmp_path / "jobs", opts, "mgrq-test")
    p = executor.parameters
    assert p["partition"] == "debug" and p["account"] == "lab42" and p["qos"] == "normal"
    assert p["cpus_per_task"] == 8 and p["mem"] == "65536MB" and p["gpus_per_node"] == 1
    assert p["time"] == 240 and p["array_parallelism"] == 8 and p["setup"] == ["module load cuda"]
    assert p["additional_parameters"] == {"gres": "gpu:a100:1"}
    assert ex.resolve_options("local", {}, prof, {}).parallelism == 3


@pytest.mark.parametrize("content,match", [
    ("slurm:\n  partion: gpu\n", r"slurm.partion: unknown option 'partion'. Did you mean 'partition'.*\? Known "
                                  r"options: account, additional, array_parallelism"),
    # an option of another executor would be silently ignored
    ("slurm:\n  parallelism: 4\n", r"slurm.parallelism: not used by the slurm executor; expected one of "
                                    r"account, additional, array_parallelism, cells_per_job"),
    ("debug:\n  partition: gpu\n", r"debug.partition: not used by the debug executor"),
    ("cloud:\n  x: 1\n", r"section 'cloud': expected one of local, debug, slurm"),
    ("slurm: [1, 2]\n", r"section slurm: expected a mapping"),
    ("slurm:\n  partition: a\n  partition: b\n", r"^site profile .*site.yaml: line 3: key 'partition' appears twice"),
    ("slurm: [1\n", r"^site profile .*site.yaml: not valid YAML \(line 2"),
])
def test_bad_site_profile(tmp_path, content, match):
    p = tmp_path / "site.yaml"
    p.write_text(content)
    with pytest.raises(ConfigError, match=match):
        ex.load_profile(p)


def test_executor_option_checks(tmp_path):
    with pytest.raises(ConfigError, match="timeout_min=2: expected >= 5 for slurm"):
        ex.resolve_options("slurm", {"timeout_min": 2}, {}, {})
    with pytest.raises(ConfigError, match="parallelism=0"):
        ex.resolve_options("local", {}, {}, {"parallelism": 0})
    # a bad value is reported against the layer that set it
    w = ("site.yaml: ", "s.yaml: ")
    with pytest.raises(ConfigError, match=r"^command line: executor option timeout_min=3: expected >= 5"):
        ex.resolve_options("slurm", {}, {"slurm": {"partition": "p"}}, {"timeout_min": 3}, *w)
    with pytest.raises(ConfigError, match=r"^site\.yaml: executor option timeout_min=2"):
        ex.resolve_options("slurm", {}, {"slurm": {"timeout_min": 2}}, {}, *w)
    with pytest.raises(ConfigError, match=r"^s\.yaml: executor option timeout_min=2"):
        ex.resolve_options("slurm", {"timeout_min": 2}, {"slurm": {"partition": "p"}}, {}, *w)
    assert ex.resolve_options("slurm", {"timeout_min": 2}, {}, {"timeout_min": 30}, *w).timeout_min == 30
    # a value overridden by a higher layer is not blamed: the suite's mem_gb is what fails
    with pytest.raises(ConfigError, match=r"^s\.yaml: executor option mem_gb=-1"):
        ex.resolve_options("slurm", {"mem_gb": -1}, {"slurm": {"timeout_min": 2}}, {"timeout_min": 30}, *w)
    with pytest.raises(ConfigError, match=r"^s\.yaml: executor option timeout_min=2"):
        ex.resolve_options("slurm", {"timeout_min": 2}, {"slurm": {"mem_gb": -1}}, {"mem_gb": 4}, *w)
    with pytest.raises(ConfigError, match="site profile .*missing.yaml .*--profile.*not found"):
        ex.load_profile(Path(tmp_path / "missing.yaml"))


def test_local_plan_and_chunks(monkeypatch):
    monkeypatch.setattr(ex, "cpu_count", lambda: 2)
    assert ex.local_plan(ex.ExecutorOptions(), 12) == (2, 1)  # 2 cores: 2 jobs x 1 thread
    # one cell left (a resume): one job, with the threads the first run gave each cell, not 2: on
    # a CPU the thread count changes a reconstruction's result (qdrop, tiny_vit: 92.5 vs 93.0)
    assert ex.local_plan(ex.ExecutorOptions(), 1) == (1, 1)
    assert ex.local_plan(ex.ExecutorOptions(parallelism=1), 12) == (1, 2)
    monkeypatch.setattr(ex, "cpu_count", lambda: 16)
    assert ex.local_plan(ex.ExecutorOptions(), 40) == (4, 4)
    assert ex.local_plan(ex.ExecutorOptions(), 3) == (3, 4)
    assert ex.local_plan(ex.ExecutorOptions(), 3, cpu=False) == (3, 5)  # on GPUs the spare cores decode images
    assert ex.local_plan(ex.ExecutorOptions(parallelism=2, threads=3), 40) == (2, 3)
    # each cell's threads: on the CPU debug as local (the same numbers), slurm its CPUs per task
    monkeypatch.setattr(ex, "cuda_count", lambda: 0)
    assert [ex.cell_threads(ex.ExecutorOptions(kind=k)) for k in ("local", "debug", "slurm")] == [4, 4, 1]
    assert ex.cell_threads(ex.ExecutorOptions(kind="slurm", cpus_per_task=8)) == 8
    assert ex.cell_threads(ex.ExecutorOptions(kind="debug", threads=2)) == 2
    monkeypatch.setattr(ex, "cuda_count", lambda: 2)  # on GPUs: local one cell gets every core, debug too
    assert [ex.cell_threads(ex.ExecutorOptions(kind=k)) for k in ("local", "debug")] == [16, 16]
    assert [ex.cell_threads(ex.ExecutorOptions(kind=k, device="cpu")) for k in ("local", "debug")] == [4, 4]
    assert ex.runs_on_cpu(ex.ExecutorOptions(kind="slurm")) and not ex.runs_on_cpu(ex.ExecutorOptions(kind="slurm", gpus_per_node=1))
    parts = ex.chunk(list(range(7)), 3)
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    # local jobs: own chunk first, then the others' cells from the far end
    assert ex.work_orders(list(range(7)), 3) == [[0, 1, 2, 6, 5, 4, 3], [3, 4, 6, 5, 2, 1, 0],
                                                 [5, 6, 4, 3, 2, 1, 0]]
    assert ex.work_orders([0, 1], 4) == [[0, 1], [1, 0]]


def test_claims_give_each_cell_to_one_job(tmp_path):
    from mgrq.runner.jobs import claim, claimed_by
    from mgrq.runner.layout import Cell

    cells = [Cell(f"c{i}", "h", tmp_path / f"c{i}", {}) for i in range(3)]
    assert claim(tmp_path, "c0", 0) and claim(tmp_path, "c2", 1)
    assert not claim(tmp_path, "c0", 1)  # another job's cell
    assert claim(tmp_path, "c0", 0)  # its own (a requeued job takes its interrupted cell again)
    assert [c.run_id for c in claimed_by(tmp_path, cells, 0)] == ["c0"]
    assert [c.run_id for c in claimed_by(tmp_path, cells, 1)] == ["c2"]


def test_suite_list_cli(capsys):
    assert main(["suite", "list"]) == 0
    lines = {ln.split()[0]: ln for ln in capsys.readouterr().out.splitlines()}
    assert "demo" in lines and "cells" in lines["demo"]
    assert set(lines) >= {p.stem for p in (ROOT / "suites").glob("*.yaml")}


def test_command_is_optional_documentation(tmp_path):
    """A suite file needs no `command` (documentation, not executed): it defaults to how the
    file is run."""
    path = tmp_path / "mine.yaml"
    path.write_text("description: my grid\nmodels: [tiny_vit]\nbits: [W4A4]\nmethods: [percentile]\n")
    assert load_suite(path).command == f"mgrq suite run {path}"
    path.write_text(path.read_text() + "command: nox -s suite-mine\n")
    assert load_suite(path).command == "nox -s suite-mine"


def test_submitits_sacct_warning_is_said_once(tmp_path, caplog):
    """Without SLURM accounting, submitit warns on every state query; the driver reads the queue
    itself, so the warning is said once per process (other submitit warnings pass)."""
    import logging

    ex.slurm_executor(tmp_path, ex.ExecutorOptions(kind="slurm"), "mgrq-x")
    ex._SacctOnce.seen = False
    log = logging.getLogger("submitit")
    with caplog.at_level(logging.WARNING, logger="submitit"):
        for n in (1, 2, 3):
            log.warning(f"Call #{n} - Bypassing sacct error Command returned non-zero exit status 1., "
                        "status may be inaccurate.")
        log.warning("another submitit warning")
    said = [r.getMessage() for r in caplog.records if r.name == "submitit"]
    assert len(said) == 2 and said[0].startswith("Call #1 - Bypassing sacct error") and said[1] == "another submitit warning"


def test_a_full_budget_reconstruction_on_this_cpu_is_said_up_front(monkeypatch):
    """An ImageNet suite's brecq/qdrop/mgrq cells (20,000 iterations per unit) run by the local or
    debug executor on a machine without CUDA: a note says so before hours of CPU work start.
    Not for SLURM jobs (their nodes have the GPUs), nor the calibration-only methods."""
    import torch

    from mgrq.runner.commands import _cpu_reconstruction_note

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    suite = load_suite("imagenet-w4a4")
    note = _cpu_reconstruction_note(suite, ex.ExecutorOptions(kind="local", device="auto"), None)
    assert note is not None and "reconstruct an ImageNet model with up to 20,000 iterations per unit" in note
    assert "(no CUDA device here)" in note
    only = r"\.(repq_vit|ptq4vit)\."
    assert _cpu_reconstruction_note(suite, ex.ExecutorOptions(kind="local", device="auto"), only) is None
    assert _cpu_reconstruction_note(suite, ex.ExecutorOptions(kind="slurm", device="auto"), None) is None
    assert _cpu_reconstruction_note(load_suite("demo"), ex.ExecutorOptions(kind="local", device="cpu"), None) is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _cpu_reconstruction_note(suite, ex.ExecutorOptions(kind="debug", device="auto"), None) is None
    assert "(--device cpu)" in _cpu_reconstruction_note(suite, ex.ExecutorOptions(kind="debug", device="cpu"), None)


def test_set_gives_every_method_with_the_field_its_value_as_the_suite_file_would(tmp_path, capsys):
    """``suite run --set FIELD=VALUE`` (a smoke run of the reconstruction methods, say) puts the
    value into the config of each method entry whose method has the field, read as YAML reads
    it: each cell is the one a suite file with that ``config:`` gives, hash included. A field no
    method has, or a value a method refuses, is one error line naming it."""
    methods = ["percentile", "qdrop", {"name": "brecq", "config": {"iters": 9, "lr_round": 0.01}},
               {"name": "mgrq", "variant": "mgrq-k", "config": {"iters": 5}}]
    plain = load_suite(str(write_suite(tmp_path / "s.yaml", methods=methods)))
    got = plain.with_options(sets={"iters": "3", "lr_round": "1e-3"})
    by_hand = [m if isinstance(m, dict) else {"name": m} for m in methods]
    for m in by_hand[1:]:  # every method but percentile has both fields
        m["config"] = {**m.get("config", {}), "iters": 3, "lr_round": 0.001}
    want = load_suite(str(write_suite(tmp_path / "w.yaml", methods=by_hand)))
    assert [(s.run_id, s.content_hash) for s in got.specs()] == [(s.run_id, s.content_hash) for s in want.specs()]
    old, new = ({s.name: s.content_hash for s in x.specs()} for x in (plain, got))
    assert old["percentile"] == new["percentile"] and all(old[n] != new[n] for n in ("qdrop", "brecq", "mgrq-k"))
    assert dict(got.methods[2].config) == {"iters": 3, "lr_round": 0.001}  # typed as the file would be
    assert got.notes == ("--set replaces values the suite file gives these rows: brecq (iters=9, lr_round=0.01), "
                         "mgrq-k (iters=5)",)
    # a variant that fixes the field keeps it (a note says so); --only: only the rows it selects
    fixed = load_suite(str(write_suite(tmp_path / "f.yaml", methods=["mgrq_obwr", "mgrq"])))
    hashes = {s.name: s.content_hash for s in fixed.specs()}
    f2 = fixed.with_options(sets={"w_global": "0.5"})
    assert f2.notes == ("--set w_global=0.5 leaves mgrq_obwr as it is (it fixes w_global=0.0)",)
    assert {s.name: s.content_hash == hashes[s.name] for s in f2.specs()} == {"mgrq_obwr": True, "mgrq": False}
    f3 = fixed.with_options(sets={"iters": "4"}, only=r"\.mgrq\.")
    assert {s.name: s.content_hash == hashes[s.name] for s in f3.specs()} == {"mgrq_obwr": True, "mgrq": False}
    twins = load_suite(str(write_suite(tmp_path / "t.yaml", methods=[
        {"name": "qdrop", "variant": "q1", "config": {"iters": 1}}, {"name": "qdrop", "variant": "q2", "config": {"iters": 2}}])))
    assert twins.with_options(sets={"iters": "3"}).notes[-1] == (
        "with --set, rows q1, q2 run the same settings (their cells differ by name only)")

    suite = str(tmp_path / "s.yaml")
    run = ["suite", "run", suite, "--out", str(tmp_path / "runs"), "--dry-run"]
    assert main([*run, "--set", "iters=3"]) == 0
    assert "qdrop.w4a4.s0" in capsys.readouterr().out
    for flags, msg in (
        (["--set", "iter=3"], "error: --set iter=3: no method of the suite (percentile, qdrop, brecq, mgrq) has a "
                              "field 'iter' (did you mean 'iters'?); expected one of their fields"),
        (["--set", "iters=many"], "error: --set iters=many: qdrop.iters='many': expected an integer"),
        (["--set", "iters"], "error: --set 'iters': expected "),
        (["--set", "units=["], "error: --set units=[: not a value a suite file could hold ("),
        (["--set", "calib=5"], "error: --set calib=5: calib is not a method config field; expected --calib 5"),
        (["--set", "units=on"], "error: --set units=on: qdrop.units=True (bool): expected a string (--set reads units "
                                "as a suite file's config: would, as bool; a string is quoted: --set \"units='on'\")"),
        (["--set", "init_calib=100"], "error: --set init_calib=100: method qdrop: init_calib=100: more than the 8 "),
        (["--only", "percentile", "--set", "iters=3"], "error: --set iters=3: no method of the cells --only selects "
                                                       "(percentile) has a field 'iters'"),
    ):
        assert main([*run, *flags]) == 2
        err = capsys.readouterr().err
        assert err.startswith(msg) and err.count("\n") == 1, err
    assert not (tmp_path / "runs").exists()


def test_the_dry_run_executor_line_says_when_nothing_is_left_to_run():
    from mgrq.runner.commands import _executor_line

    opts = ex.ExecutorOptions(kind="local", parallelism=2, threads=1)
    assert _executor_line(opts, 0) == "executor: local (parallelism=2, threads=1, timeout_min=720, device=auto): " \
                                      "nothing to run"
    assert _executor_line(ex.ExecutorOptions(kind="debug", threads=2), 3).endswith("): one process, 2 torch thread(s)")


def test_only_makes_the_grid_the_cells_it_matches(tmp_path, capsys):
    """A suite file's ``only`` (a regex searched in the cell ids) makes the grid those cells:
    each keeps the hash it has in the whole grid; ``suite list``, a dry run and ``--only`` see
    only them (``--only`` selects among them)."""
    only = r"^(tiny_vit\.[a-z_]+\.w4a4|tiny_deit\.[a-z_]+\.w3a3)\."
    grid = dict(models=["tiny_vit", "tiny_deit"], bits=["W4A4", "W3A3"], methods=["percentile", "repq_vit"],
                seeds=[0, 1])
    whole = {sp.run_id: sp.content_hash for sp in load_suite(write_suite(tmp_path / "whole.yaml", **grid)).specs()}
    path = write_suite(tmp_path / "cols.yaml", **grid, only=only)
    specs = load_suite(path).specs()
    assert [sp.run_id for sp in specs] == [f"{m}.{meth}.{b}.s{s}" for m, b in (("tiny_vit", "w4a4"), ("tiny_deit", "w3a3"))
                                           for meth in ("percentile", "repq_vit") for s in (0, 1)]
    assert all(whole[sp.run_id] == sp.content_hash for sp in specs) and len(whole) == 16
    out = str(tmp_path / "runs")
    assert main(["suite", "run", str(path), "--out", out, "--dry-run"]) == 0
    assert "8 cells: 0 done, 0 failed, 0 running/interrupted/stale, 8 not started -> 8 to run" in capsys.readouterr().out
    assert main(["suite", "run", str(path), "--out", out, "--dry-run", "--only", r"\.s1$"]) == 0
    assert "4 cells: 0 done" in capsys.readouterr().out
    assert main(["suite", "run", str(path), "--out", out, "--dry-run", "--only", r"^tiny_vit\..*w3a3"]) == 2
    assert "matches none of the 8 cells of cols" in capsys.readouterr().err
    shipped = load_suite("vit-deit-seeds")
    assert shipped.only and len(shipped.specs()) == 90 and "--only" not in shipped.command
    # a model, bit-width or row that only leaves without a cell is not part of the run: no data
    # root for an ImageNet model without cells, no "no result yet" note for it in the report
    mixed = write_suite(tmp_path / "mixed.yaml", models=["tiny_vit", "deit_tiny_patch16_224"], bits=["W4A4", "W8A8"],
                        methods=["percentile", "base_ptq"], only=r"^tiny_vit\.percentile\.w4a4\.", eval_limit=20)
    s = load_suite(mixed)
    assert (s.grid_models, s.grid_bits, s.grid_methods) == (("tiny_vit",), ((4, 4),), ("percentile",))
    assert not s.needs_data_root
    assert main(["suite", "run", str(mixed), "--out", out, "--label", "M", "--executor", "debug", "--no-mirror",
                 "--no-pdf", "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 cell: 1 done, 0 skipped (done before), 0 failed" in text
    meta = json.loads((tmp_path / "runs" / "mixed" / "M" / "suite.json").read_text())
    assert (meta["models"], meta["bits"], meta["methods"], meta["only"]) == (["tiny_vit"], ["W4A4"], ["percentile"],
                                                                             s.only)
    assert not (tmp_path / "runs" / "mixed" / "M" / "report" / "notes.md").exists()  # nothing left out to note
