"""One ``repq_vit`` cell as the comparison with the reference needs it: seed 0, 32 calibration
images, the held-out digits, one thread, ``--set quantile=Q division=D``; the run record goes to
``OUT.json`` and the quantized model's logits on the held-out digits (batches of 200, as
``ref_repq.py`` takes them) to ``OUT.logits.pt``.

usage (from the repository root, the project's Python): python docs/results/repq-reference/ours.py MODEL BITS Q D OUT
"""
import sys

import torch

import mgrq.evaluate
from mgrq.cli import main

model, bits, quantile, division, out = sys.argv[1:6]
evaluate = mgrq.evaluate.evaluate


def keep_logits(net, dataset, *args, **kwargs):
    if not kwargs.get("desc", "").endswith("FP eval"):
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            torch.save(torch.cat([net(x) for x in images.split(200)]), out + ".logits.pt")
    return evaluate(net, dataset, *args, **kwargs)


mgrq.evaluate.evaluate = keep_logits
sys.exit(main(["quantize", "--model", model, "--method", "repq_vit", "--w-bits", bits[1], "--a-bits", bits[3],
               "--calib", "32", "--seed", "0", "--set", f"quantile={quantile}", "--set", f"division={division}",
               "--record", out + ".json", "--threads", "1", "--quiet", "--eval-split", "heldout"]))
