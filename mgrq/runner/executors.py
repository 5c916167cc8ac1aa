"""Executors (through submitit) and site profiles.

- ``local`` (default): ``parallelism`` jobs run side by side and share the cells through claim
  files (:func:`work_orders`: each starts on its own contiguous share, then takes the cells no
  job has started yet), each with ``threads`` torch threads (default: up to 4 jobs, the CPU
  cores shared between them), so a 2-core laptop runs 2 jobs x 1 thread.
- ``debug``: everything in this process (for a debugger; ``--pdb`` opens pdb on a job crash).
- ``slurm``: one job array, ``cells_per_job`` cells per array task (default 1), at most
  ``array_parallelism`` tasks at once. Partition, account, QoS, constraint, GPUs, CPUs, memory,
  time and setup lines come from a site profile (``--profile FILE`` or ``MGRQ_SITE_PROFILE``)
  and flags; nothing is hard-coded.

Precedence: the suite's ``executor:`` defaults < the site profile < command-line flags.

A site profile (YAML or TOML) has one section per executor::

    slurm:
      partition: gpu
      account: my-lab
      qos: normal
      gpus_per_node: 1
      cpus_per_task: 8
      mem_gb: 64
      timeout_min: 240
      array_parallelism: 16
      setup: ["module load cuda/12.4"]        # lines run before the job starts
      additional: {gres: "gpu:a100:1"}        # any other sbatch option
    local:
      parallelism: 2
      threads: 1
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from mgrq.errors import ConfigError, MGRQError, unknown

KINDS = ("local", "debug", "slurm")


class SubmitError(MGRQError):
    """The scheduler refused the jobs (sbatch failed): names the scheduler's reason."""
PROFILE_ENV = "MGRQ_SITE_PROFILE"


