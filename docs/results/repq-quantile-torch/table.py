"""The results table of ``run.sh``: top-1 of each cell and quantile mode, and check.py's lines.

usage: python table.py DIR
"""
import json
import sys
from pathlib import Path

d = Path(sys.argv[1])
modes = ("exact", "torch", "torch2.14")
print("# `repq_vit`'s quantile modes against RepQ-ViT's own quantizer code\n")
print("Written by `docs/results/repq-quantile-torch/run.sh` (`table.py`). Top-1 on the 1,000 held-out")
print("digits, seed 0, 32 calibration images, CPU, one thread; then every percentile search of the")
print("`torch` and `torch2.14` cells given to RepQ-ViT's `quantizer.py` (a160561) on torch 2.13.0 and")
print("on the project's torch, and crossed.\n")
print("| model | bits | FP | " + " | ".join(f"`quantile={m}`" for m in modes) + " |")
print("|---|---|---|" + "---|" * len(modes))
for m in ("tiny_vit", "tiny_deit", "tiny_swin"):
    for b in ("W4A4", "W3A3", "W6A6"):
        recs = {mode: json.loads((d / f"{m}.{b}.{mode}.json").read_text()) for mode in modes}
        fp = recs["exact"]["metrics"]["fp_top1"]
        print(f"| {m} | {b} | {fp:.1f} | " + " | ".join(f"{recs[x]['metrics']['top1']:.1f}" for x in modes) + " |")
print()
print("```")
print((d / "check.txt").read_text().rstrip())
print("```")
