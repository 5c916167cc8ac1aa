"""results.md for run.sh: top-1 (and whether the logits equal the reference's) per cell.

usage: python table.py DIR
"""
import json
import platform
import sys
from pathlib import Path

import torch

d = Path(sys.argv[1])
SETTINGS = [("torch2.13", "divide"), ("torch2.13", "reciprocal"), ("torch2.14", "divide"), ("torch2.14", "reciprocal"),
            ("exact", "reciprocal")]


def cpu() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def cmp(ours: str, ref: str) -> str:
    """Top-1, and against the reference's logits: equal bit for bit (``=``), else the number of
    images whose prediction differs and the largest logit difference."""
    rec = json.loads((d / f"{ours}.json").read_text())
    top1 = rec["metrics"]["top1"]
    a, b = torch.load(d / f"{ours}.logits.pt"), torch.load(d / f"{ref}.logits.pt")
    if torch.equal(a, b):
        return f"{top1:.1f} (=)"
    return f"{top1:.1f} ({int((a.argmax(1) != b.argmax(1)).sum())}; {float((a - b).abs().max()):.0e})"


out = ["# `repq_vit` against RepQ-ViT's own `test_quant.py`, end to end", "",
       "Written by `docs/results/repq-reference/run.sh` (`table.py`). Tiny zoo, seed 0, the 32 calibration",
       "images of `sample_calibration(mnist_bundle(), 32, 0)`, top-1 on the 1,000 held-out digits, CPU,",
       "one thread. The reference: RepQ-ViT a160561 `test_quant.py` run unmodified on timm 0.4.12 with",
       "the project's checkpoints, on torch 2.13.0 and on torch 2.14.1. Ours: `mgrq quantize --method",
       "repq_vit --set quantile=Q --set division=D` on the project's torch, each setting beside the",
       "reference run whose torch its `quantile` stands for (the default `exact`: beside torch 2.14's). In",
       "brackets, against that run's logits: `=` when all 10,000 are equal bit for bit, else the",
       "images whose prediction differs and the largest logit difference.", "",
       "| model | bits | FP | reference, torch 2.13 | torch2.13 divide | torch2.13 reciprocal | "
       "reference, torch 2.14 | torch2.14 divide | torch2.14 reciprocal | exact reciprocal (default) |",
       "|---|---|---|---|---|---|---|---|---|---|"]
same = {s: 0 for s in SETTINGS}
for m in ("tiny_vit", "tiny_deit", "tiny_swin"):
    for b in ("W4A4", "W3A3", "W6A6"):
        r = {t: json.loads((d / f"{m}.{b}.ref{t}.json").read_text()) for t in ("213", "214")}
        cells = {}
        for q, div in SETTINGS:
            t = "213" if q == "torch2.13" else "214"
            cells[q, div] = cmp(f"{m}.{b}.{q}.{div}", f"{m}.{b}.ref{t}")
            top1 = json.loads((d / f"{m}.{b}.{q}.{div}.json").read_text())["metrics"]["top1"]
            same[q, div] += top1 == r[t]["top1"]
        out.append(f"| {m} | {b} | {r['213']['fp_top1']:.1f} | {r['213']['top1']:.1f} | {cells['torch2.13', 'divide']} | "
                   f"{cells['torch2.13', 'reciprocal']} | {r['214']['top1']:.1f} | {cells['torch2.14', 'divide']} | "
                   f"{cells['torch2.14', 'reciprocal']} | {cells['exact', 'reciprocal']} |")
out += ["", "Cells whose top-1 equals the reference's (the default: against torch 2.14): "
        + ", ".join(f"{q} {div} {n}/9" for (q, div), n in same.items()), ""]
fp = sorted({json.loads(p.read_text())["fp_logit_diff"] for p in d.glob("*.ref*.json")})
out.append(f"FP logits of the reference's timm 0.4.12 models against the project's: largest difference {fp[-1]:.1e}.")
shas = {json.loads((d / f"{m}.W4A4.exact.reciprocal.json").read_text())["git_sha"] for m in ("tiny_vit", "tiny_swin")}
out += ["", f"Ran on: {cpu()}, the project's torch {torch.__version__}; ours from {', '.join(sorted(shas))}."]
print("\n".join(out))
