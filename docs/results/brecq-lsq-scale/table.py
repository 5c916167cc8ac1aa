"""The table of results.md: each cell without the scale beside the ablation-mgrq (intel) cell
with it, and the per-column paired differences. usage: python docs/results/brecq-lsq-scale/table.py RECORDS_DIR (from the repository root)"""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats


def md(df: pd.DataFrame) -> str:
    """A Markdown table (no extra dependency)."""
    fmt = lambda v: f"{round(v, 2):g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in r) + " |" for r in df.itertuples(index=False)])


ref = pd.read_csv("docs/results/ablation-mgrq-intel/results.csv").set_index("run_id")
rows = []
for f in sorted(Path(sys.argv[1]).glob("*.json")):
    model, bits, seed, mode = f.name.split(".")[:4]
    rec = json.loads(f.read_text())
    rid = f"{model}.brecq.{bits.lower()}.{seed}"
    rows.append({"cell": rid, "mode": mode, "top1": rec["metrics"]["top1"], "hash": rec["hash"],
                 "intel top1": ref.loc[rid, "top1"], "intel hash": ref.loc[rid, "hash"],
                 "git": rec.get("git_sha", "")[:12]})
d = pd.DataFrame(rows)
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"# brecq without LSQ's gradient scale on the learned steps\n\nMade by `docs/results/brecq-lsq-scale/run.sh` "
      f"(tabulated at {commit}; the records ran from {', '.join(sorted(set(d['git'])))}). `intel`: the ablation-mgrq cell "
      "(docs/results/ablation-mgrq-intel), which has the scale.\n")
s = d[d["mode"] == "scaled"]
print("Scaled cells rerun here, against `intel` (same spec, same result expected):\n")
print(md(s[["cell", "top1", "intel top1", "hash", "intel hash"]]) + "\n")
u = d[d["mode"] == "unscaled"].copy()
u["delta"] = u["top1"] - u["intel top1"]
print(f"Unscaled cells ({(u['delta'] == 0).sum()} of {len(u)} equal to `intel`):\n")
print(md(u[["cell", "top1", "intel top1", "delta"]]) + "\n")
print("Per column, unscaled minus scaled, paired by seed (mean +- half-width of the 95% Student-t interval):\n")
out = []
for key, g in u.groupby(u["cell"].str.replace(r"\.s\d$", "", regex=True)):
    x = g["delta"].to_numpy()
    hw = stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    out.append({"column": key, "unscaled": round(g["top1"].mean(), 2), "scaled": round(g["intel top1"].mean(), 2),
                "delta": f"{x.mean():+.2f} +- {hw:.2f}"})
print(md(pd.DataFrame(out)))
