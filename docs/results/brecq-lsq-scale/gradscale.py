"""One ``brecq`` cell of the ablation-mgrq protocol (256 calibration images, 100 + 25 iterations
per unit, lr 1e-2 / 1e-3, held-out digits), with (``scaled``, the engine as shipped) or without
(``unscaled``) LSQ's gradient scale on the learned activation steps; BRECQ's reference code has
none. ``scaled`` is the ablation-mgrq cell itself (the same hash and result).

usage (from the repository root): python docs/results/brecq-lsq-scale/gradscale.py scaled|unscaled MODEL BITS SEED OUT.json
"""
import sys

import torch

from mgrq.cli import main
from mgrq.recon import learnable
from mgrq.recon.learnable import _LSQFakeQuant, bernoulli_mask

mode, model, bits, seed, out = sys.argv[1:6]
assert mode in ("scaled", "unscaled")
if mode == "unscaled":
    def forward(self, x):  # LSQAct.forward with g = 1 (eager path only: compile=none)
        assert not torch.compiler.is_compiling()
        xf = x.float()
        s, z = self.q._view(self.scale, xf), self.q._view(self.zero_point, xf)
        keep = bernoulli_mask(xf, self.drop) if self.drop > 0 else None
        return _LSQFakeQuant.apply(xf, self.scale, s, z, keep, self.qmin, self.qmax, 1.0, self.kernels).to(x.dtype)
    learnable.LSQAct.forward = forward
w, a = bits[1], bits[3]
sys.exit(main(["quantize", "--model", model, "--method", "brecq", "--w-bits", w, "--a-bits", a, "--calib", "256",
               "--seed", seed, "--set", "iters=100", "--set", "act_iters=25", "--set", "lr_round=0.01",
               "--set", "lr_step=0.001", "--set", "check_every=25", "--record", out, "--threads", "1", "--quiet",
               "--eval-split", "heldout"]))
