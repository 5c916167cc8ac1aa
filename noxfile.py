"""nox sessions. All sessions share one virtual environment, ``.venv`` (torch is ~5 GB: one
copy, installed once and refreshed when ``pyproject.toml`` changes). Set ``MGRQ_VENV`` to use
another environment that already has ``pip install -e ".[dev]"``, as it is (nothing is installed
into it; a missing package is an error, checked when nox runs on Python 3.11 or later).

    nox -s tests            fast CPU tests (the README's test command; about 4 min on 2 cores)
    nox -s tests_slow       the long checks (marker ``slow``)
    nox -s tests_gpu        the CUDA checks (marker ``gpu``)
    nox -s lint             ruff + mypy
    nox -s quickstart       quantize the tiny ViT (percentile, W4A4): FP vs quantized top-1
    nox -s demo             the offline demo suite on the tiny zoo, then its report
    nox -s report -- SUITE  tables and figures of a suite's newest label (default: demo)
    nox -s suite-NAME       run suites/NAME.yaml (``mgrq suite run`` options after ``--``)
    nox -s suite -- FILE    run any suite file (``mgrq suite run`` options after it)
    nox -s venv             make or refresh the environment and print its python
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
from pathlib import Path

import nox

nox.options.sessions = ["tests"]
ROOT = Path(__file__).parent
VENV = Path(os.environ.get("MGRQ_VENV") or ROOT / ".venv")  # an empty MGRQ_VENV= counts as unset
# Offline unless the caller says otherwise (HF_HUB_OFFLINE=0): the timm weights come from the HF hub
# cache, filled once where the hub is reachable (README, "Model zoo"); cluster jobs rarely reach it.
ENV = {"HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE") or "1", "MLFLOW_DISABLE_TELEMETRY": "true",
       "PYTHONUNBUFFERED": "1"}


def _python(session: nox.Session) -> str:
    """The shared environment's python, created and (re)installed when pyproject.toml changed.
    An environment named by ``MGRQ_VENV`` is used as it is: never created, upgraded or
    reinstalled; a missing interpreter or package is an error that says how to install it."""
    py = VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
    if os.environ.get("MGRQ_VENV"):
        install = f'{py} -m pip install -e "{ROOT}[dev]"'
        if not py.exists():
            session.error(f"MGRQ_VENV={VENV}: no Python at {py}; expected a virtual environment "
                          f"with this project installed ({install}), or unset MGRQ_VENV to use .venv/")
        check = subprocess.run([str(py), "-c", _CHECK, *_requirements()], capture_output=True, text=True, cwd=ROOT)
        if check.returncode != 0:
            why = (check.stderr.strip().splitlines() or [f"exit status {check.returncode}"])[-1]
            session.error(f"MGRQ_VENV={VENV}: its Python does not run ({why}); expected a working virtual "
                          f"environment, or unset MGRQ_VENV to use .venv/")
        missing = check.stdout.split()
        if missing:
            session.error(f"MGRQ_VENV={VENV}: the environment lacks {', '.join(missing)}; install the "
                          f"project into it ({install}), or unset MGRQ_VENV to use .venv/")
        return str(py)
    stamp = VENV / ".mgrq-install"
    want = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    if not py.exists():
        session.run(sys.executable, "-m", "venv", str(VENV), external=True)
    if not stamp.exists() or stamp.read_text() != want:
        session.run(str(py), "-m", "pip", "install", "-q", "--upgrade", "pip", external=True)
        session.run(str(py), "-m", "pip", "install", "-q", "-e", f"{ROOT}[dev]", external=True)
        stamp.write_text(want)
    return str(py)


def _requirements() -> list[str]:
    """The distributions pyproject.toml asks for (dependencies and every extra; versions left
    out). None where this Python has no ``tomllib`` (< 3.11): the check is then skipped."""
    try:
        import tomllib
    except ModuleNotFoundError:
        return []
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [*project["dependencies"], *(r for extra in project["optional-dependencies"].values() for r in extra)]
    return sorted({re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0] for r in reqs} - {"mgrq"})


# run by MGRQ_VENV's python with the distribution names as arguments: prints the missing ones
_CHECK = """
import importlib.metadata as md, sys
def missing(name):
    try:
        md.version(name)
    except md.PackageNotFoundError:
        return True
    return False
