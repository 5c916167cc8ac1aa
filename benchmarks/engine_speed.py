"""Speed of one reconstruction step of the engine, eager vs fast modes, and fast == eager check.

    python -m benchmarks.engine_speed --device cuda            # DeiT-S block, all modes
    python -m benchmarks.engine_speed --device cpu --size tiny  # CPU sanity run (small)

The block: a DeiT-S-sized ViT block (384 dims, 6 heads, MLP 1536, 197 tokens = 224 px / 16 + cls),
random weights, W4A4 with the project's placement (every Linear input and weight, both attention
matmul operands; log-sqrt2 post-softmax), initial quantizers from the ``percentile`` method on
random images. The step: QDrop's joint step (AdaRound rounding + LSQ steps, element-wise input
mixing and activation dropping with p = 0.5, output MSE, rounding regularizer), batch 32, drawn
from 64 cached inputs.

A mode may carry a matmul precision (``compile@medium``: torch's ``medium``, bf16 products on
CPUs with AMX or AVX-512 BF16); the others, eager included, use ``--matmul-precision``.
``--autocast bf16`` runs every mode, eager included, under bfloat16 autocast, so the fast modes
are compared with eager at the same numerics.

Each mode reconstructs the same block from the same state with the same seed for ``--iters``
iterations. ms/iteration is the steady-state time between the engine's loss reads (every
``--every`` iterations, after the first read: compilation and graph capture excluded; they are
reported as setup). The fast modes are checked against eager: relative difference of the loss
curves, agreement of the final hard rounding decisions, relative difference of the learned
steps. Needs only torch and timm (no data sets, no mlflow/submitit).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a script from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from mgrq.config import path_arg
from mgrq.errors import first_line
from mgrq.recon.config import AUTOCASTS, MATMUL_PRECISIONS

SIZES = {  # embed dim, heads, image size, patch size
    "deit_s": (384, 6, 224, 16),
    "tiny": (96, 3, 32, 4),
}


def build(size: str, device: torch.device, seed: int) -> tuple[Any, torch.Tensor]:
    """A one-block ViT with random weights, quantized W4A4 with initialized quantizers, and
    random calibration images."""
    from timm.models.vision_transformer import VisionTransformer

    from mgrq.data import Calibration
    from mgrq.methods.registry import RunContext
    from mgrq.recon.init import initial_quantizers
    from mgrq.surgery import LayerPolicy, quantize_model

    dim, heads, img, patch = SIZES[size]
    torch.manual_seed(seed)
    model = VisionTransformer(img_size=img, patch_size=patch, in_chans=3, num_classes=1000, embed_dim=dim, depth=1,
                              num_heads=heads, mlp_ratio=4.0, qkv_bias=True).eval()
    qm = quantize_model(model, LayerPolicy(4, 4)).to(device)
    images = torch.randn(64, 3, img, img)
    initial_quantizers(qm, Calibration.of_images(images, seed), "percentile", 32, RunContext(device=device, progress=False))
    return qm, images


def run_mode(qm0: Any, images: torch.Tensor, mode: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    from mgrq.quant.adaround import AdaRoundQuantizer
    from mgrq.recon import ReconConfig, Reconstructor, Stage

    qm = copy.deepcopy(qm0)
    compile_mode, _, precision = mode.partition("@")
    cfg = ReconConfig(input_mode="qdrop", act_drop=0.5, compile=compile_mode, check_every=args.every,
                      matmul_precision=precision or args.matmul_precision, autocast=args.autocast, cache="device")
    stage = Stage("joint", args.iters, learn_rounding=True, learn_steps=True)
    t = time.perf_counter()
    info = Reconstructor(qm, images, cfg, device=device, seed=args.seed, progress=False, units=r"^blocks\.0$").run([stage])
    wall = time.perf_counter() - t
    u = info["stages"][0]["units"][0]
    rounding = {p.name: p.quantizer.codes() for p in qm.points(kind="weight")
                if isinstance(p.quantizer, AdaRoundQuantizer) and p.name.startswith("blocks.0.")}
    steps = {p.name: p.quantizer.scale.detach().clone() for p in qm.points(kind="act")
             if p.name.startswith("blocks.0.") and hasattr(p.quantizer, "zero_point")}
    loop = u["s_per_iter"] * args.iters
    return {"mode": mode, "ms": 1e3 * u["s_per_iter"], "setup_s": u["wall_s"] - loop + u["cache_s"], "wall_s": wall,
            "curve": [c[1] for c in u["loss_curve"]], "last": u["loss_last"], "rounding": rounding, "steps": steps}


def compare(fast: dict[str, Any], eager: dict[str, Any]) -> dict[str, float]:
    ca, cb = torch.tensor(fast["curve"]), torch.tensor(eager["curve"])
    curve = float(((ca - cb).abs() / cb.abs().clamp_min(1e-12)).max())
    same = sum(int((fast["rounding"][k] == eager["rounding"][k]).sum()) for k in eager["rounding"])
    total = sum(v.numel() for v in eager["rounding"].values())
    steps = max(float(((fast["steps"][k] - v).abs() / v.abs().clamp_min(1e-12)).max()) for k, v in eager["steps"].items())
    return {"curve": curve, "agree": same / max(total, 1), "steps": steps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                   help="cpu, cuda or cuda:N (default: cuda when present, else cpu)")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: deit_s on CUDA, tiny on CPU")
    p.add_argument("--iters", type=int, default=None, help="default: 400 on CUDA, 40 on CPU")
    p.add_argument("--every", type=int, default=None, help="loss read interval (default iters/20)")
    p.add_argument("--modes", default=None, help="comma list of compile modes, each optionally with "
                   "@highest|@high|@medium; eager (none) always runs first as the reference; default: "
                   "none,compile,cudagraphs,compile+cudagraphs on CUDA, none,kernels,compile on CPU")
    p.add_argument("--seed", type=int, default=0, help="seed of the block's weights, the images and the "
                   "reconstruction (default 0)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    p.add_argument("--matmul-precision", choices=MATMUL_PRECISIONS, default="high",
                   help="torch float32 matmul precision of every mode without an @precision suffix "
                        "(default high: TF32 on CUDA, fp32 on CPU)")
    p.add_argument("--autocast", choices=AUTOCASTS, default="none",
                   help="autocast of every mode, eager included (bf16: the unit forward in bfloat16, quantizers "
                        "in fp32), so fast modes are compared with eager at the same numerics (default none)")
    p.add_argument("--save", default=None, type=path_arg, metavar="FILE.json",
                   help="also write the table, each mode's figures and where they came from (command, git sha, "
                        "device, CPU, versions, times) to this JSON file")
    args = p.parse_args(argv)
    from benchmarks import provenance
    from mgrq.errors import ConfigError

    try:
        provenance.check(args.save)
    except ConfigError as e:
        p.error(str(e))
    meta = provenance.meta("benchmarks.engine_speed", argv, args.device)  # the launch; the device's name below
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    torch.set_num_threads(args.threads)
    args.size = args.size or ("deit_s" if cuda else "tiny")
    args.iters = args.iters or (400 if cuda else 40)
    args.every = args.every or max(1, args.iters // 20)
    modes = args.modes.split(",") if args.modes else (
        ["none", "compile", "cudagraphs", "compile+cudagraphs"] if cuda else ["none", "kernels", "compile"])
    if "none" not in modes:
        modes = ["none", *modes]

    import timm

    from mgrq.recon.runner import WARMUP

    qm, images = build(args.size, device, args.seed)
    dim, heads, img, patch = SIZES[args.size]
    tokens = (img // patch) ** 2 + 1
    n = torch.get_num_threads()
    name = torch.cuda.get_device_name(device) if cuda else f"CPU, {n} thread{'s' * (n != 1)}"
    meta["device"] = name
    print(provenance.header(meta))
    print(f"device: {name} | torch {torch.__version__} | timm {timm.__version__} | matmul precision {args.matmul_precision}"
          f"{' | autocast ' + args.autocast if args.autocast != 'none' else ''}")
    print(f"block: {args.size} ({dim} dims, {heads} heads, {tokens} tokens), batch 32, W4A4, QDrop joint step, "
          f"{args.iters} iterations (graph capture after {WARMUP} eager warm-up steps), loss read every {args.every}")
    results: dict[str, dict[str, Any]] = {}
    errors: dict[str, str] = {}
    for mode in modes:
        try:
            results[mode] = run_mode(qm, images, mode, args, device)
        except Exception as e:  # report and go on with the other modes
            errors[mode] = f"{type(e).__name__}: {first_line(e)}"
    table = ["| mode | ms/iter | speed-up | setup s | loss max rel diff vs eager | rounding agreement | step max rel diff |",
             "|---|---|---|---|---|---|---|"]
    rows: list[dict[str, Any]] = []
    eager = results.get("none")
    for mode in modes:
        if mode in errors:
            table.append(f"| {mode} | failed: {errors[mode]} | | | | | |")
            rows.append({"mode": mode, "error": errors[mode]})
            continue
        r = results[mode]
        row = {"mode": mode, "ms_per_iter": r["ms"], "setup_s": r["setup_s"], "wall_s": r["wall_s"]}
        if mode == "none" or eager is None:
            table.append(f"| {mode} | {r['ms']:.2f} | 1.00x | {r['setup_s']:.1f} | - | - | - |")
            rows.append(row)
            continue
        c = compare(r, eager)
        table.append(f"| {mode} | {r['ms']:.2f} | {eager['ms'] / r['ms']:.2f}x | {r['setup_s']:.1f} | {c['curve']:.2e} | "
                     f"{100 * c['agree']:.3f}% | {c['steps']:.2e} |")
        rows.append({**row, "speedup": eager["ms"] / r["ms"], "loss_rel_diff": c["curve"],
                     "rounding_agreement": c["agree"], "step_rel_diff": c["steps"]})
    if eager is not None and len(results) > 1:
        ok = [m for m in results if m != "none" and compare(results[m], eager)["curve"] < 1e-2
              and compare(results[m], eager)["agree"] > 0.99]
        table += ["", f"fast modes equal to eager within noise (loss curves within 1%, >99% same rounding): "
                      f"{', '.join(ok) or 'none'}"]
    print()
    print("\n".join(table))
    provenance.save(args.save, meta, table, rows)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
