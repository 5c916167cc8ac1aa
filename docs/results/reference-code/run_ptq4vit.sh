#!/bin/bash
# PTQ4ViT's own example/test_all.py against `ptq4vit` and `base_ptq` as coded (division=divide, and
# the default reciprocal), end to end on the
# tiny zoo (W4A4, W3A3, W6A6; seed 0, 32 calibration images, the 1,000 held-out digits, one
# thread per run, two runs at a time). Then table.py writes results_ptq4vit.md. Run from the
# repository root.
#   $1: a folder for the outputs; $2: a PTQ4ViT checkout at b42c790; $3: a Python with timm
#   0.4.12, torchvision, tqdm and matplotlib, e.g.
#     python3 -m venv /tmp/v214ref && /tmp/v214ref/bin/pip install torch==2.14.1 torchvision==0.29.1 timm==0.4.12 tqdm matplotlib
#   (the python on PATH is the project's).
set -e
dir=$(realpath -m "${1:-/tmp/ptq4vit-reference}"); ptq=$(realpath "${2:-/tmp/PTQ4ViT}"); py=${3:-/tmp/v214ref/bin/python}
here=docs/results/reference-code
mkdir -p "$dir"
for m in tiny_vit tiny_deit tiny_swin; do python $here/export.py $m "$dir/$m.export.pt"; done > "$dir/export.log"
fp='patch_embed\\.proj\\.act_q=fp'  # xargs takes one level of backslashes
for m in tiny_vit tiny_deit tiny_swin; do for b in 4 3 6; do for d in divide reciprocal; do
  echo "$dir/$m.W${b}A$b.ptq4vit.$d --model $m --method ptq4vit --w-bits $b --a-bits $b --calib 32 --seed 0" \
    "--eval-split heldout --set hessian_grad=kl_fp_fp --set twin_softmax=sum --set division=$d --bits-override $fp"
  echo "$dir/$m.W${b}A$b.base_ptq.$d --model $m --method base_ptq --w-bits $b --a-bits $b --calib 32 --seed 0" \
    "--eval-split heldout --set division=$d --bits-override $fp"
done; done; done | xargs -P 2 -L 1 sh -c 'python '$here'/ours.py "$0" "$@" > "$0.log" 2>&1'
for m in tiny_vit tiny_deit tiny_swin; do for b in 4 3 6; do for c in PTQ4ViT BasePTQ; do
  echo "$py $here/ref_ptq4vit.py $ptq $dir/$m.export.pt $c $b $b $dir/$m.W${b}A$b.ref.$c"
done; done; done | xargs -P 2 -L 1 sh -c '"$0" "$@" > "$7.log" 2>&1'
python $here/table.py ptq4vit "$dir" > $here/results_ptq4vit.md
