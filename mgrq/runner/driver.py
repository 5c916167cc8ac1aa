"""The suite driver: expand a suite into cells, skip the done ones, submit the rest through an
executor, wait with progress, write a summary, then mirror the records into MLflow.

The run records on disk are the source of truth; the driver never trusts a job's return value
for a result. A job that ends without finishing its cells (killed, out of memory, node lost)
leaves their records ``running`` or missing: the driver marks them ``failed`` (``JobLost``)
with the tail of the job's log, and rerunning the suite redoes them (and only them).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgrq import records
from mgrq.errors import ConfigError, MGRQError, first_line
from mgrq.runner import executors as ex
from mgrq.runner.layout import (
    Cell,
    append_event,
    cell_for,
    grid_cells,
    label_dir,
    out_flag,
    records_under,
    shown_status,
)
from mgrq.runner.suite import Suite, select
from mgrq.spec import SPLIT_NAMES

TERMINAL = ("done", "failed")


@dataclass
class Summary:
    suite: str
    label: str
    root: Path
    total: int
    skipped: int = 0  # done before this run started
    done: int = 0  # finished during this run
    failed: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # no record of an end (a job lost before them), or interrupted
    warned: list[str] = field(default_factory=list)  # done in this run, with warnings in the record
    dirs: dict[str, Path] = field(default_factory=dict)  # run id -> its cell folder (this grid's hash)
    seconds: float = 0.0
    executor: str = "local"

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.not_run else 0

    def line(self) -> str:
        return (f"suite {self.suite} [{self.label}]: {_cells(self.total)}: {self.done} done, "
                f"{self.skipped} skipped (done before), {len(self.failed)} failed"
                + (f", {len(self.not_run)} not run or interrupted" if self.not_run else "")
                + f" in {self.seconds:.0f}s ({self.executor})")


def plan(suite: Suite, out: Path, label: str, device: str = "auto",
         only: str | None = None) -> tuple[Path, list[Cell]]:
    """The label folder and the cells of the grid (optionally those whose id matches ``only``)."""
    specs = select(suite.specs(device), only, suite.name)
    root = label_dir(out, suite.name, label)
    return root, [cell_for(root, s) for s in specs]


def config_drift(cell: Cell, rec: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Method config fields whose value in the cell's record ``rec`` differs from what the
    current code resolves for the cell's spec (``{field: (recorded, now)}``): a changed default
    since the cell ran. The cell hash covers the spec (with its config overrides), not the
    defaults. Fields present on one side only (renamed or new options) are not compared."""
    recorded = (rec.get("method") or {}).get("config")
    if not isinstance(recorded, dict):
        return {}
    from mgrq.config import config_dict
    from mgrq.methods import get_method

    now = config_dict(get_method(cell.spec["method"]).make_config(dict(cell.spec.get("method_config") or {})))
    return {k: (recorded[k], now[k]) for k in sorted(set(recorded) & set(now)) if recorded[k] != now[k]}


def weights_drift(cell: Cell, rec: dict[str, Any]) -> tuple[str, str, str] | None:
    """``(file, recorded sha256, current sha256)`` when the weights file a done cell ran with has
    other contents now (a checkpoint replaced under the same path, ``mgrq zoo train`` run
    again): the cell hash covers the path, not the bytes. None when unchanged, unreadable now,
    or not recorded (older records, timm hub weights)."""
    w = rec.get("weights")
    if not isinstance(w, dict) or not w.get("sha256") or not w.get("file"):
        return None
    from mgrq import zoo

    now = zoo.weights_digest(Path(w["file"]))
    return (w["file"], w["sha256"], now) if now is not None and now != w["sha256"] else None


def pin_drift(cell: Cell, rec: dict[str, Any]) -> tuple[str, str] | None:
    """``(timm's default tag, the pinned tag)`` when a done cell of a timm model without a
    checkpoint ran before the zoo pinned its pretrained tag (no ``weights.timm`` in its record)
    and timm's own default for the plain name is other weights than the pinned ones (ViT-B:
    augreg2; Swin-S: 22k fine-tuned): that cell ran another FP model. None otherwise."""
    got = rec.get("spec")
    spec: dict[str, Any] = got if isinstance(got, dict) else cell.spec
    w = rec.get("weights")
    if spec.get("checkpoint") or (isinstance(w, dict) and w.get("timm")):
        return None
    from mgrq import zoo

    try:
        entry = zoo.get_entry(str(spec.get("model")))
    except MGRQError:
        return None
    if entry.tiny:
        return None
    import timm

    plain, _, pinned = str(entry.timm_name).partition(".")
    cfg = timm.models.get_pretrained_cfg(plain)
    default = f"{plain}.{cfg.tag}" if cfg is not None and getattr(cfg, "tag", None) else None
    return (default, str(entry.timm_name)) if default is not None and default != entry.timm_name else None


State = tuple[Cell, str, dict[str, Any]]  # a cell, its status and its record, from one read


def states(cells: list[Cell]) -> list[State]:
    """Each cell with its status and record (:meth:`Cell.state`), each record file read once."""
    return [(c, *c.state()) for c in cells]


def done_records(snapshot: list[State]) -> list[dict[str, Any]]:
    """The records of the done cells of a :func:`states` snapshot."""
    return [rec for _, st, rec in snapshot if st == "done"]