print(" ".join(n for n in sys.argv[1:] if missing(n)))
"""


@nox.session(venv_backend="none")
def tests(session: nox.Session) -> None:
    """Fast CPU tests (slow/gpu/imagenet markers off), in parallel pytest-xdist workers: one per
    core up to 4 (``MGRQ_TEST_WORKERS=N`` to choose; 0 runs them in this process). One test file
    stays on one worker (``--dist loadfile``): the SLURM tests share one cluster run."""
    py = _python(session)
    session.run(py, "-m", "pytest", "-q", *_workers(session), *session.posargs, env=ENV, external=True)


def _workers(session: nox.Session) -> list[str]:
    raw = os.environ.get("MGRQ_TEST_WORKERS", "").strip()
    if raw and not raw.isdigit():
        session.error(f"MGRQ_TEST_WORKERS={raw!r}: expected a whole number of pytest workers (0: none)")
    try:
        cores = len(os.sched_getaffinity(0))  # the CPUs this process may use (a SLURM allocation, taskset)
    except AttributeError:  # macOS
        cores = os.cpu_count() or 1
    n = int(raw) if raw else min(4, cores)
    return ["-n", str(n), "--dist", "loadfile"] if n > 1 else []


@nox.session(venv_backend="none")
def tests_slow(session: nox.Session) -> None:
    """The long checks: ``slow``-marked tests."""
    py = _python(session)
    session.run(py, "-m", "pytest", "-q", "-m", "slow", *session.posargs, env=ENV, external=True)


@nox.session(venv_backend="none")
def tests_gpu(session: nox.Session) -> None:
    """The CUDA checks: ``gpu``-marked tests (engine fast modes, streamed cache, CUDA peak memory)."""
    py = _python(session)
    session.run(py, "-m", "pytest", "-q", "-m", "gpu", *session.posargs, env={**ENV, "MGRQ_REQUIRE_GPU": "1"},
                external=True)


@nox.session(venv_backend="none")
def lint(session: nox.Session) -> None:
    """ruff (lint) on mgrq/, baselines/, reports/, tests/ and noxfile.py; mypy on mgrq/, baselines/ and reports/."""
    py = _python(session)
    session.run(py, "-m", "ruff", "check", "mgrq", "baselines", "reports", "tests", "noxfile.py", external=True)
    session.run(py, "-m", "mypy", "mgrq", "baselines", "reports", external=True)


@nox.session(venv_backend="none")
def venv(session: nox.Session) -> None:
    """Make (or refresh) the shared environment and print its python, for scripts that run mgrq
    themselves (nox turns every failing command into exit 1; docs/nightly.sbatch needs mgrq's own)."""
    print(_python(session))


@nox.session(venv_backend="none")
def quickstart(session: nox.Session) -> None:
    """Quantize the tiny ViT with the basic method and print FP vs quantized top-1."""
    py = _python(session)
    session.run(py, "-m", "mgrq", "quantize", "--model", "tiny_vit", "--method", "percentile",
                "--w-bits", "4", "--a-bits", "4", *session.posargs, env=ENV, external=True)


# --------------------------------------------------------------------------------------------
# The harness: the demo, reports, and one session per suite file
# --------------------------------------------------------------------------------------------


@nox.session(venv_backend="none")
def demo(session: nox.Session) -> None:
    """The offline demo, end to end on the tiny zoo (under 15 minutes on 2 CPU cores).

    The `demo` suite through the local executor, the MLflow sqlite store, LaTeX/Markdown tables
    and figures. Extra options go to `mgrq suite run`, e.g. `-- --label x`."""
    import time

    t0 = time.time()
    py = _python(session)
    try:
        session.run(py, "-m", "mgrq", "suite", "run", "demo", *session.posargs, env=ENV,
                    external=True)
    finally:
        session.log(f"demo: {time.time() - t0:.0f}s in total (environment setup included)")


@nox.session(venv_backend="none")
def report(session: nox.Session) -> None:
    """Tables and figures of a suite run (default: the newest demo run).

    `nox -s report -- SUITE [--label L] [--from mlflow] [--compare previous latest]`."""
    py = _python(session)
    args = session.posargs or ["demo"]
    session.run(py, "-m", "mgrq", "report", *args, env=ENV, external=True)


@nox.session(venv_backend="none")
def suite(session: nox.Session) -> None:
    """Run any suite, shipped or a file of your own: `nox -s suite -- SUITE_OR_FILE [options]`
    (the options of `mgrq suite run`)."""
    if not session.posargs:
        session.error("expected a suite name or file: nox -s suite -- SUITE_OR_FILE [options]")
    py = _python(session)
    session.run(py, "-m", "mgrq", "suite", "run", *session.posargs, env=ENV, external=True)


def _suite_session(path: Path) -> None:
    def run_suite(session: nox.Session) -> None:
        py = _python(session)
        session.run(py, "-m", "mgrq", "suite", "run", str(path), *session.posargs, env=ENV,
                    external=True)

    run_suite.__doc__ = (f"Run suites/{path.name}; options after --, e.g. --data-root DIR "
                         "--executor slurm --partition gpu, --dry-run, --label L.")
    nox.session(name=f"suite-{path.stem}", venv_backend="none")(run_suite)


for _suite_file in sorted((ROOT / "suites").glob("*.yaml")):
    _suite_session(_suite_file)
