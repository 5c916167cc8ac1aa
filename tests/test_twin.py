"""Twin-uniform quantizers (PTQ4ViT) against their definitions, on hand-computed cases."""

import pytest
import torch

from mgrq.quant.twin import (
    GELU_MIN,
    PostGeluTwinQuantizer,
    SoftmaxTwinQuantizer,
    post_gelu_twin_quant,
    softmax_twin_quant,
)


def test_post_gelu_hand_computed():
    # bits 4: codes -8..0 on the negative step 0.16997/8, 0..7 on the positive step 0.5
    neg = GELU_MIN / 8
    x = torch.tensor([-0.2, -0.01, -0.015, 0.0, 0.2, 0.3, 3.4, 100.0])
    expected = torch.tensor([-8 * neg, 0.0, -1 * neg, 0.0, 0.0, 0.5, 3.5, 3.5])
    q = PostGeluTwinQuantizer(4)
    q.set_scale(0.5)
    assert q.neg_scale == pytest.approx(neg)
    torch.testing.assert_close(q(x), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(post_gelu_twin_quant(x, 0.5, neg, 4), expected, rtol=0, atol=1e-7)


def test_post_gelu_sum_equals_select():
    """The reference adds the two ranges' outputs; for post-GELU that is the same as selecting
    by sign (the other range always rounds a value to 0)."""
    x = torch.randn(10_000) * 2
    half, s, neg = 8, torch.tensor(0.37), GELU_MIN / 8
    pos_part = torch.clamp(torch.round(x / s), 0, half - 1) * s
    neg_part = torch.clamp(torch.round(x / neg), -half, 0) * neg
    torch.testing.assert_close(post_gelu_twin_quant(x, s, neg, 4), pos_part + neg_part, rtol=0, atol=0)


def test_softmax_twin_hand_computed():
    # bits 4: 8 codes per range; split 0.25: low step 0.25/7, high step 1/7
    lo, hi = 0.25 / 7, 1 / 7
    x = torch.tensor([0.0, 0.01, 0.1, 0.24, 0.25, 0.3, 0.6, 1.0])
    select = torch.tensor([0.0, 0.0, 3 * lo, 7 * lo, 2 * hi, 2 * hi, 4 * hi, 1.0])
    # as coded: x < split gets Q_high(split) = 2/7 added, x >= split gets split (0.25) added
    summed = torch.tensor([2 * hi, 2 * hi, 3 * lo + 2 * hi, 7 * lo + 2 * hi,
                           2 * hi + 0.25, 2 * hi + 0.25, 4 * hi + 0.25, 1.25])
    torch.testing.assert_close(softmax_twin_quant(x, torch.tensor(0.25), 4, "select"), select, rtol=0, atol=1e-7)
    torch.testing.assert_close(softmax_twin_quant(x, torch.tensor(0.25), 4, "sum"), summed, rtol=0, atol=1e-7)
    q = SoftmaxTwinQuantizer(4, "sum")
    q.set_split(0.25)
    torch.testing.assert_close(q(x), summed, rtol=0, atol=1e-7)


def test_softmax_twin_select_is_not_monotone_when_the_split_is_under_half_a_high_step():
    """The paper's select mode, kept as defined: with split < 0.5 / (2^(b-1) - 1) a value just
    below the split rounds up to the split on the fine range, one just above it to 0 on the coarse
    one. bits 3: 4 codes per range, high step 1/3; split 0.1, low step 0.1/3."""
    x = torch.tensor([0.099, 0.101, 0.17, 0.34])
    expected = torch.tensor([0.1, 0.0, 1 / 3, 1 / 3])
    q = softmax_twin_quant(x, torch.tensor(0.1), 3, "select")
    torch.testing.assert_close(q, expected, rtol=0, atol=1e-7)
    assert q[1] < q[0]


def test_softmax_twin_small_split_sum_matches_select_below_split():
    """With split < 0.5 / (2^(b-1) - 1) the high range rounds the split to 0: only values above
    the split carry the as-coded bias."""
    x = torch.rand(5000) ** 4
    split = torch.tensor(2.0**-5)
    sel, summed = softmax_twin_quant(x, split, 4, "select"), softmax_twin_quant(x, split, 4, "sum")
    below = x < split
    torch.testing.assert_close(summed[below], sel[below], rtol=0, atol=0)
    torch.testing.assert_close(summed[~below], sel[~below] + split, rtol=0, atol=1e-7)


def test_twin_quantizers_refuse_bad_use():
    with pytest.raises(RuntimeError, match="before set_split"):
        SoftmaxTwinQuantizer(4)(torch.rand(3))
    with pytest.raises(RuntimeError, match="before set_scale"):
        PostGeluTwinQuantizer(4)(torch.rand(3))
    with pytest.raises(ValueError, match="split"):
        SoftmaxTwinQuantizer(4).set_split(0.0)
    with pytest.raises(ValueError, match="mode"):
        SoftmaxTwinQuantizer(4, "average")
    with pytest.raises(ValueError, match="scale"):
        PostGeluTwinQuantizer(4).set_scale(-1.0)
