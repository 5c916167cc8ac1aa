"""One ``repq_vit`` cell (32 calibration images, seed 0, held-out digits, one thread) with
``--set quantile=MODE``, keeping every percentile search it runs: the tensor the quantizer was
initialized on and the step and zero point it chose (``check.py`` gives the same tensors to
RepQ-ViT's own quantizer code). The run record goes to ``OUT.json``, the searches to ``OUT.pt``.

usage (from the repository root): python docs/results/repq-quantile-torch/dump.py MODE MODEL BITS OUT
"""
import sys

import torch

from mgrq.cli import main
from mgrq.quant.quantizers import LogQuantizer, UniformQuantizer

mode, model, bits, out = sys.argv[1:5]
searches = []
uni_init, log_init = UniformQuantizer.init_percentile, LogQuantizer.init_percentile


def uniform(self, x, *args, **kwargs):
    uni_init(self, x, *args, **kwargs)
    searches.append({"kind": "uniform", "bits": self.bits, "axis": self.granularity.axis,
                     "gran": self.granularity.kind, "x": x.detach().clone(),
                     "scale": self.scale.clone(), "zero_point": self.zero_point.clone()})


def log(self, x, *args, **kwargs):
    log_init(self, x, *args, **kwargs)
    searches.append({"kind": "log", "base": self.base, "bits": self.bits, "x": x.detach().clone(),
                     "scale": self.scale.clone()})


UniformQuantizer.init_percentile, LogQuantizer.init_percentile = uniform, log
rc = main(["quantize", "--model", model, "--method", "repq_vit", "--w-bits", bits[1], "--a-bits", bits[3],
           "--calib", "32", "--seed", "0", "--set", f"quantile={mode}", "--record", out + ".json",
           "--threads", "1", "--quiet", "--eval-split", "heldout"])
torch.save(searches, out + ".pt")
sys.exit(rc)
