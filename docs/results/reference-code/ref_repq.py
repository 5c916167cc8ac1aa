"""RepQ-ViT's own ``test_quant.py`` (github.com/zkkli/RepQ-ViT at a160561), run unmodified on one
tiny-zoo model: its ``main()`` builds the model with its ``build_model`` (which swaps the
attention forward for its ``MatMul`` modules), quantizes it with its ``quant_model``, calibrates
on one batch, reparameterizes and validates. Three things are handed to it from outside, in
place of what it would fetch: ``timm.create_model`` returns the tiny timm 0.4.12 model with the
project's checkpoint (no pretrained weights here), and ``build_dataset`` returns the 32
calibration images (one batch, as its ``--calib-batchsize 32``) and the 1,000 held-out digits
(batches of 200, as its ``--val-batchsize``) of ``export.py``. Its ``validate`` is wrapped to keep
what it returns and the quantized model's logits.

Run with a Python that has timm 0.4.12, torchvision and the torch release under test, e.g.
``python3 -m venv V && V/bin/pip install torch==2.13.0 torchvision==0.28.0 timm==0.4.12``
(PyPI's CUDA build: torchvision's CPU-less wheel does not import beside torch's ``+cpu`` one).

usage: python ref_repq.py REPQ_VIT_CHECKOUT EXPORT.pt W_BITS A_BITS OUT
Writes ``OUT.json`` (model, bits, torch, FP top-1, the largest FP logit difference from the
project's model, the reference's top-1 and top-5) and ``OUT.logits.pt``, and prints the json.
"""
import json
import sys
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

repq, export, w_bits, a_bits, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
sys.path.insert(0, str(Path(repq) / "classification"))
sys.argv = sys.argv[:1]  # test_quant parses nothing at import; keep its argv clean anyway

import test_quant  # noqa: E402
import timm  # noqa: E402  (timm 0.4.12)
from tiny04 import load  # noqa: E402

torch.set_num_threads(1)
data, model = load(export)
name = data["model"]
ref_name = {"tiny_vit": "vit_small", "tiny_deit": "deit_small",
            "tiny_swin": "swin_tiny"}[name]  # the reference's --model: only "swin" in it matters (layers vs blocks)
with torch.no_grad():
    fp_logits = torch.cat([model(x) for x in data["val_images"].split(200)])
fp_diff = float((fp_logits - data["fp_logits"]).abs().max())
fp_top1 = float((fp_logits.argmax(1) == data["val_labels"]).float().mean() * 100)

timm.create_model = lambda *args, **kwargs: model
calib = DataLoader(TensorDataset(data["calib"], torch.zeros(len(data["calib"]), dtype=torch.long)), batch_size=32)
val = DataLoader(TensorDataset(data["val_images"], data["val_labels"]), batch_size=200)
test_quant.build_dataset = lambda args: (calib, val)
results = []
validate = test_quant.validate


def keep(args, val_loader, q_model, criterion, device):
    results.append(validate(args, val_loader, q_model, criterion, device))
    with torch.no_grad():
        torch.save(torch.cat([q_model(x) for x, _ in val_loader]), out + ".logits.pt")
    return results[-1]


test_quant.validate = keep
test_quant.args = test_quant.get_args_parser().parse_args(
    ["--model", ref_name, "--device", "cpu", "--w_bits", str(w_bits), "--a_bits", str(a_bits),
     "--calib-batchsize", "32", "--val-batchsize", "200", "--seed", "0"])
test_quant.main()
_, top1, top5 = results[0]
rec = {"model": name, "bits": f"W{w_bits}A{a_bits}", "torch": torch.__version__, "fp_top1": round(fp_top1, 2),
       "fp_logit_diff": fp_diff, "top1": round(top1, 2), "top5": round(top5, 2)}
Path(out + ".json").write_text(json.dumps(rec) + "\n")
print(json.dumps(rec))
