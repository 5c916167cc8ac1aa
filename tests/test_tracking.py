"""MLflow mirroring: an unreachable tracking URI leaves the records in place and says how to
mirror later; mirroring later creates the runs once (idempotent); params, metrics, tags and
artifacts match the record; reports read MLflow and the records alike."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time

import pytest
from harness_helpers import write_suite

from mgrq.cli import main
from mgrq.tracking import MirrorError, default_uri, flatten, mirror

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_default_uri_and_env_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example:5000")
    assert default_uri(tmp_path) == "http://mlflow.example:5000"


def test_unreachable_uri_records_land_then_mirror_later(tmp_path, monkeypatch, capsys):
    suite = write_suite(tmp_path / "trk.yaml", eval_limit=50,
                        methods=[{"name": "percentile", "config": {"act_init": "minmax"}}])
    out = tmp_path / "runs"
    dead = f"http://127.0.0.1:{_free_port()}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", dead)
    code = main(["suite", "run", str(suite), "--out", str(out), "--label", "T", "--executor", "debug",
                 "--threads", "1", "--no-report"])
    cap = capsys.readouterr()
    assert code == 3, cap.out + cap.err  # cells fine, mirroring failed
    warning = [ln for ln in cap.err.splitlines() if ln.startswith("warning:")]
    assert len(warning) == 1 and dead in warning[0] and "unreachable" in warning[0]
    assert f"mgrq mirror --out {out} --suite trk --label T" in warning[0]
    (path,) = (out / "trk" / "T").glob("*/record.json")
    rec = json.loads(path.read_text())
    assert rec["status"] == "done"  # the record landed
    assert not (out / "mlflow.db").exists()

    # later: mirror into the default store, twice (idempotent)
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    assert main(["mirror", "--out", str(out), "--suite", "trk", "--label", "T"]) == 0
    assert "1 run(s) created, 0 replaced, 0 unchanged" in capsys.readouterr().out
    assert main(["mirror", "--out", str(out)]) == 0
    assert "0 run(s) created, 0 replaced, 1 unchanged" in capsys.readouterr().out

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=default_uri(out))
    (run,) = client.search_runs([client.get_experiment_by_name("trk").experiment_id])
    p, m, t = run.data.params, run.data.metrics, run.data.tags
    assert (p["model"], p["method"], p["bits"], p["w_bits"], p["calib"]) == ("tiny_vit", "percentile", "W4A4", "4", "8")
    assert p["config.act_init"] == "minmax" and p["config.weight_init"] == "percentile"
    assert m["top1"] == rec["metrics"]["top1"] and m["fp_top1"] == rec["metrics"]["fp_top1"]
    assert m["quantize_s"] == rec["timings"]["quantize_s"] and m["peak_mem_mb"] == rec["peak_mem_mb"]
    assert t["label"] == "T" and t["suite"] == "trk" and t["status"] == "done"
    assert t["run_id"] == rec["id"] and t["content_hash"] == rec["hash"]
    assert t["git_sha"] == str(rec["git_sha"]) and t["executor"] == "debug"
    assert run.info.run_name == f"T/{rec['id']}" and run.info.status == "FINISHED"
    arts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"record.json", "cell.log", "events.jsonl"} <= arts
    assert str(out.resolve() / "mlartifacts" / "trk") in run.info.artifact_uri

    # reports read MLflow and the records alike
    from reports.frame import mlflow_frame, records_frame

    a = records_frame(out, "trk", ["T"]).drop(columns=["error", "citation"])
    b = mlflow_frame(default_uri(out), "trk", ["T"]).drop(columns=["error", "citation"])
    assert a.to_dict("records") == b.to_dict("records")
    sa, sb = records_frame(out, "trk", ["T"]).attrs["settings"], mlflow_frame(default_uri(out), "trk", ["T"]).attrs["settings"]
    assert sa == sb and sa[("T", rec["id"])]["config.act_init"] == "minmax"  # what the mixed-settings note compares
    # a label run but never mirrored: the error says so, and how to mirror it
    import shutil

    shutil.copytree(out / "trk" / "T", out / "trk" / "U")
    capsys.readouterr()
    assert main(["report", "trk", "--out", str(out), "--from", "mlflow", "--label", "U", "--no-pdf"]) == 2
    err = capsys.readouterr().err
    assert f"unknown label 'U' of suite trk in MLflow {default_uri(out)}" in err
    assert f"exists: `mgrq mirror --out {out} --suite trk --label U` puts it there)" in err
    uri = default_uri(out)  # given explicitly: the hint mirrors into that store, not the default one
    assert main(["report", "trk", "--out", str(out), "--from", "mlflow", "--tracking-uri", uri, "--label", "U"]) == 2
    assert f"`mgrq mirror --out {out} --suite trk --label U --tracking-uri {uri}`" in capsys.readouterr().err
    shutil.rmtree(out / "trk" / "U")
    # ... even with the run folders gone (a team server, records elsewhere): latest label from MLflow
    shutil.rmtree(out / "trk")
    assert main(["report", "trk", "--out", str(out), "--from", "mlflow", "--no-pdf", "--no-figures",
                 "--dest", str(tmp_path / "rep")]) == 0
    md = (tmp_path / "rep" / "main.md").read_text()
    assert "suite trk (T)" in md and f"| Percentile | 4/4 | {rec['metrics']['top1']:.2f} |" in md
    capsys.readouterr()


def test_unreachable_uri_mirror_error_is_one_line(tmp_path):
    (tmp_path / "x" / "L").mkdir(parents=True)
    with pytest.raises(MirrorError) as e:
        mirror(tmp_path, "x", "L", uri=f"http://127.0.0.1:{_free_port()}")
    assert "\n" not in str(e.value) and "mirror them later with `mgrq mirror" in str(e.value)


def test_report_from_an_unsupported_tracking_uri_is_one_line(tmp_path, capsys):
    """A scheme MLflow does not know: the report says which URI and what was expected, on one
    line, exit 2 (before MLflow is asked); a store MLflow cannot read is named likewise."""
    assert main(["report", "demo", "--out", str(tmp_path), "--from", "mlflow", "--tracking-uri", "bogus://x"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: MLflow tracking URI bogus://x: unknown scheme 'bogus' (MLflow")
    notdb = tmp_path / "not-a-db.db"
    notdb.write_text("plain text, not sqlite")
    assert main(["report", "demo", "--out", str(tmp_path), "--from", "mlflow", "--tracking-uri", f"sqlite:///{notdb}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: MLflow (sqlite:///{notdb}): cannot be read (")
    assert err[0].endswith("expected the tracking URI the runs were mirrored into")


def test_flatten_failed_record():
    rec = {"id": "m.p.w4a4.s0", "hash": "abc", "status": "failed",
           "spec": {"model": "m", "method": "p", "w_bits": 4, "a_bits": 4, "seed": 0},
           "error": {"type": "ConfigError", "message": "calib=9: expected 1..4"},
           "suite": {"name": "s", "label": "L"}, "executor": {"name": "slurm", "slurm_job_id": "7"}}
    params, metrics, tags = flatten(rec, "s/L/m.p.w4a4.s0-abc")
    assert params["bits"] == "W4A4" and params["name"] == "p" and metrics == {}
    assert tags["status"] == "failed" and tags["error"] == "ConfigError: calib=9: expected 1..4"
    assert tags["slurm_job_id"] == "7" and tags["mgrq.key"] == "s/L/m.p.w4a4.s0-abc"


@pytest.mark.slow
def test_mirror_to_a_tracking_server(tmp_path):
    """MLFLOW_TRACKING_URI pointing at a real `mlflow server` wins over the sqlite default."""
    from harness_helpers import cli_env

    port = _free_port()
    env = cli_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1", "--backend-store-uri", f"sqlite:///{tmp_path}/server.db",
         "--default-artifact-root", str(tmp_path / "server-artifacts")],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import urllib.request

        for _ in range(120):
            try:
                if urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        suite = write_suite(tmp_path / "srv.yaml", eval_limit=50)
        out = tmp_path / "runs"
        r = subprocess.run([sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(out),
                            "--executor", "debug", "--no-report"],
                           env={**env, "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{port}"},
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stdout + r.stderr
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith("MLflow:"))
        assert f"http://127.0.0.1:{port}, experiment 'srv'" in line and "1 run(s) created" in line
        assert not (out / "mlflow.db").exists()
        res = mirror(out, uri=f"http://127.0.0.1:{port}")
        assert (res.created, res.unchanged) == (0, 1)
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_flatten_keeps_a_done_records_warnings():
    rec = {"id": "m.p.w4a4.s0", "hash": "abc", "status": "done", "metrics": {"top1": 50.0},
           "spec": {"model": "m", "method": "p", "w_bits": 4, "a_bits": 4, "seed": 0},
           "warnings": ["qdrop: unit blocks.0 (joint stage): rose 19x", "qdrop: unit blocks.3 (joint stage): rose 4x"]}
    _params, metrics, tags = flatten(rec, "s/L/m.p.w4a4.s0-abc")
    assert metrics["warnings"] == 2.0 and tags["warnings"] == "\n".join(rec["warnings"])
    _params, metrics, tags = flatten({**rec, "warnings": []}, "k")
    assert metrics["warnings"] == 0.0 and "warnings" not in tags


def test_a_file_store_is_named_before_any_work_with_what_to_use(tmp_path, monkeypatch, capsys):
    """MLflow 3 refuses a file store unless MLFLOW_ALLOW_FILE_STORE is true: `suite run` says so
    before running a cell (not as a mirroring failure after them), and `mirror` in one line."""
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    suite = write_suite(tmp_path / "fs.yaml")
    store = f"file://{tmp_path}/mlruns"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", store)
    run = ["suite", "run", str(suite), "--out", str(tmp_path / "runs"), "--executor", "debug", "--no-report"]
    assert main(run) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: MLflow tracking URI {store}: a file store, which MLflow 3 refuses (maintenance mode); "
                   "expected sqlite:///PATH.db or http(s)://SERVER, or MLFLOW_ALLOW_FILE_STORE=true to use it anyway "
                   "(or --no-mirror)")
    assert not (tmp_path / "runs" / "fs").exists()  # nothing ran
    (tmp_path / "x" / "L").mkdir(parents=True)
    with pytest.raises(MirrorError, match="a file store, which MLflow 3 refuses"):
        mirror(tmp_path, "x", "L", uri=str(tmp_path / "plain-path-store"))
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # the user's choice: used as asked
    assert main([*run, "--dry-run"]) == 0


def test_the_store_check_refuses_file_stores_only(monkeypatch):
    from mgrq.tracking import check_store_kind

    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)

    for ok in ("sqlite:///x.db", "http://h:5000", "https://h", "databricks", "databricks-uc", "uc",
               "databricks://profile", "databricks-uc://p", "uc://x", "postgresql://u@h/db", "mysql+pymysql://u@h/db"):
        check_store_kind(ok)
    for bad in ("file:///tmp/mlruns", "mlruns", "/tmp/m"):
        with pytest.raises(MirrorError, match="a file store"):
            check_store_kind(bad)


def test_a_store_mlflow_cannot_use_is_named_before_any_work(tmp_path, monkeypatch, capsys):
    """A misspelt scheme, or a sqlite database where nothing can be written, used to surface only
    after every cell had run (MLflow's model-registry message, or minutes of retry warnings)."""
    from mgrq.tracking import check_store_kind

    with pytest.raises(MirrorError, match=r"^MLflow tracking URI htp://h:5000: unknown scheme 'htp' \(MLflow has no "
                                          r"store for it\); expected sqlite:///PATH\.db or http\(s\)://SERVER"):
        check_store_kind("htp://h:5000")
    with pytest.raises(MirrorError, match=r"^MLflow tracking URI sqlite:////proc/x\.db: database '/proc/x\.db': "
                                          r"cannot create a file in '/proc'"):
        check_store_kind("sqlite:////proc/x.db")
    check_store_kind(f"sqlite:///{tmp_path}/new/folder/m.db")  # a folder still to be created is fine
    assert not (tmp_path / "new").exists()  # the check leaves nothing behind
    # reading (a report --from mlflow) probes nothing: a store MLflow can read but not write is fine
    from mgrq.tracking import check_reachable

    monkeypatch.setattr("mgrq.records.os.access", lambda *a, **k: False)  # every folder read-only
    check_reachable("sqlite:////proc/x.db", write=False)
    with pytest.raises(MirrorError, match="is not writable"):
        check_reachable(f"sqlite:///{tmp_path}/m.db")
    monkeypatch.undo()
    suite = write_suite(tmp_path / "st.yaml")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////proc/x.db")
    assert main(["suite", "run", str(suite), "--out", str(tmp_path / "runs"), "--executor", "debug"]) == 2
    assert "(or --no-mirror)" in capsys.readouterr().err and not (tmp_path / "runs" / "st").exists()


def test_mirror_keeps_one_run_per_cell_and_names_what_it_left(tmp_path, capsys):
    """A cell logged twice (two mirrors at once) is one run again after the next mirror, and a
    report reads one meanwhile; a run mirrored from another runs folder under the same suite and
    label (another machine's) is left alone and counted, not replaced; a cell folder copied
    beside its label is mirrored under its own folder's label; an interrupted cell's run is
    KILLED, and a report from MLflow names it interrupted; a running one is counted."""
    import shutil

    from mlflow.tracking import MlflowClient

    from mgrq import records
    from mgrq.tracking import ORIGIN_TAG, _log_run, runs_folder_id, search

    suite = write_suite(tmp_path / "dup.yaml", eval_limit=50, seeds=[0, 1, 2])
    out = tmp_path / "runs"
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug",
                 "--threads", "1", "--no-report"]) == 0
    uri = default_uri(out)
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("dup").experiment_id
    paths = sorted((out / "dup" / "L").glob("*/record.json"))
    recs = [json.loads(p.read_text()) for p in paths]
    key = f"dup/L/{paths[0].parent.name}"
    _log_run(client, exp, key, paths[0], recs[0], runs_folder_id(out))  # as a second mirror at once would
    assert len(search(uri, "dup", ["L"])) == 3  # one run per cell read
    res = mirror(out, "dup", "L")
    assert (res.duplicates, res.unchanged, res.created) == (1, 3, 0), res.counts()
    assert len(client.search_runs([exp])) == 3
    # another machine's records under the same suite and label: left alone, not replaced
    other = next(r for r in client.search_runs([exp]) if r.data.tags["mgrq.key"].endswith(paths[1].parent.name))
    client.set_tag(other.info.run_id, ORIGIN_TAG, "elsewhere:/runs:1234abcd")
    assert mirror(out, "dup", "L").unchanged == 3  # the same record there: nothing to do either way
    records.write_record(paths[1], {**recs[1], "metrics": {**recs[1]["metrics"], "top1": 1.0}})
    res = mirror(out, "dup", "L")
    assert res.replaced == 0 and len(res.foreign) == 1 and "elsewhere:/runs:1234abcd" in res.counts(), res.counts()
    assert client.get_run(other.info.run_id).data.metrics["top1"] == recs[1]["metrics"]["top1"]
    records.write_record(paths[1], recs[1])
    client.set_tag(other.info.run_id, ORIGIN_TAG, runs_folder_id(out))
    # a runs folder moved (its database with it) is the same records: its runs are still its own
    moved = tmp_path / "moved"
    out.rename(moved)
    out, uri = moved, default_uri(moved)
    client = MlflowClient(tracking_uri=uri)
    paths = sorted((out / "dup" / "L").glob("*/record.json"))
    units = [{"unit": u, "out_mse": {"init": 1.0, "final": f}, "wall_s": 2.0} for u, f in (("a", 0.5), ("b", 0.25))]
    recon = [{"stages": [{"stage": "rounding", "units": units}]}, {"stages": [{"stage": "steps", "units": units}]}]
    records.write_record(paths[1], {**recs[1], "metrics": {**recs[1]["metrics"], "top1": 2.0},
                                    "method": {**recs[1]["method"], "info": {"recon": recon}}})
    res = mirror(out, "dup", "L")
    assert (res.replaced, res.foreign) == (1, []), res.counts()
    # a reconstruction's per-unit figures: step metrics, one step per unit, and the units' names
    run = next(r for r in client.search_runs([exp]) if r.data.tags["mgrq.key"].endswith(paths[1].parent.name))
    assert (run.data.tags["unit.rounding"], run.data.tags["unit.steps"]) == ("a,b", "a,b")
    hist = client.get_metric_history(run.info.run_id, "unit.steps.out_mse_final")
    assert sorted((m.step, m.value) for m in hist) == [(0, 0.5), (1, 0.25)]
    # a run of an older mirror (no folder tag, the record's own label) gets the tags it lacks
    run = next(r for r in client.search_runs([exp]) if r.data.tags["mgrq.key"].endswith(paths[0].parent.name))
    client.delete_tag(run.info.run_id, ORIGIN_TAG)
    client.set_tag(run.info.run_id, "label", "the-record's-own")
    assert mirror(out, "dup", "L").unchanged == 3
    tags = client.get_run(run.info.run_id).data.tags
    assert (tags["label"], tags[ORIGIN_TAG]) == ("L", runs_folder_id(out))
    # a cell folder copied beside the label: its own label in MLflow, not L's
    shutil.copytree(paths[2].parent, out / "dup" / "L-first" / paths[2].parent.name)
    records.write_record(paths[2], {**recs[2], "status": "failed", "metrics": None,
                                    "error": {"type": "Interrupted", "message": "stopped", "traceback": ""}})
    records.write_record(paths[0], {**recs[0], "status": "running"})
    res = mirror(out, "dup")
    assert res.skipped_running == 1 and "1 running (not mirrored yet)" in res.counts(), res.counts()
    copied = [r for r in client.search_runs([exp]) if r.data.tags["mgrq.key"].startswith("dup/L-first/")]
    assert [r.data.tags["label"] for r in copied] == ["L-first"]
    stopped = next(r for r in client.search_runs([exp]) if r.data.tags["mgrq.key"] == f"dup/L/{paths[2].parent.name}")
    assert stopped.info.status == "KILLED" and stopped.data.tags["mlflow.source.git.commit"] == \
        str(recs[2]["git_sha"]).split("+")[0]
    capsys.readouterr()
    assert main(["report", "dup", "--out", str(out), "--from", "mlflow", "--label", "L", "--no-pdf",
                 "--no-figures"]) == 0
    notes = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("note:")]
    assert any(f"1 interrupted ({recs[2]['id']})" in n for n in notes), notes

    # --prune: the run of a deleted folder goes (MLflow's restorable delete), one mirrored from
    # another runs folder stays; without --prune nothing goes; --label scopes it
    shutil.rmtree(out / "dup" / "L-first")
    client.set_tag(stopped.info.run_id, ORIGIN_TAG, "elsewhere:/runs:1")
    shutil.rmtree(paths[2].parent)
    assert mirror(out, "dup").pruned == []
    assert main(["mirror", "--out", str(out), "--suite", "dup", "--label", "L", "--prune"]) == 0
    line = capsys.readouterr().out
    assert "0 run(s) deleted" not in line and "1 run(s) whose records are not under this runs folder left alone " \
        f"(dup/L/{paths[2].parent.name})" in line, line
    assert client.get_run(copied[0].info.run_id).info.lifecycle_stage == "active"  # another label: out of scope
    assert main(["mirror", "--out", str(out), "--prune"]) == 0
    assert f"1 run(s) deleted, their records gone (dup/L-first/{paths[2].parent.name})" in capsys.readouterr().out
    assert client.get_run(copied[0].info.run_id).info.lifecycle_stage == "deleted"
    assert client.get_run(stopped.info.run_id).info.lifecycle_stage == "active"
    assert len(search(uri, "dup")) == 3  # L's three cells; L-first's run is gone from the reports
    assert main(["mirror", "--out", str(out), "--suite", "dpu", "--prune"]) == 0
    assert "no suite folder dpu under" in capsys.readouterr().out
    assert main(["mirror", "--out", str(out), "--suite", "dup", "--label", "Lx", "--prune"]) == 0
    assert "no label Lx under" in capsys.readouterr().out
    # records that are there but unreadable are no records gone: their runs stay
    for p in paths[:2]:
        p.write_text("{")
    assert main(["mirror", "--out", str(out), "--suite", "dup", "--label", "L", "--prune"]) == 0
    said = capsys.readouterr().out
    assert "2 unreadable record(s) left out" in said and "deleted" not in said, said
    assert len(search(uri, "dup", ["L"])) == 3


