"""Quantization primitives: exactness against torch's own fake-quant ops, error vs bits, bad input."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mgrq.quant import functional as QF
from mgrq.quant.quantizers import (
    PERCENTILES,
    LogQuantizer,
    UniformQuantizer,
    per_channel,
    per_group,
)

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def tensor_case(draw, per_channel_case=False):
    ndim = draw(st.integers(1, 4))
    shape = tuple(draw(st.lists(st.integers(1, 7), min_size=ndim, max_size=ndim)))
    bits = draw(st.integers(2, 16))
    signed = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * draw(st.sampled_from([0.01, 1.0, 100.0]))
    qmin, qmax = QF.qrange(bits, signed)
    n = shape[draw(st.integers(0, ndim - 1))] if per_channel_case else 1
    scale = torch.rand(n, generator=g) * 0.5 + 1e-3
    zp = torch.randint(qmin, qmax + 1, (n,), generator=g)
    return x, bits, signed, scale, zp


@SETTINGS
@given(tensor_case())
def test_fake_quant_matches_torch_per_tensor(case):
    x, bits, signed, scale, zp = case
    qmin, qmax = QF.qrange(bits, signed)
    ours = QF.fake_quant(x, scale[0], zp[0].float(), qmin, qmax)
    ref = torch.fake_quantize_per_tensor_affine(x, float(scale[0]), int(zp[0]), qmin, qmax)
    assert torch.equal(ours, ref)


@SETTINGS
@given(tensor_case(per_channel_case=True), st.data())
def test_fake_quant_matches_torch_per_channel(case, data):
    x, bits, signed, _, _ = case
    axis = data.draw(st.integers(0, x.dim() - 1))
    qmin, qmax = QF.qrange(bits, signed)
    c = x.shape[axis]
    g = torch.Generator().manual_seed(c)
    scale = torch.rand(c, generator=g) * 0.5 + 1e-3
    zp = torch.randint(qmin, qmax + 1, (c,), generator=g, dtype=torch.int32)
    shape = [1] * x.dim()
    shape[axis] = -1
    ours = QF.fake_quant(x, scale.view(shape), zp.float().view(shape), qmin, qmax)
    ref = torch.fake_quantize_per_channel_affine(x, scale, zp, axis, qmin, qmax)
    assert torch.equal(ours, ref)


@pytest.mark.parametrize("gran", [None, per_channel(0), per_channel(-1), per_group(0, 4)])
@pytest.mark.parametrize("bits", [2, 4, 8])
def test_quantizer_fused_and_composite_paths_agree(gran, bits):
    x = torch.randn(8, 6, 12) * 3
    q = UniformQuantizer(bits, granularity=gran) if gran else UniformQuantizer(bits)
    q.init_minmax(x)
    assert q._fast
    with torch.no_grad():
        fused = q._fused(x)
        assert torch.equal(q(x), QF.fake_quant(x, q._view(q.scale, x), q._view(q.zero_point, x), q.qmin, q.qmax))
    composite = q(x.clone().requires_grad_(True)).detach()  # grad path -> composite
    assert torch.equal(fused, composite)


def _rounding_ties():
    """Rows ``[64, 16]`` of values ``(k + 1/2) s`` with one step ``s`` per row: at such a tie,
    ``x / s`` and ``x * (1 / s)`` often round to different codes."""
    g = torch.Generator().manual_seed(0)
    s = torch.rand(64, 1, generator=g) * 0.1 + 0.01
    return (torch.arange(-8, 8).float() + 0.5) * s, s


def test_fake_quant_divide_is_the_reference_division():
    """``divide=True``: ``round(x / s)`` as RepQ-ViT's quantizer code, not torch's ``x * (1 / s)``;
    the two give different codes on the ties (so each comparison below can fail)."""
    x, s = _rounding_ties()
    z = torch.full_like(s, 3.0)
    by_division = (torch.clamp(torch.round(x / s) + z, 0, 15) - z) * s
    by_reciprocal = (torch.clamp(torch.round(x * torch.reciprocal(s)) + z, 0, 15) - z) * s
    assert not torch.equal(by_division, by_reciprocal)
    assert torch.equal(QF.fake_quant(x, s, z, 0, 15, divide=True), by_division)
    assert torch.equal(QF.fake_quant(x, s, z, 0, 15), by_reciprocal)
    with pytest.raises(ValueError, match="divide=True with gradients"):
        QF.fake_quant(x.requires_grad_(True), s, z, 0, 15, divide=True)


@torch.no_grad()
def test_uniform_quantizer_divide_reaches_forward_and_search(monkeypatch):
    """A ``divide`` quantizer skips torch's fused kernels (they multiply by the reciprocal) and
    divides in its forward and in its searches' candidate errors."""
    x, s = _rounding_ties()
    z = torch.full((64,), 8.0)
    out = {}
    for divide in (False, True):
        q = UniformQuantizer(4, granularity=per_channel(0), divide=divide)
        q.set_params(s.reshape(-1), z)
        assert q._fast is not divide
        out[divide] = q(x), q._quant_rows(x, s.reshape(-1), z)
        expect = QF.fake_quant(x, s, z[:, None], 0, 15, divide=divide)
        assert torch.equal(out[divide][0], expect) and torch.equal(out[divide][1], expect)
    assert not torch.equal(out[False][0], out[True][0])
    assert "divide" in repr(UniformQuantizer(4, divide=True)) and "divide" not in repr(UniformQuantizer(4))
    # every candidate of both searches is scored by dividing
    seen, fake_quant = [], QF.fake_quant
    monkeypatch.setattr(QF, "fake_quant", lambda *a, **k: seen.append(a[5:] or k) or fake_quant(*a, **k))
    q = UniformQuantizer(4, granularity=per_channel(0), divide=True)
    q.init_percentile(x)
    q.init_lp_search(x, n=4)
    assert len(seen) == len(PERCENTILES) + 4 and all(s == (True,) for s in seen), seen


