"""The runner on real submitit executors: records, failed cells, resume, dry run, and a cell
killed with SIGKILL mid-run (only the unfinished cells run again; finished records and MLflow
runs are untouched and not duplicated)."""

from __future__ import annotations

import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness_helpers import DIVERGED, DIVERGES, ROOT, background, cli_env, write_suite

from mgrq import records
from mgrq.cli import main
from mgrq.errors import ConfigError
from mgrq.runner import executors as ex
from mgrq.runner.layout import Cell, read_events

pytestmark = pytest.mark.filterwarnings("ignore:.*noload.*")


def cell_dirs(root: Path) -> dict[str, Path]:
    return {p.name.rsplit("-", 1)[0]: p for p in root.iterdir() if (p / "record.json").exists()}


def rec(d: Path) -> dict:
    return json.loads((d / "record.json").read_text())


def running_cells(root: Path) -> dict[str, Path]:
    """The cells of a label folder whose record says ``running`` (none before the folder exists)."""
    cells = cell_dirs(root) if root.is_dir() else {}
    return {c: d for c, d in cells.items() if rec(d)["status"] == "running"}


def test_debug_executor_records_failed_cell_and_resume(tmp_path, capsys, monkeypatch):
    suite = write_suite(tmp_path / "dbg.yaml", methods=["percentile", DIVERGES])
    out = tmp_path / "runs"
    argv = ["suite", "run", str(suite), "--out", str(out), "--label", "L1", "--executor", "debug",
            "--device", "cpu", "--threads", "1", "--no-mirror", "--no-report"]
    assert main(argv) == 1  # one cell failed -> exit status 1
    text = capsys.readouterr().out
    assert "2 cells: 1 done, 0 skipped (done before), 1 failed" in text
    root = out / "dbg" / "L1"
    cells = cell_dirs(root)
    ok, bad = rec(cells["tiny_vit.percentile.w4a4.s0"]), rec(cells["tiny_vit.q-nan.w4a4.s0"])
    # the done record: everything the issue lists
    assert ok["status"] == "done" and ok["metrics"]["n_eval"] == 100
    assert 80 < ok["metrics"]["top1"] <= 100 and ok["metrics"]["fp_top1"] > 85
    for key in ("spec", "timings", "peak_mem_mb", "calibration", "data", "versions", "git_sha",
                "executor", "suite", "device_name"):
        assert ok.get(key) is not None, key
    assert ok["versions"]["mlxtend"] and ok["device_name"] == records.cpu_name()
    assert ok["calibration"]["n"] == 8 and len(ok["calibration"]["ids_hash"]) == 16
    assert ok["executor"]["name"] == "debug" and ok["suite"] == {"name": "dbg", "label": "L1", "file": str(suite)}
    assert ok["hash"] == cells["tiny_vit.percentile.w4a4.s0"].name.rsplit("-", 1)[1]
    # the failed record: the error and its traceback; the grid went on
    assert bad["status"] == "failed" and bad["error"]["type"] == "ReconstructionError"
    assert "unit blocks.0 (joint stage): " + DIVERGED in bad["error"]["message"]
    assert "engine.py" in bad["error"]["traceback"]
    assert DIVERGED in (cells["tiny_vit.q-nan.w4a4.s0"] / "cell.log").read_text()

    # rerun = resume: the done cell is skipped (record untouched), the failed one runs again
    before = (cells["tiny_vit.percentile.w4a4.s0"] / "record.json").read_bytes()
    assert main(argv) == 1
    text = capsys.readouterr().out
    assert "2 cells: 0 done, 1 skipped (done before), 1 failed" in text
    assert (cells["tiny_vit.percentile.w4a4.s0"] / "record.json").read_bytes() == before
    assert [e["event"] for e in read_events(cells["tiny_vit.q-nan.w4a4.s0"])] == [
        "start", "failed", "start", "failed"]

    # dry run: the grid and how many cells are done; nothing runs
    assert main([*argv, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "2 cells: 1 done, 1 failed" in text and "-> 1 to run" in text
    assert len(read_events(cells["tiny_vit.q-nan.w4a4.s0"])) == 4
    # status of the newest label: one line per cell, then the counts
    assert main(["suite", "status", "dbg", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "suite dbg [L1]" in text and "1 done, 1 failed" in text
    (ok_line,) = [ln for ln in text.splitlines() if "tiny_vit.percentile.w4a4.s0" in ln]
    assert f"top-1 {ok['metrics']['top1']:.2f}" in ok_line and "warning" not in ok_line
    assert f"job {ok['executor']['job_id']}" in text  # the job id, named as such
    # a done record holding a warning (simulated): status and the dry run say so on its line
    path = cells["tiny_vit.percentile.w4a4.s0"] / "record.json"
    path.write_text(json.dumps({**json.loads(before), "warnings": ["percentile: unit blocks.0 rose 3x"]}))
    for cmd in (["suite", "status", "dbg", "--out", str(out)], [*argv, "--dry-run"]):
        assert main(cmd) == 0
        (line,) = [ln for ln in capsys.readouterr().out.splitlines() if "tiny_vit.percentile.w4a4.s0" in ln]
        assert "1 warning(s) in the record" in line, cmd
    # suite.json unreadable: status lists the cell folders there are, and says why
    meta = (root / "suite.json").read_bytes()
    (root / "suite.json").write_text("{bad")
    assert main(["suite", "status", "dbg", "--out", str(out), "--label", "L1"]) == 0
    text = capsys.readouterr().out
    assert "suite.json is missing, unreadable or lists no cells; showing the 2 cell folder(s) found" in text
    assert "1 done, 1 failed" in text and "tiny_vit.q-nan.w4a4.s0" in text
    (root / "suite.json").write_text('{"created": "x", "cells": null}')
    assert main(["suite", "status", "dbg", "--out", str(out), "--label", "L1"]) == 0
    assert "showing the 2 cell folder(s) found" in capsys.readouterr().out
    (root / "suite.json").write_bytes(meta)
    (out / "dbg" / "L0").mkdir()  # a label folder where nothing started
    (out / "dbg" / "L0" / "suite.json").write_text('{"created": "2000-01-01", "cells": []}')
    assert main(["suite", "status", "dbg", "--out", str(out), "--label", "L0"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "no cells"

    # a method default changed since the done cell ran (simulated on the record's side): the
    # label is refused, naming the cell and the field, and nothing is run or rewritten
    path = cells["tiny_vit.percentile.w4a4.s0"] / "record.json"
    drifted = json.loads(before)
    cfg = drifted["method"]["config"]
    key, now = "act_init", cfg["act_init"]
    cfg[key] = "minmax" if now != "minmax" else "lp"
    path.write_text(json.dumps(drifted))
    changed = path.read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "1 done cell(s) ran with other method defaults" in err
    assert f"tiny_vit.percentile.w4a4.s0: {key} {cfg[key]!r} -> {now!r}" in err and "new --label" in err
    assert path.read_bytes() == changed and len(read_events(cells["tiny_vit.q-nan.w4a4.s0"])) == 4
    assert main([*argv, "--dry-run"]) == 0
    assert f"ran with other defaults: {key}" in capsys.readouterr().out

    # a done cell recorded at another commit: resuming keeps it, and the run and the dry run say so
    path.write_text(json.dumps({**json.loads(before), "git_sha": "0123456789abcdef0123+dirty"}))
    for cmd, code in ((argv, 1), ([*argv, "--dry-run"], 0)):
        assert main(cmd) == code
        notes = [ln for ln in capsys.readouterr().out.splitlines() if "another source tree" in ln]
        if records.git_sha() is None:  # not a git checkout: nothing to compare with
            assert notes == []
        else:
            assert notes == [f"note: 1 of the 1 done cell(s) were recorded from another source tree than this one "
                             f"({records.short_sha(records.git_sha())}): "
                             "0123456789ab+dirty (1); they are kept, not rerun (a new --label runs every cell "
                             "with this code)"], cmd
    # a record without a git_sha (run outside a checkout) cannot be compared: no note
    path.write_text(json.dumps({**json.loads(before), "git_sha": None}))
    assert main([*argv, "--dry-run"]) == 0
    assert "another source tree" not in capsys.readouterr().out
    path.write_bytes(before)
    assert main([*argv, "--dry-run"]) == 0
    assert "another source tree" not in capsys.readouterr().out

    # a done cell run on the CPU with another thread count than this run gives its cells: the run
    # and the dry run say so (on a CPU a reconstruction's result depends on it; not in the hash)
    assert ok["device"] == "cpu" and ok["torch_threads"] == 1
    path.write_text(json.dumps({**json.loads(before), "torch_threads": 3}))
    for cmd, code in ((argv, 1), ([*argv, "--dry-run"], 0)):
        assert main(cmd) == code
        notes = [ln for ln in capsys.readouterr().out.splitlines() if "thread count" in ln]
        assert notes == ["note: 1 of the 1 done cell(s) ran on the CPU with another torch thread count than the 1 "
                         "this run gives each cell: 3 threads (1). On a CPU a reconstruction's result depends on "
                         "the thread count (the order of float sums), which a cell's hash does not include; "
                         "--threads 3 runs the rest as they ran"], cmd
    assert main([*argv[:-4], "--threads", "3", "--no-mirror", "--no-report", "--dry-run"]) == 0  # as they ran
    assert "thread count" not in capsys.readouterr().out
    # an --only run of the failed cell alone: the done cell is outside the selection, but in the label
    assert main([*argv, "--dry-run", "--only", "q-nan"]) == 0
    assert "ran on the CPU with another torch thread count" in capsys.readouterr().out
    local = ["suite", "run", str(suite), "--out", str(out), "--label", "L1", "--dry-run", "--no-mirror", "--gpus", "0"]
    for cores, note in ((6, True), (12, False)):  # local: cores / min(4, cores) threads per job: 1, then 3
        monkeypatch.setattr(ex, "cpu_count", lambda cores=cores: cores)
        assert main(local) == 0
        assert ("thread count" in capsys.readouterr().out) == note, cores
    monkeypatch.setattr(ex, "cpu_count", lambda: 6)
    monkeypatch.setattr(ex, "cuda_count", lambda: 1)  # the rest would run on a GPU: the count does not matter
    assert main(local[:-2]) == 0
    assert "thread count" not in capsys.readouterr().out
    path.write_bytes(before)


def _wait_for(cond, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    t0 = time.time()
    while not cond():
        if proc is not None and proc.poll() is not None:
            out, err = proc.communicate()
            raise AssertionError(f"driver exited ({proc.returncode}) while waiting for {what}:\n{out}\n{err}")
        if time.time() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _mlflow_runs(out: Path, suite: str) -> dict[str, tuple[str, str, str]]:
    """key -> (mlflow run id, status, digest) of the active runs of a suite."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    exp = client.get_experiment_by_name(suite)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    keys = [r.data.tags["mgrq.key"] for r in runs]
    assert len(keys) == len(set(keys)), f"duplicated MLflow runs: {keys}"
    return {r.data.tags["mgrq.key"]: (r.info.run_id, r.info.status, r.data.tags["mgrq.digest"]) for r in runs}


@pytest.mark.slow  # ~30 s: two drivers and three job processes; CI runs it (nox -s tests_slow)
def test_sigkill_mid_cell_then_rerun_only_unfinished(tmp_path):
    """Two local jobs side by side (1 torch thread each) share the three cells (the first starts
    with cell 1, the second with cell 3; cell 2 goes to whichever is free first). The process
    running cell 2 is killed with SIGKILL; the other job finishes. The rerun runs cell 2 only;
    the other records and MLflow runs stay as they were."""
    suite = write_suite(tmp_path / "kill.yaml", bits=["W4A4", "W8A8", "W6A6"], eval_limit=200)
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(out),
            "--label", "K", "--executor", "local", "--parallelism", "2", "--threads", "1",
            "--no-report"]
    root = out / "kill" / "K"
    c1, c2, c3 = (f"tiny_vit.percentile.{b}.s0" for b in ("w4a4", "w8a8", "w6a6"))

    with background(argv) as proc:
        _wait_for(lambda: c2 in running_cells(root), 240, "cell 2 to start", proc)
        victim = rec(cell_dirs(root)[c2])["executor"]["pid"]
        os.kill(victim, signal.SIGKILL)  # the job process, mid-cell
        stdout, stderr = proc.communicate(timeout=240)
    assert proc.returncode == 1, stdout + stderr
    assert "local: 2 job(s) side by side, 1 torch thread(s) each" in stdout
    assert "3 cells: 2 done, 0 skipped (done before), 1 failed" in stdout, stdout
    cells = cell_dirs(root)
    r = {c: rec(cells[c]) for c in (c1, c2, c3)}
    assert r[c2]["status"] == "failed" and r[c2]["error"]["type"] == "JobLost", r[c2]["error"]
    log = (cells[c2] / "cell.log").read_text()  # the reason is where a user looks first, too
    assert "[driver " in log and f"] JobLost: job {r[c2]['executor']['job_id']} (local, state " in log, log
    assert {r[c]["status"] for c in (c1, c3)} == {"done"}
    assert {r[c]["torch_threads"] for c in (c1, c3)} == {1}
    jobs = {c: r[c]["executor"]["job_id"] for c in (c1, c2, c3)}
    assert jobs[c1] != jobs[c3] and jobs[c2] in (jobs[c1], jobs[c3]), jobs
    finished = {c: ((cells[c] / "record.json").read_bytes(), (cells[c] / "record.json").stat().st_mtime_ns)
                for c in (c1, c3)}
    runs1 = _mlflow_runs(out, "kill")
    assert len(runs1) == 3 and runs1[f"kill/K/{cells[c2].name}"][1] == "FAILED"

    # rerun: only the killed cell runs again
    r2 = subprocess.run(argv, cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0, r2.stdout + r2.stderr
    assert "3 cells: 1 done, 2 skipped (done before), 0 failed" in r2.stdout, r2.stdout
    for c, (data, mtime) in finished.items():
        assert (cells[c] / "record.json").read_bytes() == data
        assert (cells[c] / "record.json").stat().st_mtime_ns == mtime
        assert [e["event"] for e in read_events(cells[c])] == ["start", "done"]
    assert [e["event"] for e in read_events(cells[c2])] == ["start", "lost", "start", "done"]
    assert rec(cells[c2])["status"] == "done"
    runs2 = _mlflow_runs(out, "kill")
    assert set(runs2) == set(runs1)  # one MLflow run per cell, no duplicates
    for c in (c1, c3):  # the finished cells' runs untouched
        assert runs2[f"kill/K/{cells[c].name}"] == runs1[f"kill/K/{cells[c].name}"]
    assert {v[1] for v in runs2.values()} == {"FINISHED"}
    assert "0 run(s) created, 1 replaced, 2 unchanged" in r2.stdout


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_stopping_the_driver_stops_its_local_jobs_and_records_the_cell(tmp_path, stop):
    """``kill DRIVER_PID`` and Ctrl-C stop the suite alike: the local job is told to stop, records
    its cell as ``Interrupted`` (not ``running`` forever) and exits; the rerun runs the cell again.
    Ctrl-C in a terminal signals the whole process group (emulated with killpg): one message,
    no traceback from a job's controller."""
    suite = write_suite(tmp_path / "term.yaml", methods=[{"name": "qdrop", "config": {"iters": 100000}}],
                        eval_limit=100)
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(out), "--label", "T",
            "--executor", "local", "--parallelism", "1", "--threads", "1", "--no-report", "--no-mirror"]
    root = out / "term" / "T"
    # sigterm: started as a non-interactive shell starts a background command (CI): SIGINT
    # ignored, which its children inherit; stopping the jobs must not rely on SIGINT.
    # ctrl-c: the driver leads a process group of its own, as a terminal's foreground job does,
    # with SIGINT's default action (this test may itself run with SIGINT ignored, e.g. in CI)
    kw = ({"preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)} if stop == "sigterm"
          else {"start_new_session": True, "preexec_fn": lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)})
    with background(argv, **kw) as proc:
        _wait_for(lambda: bool(running_cells(root)), 240, "the cell to start", proc)
        (cell,) = cell_dirs(root).values()
        job_pid = rec(cell)["executor"]["pid"]
        if stop == "sigterm":
            proc.send_signal(signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stdout + stderr
    assert "interrupted: local jobs cancelled; rerun the suite to resume" in stderr
    assert "interrupted\n" not in stderr.replace("interrupted: ", "")  # one line says it, not two
    assert "Traceback" not in stdout + stderr, stdout + stderr
    r = rec(cell)
    assert r["status"] == "failed" and r["error"]["type"] == "Interrupted", r.get("error")
    assert "the next run of the suite runs this cell again" in r["error"]["message"]
    assert [e["event"] for e in read_events(cell)] == ["start", "interrupted"]
    _wait_for(lambda: not Path(f"/proc/{job_pid}").exists(), 30, "the job process to exit")


def test_a_cell_still_run_by_a_live_local_job_is_not_started_twice(tmp_path, capsys):
    from mgrq.runner.driver import check_no_live_jobs, states

    suite = write_suite(tmp_path / "live.yaml", seeds=[0, 1])
    out = tmp_path / "runs"
    argv = ["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug",
            "--no-report", "--no-mirror"]
    assert main(argv) == 0
    dirs = sorted(cell_dirs(out / "live" / "L").values())
    cells = [Cell(d.name.rsplit("-", 1)[0], "", d, {}) for d in dirs]
    # jobs of an earlier driver (processes whose command line names submitit) still run the cells
    jobs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"]) for _ in dirs]
    try:
        for d, job in zip(dirs, jobs, strict=True):
            records.write_record(d / "record.json", {**rec(d), "status": "running", "executor": {
                "name": "local", "host": records.host(), "pid": job.pid}})
        with pytest.raises(ConfigError, match=rf"^1 cell still being run by local job process on this host, from an "
                                              rf"earlier `suite run` that was stopped: {cells[0].run_id} \(pid "
                                              rf"{jobs[0].pid}, started .*\); .* \(kill {jobs[0].pid}\)"):
            check_no_live_jobs(states(cells[:1]))
        assert main(argv) == 2  # one line naming both cells and both processes
        err = capsys.readouterr().err
        assert err.startswith("error: 2 cells still being run by local job processes") and err.count("\n") == 1
        assert all(c.run_id in err for c in cells) and f"(kill {jobs[0].pid} {jobs[1].pid})" in err
    finally:
        for job in jobs:
            job.kill()
            job.wait()
    check_no_live_jobs(states(cells))  # the processes are gone: the cells may run again
    assert main(argv) == 0
    assert all(rec(d)["status"] == "done" for d in dirs)


def test_a_checkpoint_replaced_under_the_same_path_is_not_resumed(tmp_path, capsys):
    """The cell hash covers the checkpoint's path; the record keeps the file's SHA-256, and a
    label whose done cells ran with other bytes is refused (dry run names the cell)."""
    from mgrq import zoo

    ck = tmp_path / "ck.pth"
    ck.write_bytes(zoo.tiny_weights_path("tiny_vit").read_bytes())
    suite = write_suite(tmp_path / "ck.yaml", checkpoints={"tiny_vit": str(ck)})
    out = tmp_path / "runs"
    argv = ["suite", "run", str(suite), "--out", str(out), "--label", "C", "--executor", "debug",
            "--no-report", "--no-mirror"]
    assert main(argv) == 0
    (cell,) = cell_dirs(out / "ck" / "C").values()
    digest = zoo.weights_digest(ck)
    assert rec(cell)["weights"] == {"file": str(ck), "sha256": digest}
    capsys.readouterr()
    assert main(argv) == 0  # unchanged: resumed, nothing runs
    assert "1 skipped (done before)" in capsys.readouterr().out
    import torch

    sd = zoo.load_state_dict_file(ck)
    sd["head.bias"] = sd["head.bias"] + 1.0
    torch.save(sd, ck)  # other weights of the same model, same path
    before = (cell / "record.json").read_bytes()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert (f"label C: 1 done cell(s) ran with other weights than {ck} holds now (e.g. tiny_vit.percentile.w4a4.s0: "
            f"sha256 {digest[:12]} -> {zoo.weights_digest(ck)[:12]})") in err
    assert (cell / "record.json").read_bytes() == before
    assert main([*argv, "--dry-run"]) == 0
    assert "ran with other weights" in capsys.readouterr().out


def test_a_timm_cell_done_before_the_weights_were_pinned_is_not_resumed(tmp_path):
    """A done cell of a timm model whose record has no weights.timm ran before the zoo pinned the
    tag, with timm's default for the plain name; where that default is other weights than the
    pinned ones (ViT-B: augreg2 in timm 1.x), resuming the label would mix two FP models."""
    import timm

    from mgrq import zoo
    from mgrq.runner.driver import check_drift, pin_drift

    def done(model, weights):
        c = Cell(f"{model}.percentile.w4a4.s0", "h", tmp_path / model, {"model": model, "checkpoint": None})
        return c, "done", {"status": "done", "spec": dict(c.spec), "weights": weights}

    pinned = str(zoo.get_entry("vit_base_patch16_224").timm_name)
    default = f"vit_base_patch16_224.{timm.models.get_pretrained_cfg('vit_base_patch16_224').tag}"
    old = done("vit_base_patch16_224", None)
    assert pin_drift(old[0], old[2]) == ((default, pinned) if default != pinned else None)
    if default != pinned:
        with pytest.raises(ConfigError, match=rf"label L: 1 done cell\(s\) ran before the zoo pinned their timm "
                                              rf"weights, with timm's default {re.escape(default)}"):
            check_drift([old], "L")
    check_drift([done("vit_base_patch16_224", {"file": "/hub/m.safetensors", "sha256": None, "timm": pinned})], "L")
    deit = done("deit_tiny_patch16_224", None)  # timm's default is the pinned tag: the same model
    assert pin_drift(deit[0], deit[2]) is None
    tiny = done("tiny_vit", None)
    assert pin_drift(tiny[0], tiny[2]) is None
    ck = done("vit_base_patch16_224", None)
    ck[2]["spec"]["checkpoint"] = "/ck/vit_b.pth"
    assert pin_drift(ck[0], ck[2]) is None


def test_only_runs_keep_the_whole_grid_in_status_and_report(tmp_path, capsys):
    """``--only`` runs a subset; ``suite status`` still lists every cell of the grid (the others
    pending) and the report names the cells without a result and does not claim every cell has
    all seeds."""
    suite = write_suite(tmp_path / "part.yaml", bits=["W4A4", "W8A8"], seeds=[0, 1], eval_limit=50)
    out = tmp_path / "runs"
    base = ["suite", "run", str(suite), "--out", str(out), "--label", "P", "--executor", "debug", "--no-mirror",
            "--no-pdf"]
    assert main([*base, "--only", r"w4a4\.s0$"]) == 0
    capsys.readouterr()
    assert main(["suite", "status", "part", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 done, 3 pending" in text and text.count("pending ") == 3, text
    assert main([*base, "--only", r"w8a8"]) == 0  # a second subset: the first one's cell stays listed
    text = capsys.readouterr().out
    assert "1 of the 4 cells of the grid have no finished result" in text and "tiny_vit.percentile.w4a4.s1" in text
    assert "Mean ± std over the seeds that finished: 1 to 2 per cell (sample std, n−1)." in text
    assert main(["suite", "status", "part", "--out", str(out)]) == 0
    assert "3 done, 1 pending" in capsys.readouterr().out


def test_a_cell_whose_reconstruction_diverged_is_done_with_a_warning_everywhere(tmp_path, capsys, monkeypatch):
    """A reconstruction that diverges but stays finite (lr_round=1e6; one unit, 30 iterations)
    ends done, and its warning reaches the record, the run's summary, status and the report."""
    suite = write_suite(tmp_path / "div.yaml", eval_limit=50, methods=[{"name": "qdrop", "calib": 32, "config": {
        "iters": 30, "lr_round": 1e6, "check_every": 10, "units": "^patch_embed$"}}])
    out = tmp_path / "runs"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # the default store under --out
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "L", "--executor", "debug",
                 "--threads", "1", "--no-pdf"]) == 0
    cap = capsys.readouterr()
    (cell,) = cell_dirs(out / "div" / "L").values()
    r = rec(cell)
    assert r["status"] == "done" and len(r["warnings"]) == 1
    assert r["warnings"][0].startswith("qdrop: unit patch_embed (joint stage): its output error on the calibration")
    (unit,) = r["method"]["info"]["recon"][0]["stages"][0]["units"]
    assert unit["out_mse"]["final"] > 1.5 * unit["out_mse"]["init"]
    assert f"warning: {r['warnings'][0]}" in (cell / "cell.log").read_text()
    assert "warnings: 1 cell(s) done with warnings in their record" in cap.out
    assert "ran with a warning" in cap.out and (out / "div" / "L" / "report" / "notes.md").is_file()
    assert json.loads((out / "div" / "L" / "summary.json").read_text())["warned"] == [r["id"]]
    assert main(["suite", "status", "div", "--out", str(out)]) == 0
    assert "1 warning(s) in the record" in capsys.readouterr().out
    from mgrq.tracking import default_uri
    from reports.frame import mlflow_frame

    assert list(mlflow_frame(default_uri(out), "div", ["L"])["warnings"]) == [1]  # the MLflow mirror too


def test_local_gpu_pool():
    """Local jobs take the GPUs the driver sees, one each in turn; --gpus 0 hides them; a suite's
    gpus_per_node: 1 (a SLURM request) does not shrink the pool to GPU 0."""
    opts = ex.ExecutorOptions()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "cuda_count", lambda: 2)
        assert ex.local_gpus(opts, env={}) == ["0", "1"]
        assert ex.local_gpus(ex.ExecutorOptions(gpus_per_node=1), env={}) == ["0", "1"]
        assert ex.local_gpus(opts, env={"CUDA_VISIBLE_DEVICES": "2, 3"}) == ["2", "3"]
        assert ex.local_gpus(opts, env={"CUDA_VISIBLE_DEVICES": "GPU-a1,GPU-b2,GPU-c3"}) == ["GPU-a1", "GPU-b2"]
        assert ex.local_gpus(ex.ExecutorOptions(gpus_per_node=0), env={}) == []
        mp.setattr(ex, "cuda_count", lambda: 0)
        assert ex.local_gpus(opts, env={"CUDA_VISIBLE_DEVICES": "0"}) == []


def test_each_local_job_runs_on_its_own_gpu(tmp_path, capsys, monkeypatch):
    """The driver hands each local job one entry of its CUDA_VISIBLE_DEVICES; the job sets it
    before CUDA starts and records it (no GPU here: the ids only travel, the cells run on CPU)."""
    from mgrq.runner import executors as ex

    monkeypatch.setattr(ex, "cuda_count", lambda: 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    suite = write_suite(tmp_path / "gpus.yaml", seeds=[0, 1], eval_limit=50, executor={"gpus_per_node": 1})
    out = tmp_path / "runs"
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "G", "--executor", "local",
                 "--parallelism", "2", "--threads", "1", "--no-report", "--no-mirror"]) == 0
    text = capsys.readouterr().out
    assert "2 job(s) side by side, 1 torch thread(s) each, one GPU each in turn from CUDA devices 5,7" in text
    # each finished cell's line gives the time since submission and, until the last, the time left
    done = [ln for ln in text.splitlines() if "] done   " in ln]
    dur = r"\d+(m\d\ds|s)"
    assert re.search(rf"^\[1/2\] done .* in [0-9.]+s  \[{dur} elapsed, ~{dur} left\]$", done[0]), done
    assert re.search(rf"^\[2/2\] done .* in [0-9.]+s  \[{dur} elapsed\]$", done[1]), done
    execs = [rec(d)["executor"] for d in cell_dirs(out / "gpus" / "G").values()]
    assert len(execs) == 2
    by_job = {e["job_id"]: e["cuda_visible_devices"] for e in execs}
    # two jobs ran on 5 and 7; one job that ran both cells ran them on the same one
    assert set(by_job.values()) <= {"5", "7"} and len(set(by_job.values())) == len(by_job), execs
    # whichever job ran the cells: the driver submitted two jobs, one on each GPU
    pickles = sorted(out.rglob("*_submitted.pkl"))
    assert len(pickles) == 2, pickles
    jobs = [pickle.loads(p.read_bytes()).function for p in pickles]
    assert sorted(j.gpu for j in jobs) == ["5", "7"] and sorted(j.owner for j in jobs) == [0, 1]


def test_tree_sha_marks_code_changes_only(tmp_path):
    """A change to the code (not to docs or a results.csv) marks the tree dirty, with a hash of
    the change: two different changes on one commit do not read the same. A new file under the
    code's folders that git does not ignore is a change too."""
    def git(*a):
        subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True)

    (tmp_path / "mgrq").mkdir()
    (tmp_path / "docs").mkdir()
    (tmp_path / "mgrq" / "x.py").write_text("a = 1\n")
    (tmp_path / "docs" / "r.csv").write_text("top1\n90\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "c")
    head = subprocess.run(["git", "-C", str(tmp_path), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    assert records.tree_sha(tmp_path) == head
    (tmp_path / "docs" / "r.csv").write_text("top1\n91\n")
    assert records.tree_sha(tmp_path) == head
    (tmp_path / "mgrq" / "x.py").write_text("a = 2\n")
    one = records.tree_sha(tmp_path)
    (tmp_path / "mgrq" / "x.py").write_text("a = 3\n")
    two = records.tree_sha(tmp_path)
    assert one.startswith(f"{head}+dirty.") and two.startswith(f"{head}+dirty.") and one != two
    assert records.short_sha(one) == f"{head[:12]}+dirty.{one[-8:]}" and records.short_sha(None) == "unknown"
    git("checkout", "-q", "--", "mgrq/x.py")
    (tmp_path / "mgrq" / "new.py").write_text("b = 1\n")  # a new module not yet added: the code differs too
    three = records.tree_sha(tmp_path)
    (tmp_path / "mgrq" / "new.py").write_text("b = 2\n")
    assert three.startswith(f"{head}+dirty.") and records.tree_sha(tmp_path) not in (three, one, two)
    (tmp_path / ".gitignore").write_text("mgrq/new.py\n")  # an ignored file (a build output) does not count
    assert records.tree_sha(tmp_path) == head
    (tmp_path / "mgrq" / ".x.py.swp").write_bytes(b"\0swap")  # nor an editor's swap file, nor data
    (tmp_path / "mgrq" / "images.tar").write_bytes(b"\0" * 1000)
    assert records.tree_sha(tmp_path) == head
    # other paths count as code when the caller says so (the benchmarks count their own folder)
    (tmp_path / "benchmarks").mkdir()
    (tmp_path / "benchmarks" / "b.py").write_text("c = 1\n")
    assert records.tree_sha(tmp_path) == head
    assert records.tree_sha(tmp_path, (*records.CODE_PATHS, "benchmarks")).startswith(f"{head}+dirty.")
    assert records.tree_sha(tmp_path / "docs" / "nope") is None


def test_a_rerun_failed_cell_is_reported_once_with_its_new_outcome(tmp_path, capsys):
    """Until its job starts it again, a failed cell keeps the record of its earlier run: the
    driver must not print that old failure as this run's result (and then never the new one)."""
    suite = write_suite(tmp_path / "re.yaml", methods=[DIVERGES])
    out = tmp_path / "runs"
    argv = ["suite", "run", str(suite), "--out", str(out), "--label", "R", "--threads", "1", "--no-mirror"]
    assert main([*argv, "--executor", "debug"]) == 1
    assert "report:   none written: no cell of the label has finished" in capsys.readouterr().out  # said, not skipped
    argv.append("--no-report")
    (cell,) = cell_dirs(out / "re" / "R").values()
    old = rec(cell)
    old["error"]["message"] = "OLD-ERROR from an earlier run"
    (cell / "record.json").write_text(json.dumps(old))
    capsys.readouterr()
    assert main([*argv, "--executor", "local", "--parallelism", "1"]) == 1
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "FAILED" in ln]
    assert len(lines) == 1 and DIVERGED in lines[0] and "OLD-ERROR" not in lines[0], lines
    assert DIVERGED in rec(cell)["error"]["message"]


def test_progress_clock():
    from mgrq.runner.driver import _clock

    assert _clock(0, 10, 59.6) == "1m00s elapsed"
    assert _clock(3, 10, 90) == "1m30s elapsed, ~3m30s left"  # 30 s a cell, 7 cells to go
    assert _clock(1, 2, 4000) == "1h06m elapsed, ~1h06m left"
    assert _clock(10, 10, 5) == "5s elapsed"


def test_a_changed_method_config_is_named_field_by_field():
    from mgrq.runner.driver import spec_changes

    old = {"method": "mgrq", "device": "cpu", "method_config": {"iters": 30, "local_metric": "moments", "w_global": 0.03}}
    new = {"method": "mgrq", "device": "cuda", "method_config": {"iters": 40, "local_metric": "moments"}}
    assert spec_changes(old, new) == ["method_config.iters: 30 -> 40", "method_config.w_global: 0.03 -> (unset)"]


def test_the_failure_summary_points_at_the_cell_folder_that_failed(tmp_path, capsys):
    """A label may hold an older folder of the same run id (the cell ran before with other
    options: another hash); the closing summary names the folder of the cell that just failed."""
    out = tmp_path / "runs"
    argv = ["--out", str(out), "--label", "L", "--executor", "debug", "--threads", "1", "--no-mirror", "--no-report"]
    (tmp_path / "v1").mkdir()
    (tmp_path / "v2").mkdir()
    ok = write_suite(tmp_path / "v1" / "twice.yaml", methods=[{"name": "percentile", "variant": "q-nan", "calib": 8}])
    assert main(["suite", "run", str(ok), *argv]) == 0
    bad = write_suite(tmp_path / "v2" / "twice.yaml", methods=[DIVERGES])  # the same cell id, other settings
    capsys.readouterr()
    note = ("note: label L was run before with another grid; 1 of its cells is in this grid with other settings "
            "(method: percentile -> qdrop; method_config.check_every: (unset) -> 1; method_config.init_calib: "
            "(unset) -> 8; ...), so it runs again in a folder of its own: the old folders stay")
    assert main(["suite", "run", str(bad), *argv, "--dry-run"]) == 0  # the preview says so too
    assert note in capsys.readouterr().out
    assert main(["suite", "run", str(ok), *argv, "--dry-run"]) == 0  # the grid it ran: nothing to say
    assert "another grid" not in capsys.readouterr().out
    assert main(["suite", "run", str(bad), *argv]) == 1
    text = capsys.readouterr().out
    assert note in text
    folders = sorted((out / "twice" / "L").glob("tiny_vit.q-nan.w4a4.s0-*"))
    failed = [d for d in folders if rec(d)["status"] == "failed"]
    assert len(folders) == 2 and len(failed) == 1
    assert ("failed: tiny_vit.q-nan.w4a4.s0: ReconstructionError: " in text
            and f"(log: {failed[0]}/cell.log)" in text), text



def test_a_local_job_deaf_to_sigterm_is_killed(tmp_path):
    """The driver's last resort after Ctrl-C: SIGKILL to the task and its controller (submitit's
    cancel sends SIGINT first, which local jobs ignore). A plain submitit task logs SIGTERM and
    carries on, like a job stuck in a long native call."""
    import submitit

    from mgrq.runner.driver import _kill_local_job, _sigint_ignored, _stop_local_job, descendants

    def gone(pid: int) -> bool:  # exited (a zombie until its new parent reaps it counts)
        try:
            return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
        except OSError:
            return True

    executor = submitit.LocalExecutor(folder=str(tmp_path / "jobs"))
    executor.update_parameters(timeout_min=5)
    with _sigint_ignored():
        job = executor.submit(time.sleep, 120)
    ctrl = job._process.pid
    _wait_for(lambda: bool(descendants(ctrl)), 60, "the task to start")
    (task,) = descendants(ctrl)

    def catches_sigterm() -> bool:  # submitit's handler is installed (SigCgt of /proc/PID/status)
        try:
            status = Path(f"/proc/{task}/status").read_text()
        except OSError:
            return False
        mask = next(ln.split()[1] for ln in status.splitlines() if ln.startswith("SigCgt:"))
        return bool(int(mask, 16) & (1 << (signal.SIGTERM - 1)))

    _wait_for(catches_sigterm, 60, "the task to handle SIGTERM")
    _stop_local_job(job)  # SIGTERM: logged and ignored by the task
    time.sleep(2)
    assert not job.done() and not gone(task)
    _kill_local_job(job)
    _wait_for(lambda: job.done(), 15, "the controller to end")
    _wait_for(lambda: gone(task), 15, "the task to end")


def test_records_are_written_with_the_umask_permissions(tmp_path):
    """A record is readable as any file the process creates (a shared runs/ folder), not private
    as mkstemp makes its temp files; a private umask still gives a private record."""
    from mgrq import records

    old = os.umask(0o022)
    try:
        p = records.write_record(tmp_path / "a" / "record.json", {"status": "done"})
        assert p.stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        q = records.write_record(tmp_path / "b" / "record.json", {"status": "done"})
        assert q.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert json.loads(p.read_text()) == {"status": "done"}


def test_records_and_events_are_strict_json(tmp_path):
    """JSON has no NaN: a diverged loss in a record or an event line is written as null (a strict
    reader such as JavaScript's or jq's reads it), NumPy and 0-d torch numbers as numbers."""
    import numpy as np
    import torch

    from mgrq.runner.layout import append_event

    def strict(text: str):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))

    info = {"out_mse": {"init": 0.5, "final": float("nan")}, "max": float("inf"), "neg": -float("inf"),
            "np": np.float32(0.25), "t": torch.tensor(3), "shape": (2, 3), "path": tmp_path, 7: "key"}
    p = records.write_record(tmp_path / "c" / "record.json", {"status": "done", "info": info})
    assert strict(p.read_text())["info"] == {"out_mse": {"init": 0.5, "final": None}, "max": None, "neg": None,
                                             "np": 0.25, "t": 3, "shape": [2, 3], "path": str(tmp_path),
                                             "7": "key"}
    cell = Cell("x", "h", tmp_path / "c", {})
    append_event(cell, "lost", loss=float("nan"))
    (line,) = (tmp_path / "c" / "events.jsonl").read_text().splitlines()
    assert strict(line)["loss"] is None


def test_an_interrupted_cell_is_listed_as_such_not_as_a_failure(tmp_path, capsys):
    """A cell stopped by Ctrl-C or a cancelled job has a failed record of type Interrupted: the
    dry run and `suite status` show it as interrupted, and a report leaves it out of the tables
    (no result, not a failure of the method) and names it among the cells without a result."""
    from reports.build import build_report
    from reports.frame import records_frame

    suite = write_suite(tmp_path / "intr.yaml", seeds=[0, 1], eval_limit=50)
    out = tmp_path / "runs"
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "I", "--executor", "debug",
                 "--no-report", "--no-mirror"]) == 0
    cells = cell_dirs(out / "intr" / "I")
    stopped = cells["tiny_vit.percentile.w4a4.s1"] / "record.json"
    r = json.loads(stopped.read_text())
    # an older finished record of the cell under another hash (a run with other options): the
    # newest record, interrupted, hides it, as a newer finished one would
    old = {**r, "hash": "0ldhash0", "finished": "2000-01-01T00:00:00+00:00"}
    records.write_record(out / "intr" / "I" / "tiny_vit.percentile.w4a4.s1-0ldhash0" / "record.json", old)
    r.update(status="failed", error={"type": "Interrupted", "message": "stopped", "traceback": ""})
    r.pop("metrics")
    records.write_record(stopped, r)
    capsys.readouterr()
    assert main(["suite", "status", "intr", "--out", str(out), "--label", "I"]) == 0
    text = capsys.readouterr().out
    assert re.search(r"^  interrupted tiny_vit\.percentile\.w4a4\.s1 ", text, re.M) and "1 done, 1 interrupted" in text
    assert main(["suite", "run", str(suite), "--out", str(out), "--label", "I", "--dry-run"]) == 0
    assert "2 cells: 1 done, 0 failed, 1 running/interrupted/stale, 0 not started -> 1 to run" in capsys.readouterr().out
    # a record left `running` by a local job that is gone (killed with no driver watching) is
    # stale; one whose job process lives is running
    ended = subprocess.Popen([sys.executable, "-c", "pass"])
    ended.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "submitit"])
    try:
        for pid, shown in ((ended.pid, "stale"), (alive.pid, "running")):
            records.write_record(stopped, {**r, "status": "running", "error": None,
                                           "executor": {"name": "local", "host": records.host(), "pid": pid}})
            assert main(["suite", "status", "intr", "--out", str(out), "--label", "I"]) == 0
            text = capsys.readouterr().out
            assert re.search(rf"^  {shown} +tiny_vit\.percentile\.w4a4\.s1\b", text, re.M), text
            assert ("note: 1 cell(s) stale" in text) == (shown == "stale")
            assert (f"`mgrq suite run intr --out {out} --label I` runs it again" in text) == (shown == "stale")
        # a driver of the label still runs here (it waits for its jobs; a cell it resubmitted keeps its
        # old record until the new job starts): nothing is stale; one started elsewhere cannot be asked
        records.write_record(stopped, {**r, "status": "running", "error": None,
                                       "executor": {"name": "local", "host": records.host(), "pid": ended.pid}})
        import fcntl

        lock = out / "intr" / "I" / ".driver.lock"
        lock.write_text(f"pid 1 on {records.host()} since now")
        with open(lock) as held:  # what a live driver does: its lock file locked for its whole life
            fcntl.flock(held, fcntl.LOCK_EX)
            assert main(["suite", "status", "intr", "--out", str(out), "--label", "I"]) == 0
            text = capsys.readouterr().out
            assert re.search(r"^  running +tiny_vit\.percentile\.w4a4\.s1\b", text, re.M) and "stale" not in text
        assert main(["suite", "status", "intr", "--out", str(out), "--label", "I"]) == 0  # the lock left behind
        assert "note: 1 cell(s) stale" in capsys.readouterr().out
        lock.write_text("pid 1 on login-node-7 since now")
        assert main(["suite", "status", "intr", "--out", str(out), "--label", "I"]) == 0
        assert "(unless the driver started on login-node-7 still runs this label" in capsys.readouterr().out
        lock.unlink()
    finally:
        alive.kill()
        records.write_record(stopped, r)  # interrupted again
    assert list(records_frame(out, "intr", ["I"])["run_id"]) == ["tiny_vit.percentile.w4a4.s0"]
    from mgrq.runner.driver import _progress_line

    cell = Cell("tiny_vit.percentile.w4a4.s1", r["hash"], stopped.parent, {})
    assert _progress_line(2, 2, cell, r) == ("[2/2] INTERRUPTED tiny_vit.percentile.w4a4.s1: stopped before the end; "
                                             "the next run of the suite redoes it")
    rep = build_report(out, "intr", "I", pdf="no", figures=False)
    assert any("have no finished result: 1 interrupted (tiny_vit.percentile.w4a4.s1)" in n for n in rep.notes), rep.notes
    assert not re.search(r"\bfail\b", rep.main_markdown)  # no cell shows as failed; the mean is marked partial
    assert "\\*" in rep.main_markdown