@dataclass(frozen=True)
class ExecutorOptions:
    """How a suite's cells are run. ``None`` means: the executor's default."""

    kind: str = "local"
    parallelism: int | None = None  # local: jobs side by side (default min(4, cores, cells))
    threads: int | None = None  # torch threads per job (local and debug default cores // parallelism
    #                             asked for, not // cells left; slurm default cpus_per_task)
    timeout_min: int = 720
    cells_per_job: int = 1  # slurm: cells per array task
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None
    gpus_per_node: int | None = None
    cpus_per_task: int | None = None
    mem_gb: float | None = None
    array_parallelism: int = 32
    setup: tuple[str, ...] = ()
    additional: tuple[tuple[str, Any], ...] = ()
    max_num_timeout: int = 3  # requeues after a timeout (checkpointable jobs)
    device: str = "auto"
    pdb: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ConfigError(f"executor {self.kind!r}: expected one of {', '.join(KINDS)}")
        bad = [f"{f.name}={v!r}: expected {why}" for f in fields(self) if f.name not in ("kind", "pdb")
               if (why := option_problem(f.name, v := getattr(self, f.name)))]
        if self.kind == "slurm" and option_problem("timeout_min", self.timeout_min) is None and self.timeout_min < 5:
            bad.append(f"timeout_min={self.timeout_min}: expected >= 5 for slurm "
                       "(submitit asks for the preemption signal 90 s before the time limit)")
        if bad:  # every bad option of the layer at once, not one per attempt
            raise ConfigError(("executor option " if len(bad) == 1 else "executor options: ") + "; ".join(bad))
        # a suite's or profile's shapes (one shell line, a mapping) as the types held here
        object.__setattr__(self, "setup", (self.setup,) if isinstance(self.setup, str) else tuple(self.setup))
        object.__setattr__(self, "additional", tuple(sorted((str(k), v) for k, v in dict(self.additional).items())))

    def describe(self) -> dict[str, Any]:
        """The options that matter for this executor (unset ones left out)."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in UNUSED[self.kind]
                and (getattr(self, f.name) not in (None, (), False) or f.name == "kind")}


_INTS = {"parallelism": 1, "threads": 1, "gpus_per_node": 0, "cpus_per_task": 1,  # the least value; None: unset
         "cells_per_job": 1, "array_parallelism": 1, "max_num_timeout": 0}
_REQUIRED = ("cells_per_job", "array_parallelism", "max_num_timeout")


def option_problem(name: str, v: Any) -> str | None:
    """What executor option ``name`` expects when ``v`` is not such a value on any executor
    (a suite file's ``executor:`` block is checked with it), else None. The slurm executor's
    ``timeout_min`` >= 5 is checked by :class:`ExecutorOptions`, which knows the executor."""
    is_int = isinstance(v, int) and not isinstance(v, bool)
    if name in _INTS:
        ok = (v is None and name not in _REQUIRED) or (is_int and v >= _INTS[name])
        return None if ok else f"an integer >= {_INTS[name]}"
    if name == "timeout_min":
        return None if is_int and v >= 1 else "minutes >= 1"
    if name == "mem_gb":
        return None if v is None or (isinstance(v, int | float) and not isinstance(v, bool) and v > 0) \
            else "a positive number"
    if name == "device":
        return None if v is None or re.fullmatch(r"auto|cpu|cuda(:\d+)?", str(v)) else "auto, cpu, cuda or cuda:N"
    if name in ("partition", "account", "qos", "constraint"):
        return None if v is None or (isinstance(v, str) and v.strip()) else "a non-empty string"
    if name == "setup":
        ok = isinstance(v, str | tuple | list) and all(isinstance(x, str) for x in v)
        return None if ok else "a shell line or a list of them"
    if name == "additional":
        try:  # a mapping, or the (key, value) pairs a loaded suite holds
            ok = isinstance(v, dict | tuple | list) and dict(v) is not None
        except (TypeError, ValueError):
            ok = False
        return None if ok else "a mapping of sbatch options (name: value)"
    return None


SLURM_ONLY = frozenset({"cells_per_job", "partition", "account", "qos", "constraint", "cpus_per_task", "mem_gb",
                        "array_parallelism", "setup", "additional", "max_num_timeout"})
UNUSED = {  # the options each executor does not read (describe leaves them out; flags for them are refused)
    "local": SLURM_ONLY,
    "debug": SLURM_ONLY | {"parallelism", "gpus_per_node", "timeout_min"},  # one process, no job limits
    "slurm": frozenset({"parallelism"}),
}


OPTION_NAMES = tuple(f.name for f in fields(ExecutorOptions) if f.name not in ("kind", "pdb"))


def load_profile(path: str | os.PathLike | None = None) -> tuple[dict[str, dict[str, Any]], str | None]:
    """Read a site profile (``path``, else ``$MGRQ_SITE_PROFILE``, else none): ``{kind: options}``."""
    where = path or os.environ.get(PROFILE_ENV)
    if not where:
        return {}, None
    p = Path(where).expanduser()
    if not p.is_file():
        src = "--profile" if path else PROFILE_ENV
        raise ConfigError(f"site profile {p} ({src}): file not found")
    if p.suffix == ".toml":
        import tomllib

        try:
            doc: Any = tomllib.loads(p.read_text())
        except Exception as e:
            raise ConfigError(f"site profile {p}: not valid TOML ({e})".replace("\n", " ")) from None
    else:
        from mgrq.runner.suite import read_yaml

        doc = read_yaml(p, f"site profile {p}")  # a syntax error or a key given twice: file and line
    if doc is None:
        doc = {}
    if not isinstance(doc, dict):
        raise ConfigError(f"site profile {p}: expected a mapping with sections {', '.join(KINDS)}")
    out: dict[str, dict[str, Any]] = {}
    for kind, section in doc.items():
        if kind not in KINDS:
            raise ConfigError(f"site profile {p}: section {kind!r}: expected one of {', '.join(KINDS)}")
        if not isinstance(section, dict):
            raise ConfigError(f"site profile {p}: section {kind}: expected a mapping of options")
        used = sorted(n for n in OPTION_NAMES if n not in UNUSED[kind])
        for k in section:
            if k in OPTION_NAMES and k not in used:  # silently ignored, it would look like a setting
                raise ConfigError(f"site profile {p}: {kind}.{k}: not used by the {kind} executor; expected one of "
                                  f"{', '.join(used)}")
            if k not in OPTION_NAMES:
                raise ConfigError(f"site profile {p}: {kind}.{k}: {unknown('option', str(k), used)}")
        out[kind] = dict(section)
    return out, str(p)


def resolve_options(kind: str, suite_defaults: dict[str, Any], profile: dict[str, dict[str, Any]],
                    flags: dict[str, Any], profile_where: str = "", suite_where: str = "") -> ExecutorOptions:
    """Suite defaults < site profile section of ``kind`` < flags (``None`` flags are unset).
    A bad value is reported against the layer that set it (``command line: ``, ``profile_where``
    or ``suite_where``: the first whose own values fail the check); a failure of the combination
    only, against the profile when it has a ``kind`` section, else the suite."""
    if kind not in KINDS:
        raise ConfigError(f"--executor {kind!r}: expected one of {', '.join(KINDS)}")
    set_flags = {k: v for k, v in flags.items() if v is not None and v != () and v != {}}
    prof = profile.get(kind, {})
    layers = [("command line: ", set_flags),  # each layer with the keys it supplies to the merge
              (profile_where, {k: v for k, v in prof.items() if k not in set_flags}),
              (suite_where, {k: v for k, v in suite_defaults.items() if k not in set_flags and k not in prof})]
    where = profile_where if kind in profile else suite_where
    try:
        return _options(kind, {**suite_defaults, **prof, **set_flags}, where)
    except ConfigError as e:
        for at, layer in layers:
            try:
                _options(kind, dict(layer), at)
            except ConfigError as alone:
                raise alone from None
        raise e from None


def _options(kind: str, merged: dict[str, Any], where: str) -> ExecutorOptions:
    try:
        return ExecutorOptions(kind=kind, **merged)
    except ConfigError as e:
        raise ConfigError(f"{where}{e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}executor options: {e}") from None


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def local_plan(opts: ExecutorOptions, n_cells: int, cpu: bool = True) -> tuple[int, int]:
    """``(jobs, threads per job)`` for the local executor: ``--parallelism`` jobs (default
    min(4, cores)), fewer when fewer cells are left, each with ``--threads``, by default cores /
    the jobs asked for when the cells run on the CPU (``cpu``), cores / the jobs started when
    they run on GPUs. On a CPU a reconstruction's result depends on the thread count (the order
    of float sums), so the threads do not grow when fewer cells are left: a resumed label runs its
    last cells as the first run ran them. On a GPU they do not change it, and the spare cores
    decode images (``MGRQ_DATA_WORKERS`` follows the threads)."""
    cores = cpu_count()
    asked = max(1, opts.parallelism or min(4, cores))
    jobs = max(1, min(asked, n_cells))
    return jobs, opts.threads or max(1, cores // (asked if cpu else jobs))


def local_line(jobs: int, threads: int, gpus: list[str]) -> str:
    """How a local run spreads its cells, as the run (and its dry run) prints it."""
    return (f"{jobs} job(s) side by side, {threads} torch thread(s) each"
            + (f", one GPU each in turn from CUDA devices {','.join(gpus)}" if gpus else ""))


def runs_on_cpu(opts: ExecutorOptions) -> bool:
    """Whether the cells of a run with ``opts`` run on the CPU: ``--device cpu``; for local and
    debug runs also no GPU here or ``--gpus 0``; for SLURM no GPU asked for (``gpus_per_node``)
    and no ``--device cuda``."""
    if opts.device == "cpu":
        return True
    if opts.kind == "slurm":
        return not opts.gpus_per_node and not str(opts.device or "").startswith("cuda")
    return not local_gpus(opts)


def cell_threads(opts: ExecutorOptions) -> int:
    """The torch threads each cell of a run with ``opts`` gets: local, as :func:`local_plan`
    (one cell left); debug, on the CPU local's default (so its numbers equal a local run's
    without a profile's ``local:`` threads), on a GPU every core; slurm, :func:`slurm_threads`."""
    if opts.kind == "slurm":
        return slurm_threads(opts)
    cpu = runs_on_cpu(opts)
    if opts.kind == "debug" and not cpu:
        return opts.threads or cpu_count()
    return local_plan(opts, 1, cpu)[1]