def test_group_granularity_equals_repeated_channels():
    x = torch.randn(12, 5)
    g = UniformQuantizer(4, granularity=per_group(0, 3))
    g.init_minmax(x)
    c = UniformQuantizer(4, granularity=per_channel(0))
    c.set_params(g.scale.repeat_interleave(4), g.zero_point.repeat_interleave(4))
    assert torch.equal(g(x), c(x))
    assert g.scale.shape == (3,)


@pytest.mark.parametrize("init", ["init_minmax", "init_percentile", "init_lp_search"])
@pytest.mark.parametrize("gran", [None, per_channel(0)])
def test_error_shrinks_as_bits_grow(init, gran):
    x = torch.randn(16, 256)
    errors = []
    for bits in (2, 3, 4, 6, 8, 12):
        q = UniformQuantizer(bits, granularity=gran) if gran else UniformQuantizer(bits)
        getattr(q, init)(x)
        errors.append(float(((q(x) - x) ** 2).mean()))
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-5


def test_symmetric_signed_zero_point_and_range():
    x = torch.randn(1000)
    q = UniformQuantizer(4, signed=True, symmetric=True)
    q.init_minmax(x)
    assert float(q.zero_point) == 0.0
    codes = torch.round(q(x) / q.scale)
    assert codes.min() >= -8 and codes.max() <= 7


@pytest.mark.parametrize("bad", [1, 17, 0, -3, 4.0, True])
def test_bits_outside_range_name_the_field(bad):
    with pytest.raises(ValueError, match=r"bits=.*expected an integer bit-width in 2\.\.16"):
        UniformQuantizer(bad)
    with pytest.raises(ValueError, match="bits"):
        LogQuantizer(bad)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("init", ["init_minmax", "init_percentile", "init_lp_search"])
def test_nan_inf_input_rejected(bad, init):
    x = torch.randn(10, 10)
    x[3, 4] = bad
    q = UniformQuantizer(4)
    with pytest.raises(ValueError, match="NaN|Inf"):
        getattr(q, init)(x)
    assert not q.initialized


@pytest.mark.parametrize("value", [0.0, 2.5, -7.0])
@pytest.mark.parametrize("init", ["init_minmax", "init_percentile", "init_lp_search"])
def test_zero_width_ranges(value, init):
    x = torch.full((4, 9), value)
    q = UniformQuantizer(4, granularity=per_channel(0))
    getattr(q, init)(x)
    assert torch.isfinite(q.scale).all() and (q.scale > 0).all()
    out = q(x)
    assert torch.isfinite(out).all()
    if init == "init_minmax":  # min-max ranges include 0 and the value: both exact
        assert torch.allclose(out, x, atol=1e-6)