def test_a_refused_submission_removes_only_a_label_it_created(tmp_path, capsys, monkeypatch):
    """When the executor refuses the submission (sbatch errors) nothing ran: the label this run
    had just created is removed, so it does not become the newest; a label that already held
    records keeps everything. (The real sbatch refusal is in test_slurm.py.)"""
    from mgrq.runner import driver
    from mgrq.runner import executors as ex

    suite = write_suite(tmp_path / "ref.yaml", seeds=[0, 1], eval_limit=50)
    out = tmp_path / "runs"
    run = ["suite", "run", str(suite), "--out", str(out), "--executor", "debug", "--no-report", "--no-mirror"]
    assert main([*run, "--label", "OLD", "--only", r"\.s0$"]) == 0
    old_files = sorted(p.relative_to(out) for p in (out / "ref" / "OLD").rglob("*") if p.is_file())

    def refuse(*a, **k):
        raise ex.SubmitError("sbatch refused the job array (sbatch: error: invalid partition)")

    monkeypatch.setattr(driver, "submit_and_wait", refuse)
    capsys.readouterr()
    assert main([*run, "--label", "NEW"]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: sbatch refused the job array (sbatch: error: invalid partition); no cell was submitted, "
        "and the new label NEW was removed")
    assert not (out / "ref" / "NEW").exists() and (out / "ref" / "OLD").is_dir()
    assert main([*run, "--label", "OLD"]) == 2  # resuming: the s1 cell is refused, the label stays
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: sbatch refused the job array (sbatch: error: invalid partition)")
    now = sorted(p.relative_to(out) for p in (out / "ref" / "OLD").rglob("*") if p.is_file())
    assert set(old_files) <= set(now)


