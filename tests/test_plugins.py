"""Methods of your own: registered from a module named in $MGRQ_METHODS, run by the suite's job
processes, recorded with their module's hash; and the mistakes a method author makes (a config
default of the wrong type, a module that does not import, a name taken twice, a method the jobs
cannot load) are one clear error each."""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from dataclasses import dataclass

import pytest
from harness_helpers import cli_env, mgrq, write_suite

from mgrq.cli import main
from mgrq.errors import ConfigError
from mgrq.methods import registry

PLUGIN = '''
from dataclasses import dataclass

from mgrq.methods.percentile import PercentileConfig, quantize
from mgrq.methods.registry import register_method


@dataclass(frozen=True)
class MyConfig(PercentileConfig):
    """the percentile method under another name, with a field of its own"""
    note: str = "mine"


@register_method("my_pct", MyConfig, "a method of my own (test plugin)")
def my_quantize(qmodel, calib, cfg, ctx):
    return {**quantize(qmodel, calib, cfg, ctx), "note": cfg.note}
'''


def test_a_method_of_your_own_runs_in_the_suites_jobs_from_mgrq_methods(tmp_path, plugins, capsys):
    """The driver (here, in this process) and its local job (another process, which inherits the
    environment) both import the module named in $MGRQ_METHODS."""
    (tmp_path / "myplugin.py").write_text(PLUGIN)
    plugins(tmp_path, "myplugin")
    assert main(["methods"]) == 0 and "my_pct" in capsys.readouterr().out
    suite = write_suite(tmp_path / "mine.yaml", methods=["my_pct"], eval_limit=50)
    out = tmp_path / "runs"
    code = main(["suite", "run", str(suite), "--out", str(out), "--label", "P", "--parallelism", "1", "--threads", "1",
                 "--no-report", "--no-mirror"])
    assert code == 0, capsys.readouterr()  # the local job imported the plugin too
    rec = json.loads(next((out / "mine" / "P").glob("*/record.json")).read_text())
    assert rec["status"] == "done" and rec["method"]["info"]["note"] == "mine"
    assert rec["method"]["module"] == "myplugin"
    assert rec["method"]["module_sha256"] == hashlib.sha256((tmp_path / "myplugin.py").read_bytes()).hexdigest()
    # the module edited since: a rerun (and a dry run) of the label says its done cell ran other code
    (tmp_path / "myplugin.py").write_text(PLUGIN + "# edited\n")
    capsys.readouterr()
    for extra in (["--dry-run"], []):
        assert main(["suite", "run", str(suite), "--out", str(out), "--label", "P", "--no-report", "--no-mirror",
                     *extra]) == 0
        assert "note: 1 of the 1 done cell(s) ran another version of their method module than the file there now: " \
            "myplugin (1); they are kept, not rerun" in capsys.readouterr().out


def test_a_module_that_does_not_import_is_one_line(tmp_path):
    (tmp_path / "broken.py").write_text("from mgrq.quant.quantizers import NoSuchQuantizer\n")
    env = cli_env(PYTHONPATH=os.pathsep.join([str(tmp_path), *sys.path]), MGRQ_METHODS="broken")
    r = mgrq("methods", env=env)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith("error: $MGRQ_METHODS module broken: cannot be imported (ImportError: cannot import "
                               "name 'NoSuchQuantizer'"), r.stderr
    assert "`python -c 'import broken'` shows the traceback" in r.stderr


@pytest.fixture
def plugins(monkeypatch):
    """``plugins(folder, "mod1,mod2")``: the modules of ``folder`` named in $MGRQ_METHODS for this
    process and the jobs it starts (PYTHONPATH), the registry loaded again with them; all restored
    after the test."""
    registry.all_methods()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_LOADED_BY", dict(registry._LOADED_BY))

    def use(folder, modules: str) -> None:
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(folder), *sys.path]))
        monkeypatch.setenv(registry.PLUGINS_ENV, modules)
        monkeypatch.setattr(registry, "_loaded", False)
        for m in modules.split(","):
            monkeypatch.delitem(sys.modules, m, raising=False)

    yield use
    for m in ("myplugin", "minmax_ptq", "qdrop_l1", "helper_methods", "lab_methods", "half"):
        sys.modules.pop(m, None)


@pytest.fixture
def registry_copy(monkeypatch):
    """The registry as loaded, restored after the test."""
    registry.all_methods()
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_method_registered_by_a_module_a_plugin_imports_is_loadable(tmp_path, plugins, capsys):
    """$MGRQ_METHODS names one module, which imports the one that registers: the jobs import it
    too, so the run is not refused. A module that fails half-way leaves nothing registered: the
    next lookup names the same failure, not a "registered twice" of its own making."""
    (tmp_path / "helper_methods.py").write_text(PLUGIN.replace('"my_pct"', '"helper_pct"'))
    (tmp_path / "lab_methods.py").write_text("import helper_methods  # noqa: F401\n")
    plugins(tmp_path, "lab_methods")
    registry.check_jobs_can_load(["helper_pct"], "s.yaml: ")
    (tmp_path / "half.py").write_text(PLUGIN.replace('"my_pct"', '"half_pct"') + "import no_such_module_here\n")
    plugins(tmp_path, "half")
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"\$MGRQ_METHODS module half: cannot be imported \(ModuleNotFoundError"):
            registry.get_method("percentile")
    assert "half_pct" not in registry._REGISTRY