def test_quantile_rows_matches_torch_quantile():
    x = torch.randn(5, 1001)
    for q in (0.0, 0.001, 0.5, 0.999, 0.99999, 1.0):
        assert torch.allclose(QF.quantile_rows(x, q), torch.quantile(x, q, dim=1), atol=1e-6)


TORCH_214 = tuple(int(v) for v in torch.__version__.split("+")[0].split(".")[:2]) >= (2, 14)


def test_quantile_rows_torch_modes_are_the_installed_torch_quantile_bit_for_bit():
    """The mode of the installed torch gives torch.quantile's own result (the reference RepQ-ViT
    code calls it), bit for bit; the default takes q as given and differs by more than one bit."""
    mode = "torch2.14" if TORCH_214 else "torch2.13"
    g = torch.Generator().manual_seed(0)
    moved = 0
    for n in (1001, 4097, 32 * 65 * 96, 123457):
        x = torch.randn(3, n, generator=g)
        for q in (0.001, 0.0001, 0.00001, 0.5, 0.999, 0.9999, 0.99999):
            ref = torch.quantile(x, q, dim=1)
            assert torch.equal(QF.quantile_rows(x, q, mode), ref), (n, q)
            moved += int(((QF.quantile_rows(x, q) - ref).abs() > 1e-6 * ref.abs()).sum())
    assert moved > 0


def test_quantile_rows_torch2_13_is_torch_2_13_with_the_references_fallback():
    """``torch2.13``: what the reference code got from torch 2.13 (float32 ranks; over 2^24
    elements torch refused and the reference took numpy.percentile), bit for bit, from a file
    recorded with torch 2.13.0 (``tests/data/make_torch_quantile_fixture.py``). ``torch2.14``
    differs from it at every size below the cap."""
    import json
    from pathlib import Path

    import numpy as np

    rec = json.loads((Path(__file__).parent / "data" / "torch_quantile_2.13.0.json").read_text())
    assert rec["torch"].startswith("2.13.0")
    inputs, differs, checked = {}, set(), set()
    for case in rec["cases"]:
        rows, n, q = case["rows"], case["n"], case["q"]
        if n >= QF.TORCH_QUANTILE_CAP and q not in (0.999, 1.0 - 0.999):
            continue  # at the cap and past it, two quantiles are enough (kept fast)
        if (rows, n) not in inputs:
            x = np.random.default_rng(0).standard_normal((rows, n), dtype=np.float32)
            assert float(x.astype(np.float64).sum()) == rec["input_sums"][f"{rows}x{n}"]  # the same inputs
            inputs = {(rows, n): torch.from_numpy(x)}
        x = inputs[(rows, n)]
        want = torch.tensor([float.fromhex(v) for v in case["values"]])
        got = QF.quantile_rows(x, q, "torch2.13")
        assert torch.equal(got, want), (rows, n, q, got.tolist(), want.tolist())
        checked.add(n)
        if n < QF.TORCH_QUANTILE_CAP and not torch.equal(QF.quantile_rows(x, q, "torch2.14"), want):
            differs.add(n)
    assert max(checked) > QF.TORCH_QUANTILE_CAP  # the reference's numpy fallback was reached
    assert differs == {n for n in checked if n < QF.TORCH_QUANTILE_CAP}  # torch 2.14 moves every size


def test_quantile_rows_torch2_13_past_the_cap_is_numpy_percentile_row_by_row(monkeypatch):
    """Past the cap (lowered here to keep it fast) every row is ``numpy.percentile(row, q * 100)``
    cast to float32, as the reference's ``except`` branch computes it per channel."""
    import numpy as np

    x = torch.randn(4, 1001, generator=torch.Generator().manual_seed(0))
    qs = [0.0, 0.001, 0.5, 0.999, 0.99999, 1.0, *map(float, np.random.default_rng(2).uniform(0, 1, 16))]
    want = {q: torch.tensor([np.percentile(r, q * 100) for r in x.numpy()], dtype=torch.float32) for q in qs}
    monkeypatch.setattr(QF, "TORCH_QUANTILE_CAP", 1000)
    for q in qs:
        assert torch.equal(QF.quantile_rows(x, q, "torch2.13"), want[q]), q
    monkeypatch.undo()  # the real cap: the same rows take the float32 rank's values, not numpy's
    assert sum(int((QF.quantile_rows(x, q, "torch2.13") != want[q]).sum()) for q in qs) > 0


