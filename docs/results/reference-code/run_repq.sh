#!/bin/bash
# RepQ-ViT's own test_quant.py against `repq_vit`, end to end on the tiny zoo (W4A4, W3A3, W6A6;
# seed 0, 32 calibration images, the 1,000 held-out digits, one thread per run, two runs at a
# time): the reference on torch 2.13 and on torch 2.14, ours in five switch settings on the
# project's torch. Then table.py writes results_repq.md. Run from the repository root.
#   $1: a folder for the outputs; $2: a RepQ-ViT checkout at a160561; $3, $4: Pythons with timm
#   0.4.12 + torchvision and torch 2.13 / torch 2.14, e.g.
#     python3 -m venv /tmp/v213cu && /tmp/v213cu/bin/pip install torch==2.13.0 torchvision==0.28.0 timm==0.4.12
#     python3 -m venv /tmp/v214ref && /tmp/v214ref/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==0.4.12
#   (PyPI's default builds; the python on PATH is the project's.)
set -e
dir=${1:-/tmp/reference-code}; repq=$(realpath "${2:-/tmp/RepQ-ViT}")
py213=${3:-/tmp/v213cu/bin/python}; py214=${4:-/tmp/v214ref/bin/python}
here=docs/results/reference-code
mkdir -p "$dir"
for m in tiny_vit tiny_deit tiny_swin; do python $here/export.py $m "$dir/$m.export.pt"; done > "$dir/export.log"
for m in tiny_vit tiny_deit tiny_swin; do for b in 4 3 6; do
  for t in 213 214; do echo "$t $m $b"; done; done; done | while read -r t m b; do
    py=$py213; [ "$t" = 214 ] && py=$py214
    echo "$py $here/ref_repq.py $repq $dir/$m.export.pt $b $b $dir/$m.W${b}A$b.ref$t"
  done | xargs -P 2 -L 1 sh -c '"$0" "$@" > "$6.log" 2>&1'
for m in tiny_vit tiny_deit tiny_swin; do for b in W4A4 W3A3 W6A6; do
  for s in "exact reciprocal" "torch2.13 reciprocal" "torch2.13 divide" "torch2.14 reciprocal" "torch2.14 divide"; do
    set -- $s; echo "$dir/$m.$b.$1.$2 --model $m --method repq_vit --w-bits ${b:1:1} --a-bits ${b:3:1}" \
      "--calib 32 --seed 0 --eval-split heldout --set quantile=$1 --set division=$2"; done; done; done |
  xargs -P 2 -L 1 sh -c 'python '$here'/ours.py "$0" "$@" > "$0.log" 2>&1'
python $here/table.py repq "$dir" > $here/results_repq.md
