"""The table of results.md from the records run.sh wrote (run it in that time/ folder): each
cell's ``quantize_s`` (the method's calibration) per tree and round, the ratio of each pair (the two
trees ran side by side), and top-1."""

import collections
import glob
import json
import statistics as st

secs: dict[tuple[str, str, str], dict[str, list[float]]] = collections.defaultdict(dict)
top1: dict[tuple[str, str, str, str], set[float]] = collections.defaultdict(set)
for path in sorted(glob.glob("*.json"), key=lambda p: p.split(".")[-2]):  # rounds in order
    tree, model, method, bits, _ = path[: -len(".json")].split(".")
    with open(path) as f:
        rec = json.load(f)
    secs[(model, method, bits)].setdefault(tree, []).append(rec["timings"]["quantize_s"])
    top1[(model, method, bits, tree)].add(rec["metrics"]["top1"])

print("| model | method | bits | 5e14467 (s, rounds 1-3) | 175089a (s) | 175089a / 5e14467, per round | top-1 before / after |")
print("|---|---|---|---|---|---|---|")
ratios: dict[str, list[float]] = collections.defaultdict(list)
for (model, method, bits), v in sorted(secs.items()):
    r = [b / a for a, b in zip(v["old"], v["new"])]
    ratios[method] += r
    print(f"| {model} | {method} | W{bits[1]}A{bits[1]} | {' '.join(f'{x:.1f}' for x in v['old'])} | "
          f"{' '.join(f'{x:.1f}' for x in v['new'])} | {' '.join(f'{x:.2f}' for x in r)} (median {st.median(r):.2f}) | "
          f"{'/'.join(map(str, sorted(top1[(model, method, bits, 'old')])))} / "
          f"{'/'.join(map(str, sorted(top1[(model, method, bits, 'new')])))} |")
print()
for method, r in sorted(ratios.items(), reverse=True):
    print(f"- `{method}`: median ratio {st.median(r):.2f}, range {min(r):.2f}-{max(r):.2f} ({len(r)} pairs)")