def check_drift(cells: list[State], label: str) -> None:
    """Refuse to resume a label whose done cells ran with other method defaults than the current
    code's, or with other bytes in their weights file: mixing the two would give one table from
    two methods or two models. ``ConfigError`` naming the cells and fields; nothing is run or
    changed."""
    done = [(c, rec) for c, st, rec in cells if st == "done"]
    moved = [(c, w) for c, rec in done if (w := weights_drift(c, rec))]
    if moved:
        c, (path, was, now) = moved[0]
        raise ConfigError(
            f"label {label}: {len(moved)} done cell(s) ran with other weights than {path} holds now "
            f"(e.g. {c.run_id}: sha256 {was[:12]} -> {now[:12]}); expected unchanged weights to resume a "
            f"label: run under a new --label (the records of {label} are kept as they are)")
    unpinned = [(c, p) for c, rec in done if (p := pin_drift(c, rec))]
    if unpinned:
        c, (default, pinned) = unpinned[0]
        raise ConfigError(
            f"label {label}: {len(unpinned)} done cell(s) ran before the zoo pinned their timm weights, with "
            f"timm's default {default} (e.g. {c.run_id}), not {pinned}, the weights the published rows were "
            f"measured with and the cells run now; expected one model per label: run under a new --label (the "
            f"records of {label} are kept as they are)")
    drifted = [(c, d) for c, rec in done if (d := config_drift(c, rec))]
    if not drifted:
        return
    c, d = drifted[0]
    fields = ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in list(d.items())[:4])
    raise ConfigError(
        f"label {label}: {len(drifted)} done cell(s) ran with other method defaults than the current "
        f"code resolves (e.g. {c.run_id}: {fields}); expected an unchanged method config to resume "
        f"a label: run under a new --label (the records of {label} are kept as they are)")


def other_commits(done: list[dict[str, Any]]) -> str | None:
    """A note when done records of a label were written at other commits than the code running
    now (resuming a label across commits keeps them; only a changed method config or weights
    file is refused, by :func:`check_drift`, so a code change that moves results would otherwise
    mix two versions in one table unnoticed). ``None`` when all match or this is no git checkout;
    records without a git_sha (run outside a checkout) cannot be compared and are left out."""
    now = records.git_sha()
    if now is None:
        return None
    short = records.short_sha
    other = Counter(short(r["git_sha"]) for r in done if r.get("git_sha") and r["git_sha"] != now)
    if not other:
        return None
    shas = ", ".join(f"{sha} ({n})" for sha, n in other.most_common(3)) + (", ..." if len(other) > 3 else "")
    return (f"note: {sum(other.values())} of the {len(done)} done cell(s) were recorded from another source tree "
            f"than this one ({short(now)}): {shas}; they are kept, not rerun (a new --label runs every cell "
            "with this code)")


def other_method_code(done: list[dict[str, Any]]) -> str | None:
    """A note when done records of a label ran a method module of one's own ($MGRQ_METHODS,
    outside this repository, so not covered by ``git_sha``) whose file has changed since: its
    ``module_sha256`` differs from the module file's now. ``None`` when none did."""
    from mgrq.methods.registry import module_sha256

    changed: Counter = Counter()
    for r in done:
        m = r.get("method") or {}
        mod, sha = m.get("module"), m.get("module_sha256")
        if not mod or not sha or str(mod).split(".")[0] in ("mgrq", "baselines"):
            continue
        now = module_sha256(str(mod))
        if now is not None and now != sha:
            changed[str(mod)] += 1
    if not changed:
        return None
    mods = ", ".join(f"{m} ({n})" for m, n in changed.most_common())
    return (f"note: {sum(changed.values())} of the {len(done)} done cell(s) ran another version of their method "
            f"module than the file there now: {mods}; they are kept, not rerun (a new --label runs every cell "
            "with this code)")


def threads_note(done: list[dict[str, Any]], todo: list[Cell], opts: ex.ExecutorOptions) -> str | None:
    """:func:`other_threads`' note on ``done``, the done records of the label's whole grid (an
    ``--only`` run's too), when cells are left to run (``todo``) and they run on the CPU."""
    if not todo or not ex.runs_on_cpu(opts):
        return None
    return other_threads(done, ex.cell_threads(opts))


def other_threads(done: list[dict[str, Any]], threads: int) -> str | None:
    """A note when done records of a label ran on the CPU with another torch thread count than
    ``threads``, the count this run gives its cells: on a CPU a reconstruction's result depends on
    it (the order of float sums; qdrop on tiny_vit moved 0.5 points from 1 to 2 threads), and it
    is not part of a cell's hash, so a resume with another count would mix the two in one table
    unnoticed. ``None`` when all match (or no done cell ran on the CPU)."""
    ran = Counter(t for r in done if (t := records.cpu_threads(r)) is not None)
    other = {t: n for t, n in ran.items() if t != threads}
    if not other:
        return None
    counts = ", ".join(f"{t} thread{'s' * (t != 1)} ({n})" for t, n in sorted(other.items(), key=lambda i: -i[1]))
    keep = max(other, key=lambda t: other[t]) if len(ran) == len(other) else None
    return (f"note: {sum(other.values())} of the {len(done)} done cell(s) ran on the CPU with another torch thread count "
            f"than the {threads} this run gives each cell: {counts}. On a CPU a reconstruction's result depends on "
            "the thread count (the order of float sums), which a cell's hash does not include"
            + (f"; --threads {keep} runs the rest as they ran" if keep else ""))


def source_notes(done: list[dict[str, Any]]) -> list[str]:
    """The notes on what code the done records of a label ran: another commit
    (:func:`other_commits`), another version of a method module of one's own
    (:func:`other_method_code`)."""
    return [n for n in (other_commits(done), other_method_code(done)) if n]


