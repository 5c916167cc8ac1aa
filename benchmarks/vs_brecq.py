"""Engine speed against the official BRECQ code, side by side in one process, on the CPU.

    git clone https://github.com/yhhhli/BRECQ /tmp/BRECQ && git -C /tmp/BRECQ checkout e455d62
    python -m benchmarks.vs_brecq --brecq /tmp/BRECQ                       # 2 threads, wall time
    python -m benchmarks.vs_brecq --brecq /tmp/BRECQ --threads 1 --clock cpu --precisions highest,medium

Both sides reconstruct block 0 of the tiny ViT (``tiny_vit``: 96 dims, 3 heads, 65 tokens) at
W4A4 with batch 32 drawn from 256 random images, in the two stages BRECQ runs:

- **rounding**: AdaRound rounding with activation quantization off. BRECQ:
  ``quant/block_recon.py::block_reconstruction(act_quant=False)`` (Adam 1e-3, beta 20 -> 2 after
  a 0.2 warm-up, output MSE). Ours: ``Stage("rounding", learn_rounding=True, acts=False)``.
- **steps**: activation step sizes with the rounding frozen, activations quantized. BRECQ:
  ``block_reconstruction(act_quant=True, lr=4e-4, p=2.4)``. Ours: ``Stage("steps", lr_step=4e-4, p=2.4)``.

The BRECQ code is the user's checkout, imported at run time, never copied into this project.
One change is made to it in memory when it is loaded: ``device = 'cuda'`` in
``block_reconstruction`` becomes the CPU; while its rows run, ``torch.randperm`` (which its loop
calls once per iteration) is wrapped to take the time stamps. Its quantizers are its own (weights channel-wise
``mse``, activations ``mse`` with a learned step, ``QuantModel`` around the timm model; the
block is wrapped as a ``BaseQuantBlock`` with no output quantizer, as a ViT block has none).
The placement differs in the steps stage: BRECQ quantizes the outputs of the 4 Linear layers,
this project the inputs of the 4 Linear layers and both operands of the two attention matmuls
(6 more quantizers). In the rounding stage activations are off on both sides; the one
difference left is attention: BRECQ's fp32 rows run timm's fused attention kernel, this
project's quantizable attention always runs the two matmuls and the softmax explicitly.

Time per iteration: the time between two successive iterations of each side's loop (BRECQ:
its per-iteration ``torch.randperm`` call; ours: the engine's optimizer update), median over the
``--iters`` - 1 intervals less the first two. ``--clock wall`` (default) is wall time;
``--clock cpu`` is the process's CPU time, steadier on a busy machine with one thread (with
several threads it adds the threads' times up). Rows are interleaved over ``--rounds`` rounds in
one process, so a drift in the machine's load hits every row; the table gives the median over
rounds and the ratio BRECQ / ours at the same matmul precision, and against BRECQ in fp32.

``--precisions highest,medium`` adds rows with bf16 matrix products (torch's float32 matmul
precision ``medium``; fp32 accumulation on CPUs with AMX or AVX-512 BF16). BRECQ's rows under
``medium`` run with timm's fused attention off: torch's CPU attention kernel is several times
slower under that setting. ``compile`` rows include no compilation time (about 14 s per unit,
paid once). Accuracy is not compared here; the suites do that.

The **floor** row (rounding stage only) times the matrix products of one rounding iteration and
nothing else: the 17 products both sides run at that block's shapes (4 Linear forwards with bias,
their 4 weight gradients, 3 input gradients, as the cached input needs none; the two attention
matmuls and their 4 gradients), with the operand layouts autograd uses, back to back. No code with
the same numerics can take less per iteration, so ``BRECQ / floor`` is the most any
reimplementation can gain over BRECQ in that stage at that precision. BRECQ's fused attention runs
the same attention products inside one kernel. The floor is a little optimistic: it writes into
buffers made once (no allocation, no page faults), and its operands stay in cache between
products, where a real step runs other kernels between them.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

if __package__ in (None, ""):  # run as a script from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from mgrq.config import path_arg

BRECQ_URL = "https://github.com/yhhhli/BRECQ"
BRECQ_COMMIT = "e455d62"
STAGES = ("rounding", "steps")
OURS = {"rounding": ("none", "compile"), "steps": ("kernels", "compile")}  # default modes per stage
CPU_MODES = ("none", "kernels", "compile")  # the engine's compile modes that run on a CPU
PRECISION_TAG = {"highest": "fp32", "medium": "bf16 products"}  # float32 matmul precision -> label


class CheckoutError(ValueError):
    """The ``--brecq`` folder is not the expected BRECQ checkout."""


def load_brecq(path: str, device: str = "cpu") -> types.ModuleType:
    """The BRECQ checkout's ``quant/block_recon.py`` as a module, with its hard-coded
    ``device = 'cuda'`` replaced by ``device``. Raises :class:`CheckoutError` naming what was
    expected."""
    src_path = os.path.join(path, "quant", "block_recon.py")
    if not os.path.isfile(src_path):
        raise CheckoutError(f"--brecq {path!r}: no quant/block_recon.py there; expected a checkout of {BRECQ_URL} "
                         f"(commit {BRECQ_COMMIT}): git clone {BRECQ_URL} BRECQ && git -C BRECQ checkout {BRECQ_COMMIT}")
    with open(src_path) as f:
        src = f.read()
    if src.count("device = 'cuda'") != 1:
        raise CheckoutError(f"{src_path}: expected one line \"device = 'cuda'\" in block_reconstruction "
                         f"(commit {BRECQ_COMMIT}); this checkout differs")
    root = os.path.abspath(path)
    sys.path.insert(0, root)  # left in place: BRECQ's modules import each other for the whole run
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            import quant  # BRECQ's package; prints a note about SyncBatchNorm
    except ImportError as e:
        raise CheckoutError(f"--brecq {path!r}: importing its quant package failed ({e}); expected a complete "
                            f"checkout of {BRECQ_URL} (commit {BRECQ_COMMIT})") from e
    where = os.path.abspath(getattr(quant, "__file__", None) or "")
    if not where.startswith(root + os.sep):
        raise CheckoutError(f"a different 'quant' package is already imported ({where or 'no file'}), "
                            f"not the one in {root}; run the benchmark in a fresh process")
    mod = types.ModuleType("brecq_block_recon")
    mod.__file__ = src_path
    exec(compile(src.replace("device = 'cuda'", f"device = {device!r}"), src_path, "exec"), mod.__dict__)
    return mod


def checkout_commit(path: str) -> str:
    try:
        out = subprocess.run(["git", "-C", path, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        changed = subprocess.run(["git", "-C", path, "status", "--porcelain", "--untracked-files=no"],
                                 capture_output=True, text=True, timeout=10)
        sha = out.stdout.strip()
        return (f"{sha}+dirty" if changed.stdout.strip() else sha) if sha else "unknown (not a git checkout)"
    except (OSError, subprocess.SubprocessError):
        return "unknown (no git)"


class Clock:
    def __init__(self, kind: str):
        self.now: Callable[[], float] = time.perf_counter if kind == "wall" else time.process_time
        self.stamps: list[float] = []

    def tick(self) -> None:
        self.stamps.append(self.now())

    def per_iter(self) -> float:
        d = [b - a for a, b in zip(self.stamps, self.stamps[1:])][2:]
        if not d:
            raise RuntimeError("too few iterations timed: use --iters 5 or more")
        return statistics.median(d)


class Floor:
    """The matrix products of one rounding-stage iteration of ``blk`` (a timm ViT ``Block``) at
    ``batch`` images of ``tokens`` tokens, and nothing else (see the module docstring)."""

    def __init__(self, blk: torch.nn.Module, batch: int, tokens: int):
        attn, mlp = blk.attn, blk.mlp
        d, heads, hidden = attn.qkv.in_features, attn.num_heads, mlp.fc1.out_features
        n, bh, hd = batch * tokens, batch * heads, d // heads
        r = torch.randn
        x, a, h, g = r(n, d), r(n, d), r(n, d), r(n, hidden)  # inputs of qkv, proj, fc1, fc2
        q, k, v, p = r(bh, tokens, hd), r(bh, tokens, hd), r(bh, tokens, hd), r(bh, tokens, tokens)
        dqkv, dd, dm = r(n, 3 * d), r(n, d), r(n, hidden)  # output gradients
        dv, dp = r(bh, tokens, hd), r(bh, tokens, tokens)
        self.products: list[tuple[Callable[..., torch.Tensor], tuple[torch.Tensor, ...]]] = []
        for lin, inp, dout in ((attn.qkv, x, dqkv), (attn.proj, a, dd), (mlp.fc1, h, dm), (mlp.fc2, g, dd)):
            w, b = lin.weight.detach(), lin.bias.detach()
            self.products.append((torch.addmm, (b, inp, w.t())))  # forward, as F.linear
            self.products.append((torch.mm, (dout.t(), inp)))  # weight gradient
            if lin is not attn.qkv:  # the unit's cached input needs no gradient
                self.products.append((torch.mm, (dout, w)))  # input gradient
        self.products += [
            (torch.bmm, (q, k.transpose(1, 2))), (torch.bmm, (p, v)),  # attention forward
            (torch.bmm, (dv, v.transpose(1, 2))), (torch.bmm, (p.transpose(1, 2), dv)),  # d(p @ v)
            (torch.bmm, (dp, k)), (torch.bmm, (q.transpose(1, 2), dp)),  # d(q @ k^T)
        ]

    def run(self, iters: int, clock: Clock) -> float:
        with torch.no_grad():
            outs = [f(*args) for f, args in self.products]  # written in place: no allocation is timed
            for _ in range(iters):
                for (f, args), out in zip(self.products, outs):
                    f(*args, out=out)
                clock.tick()
        return clock.per_iter()


class BrecqSide:
    """The tiny ViT inside BRECQ's ``QuantModel``, block 0 reconstructed by BRECQ's code."""

    def __init__(self, brecq: types.ModuleType, fp: torch.nn.Module, images: torch.Tensor, iters: int):
        from quant.quant_block import BaseQuantBlock
        from quant.quant_layer import StraightThrough
        from quant.quant_model import QuantModel

        class Block(BaseQuantBlock):  # a ViT block: no quantizer on its output
            def __init__(self, blk: torch.nn.Module, aq: dict[str, Any]):
                super().__init__(aq)
                self.blk = blk
                self.act_quantizer = StraightThrough()

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                return self.blk(x)

        self.brecq, self.fp, self.images, self.iters = brecq, fp, images, iters
        self.QuantModel, self.Block = QuantModel, Block

    def model(self, fused_attn: bool) -> Any:
        wq = {"n_bits": 4, "channel_wise": True, "scale_method": "mse"}
        aq = {"n_bits": 4, "channel_wise": False, "scale_method": "mse", "leaf_param": True}
        qnn = self.QuantModel(copy.deepcopy(self.fp), wq, aq).eval()
        qnn.model.blocks[0] = self.Block(qnn.model.blocks[0], aq)
        for m in qnn.modules():
            if hasattr(m, "fused_attn"):
                m.fused_attn = fused_attn
        qnn.set_quant_state(True, False)
        with torch.no_grad():
            qnn(self.images[:64])  # BRECQ initializes its quantizers on the first 64 images
        return qnn

    def run(self, qnn: Any, stage: str, clock: Clock) -> float:
        act = stage == "steps"
        if act:
            qnn.set_quant_state(True, True)
            with torch.no_grad():
                qnn(self.images[:64])
        orig = torch.randperm

        def randperm(*a: Any, **k: Any) -> torch.Tensor:  # called once per iteration by BRECQ's loop
            clock.tick()
            return orig(*a, **k)

        torch.randperm = randperm  # BRECQ's module reads it from the torch module
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                self.brecq.block_reconstruction(qnn, qnn.model.blocks[0], self.images, iters=self.iters, act_quant=act,
                                                asym=True, warmup=0.2, b_range=(20, 2), lr=4e-4,
                                                p=2.4 if act else 2.0, batch_size=32)
        finally:
            torch.randperm = orig
        return clock.per_iter()


class OurSide:
    """The same tiny ViT through this project's surgery, quantizers from BRECQ's L2.4 searches
    (``weight_init=lp``, ``act_init=lp``), block 0 reconstructed by the engine."""

    def __init__(self, fp: torch.nn.Module, images: torch.Tensor, iters: int):
        from mgrq.data import Calibration

        self.cal = Calibration.of_images(images)
        self.fp, self.images, self.iters = fp, images, iters

    def run(self, stage: str, mode: str, precision: str, clock: Clock) -> float:
        import mgrq.recon.trainer as trainer
        from mgrq.methods.registry import RunContext
        from mgrq.recon import ReconConfig, Reconstructor, Stage
        from mgrq.recon.init import initial_quantizers
        from mgrq.surgery import LayerPolicy, quantize_model

        qm = quantize_model(self.fp, LayerPolicy(4, 4))
        initial_quantizers(qm, self.cal, "percentile", 64, RunContext(device=torch.device("cpu"), progress=False),
                           "lp", "lp")
        st = (Stage("rounding", self.iters, learn_rounding=True, learn_steps=False, acts=False) if stage == "rounding"
              else Stage("steps", self.iters, learn_rounding=False, learn_steps=True, lr_step=4e-4, p=2.4))
        cfg = ReconConfig(check_every=10, compile=mode, matmul_precision=precision)
        orig = trainer.UnitTrainer.update

        def update(tr: Any, total: torch.Tensor) -> None:
            orig(tr, total)
            clock.tick()

        trainer.UnitTrainer.update = update  # type: ignore[method-assign,assignment]
        try:
            Reconstructor(qm, self.images, cfg, device=torch.device("cpu"), progress=False, units=r"^blocks\.0$").run([st])
        finally:
            trainer.UnitTrainer.update = orig  # type: ignore[method-assign]
        return clock.per_iter()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=f"BRECQ checkout: git clone {BRECQ_URL} BRECQ && git -C BRECQ checkout {BRECQ_COMMIT}")
    p.add_argument("--brecq", required=True, help="path to a checkout of yhhhli/BRECQ (commit e455d62)")
    p.add_argument("--threads", type=int, default=2, help="torch threads for both sides (default 2)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="wall time (default) or this process's CPU time (steadier with --threads 1)")
    p.add_argument("--iters", type=int, default=40, help="iterations per row and round (default 40)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3)")
    p.add_argument("--stages", default="rounding,steps", help="comma list of: rounding, steps (default both)")
    p.add_argument("--precisions", default="highest",
                   help="comma list of float32 matmul precisions: highest (fp32), medium (bf16 products); "
                        "default highest")
    p.add_argument("--modes", default=None,
                   help="our compile modes, comma list of none, kernels, compile (default: none,compile for rounding "
                        "and kernels,compile for steps; steps has no pure eager row by default: the opt-in fused "
                        "quantizer kernels are the peer of BRECQ's eager step there)")
    p.add_argument("--save", default=None, type=path_arg, metavar="FILE.json",
                   help="also write the table, every round's figures and where they came from (command, git sha, "
                        "BRECQ commit, CPU, versions, times) to this JSON file")
    args = p.parse_args(argv)
    from benchmarks import provenance
    from mgrq.errors import ConfigError

    stages = [s for s in args.stages.split(",") if s]
    precisions = [s for s in args.precisions.split(",") if s]
    modes_arg = [m for m in (args.modes or "").split(",") if m]
    for kind, given, allowed in (("stage", stages, STAGES), ("precision", precisions, tuple(PRECISION_TAG)),
                                 ("mode", modes_arg, CPU_MODES)):
        bad = [x for x in given if x not in allowed]
        if bad or (kind != "mode" and not given):
            p.error(f"--{kind}s {','.join(given)!r}: unknown or empty; expected a comma list of {', '.join(allowed)}")
    if args.iters < 5 or args.rounds < 1 or args.threads < 1:
        p.error("--iters must be >= 5, --rounds and --threads >= 1")
    try:
        provenance.check(args.save)
    except ConfigError as e:
        p.error(str(e))
    meta = provenance.meta("benchmarks.vs_brecq", argv, f"CPU, {args.threads} thread{'s' * (args.threads != 1)}, "
                                                        f"{args.clock} clock")

    from mgrq import zoo

    try:
        brecq = load_brecq(args.brecq)
    except CheckoutError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    fp = zoo.create_model("tiny_vit")
    images = torch.randn(256, 1, 32, 32)
    theirs, ours = BrecqSide(brecq, fp, images, args.iters), OurSide(fp, images, args.iters)
    from mgrq.recon import ReconConfig

    floor = Floor(fp.blocks[0], ReconConfig().batch, fp.patch_embed.num_patches + fp.num_prefix_tokens)

    rows: list[tuple[str, str, str, str]] = []  # (stage, side, mode, precision)
    for stage in stages:
        modes = modes_arg or list(OURS[stage])
        for prec in precisions:
            rows.append((stage, "BRECQ", "-", prec))
            rows += [(stage, "ours", m, prec) for m in modes]
            if stage == "rounding":
                rows.append((stage, "floor", "-", prec))
    times: dict[tuple[str, str, str, str], list[float]] = {r: [] for r in rows}
    saved = torch.get_float32_matmul_precision()
    commit = checkout_commit(args.brecq)
    if not commit.startswith(BRECQ_COMMIT):
        print(f"warning: the BRECQ checkout is at {commit}, not {BRECQ_COMMIT}; the figures are for that code",
              file=sys.stderr)
    meta["brecq_commit"] = commit
    print(provenance.header(meta), flush=True)
    print(f"BRECQ {commit} vs this engine | torch {torch.__version__} | {args.threads} thread(s) | "
          f"{args.clock} clock | tiny_vit blocks.0, batch 32, W4A4 | {args.iters} iterations x {args.rounds} rounds",
          flush=True)
    for r in range(args.rounds):
        for row in rows:
            stage, side, mode, prec = row
            if side == "ours":  # the engine holds its matmul precision while it runs
                times[row].append(ours.run(stage, mode, prec, Clock(args.clock)))
                continue
            torch.set_float32_matmul_precision(prec)
            try:
                if side == "floor":
                    times[row].append(floor.run(args.iters, Clock(args.clock)))
                    continue
                times[row].append(theirs.run(theirs.model(fused_attn=prec != "medium"), stage, Clock(args.clock)))
            finally:
                torch.set_float32_matmul_precision(saved)
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{s}/{side}/{m}@{PRECISION_TAG[pr]} {1e3 * v[-1]:.1f}" for (s, side, m, pr), v in times.items()), flush=True)

    med = {row: statistics.median(v) for row, v in times.items()}
    table = ["| stage | code | mode | matmul | ms/iter | BRECQ same matmul / row | BRECQ fp32 / row |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        stage, side, mode, prec = row
        same = med[(stage, "BRECQ", "-", prec)] / med[row]
        fp32 = med.get((stage, "BRECQ", "-", "highest"))
        vs32 = f"{fp32 / med[row]:.2f}x" if fp32 is not None else "-"
        table.append(f"| {stage} | {side} | {mode} | {PRECISION_TAG[prec]} | {1e3 * med[row]:.1f} | {same:.2f}x | {vs32} |")
    if any(side == "floor" for _, side, _, _ in rows):
        table += ["", "floor: the stage's matrix products alone, back to back; BRECQ / floor is the most that any code "
                      "with the same numerics can gain over BRECQ in that stage."]
    print()
    print("\n".join(table))
    provenance.save(args.save, meta, table, [{"stage": st, "code": side, "mode": m, "matmul": PRECISION_TAG[pr],
                                         "ms_per_iter_median": 1e3 * med[(st, side, m, pr)],
                                         "ms_per_iter_rounds": [1e3 * t for t in times[(st, side, m, pr)]]}
                                        for st, side, m, pr in rows])
    return 0


if __name__ == "__main__":
    sys.exit(main())
