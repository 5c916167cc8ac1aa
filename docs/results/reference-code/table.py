"""The results tables of the run scripts: ``results_repq.md`` (``run_repq.sh``) and
``results_ptq4vit.md`` (``run_ptq4vit.sh``): top-1 per cell, and how ours' logits compare with
the reference's.

usage: python table.py {repq,ptq4vit} DIR
"""
import json
import sys
from pathlib import Path

import torch

kind, d = sys.argv[1], Path(sys.argv[2])
MODELS, BITS = ("tiny_vit", "tiny_deit", "tiny_swin"), ("W4A4", "W3A3", "W6A6")


def top1(cell: str) -> float:
    rec = json.loads((d / f"{cell}.json").read_text())
    return rec["metrics"]["top1"] if "metrics" in rec else rec["top1"]


def cmp(ours: str, ref: str) -> str:
    """Top-1, and against the reference's logits: equal bit for bit (``=``), else the number of
    images whose prediction differs and the largest logit difference."""
    a, b = torch.load(d / f"{ours}.logits.pt"), torch.load(d / f"{ref}.logits.pt")
    if torch.equal(a, b):
        return f"{top1(ours):.1f} (=)"
    return f"{top1(ours):.1f} ({int((a.argmax(1) != b.argmax(1)).sum())}; {float((a - b).abs().max()):.0e})"


def footer() -> list[str]:
    """Where ours ran, from its run records (the machine, torch and commit each record names)."""
    recs = [json.loads(p.read_text()) for p in d.glob("*.json")]
    ran = sorted({(r["device_name"], r["versions"]["torch"], r["git_sha"]) for r in recs if "git_sha" in r})
    return [""] + [f"Ran on: {cpu}, the project's torch {t}; ours from {sha}." for cpu, t, sha in ran]


def repq() -> list[str]:
    settings = [("torch2.13", "divide"), ("torch2.13", "reciprocal"), ("torch2.14", "divide"),
                ("torch2.14", "reciprocal"), ("exact", "reciprocal")]
    out = ["# `repq_vit` against RepQ-ViT's own `test_quant.py`, end to end", "",
           "Written by `docs/results/reference-code/run_repq.sh` (`table.py`). Tiny zoo, seed 0, the 32",
           "calibration images of `sample_calibration(mnist_bundle(), 32, 0)`, top-1 on the 1,000 held-out",
           "digits, CPU, one thread. The reference: RepQ-ViT a160561 `test_quant.py` run unmodified on timm",
           "0.4.12 with the project's checkpoints, on torch 2.13.0 and on torch 2.14.1. Ours: `mgrq quantize",
           "--method repq_vit --set quantile=Q --set division=D` on the project's torch, each setting beside",
           "the reference run whose torch its `quantile` stands for (the default `exact`: beside torch",
           "2.14's). In brackets, against that run's logits: `=` when all 10,000 are equal bit for bit, else",
           "the images whose prediction differs and the largest logit difference.", "",
           "| model | bits | FP | reference, torch 2.13 | torch2.13 divide | torch2.13 reciprocal | "
           "reference, torch 2.14 | torch2.14 divide | torch2.14 reciprocal | exact reciprocal (default) |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    same = {s: 0 for s in settings}
    for m in MODELS:
        for b in BITS:
            r = {t: json.loads((d / f"{m}.{b}.ref{t}.json").read_text()) for t in ("213", "214")}
            cells = {}
            for q, div in settings:
                t = "213" if q == "torch2.13" else "214"
                cells[q, div] = cmp(f"{m}.{b}.{q}.{div}", f"{m}.{b}.ref{t}")
                same[q, div] += top1(f"{m}.{b}.{q}.{div}") == r[t]["top1"]
            out.append(f"| {m} | {b} | {r['213']['fp_top1']:.1f} | {r['213']['top1']:.1f} | "
                       + " | ".join(cells[k] for k in settings[:2]) + f" | {r['214']['top1']:.1f} | "
                       + " | ".join(cells[k] for k in settings[2:]) + " |")
    out += ["", "Cells whose top-1 equals the reference's (the default: against torch 2.14): "
            + ", ".join(f"{q} {div} {n}/9" for (q, div), n in same.items()), ""]
    fp = sorted({json.loads(p.read_text())["fp_logit_diff"] for p in d.glob("*.ref*.json")})
    out.append(f"FP logits of the reference's timm 0.4.12 models against the project's: largest difference "
               f"{fp[-1]:.1e}.")
    return out + footer()


def ptq4vit() -> list[str]:
    out = ["# `ptq4vit` and `base_ptq` against PTQ4ViT's own `test_all.py`, end to end", "",
           "Written by `docs/results/reference-code/run_ptq4vit.sh` (`table.py`). Tiny zoo, seed 0, the",
           "32 calibration images of `sample_calibration(mnist_bundle(), 32, 0)`, top-1 on the 1,000",
           "held-out digits, CPU, one thread. The reference: PTQ4ViT b42c790 `example/test_all.py`'s",
           "`test_all` run unmodified on timm 0.4.12 with the project's checkpoints, `configs/PTQ4ViT.py`",
           "and `configs/BasePTQ.py`. Ours as coded (FP image): `--method ptq4vit --set",
           "hessian_grad=kl_fp_fp --set twin_softmax=sum --set division=divide` and `--method base_ptq",
           "--set division=divide`, both with `--bits-override 'patch_embed\\.proj\\.act_q=fp'`; beside",
           "each, the same with the default `division=reciprocal`. In brackets, against the reference's",
           "logits: `=` when all 10,000 are equal bit for bit, else the images whose prediction differs",
           "and the largest logit difference.", "",
           "| model | bits | PTQ4ViT reference | `ptq4vit` divide | `ptq4vit` reciprocal "
           "| Base PTQ reference | `base_ptq` divide | `base_ptq` reciprocal |",
           "|---|---|---|---|---|---|---|---|"]
    same = {f"{k} {d}": 0 for k in ("ptq4vit", "base_ptq") for d in ("divide", "reciprocal")}
    bitwise = dict.fromkeys(same, 0)
    for m in MODELS:
        for b in BITS:
            row = []
            for method, cfg in (("ptq4vit", "PTQ4ViT"), ("base_ptq", "BasePTQ")):
                ref = f"{m}.{b}.ref.{cfg}"
                row.append(f"{top1(ref):.1f}")
                for div in ("divide", "reciprocal"):
                    ours = f"{m}.{b}.{method}.{div}"
                    row.append(cmp(ours, ref))
                    same[f"{method} {div}"] += top1(ours) == top1(ref)
                    bitwise[f"{method} {div}"] += row[-1].endswith("(=)")
            out.append(f"| {m} | {b} | " + " | ".join(row) + " |")
    n = len(MODELS) * len(BITS)
    torches = sorted({json.loads(p.read_text())["torch"] for p in d.glob("*.ref.*.json")})
    out += ["", "Cells whose top-1 equals the reference's: " + ", ".join(f"`{k}` {v}/{n}" for k, v in same.items())
            + "; whose logits equal it bit for bit: " + ", ".join(f"`{k}` {v}/{n}" for k, v in bitwise.items())
            + f". The reference ran on torch {', '.join(torches)}."]
    return out + footer()


print("\n".join({"repq": repq, "ptq4vit": ptq4vit}[kind]()))