def test_quantile_rows_torch_modes_take_float32_rows_only():
    with pytest.raises(ValueError, match=r"'torch2.13' stands for torch.quantile on float32 rows; got torch.float64"):
        QF.quantile_rows(torch.randn(1, 10, dtype=torch.float64), 0.5, "torch2.13")
    assert QF.quantile_rows(torch.randn(1, 10, dtype=torch.float64), 0.5).dtype == torch.float64  # exact: any


def test_quantile_rows_rejects_an_unknown_mode():
    with pytest.raises(ValueError, match=r"quantile mode 'float32': expected one of exact, torch2.13, torch2.14"):
        QF.quantile_rows(torch.randn(1, 10), 0.5, "float32")


def _candidate_errors(x, bits, gran=None):
    """Per row (one row per-tensor): the mean squared error of each single-percentile candidate."""
    errs = {}
    for pct in PERCENTILES:
        c = UniformQuantizer(bits, granularity=gran) if gran else UniformQuantizer(bits)
        c.init_percentile(x, percentiles=(pct,))
        d = (c(x) - x) ** 2
        errs[pct] = d.mean() if gran is None else d.transpose(0, gran.axis).reshape(d.shape[gran.axis], -1).mean(1)
    return errs


@pytest.mark.parametrize("case,bits,winner", [("outliers", 4, 0.999), ("gaussian", 8, 0.99999)])
def test_percentile_search_picks_lowest_error_candidate(case, bits, winner):
    """Two data sets whose best candidates lie at opposite ends of the list, so neither keeping
    the first nor keeping the last candidate passes; the errors are distinct."""
    torch.manual_seed(0)
    x = torch.randn(20000)
    if case == "outliers":
        x[:5] = 50.0  # clipping them wins at 4 bits
    errs = {p: float(e) for p, e in _candidate_errors(x, bits).items()}
    assert len(set(errs.values())) == len(errs) and min(errs, key=errs.get) == winner, errs
    q = UniformQuantizer(bits)
    q.init_percentile(x)
    c = UniformQuantizer(bits)
    c.init_percentile(x, percentiles=(winner,))
    assert torch.equal(q.scale, c.scale)


def test_percentile_search_picks_each_rows_own_best():
    """Per channel, each row keeps its own best candidate: at 8 bits a uniform row is best at the
    middle percentile, a Gaussian row at the widest."""
    torch.manual_seed(0)
    x = torch.stack([torch.rand(20000) * 2 - 1, torch.randn(20000)])
    gran = per_channel(0)
    e = torch.stack(list(_candidate_errors(x, 8, gran).values()))  # [candidate, row]
    best = [int(i) for i in e.argmin(0)]
    assert best == [1, 2] and all(len(set(e[:, r].tolist())) == 3 for r in (0, 1)), e
    q = UniformQuantizer(8, granularity=gran)
    q.init_percentile(x)
    for row in (0, 1):
        c = UniformQuantizer(8, granularity=gran)
        c.init_percentile(x, percentiles=(PERCENTILES[best[row]],))
        assert torch.equal(q.scale.reshape(-1)[row], c.scale.reshape(-1)[row])


def test_lsq_gradients():
    x = torch.randn(64, 32)
    q = UniformQuantizer(4)
    q.init_minmax(x)  # the range of x ...
    q.learn_scale()
    assert isinstance(q.scale, torch.nn.Parameter)
    x = 2 * x  # ... and inputs reaching well past it on both sides
    xr = x.clone().requires_grad_(True)
    q(xr).pow(2).sum().backward()
    assert q.scale.grad is not None and float(q.scale.grad.abs()) > 0
    # straight-through inside the range, zero outside
    with torch.no_grad():
        lo = (q.qmin - q.zero_point) * q.scale
        hi = (q.qmax - q.zero_point) * q.scale
        y = q(x)
    inside = (x > lo + q.scale) & (x < hi - q.scale)
    assert inside.float().mean() > 0.3
    assert torch.allclose(xr.grad[inside], 2 * y[inside])
    below, above = x < lo - q.scale, x > hi + q.scale
    assert below.any() and above.any()
    outside = below | above
    assert torch.equal(xr.grad[outside], torch.zeros(int(outside.sum())))
    assert (y[below] != 0).all() and (y[above] != 0).all()  # clipped, not zero: only the gradient vanishes
    q.learn_scale(False)
    assert not isinstance(q.scale, torch.nn.Parameter)


