"""How much normalized fusion moves the rounding regularizer's weight, unit by unit.

With ``fusion=normalized`` a unit trains on ``L_b / L_b0 + round_weight * R`` (``L_b0``: the block
term's value at the unit's first iteration); up to Adam's eps that is ``L_b + (round_weight * L_b0) * R``.
So against QDrop's raw sum ``L_b + round_weight * R`` the regularizer weighs ``L_b0`` times as much.
This prints, from the run records of the ``obwr-parts`` suite, per model and unit kind: ``L_b0``
(median and range over units, seeds and bit-widths) and the fraction of weights whose learned
rounding is not round-to-nearest (the records' ``rounding_changed``), for two pairs of rows that
differ in the fusion only: ``qdrop-repq`` (sum) against ``mgrq_obwr`` (normalized), and ``qdrop``
against ``qdrop-norm``.

    python docs/results/obwr-parts-intel/fusion_pull.py runs/obwr-parts/intel33

(its tables, with a paragraph on them, are in ``fusion-pull.md``). "Not rounded to nearest" is each
unit's fraction, averaged over the units of a kind. With extra terms (``mgrq``) the factor holds
against the block term; each extra term ``i`` then weighs ``w_i L_b0 / L_i0``.
"""

import collections
import glob
import json
import statistics
import sys

PAIRS = [("qdrop-repq", "mgrq_obwr"), ("qdrop", "qdrop-norm")]  # (sum, normalized)


def unit_kind(name: str) -> str:
    if name in ("patch_embed", "head"):
        return name
    return "merge" if "downsample" in name else "block"


def main(run_dir: str) -> None:
    first: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    moved: dict[tuple[str, str, str], list[float]] = collections.defaultdict(list)
    cells = collections.Counter()
    for path in sorted(glob.glob(f"{run_dir}/*/record.json")):
        with open(path) as f:
            rec = json.load(f)
        spec = rec["spec"]
        row = spec["variant"] or spec["method"]
        if rec["status"] != "done" or not any(row in p for p in PAIRS):
            continue
        cells[row] += 1
        for recon in rec["method"]["info"]["recon"]:
            for stage in recon["stages"]:
                for unit in stage["units"]:
                    key = (spec["model"], unit_kind(unit["unit"]), row)
                    first[key].append(unit["terms_first"]["block"])
                    moved[key].append(unit["rounding_changed"])
    print(f"Run records: {run_dir} ({', '.join(f'{r}: {n} cells' for r, n in sorted(cells.items()))}).")
    for raw, norm in PAIRS:
        print(f"\n`{norm}` (normalized) against `{raw}` (sum). L_b0 is the normalized row's: the factor on the "
              "regularizer's weight against the block term.\n")
        print(f"| model | unit | units | L_b0 median | L_b0 range | not nearest, `{raw}` | not nearest, `{norm}` |")
        print("|---|---|---|---|---|---|---|")
        for (model, kind, row), values in sorted(first.items()):
            if row != norm:
                continue
            a = statistics.mean(moved[(model, kind, raw)])
            b = statistics.mean(moved[(model, kind, norm)])
            print(f"| {model} | {kind} | {len(values)} | {statistics.median(values):.3g} | "
                  f"{min(values):.2g}-{max(values):.3g} | {100 * a:.1f}% | {100 * b:.1f}% |")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: fusion_pull.py RUN_DIR (a run folder of the obwr-parts suite, runs/obwr-parts/LABEL)")
    main(sys.argv[1])
