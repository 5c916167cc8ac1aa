"""The results table of ``run.sh``: top-1 of each cell and quantile mode, and check.py's lines.

usage: python table.py DIR
"""
import json
import sys
from pathlib import Path

d = Path(sys.argv[1])
modes = ("exact", "torch2.13", "torch2.14")
print("# `repq_vit`'s quantile modes against RepQ-ViT's own quantizer code\n")
print("Written by `docs/results/repq-quantile-torch/run.sh` (`table.py`). Top-1 on the 1,000 held-out")
print("digits, seed 0, 32 calibration images, CPU, one thread; then every percentile search of the")
print("`torch2.13` and `torch2.14` cells given to RepQ-ViT's `quantizer.py` (a160561) on torch 2.13.0")
print("and on the project's torch, and crossed.\n")
print("| model | bits | FP | " + " | ".join(f"`quantile={m}`" for m in modes) + " |")
print("|---|---|---|" + "---|" * len(modes))
machines = set()
for m in ("tiny_vit", "tiny_deit", "tiny_swin"):
    for b in ("W4A4", "W3A3", "W6A6"):
        recs = {mode: json.loads((d / f"{m}.{b}.{mode}.json").read_text()) for mode in modes}
        fp = recs["exact"]["metrics"]["fp_top1"]
        machines |= {(r["device_name"], r["versions"]["torch"], r["git_sha"]) for r in recs.values()}
        print(f"| {m} | {b} | {fp:.1f} | " + " | ".join(f"{recs[x]['metrics']['top1']:.1f}" for x in modes) + " |")
print()
for name, torch_version, sha in sorted(machines):
    print(f"Ran on: {name}, torch {torch_version}, from {sha}.")
print()
print("```")
print((d / "check.txt").read_text().rstrip())
print("```")