def print_grid(suite: Suite, label: str, root: Path, cells: list[Cell]) -> Counter:
    """The dry-run view: one line per cell with its status, then the counts."""
    counts: Counter = Counter()
    done: list[dict[str, Any]] = []
    print(f"suite {suite.name} ({suite.path}) label {label} -> {root}")
    shown = [c.shown_state() for c in cells]
    statuses, stale = mark_stale(shown, root, suite.name, label)
    for c, (_, rec), st in zip(cells, shown, statuses):
        counts[st] += 1
        extra = ""
        if st == "done":
            done.append(rec)
            m = rec.get("metrics", {})
            extra = f"top-1 {m.get('top1', float('nan')):.2f}"
            if note := records.warnings_note(rec):
                extra += f"  {note}"
            drift = config_drift(c, rec)
            if drift:
                counts["drift"] += 1
                extra += "  ran with other defaults: " + ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in drift.items())
            if (w := weights_drift(c, rec)) is not None:
                counts["drift"] += 1
                extra += f"  ran with other weights: {w[0]} sha256 {w[1][:12]} -> {w[2][:12]}"
            elif (p := pin_drift(c, rec)) is not None:
                counts["drift"] += 1
                extra += f"  ran with other weights: {p[0]} -> {p[1]}"
        print(f"  {st:11s} {c.run_id:55s} {c.hash}  {extra}")
    print(f"{_cells(len(cells))}: {counts['done']} done, {counts['failed']} failed, "
          f"{counts['running'] + counts['interrupted'] + counts['stale']} running/interrupted/stale, "
          f"{counts['pending']} not started"
          + (f", {counts['corrupt']} with an unreadable record" if counts["corrupt"] else "")
          + f" -> {len(cells) - counts['done']} to run")
    if counts["drift"]:
        print(f"{counts['drift']} done cell(s) ran with other method defaults or weights than now: "
              "`suite run` refuses this label; use a new --label")
    for msg in source_notes(done):
        print(msg)
    if stale:
        print(stale)
    return counts


@contextlib.contextmanager
def label_lock(root: Path):
    """One driver per suite label at a time."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".driver.lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            raise ConfigError(f"{root}: another driver is running this suite label ({f.read().strip()}); "
                              "wait for it or use another --label") from None
        f.seek(0)
        f.truncate()
        f.write(records.holder())
        f.flush()
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def check_one_split(root: Path, label: str, eval_split: str) -> None:
    """Refuse to run a grid evaluated on ``eval_split`` into a label whose folder already holds
    finished records on the other split (a suite file or option changed under the same
    ``--label``): one report would average tune and held-out numbers into one table under one
    caption. ``ConfigError`` naming a cell; nothing is run or changed."""
    other = [rec for _, rec in records_under(root) if rec.get("status") == "done"
             and (rec.get("spec") or {}).get("eval_split", "heldout") != eval_split]
    if other:
        was = (other[0].get("spec") or {}).get("eval_split", "heldout")
        raise ConfigError(
            f"label {label}: {len(other)} finished cell(s) were evaluated on the {SPLIT_NAMES.get(was, was)} split (e.g. "
            f"{other[0].get('id')}), this grid on the {SPLIT_NAMES.get(eval_split, eval_split)} split; expected one split "
            "per label (its tables average the label's cells): run under a new --label")


def spec_changes(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``field: old -> new`` for each field of two run specs that differs (``device`` aside), a
    mapping (the method config) field by field: ``method_config.iters: 30 -> 40``."""
    out = []
    for k in sorted((set(old) | set(new)) - {"device"}):
        a, b = old.get(k), new.get(k)
        if a == b:
            continue
        if isinstance(a, dict) and isinstance(b, dict):
            out += spec_changes(a, b, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}: {'(unset)' if k not in old else a} -> {'(unset)' if k not in new else b}")
    return out


def other_grid_note(label: str, prev: dict[str, Any], cells: list[Cell]) -> str | None:
    """The note for a label whose ``suite.json`` (``prev``) lists cells that are not in the grid
    ``cells`` (the suite file or the options changed under the same label), or None. A listed
    cell whose run id is in the grid under another hash is named as such, with the settings that
    changed (from its record's spec, when it ran): it runs again in a folder of its own."""
    now = {c.hash for c in cells}
    by_id = {c.run_id: c for c in cells}
    left = [c for c in grid_cells(prev) if c.get("hash") not in now]
    if not left:
        return None
    moved = [c for c in left if c["id"] in by_id]
    gone = [c["id"] for c in left if c["id"] not in by_id]
    changes: dict[str, None] = {}  # "field: old -> new", in order, once each
    ran = 0  # of the moved cells: those with a record (the others were listed, never run)
    for c in moved:
        new = by_id[c["id"]]
        rec = records.read_record(new.dir.parent / str(c.get("dir")) / "record.json") if c.get("dir") else None
        old = rec.get("spec") if isinstance(rec, dict) else None
        if not isinstance(old, dict):  # the cell never ran: no spec to compare
            continue
        ran += 1
        for change in spec_changes(old, new.spec):
            changes[change] = None
    parts = []
    if moved:
        what = f" ({'; '.join(list(changes)[:3])}{'; ...' if len(changes) > 3 else ''})" if changes else ""
        one = len(moved) == 1
        head = f"{len(moved)} of its cells {'is' if one else 'are'} in this grid with other settings{what}"
        if ran == len(moved):
            parts.append(f"{head}, so {'it runs' if one else 'they run'} again in {'a folder' if one else 'folders'} "
                         f"of {'its' if one else 'their'} own")
        elif ran == 0:
            parts.append(f"{head}, none of which ran")
        else:
            parts.append(f"{head}; the {ran} that ran {'runs' if ran == 1 else 'run'} again in "
                         f"{'a folder' if ran == 1 else 'folders'} of {'its' if ran == 1 else 'their'} own")
    if gone:
        parts.append(f"{len(gone)} of its cells {'is' if len(gone) == 1 else 'are'} not in this one (e.g. {', '.join(gone[:3])})")
    return (f"note: label {label} was run before with another grid; {'; '.join(parts)}: the old folders stay, but "
            "`suite status` lists this grid once it runs (a new --label keeps the two apart)")