def cuda_count() -> int:
    """How many CUDA devices this process sees (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_gpus(opts: ExecutorOptions, env: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs that local jobs take in turn, one per job, as ``CUDA_VISIBLE_DEVICES`` entries:
    every GPU this process sees (its own ``CUDA_VISIBLE_DEVICES`` entries when set, so that
    ``CUDA_VISIBLE_DEVICES=2,3`` gives the jobs GPUs 2 and 3, else ``0 .. count-1``); none with
    ``gpus_per_node=0`` (``--gpus 0``: the jobs run on the CPU). Any other ``gpus_per_node`` does
    not change the pool: a cell runs on one device, so each local job gets one GPU."""
    if opts.gpus_per_node == 0:
        return []
    n = cuda_count()
    listed = (os.environ if env is None else env).get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [e.strip() for e in listed.split(",") if e.strip()][:n]
    return [str(i) for i in range(n)]


def chunk(items: list[Any], n: int) -> list[list[Any]]:
    """Split ``items`` into ``n`` contiguous, nearly equal chunks."""
    n = max(1, min(n, len(items)))
    size, extra = divmod(len(items), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(items[start:end])
        start = end
    return out


def work_orders(items: list[Any], n: int) -> list[list[Any]]:
    """The order in which each of ``n`` local jobs tries to claim ``items``: its own contiguous
    chunk first (cells of one model stay together, so a job evaluates each FP model once), then
    every other item from the end of the list backwards. A job that finishes early takes the
    cells the others have not reached yet, from the far end, instead of sitting idle."""
    parts = chunk(items, n)
    orders, start = [], 0
    for part in parts:
        rest = items[:start] + items[start + len(part):]
        orders.append(part + rest[::-1])
        start += len(part)
    return orders


class _SacctOnce(logging.Filter):
    """Lets submitit's "Bypassing sacct error ..." warning through once per process: on a cluster
    without accounting every state query repeats it, and the driver reads the queue itself."""

    seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "Bypassing sacct error" not in record.getMessage():
            return True
        first, _SacctOnce.seen = not _SacctOnce.seen, True
        return first


def slurm_executor(folder: Path, opts: ExecutorOptions, job_name: str):
    """A submitit ``SlurmExecutor`` with the options of ``opts`` (no site value hard-coded)."""
    import submitit

    log = logging.getLogger("submitit")
    if not any(isinstance(f, _SacctOnce) for f in log.filters):
        log.addFilter(_SacctOnce())

    ex = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=opts.max_num_timeout)
    try:
        ex.update_parameters(**slurm_params(opts, job_name))
    except (ValueError, TypeError) as e:
        raise ConfigError(f"slurm executor options: {e}".replace("\n", " ")) from None
    return ex


