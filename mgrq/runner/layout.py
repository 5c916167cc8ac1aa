"""Where a suite run lives on disk. Torch-free.

    <out>/                                   default ./runs (``--out``)
      mlflow.db, mlartifacts/                the default MLflow store (sqlite, no server)
      <suite>/<label>/                       one run of a suite (label: date + git sha)
        suite.json                           the suite as run: file, options, cells, created
        summary.json                         counts after the driver finished
        jobs/                                submitit folders (pickles, job stdout/stderr)
        report/                              tables and figures of this label
        <run_id>-<hash>/                     one cell
          record.json                        the run record (status running|done|failed)
          cell.log                           everything the cell printed
          events.jsonl                       start/done/failed/lost/interrupted events, one line each (append-only)
          work/                              scratch for methods with resumable state

A cell whose ``record.json`` says ``done`` is skipped when the suite is run again (resume).
"""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from mgrq import records
from mgrq.errors import ConfigError

LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def default_label() -> str:
    """``YYYYMMDD-<sha7>`` (local date, the source tree's git commit; ``-dirty`` when it has
    uncommitted changes, ``nogit`` outside a git checkout)."""
    sha = records.git_sha()
    day = datetime.now().strftime("%Y%m%d")
    if not sha:
        return f"{day}-nogit"
    return f"{day}-{sha[:7]}" + ("-dirty" if "+dirty" in sha else "")


RESERVED_LABELS = ("latest", "previous")
"""Words that ``report``, ``suite status`` and ``--compare`` read as the newest label and the one
before it (:func:`resolve_label`), so no run may be labelled with them."""


def check_label(label: str) -> str:
    """``label`` as a new run's label: a name of the allowed characters, not a reserved word."""
    if not LABEL_RE.match(label):
        raise ConfigError(f"--label {label!r}: expected letters, digits, '.', '_', '+', '-'")
    if label in RESERVED_LABELS:
        raise ConfigError(f"--label {label}: a reserved word (`report`, `suite status` and `--compare` read it as "
                          f"the {'newest label' if label == 'latest' else 'label before the newest'}); expected "
                          "another name, e.g. the default YYYYMMDD-<commit>")
    return label


def default_out() -> Path:
    return Path(os.environ.get("MGRQ_RUNS", "runs")).expanduser()


def out_flag(out: str | Path) -> str:
    """`` --out OUT`` for a command shown to the user when ``out`` is not the default runs folder
    (``./runs``, or ``$MGRQ_RUNS``), so that the command run as printed reads the same folder; else ``""``."""
    return "" if Path(out).resolve() == default_out().resolve() else f" --out {shlex.quote(str(out))}"


@dataclass(frozen=True)
class Cell:
    """One cell of a suite run: its spec (as a dict, torch-free) and its folder."""

    run_id: str
    hash: str
    dir: Path
    spec: dict[str, Any]

    @property
    def record_path(self) -> Path:
        return self.dir / "record.json"

    @property
    def log_path(self) -> Path:
        return self.dir / "cell.log"

    @property
    def events_path(self) -> Path:
        return self.dir / "events.jsonl"

    def record(self) -> dict[str, Any] | None:
        """The cell's run record, or None when there is none or it is unreadable or malformed."""
        rec = records.read_record(self.record_path)
        return rec if rec is not None and records.problem(rec) is None else None

    def state(self) -> tuple[str, dict[str, Any]]:
        """``(status, record)`` from one read of the record file (``{}`` when there is no usable
        record). Status: ``done`` | ``failed`` | ``running`` (a record says so) | ``pending`` (no
        record) | ``corrupt`` (a record file that is unreadable or malformed: the cell runs again)."""
        rec = self.record()
        if rec is not None:
            return str(rec["status"]), rec
        return ("corrupt" if self.record_path.exists() else "pending"), {}

    def status(self) -> str:
        """The status part of :meth:`state`."""
        return self.state()[0]

    def shown_state(self) -> tuple[str, dict[str, Any]]:
        """:meth:`state` with the status a listing shows (:func:`shown_status`)."""
        st, rec = self.state()
        return shown_status(st, rec), rec


def shown_status(status: str, rec: dict[str, Any]) -> str:
    """The status a listing shows: ``interrupted`` for a failed record whose cell was stopped
    (Ctrl-C, a cancelled job: no result, not a failure of the method; the next run redoes it)."""
    err = rec.get("error")
    return "interrupted" if status == "failed" and isinstance(err, dict) and err.get("type") == "Interrupted" else status