def test_the_other_grid_note_tells_changed_settings_from_cells_left_out(tmp_path):
    """A label's earlier cells whose run ids are in the new grid under another hash (a moved data
    root, another checkpoint path) are named as such, with what changed; cells no longer in the
    grid are named apart; a cell that never ran has no spec to compare."""
    from mgrq.runner.driver import other_grid_note

    root = tmp_path / "L"

    def cell(run_id, h, **spec):
        return Cell(run_id, h, root / f"{run_id}-{h}", {"model": "m", "data_root": "/new", "device": "cuda", **spec})

    old_a, old_b = cell("a", "1", data_root="/old", device="cpu"), cell("b", "2", data_root="/old")
    for c in (old_a,):  # b never ran
        c.dir.mkdir(parents=True)
        records.write_record(c.record_path, {"status": "done", "spec": c.spec})
    prev = {"cells": [{"id": c.run_id, "hash": c.hash, "dir": c.dir.name} for c in (old_a, old_b)]
            + [{"id": "gone", "hash": "3", "dir": "gone-3"}]}
    note = other_grid_note("L", prev, [cell("a", "9"), cell("b", "8")])
    assert note == ("note: label L was run before with another grid; 2 of its cells are in this grid with other "
                    "settings (data_root: /old -> /new); the 1 that ran runs again in a folder of its own; 1 of its "
                    "cells is not in this one (e.g. gone): the old folders stay, but `suite status` lists this grid "
                    "once it runs (a new --label keeps the two apart)")
    assert "2 of its cells are in this grid with other settings, none of which ran; 1 of its cells" in \
        other_grid_note("L", {"cells": prev["cells"][1:] + [{"id": "a", "hash": "7", "dir": "a-7"}]},
                        [cell("a", "9"), cell("b", "8")])
    assert other_grid_note("L", prev, [cell("a", "1"), cell("b", "2"), cell("gone", "3")]) is None


