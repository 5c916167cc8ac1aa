"""Mirroring run records into MLflow (imported lazily: ``import mgrq`` never loads mlflow).

- One experiment per suite; one MLflow run per cell and label, named ``<label>/<run id>``.
- Flat params (the spec and the method config), metrics (accuracy, timings, memory; a
  reconstruction's per-unit output error, time and changed rounding as step metrics, one step per
  unit, :func:`unit_metrics`), tags
  (``label``, ``git_sha``, ``run_id``, ``content_hash``, ``status``, executor and SLURM job id)
  and the record and the cell log as artifacts.
- Default store: ``sqlite:///<abs out>/mlflow.db`` with artifacts under ``<out>/mlartifacts``
  (no server needed). ``MLFLOW_TRACKING_URI`` (e.g. a team server) wins when set.
- Idempotent: every MLflow run carries the tag ``mgrq.key`` (suite/label/cell folder) and
  ``mgrq.digest`` (hash of the record). Mirroring again creates nothing for unchanged records;
  a record that changed (a failed cell that later succeeded) replaces its run. Mirrors of one runs
  folder take turns (``<out>/.mirror.lock``, flock): one could otherwise delete, as an older
  copy, a run the other is still writing. A cell logged twice anyway (two runs folders holding
  one id) is one run again at the next mirror. ``mgrq.records`` is the id of the runs folder
  (``<out>/.mgrq-id``): another folder's run under the same key is left alone, not replaced.
  The ``label`` tag is the record's folder, as in the reports; ``label_created`` is when that
  label was made (its ``suite.json``), which orders the labels as the run folders do.
- Only the driver (or ``mgrq mirror``) writes to MLflow; compute nodes never need to reach it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
import secrets
import socket
import sys
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mgrq import records
from mgrq.errors import MGRQError, first_line
from mgrq.records import read_record, weights_label

KEY_TAG = "mgrq.key"
DIGEST_TAG = "mgrq.digest"
ORIGIN_TAG = "mgrq.records"  # the runs folder the run was mirrored from
LABEL_CREATED_TAG = "label_created"  # when the run's label was made (its suite.json): orders the labels
METRICS = {
    "top1": ("metrics", "top1"), "top5": ("metrics", "top5"),
    "fp_top1": ("metrics", "fp_top1"), "fp_top5": ("metrics", "fp_top5"),
    "n_eval": ("metrics", "n_eval"),
    "quantize_s": ("timings", "quantize_s"), "total_s": ("timings", "total_s"),
    "load_s": ("timings", "load_s"), "fp_eval_s": ("timings", "fp_eval_s"),
    "eval_s": ("timings", "eval_s"),
}


class MirrorError(MGRQError):
    """MLflow could not be reached or written; the run records on disk are unaffected."""


@dataclass
class MirrorResult:
    uri: str
    created: int = 0
    replaced: int = 0
    unchanged: int = 0
    skipped_running: int = 0
    duplicates: int = 0  # extra runs of one cell (two mirrors at once), deleted
    unreadable: list[str] = field(default_factory=list)  # record files left out, with what is wrong
    foreign: list[str] = field(default_factory=list)  # runs of another machine's records under the same key
    pruned: list[str] = field(default_factory=list)  # --prune: runs deleted, their records gone
    prune_left: list[str] = field(default_factory=list)  # --prune: records gone, runs not this folder's
    nothing_named: str | None = None  # --prune --suite S: neither a folder nor an experiment S

    def counts(self) -> str:
        line = f"{self.created} run(s) created, {self.replaced} replaced, {self.unchanged} unchanged"
        if self.skipped_running:
            line += f", {self.skipped_running} running (not mirrored yet)"
        if self.duplicates:
            line += f", {self.duplicates} duplicate run(s) of a cell deleted"
        if self.unreadable:
            line += f"; {len(self.unreadable)} unreadable record(s) left out: {self.unreadable[0]}"
        if self.nothing_named:
            line += f"; {self.nothing_named}"
        if self.pruned:
            line += f"; {len(self.pruned)} run(s) deleted, their records gone ({self.pruned[0]})"
        if self.prune_left:
            line += (f"; {len(self.prune_left)} run(s) whose records are not under this runs folder left alone "
                     f"({self.prune_left[0]}): mirrored from another runs folder, or by a version without "
                     "the mgrq.records tag")
        if self.foreign:
            line += (f"; {len(self.foreign)} run(s) mirrored from another runs folder under the same suite and label "
                     f"left alone ({self.foreign[0]}): another machine's, or this folder moved; use another --label "
                     "to keep both, or delete those runs in MLflow")
        return line

    def line(self) -> str:
        return f"MLflow ({self.uri}): {self.counts()}"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")  # two lines per run otherwise
    for name in ("alembic", "mlflow.tracking._tracking_service.client"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # its retries of a database it cannot open repeat one warning for minutes; the error that
    # ends them is reported (MirrorError) all the same
    logging.getLogger("mlflow.store.db.utils").setLevel(logging.ERROR)


def default_uri(out: str | os.PathLike) -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else the sqlite file under ``out``."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return "sqlite:///" + str(Path(out).resolve() / "mlflow.db")


def ui_command(uri: str) -> str:
    return f"mlflow ui --backend-store-uri {uri}" if not uri.startswith("http") else f"open {uri}"


def _local_store(uri: str) -> bool:
    return uri.startswith("sqlite:") or uri.startswith("file:") or "://" not in uri


DATABRICKS_NAMES = ("databricks", "databricks-uc", "uc")  # MLflow's names of a Databricks workspace's own store


def _scheme_known(uri: str) -> bool:
    """Whether MLflow has a tracking store for ``uri``'s scheme (its own registry, plugins
    included); True when that cannot be asked (its private registry moved in another version)."""
    try:
        from mlflow.tracking._tracking_service.utils import _tracking_store_registry
    except (ImportError, AttributeError):
        return True
    try:
        _tracking_store_registry.get_store_builder(uri)
    except Exception as e:  # mlflow's UnsupportedModelRegistryStoreURIException
        return "Unsupported" not in type(e).__name__
    return True


def check_store_kind(uri: str, probe: bool = True) -> None:
    """Before any work, what MLflow would refuse only after the cells ran (one line each, with what
    to use instead): a scheme it does not know (``htp://``); a file store (``file:``, or a plain
    path), which MLflow 3 refuses unless ``MLFLOW_ALLOW_FILE_STORE`` is true; a sqlite database
    that cannot be created or written where the URI puts it (``probe``: a ``--dry-run`` does
    not look at the file system)."""
    expected = "expected sqlite:///PATH.db or http(s)://SERVER"
    if uri in DATABRICKS_NAMES:
        return
    if "://" in uri and not _scheme_known(uri):
        scheme = uri.split("://", 1)[0]
        raise MirrorError(f"MLflow tracking URI {uri}: unknown scheme {scheme!r} (MLflow has no store for it); "
                          f"{expected} (or a database URI: postgresql://, mysql://, mssql://)")
    if uri.startswith("sqlite:///"):
        if not probe:
            return
        from mgrq.errors import ConfigError
        from mgrq.records import check_writable

        db = Path(uri[len("sqlite:///"):])
        try:
            check_writable(db, f"MLflow tracking URI {uri}: database")
            if db.exists() and not os.access(db, os.W_OK):
                raise ConfigError(f"MLflow tracking URI {uri}: database {str(db)!r} is read-only; expected a "
                                  "database file MLflow can write")
        except ConfigError as e:
            raise MirrorError(str(e)) from None
        return
    if not _local_store(uri) or uri.startswith("sqlite:"):
        return  # a server or a database
    if os.environ.get("MLFLOW_ALLOW_FILE_STORE", "").strip().lower() in ("true", "1"):
        return
    raise MirrorError(f"MLflow tracking URI {uri}: a file store, which MLflow 3 refuses (maintenance mode); "
                      f"{expected}, or MLFLOW_ALLOW_FILE_STORE=true to use it anyway")


def check_reachable(uri: str, timeout_s: float = 5.0, write: bool = True) -> None:
    """Fail fast (one line) when a tracking server does not answer, or the store is one MLflow
    refuses (:func:`check_store_kind`). ``write=False`` (reading runs for a report): a sqlite
    database is not probed for writing, and its folder not created."""
    check_store_kind(uri, probe=write)
    if uri.startswith("sqlite:///"):
        if write:
            Path(uri[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
        return
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as r:
                if r.status != 200:
                    raise MirrorError(f"MLflow tracking URI {uri}: /health answered HTTP {r.status}")
        except (urllib.error.URLError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise MirrorError(f"MLflow tracking URI {uri}: unreachable ({reason})") from None


def record_digest(rec: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(rec, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _ms(stamp: str | None) -> int | None:
    if not stamp:
        return None
    from datetime import datetime

    try:
        return int(datetime.fromisoformat(stamp).timestamp() * 1000)
    except ValueError:
        return None


def _num(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    return float(x)


def param_str(v: Any) -> str:
    """A config value as an MLflow param (and a report's settings) spell it: lists and mappings
    as JSON, anything else as ``str``."""
    return json.dumps(v) if isinstance(v, list | dict) else str(v)


def flat_params(rec: dict[str, Any]) -> dict[str, str]:
    """The MLflow params of a record: the spec and the method config, flat, as strings."""
    spec = rec.get("spec", {})
    params: dict[str, str] = {}
    for k in ("model", "method", "w_bits", "a_bits", "seed", "image_bits", "eval_split",
              "eval_limit", "data_root", "checkpoint", "device"):
        params[k] = str(spec.get(k))
    params["name"] = str(spec.get("variant") or spec.get("method"))
    params["bits"] = f"W{spec.get('w_bits')}A{spec.get('a_bits')}"
    params["calib"] = str((rec.get("calibration") or {}).get("n", spec.get("calib")))
    if spec.get("eval_limit") is not None:  # which images: a record without the field kept the first N
        params["eval_subset"] = str((rec.get("data") or {}).get("eval_subset") or "first")
    if spec.get("bits_overrides"):
        params["bits_overrides"] = json.dumps(spec["bits_overrides"])
    if (threads := records.cpu_threads(rec)) is not None:  # a CPU reconstruction's result depends on it
        params["cpu_threads"] = str(threads)
    cfg = (rec.get("method") or {}).get("config") or spec.get("method_config") or {}
    for k, v in cfg.items():
        params[f"config.{k}"] = param_str(v)
    return {k: v[:6000] for k, v in params.items()}


def flatten(rec: dict[str, Any], key: str) -> tuple[dict[str, str], dict[str, float], dict[str, str]]:
    """``(params, metrics, tags)`` of a record (flat, MLflow-ready)."""
    params = flat_params(rec)
    metrics: dict[str, float] = {}
    for name, (sect, name_in_sect) in METRICS.items():
        v = _num((rec.get(sect) or {}).get(name_in_sect))
        if v is not None:
            metrics[name] = v
    if "top1" in metrics and "fp_top1" in metrics:
        metrics["top1_drop"] = metrics["fp_top1"] - metrics["top1"]
    if _num(rec.get("peak_mem_mb")) is not None:
        metrics["peak_mem_mb"] = float(rec["peak_mem_mb"])
    for k, v in ((rec.get("method") or {}).get("info") or {}).items():
        if _num(v) is not None:
            metrics[f"info.{k}"] = float(v)

    suite = rec.get("suite") or {}
    ex = rec.get("executor") or {}
    tags = {
        KEY_TAG: key, DIGEST_TAG: record_digest(rec),
        "suite": str(suite.get("name")), "label": str(suite.get("label")),
        "run_id": str(rec.get("id")), "content_hash": str(rec.get("hash")),
        "status": str(rec.get("status")), "git_sha": str(rec.get("git_sha")),
        "host": str(rec.get("host") or ex.get("host")), "executor": str(ex.get("name")),
        "job_id": str(ex.get("job_id")), "slurm_job_id": str(ex.get("slurm_job_id")),
        "calibration_ids_hash": str((rec.get("calibration") or {}).get("ids_hash")),
        "device_used": str(rec.get("device")),  # the resolved device (spec.device may be "auto")
    }
    if wl := weights_label(rec):
        tags["weights"] = wl
    if rec.get("status") == "failed":
        err = rec.get("error") or {}
        tags["error"] = f"{err.get('type')}: {err.get('message')}"[:5000]
    warnings = rec.get("warnings") or []
    if rec.get("status") == "done":
        metrics["warnings"] = float(len(warnings))
    if warnings:
        tags["warnings"] = "\n".join(warnings)[:5000]
    return params, metrics, tags


UNIT_FIELDS = {"out_mse_init": ("out_mse", "init"), "out_mse_final": ("out_mse", "final"),
               "wall_s": ("wall_s",), "rounding_changed": ("rounding_changed",)}


def unit_metrics(rec: dict[str, Any]) -> tuple[list[tuple[str, float, int]], dict[str, str]]:
    """A reconstruction's per-unit figures as MLflow step metrics: ``unit.<stage>.<field>`` (the
    fields of :data:`UNIT_FIELDS`) at step = the unit's place in its stage (0: the first unit), and
    a tag ``unit.<stage>`` naming the units in that order. A stage name met again in a later pass
    gets the pass number (``joint.1``). Nothing for a record without ``method.info.recon``."""
    recon = ((rec.get("method") or {}).get("info") or {}).get("recon")
    metrics: list[tuple[str, float, int]] = []
    tags: dict[str, str] = {}
    for i, rpass in enumerate(recon if isinstance(recon, list) else []):
        for stage in (rpass.get("stages") if isinstance(rpass, dict) else None) or []:
            units = stage.get("units") if isinstance(stage, dict) else None
            if not isinstance(units, list):
                continue
            name = str(stage.get("stage"))
            if f"unit.{name}" in tags:
                name = f"{name}.{i}"
            tags[f"unit.{name}"] = ",".join(str(u.get("unit")) for u in units if isinstance(u, dict))[:5000]
            for step, u in enumerate(units):
                for field_name, path in UNIT_FIELDS.items():
                    v: Any = u
                    for part in path:
                        v = v.get(part) if isinstance(v, dict) else None
                    if _num(v) is not None:
                        metrics.append((f"unit.{name}.{field_name}", float(v), step))
    return metrics, tags


def _client(uri: str):
    _quiet()
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def _experiment_id(client: Any, name: str, uri: str, out: Path) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    loc = (out.resolve() / "mlartifacts" / name).as_uri() if _local_store(uri) else None
    return client.create_experiment(name, artifact_location=loc)


def existing_runs(client: Any, exp_id: str) -> dict[str, list[Any]]:
    """Active runs of an experiment by their ``mgrq.key`` tag, newest first (two mirrors run at
    once may have logged a cell twice)."""
    found: dict[str, list[Any]] = {}
    token = None
    while True:
        page = client.search_runs([exp_id], max_results=1000, page_token=token)
        for run in page:
            key = run.data.tags.get(KEY_TAG)
            if key:
                found.setdefault(key, []).append(run)
        token = page.token
        if not token:
            break
    for runs in found.values():
        runs.sort(key=lambda r: -(r.info.start_time or 0))
    return found


ORIGIN_FILE = ".mgrq-id"  # under --out: the runs folder's id, made by its first mirror


def runs_folder_id(out: Path) -> str:
    """The id of a runs folder (``<out>/.mgrq-id``, made once): two machines mirroring one suite
    and label into one store must not replace each other's runs. An id in the folder, not its
    path (a moved folder is the same records) nor a host (a SLURM cell's record holds its compute
    node, another on each rerun)."""
    path = out.resolve() / ORIGIN_FILE
    try:
        return path.read_text().strip()
    except OSError:
        pass
    new = f"{socket.gethostname()}:{out.resolve()}:{secrets.token_hex(4)}"  # readable where it came from
    tmp = path.with_name(f"{ORIGIN_FILE}.{os.getpid()}")
    try:
        tmp.write_text(new + "\n")
        try:
            os.link(tmp, path)  # two mirrors at once: the first one's id wins
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)
        return path.read_text().strip()
    except OSError:  # a runs folder this process cannot write (mirrored from elsewhere): its path
        return str(out.resolve())


MIRROR_LOCK = ".mirror.lock"


def _open_lock(path: Path) -> Any:
    """``path`` opened for reading and writing (made when missing), else for reading only (flock
    needs no write access), else None."""
    try:
        return os.fdopen(os.open(path, os.O_RDWR | os.O_CREAT, 0o666), "r+")
    except OSError:
        pass
    try:
        return os.fdopen(os.open(path, os.O_RDONLY), "r")
    except OSError:
        return None


@contextlib.contextmanager
def mirror_lock(out: Path):
    """Hold ``<out>/.mirror.lock`` (flock) while mirroring ``out``: a driver finishing its label
    and a ``mgrq mirror`` by hand take turns; the later one says whom it waits for. A lock file
    this process cannot write (a read-only copy, another user's) is locked read-only, without the
    holder's line; a folder where none can be made or locked is mirrored without it."""
    path = out.resolve() / MIRROR_LOCK
    f = _open_lock(path)
    if f is None:
        yield
        return
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            print(f"mgrq: waiting for another mirror of {out} to finish ({f.read().strip() or 'pid unknown'})",
                  file=sys.stderr, flush=True)
            fcntl.flock(f, fcntl.LOCK_EX)
        except OSError:  # a filesystem without flock
            yield
            return
        try:
            if f.writable():
                f.seek(0)
                f.truncate()
                f.write(records.holder() + "\n")
                f.flush()
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def mirror(out: str | os.PathLike, suite: str | None = None, label: str | None = None,
           uri: str | None = None, prune: bool = False) -> MirrorResult:
    """Mirror the finished records under ``out`` (one suite / one label, or all) into MLflow.

    ``prune``: then delete (MLflow's delete: restorable until ``mlflow gc``) the runs, in the same
    scope, that this runs folder mirrored and whose record is gone from it (a label or cell folder
    deleted). Runs mirrored from another runs folder, or without the ``mgrq.records`` tag, are
    left alone and counted. A ``suite`` without a folder under ``out`` is pruned from its
    experiment. Raises :class:`MirrorError` (one line, with the command to redo it) when the store
    cannot be reached or written. The records on disk are never modified."""
    out = Path(out)
    uri = uri or default_uri(out)
    uri_flag = "" if uri == "sqlite:///" + str(out.resolve() / "mlflow.db") else f" --tracking-uri {uri}"
    redo = (f"the run records are safe under {out.resolve()}; mirror them later with "
            f"`mgrq mirror --out {out}" + (f" --suite {suite}" if suite else "")
            + (f" --label {label}" if label else "") + uri_flag + " --prune" * prune + "`")
    try:
        check_reachable(uri)
    except MirrorError as e:
        raise MirrorError(f"{e}; {redo}") from None
    with mirror_lock(out):
        return _mirror(out, suite, label, uri, prune, redo)


def _mirror(out: Path, suite: str | None, label: str | None, uri: str, prune: bool, redo: str) -> MirrorResult:
    from mgrq.runner.layout import records_under

    result = MirrorResult(uri)
    suites = [suite] if suite else sorted(p.name for p in out.resolve().iterdir()
                                          if p.is_dir() and not p.name.startswith(("mlartifacts", ".")))
    try:
        client = _client(uri)
        origin = runs_folder_id(out) if suites else ""
        seen_label = label is None  # --prune --label L: a folder or a run of L somewhere
        for s in suites:
            base = out.resolve() / s
            seen_label = seen_label or (base / str(label)).is_dir()
            lab_dirs = [base / label] if label else sorted(d for d in base.iterdir() if d.is_dir()) if base.is_dir() else []
            bad: list[tuple[Path, str]] = []
            recs = [(p, r) for d in lab_dirs if d.is_dir() for p, r in records_under(d, bad)]
            result.unreadable += [f"{p} ({why})" for p, why in bad]
            unreadable = {_key(s, p) for p, _ in bad}  # there, if unreadable
            if not recs:
                exp = client.get_experiment_by_name(s) if prune else None
                if exp is not None and exp.lifecycle_stage == "active":
                    runs_s = existing_runs(client, exp.experiment_id)
                    _prune(client, runs_s, unreadable, s, label, origin, result)
                    seen_label = seen_label or any(_in_label(k, label) for k in runs_s)
                elif prune and not base.is_dir():
                    result.nothing_named = (f"no suite folder {s} under {out} and no MLflow experiment {s}: "
                                            "nothing to prune; expected the name of a suite mirrored into this store")
                continue
            exp_id = _experiment_id(client, s, uri, out)
            have = existing_runs(client, exp_id)
            if prune:
                present = {_key(s, p) for p, _ in recs} | unreadable
                _prune(client, have, present, s, label, origin, result)
                seen_label = seen_label or any(_in_label(k, label) for k in have)
            for path, rec in recs:
                if rec.get("status") not in ("done", "failed"):
                    result.skipped_running += 1
                    continue
                key = _key(s, path)
                olds = have.get(key, [])
                same = [o for o in olds if o.data.tags.get(DIGEST_TAG) == record_digest(rec)][:1]
                theirs = [o for o in olds if o.data.tags.get(ORIGIN_TAG, origin) != origin]
                if theirs and not same:  # another machine's records under this suite and label
                    result.foreign.append(f"{key} from {theirs[0].data.tags[ORIGIN_TAG]}")
                    continue
                for o in olds:
                    if o not in same:
                        client.delete_run(o.info.run_id)
                result.duplicates += max(0, len(olds) - 1)
                if same:  # unchanged; a run of an older mirror gets the tags it lacks
                    for tag, value in _own_tags(path, rec, origin).items():
                        if same[0].data.tags.get(tag) is None or (tag == "label" and same[0].data.tags[tag] != value):
                            client.set_tag(same[0].info.run_id, tag, value)
                    result.unchanged += 1
                    continue
                if olds:
                    result.replaced += 1
                else:
                    result.created += 1
                _log_run(client, exp_id, key, path, rec, origin)
        if prune and not seen_label and result.nothing_named is None:
            result.nothing_named = (f"no label {label} under {out} and no MLflow run of it: nothing to prune; expected "
                                    "a label as `mgrq suite status` or the runs' label tag name it")
    except MirrorError:
        raise
    except Exception as e:
        msg = first_line(e, 300) or type(e).__name__
        raise MirrorError(f"MLflow ({uri}): mirroring failed ({type(e).__name__}: {msg}); {redo}") from None
    return result


def _key(suite: str, record_path: Path) -> str:
    """A cell's ``mgrq.key`` tag: ``suite/label/cell folder`` of its record."""
    return f"{suite}/{record_path.parent.parent.name}/{record_path.parent.name}"


def _in_label(key: str, label: str | None) -> bool:
    """Whether the run of ``key`` (:func:`_key`) is in label ``label``."""
    return key.split("/")[1:2] == [label]


def _own_tags(path: Path, rec: dict[str, Any], origin: str) -> dict[str, str]:
    """The tags a run takes from where its record lies, not from the record's digest: its runs
    folder, its label (the record's folder, as in the reports: a cell folder copied beside its
    label keeps the record's own label inside, and must not count in that label's tables), when
    that label was made, and the weights. A run of an older mirror gets those it lacks."""
    tags = {ORIGIN_TAG: origin, "label": path.parent.parent.name}
    for tag, value in ((LABEL_CREATED_TAG, label_created(path)), ("weights", weights_label(rec))):
        if value:
            tags[tag] = value
    return tags


def _prune(client: Any, have: dict[str, list[Any]], present: set[str], suite: str, label: str | None,
           origin: str, result: MirrorResult) -> None:
    """Delete the runs of ``have`` (keys ``suite/label/cell``) in the scope of ``label`` whose key
    is not ``present`` and which this runs folder (``origin``) mirrored; count the others."""
    for key, runs in sorted(have.items()):
        if key in present or (label is not None and not _in_label(key, label)):
            continue
        for run in runs:
            if run.data.tags.get(ORIGIN_TAG) == origin:
                client.delete_run(run.info.run_id)
                result.pruned.append(key)
            else:
                result.prune_left.append(key)


@functools.lru_cache(maxsize=64)
def _suite_json_created(path: Path, mtime_ns: int) -> str | None:
    created = (read_record(path) or {}).get("created")
    return str(created) if created else None


def label_created(record_path: Path) -> str | None:
    """When the label of the cell record ``record_path`` was made: its ``suite.json``'s ``created``."""
    path = record_path.parent.parent / "suite.json"
    try:
        return _suite_json_created(path, path.stat().st_mtime_ns)
    except OSError:
        return None


def _log_run(client: Any, exp_id: str, key: str, path: Path, rec: dict[str, Any], origin: str) -> str:
    from mlflow.entities import Metric, Param, RunTag

    params, metrics, tags = flatten(rec, key)
    steps, unit_tags = unit_metrics(rec)
    tags.update(unit_tags)
    digest = tags.pop(DIGEST_TAG)  # set last: an interrupted mirror is redone next time
    tags.update(_own_tags(path, rec, origin))
    label = tags["label"]
    sha = str(rec.get("git_sha") or "")
    if sha and sha != "None":
        tags["mlflow.source.git.commit"] = sha.split("+")[0]  # MLflow's own column; git_sha keeps +dirty
    run = client.create_run(exp_id, start_time=_ms(rec.get("started")),
                            run_name=f"{label}/{rec.get('id')}", tags={KEY_TAG: key})
    rid = run.info.run_id
    ts = _ms(rec.get("finished")) or _ms(rec.get("started")) or 0
    client.log_batch(
        rid,
        metrics=[Metric(k, v, ts, 0) for k, v in metrics.items()] + [Metric(k, v, ts, i) for k, v, i in steps],
        params=[Param(k, v) for k, v in params.items()],
        tags=[RunTag(k, v) for k, v in tags.items()],
    )
    client.log_artifact(rid, str(path))
    for extra in ("cell.log", "events.jsonl"):
        if (path.parent / extra).is_file():
            client.log_artifact(rid, str(path.parent / extra))
    stopped = (rec.get("error") or {}).get("type") == "Interrupted"  # no failure of the method: KILLED
    client.set_terminated(rid, "FINISHED" if rec.get("status") == "done" else "KILLED" if stopped else "FAILED",
                          end_time=_ms(rec.get("finished")))
    client.set_tag(rid, DIGEST_TAG, digest)
    return rid


def search(uri: str, suite: str, labels: list[str] | None = None) -> list[dict[str, Any]]:
    """The mirrored runs of a suite as flat dicts ``{params, metrics, tags}`` (for reports).
    Reads only: a sqlite store that does not exist is an error, not created."""
    if uri.startswith("sqlite:///") and not Path(uri[len("sqlite:///"):]).is_file():
        raise MirrorError(f"MLflow ({uri}): no such sqlite store; expected the store the runs were mirrored into "
                          "(`mgrq mirror` writes <out>/mlflow.db by default)")
    check_reachable(uri, write=False)
    try:
        client = _client(uri)
        exp = client.get_experiment_by_name(suite)
        # one run per cell: the newest of any two that mirrors run at once left (the next mirror deletes the other)
        runs = [rs[0] for rs in existing_runs(client, exp.experiment_id).values()] if exp is not None else []
    except Exception as e:  # an unsupported scheme, a store that is not MLflow's, ...
        msg = first_line(e, 300) or type(e).__name__
        raise MirrorError(f"MLflow ({uri}): cannot be read ({type(e).__name__}: {msg}); expected the tracking "
                          "URI the runs were mirrored into") from None
    if exp is None:
        raise MirrorError(f"MLflow ({uri}): no experiment named {suite!r}; run `mgrq mirror` first")
    out = []
    for run in runs:
        if labels and run.data.tags.get("label") not in labels:
            continue
        out.append({"params": dict(run.data.params), "metrics": dict(run.data.metrics),
                    "tags": dict(run.data.tags), "run_uuid": run.info.run_id,
                    "start_time": run.info.start_time})
    return out


def labels(uri: str, suite: str) -> list[str]:
    """The labels mirrored for a suite, oldest first, as the run folders order them: by the time
    the label was created (tag ``label_created``, from its ``suite.json``), else, for runs mirrored
    before that tag, by the earliest run start. So a label resumed later (its first finished cell
    a week after it was made) keeps its place."""
    from datetime import datetime, timezone

    first: dict[str, str] = {}
    for run in search(uri, suite):
        lab = run["tags"].get("label")
        if lab:
            t = run["tags"].get(LABEL_CREATED_TAG) or datetime.fromtimestamp(
                (run["start_time"] or 0) / 1000, timezone.utc).isoformat(timespec="seconds")
            first[lab] = min(first.get(lab, t), t)
    return sorted(first, key=lambda k: (first[k], k))