def test_submission(opts: ExecutorOptions, job_name: str, tasks: int) -> str:
    """Ask ``sbatch --test-only`` whether the scheduler would take a job array of ``tasks`` tasks
    with these options (partition, account, QoS, constraint, GPUs, CPUs, memory, time, the
    additional ones); nothing is submitted. The scheduler's answer when it would;
    :class:`SubmitError` with its reason when not; :class:`FileNotFoundError` without sbatch."""
    import subprocess

    params = slurm_params(opts, job_name)
    params.pop("setup", None)
    extra = params.pop("additional_parameters", {})
    p = params.pop("array_parallelism")
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in {**params, **extra}.items() if v is not True]
    flags += [f"--{k.replace('_', '-')}" for k, v in extra.items() if v is True]
    cmd = ["sbatch", "--test-only", f"--array=0-{max(tasks, 1) - 1}%{p}", *flags, "--wrap", "true"]
    with clean_job_env():
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    said = [ln.strip() for ln in (out.stderr + out.stdout).splitlines() if ln.strip()]
    if out.returncode != 0:
        raise sbatch_refusal("sbatch --test-only refuses these options", "\n".join(said) or f"exit {out.returncode}")
    return said[-1] if said else "accepted"


def sbatch_refusal(what: str, text: str) -> SubmitError:
    """``what`` with sbatch's reason from its output ``text``: the ``fatal`` line (no
    configuration: the cause, not its DNS echo), else the first error line, else the last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    why = next((ln for ln in lines if "fatal" in ln.lower()),
               next((ln for ln in lines if "error" in ln.lower()), lines[-1] if lines else "no message"))
    return SubmitError(f"{what} ({why}); check the partition/account/qos/constraint/gpus_per_node options and "
                       "SLURM_CONF")


def slurm_params(opts: ExecutorOptions, job_name: str) -> dict[str, Any]:
    """The submitit ``SlurmExecutor`` parameters of ``opts``."""
    params: dict[str, Any] = {
        "job_name": job_name,
        "time": opts.timeout_min,
        "cpus_per_task": opts.cpus_per_task or opts.threads or 1,
        "array_parallelism": opts.array_parallelism,
        "nodes": 1,
        "ntasks_per_node": 1,
    }
    for k in ("partition", "account", "qos", "constraint"):
        if getattr(opts, k):
            params[k] = getattr(opts, k)
    if opts.gpus_per_node:
        params["gpus_per_node"] = opts.gpus_per_node
    if opts.mem_gb:
        params["mem"] = f"{int(round(opts.mem_gb * 1024))}MB"
    if opts.setup:
        params["setup"] = list(opts.setup)
    if opts.additional:
        params["additional_parameters"] = dict(opts.additional)
    return params


@contextlib.contextmanager
def clean_job_env() -> Iterator[None]:
    """Inside a SLURM job (a driver run from sbatch), hide the job's own ``SLURM_*`` settings
    while submitting, so the new jobs do not inherit them; ``SLURM_CONF`` and the user's
    ``SBATCH_*`` defaults stay. Outside a job, nothing changes."""
    if "SLURM_JOB_ID" not in os.environ:
        yield
        return
    names = [k for k in os.environ if k.startswith(("SLURM_", "SLURMD_", "SRUN_", "SUBMITIT_"))
             and k != "SLURM_CONF"]
    saved = {k: os.environ.pop(k) for k in names}
    try:
        yield
    finally:
        os.environ.update(saved)


def slurm_threads(opts: ExecutorOptions) -> int:
    return opts.threads or opts.cpus_per_task or 1