def write_suite_json(suite: Suite, label: str, root: Path, cells: list[Cell], opts: ex.ExecutorOptions,
                     ran: int | None = None, only: str | None = None) -> None:
    """``suite.json``: the suite as run, with every cell of its grid (also when this invocation
    ran the ``--only`` subset of ``ran`` cells: status and reports see the cells not run yet)."""
    path = root / "suite.json"
    prev = records.read_record(path) or {}
    if note := other_grid_note(label, prev, cells):
        print(note, flush=True)
    invocations = list(prev.get("invocations", []))
    invocations.append({"time": records.now(), "executor": opts.describe(),
                        "cells": len(cells) if ran is None else ran, "only": only,
                        "host": records.host(), "git_sha": records.git_sha(), "argv": sys.argv})
    records.write_record(path, {
        "suite": suite.name, "label": label, "file": str(suite.path),
        "description": suite.description, "command": suite.command,
        "created": prev.get("created") or records.now(),
        "models": list(suite.grid_models), "bits": [f"W{w}A{a}" for w, a in suite.grid_bits],
        "methods": list(suite.grid_methods), "seeds": list(suite.seeds), "only": suite.only,
        "ablation": list(suite.ablation), "main": list(suite.main), "caption": suite.caption, "paired": suite.paired,
        "names": dict(suite.row_names),
        "cells": [{"id": c.run_id, "hash": c.hash, "dir": c.dir.name} for c in cells],
        "invocations": invocations,
    })


# --------------------------------------------------------------------------------------------
# Waiting for jobs
# --------------------------------------------------------------------------------------------


def squeue_tasks(arrays: list[str], *filters: str, timeout_s: float = 60) -> tuple[set[str] | None, str]:
    """The task ids (``123_4``, or a plain job id) of jobs ``arrays`` that SLURM still lists (queued,
    running, completing), each task apart (``squeue -r``), with extra ``filters`` (``-u USER``...).
    ``(None, why)`` when squeue cannot answer: ``why`` is its message, empty without squeue."""
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", *filters, "-j", ",".join(arrays)],
                             capture_output=True, text=True, timeout=timeout_s)
    except (OSError, subprocess.SubprocessError):
        return None, ""
    if out.returncode != 0:  # "Invalid job id": every one of them has left the queue
        return (set(), "") if "Invalid job id" in out.stderr else (None, out.stderr.strip() or "no message")
    return set(out.stdout.split()), ""


class SlurmQueue:
    """Which submitted SLURM jobs are still queued or running (``squeue``), so the driver also
    works on clusters without accounting (where sacct, and submitit's job state, say UNKNOWN)."""

    def __init__(self, every_s: float = 5.0):
        self.every_s, self.last = every_s, 0.0
        self.live: set[str] = set()
        self.gone_since: dict[str, float] = {}

    def refresh(self, job_ids: list[str]) -> None:
        if time.time() - self.last < self.every_s:
            return
        self.last = time.time()
        live, _ = squeue_tasks(sorted({j.split("_")[0] for j in job_ids}))
        if live is None:
            return  # keep the previous view
        self.live = live
        now = time.time()
        for j in job_ids:
            if j in self.live:
                self.gone_since.pop(j, None)
            else:
                self.gone_since.setdefault(j, now)

    def gone(self, job_id: str, grace_s: float = 12.0) -> bool:
        t = self.gone_since.get(job_id)
        return t is not None and time.time() - t >= grace_s


def _job_finished(job: Any, kind: str, queue: SlurmQueue | None) -> bool:
    if kind != "slurm":
        return bool(job.done())
    if job.paths.result_pickle.exists():
        return True
    assert queue is not None
    return queue.gone(job.job_id)


