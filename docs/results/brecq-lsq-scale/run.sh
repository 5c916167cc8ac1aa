#!/bin/bash
# The 18 unscaled cells and two scaled ones (to check they equal ablation-mgrq's intel cells),
# two at a time with one thread each, then the table. Run from the repository root.
set -e
dir=${1:-/tmp/brecq-lsq-scale}
mkdir -p "$dir"
{
  for m in tiny_vit tiny_deit tiny_swin; do for b in W4A4 W3A3; do for s in 0 1 2; do
    echo "unscaled $m $b $s $dir/$m.$b.s$s.unscaled.json"; done; done; done
  echo "scaled tiny_vit W3A3 0 $dir/tiny_vit.W3A3.s0.scaled.json"
  echo "scaled tiny_swin W4A4 1 $dir/tiny_swin.W4A4.s1.scaled.json"
} | xargs -P 2 -L 1 python docs/results/brecq-lsq-scale/gradscale.py
python docs/results/brecq-lsq-scale/table.py "$dir" > docs/results/brecq-lsq-scale/results.md
