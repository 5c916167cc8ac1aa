"""docs/nightly.sbatch, run as cron runs it (a plain script), on a tiny suite: its exit status
and lines tell a first night, a quiet night, a flagged night and a night that did not run apart.
The script runs `mgrq` itself (nox turns every failure into 1); `--executor debug` (appended by
MGRQ_NIGHTLY_ARGS, so it wins over the script's slurm) keeps it off the cluster."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from harness_helpers import ROOT, cli_env, write_suite

from mgrq import records

pytestmark = pytest.mark.slow


def _night(tmp_path, suite, label: str, *extra: str) -> subprocess.CompletedProcess:
    env = cli_env(MGRQ_DATA_ROOT=str(tmp_path), MGRQ_SITE_PROFILE=str(tmp_path / "site.yaml"),
                  MGRQ_RUNS=str(tmp_path / "runs"), MGRQ_NIGHTLY_SUITES=str(suite), MGRQ_NIGHTLY_PULL="0",
                  MGRQ_VENV=sys.prefix, MGRQ_NIGHTLY_ARGS=f"--label {label} --executor debug --threads 1 "
                                                          "--no-mirror --no-report " + " ".join(extra))
    env.pop("SLURM_JOB_ID", None)
    return subprocess.run(["bash", str(ROOT / "docs" / "nightly.sbatch")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_nightly_script_says_what_each_night_was(tmp_path):
    (tmp_path / "site.yaml").write_text("slurm:\n  cpus_per_task: 1\n")
    suite = write_suite(tmp_path / "nightly-tiny.yaml", eval_limit=50)
    first = _night(tmp_path, suite, "20260101-n1")
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"nightly: {suite}: no comparison: no earlier night with a finished cell (the first night)" in first.stdout
    assert "error:" not in first.stdout + first.stderr  # the first night is no error
    # that night's jobs were cancelled after all: its cells interrupted, no result
    for p in (tmp_path / "runs" / "nightly-tiny" / "20260101-n1").glob("*/record.json"):
        records.write_record(p, {**json.loads(p.read_text()), "status": "failed", "metrics": None,
                                 "error": {"type": "Interrupted", "message": "cancelled", "traceback": ""}})
    second = _night(tmp_path, suite, "20260102-n2")  # still no earlier night with a result: no error
    assert second.returncode == 0, second.stdout + second.stderr
    assert f"nightly: {suite}: no comparison: no earlier night with a finished cell" in second.stdout
    quiet = _night(tmp_path, suite, "20260103-n3")
    assert quiet.returncode == 0, quiet.stdout + quiet.stderr
    assert f"nightly: {suite}: nothing flagged against the previous night" in quiet.stdout
    assert (tmp_path / "runs" / "nightly-tiny" / "20260103-n3" / "report" /
            "compare-20260102-n2-vs-20260103-n3.md").is_file()
    # a night evaluated on fewer images: its top-1 moves, and the script's status says so
    moved = _night(tmp_path, suite, "20260104-n4", "--eval-limit", "10")
    assert moved.returncode == 1, moved.stdout + moved.stderr
    assert f"nightly: {suite}: cells flagged against the previous night" in moved.stdout
    # a comparison that fails after the first night (the suite file changed to the tune split)
    tune = tmp_path / "tune" / "nightly-tiny.yaml"
    tune.parent.mkdir()
    tune.write_text(suite.read_text() + "data: {eval_split: tune}\n")
    failed = _night(tmp_path, tune, "20260105-n5")
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert f"nightly: {tune}: the comparison failed (exit 2: the message above)" in failed.stdout
    # a suite that cannot run: no comparison of older nights printed as if it were tonight's
    bad = tmp_path / "broken.yaml"
    bad.write_text(suite.read_text().replace("percentile", "percentil"))
    broken = _night(tmp_path, bad, "20260106-n6")
    assert broken.returncode == 2, broken.stdout + broken.stderr
    assert f"nightly: {bad}: the suite did not run (exit 2: bad input" in broken.stdout
    assert "compare-" not in broken.stdout and "Top-1 change" not in broken.stdout
    assert os.listdir(tmp_path / "runs") == ["nightly-tiny"]