def _tail(path: Path, n: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def mark_lost(cells: list[Cell], job: Any, suite_meta: dict[str, Any], kind: str,
              before: dict[str, Any] | None = None) -> int:
    """Cells of a finished job that have no terminal record become ``failed`` (JobLost, or
    Interrupted where the job was cancelled: SLURM's ``CANCELLED``, not by a time limit); with
    ``before`` (:func:`_stamp` of each record at submission), so do cells still holding the
    terminal record of an earlier run (the job ended before it started them)."""
    from mgrq.spec import RunSpec

    lost = 0
    for c in cells:
        rec = c.record()
        if rec is not None and rec.get("status") in TERMINAL and (before is None or _stamp(rec) != before.get(c.run_id)):
            continue
        tail = _tail(Path(job.paths.stderr)) or _tail(Path(job.paths.stdout))
        state = "unknown"
        with contextlib.suppress(Exception):
            state = job.state
        said = _log_end(tail)
        cancelled = _cancelled(str(state), said)
        code = getattr(getattr(job, "_process", None), "returncode", None)  # a local job's process
        if isinstance(code, int) and code < 0:
            with contextlib.suppress(ValueError):
                state += f", killed by {signal.Signals(-code).name}"
        elif isinstance(code, int) and code > 0:
            state += f", exit status {code}"
        if said:  # where accounting is off, SLURM's state is UNKNOWN: its log still says why
            state += f"; its log: {said}"
        spec = RunSpec.from_dict(c.spec)
        why = "Interrupted" if cancelled else "JobLost"
        message = (f"job {job.job_id} ({kind}, state {state}) "
                   + ("was cancelled before this cell finished; the next run of the suite redoes it"
                      if cancelled else "ended before this cell finished"))
        failed = {
            "schema": records.SCHEMA, "id": spec.run_id, "hash": spec.content_hash,
            "status": "failed", "spec": spec.to_dict(),
            "error": {"type": why, "user_error": False, "message": message, "traceback": tail},
            "executor": {**((rec or {}).get("executor") or {}), "name": kind, "job_id": job.job_id},
            "suite": suite_meta, "versions": records.versions(), "git_sha": records.git_sha(),
            "host": records.host(), "started": (rec or {}).get("started"), "finished": records.now(),
        }
        records.write_record(c.record_path, failed)
        append_event(c, "lost", job_id=job.job_id)
        with contextlib.suppress(OSError):  # where a user looks first: the cell's own log
            c.dir.mkdir(parents=True, exist_ok=True)
            with open(c.log_path, "a") as f:
                f.write(f"[driver {records.now()}] {why}: {message}\n"
                        + (f"[driver] the job log's last lines:\n{tail.rstrip()}\n" if tail else ""))
        lost += 1
    return lost


def _process_alive(pid: Any, marker: bytes) -> bool:
    """Whether process ``pid`` of this host lives and its command line holds ``marker`` (else the
    id now belongs to an unrelated process)."""
    if not isinstance(pid, int) or isinstance(pid, bool):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # alive, another user's
    with contextlib.suppress(OSError):
        if marker not in Path(f"/proc/{pid}/cmdline").read_bytes():
            return False
    return True


def jobs_gone(recs: list[dict[str, Any]]) -> list[bool | None]:
    """For records that say ``running``: whether the job running each is gone (True: no such
    process on this host, or SLURM no longer lists the task), still there (False), or cannot be
    told (None: another host's local job, squeue not answering). A cell whose job is gone and no
    driver watches stays ``running`` until the label is run again."""
    gone: list[bool | None] = [None] * len(recs)
    slurm: dict[int, str] = {}
    for i, rec in enumerate(recs):
        info = rec.get("executor") or {}
        if info.get("name") == "slurm" and info.get("job_id"):
            slurm[i] = str(info["job_id"])
        elif info.get("name") in ("local", "debug") and info.get("host") == records.host():
            # a local job is a submitit process; a debug cell runs in its driver (`mgrq suite run`)
            gone[i] = not _process_alive(info.get("pid"), b"submitit" if info["name"] == "local" else b"mgrq")
    if slurm:
        listed, _ = squeue_tasks(sorted({j.split("_")[0] for j in slurm.values()}), timeout_s=30)
        if listed is not None:
            for i, j in slurm.items():
                gone[i] = j not in listed
    return gone


def label_driver(root: Path) -> tuple[bool | None, str]:
    """Whether a driver runs the label at ``root`` now: it holds ``.driver.lock`` locked (flock)
    for its whole life, so a non-blocking shared lock that fails says so (released at once).
    ``(True, host)`` then; ``(False, host)`` when the lock is free and the file names this host;
    ``(None, host)`` when it is free but names another host (a lock there may not be visible
    here); ``(False, "")`` without a lock file. ``host`` is the one the file names."""
    import re

    try:
        f = open(root / ".driver.lock")  # noqa: SIM115 (closed by the with below; open's error is none)
    except OSError:
        return False, ""
    with f:
        m = re.match(r"pid \d+ on (\S+) since", f.read())
        host = m.group(1) if m else ""
        elsewhere = None if host and host != records.host() else False
        try:
            fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True, host
        except OSError:  # a filesystem without flock: the file's word only
            return elsewhere, host
        fcntl.flock(f, fcntl.LOCK_UN)
    return elsewhere, host


def mark_stale(shown: list[tuple[str, dict[str, Any]]], root: Path, suite: str,
               label: str) -> tuple[list[str], str | None]:
    """The shown statuses of ``(status, record)`` pairs of the label at ``root``, with ``stale``
    for a running one whose job is gone (:func:`jobs_gone`), unless a driver of the label still
    runs here (it waits for its jobs, and a cell it resubmitted keeps its old record until the new
    job starts); and the note to print under the listing when some are stale (else None). The
    label's lock is probed once for both."""
    watching, host = label_driver(root)
    out = [st for st, _ in shown]
    if watching:
        return out, None
    running = [i for i, (st, _) in enumerate(shown) if st == "running"]
    for i, gone in zip(running, jobs_gone([shown[i][1] for i in running]) if running else []):
        if gone:
            out[i] = "stale"
    n = out.count("stale")
    if not n:
        return out, None
    where = (f" (unless the driver started on {host} still runs this label: it cannot be asked from here)"
             if watching is None else "")
    return out, (f"note: {n} cell(s) stale: the record says running, but its job is gone (killed or cancelled while "
                 f"no driver watched){where}; `mgrq suite run {suite}{out_flag(root.parent.parent)} --label {label}` runs "
                 f"{'it' if n == 1 else 'them'} again")


def check_no_live_jobs(cells: list[State]) -> None:
    """Refuse to start when a cell is still being run by a local job of an earlier driver that
    was killed (its record says ``running`` with this host and a live process id): both would run
    the cell and write its record. One ``ConfigError`` names every such cell and process."""
    live: list[tuple[str, Any, Any]] = []
    for c, st, rec in cells:
        info = rec.get("executor") or {}
        pid = info.get("pid")
        if st != "running" or info.get("name") != "local" or info.get("host") != records.host():
            continue
        if pid == os.getpid() or not _process_alive(pid, b"submitit"):
            continue
        live.append((c.run_id, pid, rec.get("started")))
    if live:
        one = len(live) == 1
        cells_said = ", ".join(f"{rid} (pid {pid}, started {at})" for rid, pid, at in live[:4])
        more = f" and {len(live) - 4} more" if len(live) > 4 else ""
        pids = " ".join(dict.fromkeys(str(pid) for _, pid, _ in live))
        raise ConfigError(f"{len(live)} cell{'' if one else 's'} still being run by local job process{'' if one else 'es'} "
                          f"on this host, from an earlier `suite run` that was stopped: {cells_said}{more}; "
                          f"expected no live job: wait for {'it' if one else 'them'} to end or stop "
                          f"{'it' if one else 'them'} (kill {pids}), then run the suite again")


SLURM_TASKS = "slurm-tasks.json"  # in a label's jobs/ folder: every SLURM task submitted and its cells


def remember_slurm_tasks(jobs_dir: Path, tasks: dict[str, list[str]]) -> None:
    """Add ``{task id: run ids}`` of a submission to the label's list, for the next driver's
    :func:`check_no_live_slurm_tasks` (this driver may be killed while they run)."""
    path = jobs_dir / SLURM_TASKS
    known = (records.read_record(path) or {}).get("tasks")
    records.write_record(path, {"tasks": {**(known if isinstance(known, dict) else {}), **tasks}})


def check_no_live_slurm_tasks(jobs_dir: Path, cells: list[Cell], suite: str) -> None:
    """Refuse to submit ``cells`` when SLURM tasks an earlier driver of this label submitted for
    some of them are still queued or running (that driver was killed; its jobs run on): both would
    run the cells and write their records. Only this user's jobs named ``mgrq-<suite>`` count (a
    job id SLURM reused is not ours); the tasks SLURM no longer lists are dropped from the file.
    Without ``squeue`` here, nothing can be asked."""
    import getpass

    path = jobs_dir / SLURM_TASKS
    known = (records.read_record(path) or {}).get("tasks")
    want = {c.run_id for c in cells}
    tasks = {str(t): set(ids) & want for t, ids in (known.items() if isinstance(known, dict) else [])
             if isinstance(ids, list)}
    tasks = {t: ids for t, ids in tasks.items() if ids}
    if not tasks:
        return
    arrays = sorted({t.split("_")[0] for t in tasks})
    listed, why = squeue_tasks(arrays, "-u", getpass.getuser(), "-n", f"mgrq-{suite}", timeout_s=30)
    if listed is None:
        if why:
            print(f"note: squeue could not say whether the label's earlier SLURM jobs ({' '.join(arrays)}) still "
                  f"run ({first_line(why, 120)}); submitting anyway", file=sys.stderr)
        return
    if isinstance(known, dict):  # keep only what SLURM still lists
        records.write_record(path, {"tasks": {t: ids for t, ids in known.items() if str(t) in listed}})
    live = sorted(listed & set(tasks))
    if live:
        held = sorted(set().union(*(tasks[t] for t in live)))
        ids = " ".join(sorted({t.split("_")[0] for t in live}))
        raise ConfigError(f"SLURM job(s) {' '.join(live)} of an earlier `suite run` of this label still hold "
                          f"{len(held)} of its unfinished cells (e.g. {held[0]}), queued or running; expected none: "
                          f"wait for them (squeue -j {ids.replace(' ', ',')}) or cancel them (scancel {ids}), then "
                          "run the suite again")


def _cancelled(state: str, said: str | None) -> bool:
    """Whether a job that ended was cancelled (``scancel``; not by a time limit, a preemption or
    a requeue): its cells then have no result and no failure of the method. SLURM's state says
    so (``CANCELLED``, ``CANCELLED by 0``); where accounting is off (``UNKNOWN``), the last end
    its log names (:func:`_log_end`) does."""
    if state.upper() == "UNKNOWN":
        return bool(said) and str(said).startswith("CANCELLED AT") and "DUE TO" not in str(said)
    return state.startswith("CANCELLED")


def _log_end(tail: str | None) -> str | None:
    """Why SLURM ended a job, from its log (``*** JOB 31 ON node CANCELLED AT ... ***``, with
    ``DUE TO TIME LIMIT`` or ``DUE TO PREEMPTION``; an oom-kill event), or None."""
    import re

    text = tail or ""
    found = re.findall(r"\*\*\* (?:JOB|STEP) \S+ ON \S+ (CANCELLED AT \S+(?: DUE TO [A-Z ]+?)?) \*\*\*", text)
    if found:  # the last: a requeued job's log holds the earlier ends too
        return found[-1]
    return "out of memory (oom-kill)" if "oom_kill event" in text or "oom-kill" in text else None


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def _duration(s: float) -> str:
    s = max(0, round(s))
    return f"{s}s" if s < 60 else f"{s // 60}m{s % 60:02d}s" if s < 3600 else f"{s // 3600}h{s % 3600 // 60:02d}m"


def _clock(k: int, n: int, elapsed: float) -> str:
    """Time since the jobs were submitted and, once a cell has finished, the time left at the
    rate so far (cells finished per second, whatever runs them side by side)."""
    if k == 0 or k >= n:
        return f"{_duration(elapsed)} elapsed"
    return f"{_duration(elapsed)} elapsed, ~{_duration(elapsed / k * (n - k))} left"


def _progress_line(i: int, n: int, c: Cell, rec: dict[str, Any], clock: str = "") -> str:
    at = f"  [{clock}]" if clock else ""
    if rec.get("status") == "done":
        m, t = rec.get("metrics", {}), rec.get("timings", {})
        return (f"[{i}/{n}] done   {c.run_id}: top-1 {m.get('top1', float('nan')):6.2f} "
                f"(FP {m.get('fp_top1', float('nan')):.2f}) in {t.get('total_s', 0):.1f}s{at}")
    err = rec.get("error", {})
    if shown_status("failed", rec) == "interrupted":
        return f"[{i}/{n}] INTERRUPTED {c.run_id}: stopped before the end; the next run of the suite redoes it{at}"
    return f"[{i}/{n}] FAILED {c.run_id}: {err.get('type')}: {first_line(str(err.get('message', '')))}{at}"


def submit_and_wait(cells: list[Cell], suite_meta: dict[str, Any], opts: ex.ExecutorOptions,
                    jobs_dir: Path, poll_s: float = 1.0, before: dict[str, Any] | None = None) -> None:
    """Submit ``cells`` with the executor of ``opts`` and wait until every job has finished,
    printing one line per finished cell. ``before``: :func:`_stamp` of each cell's record as the
    caller read it (a failed cell's old record stays until its job starts it again)."""
    from mgrq.runner.jobs import CellJob, claimed_by

    n = len(cells)
    kind = opts.kind
    print(f"submitting {n} cell(s) with the {kind} executor", flush=True)
    if kind == "debug":
        import submitit

        threads = ex.cell_threads(opts)
        debug = submitit.DebugExecutor(folder=str(jobs_dir))
        job = debug.submit(CellJob(cells, suite_meta, kind, threads))
        with _patched_post_mortem(enabled=opts.pdb):
            try:
                job.result()
            except Exception as e:  # a crash outside the cells (they record their own errors)
                print(f"debug job crashed: {type(e).__name__}: {e}", file=sys.stderr)
        mark_lost(cells, job, suite_meta, kind)
        for i, c in enumerate(cells, 1):
            print(_progress_line(i, n, c, c.record() or {}), flush=True)
        return

    jobs: list[tuple[Any, Callable[[], list[Cell]]]] = []  # (job, the cells it ran or runs)
    if kind == "local":
        import submitit

        n_jobs, threads = ex.local_plan(opts, n, ex.runs_on_cpu(opts))
        orders = ex.work_orders(cells, n_jobs)
        claims = jobs_dir / f"claims-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        claims.mkdir(parents=True)
        gpus = ex.local_gpus(opts)
        print(f"local: {ex.local_line(len(orders), threads, gpus)}", flush=True)
        executor = submitit.LocalExecutor(folder=str(jobs_dir), max_num_timeout=opts.max_num_timeout)
        executor.update_parameters(timeout_min=opts.timeout_min)
        with _sigint_ignored():  # inherited by the job processes: see _sigint_ignored
            for i, order in enumerate(orders):
                gpu = gpus[i % len(gpus)] if gpus else ""
                job = executor.submit(CellJob(order, suite_meta, kind, threads, claims, i, gpu=gpu))
                jobs.append((job, functools.partial(claimed_by, claims, cells, i)))
    else:
        from submitit.core.utils import FailedJobError

        groups = [cells[i:i + opts.cells_per_job] for i in range(0, n, opts.cells_per_job)]
        threads = ex.slurm_threads(opts)
        executor = ex.slurm_executor(jobs_dir, opts, f"mgrq-{suite_meta['name']}")
        try:
            with ex.clean_job_env(), executor.batch():
                pending = [executor.submit(CellJob(g, suite_meta, kind, threads)) for g in groups]
        except (FailedJobError, OSError) as e:
            raise ex.sbatch_refusal("sbatch refused the job array", str(e) or repr(e)) from None
        jobs = [(j, functools.partial(list, g)) for j, g in zip(pending, groups)]
        remember_slurm_tasks(jobs_dir, {j.job_id: [c.run_id for c in g] for j, g in zip(pending, groups)})
        if len(jobs) == 1:  # submitit submits one task as a plain job
            print(f"slurm: job {jobs[0][0].job_id}, {threads} CPU thread(s)", flush=True)
        else:
            print(f"slurm: job array {jobs[0][0].job_id.split('_')[0]} with {len(jobs)} tasks, "
                  f"at most {opts.array_parallelism} at once, {threads} CPU thread(s) each", flush=True)

    queue = SlurmQueue() if kind == "slurm" else None
    running = list(jobs)
    try:
        with _stop_signals_interrupt():
            _wait(cells, running, suite_meta, kind, queue, poll_s, before)
    except KeyboardInterrupt as e:
        e.reported = True  # type: ignore[attr-defined]  # main() adds no second "interrupted" line
        if kind == "local":
            for job, _ in running:
                _stop_local_job(job)
            deadline = time.time() + 15
            while time.time() < deadline and not all(job.done() for job, _ in running):
                time.sleep(0.2)
            for job, _ in running:
                if not job.done():  # deaf to SIGTERM for 15 s (stuck in a long native call)
                    _kill_local_job(job)
            for job, group in running:
                if job.done():  # a cell it left without a record of its end: JobLost
                    mark_lost(group(), job, suite_meta, kind, before)
            print("interrupted: local jobs cancelled; rerun the suite to resume", file=sys.stderr)
        else:
            ids = " ".join(j.job_id for j, _ in running)
            print(f"interrupted: the SLURM jobs keep running ({ids}); `scancel` them, or wait and "
                  "rerun the suite to collect and resume", file=sys.stderr)
        raise


def _stop_local_job(job: Any) -> None:
    """Ask a local submitit job to stop: SIGTERM to its controller process, which forwards it to
    the task, whose handler (:mod:`mgrq.runner.jobs`) records the cell as interrupted and exits.
    Not submitit's ``cancel`` (SIGINT): a process started in the background by a
    non-interactive shell (CI, ``cmd &``) inherits SIGINT ignored, and the job would run on."""
    proc = getattr(job, "_process", None)
    try:
        if proc is not None:
            proc.send_signal(signal.SIGTERM)
        else:
            job.cancel(check=False)
    except Exception:  # already gone
        pass


def descendants(pid: int) -> list[int]:
    """The processes below ``pid``, each before its own children (Linux ``/proc``; none where it
    cannot be read)."""
    try:
        kids = [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return [d for k in kids for d in (k, *descendants(k))]


def _kill_local_job(job: Any) -> None:
    """SIGKILL a local job's processes (its task and whatever that started), then its controller,
    and wait for the controller. Not submitit's ``cancel``: it sends SIGINT first, which local
    jobs ignore (:func:`_sigint_ignored`)."""
    proc = getattr(job, "_process", None)
    if proc is None:
        return
    for pid in descendants(proc.pid):
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.kill()
        proc.wait(timeout=10)


@contextlib.contextmanager
def _sigint_ignored():
    """Start local jobs with SIGINT ignored (a disposition that processes inherit and Python
    keeps). Ctrl-C in a terminal signals the whole foreground process group: without this,
    submitit's controller of each job died on it with a KeyboardInterrupt traceback, and the job
    stopped on its own. Now only the driver sees Ctrl-C, and it stops its jobs as it does for
    ``kill PID`` (SIGTERM, :func:`_stop_local_job`): one path, one message."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)


@contextlib.contextmanager
def _stop_signals_interrupt():
    """While the driver waits: SIGTERM (``kill PID``) and SIGHUP (the terminal closed; unless
    ignored, e.g. under nohup) stop it like Ctrl-C, so that it stops its local jobs too."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    saved = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            saved[sig] = signal.signal(sig, stop)
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


def _stamp(rec: dict[str, Any] | None) -> tuple[Any, ...] | None:
    return None if rec is None else (rec.get("status"), rec.get("started"), rec.get("finished"))


def _wait(cells: list[Cell], running: list, suite_meta: dict[str, Any], kind: str,
          queue: SlurmQueue | None, poll_s: float, before: dict[str, Any] | None = None) -> None:
    """Poll until every job of ``running`` (updated in place, so that an interrupt sees the jobs
    still running) has finished, printing one line per finished cell. ``before``: each cell's
    record as it was at submission (:func:`_stamp`); a cell still holding that record, e.g. the
    ``failed`` one of an earlier run until its job starts it again, has not finished yet."""
    before = before or {}
    reported: set[str] = set()
    k, n = 0, len(cells)
    t0 = heartbeat = time.time()
    while True:
        if time.time() - heartbeat >= 60:  # a sign of life while jobs wait in a queue
            heartbeat = time.time()
            print(f"[{k}/{n}] waiting: {len(running)} job(s) queued or running  [{_clock(k, n, heartbeat - t0)}]",
                  flush=True)
        if queue is not None:
            queue.refresh([j.job_id for j, _ in running])
        still = []
        for job, group in running:
            if _job_finished(job, kind, queue):
                mark_lost(group(), job, suite_meta, kind, before)
            else:
                still.append((job, group))
        running[:] = still
        for c in cells:
            if c.run_id in reported:
                continue
            rec = c.record()
            if rec is not None and rec.get("status") in TERMINAL and _stamp(rec) != before.get(c.run_id):
                k += 1
                reported.add(c.run_id)
                print(_progress_line(k, n, c, rec, _clock(k, n, time.time() - t0)), flush=True)
        if not running:
            break
        time.sleep(poll_s)


@contextlib.contextmanager
def _patched_post_mortem(enabled: bool):
    """submitit's DebugExecutor calls pdb.post_mortem on a crash: only do that with ``--pdb``
    and a terminal, never in a batch run or a test."""
    import pdb

    orig = pdb.post_mortem
    if not (enabled and sys.stdin.isatty()):
        pdb.post_mortem = lambda *a, **k: None  # type: ignore[assignment]
    try:
        yield
    finally:
        pdb.post_mortem = orig  # type: ignore[assignment]


def run_suite(suite: Suite, out: Path, label: str, opts: ex.ExecutorOptions,
              only: str | None = None, poll_s: float = 1.0) -> Summary:
    """Run (or resume) ``suite`` under ``out/<suite>/<label>`` and return its summary.

    Done cells are skipped; everything else (not started, interrupted, failed) runs."""
    t0 = time.time()
    root, cells = plan(suite, out, label, opts.device, only)
    fresh = not root.exists()
    try:
        return _run_label(suite, out, label, opts, only, poll_s, t0, root, cells, fresh)
    except _LabelRemoved as e:
        # the lock is released: its file, then the folders if nothing else is in them (a driver
        # that took the lock meanwhile has written its suite.json there, so they stay)
        (root / ".driver.lock").unlink(missing_ok=True)
        for d in (root, root.parent):  # the label's folder, then the suite's if this was its only label
            with contextlib.suppress(OSError):
                d.rmdir()
        if root.exists():
            raise e.error from None
        raise ex.SubmitError(f"{e.error}; no cell was submitted, and the new label {label} was removed") from None


class _LabelRemoved(Exception):
    """A submission was refused before any job started, and the label it had created was emptied."""

    def __init__(self, error: ex.SubmitError):
        super().__init__(str(error))
        self.error = error


def _run_label(suite: Suite, out: Path, label: str, opts: ex.ExecutorOptions, only: str | None,
               poll_s: float, t0: float, root: Path, cells: list[Cell], fresh: bool) -> Summary:
    with label_lock(root):
        snapshot = states(cells)
        check_drift(snapshot, label)
        check_one_split(root, label, suite.eval_split)
        check_no_live_jobs([s for s in snapshot if s[1] != "done"])
        check_no_live_slurm_tasks(root / "jobs", [c for c, st, _ in snapshot if st != "done"], suite.name)
        todo = [c for c, st, _ in snapshot if st != "done"]
        summary = Summary(suite.name, label, root, len(cells), skipped=len(cells) - len(todo),
                          executor=opts.kind)
        grid = plan(suite, out, label, opts.device)[1] if only else cells
        write_suite_json(suite, label, root, grid, opts, ran=len(cells), only=only)
        suite_meta = {"name": suite.name, "label": label, "file": str(suite.path)}
        print(f"suite {suite.name} [{label}]: {_cells(len(cells))}, {summary.skipped} done before, "
              f"{len(todo)} to run -> {root}", flush=True)
        done = done_records(snapshot)
        grid_done = done_records(states(grid)) if only else done  # read once without --only
        for msg in [*source_notes(done), threads_note(grid_done, todo, opts)]:
            if msg:
                print(msg, flush=True)
        if todo:
            try:
                submit_and_wait(todo, suite_meta, opts, root / "jobs", poll_s,
                                {c.run_id: _stamp(rec or None) for c, st, rec in snapshot if st != "done"})
            except ex.SubmitError as e:
                # nothing ran: a label this run created is emptied (under the lock) and removed, so
                # that it does not become the suite's newest label (report's default) with no cell
                if fresh and not any(root.glob("*/record.json")):
                    for p in root.iterdir():
                        if p.name != ".driver.lock":
                            shutil.rmtree(p) if p.is_dir() else p.unlink()
                    raise _LabelRemoved(e) from None
                raise
        for c in todo:
            summary.dirs[c.run_id] = c.dir
            st, rec = c.shown_state()
            if st == "done":
                summary.done += 1
                if rec.get("warnings"):
                    summary.warned.append(c.run_id)
            elif st == "failed":
                summary.failed.append(c.run_id)
            else:
                summary.not_run.append(c.run_id)
        summary.seconds = time.time() - t0
        records.write_record(root / "summary.json", {
            "suite": suite.name, "label": label, "finished": records.now(), "cells": len(cells),
            "done": summary.done, "skipped": summary.skipped, "failed": summary.failed,
            "not_run": summary.not_run, "warned": summary.warned,
            "seconds": round(summary.seconds, 1), "executor": opts.describe(),
        })
    return summary
