"""Speed of the three forward paths of ``UniformQuantizer`` without gradients, and whether they agree.

    python -m benchmarks.quantizer_paths                      # CPU, 1 and 2 threads, ViT-B shapes
    python -m benchmarks.quantizer_paths --device cuda --threads 1

The paths, on the same quantizer (4 bits, asymmetric, integer zero point, min/max range):

- ``fused``: torch's ``fake_quantize_per_{tensor,channel}_affine`` kernel, which the quantizer
  takes whenever its zero point is an integer inside the integer range (evaluation and every
  forward without gradients);
- ``composite``: the same formula in torch ops, ``x * (1 / s)`` (what the quantizer computes
  where the kernel does not apply: fractional zero points, RepQ-ViT's reparameterized inputs);
- ``divide``: the composite with ``x / s``, as the reference codes compute it (``division=divide``
  of ``repq_vit``, ``ptq4vit`` and ``base_ptq``).

The tensors (ViT-B sizes, batch 32, 197 tokens; ``--size tiny`` for a quick run): a Linear weight
per output channel, a Linear input per tensor and per channel (RepQ-ViT's post-LayerNorm inputs
before the reparameterization), and a matmul operand per head. ms/call is the median over
``--rounds`` rounds of ``--calls`` calls each, the paths taking turns inside each round (so a
noisy machine slows them alike), after one untimed pass over every tensor (the first large
allocations are slower); the ratios are to ``fused`` in the same round. ``differ``: the
elements whose output differs from ``composite`` (``fused`` must be 0: the quantizer's fast path is
bit-identical to the formula; ``divide`` differs where a quotient lies at a rounding tie).
Needs only torch.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

if __package__ in (None, ""):  # run as a script from the repo root
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch

from mgrq.config import path_arg

PATHS = ("fused", "composite", "divide")
SIZES = {  # batch, tokens, dim, heads
    "vit_b": (32, 197, 768, 12),
    "tiny": (4, 65, 96, 3),
}


def cases(size: str) -> dict[str, tuple[torch.Size, Any]]:
    from mgrq.quant.quantizers import PER_TENSOR, per_channel

    b, n, d, h = SIZES[size]
    return {
        "weight, per channel": (torch.Size([4 * d, d]), per_channel(0)),
        "input, per tensor": (torch.Size([b, n, d]), PER_TENSOR),
        "input, per channel": (torch.Size([b, n, d]), per_channel(-1)),
        "matmul operand, per head": (torch.Size([b, h, n, d // h]), per_channel(1)),
    }


def quantizer(path: str, x: torch.Tensor, granularity: Any) -> Any:
    """The path's forward: the kernel (``_fused``) or the quantizer's forward with the kernel off."""
    from mgrq.quant.quantizers import UniformQuantizer

    q = UniformQuantizer(4, granularity=granularity, divide=path == "divide").to(x.device)
    q.init_minmax(x)
    assert q._fast == (path != "divide"), f"{path}: the quantizer is not on the path under test"
    if path == "fused":
        return q._fused
    q._fast = False
    return q


def time_case(x: torch.Tensor, granularity: Any, rounds: int, calls: int) -> dict[str, Any]:
    qs = {p: quantizer(p, x, granularity) for p in PATHS}
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)
    with torch.no_grad():
        out = {p: q(x) for p, q in qs.items()}  # also the warm-up
        times: dict[str, list[float]] = {p: [] for p in PATHS}
        for r in range(rounds):
            for p in PATHS[r % 3:] + PATHS[:r % 3]:  # take turns
                sync()
                t = time.perf_counter()
                for _ in range(calls):
                    qs[p](x)
                sync()
                times[p].append((time.perf_counter() - t) / calls * 1e3)
    ms = {p: statistics.median(v) for p, v in times.items()}
    ratio = {p: statistics.median(a / f for a, f in zip(times[p], times["fused"])) for p in PATHS}
    differ = {p: int((out[p] != out["composite"]).sum()) for p in PATHS}
    return {"ms": ms, "ratio_to_fused": ratio, "differ_from_composite": differ, "numel": x.numel()}


def main(argv: list[str] | None = None) -> int:
    from benchmarks import provenance
    from mgrq.errors import ConfigError

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--size", choices=sorted(SIZES), default="vit_b", help="tensor sizes (default vit_b)")
    p.add_argument("--threads", default="1,2", help="comma list of CPU thread counts (default 1,2; "
                   "on CUDA only the first is used)")
    p.add_argument("--rounds", type=int, default=7, help="rounds, the paths taking turns (default 7)")
    p.add_argument("--calls", type=int, default=10, help="calls per path and round (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random tensors (default 0)")
    p.add_argument("--save", default=None, type=path_arg, metavar="FILE.json",
                   help="also write the table, each row's figures, the command, source tree, machine and versions")
    args = p.parse_args(argv)
    try:
        threads = [int(t) for t in args.threads.split(",")]
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        p.error(f"--threads {args.threads!r}: expected a comma list of positive integers, e.g. 1,2")
    if args.rounds < 1 or args.calls < 1:
        p.error(f"--rounds {args.rounds}, --calls {args.calls}: expected both >= 1")
    if args.device not in ("cpu", "cuda"):
        p.error(f"--device {args.device!r}: expected cpu or cuda")
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device is visible to torch")
    try:
        provenance.check(args.save)
    except ConfigError as e:
        p.error(str(e))
    device = torch.device(args.device)
    meta = provenance.meta("benchmarks.quantizer_paths", argv, args.device)
    if device.type == "cuda":
        meta["device"] = f"cuda ({torch.cuda.get_device_name(device)})"
    print(provenance.header(meta))
    table = ["| tensor | shape | threads | fused ms | composite ms | divide ms | composite / fused "
             "| divide / fused | fused differ | divide differ |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    print(*table, sep="\n")
    rows = []
    torch.manual_seed(args.seed)
    tensors = {name: (torch.randn(shape, device=device), g) for name, (shape, g) in cases(args.size).items()}
    for x, g in tensors.values():  # warm-up, untimed: the allocator settles on these sizes first
        time_case(x, g, 1, 1)
    for t in threads if device.type == "cpu" else threads[:1]:
        torch.set_num_threads(t)
        for name, (x, g) in tensors.items():
            r = time_case(x, g, args.rounds, args.calls)
            ms, ratio, differ = r["ms"], r["ratio_to_fused"], r["differ_from_composite"]
            line = (f"| {name} | {list(x.shape)} | {t} | {ms['fused']:.2f} | {ms['composite']:.2f} | "
                    f"{ms['divide']:.2f} | {ratio['composite']:.2f}x | {ratio['divide']:.2f}x | "
                    f"{differ['fused']} | {differ['divide']} of {r['numel']} |")
            table.append(line)
            print(line, flush=True)
            rows.append({"tensor": name, "shape": list(x.shape), "threads": t, **r})
    provenance.save(args.save, meta, table, rows)
    bad = [r["tensor"] for r in rows if r["differ_from_composite"]["fused"]]
    if bad:
        print(f"fused kernel differs from the composite formula on: {', '.join(sorted(set(bad)))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