def test_mirror_exit_status_and_its_redo_hint_name_the_store(tmp_path, capsys):
    """An unreachable store is exit 3 (not bad input), and the command it gives to mirror later
    names that store: run as printed from a shell without $MLFLOW_TRACKING_URI, it would
    otherwise mirror into the default sqlite file and report success."""
    from mgrq import records

    records.write_record(tmp_path / "x" / "L" / "suite.json", {"created": "x"})
    dead = f"http://127.0.0.1:{_free_port()}"
    assert main(["mirror", "--out", str(tmp_path), "--tracking-uri", dead]) == 3
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert f"`mgrq mirror --out {tmp_path} --tracking-uri {dead}`" in err, err


def test_two_mirrors_of_one_runs_folder_take_turns(tmp_path, capsys):
    """A mirror of a runs folder another mirror holds (a driver finishing its label while
    `mgrq mirror` runs by hand) waits, says for whom, and mirrors once the other is done: one of
    them could otherwise delete, as an older copy, a run the other is still writing."""
    import fcntl
    import threading

    suite = write_suite(tmp_path / "turns.yaml", eval_limit=20)
    out = tmp_path / "runs"
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug",
                 "--threads", "1", "--no-report", "--no-mirror"]) == 0
    capsys.readouterr()
    box: dict = {}
    with open(out / ".mirror.lock", "a+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        held.write("pid 12345 on elsewhere since then\n")
        held.flush()
        t = threading.Thread(target=lambda: box.update(res=mirror(out, "turns", "L")), daemon=True)
        t.start()
        err, deadline = "", time.time() + 120
        while "waiting for another mirror" not in err and t.is_alive() and time.time() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err
        assert f"mgrq: waiting for another mirror of {out} to finish (pid 12345 on elsewhere since then)" in err
        assert t.is_alive() and "res" not in box
        fcntl.flock(held, fcntl.LOCK_UN)
    t.join(120)
    assert not t.is_alive() and box["res"].created == 1, box
    assert (out / ".mirror.lock").read_text().startswith("pid ")  # the holder's word, for the next one


def test_a_lock_file_this_process_cannot_write_is_locked_read_only(tmp_path, monkeypatch):
    """A runs folder copied read-only (or a lock file another user made): the mirror still takes
    turns, locking the file read-only and leaving its line alone; with no file at all and no
    way to make one, it mirrors without."""
    import fcntl
    import os

    import mgrq.tracking as tracking

    out = tmp_path / "runs"
    out.mkdir()
    (out / ".mirror.lock").write_text("pid 1 on elsewhere since then\n")
    real_open = os.open

    def no_write(path, flags, *a):
        if flags & (os.O_RDWR | os.O_WRONLY | os.O_CREAT):
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, flags, *a)

    monkeypatch.setattr(tracking.os, "open", no_write)
    with tracking.mirror_lock(out), open(out / ".mirror.lock") as other, pytest.raises(BlockingIOError):
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)  # held: another mirror would wait
    assert (out / ".mirror.lock").read_text() == "pid 1 on elsewhere since then\n"
    (out / ".mirror.lock").unlink()
    with tracking.mirror_lock(out):  # nothing to lock: mirrors all the same
        pass
    assert not (out / ".mirror.lock").exists()
