"""Give every search ``dump.py`` kept to RepQ-ViT's own quantizer code (``quantizer.py`` of
github.com/zkkli/RepQ-ViT at a160561, loaded alone: it needs only torch and numpy) and compare
its step and zero point with ours, bit for bit. Run it with the torch release whose
``torch.quantile`` the dump's mode stands for: ``quantile=torch2.13`` with torch <= 2.13,
``quantile=torch2.14`` with torch >= 2.14.

usage: python check.py REPQ_VIT_CHECKOUT DUMP.pt [DUMP.pt ...]
Prints one line per dump: searches, how many differ, and the first that does.
"""
import importlib.util
import sys
from pathlib import Path

import torch

spec = importlib.util.spec_from_file_location("repq_quantizer", Path(sys.argv[1]) / "classification/quant/quantizer.py")
ref = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ref)
torch.set_num_threads(1)

bad_total = 0
for dump in sys.argv[2:]:
    searches = torch.load(dump)
    bad, first = 0, None
    for i, s in enumerate(searches):
        x = s["x"]
        if s["kind"] == "log":
            assert s["base"] == "sqrt2", s["base"]
            d = ref.LogSqrt2Quantizer(s["bits"]).init_quantization_scale(x)
            same = torch.equal(d.reshape(()), s["scale"].reshape(()))
        else:
            if s["gran"] == "tensor":
                d, z = ref.UniformQuantizer(s["bits"], channel_wise=False).init_quantization_scale(x, False)
            elif s["axis"] == 0:  # weights, per output channel: the reference's x[c] loop
                d, z = ref.UniformQuantizer(s["bits"], channel_wise=True).init_quantization_scale(x, True)
            else:  # post-LayerNorm activations, per channel (last dim): the reference's [B, N, C] loop
                x3 = x.reshape(x.shape[0], -1, x.shape[-1])  # Swin's [B, H, W, C] as timm 0.4.12's [B, L, C]
                d, z = ref.UniformQuantizer(s["bits"], channel_wise=True).init_quantization_scale(x3, True)
            same = torch.equal(d.reshape(-1), s["scale"].reshape(-1)) and \
                torch.equal(z.reshape(-1).float(), s["zero_point"].reshape(-1).float())
        if not same:
            bad += 1
            first = first or f"search {i} ({s['kind']}, {s.get('gran', '')}, shape {tuple(x.shape)})"
    bad_total += bad
    print(f"{Path(dump).name}: {len(searches)} searches, {bad} differ" + (f"; first: {first}" if first else ""))
print(f"torch {torch.__version__}: {bad_total} differ in all")
