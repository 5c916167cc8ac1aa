#!/bin/bash
# ptq4vit and base_ptq calibration time before (5e14467) and after (175089a) the scores took the
# reference's order and layout: each cell runs on both trees at once, one thread each, on a 2-core
# machine (so the two share its noise), 3 rounds. Run: bash run.sh FOLDER; then, in FOLDER/time,
# python REPO/docs/benchmarks/ptq4vit-calib-scores/summarize.py
# (mgrq's dependencies on the python of PATH; HF_HUB_OFFLINE=1: the tiny zoo needs nothing downloaded.)
cd "${1:?a folder holding clean clones old/ (5e14467) and new/ (175089a) and an empty time/}"
for rep in 1 2 3; do
 for model in tiny_vit tiny_deit tiny_swin; do
  for method in ptq4vit base_ptq; do
   for bits in 4 3; do
    for t in old new; do
      (cd $t && HF_HUB_OFFLINE=1 python -m mgrq quantize --model $model --method $method --w-bits $bits --a-bits $bits --threads 1 --quiet --device cpu --record ../time/$t.$model.$method.w$bits.r$rep.json > ../time/$t.$model.$method.w$bits.r$rep.log 2>&1) &
    done
    wait
   done
  done
 done
done
echo done