def test_lsq_gradient_scale():
    """LSQ scales the step gradient by 1/sqrt(N * qmax)."""
    x = torch.randn(10, 40)
    q = UniformQuantizer(4)
    q.init_minmax(x)
    q.learn_scale()
    q(x).sum().backward()
    g_scaled = q.scale.grad.clone()
    s = q.scale.detach().clone().requires_grad_(True)
    QF.fake_quant(x, s, q.zero_point, q.qmin, q.qmax).sum().backward()
    assert torch.allclose(g_scaled, s.grad / math.sqrt(x.numel() * q.qmax), rtol=1e-5)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_log2_and_log_sqrt2_closed_forms(bits):
    d = torch.tensor(0.8)
    levels = 2**bits
    for q in range(levels):
        x = d * 2.0 ** (-q)  # exactly on the log2 grid
        assert torch.allclose(QF.log2_quant(x.reshape(1), d, bits), x.reshape(1))
        y = d * 2.0 ** (-q / 2)  # exactly on the log-sqrt2 grid
        expected = d * 2.0 ** (-math.ceil(q / 2)) * (1 + (q % 2) * (math.sqrt(2) - 1))
        assert torch.allclose(QF.log_sqrt2_quant(y.reshape(1), d, bits), torch.tensor([expected]), rtol=1e-6)
    zero = torch.zeros(3)
    assert (QF.log2_quant(zero, d, bits) == 0).all() and (QF.log_sqrt2_quant(zero, d, bits) == 0).all()
    tiny = torch.tensor([d * 2.0 ** (-levels - 1)])  # below the smallest code: flushed to 0
    assert float(QF.log2_quant(tiny, d, bits)) == 0.0


@pytest.mark.parametrize("base", ["sqrt2", "2"])
def test_log_quantizer_percentile_init_picks_lowest_error_candidate(base):
    """The step is the candidate quantile (computed here with torch.quantile) whose quantized
    values are closest to the input; the candidates' errors differ, so a search that kept
    another one, or none, fails."""
    attn = torch.randn(4, 3, 50, 50).softmax(-1)
    lq = LogQuantizer(4, base)
    lq.init_percentile(attn)
    fn = QF.log_sqrt2_quant if base == "sqrt2" else QF.log2_quant
    errs = {}
    for pct in (0.999, 0.9999, 0.99999):
        d = torch.quantile(attn.reshape(-1).double(), pct).float()  # float64: torch <= 2.13 takes a float32 rank for fp32
        errs[pct] = (float(((fn(attn, d, 4) - attn) ** 2).mean()), d)
    pct = min(errs, key=lambda k: errs[k][0])
    err, best = errs[pct]
    assert len({e for e, _ in errs.values()}) == 3 and pct != 0.999  # a search that keeps the first fails
    assert torch.allclose(lq.scale, best, rtol=1e-6)
    assert float(((lq(attn) - attn) ** 2).mean()) == pytest.approx(err, rel=1e-6)


def test_uninitialized_quantizer_raises():
    with pytest.raises(RuntimeError, match="before initialization"):
        UniformQuantizer(4)(torch.randn(3))


