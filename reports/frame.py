"""Run records or MLflow runs -> one pandas DataFrame (one row per cell), and its aggregate
(mean, std and count over seeds). Both sources give the same columns.

Columns: suite, label, run_id, hash, model, method, name (variant or method), bits ("W4A4"),
w_bits, a_bits, seed, status, top1, top5, fp_top1, fp_top5, n_eval, quantize_s, total_s,
peak_mem_mb, device ("cpu" | "cuda", where the cell ran), calib, error, source ("run" |
"published"), citation.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pandas as pd

COLUMNS = [
    "suite", "label", "run_id", "hash", "model", "method", "name", "bits", "w_bits", "a_bits",
    "seed", "status", "top1", "top5", "fp_top1", "fp_top5", "n_eval", "quantize_s", "total_s",
    "peak_mem_mb", "device", "calib", "error", "source", "citation",
]
PUBLISHED_CSV = Path(__file__).with_name("published.csv")


def _device_type(d: Any) -> str | None:
    """``cuda:0`` -> ``cuda``; None when unknown."""
    return str(d).split(":")[0] if d not in (None, "", "None") else None


def _f(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


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
        "calib": (rec.get("calibration") or {}).get("n", spec.get("calib")),
        "error": f"{err.get('type')}: {err.get('message')}" if err else None,
        "source": "run", "citation": None,
    }


def records_frame(out: str | Path, suite: str, labels: list[str] | None = None) -> pd.DataFrame:
    """Cells with a terminal record (done or failed) of ``suite`` under ``out``."""
    from mgrq.runner.layout import records_under

    base = Path(out).resolve() / suite
    dirs = [base / lab for lab in labels] if labels else sorted(d for d in base.glob("*") if d.is_dir())
    rows, times = [], []
    for d in dirs:
        for _path, rec in records_under(d):
            if rec.get("status") not in ("done", "failed"):
                continue
            row = row_from_record(rec)
            row["label"] = row["label"] or d.name
            row["suite"] = row["suite"] or suite
            rows.append(row)
            times.append(str(rec.get("finished") or rec.get("started") or ""))
    return _one_per_cell(rows, times)


def _one_per_cell(rows: list[dict[str, Any]], times: list[Any]) -> pd.DataFrame:
    """The frame of ``rows`` with one row per (label, cell id): when a label holds a cell under
    several hashes (rerun with other options, e.g. ``--eval-limit``), the newest by ``times``
    wins, so no seed counts twice. The others are listed in ``df.attrs["superseded"]``."""
    newest: dict[tuple[Any, Any], int] = {}
    for i in sorted(range(len(rows)), key=lambda i: times[i]):
        newest[(rows[i]["label"], rows[i]["run_id"])] = i
    keep = set(newest.values())
    df = pd.DataFrame([r for i, r in enumerate(rows) if i in keep], columns=COLUMNS)
    df.attrs["superseded"] = [f"{r['label']}/{r['run_id']}-{r['hash']}" for i, r in enumerate(rows) if i not in keep]
    return df


def mlflow_frame(uri: str, suite: str, labels: list[str] | None = None) -> pd.DataFrame:
    """The same frame from the runs mirrored into MLflow (params, metrics and tags)."""
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
            "calib": int(p["calib"]) if str(p.get("calib", "")).isdigit() else None,
            "error": err, "source": "run", "citation": None,
        })
    df = _one_per_cell(rows, times)
    superseded = df.attrs["superseded"]
    df = df.sort_values(["label", "run_id"]).reset_index(drop=True)
    df.attrs["superseded"] = superseded
    return df


def published_frame(path: str | Path | None = None) -> pd.DataFrame:
    """Published reference numbers (``reports/published.csv``): method, bits, model, top1,
    citation. The method ``fp`` is the full-precision row."""
    rows = []
    with open(path or PUBLISHED_CSV, newline="") as f:
        for r in csv.DictReader(line for line in f if not line.startswith("#")):
            w, a = (int(x) for x in r["bits"].upper().lstrip("W").split("A")) if r["bits"] != "FP" else (32, 32)
            rows.append({
                "suite": None, "label": "published", "run_id": None, "hash": None,
                "model": r["model"], "method": r["method"], "name": r["method"], "bits": r["bits"],
                "w_bits": w, "a_bits": a, "seed": 0, "status": "done", "top1": float(r["top1"]),
                "top5": float("nan"), "fp_top1": float("nan"), "fp_top5": float("nan"),
                "n_eval": float("nan"), "quantize_s": float("nan"), "total_s": float("nan"),
                "peak_mem_mb": float("nan"), "calib": None, "error": None, "source": "published",
                "citation": r["citation"],
            })
    return pd.DataFrame(rows, columns=COLUMNS)


def aggregate(df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, name, bits): mean/std/count of top-1 over the done seeds, failed count,
    mean FP top-1, mean quantization time and peak memory."""
    keys = ["model", "name", "bits", "w_bits", "a_bits", "source"]
    if df.empty:
        return pd.DataFrame(columns=[*keys, "mean", "std", "n", "failed", "fp", "quantize_s", "peak_mem_mb",
                                     "device"])
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
    return agg
