"""Four forms of the compiled LSQ quantizer (``QF.fake_quant`` with gradients), timed on the steps
stage of ``benchmarks.vs_brecq`` (ours only, ``compile`` mode, 2 threads, wall clock), one process,
the forms interleaved round by round. Run from the repository root:

    python docs/benchmarks/cpu-steps-mend/forms.py [FORMS] [ITERS] [ROUNDS]

``landed`` is the tree's own ``QF.fake_quant`` (bc44ef8's autograd function, float mask);
``v2`` is 232aa39's form, ``where`` d83f909's, ``clamp`` fb0df5a's (its gradient is wrong at the
ends of the integer range on torch 2.14), ``fn_bool`` the autograd function with a bool mask.
"""
import os
import statistics
import sys

import torch

sys.path.insert(0, os.getcwd())
from benchmarks.vs_brecq import Clock, OurSide  # noqa: E402
from mgrq import zoo  # noqa: E402
from mgrq.quant import functional as QF  # noqa: E402

landed = QF.fake_quant


def _plain(x, scale, zp, qmin, qmax):
    return (torch.clamp(torch.round(x * torch.reciprocal(scale)) + zp, qmin, qmax) - zp) * scale


def _recorded(x, scale):
    return torch.is_grad_enabled() and (x.requires_grad or scale.requires_grad)


def round_ste(x):
    return (x.round() - x).detach() + x


def clamp(x, scale, zp, qmin, qmax):
    return (torch.clamp(round_ste(x * torch.reciprocal(scale)) + zp, qmin, qmax) - zp) * scale


def where(x, scale, zp, qmin, qmax):
    if not _recorded(x, scale):
        return _plain(x, scale, zp, qmin, qmax)
    q = round_ste(x * torch.reciprocal(scale)) + zp
    c = torch.clamp(q.detach(), qmin, qmax)
    return (torch.where(c == q.detach(), q, c) - zp) * scale


def v2(x, scale, zp, qmin, qmax):
    if not _recorded(x, scale):
        return _plain(x, scale, zp, qmin, qmax)
    with torch.no_grad():
        v = x * torch.reciprocal(scale)
        q = torch.round(v) + zp
        c = torch.clamp(q, qmin, qmax)
        inr = (c == q).to(x.dtype)
        c = c - zp
    return c * scale + inr * ((x - x.detach()) - v * (scale - scale.detach()))


class _Bool(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zp, qmin, qmax):
        v = x * torch.reciprocal(scale)
        q = torch.round(v) + zp
        c = torch.clamp(q, qmin, qmax)
        inr = c == q
        c = c - zp
        ctx.shapes = x.shape, scale.shape
        ctx.save_for_backward(inr, c - torch.where(inr, v, 0.0))
        return c * scale

    @staticmethod
    def backward(ctx, dy):
        inr, gs = ctx.saved_tensors
        xs, ss = ctx.shapes
        dx = torch.where(inr, dy, 0.0).sum_to_size(xs) if ctx.needs_input_grad[0] else None
        ds = (dy * gs).sum_to_size(ss) if ctx.needs_input_grad[1] else None
        return dx, ds, None, None, None


def fn_bool(x, scale, zp, qmin, qmax):
    return _Bool.apply(x, scale, zp, qmin, qmax) if _recorded(x, scale) else _plain(x, scale, zp, qmin, qmax)


FORMS = {"landed": landed, "v2": v2, "where": where, "clamp": clamp, "fn_bool": fn_bool}

if __name__ == "__main__":
    names = sys.argv[1].split(",") if len(sys.argv) > 1 else list(FORMS)
    iters = int(sys.argv[2]) if len(sys.argv) > 2 else 40
    rounds = int(sys.argv[3]) if len(sys.argv) > 3 else 3
    torch.set_num_threads(2)
    torch.manual_seed(0)
    fp = zoo.create_model("tiny_vit")
    ours = OurSide(fp, torch.randn(256, 1, 32, 32), iters)
    times: dict[str, list[float]] = {n: [] for n in names}
    print(f"torch {torch.__version__} | steps stage, compile, 2 threads, wall | {iters} iterations x {rounds} rounds")
    for r in range(rounds):
        for n in names:
            QF.fake_quant = FORMS[n]
            torch._dynamo.reset()
            times[n].append(1e3 * ours.run("steps", "compile", "highest", Clock("wall")))
        print(f"round {r + 1}: " + ", ".join(f"{n} {v[-1]:.1f}" for n, v in times.items()), flush=True)
    QF.fake_quant = landed
    for n, v in times.items():
        print(f"{n:8s} median {statistics.median(v):.1f} ms/iter, rounds {[round(t, 1) for t in v]}")