@pytest.mark.parametrize("bits,signed", [(2, False), (4, False), (4, True), (8, True)])
def test_fake_quant_with_gradients_is_torchs_learnable_fake_quant(bits, signed):
    """The recorded path (``x`` or ``scale`` requiring grad) gives the no-grad path's values and the
    gradients of torch's learnable fake-quant kernel (grad factor 1), also for the many codes at
    exactly qmin and qmax, where ``torch.clamp``'s own gradient is 0 on torch 2.14."""
    g = torch.Generator().manual_seed(bits)
    qmin, qmax = QF.qrange(bits, signed)
    scale = torch.tensor([4.0 / (qmax - qmin)])
    zp = torch.tensor([float((qmin + qmax + 1) // 2 if not signed else 0)])
    ends = torch.tensor([qmin - 2, qmin - 1, qmin, qmax, qmax + 1, qmax + 2]).repeat(20)  # codes at and past the ends
    k = torch.cat([ends, torch.randint(qmin - 3, qmax + 4, (300,), generator=g)]).float()
    x = ((k - zp + torch.rand(k.shape, generator=g) * 0.8 - 0.4) * scale).view(6, -1)
    codes = torch.round(x / scale) + zp
    assert int((codes == qmin).sum()) > 0 and int((codes == qmax).sum()) > 0 and int((codes < qmin).sum()) > 0
    dy = torch.randn(x.shape, generator=g)
    got = []
    for fn in (lambda a, s: QF.fake_quant(a, s, zp, qmin, qmax),
               lambda a, s: torch._fake_quantize_learnable_per_tensor_affine(a, s, zp, qmin, qmax, 1.0)):
        a, s = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
        out = fn(a, s)
        out.backward(dy)
        got.append((out.detach(), a.grad, s.grad))
    (out, gx, gs), (ref, gx_ref, gs_ref) = got
    assert torch.equal(out, QF.fake_quant(x, scale, zp, qmin, qmax)) and torch.equal(out, ref)
    assert torch.equal(gx, gx_ref)
    assert torch.allclose(gs, gs_ref, rtol=1e-4)
    fixed = x.clone().requires_grad_(True)  # a fixed step: the input still gets its gradient
    QF.fake_quant(fixed, scale, zp, qmin, qmax).backward(dy)
    assert torch.equal(fixed.grad, gx_ref)
    with pytest.raises(ValueError, match="zero_point requires grad; expected a fixed zero point"):
        QF.fake_quant(x.requires_grad_(True), scale, zp.clone().requires_grad_(True), qmin, qmax)


@pytest.mark.parametrize("axis", [0, 1])
def test_fake_quant_with_gradients_per_channel_is_torchs_learnable_fake_quant(axis):
    """A per-channel step (broadcast view) gets each channel's own LSQ gradient, summed over that
    channel only, as torch's per-channel learnable kernel gives it; the input's gradient too. A
    0-dim step gets the sum over all elements."""
    g = torch.Generator().manual_seed(axis)
    x = torch.randn(5, 7, 40, generator=g) * 2
    qmin, qmax = QF.qrange(4, signed=True)
    c = x.shape[axis]
    scale = torch.rand(c, generator=g) * 0.3 + 0.1  # channels of different ranges: some clip, some not
    zp = torch.randint(-2, 3, (c,), generator=g).float()
    shape = [1] * x.dim()
    shape[axis] = c
    dy = torch.randn(x.shape, generator=g)
    a, s = x.clone().requires_grad_(True), scale.clone().view(shape).requires_grad_(True)
    out = QF.fake_quant(a, s, zp.view(shape), qmin, qmax)
    out.backward(dy)
    b, s_ref = x.clone().requires_grad_(True), scale.clone().requires_grad_(True)
    ref = torch._fake_quantize_learnable_per_channel_affine(b, s_ref, zp, axis, qmin, qmax, 1.0)
    ref.backward(dy)
    assert torch.equal(out.detach(), ref.detach())
    assert s.grad.shape == s.shape and torch.equal(a.grad, b.grad)
    assert torch.allclose(s.grad.view(-1), s_ref.grad, rtol=1e-4, atol=1e-5)
    assert len(set(s_ref.grad.tolist())) == c  # channels' gradients differ: a sum over all fails
    s0 = scale[0].clone().requires_grad_(True)  # 0-dim step
    QF.fake_quant(x, s0, zp[0], qmin, qmax).backward(dy)
    s1 = scale[:1].clone().requires_grad_(True)
    torch._fake_quantize_learnable_per_tensor_affine(x, s1, zp[:1], qmin, qmax, 1.0).backward(dy)
    assert s0.grad.shape == () and torch.allclose(s0.grad, s1.grad[0], rtol=1e-4)