def test_a_job_gives_its_image_decoding_its_thread_budget_less_one():
    import torch

    from mgrq.runner.jobs import set_thread_budget

    before, env = torch.get_num_threads(), dict(os.environ)  # set_thread_budget writes os.environ
    try:
        os.environ.pop("MGRQ_DATA_WORKERS", None)
        set_thread_budget(4)
        assert os.environ["MGRQ_DATA_WORKERS"] == "3"
        os.environ["MGRQ_DATA_WORKERS"] = "0"  # the caller's setting wins
        set_thread_budget(16)
        assert os.environ["MGRQ_DATA_WORKERS"] == "0" and os.environ["OMP_NUM_THREADS"] == "16"
    finally:
        torch.set_num_threads(before)
        os.environ.clear()
        os.environ.update(env)


def test_why_slurm_ended_a_job_is_read_from_its_log():
    """Without accounting a lost SLURM job's state is UNKNOWN; its log's last lines still say."""
    from mgrq.runner.driver import _log_end

    assert _log_end("x\nslurmstepd: error: *** JOB 31 ON vm CANCELLED AT 2026-11-27T17:00:01 ***\n") == (
        "CANCELLED AT 2026-11-27T17:00:01")
    assert _log_end("slurmstepd: error: *** JOB 7 ON n1 CANCELLED AT 2026-11-27T01:00:00 DUE TO TIME LIMIT ***") == (
        "CANCELLED AT 2026-11-27T01:00:00 DUE TO TIME LIMIT")
    assert _log_end("slurmstepd: error: Detected 1 oom_kill event in StepId=9.batch.") == "out of memory (oom-kill)"
    assert _log_end("Traceback ...\nValueError: x") is None and _log_end(None) is None
    requeued = ("*** JOB 9 ON vm CANCELLED AT 2026-11-27T01:00:00 DUE TO JOB REQUEUE ***\n[cell] ...\n"
                "*** JOB 9 ON vm CANCELLED AT 2026-11-27T02:00:00 ***\n")
    assert _log_end(requeued) == "CANCELLED AT 2026-11-27T02:00:00"  # the last end, not the first


