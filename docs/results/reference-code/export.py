"""What the reference code needs to run one tiny-zoo model, from the project's own pipeline: the
committed checkpoint with its keys as timm 0.4.12 names them, the 32 calibration images of
``repq_vit`` at seed 0 (``sample_calibration(mnist_bundle(), 32, 0)``), the 1,000 held-out
digits with their labels, and the project's FP logits on them (``ref_repq.py`` checks that its
timm 0.4.12 model gives the same).

usage (from the repository root, the project's Python): python docs/results/reference-code/export.py MODEL OUT.pt
"""
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # this checkout's mgrq, not an installed one
from mgrq import zoo  # noqa: E402
from mgrq.data import mnist_bundle, sample_calibration  # noqa: E402

name, out = sys.argv[1:3]
model = zoo.create_model(name)
sd = {}
for k, v in model.state_dict().items():
    if k.endswith(("relative_position_index", "attn_mask")):
        continue  # buffers both timm releases compute from the shapes
    if name == "tiny_swin":
        # timm >= 0.9 puts PatchMerging at the start of stage i, timm 0.4.12 at the end of stage i-1
        k = re.sub(r"^layers\.(\d+)\.downsample\.", lambda m: f"layers.{int(m[1]) - 1}.downsample.", k)
        k = k.replace("head.fc.", "head.")
    sd[k] = v.clone()

bundle = mnist_bundle("heldout")
calib = sample_calibration(bundle, 32, 0)
val_images, val_labels = bundle.val.images, bundle.val.labels  # TensorImages
torch.set_num_threads(1)
with torch.no_grad():
    fp_logits = torch.cat([model(x) for x in val_images.split(200)])
torch.save({"model": name, "state_dict": sd, "calib": calib.images, "calib_ids_hash": calib.ids_hash,
            "val_images": val_images, "val_labels": val_labels, "fp_logits": fp_logits}, out)
fp = float((fp_logits.argmax(1) == val_labels).float().mean() * 100)
print(f"{name}: {len(sd)} tensors, calibration ids {calib.ids_hash}, FP top-1 {fp:.1f}")