def grid_cells(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """The well-formed entries (a mapping with a string ``id``) of the ``cells`` list of a label's
    ``suite.json``; none when the list is absent or not a list."""
    listed = meta.get("cells")
    return [c for c in listed if isinstance(c, dict) and isinstance(c.get("id"), str)] if isinstance(listed, list) else []


def label_dir(out: Path, suite: str, label: str) -> Path:
    return Path(out).resolve() / suite / label


def cell_for(label_root: Path, spec: Any) -> Cell:
    """The cell of ``spec`` (a :class:`~mgrq.spec.RunSpec`) under a label folder."""
    return Cell(spec.run_id, spec.content_hash, label_root / f"{spec.run_id}-{spec.content_hash}",
                spec.to_dict())


def append_event(cell: Cell, event: str, **info: Any) -> None:
    """Append one line to the cell's event log (O_APPEND: safe across requeues)."""
    cell.dir.mkdir(parents=True, exist_ok=True)
    line = records.dumps({"event": event, "time": records.now(), **info})
    with open(cell.events_path, "a") as f:
        f.write(line + "\n")


def read_events(cell_dir: Path) -> list[dict[str, Any]]:
    path = Path(cell_dir) / "events.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def labels(out: Path, suite: str) -> list[str]:
    """Labels of a suite's runs under ``out``, oldest first (by the time recorded in
    ``suite.json``, else the folder's modification time)."""
    root = Path(out).resolve() / suite
    if not root.is_dir():
        return []
    found = []
    for d in root.iterdir():
        if not d.is_dir() or not LABEL_RE.match(d.name):
            continue
        meta = records.read_record(d / "suite.json") or {}
        found.append((str(meta.get("created") or ""), d.stat().st_mtime, d.name))
    return [name for _, _, name in sorted(found)]


def suites_with_runs(out: Path) -> list[str]:
    """Names of the folders under ``out`` that hold at least one run (a label with ``suite.json``)."""
    root = Path(out).resolve()
    if not root.is_dir():
        return []
    return sorted(d.name for d in root.iterdir() if d.is_dir() and any(d.glob("*/suite.json")))


def resolve_label(out: Path, suite: str, label: str | None,
                  known: list[str] | None = None, where: str | None = None) -> str:
    """``None``/``latest`` -> the newest label, ``previous`` -> the one before it, else itself.
    ``known``: the labels oldest first (default: the run folders under ``out``)."""
    all_labels = labels(out, suite) if known is None else known
    where = where or str(Path(out).resolve() / suite)
    if label in (None, "latest", "previous"):
        need = 2 if label == "previous" else 1
        if len(all_labels) < need:
            from mgrq.runner.suite import list_suites

            shipped = suite in {p.stem for p in list_suites()}
            if all_labels:  # one run: another is a new label
                hint = (f"run {f'`mgrq suite run {suite}{out_flag(out)}`' if shipped else 'the suite file'} again under a new "
                        "--label (the default label is the day and commit: a rerun the same day resumes that run)")
            elif shipped:
                hint = f"run `mgrq suite run {suite}{out_flag(out)}`"
            else:
                hint = (f"run its file with `mgrq suite run FILE{out_flag(out)}`, or see `mgrq suite list` for the "
                        "shipped suites")
            if not all_labels and known is None and not (Path(out).resolve() / suite).is_dir():
                have = suites_with_runs(out)
                hint += f"; suites with runs under {Path(out).resolve()}: {', '.join(have) or 'none'}"
            raise ConfigError(
                f"suite {suite}: {'no' if not all_labels else 'only one'} run under "
                f"{where}; expected at least {need} ({hint})"
            )
        return all_labels[-need]
    if label not in all_labels:
        from mgrq.errors import unknown

        raise unknown("label", label, all_labels, f"of suite {suite}" + (f" in {where}" if known is not None else ""))
    return label


def records_under(root: Path, bad: list[tuple[Path, str]] | None = None) -> list[tuple[Path, dict[str, Any]]]:
    """Every usable cell record under a label folder (or any folder above cells); the unreadable
    or malformed ones are appended to ``bad`` as ``(path, what is wrong)`` when it is given."""
    out = []
    for path in sorted(Path(root).glob("**/record.json")):
        rec = records.read_record(path)
        why = "unreadable (not a JSON object)" if rec is None else records.problem(rec)
        if rec is not None and why is None:
            out.append((path, rec))
        elif bad is not None and why is not None:
            bad.append((path, why))
    return out
