"""PTQ4ViT's own ``example/test_all.py`` (github.com/hahnyuan/PTQ4ViT at b42c790): its
``test_all(name, cfg_modifier, calib_size=32, config_name)`` run unmodified on one tiny-zoo model,
with ``configs/PTQ4ViT.py`` (the ``ptq4vit`` reference) or ``configs/BasePTQ.py`` (``base_ptq``):
``get_net`` (attention forwards with its ``MatMul`` modules), ``net_wrap.wrap_modules_in_net``,
``HessianQuantCalibrator(..., sequential=False, batch_size=4).batching_quant_calib()`` and
``test_classification``. Handed to it from outside, in place of what it would fetch or of a GPU:

- ``timm.create_model`` returns the tiny timm 0.4.12 model with the project's checkpoint
  (``export.py`` writes it, with the images);
- ``datasets.ViTImageNetLoaderGenerator`` gives the 32 calibration images (one batch of 32, as
  its ``calib_loader(num=32)``) and the 1,000 held-out digits (batches of 32, its test batch);
- ``torch.Tensor.cuda`` and ``torch.cuda.empty_cache`` do nothing (a CPU run);
- the config modifier sets the bits only (``test_all.py``'s ``cfg_modifier`` sets them the same
  way, and also the metric, which would turn BasePTQ's cosine into the Hessian);
- DeiT's ``head_dist`` is wrapped as ``head_dist.head``: ``wrap_modules_in_net`` names a Linear's
  kind by its attribute name and knows ``head``, not ``head_dist`` (a classifier all the same).

``test_classification`` is wrapped to keep its accuracy (at its batch of 32) and the quantized
model's logits. The logits are computed again in batches of 200, as ``ours.py`` computes ours: the
last batch of 32 holds 8 images, and oneMKL's sgemm gives the head's ``F.linear`` other bits for a
batch of 8 than for the same rows in a larger batch (tiny Swin's head, 192 inputs: batches of 1-8;
96 inputs, tiny ViT/DeiT: 1-4). Saved at 32 on one side and 200 on the other, tiny Swin's logits
differed by up to 2e-6 in those 8 rows alone.
Run with a Python that has timm 0.4.12, torchvision, tqdm and matplotlib (``test_all.py`` imports
it), from anywhere: it changes into the checkout, as ``test_all.py``'s ``init_config`` reads
``./configs``.

usage: python ref_ptq4vit.py PTQ4VIT_CHECKOUT EXPORT.pt {PTQ4ViT,BasePTQ} W_BITS A_BITS OUT
Writes ``OUT.json`` (model, config, bits, torch, top-1) and ``OUT.logits.pt``; prints the json.
"""
import json
import os
import sys
from collections import OrderedDict
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ckpt, export, config, w_bits, a_bits, out = sys.argv[1:7]
ckpt, export, out = (str(Path(a).resolve()) for a in (ckpt, export, out))  # before the chdir below
os.chdir(ckpt)
sys.path[:0] = [ckpt, str(Path(ckpt) / "example")]
sys.argv = sys.argv[:1]
torch.Tensor.cuda = lambda self, *args, **kwargs: self
torch.cuda.empty_cache = lambda: None

import test_all  # noqa: E402
import timm  # noqa: E402  (timm 0.4.12)
import utils.datasets  # noqa: E402
from tiny04 import load  # noqa: E402

torch.set_num_threads(1)
data, model = load(export)
name = data["model"]
timm.create_model = lambda *args, **kwargs: model

get_net = test_all.get_net


def net_with_named_dist_head(net_name):
    net = get_net(net_name)
    if isinstance(getattr(net, "head_dist", None), nn.Linear):
        net.head_dist = nn.Sequential(OrderedDict(head=net.head_dist))
    return net


class Loaders:
    def __init__(self, *args, **kwargs):
        pass

    def calib_loader(self, num):
        assert num == len(data["calib"]) == 32
        return DataLoader(TensorDataset(data["calib"], torch.zeros(num, dtype=torch.long)), batch_size=32)

    def test_loader(self):
        return DataLoader(TensorDataset(data["val_images"], data["val_labels"]), batch_size=32)


results = []
classify = test_all.test_classification


def keep(net, test_loader, *args, **kwargs):
    results.append(classify(net, test_loader, *args, **kwargs))
    with torch.no_grad():  # in batches of 200, as ours.py: see the module docstring
        torch.save(torch.cat([net(x) for x in data["val_images"].split(200)]), out + ".logits.pt")
    return results[-1]


def bits(cfg):
    cfg.bit = (int(w_bits), int(a_bits))
    cfg.w_bit = {n: int(w_bits) for n in cfg.conv_fc_name_list}
    cfg.a_bit = {n: int(a_bits) for n in cfg.conv_fc_name_list}
    cfg.A_bit = {n: int(a_bits) for n in cfg.matmul_name_list}
    cfg.B_bit = {n: int(a_bits) for n in cfg.matmul_name_list}
    return cfg


test_all.get_net = net_with_named_dist_head
test_all.test_classification = keep
utils.datasets.ViTImageNetLoaderGenerator = Loaders
test_all.test_all(name, cfg_modifier=bits, calib_size=32, config_name=config)
rec = {"model": name, "config": config, "bits": f"W{w_bits}A{a_bits}", "torch": torch.__version__,
       "top1": round(results[0] * 100, 2)}
Path(out + ".json").write_text(json.dumps(rec) + "\n")
print(json.dumps(rec))
