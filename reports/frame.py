"""Run records or MLflow runs -> one pandas DataFrame (one row per cell), and its aggregate
(mean, std and count over seeds). Both sources give the same columns.

Columns: suite, label, run_id, hash, model, method, name (variant or method), bits ("W4A4"),
w_bits, a_bits, seed, status, top1, top5, fp_top1, fp_top5, n_eval, quantize_s, total_s,
peak_mem_mb, device ("cpu" | "cuda", where the cell ran), cpu_threads (torch threads of a cell run on
the CPU: a reconstruction's result depends on them), calib, error, warnings (how many the
run record holds: units whose output error rose during reconstruction), git_sha (the commit
the cell ran from, ``+dirty.<hash>`` when its code was modified), source ("run" | "published"), citation.
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path
from typing import Any

import pandas as pd

from mgrq.errors import ConfigError
from mgrq.records import cpu_threads, read_record, weights_label
from mgrq.spec import parse_bits
from mgrq.tracking import flat_params, param_str

COLUMNS = [
    "suite", "label", "run_id", "hash", "model", "method", "name", "bits", "w_bits", "a_bits",
    "seed", "status", "top1", "top5", "fp_top1", "fp_top5", "n_eval", "quantize_s", "total_s",
    "peak_mem_mb", "device", "cpu_threads", "calib", "error", "warnings", "git_sha", "weights", "source", "citation",
]
PUBLISHED_CSV = Path(__file__).with_name("published.csv")


def _sha_tag(v: Any) -> str | None:
    """The git_sha tag as mirrored (``str(None)`` when the cell ran outside a git checkout)."""
    return None if v in (None, "None", "") else str(v)


def _device_type(d: Any) -> str | None:
    """``cuda:0`` -> ``cuda``; None when unknown."""
    return str(d).split(":")[0] if d not in (None, "", "None") else None


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _count(x: Any) -> int | None:
    """A whole number of a record (``2``, ``2.0``), else None (a malformed field is left blank)."""
    if isinstance(x, bool) or not isinstance(x, int | float) or not math.isfinite(x) or x != int(x):
        return None
    return int(x)


def as_counts(col: pd.Series) -> pd.Series:
    """A column of counts as written to a CSV: ``1000``, not ``1000.0``; blanks stay blank and
    anything else (a malformed record's value) as it is."""
    return pd.Series([c if (c := _count(v)) is not None else v for v in col], index=col.index, dtype=object)


def row_from_record(rec: dict[str, Any]) -> dict[str, Any]:
    spec = rec.get("spec", {})
    m, t = rec.get("metrics") or {}, rec.get("timings") or {}
    suite = rec.get("suite") or {}
    err = rec.get("error") or {}
    return {
        "suite": suite.get("name"), "label": suite.get("label"), "run_id": rec.get("id"),
        "hash": rec.get("hash"), "model": spec.get("model"), "method": spec.get("method"),
        "name": spec.get("variant") or spec.get("method"),
        "bits": f"W{spec.get('w_bits')}A{spec.get('a_bits')}",
        "w_bits": int(spec.get("w_bits", 0)), "a_bits": int(spec.get("a_bits", 0)),
        "seed": int(spec.get("seed", 0)), "status": rec.get("status"),
        "top1": _f(m.get("top1")), "top5": _f(m.get("top5")), "fp_top1": _f(m.get("fp_top1")),
        "fp_top5": _f(m.get("fp_top5")), "n_eval": _f(m.get("n_eval")),
        "quantize_s": _f(t.get("quantize_s")), "total_s": _f(t.get("total_s")),
        "peak_mem_mb": _f(rec.get("peak_mem_mb")),
        "device": _device_type(rec.get("device")),
        "cpu_threads": cpu_threads(rec),
        "calib": (rec.get("calibration") or {}).get("n", spec.get("calib")),
        "error": f"{err.get('type')}: {err.get('message')}" if err else None,
        "warnings": len(rec.get("warnings") or []), "git_sha": rec.get("git_sha"),
        "weights": weights_label(rec), "source": "run", "citation": None,
    }


def label_grids(out: str | Path, suite: str, labels: list[str]) -> dict[tuple[str, str], str]:
    """``(label, run id) -> hash`` of the cells each label's ``suite.json`` lists: the grid as the
    label last ran it, with the settings `suite status` holds the records against (a label without
    one lists nothing)."""
    from mgrq.runner.layout import grid_cells

    base = Path(out).resolve() / suite
    return {(lab, c["id"]): str(c.get("hash")) for lab in labels
            for c in grid_cells(read_record(base / lab / "suite.json") or {}) if c.get("hash")}


def records_frame(out: str | Path, suite: str, labels: list[str] | None = None) -> pd.DataFrame:
    """Cells with a result of ``suite`` under ``out``: done or failed, not interrupted, and run
    with the settings of the label's grid (see :func:`_one_per_cell`); the record files that are
    unreadable or malformed are named in ``df.attrs["unreadable"]``."""
    from mgrq.runner.layout import records_under

    base = Path(out).resolve() / suite
    dirs = [base / lab for lab in labels] if labels else sorted(d for d in base.glob("*") if d.is_dir())
    rows, times = [], []
    bad: list[tuple[Path, str]] = []
    for d in dirs:
        for _path, rec in records_under(d, bad):
            if rec.get("status") not in ("done", "failed"):
                continue
            row = row_from_record(rec)
            row["label"] = d.name  # the folder, not the record's own label: a label folder copied or renamed
            row["suite"] = row["suite"] or suite
            row["settings"] = record_settings(rec)
            rows.append(row)
            times.append(str(rec.get("finished") or rec.get("started") or ""))
    df = _one_per_cell(rows, times, label_grids(out, suite, [d.name for d in dirs]))
    df.attrs["unreadable"] = [f"{p.parent.parent.name}/{p.parent.name} ({why})" for p, why in bad]
    return df


def _interrupted(row: dict[str, Any]) -> bool:
    """A failed row whose cell was stopped (the error reads ``Interrupted: ...``, as the record's
    type and message are joined in both frames)."""
    return row.get("status") == "failed" and str(row.get("error") or "").startswith("Interrupted:")


def _one_per_cell(rows: list[dict[str, Any]], times: list[Any],
                  grid: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """The frame of ``rows`` with one row per (label, cell id). A row whose cell the label's grid
    (``grid``, :func:`label_grids`) lists under another hash ran with other settings than the
    grid has now (a suite file or option changed, and the cell has not run again): `suite status`
    shows the cell pending, so it has no result here either; such rows are listed in
    ``df.attrs["other_settings"]``. When a label holds a cell under
    several hashes otherwise (rerun with other options, e.g. ``--eval-limit``), the newest by ``times``
    wins, so no seed counts twice. The others are listed in ``df.attrs["superseded"]``. A cell
    whose newest record is interrupted (stopped before the end; the next run redoes it) has no
    result: it is left out, also when an older record of the cell under another hash finished;
    ``df.attrs["interrupted"]`` names it by ``(label, run id)``, ``["interrupted_cells"]`` by
    ``(label, model, name, bits, seed)``, the key the comparison joins on."""
    grid = grid or {}
    other = {i for i, r in enumerate(rows) if r["hash"] and grid.get((r["label"], r["run_id"]), r["hash"]) != r["hash"]}
    newest: dict[tuple[Any, Any], int] = {}
    for i in sorted(set(range(len(rows))) - other, key=lambda i: times[i]):
        newest[(rows[i]["label"], rows[i]["run_id"])] = i
    keep = set(newest.values())
    kept = [r for i, r in enumerate(rows) if i in keep and not _interrupted(r)]
    df = pd.DataFrame(kept, columns=COLUMNS)
    stopped = [r for i, r in enumerate(rows) if i in keep and _interrupted(r)]
    df.attrs["interrupted"] = [(r["label"], r["run_id"]) for r in stopped]
    df.attrs["interrupted_cells"] = [(r["label"], r["model"], r["name"], r["bits"], r["seed"]) for r in stopped]
    df.attrs["superseded"] = [f"{r['label']}/{r['run_id']}-{r['hash']}" for i, r in enumerate(rows)
                              if i not in keep and i not in other]
    df.attrs["other_settings"] = [f"{r['label']}/{r['run_id']}-{r['hash']}" for i, r in enumerate(rows) if i in other]
    df.attrs["settings"] = {(r["label"], r["run_id"]): r.get("settings") or {} for r in kept}
    return df


TABLE_SETTINGS = ("eval_split", "eval_limit", "eval_subset", "cpu_threads")
PARTIAL_SETTINGS = ("cpu_threads",)
"""Settings some cells have and others lack by nature (the thread count of a cell run on the CPU;
a cell on a GPU, or mirrored to MLflow before the param existed, has none): compared among the
cells that have them."""
ROW_SETTINGS = ("image_bits", "bits_overrides", "calib")  # a suite may set these per method entry


def settings(params: dict[str, str]) -> dict[str, str]:
    """The settings a table's cells should share, from a record's flat MLflow params
    (:func:`mgrq.tracking.flat_params`): the evaluation (``TABLE_SETTINGS``, the same in every cell);
    the image bits, layer policy, calibration size and method config (``ROW_SETTINGS``,
    ``config.*``: the same in every cell of one method row)."""
    return {k: v for k, v in params.items() if k in TABLE_SETTINGS + ROW_SETTINGS or k.startswith("config.")}


def record_settings(rec: dict[str, Any]) -> dict[str, str]:
    """:func:`settings` of a run record; none for a record whose method part is malformed (the
    record is still reported, it is only left out of this comparison)."""
    try:
        return settings(flat_params(rec))
    except (AttributeError, TypeError, ValueError):
        return {}


def _finished(df: pd.DataFrame) -> list[tuple[str, str, str, dict[str, str]]]:
    """``(run id, row name, method, settings)`` of each finished cell of ``df`` (its settings as
    :func:`record_settings` read them; none where they could not be read)."""
    by_cell = df.attrs.get("settings") or {}
    done = df[df["status"] == "done"]
    return [(str(rid), str(name), str(method), by_cell.get((lab, rid)) or {})
            for lab, rid, name, method in zip(done["label"], done["run_id"], done["name"], done["method"], strict=True)]


def splits(df: pd.DataFrame) -> dict[str, tuple[int, list[str]]]:
    """The evaluation splits of ``df``'s finished cells: ``{split: (cells, their ids)}``
    (``heldout`` where a record does not say: it ran before the tune split existed)."""
    out: dict[str, list[str]] = {}
    for rid, _, _, cell in _finished(df):
        split = str(cell.get("eval_split", "heldout"))
        out.setdefault("heldout" if split == "None" else split, []).append(rid)
    return {k: (len(v), v) for k, v in sorted(out.items())}


def settings_changes(a: pd.DataFrame, b: pd.DataFrame) -> list[str]:
    """What differs between the finished cells of two labels' frames, per method row present in
    both (``NAME: KEY A -> B``, each side's values joined by ``/`` when its cells disagree), so
    that a comparison says which settings its deltas include. Keys as :func:`settings`
    (evaluation, image bits, layer policy, calibration size, method config); a config field
    that only one side's records have (added to the method since) is not compared."""
    def values(df: pd.DataFrame) -> dict[str, dict[str, set[str]]]:
        out: dict[str, dict[str, set[str]]] = {}
        for _, name, _, cell in _finished(df):
            for k, v in cell.items():
                out.setdefault(name, {}).setdefault(k, set()).add(str(v))
        return out

    va, vb = values(a), values(b)
    out = []
    for name in sorted(set(va) & set(vb)):
        for k in sorted(set(va[name]) | set(vb[name])):
            if (k.startswith("config.") or k in PARTIAL_SETTINGS) and not (k in va[name] and k in vb[name]):
                continue
            was, now = va[name].get(k, {"(unset)"}), vb[name].get(k, {"(unset)"})
            if was != now:
                out.append(f"{name}: {k} {'/'.join(sorted(was))} -> {'/'.join(sorted(now))}")
    return out


def _inert(method: str, cell: dict[str, str]) -> set[str]:
    """The settings keys that do not act in a cell of ``method`` (its config class's
    ``inert_of``: MGRQ's pinned and switched-off parts, read from the record's values as they
    ran, not validated again); none where the method has no such notion or is unknown."""
    from mgrq.errors import UnknownNameError
    from mgrq.methods import get_method

    try:
        inert_of = getattr(get_method(method).config_cls, "inert_of", None)
    except UnknownNameError:
        return set()
    if inert_of is None:
        return set()
    return {f"config.{k}" for k in inert_of({k[7:]: v for k, v in cell.items() if k.startswith("config.")})}


def row_differences(df: pd.DataFrame, rows: list[str]) -> list[str]:
    """The settings in which the finished cells of the rows ``rows`` (an ablation table's) that
    are registered methods (not a suite's own variants, whose settings differ by design) differ
    from row to row, besides what each row switches off (:func:`_inert`) and besides the fields
    only some rows' methods have: ``KEY = V (row, row), V2 (row)``. A row whose own cells differ
    is :func:`mixed_settings`' note. An ablation of MGRQ's terms should differ in its terms only;
    e.g. ``w_global`` set for ``mgrq`` alone (its variants are other methods, which a suite's
    ``overrides.mgrq`` does not reach) shows here."""
    cells = [(name, method, cell) for _, name, method, cell in _finished(df) if name in rows and name == method]
    per_key: dict[str, dict[str, set[str]]] = {}
    for name, method, cell in cells:
        inert = _inert(method, cell)
        for k, v in cell.items():
            if k not in TABLE_SETTINGS and k not in inert:
                per_key.setdefault(k, {}).setdefault(name, set()).add(v)
    present = [r for r in rows if r in {name for name, _, _ in cells}]
    for k, by_row in per_key.items():  # a layer policy or image bits one row lacks: as mixed_settings
        if not k.startswith("config."):
            for r in present:
                by_row.setdefault(r, {"(unset)"})
    out = []
    for k, by_row in sorted(per_key.items()):
        shown = {r: next(iter(by_row[r])) for r in present if r in by_row}
        if len(set(shown.values())) > 1 and all(len(by_row[r]) == 1 for r in shown):
            groups: dict[str, list[str]] = {}
            for r, v in shown.items():
                groups.setdefault(v, []).append(r)
            out.append(f"{k} = " + ", ".join(f"{v} ({', '.join(rs)})" for v, rs in groups.items()))
    return out


def _defaults(method: str) -> dict[str, str]:
    """The settings keys of a cell of ``method`` at their defaults, as :func:`settings` spells
    them (the run spec's image bits and layer policy, the method's config fields); only the spec's
    where the method is not registered (a record from another version of the code)."""
    from dataclasses import MISSING, fields

    from mgrq.errors import UnknownNameError
    from mgrq.methods import get_method
    from mgrq.spec import RunSpec

    spec = {f.name: f.default for f in fields(RunSpec)}
    out = {"image_bits": str(spec["image_bits"])}
    try:
        cls = get_method(method).config_cls
    except UnknownNameError:  # the config defaults are unknown here: row_setups says so
        return out
    for f in fields(cls):
        if f.default is not MISSING:
            v = f.default
            out[f"config.{f.name}"] = param_str(v)
    return out


def row_setups(df: pd.DataFrame, names: list[str]) -> list[tuple[str, str, str, list[str]]]:
    """What each table row ran with, from its finished cells' records: ``(row name, method,
    calibration images, settings)``, where the settings are those that differ from the method's
    defaults (``mgrq methods METHOD``; a suite's overrides and a variant's own settings) and a
    layer policy, as ``key=value``; values that differ between a row's cells are joined by
    ``/`` (the report's notes say which cells). Rows without a finished cell are not listed."""
    rows: dict[str, tuple[str, dict[str, set[str]]]] = {}
    for _, name, method, cell in _finished(df):
        got = rows.setdefault(name, (method, {}))[1]
        for k, v in cell.items():
            if k not in TABLE_SETTINGS:
                got.setdefault(k, set()).add(str(v))
    out = []
    for name in [n for n in names if n in rows]:
        method, got = rows[name]
        calib = "/".join(sorted(got.pop("calib", {"?"}), key=lambda v: (len(v), v)))
        base = _defaults(method)
        known = method in registered_methods()
        shown = [f"{k.removeprefix('config.').replace('bits_overrides', 'layers')}={'/'.join(sorted(vs))}"
                 for k, vs in sorted(got.items()) if vs != {base.get(k)} and (known or not k.startswith("config."))]
        if not known:  # every config value would read as changed
            shown.append(f"config unknown here ({method} is not registered: a method of your own needs its "
                         "module in $MGRQ_METHODS)")
        out.append((name, method, calib, shown))
    return out


def registered_methods() -> set[str]:
    """The method names registered in this process (built-in and $MGRQ_METHODS)."""
    from mgrq.methods import all_methods

    return {m.name for m in all_methods()}


def mixed_settings(df: pd.DataFrame) -> list[str]:
    """What differs between the finished cells of ``df`` that one table puts side by side: a
    table-wide setting (e.g. ``eval_limit`` after a rerun with ``--eval-limit``) across all of
    them, a row setting (e.g. ``config.iters`` after a rerun from an edited suite file) across
    that row's cells. A config field that some cells' records lack (added to the method since
    they ran) is not compared, as ``suite run``'s drift check does not; a layer policy or image
    bits that only some cells have is. One line per setting, each value with its cell count."""
    by_cell = df.attrs.get("settings") or {}
    done = df[df["status"] == "done"]
    groups: list[tuple[str, pd.DataFrame, bool]] = [("all rows", done, True)]
    groups += [(f"row {name}", g, False) for name, g in done.groupby("name", sort=True)]
    out = []
    for where, g, table in groups:
        cells = [by_cell.get((lab, rid), {}) for lab, rid in zip(g["label"], g["run_id"])]
        cells = [c for c in cells if c]  # records whose settings could not be read
        names = sorted({k for c in cells for k in c if (k in TABLE_SETTINGS) == table})
        for k in names:
            if k.startswith("config.") and not all(k in c for c in cells):
                continue
            counts: dict[str, int] = {}
            for c in cells:
                if k in PARTIAL_SETTINGS and k not in c:
                    continue
                v = c.get(k, "(unset)")
                counts[v] = counts.get(v, 0) + 1
            if len(counts) > 1:
                vals = ", ".join(f"{v} ({n} cell{'s' * (n != 1)})" for v, n in sorted(counts.items(), key=lambda t: -t[1]))
                out.append(f"{where}: {k} = {vals}")
    return out


def mlflow_frame(uri: str, suite: str, labels: list[str] | None = None,
                 grid: dict[tuple[str, str], str] | None = None) -> pd.DataFrame:
    """The same frame from the runs mirrored into MLflow (params, metrics and tags); ``grid`` as
    :func:`records_frame` reads it from the run folders (where these are at hand)."""
    from mgrq.tracking import search

    rows, times = [], []
    for run in search(uri, suite, labels):
        p, m, t = run["params"], run["metrics"], run["tags"]
        times.append(run.get("start_time") or 0)
        err = t.get("error")
        rows.append({
            "suite": t.get("suite"), "label": t.get("label"), "run_id": t.get("run_id"),
            "hash": t.get("content_hash"), "model": p.get("model"), "method": p.get("method"),
            "name": p.get("name"), "bits": p.get("bits"), "w_bits": int(p.get("w_bits", 0)),
            "a_bits": int(p.get("a_bits", 0)), "seed": int(p.get("seed", 0)),
            "status": t.get("status"),
            **{k: _f(m.get(k)) for k in ("top1", "top5", "fp_top1", "fp_top5", "n_eval",
                                         "quantize_s", "total_s", "peak_mem_mb")},
            "device": _device_type(t.get("device_used")),
            "cpu_threads": int(p["cpu_threads"]) if str(p.get("cpu_threads", "")).isdigit() else None,
            "calib": int(p["calib"]) if str(p.get("calib", "")).isdigit() else None,
            "error": err, "warnings": int(m.get("warnings", 0)), "git_sha": _sha_tag(t.get("git_sha")),
            "weights": t.get("weights"), "source": "run", "citation": None, "settings": settings(p),
        })
    df = _one_per_cell(rows, times, grid)
    attrs = dict(df.attrs)
    df = df.sort_values(["label", "run_id"]).reset_index(drop=True)
    df.attrs.update(attrs)
    return df


PUBLISHED_COLUMNS = ["method", "bits", "model", "top1", "citation"]


def _published_error(path: Path, what: str) -> ConfigError:
    return ConfigError(f"published CSV {path}: {what}")


def _published_row(path: Path, line: int, r: dict[Any, Any]) -> dict[str, Any]:
    """One row of the published CSV, checked: ``line`` (of the file) names it in the error."""
    def bad(what: str) -> ConfigError:
        return _published_error(path, f"line {line}: {what}")

    if None in r:  # more fields than the header names
        raise bad(f"{len(r) - 1 + len(r[None])} fields, expected {len(r) - 1} "
                  f"(quote a citation that contains commas)")
    missing = [c for c in PUBLISHED_COLUMNS if r.get(c) is None]
    if missing:
        raise bad(f"no value for {', '.join(missing)} (the row has fewer fields than the header)")
    v = {c: str(r[c]).strip() for c in PUBLISHED_COLUMNS}
    for c, want in (("method", "a name"), ("model", "a name"), ("citation", "the paper the number is copied from")):
        if not v[c]:
            raise bad(f"empty {c}; expected {want}")
    bits = v["bits"].upper()
    if bits == "FP":
        w, a = 32, 32
    else:
        try:
            w, a = parse_bits(bits)
        except ConfigError as e:
            raise bad(f"{e}, or FP") from None
    try:
        top1 = float(v["top1"])
    except ValueError:
        raise bad(f"top1 {v['top1']!r} is not a number; expected the top-1 in % (e.g. 72.21)") from None
    if not 0.0 <= top1 <= 100.0:  # also rejects nan
        raise bad(f"top1 {v['top1']} is out of range; expected the top-1 in %, between 0 and 100")
    return {
        "suite": None, "label": "published", "run_id": None, "hash": None,
        "model": v["model"], "method": v["method"], "name": v["method"], "bits": bits,
        "w_bits": w, "a_bits": a, "seed": 0, "status": "done", "top1": top1,
        "top5": float("nan"), "fp_top1": float("nan"), "fp_top5": float("nan"),
        "n_eval": float("nan"), "quantize_s": float("nan"), "total_s": float("nan"),
        "peak_mem_mb": float("nan"), "cpu_threads": None, "calib": None, "error": None, "warnings": 0, "git_sha": None,
        "source": "published",
        "citation": v["citation"],
    }


def published_frame(path: str | Path | None = None) -> pd.DataFrame:
    """Published reference numbers (``reports/published.csv``, or the CSV at ``path``): lines
    starting with ``#`` are comments, then a header naming at least the columns method, bits
    (WxAy or FP), model, top1 (%, 0-100) and citation (other columns are ignored). The method
    ``fp`` is the full-precision row. A missing or unreadable file, a missing column or a bad
    value raises :class:`ConfigError` naming the file (and the line)."""
    p = Path(path) if path else PUBLISHED_CSV
    expected = f"expected a CSV with the columns {', '.join(PUBLISHED_COLUMNS)} (see {PUBLISHED_CSV})"
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:  # -sig: a BOM (spreadsheet export)
            lines = [(i, line) for i, line in enumerate(f, 1) if not line.startswith("#")]
    except FileNotFoundError:
        raise _published_error(p, f"file not found; {expected}") from None
    except IsADirectoryError:
        raise _published_error(p, f"is a folder; {expected}") from None
    except UnicodeDecodeError as e:
        raise _published_error(p, f"not UTF-8 text ({e.reason} at byte {e.start}); {expected}") from None
    except OSError as e:
        raise _published_error(p, f"cannot be read ({e.strerror or e}); {expected}") from None
    reader = csv.DictReader(line for _, line in lines)

    def line_no() -> int:  # the file's line of the record just read (comments skipped)
        return lines[min(max(reader.line_num, 1), len(lines)) - 1][0] if lines else 1

    rows = []
    try:
        header = [c.strip() for c in reader.fieldnames or []]
        if not header:
            raise _published_error(p, f"no header line; {expected}")
        missing = [c for c in PUBLISHED_COLUMNS if c not in header]
        if missing:
            raise _published_error(p, f"missing column(s) {', '.join(missing)} (header: {', '.join(header)}); "
                                      f"{expected}")
        reader.fieldnames = header
        for r in reader:
            rows.append(_published_row(p, line_no(), r))
    except csv.Error as e:
        raise _published_error(p, f"line {line_no()}: {e}; {expected}") from None
    return pd.DataFrame(rows, columns=COLUMNS)


def grid_seeds(ids: list[str]) -> dict[tuple[str, str, str], int]:
    """How many seeds the grid has per (model, name, bits), from its cell ids
    (``MODEL.NAME.wWaA.sSEED``; a variant name may hold dots, a zoo model name does not)."""
    out: dict[tuple[str, str, str], int] = {}
    for cid in ids:
        parts = cid.split(".")
        if len(parts) < 4 or not re.fullmatch(r"w\d+a\d+", parts[-2]) or not re.fullmatch(r"s\d+", parts[-1]):
            continue
        key = (parts[0], ".".join(parts[1:-2]), parts[-2].upper())
        out[key] = out.get(key, 0) + 1
    return out


def aggregate(df: pd.DataFrame, expected: dict[tuple[str, str, str], int] | None = None) -> pd.DataFrame:
    """Per (model, name, bits): mean/std/count of top-1 over the done seeds, failed count,
    ``missing`` (seeds of the grid, ``expected``, with no record: not run, running, interrupted),
    mean FP top-1, mean quantization time and peak memory."""
    keys = ["model", "name", "bits", "w_bits", "a_bits", "source"]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "failed", "missing", "fp", "quantize_s",
                                     "peak_mem_mb", "device"])
    done = df[df["status"] == "done"]
    g = done.groupby(keys, dropna=False)
    agg = g.agg(mean=("top1", "mean"), std=("top1", "std"), n=("top1", "count"),
                fp=("fp_top1", "mean"), quantize_s=("quantize_s", "mean"),
                peak_mem_mb=("peak_mem_mb", "mean"),
                device=("device", lambda d: "+".join(sorted({str(x) for x in d.dropna()})) or None)).reset_index()
    failed = (df[df["status"] == "failed"].groupby(keys, dropna=False).size()
              .rename("failed").reset_index())
    agg = agg.merge(failed, on=keys, how="outer")
    agg["failed"] = agg["failed"].fillna(0).astype(int)
    agg["n"] = agg["n"].fillna(0).astype(int)
    want = [(expected or {}).get((m, n, b), 0) for m, n, b in zip(agg["model"], agg["name"], agg["bits"], strict=True)]
    agg["missing"] = [max(w - n - f, 0) for w, n, f in zip(want, agg["n"], agg["failed"], strict=True)]
    return agg
