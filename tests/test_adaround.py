"""AdaRound weight quantizer: soft weight at init, hard rounding on the grid, regularizer."""

import pytest
import torch

from mgrq.quant.adaround import AdaRoundQuantizer, inverse_rectified_sigmoid, rectified_sigmoid
from mgrq.quant.quantizers import UniformQuantizer, per_channel


def _quantizer(w: torch.Tensor, bits: int = 4, how: str = "minmax") -> UniformQuantizer:
    q = UniformQuantizer(bits, granularity=per_channel(0))
    q.init_minmax(w) if how == "minmax" else q.init_lp_search(w)
    return q


def _range(q: UniformQuantizer, w: torch.Tensor):
    s, z = q._view(q.scale, w), q._view(q.zero_point, w)
    return s, (q.qmin - z) * s, (q.qmax - z) * s


@pytest.mark.parametrize("shape,how", [((24, 16), "minmax"), ((8, 3, 4, 4), "minmax"), ((16, 32), "lp")])
def test_soft_weight_equals_weight_at_init(shape, how):
    w = torch.randn(shape) * 3
    q = _quantizer(w, how=how)
    ar = AdaRoundQuantizer.from_uniform(q, w)
    soft = ar(w)
    step, lo, hi = _range(q, w)
    inside = (w >= lo) & (w <= hi)
    assert inside.float().mean() > 0.9
    assert float(((soft.detach() - w).abs() / step)[inside].max()) < 1e-5  # equal up to float round-off
    # weights outside the clipping range start at the range's end
    assert torch.allclose(soft[~inside], torch.maximum(torch.minimum(w, hi), lo)[~inside], atol=1e-6)
    assert not ar.hard and ar.alpha is not None and ar.alpha.requires_grad


def test_hard_rounding_lies_on_the_grid_and_starts_at_nearest():
    torch.manual_seed(1)
    w = torch.randn(32, 48)
    q = _quantizer(w, bits=3)
    ar = AdaRoundQuantizer.from_uniform(q, w)
    with torch.no_grad():
        ar.alpha.add_(torch.randn_like(ar.alpha))  # some learned rounding
    ar.harden()
    assert ar.hard and ar.alpha is None
    hard = ar(w)
    s, z = q._view(q.scale, w), q._view(q.zero_point, w)
    codes = hard / s + z
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.round().min() >= q.qmin and codes.round().max() <= q.qmax
    # every weight moved to the grid point just below or just above it
    assert bool(((hard - w).abs() <= s * (1 + 1e-5)).all())

    # without training, hard rounding is round-to-nearest
    ar0 = AdaRoundQuantizer.from_uniform(q, w)
    ar0.harden()
    nearest = q(w)
    assert (ar0(w) != nearest).float().mean() < 1e-3  # only exact .5 ties may differ


def test_round_loss_and_gradient():
    w = torch.randn(8, 8)
    ar = AdaRoundQuantizer.from_uniform(_quantizer(w), w)
    h = rectified_sigmoid(ar.alpha)
    beta = torch.tensor(7.0)
    expected = (1 - (2 * h - 1).abs().pow(7.0)).sum()
    assert torch.allclose(ar.round_loss(beta), expected)
    ar.round_loss(beta).backward()
    assert ar.alpha.grad is not None and ar.alpha.grad.abs().sum() > 0


def test_rectified_sigmoid_values_and_saturation():
    """h(V) = clamp(1.2 sigmoid(V) - 0.1, 0, 1) (zeta = 1.1, gamma = -0.1, Nagel et al. 2020)."""
    h = rectified_sigmoid
    assert float(h(torch.tensor(0.0))) == pytest.approx(0.5, abs=1e-7)
    # sigmoid(-ln 3) = 1/4 -> 1.2/4 - 0.1 = 0.2; sigmoid(ln 3) = 3/4 -> 0.8
    ln3 = torch.log(torch.tensor(3.0))
    assert torch.allclose(h(torch.stack([-ln3, ln3])), torch.tensor([0.2, 0.8]), atol=1e-6)
    # the stretch reaches exactly 0 / 1 once sigmoid(V) <= 1/12 / >= 11/12, i.e. |V| >= ln 11 ~ 2.398,
    # where a plain sigmoid is still far from 0 and 1
    big = torch.tensor([-50.0, -3.0, -2.45, 2.45, 3.0, 50.0])
    assert torch.equal(h(big), torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1.0]))
    inner = torch.tensor([-2.3, -1.0, 1.0, 2.3])
    hv = h(inner)
    assert ((hv > 0) & (hv < 1)).all() and (torch.diff(hv) > 0).all()
    assert torch.allclose(hv, 1.2 * torch.sigmoid(inner) - 0.1, atol=1e-6)
    # the inverse used to initialise V
    rest = torch.tensor([0.0, 0.1, 0.5, 0.9, 0.99])
    assert torch.allclose(h(inverse_rectified_sigmoid(rest)), rest, atol=1e-6)


def test_shape_check():
    w = torch.randn(4, 4)
    ar = AdaRoundQuantizer.from_uniform(_quantizer(w), w)
    with pytest.raises(ValueError, match="shape"):
        ar(torch.randn(4, 5))
