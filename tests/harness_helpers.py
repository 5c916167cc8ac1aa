"""Helpers shared by the harness tests (suites, runner, tracking, reports, SLURM)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from mgrq.runner.driver import descendants

ROOT = Path(__file__).resolve().parents[1]

# A method entry whose cell fails while it runs, past every up-front check of a suite: its
# reconstruction diverges at the first iteration (ReconstructionError: a NaN loss), in seconds.
DIVERGES: dict[str, Any] = {"name": "qdrop", "variant": "q-nan", "calib": 8,
                            "config": {"iters": 2, "lr_round": 1e38, "check_every": 1, "init_calib": 8}}
DIVERGED = "the loss became nan"  # in its error message


def write_suite(path: Path, **fields: Any) -> Path:
    """A small tiny-zoo suite file; ``fields`` override or add suite fields."""
    doc: dict[str, Any] = {
        "name": path.stem,
        "description": "test grid",
        "command": "pytest",
        "models": ["tiny_vit"],
        "bits": ["W4A4"],
        "methods": ["percentile"],
        "calibration": {"n": 8},
        "eval_limit": 100,
    }
    doc.update(fields)
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, HF_HUB_OFFLINE="1", MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(extra)
    return env


def mgrq(*argv: str, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess:
    """``python -m mgrq ARGV`` in a subprocess (the way users and nox run it)."""
    return subprocess.run([sys.executable, "-m", "mgrq", *argv], cwd=cwd or ROOT,
                          env=env or cli_env(), capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def background(argv: list[str], cwd: Path | None = None, **popen_kw: Any) -> Iterator[subprocess.Popen]:
    """``argv`` (e.g. a suite driver) started in the background, text output piped; killed with
    the processes it started (local jobs: they would run on, orphaned, and slow every later test)
    on exit from the block if it still runs."""
    proc = subprocess.Popen(argv, cwd=cwd or ROOT, env=cli_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **popen_kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            for pid in [*descendants(proc.pid), proc.pid]:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()


def slurm_up() -> bool:
    if not shutil.which("sbatch") or not shutil.which("scontrol"):
        return False
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.SubprocessError):
        return False
    return out.returncode == 0 and "UP" in out.stdout


def require_slurm() -> None:
    """Skip without a reachable SLURM cluster, unless MGRQ_REQUIRE_SLURM=1 (CI): then fail."""
    if slurm_up():
        return
    msg = "no reachable SLURM cluster (start one with `bash .ci/slurm-up.sh`, export SLURM_CONF)"
    if os.environ.get("MGRQ_REQUIRE_SLURM") == "1":
        pytest.fail(f"MGRQ_REQUIRE_SLURM=1 but {msg}")
    pytest.skip(msg)


def require_latex() -> None:
    """Skip without pdflatex/pdftotext, unless MGRQ_REQUIRE_LATEX=1 (CI): then fail."""
    missing = [t for t in ("pdflatex", "pdftotext") if not shutil.which(t)]
    if not missing:
        return
    msg = f"{', '.join(missing)} not installed (apt-get install texlive-latex-base texlive-latex-recommended poppler-utils)"
    if os.environ.get("MGRQ_REQUIRE_LATEX") == "1":
        pytest.fail(f"MGRQ_REQUIRE_LATEX=1 but {msg}")
    pytest.skip(msg)
