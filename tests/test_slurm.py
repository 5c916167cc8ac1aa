"""The slurm executor against a real SLURM cluster (``bash .ci/slurm-up.sh`` starts one; CI
sets MGRQ_REQUIRE_SLURM=1 so these fail instead of skipping when it is missing).

One grid of 4 cells is submitted as a job array: 2 tasks of 2 cells each, at most 2 at once.
While the first task runs its second cell, the test requeues it with ``scontrol requeue`` (the
preemption path): SLURM sends SIGTERM, the job stops at once (mgrq.runner.jobs), comes back,
skips its finished first cell and redoes the interrupted one, which completes exactly once, with
the same result as an in-process run of its spec.
Then the records and the MLflow runs are checked.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from harness_helpers import cli_env, require_slurm, write_suite

from mgrq.runner.layout import read_events

pytestmark = [pytest.mark.slurm, pytest.mark.filterwarnings("ignore:.*noload.*")]


def _squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T %r", "-j", job_id.split("_")[0]],
                         capture_output=True, text=True, timeout=30)
    for line in out.stdout.splitlines():
        parts = line.split()
        if parts and parts[0] == job_id:
            return " ".join(parts[1:])
    return "GONE"


def _cells(root: Path) -> dict[str, Path]:
    return {p.name.rsplit("-", 1)[0]: p for p in root.glob("*-*") if (p / "record.json").exists()}


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    require_slurm()
    tmp = tmp_path_factory.mktemp("slurm")
    suite = write_suite(tmp / "sgrid.yaml", bits=["W4A4", "W8A8", "W6A6", "W5A5"], eval_limit=None)
    out = tmp / "runs"
    argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(out),
            "--label", "S", "--executor", "slurm", "--array-parallelism", "2", "--threads", "1",
            "--cells-per-job", "2", "--timeout-min", "10", "--no-report"]
    root = out / "sgrid" / "S"
    proc = subprocess.Popen(argv, cwd=tmp, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    requeued: dict[str, str] = {}
    try:
        t0 = time.time()
        first, second = "tiny_vit.percentile.w4a4.s0", "tiny_vit.percentile.w8a8.s0"  # task 0
        while not requeued:  # requeue task 0 while it runs its second cell
            if proc.poll() is not None:
                out_, err_ = proc.communicate()
                pytest.fail(f"driver exited before the second cell started:\n{out_}\n{err_}")
            if time.time() - t0 > 240:
                pytest.fail("the second cell of task 0 did not start within 240 s")
            cells = _cells(root) if root.is_dir() else {}
            events = read_events(cells[second]) if second in cells else []
            if events and events[0]["event"] == "start":
                job = events[0]["job_id"]
                subprocess.run(["scontrol", "requeue", job], check=True, timeout=30)
                requeued = {"cell": second, "skipped": first, "job": job,
                            "events_at_requeue": json.dumps(events)}
            time.sleep(0.1)
        # A requeued job waits ~2 minutes (BeginTime) before it may start again; release it.
        def restarted() -> bool:
            return any(e["event"] == "start" and e.get("restart") == 1
                       for e in read_events(_cells(root)[requeued["cell"]]))

        # Not before the killed instance is cleaned up: a job released at once is started on
        # the node while its old credential is still revoked there, and SLURM kills it.
        t0 = time.time()
        time.sleep(4)
        while time.time() - t0 < 120 and not restarted() and proc.poll() is None:
            if _squeue_state(requeued["job"]).startswith("PENDING"):
                subprocess.run(["scontrol", "update", f"jobid={requeued['job']}", "StartTime=now"],
                               capture_output=True, timeout=30)
            time.sleep(0.5)
        stdout, stderr = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            subprocess.run(["scancel", "--name", "mgrq-sgrid"], capture_output=True)
    return {"out": out, "root": root, "suite": suite, "rc": proc.returncode, "stdout": stdout,
            "stderr": stderr, **requeued}


def test_slurm_job_array_records_and_mlflow(slurm_run):
    r = slurm_run
    assert r["rc"] == 0, r["stdout"] + r["stderr"]
    assert "with 2 tasks, at most 2 at once" in r["stdout"]
    assert "4 cells: 4 done, 0 skipped (done before), 0 failed" in r["stdout"]
    cells = _cells(r["root"])
    recs = {n: json.loads((d / "record.json").read_text()) for n, d in cells.items()}
    assert len(recs) == 4 and {x["status"] for x in recs.values()} == {"done"}
    ex = [x["executor"] for x in recs.values()]
    assert {e["name"] for e in ex} == {"slurm"}
    array_id = ex[0]["slurm_array_job_id"]
    assert array_id and {e["slurm_array_job_id"] for e in ex} == {array_id}
    assert sorted(e["slurm_array_task_id"] for e in ex) == ["0", "0", "1", "1"]
    assert all(e["slurm_job_id"] and e["slurm_partition"] for e in ex)
    assert all(x["torch_threads"] == 1 and 80 < x["metrics"]["top1"] <= 100 for x in recs.values())
    tasks = json.loads((r["root"] / "jobs" / "slurm-tasks.json").read_text())["tasks"]  # for a later driver
    assert sorted(tasks) == [f"{array_id}_0", f"{array_id}_1"] and sorted(sum(tasks.values(), [])) == sorted(recs)
    script = (r["root"] / "jobs" / f"{array_id}_submission.sh").read_text()
    assert "#SBATCH --array=0-1%2" in script and "#SBATCH --cpus-per-task=1" in script

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{r['out'].resolve()}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("sgrid").experiment_id])
    assert len(runs) == 4 and {x.info.status for x in runs} == {"FINISHED"}
    by_id = {x.data.tags["run_id"]: x for x in runs}
    for name, rec in recs.items():
        run = by_id[name]
        assert run.data.metrics["top1"] == rec["metrics"]["top1"]
        assert run.data.tags["slurm_job_id"] == rec["executor"]["slurm_job_id"]
        assert run.data.tags["label"] == "S" and run.data.tags["content_hash"] == rec["hash"]


def test_requeued_job_resumes_its_cell_once_with_the_right_result(slurm_run):
    r = slurm_run
    assert r["rc"] == 0, r["stdout"] + r["stderr"]
    cells = _cells(r["root"])
    d = cells[r["cell"]]
    events = read_events(d)
    kinds = [(e["event"], e.get("restart")) for e in events]
    # interrupted while running, started again by the requeued job, finished once
    assert kinds == [("start", 0), ("start", 1), ("done", None)], (kinds, r["events_at_requeue"])
    rec = json.loads((d / "record.json").read_text())
    assert rec["status"] == "done" and rec["executor"]["slurm_restart_count"] == 1
    assert rec["executor"]["job_id"] == r["job"]
    for name, other in cells.items():  # the first cell of task 0 was done: skipped, not rerun
        if name != r["cell"]:
            assert [e["event"] for e in read_events(other)] == ["start", "done"], name
    log = (r["root"] / "jobs" / f"{r['job']}_0_log.out").read_text()
    assert f"[cell] {r['skipped']}: done before, skipped" in log

    from mgrq.run import execute
    from mgrq.spec import RunSpec

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the job (and fast on a busy 2-core machine)
    try:
        expected = execute(RunSpec.from_dict(rec["spec"]), progress=False)
    finally:
        torch.set_num_threads(threads)
    assert rec["metrics"]["top1"] == expected["metrics"]["top1"]
    assert rec["calibration"]["ids_hash"] == expected["calibration"]["ids_hash"]


def test_a_refused_submission_leaves_no_new_label(tmp_path):
    """sbatch refusing the array (an unknown partition) is one error line, and the label the run
    had just created is gone: it would be the suite's newest (report's default) with no cell."""
    require_slurm()
    suite = write_suite(tmp_path / "refused.yaml", eval_limit=50)
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(out), "--label", "R",
            "--executor", "slurm", "--partition", "no_such_partition", "--no-report", "--no-mirror"]
    p = subprocess.run(argv, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr
    line = p.stderr.strip().splitlines()[-1]  # after sbatch's own lines
    assert line.startswith("error: sbatch refused the job array (") and "the new label R was removed" in line
    assert not (out / "refused").exists()


def test_a_rerun_refuses_cells_that_live_jobs_of_an_earlier_driver_hold(tmp_path, capsys):
    """A driver killed while its SLURM jobs run leaves them running: a rerun of the label must not
    submit their cells again (both copies would run and write the same records). The label's
    jobs/slurm-tasks.json says which task holds which cell; squeue says which still live."""
    require_slurm()
    from mgrq import records
    from mgrq.cli import main
    from mgrq.runner.suite import load_suite

    suite = write_suite(tmp_path / "live.yaml", eval_limit=50)
    spec = load_suite(suite).specs()[0]
    cell = spec.run_id
    sleeper = subprocess.run(["sbatch", "--parsable", "-J", "mgrq-live", "-o", "/dev/null", "--wrap", "sleep 300"],
                             capture_output=True, text=True, timeout=60, check=True).stdout.strip().split(";")[0]
    status = ["suite", "status", "live", "--out", str(tmp_path / "runs"), "--label", "L"]
    try:
        jobs = tmp_path / "runs" / "live" / "L" / "jobs"  # as the killed driver left the label
        jobs.mkdir(parents=True)
        records.write_record(jobs / "slurm-tasks.json", {"tasks": {sleeper: [cell]}})
        records.write_record(jobs.parent / "suite.json", {"created": records.now()})
        records.write_record(jobs.parent / f"{cell}-{spec.content_hash}" / "record.json", {
            "schema": 1, "id": cell, "hash": spec.content_hash, "status": "running", "spec": spec.to_dict(),
            "executor": {"name": "slurm", "job_id": sleeper, "host": "node7"}})
        assert main(status) == 0
        assert re.search(rf"^  running +{re.escape(cell)} .*job {sleeper}$", capsys.readouterr().out, re.M)
        argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(tmp_path / "runs"),
                "--label", "L", "--executor", "slurm", "--no-report", "--no-mirror"]
        p = subprocess.run(argv, cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
        assert p.returncode == 2, p.stdout + p.stderr
        assert p.stderr.strip() == (f"error: SLURM job(s) {sleeper} of an earlier `suite run` of this label still hold "
                                    f"1 of its unfinished cells (e.g. {cell}), queued or running; expected none: wait "
                                    f"for them (squeue -j {sleeper}) or cancel them (scancel {sleeper}), then run the "
                                    "suite again")
        dry = subprocess.run([*argv, "--dry-run"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                             timeout=120)
        assert dry.returncode == 0 and f"note: the run would stop here: SLURM job(s) {sleeper}" in dry.stdout
    finally:
        subprocess.run(["scancel", sleeper], timeout=60)
    deadline = time.time() + 60
    while _squeue_state(sleeper) != "GONE" and time.time() < deadline:
        time.sleep(1)
    # once the job is gone the same rerun goes ahead (a dry run shows it without a note), and the
    # cell whose record still says running is shown stale, with what to do
    dry = subprocess.run([*argv, "--dry-run"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and "would stop here" not in dry.stdout
    assert re.search(rf"^  stale +{re.escape(cell)} ", dry.stdout, re.M), dry.stdout
    assert "1 cell: 0 done, 0 failed, 1 running/interrupted/stale, 0 not started -> 1 to run" in dry.stdout
    assert "note: 1 cell(s) stale: the record says running" in dry.stdout
    assert main(status) == 0
    text = capsys.readouterr().out
    assert re.search(rf"^  stale +{re.escape(cell)} ", text, re.M) and "1 stale" in text, text
    assert ("note: 1 cell(s) stale: the record says running, but its job is gone (killed or cancelled while no driver "
            f"watched); `mgrq suite run live --out {tmp_path / 'runs'} --label L` runs it again") in text


def test_a_dry_run_asks_the_scheduler_about_the_slurm_options(tmp_path):
    """`--dry-run --executor slurm` runs `sbatch --test-only` with the array's options: a partition
    or GPU request the cluster refuses shows up when a nightly run is set up, not at 01:30."""
    require_slurm()
    suite = write_suite(tmp_path / "t.yaml", bits=["W4A4", "W8A8"])
    argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(tmp_path / "runs"), "--dry-run",
            "--executor", "slurm", "--cells-per-job", "1"]

    def run(*extra):
        return subprocess.run([*argv, *extra], cwd=tmp_path, env=cli_env(), capture_output=True, text=True,
                              timeout=120)

    ok = run()
    assert ok.returncode == 0 and "slurm: sbatch --test-only takes a 2-task array with these options (" in ok.stdout
    bad = run("--partition", "no_such_partition")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1].startswith(
        "error: sbatch --test-only refuses these options (sbatch: error: invalid partition specified: no_such_partition)")
    queued = subprocess.run(["squeue", "-h", "-n", "mgrq-t"], capture_output=True, text=True, timeout=30).stdout
    assert not (tmp_path / "runs").exists() and queued.strip() == ""  # nothing submitted


@pytest.mark.slow  # ~20 s; CI runs it (nox -s tests_slow)
def test_a_cancelled_job_leaves_its_cell_interrupted_not_failed(tmp_path):
    """`scancel` of a running job (what the driver suggests for live jobs) stops its cell: no
    result and no failure of the method, so it is shown `interrupted` (a report leaves it out,
    not "fail") and the next run of the suite redoes it."""
    require_slurm()
    slow = {"name": "qdrop", "calib": 8, "config": {"iters": 100000, "batch": 4}}  # minutes: cancelled long before
    suite = write_suite(tmp_path / "cxl.yaml", methods=[slow], eval_limit=50)
    out = tmp_path / "runs"
    argv = [sys.executable, "-m", "mgrq", "suite", "run", str(suite), "--out", str(out), "--label", "C",
            "--executor", "slurm", "--threads", "1", "--no-report", "--no-mirror"]
    root = out / "cxl" / "C"
    proc = subprocess.Popen(argv, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        t0 = time.time()
        while not any(e["event"] == "start" for d in root.glob("*-*") for e in read_events(d)):
            if proc.poll() is not None or time.time() - t0 > 240:
                pytest.fail("the cell did not start: " + "".join(proc.communicate()))
            time.sleep(0.5)
        job = next(e["job_id"] for d in root.glob("*-*") for e in read_events(d) if e["event"] == "start")
        subprocess.run(["scancel", job], check=True, timeout=30)
        stdout, stderr = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
        subprocess.run(["scancel", "--name", "mgrq-cxl"], capture_output=True, timeout=30)
    assert proc.returncode == 1, stdout + stderr
    assert "INTERRUPTED tiny_vit.q" in stdout, stdout
    rec = json.loads(next(root.glob("*-*/record.json")).read_text())
    assert rec["status"] == "failed" and rec["error"]["type"] == "Interrupted", rec["error"]
    assert f"job {job} (slurm, state " in rec["error"]["message"] and "was cancelled" in rec["error"]["message"]
    status = subprocess.run([sys.executable, "-m", "mgrq", "suite", "status", str(suite), "--out", str(out),
                             "--label", "C"], cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert "interrupted" in status.stdout and "failed" not in status.stdout.split("cells")[-1], status.stdout