def test_a_cancelled_job_is_told_from_one_that_timed_out_or_died():
    """scancel leaves a job's cells interrupted; a time limit, a preemption, an out-of-memory kill
    or a lost node leaves them failed (JobLost). SLURM's state decides; without accounting
    (UNKNOWN), the log's last end."""
    from mgrq.runner.driver import _cancelled

    assert _cancelled("CANCELLED", None) and _cancelled("CANCELLED by 0", None)
    assert not any(_cancelled(s, None) for s in ("TIMEOUT", "PREEMPTED", "NODE_FAIL", "OUT_OF_MEMORY", "FAILED",
                                                 "FINISHED", "INTERRUPTED", "UNKNOWN"))
    assert _cancelled("UNKNOWN", "CANCELLED AT 2026-11-27T02:00:00")
    assert not _cancelled("UNKNOWN", "CANCELLED AT 2026-11-27T01:00:00 DUE TO TIME LIMIT")
    assert not _cancelled("UNKNOWN", "out of memory (oom-kill)")


def test_the_live_slurm_task_guard_reads_squeue(tmp_path, monkeypatch, capsys):
    """Array task ids as squeue -r lists them; only this user's jobs named after the suite; tasks
    SLURM no longer lists are dropped from the file; a squeue that cannot answer lets the run go
    on with a note (a fake squeue on PATH stands in for the cluster)."""
    from mgrq.runner.driver import SLURM_TASKS, check_no_live_slurm_tasks

    jobs, bin_ = tmp_path / "jobs", tmp_path / "bin"
    jobs.mkdir()
    bin_.mkdir()
    squeue = bin_ / "squeue"
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")

    def fake(script):
        squeue.write_text("#!/bin/sh\necho \"$@\" > " + str(tmp_path / "argv") + "\n" + script)
        squeue.chmod(0o755)

    def cell(i):
        return Cell(f"c{i}", "h", tmp_path / f"c{i}", {})

    records.write_record(jobs / SLURM_TASKS, {"tasks": {"77_0": ["c0", "c1"], "77_1": ["c2"], "60": ["c3"]}})
    fake("echo 77_1\n")
    with pytest.raises(ConfigError, match=r"^SLURM job\(s\) 77_1 of an earlier `suite run` of this label still hold 1 "
                                          r"of its unfinished cells \(e.g. c2\).*scancel 77\)"):
        check_no_live_slurm_tasks(jobs, [cell(i) for i in range(4)], "s")
    argv = (tmp_path / "argv").read_text().split()
    assert argv[argv.index("-n") + 1] == "mgrq-s" and "-u" in argv and argv[argv.index("-j") + 1] == "60,77"
    assert json.loads((jobs / SLURM_TASKS).read_text()) == {"tasks": {"77_1": ["c2"]}}  # the rest have ended
    check_no_live_slurm_tasks(jobs, [cell(0), cell(1)], "s")  # cells no live task holds: go on
    fake("echo 'slurm_load_jobs error: Unable to contact slurm controller' >&2\nexit 1\n")
    check_no_live_slurm_tasks(jobs, [cell(2)], "s")
    assert "squeue could not say whether the label's earlier SLURM jobs (77) still run" in capsys.readouterr().err
    assert json.loads((jobs / SLURM_TASKS).read_text()) == {"tasks": {"77_1": ["c2"]}}  # nothing dropped then