def test_a_config_default_of_the_wrong_type_is_refused_at_registration(registry_copy):
    @dataclass(frozen=True)
    class Bad:
        clip: float = "0.001"  # type: ignore[assignment]

    @dataclass(frozen=True)
    class BadBool:
        per_channel: bool = 1  # type: ignore[assignment]

    def fn(qmodel, calib, cfg, ctx):
        return {}

    with pytest.raises(TypeError, match=r"method bad \(.*\): config field clip = '0.001' \(str\) as default; "
                                        r"expected a number, as its annotation says"):
        registry.register_method("bad", Bad, "bad")(fn)
    with pytest.raises(TypeError, match=r"config field per_channel = 1 \(int\) as default; expected a boolean"):
        registry.register_method("bad2", BadBool, "bad")(fn)
    with pytest.raises(ValueError, match=r"method 'percentile' registered twice: by mgrq.methods.percentile and by "):
        registry.register_method("percentile", registry.get_method("qdrop").config_cls, "again")(fn)


def test_a_method_the_jobs_cannot_load_is_refused_before_submission(registry_copy, monkeypatch):
    """Registered by a script's own import, a method runs in the driver's process only: every
    job would fail with "unknown method". The run refuses it up front."""
    @dataclass(frozen=True)
    class Cfg:
        x: int = 1

    def fn(qmodel, calib, cfg, ctx):
        return {}

    fn.__module__ = "my_script"
    registry.register_method("scripted", Cfg, "registered by a script")(fn)
    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    with pytest.raises(ConfigError, match=r"s.yaml: method scripted: registered by module my_script, which the job "
                                          r"processes do not import; expected it in \$MGRQ_METHODS"):
        registry.check_jobs_can_load(["percentile", "scripted"], "s.yaml: ")
    monkeypatch.setenv(registry.PLUGINS_ENV, "my_script")
    registry.check_jobs_can_load(["percentile", "scripted"], "s.yaml: ")  # named there: the jobs import it


def test_long_method_and_field_names_keep_the_listings_columns(registry_copy, capsys):
    @dataclass(frozen=True)
    class Cfg:
        a: int = 1
        a_rather_long_field_name: float = 0.5

    registry.register_method("a_rather_long_method_name", Cfg, "d", default_calib=8)(lambda *a: {})
    assert main(["methods", "a_rather_long_method_name"]) == 0
    lines = capsys.readouterr().out.splitlines()[1:]
    assert len(lines) == 2 and lines[0].index(" = ") == lines[1].index(" = "), lines
    assert main(["methods"]) == 0
    lines = capsys.readouterr().out.splitlines()
    described_at = {len(ln) - len(ln.split(" ", 1)[1].lstrip()) for ln in lines}
    assert len(lines) > 10 and len(described_at) == 1, lines


def test_the_examples_of_docs_methods_md_run_as_written(tmp_path, plugins, capsys):
    """docs/methods.md's two methods, copied from the page into modules named in $MGRQ_METHODS:
    listed with their fields' help, quantized and recorded (the reconstruction one with its L1
    term in each unit's losses)."""
    from harness_helpers import ROOT

    text = (ROOT / "docs" / "methods.md").read_text()
    blocks = re.findall(r"```python\n# (\w+)\.py\n(.*?)```", text, re.S)
    assert [name for name, _ in blocks] == ["minmax_ptq", "qdrop_l1"]
    for name, code in blocks:
        (tmp_path / f"{name}.py").write_text(code)
    plugins(tmp_path, "minmax_ptq,qdrop_l1")
    assert main(["methods", "minmax_ptq"]) == 0
    assert "one range per output channel of a weight" in capsys.readouterr().out
    runs = {"minmax_ptq": [], "qdrop_l1": ["--calib", "8", "--set", "iters=2", "--set", "init_calib=8"]}
    for method, extra in runs.items():
        rec_path = tmp_path / f"{method}.json"
        code = main(["quantize", "--model", "tiny_vit", "--method", method, "--w-bits", "4", "--a-bits", "4",
                     "--eval-limit", "50", "--record", str(rec_path), "--quiet", *extra])
        assert code == 0, capsys.readouterr()
        rec = json.loads(rec_path.read_text())
        assert rec["status"] == "done" and rec["method"]["module"] == method and 0 <= rec["metrics"]["top1"] <= 100
    units = json.loads((tmp_path / "qdrop_l1.json").read_text())["method"]["info"]["recon"][0]["stages"][0]["units"]
    blocks = [u for u in units if u["kind"] == "block"]
    assert blocks and all(set(u["terms_last"]) == {"block", "l1"} for u in blocks), blocks[0]


def test_an_unknown_method_hints_at_mgrq_methods_when_none_is_named(monkeypatch):
    from mgrq.errors import UnknownNameError

    monkeypatch.delenv(registry.PLUGINS_ENV, raising=False)
    with pytest.raises(UnknownNameError, match=r"Known methods: .* \(a method of your own: name its module in "
                                               r"\$MGRQ_METHODS\)$"):
        registry.get_method("minmax_ptq")
    monkeypatch.setenv(registry.PLUGINS_ENV, "")  # set but empty: still none named
    with pytest.raises(UnknownNameError, match=r"MGRQ_METHODS"):
        registry.get_method("minmax_ptq")
