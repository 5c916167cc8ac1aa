"""One cell of ours as the comparison with a reference needs it: ``mgrq quantize ARGS`` with one
thread, the run record to ``OUT.json`` and the quantized model's logits on the evaluation images
(batches of 200; one batch size for all, the reference's is another) to ``OUT.logits.pt``.

usage (from the repository root, the project's Python): python docs/results/reference-code/ours.py OUT ARGS...
e.g. ``ours.py /tmp/x --model tiny_vit --method repq_vit --w-bits 4 --a-bits 4 --calib 32 --seed 0
--eval-split heldout --set quantile=torch2.13 --set division=divide``
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # this checkout's mgrq, not an installed one
import mgrq.evaluate  # noqa: E402
from mgrq.cli import main  # noqa: E402

out, args = sys.argv[1], sys.argv[2:]
evaluate = mgrq.evaluate.evaluate


def keep_logits(net, dataset, *a, **kwargs):
    if not kwargs.get("desc", "").endswith("FP eval"):
        images = torch.stack([dataset[i][0] for i in range(len(dataset))])
        with torch.no_grad():
            torch.save(torch.cat([net(x) for x in images.split(200)]), out + ".logits.pt")
    return evaluate(net, dataset, *a, **kwargs)


mgrq.evaluate.evaluate = keep_logits
sys.exit(main(["quantize", *args, "--record", out + ".json", "--threads", "1", "--quiet"]))