def test_a_stop_wrapped_by_python_is_recorded_as_interrupted(tmp_path, monkeypatch):
    """A stop that lands while a job imports method code can reach the cell as
    ``RuntimeError: Error calling __set_name__ ...`` (Python < 3.12 wraps exceptions raised there);
    the cell is recorded as Interrupted and the job stops, as for a plain KeyboardInterrupt. An
    ordinary error stays a failure of its own type."""
    import mgrq.run
    from mgrq.runner.jobs import run_cell
    from mgrq.runner.suite import load_suite

    (spec,) = load_suite(str(write_suite(tmp_path / "w.yaml", eval_limit=50))).specs()
    cell = Cell(spec.run_id, spec.content_hash, tmp_path / "cell", spec.to_dict())
    cell.dir.mkdir()

    def wrapped_stop(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as e:
            raise RuntimeError("Error calling __set_name__ on 'Field' instance 'warnings' in 'RunContext'") from e

    monkeypatch.setattr(mgrq.run, "execute", wrapped_stop)
    with pytest.raises(KeyboardInterrupt):
        run_cell(cell, {}, "local", 1)
    assert rec(cell.dir)["error"]["type"] == "Interrupted"

    def broken(*a, **k):
        raise RuntimeError("a real failure")

    monkeypatch.setattr(mgrq.run, "execute", broken)
    assert run_cell(cell, {}, "local", 1)["status"] == "failed"
    assert rec(cell.dir)["error"]["type"] == "RuntimeError"
