#!/bin/bash
# repq_vit on the tiny zoo at W4A4, W3A3 and W6A6 (seed 0, 32 images) with each quantile mode,
# two cells at a time with one thread each; then every search of the torch modes against
# RepQ-ViT's own quantizer code under the torch each mode stands for, and once crossed (each
# mode's searches under the other torch: they must differ, or the check proves nothing).
# Run from the repository root.
#   $1: a folder for the dumps; $2: a RepQ-ViT checkout at a160561; $3: a Python whose torch is
#   2.13 (python3 -m venv /tmp/v213 && /tmp/v213/bin/pip install torch==2.13.0 numpy); the
#   python on PATH is the project's (torch >= 2.14).
set -e
dir=${1:-/tmp/repq-quantile-torch}; repq=${2:-/tmp/RepQ-ViT}; py213=${3:-/tmp/v213/bin/python}
here=docs/results/repq-quantile-torch
mkdir -p "$dir"
for mode in exact torch2.13 torch2.14; do for m in tiny_vit tiny_deit tiny_swin; do for b in W4A4 W3A3 W6A6; do
  echo "$mode $m $b $dir/$m.$b.$mode"; done; done; done | xargs -P 2 -L 1 python $here/dump.py > "$dir/runs.log"
{
  echo "# quantile=torch2.13, RepQ-ViT's quantizer code on torch 2.13"
  $py213 $here/check.py "$repq" "$dir"/*.torch2.13.pt
  echo "# quantile=torch2.14, RepQ-ViT's quantizer code on the project's torch"
  python $here/check.py "$repq" "$dir"/*.torch2.14.pt
  echo "# crossed: quantile=torch2.13 on the project's torch, quantile=torch2.14 on torch 2.13"
  python $here/check.py "$repq" "$dir"/*.torch2.13.pt
  $py213 $here/check.py "$repq" "$dir"/*.torch2.14.pt
} > "$dir/check.txt"
python $here/table.py "$dir" > $here/results.md
