"""RepQ-ViT: reparameterization exactness, quantizer placement, log-sqrt2 closed form."""

import math

import pytest
import torch

from baselines.repq_vit import RepQViTConfig, quantize
from mgrq import zoo
from mgrq.config import build_config
from mgrq.data import Calibration
from mgrq.errors import ConfigError
from mgrq.methods import RunContext
from mgrq.quant import point as P
from mgrq.quant.quantizers import LogQuantizer, UniformQuantizer
from mgrq.surgery import LayerPolicy, quantize_model


def _calib(n=8):
    return Calibration(torch.randn(n, 1, 32, 32), torch.zeros(n, dtype=torch.long), [str(i) for i in range(n)], "x", 0)


def _run(name, cfg=None, bits=4):
    torch.manual_seed(0)
    model = zoo.ZOO[name].build().eval()
    qm = quantize_model(model, LayerPolicy(bits, bits))
    info = quantize(qm, _calib(), cfg or RepQViTConfig(), RunContext(device=torch.device("cpu"), progress=False))
    return model, qm, info


@pytest.mark.parametrize("name", ["tiny_vit", "tiny_deit", "tiny_swin"])
@torch.no_grad()
def test_reparameterization_is_exact_with_quantization_off(name):
    model, qm, info = _run(name)
    x = torch.randn(4, 1, 32, 32)
    with qm.quant_off():
        out = qm(x)
    torch.testing.assert_close(out, model(x), rtol=0, atol=1e-5)
    # the folding really happened: LayerNorm affines changed, the input quantizers are
    # per-tensor with a fractional zero point
    assert len(info["reparameterized"]) == len(qm.ln_linear_pairs) > 0
    norm_name, lin_name = qm.ln_linear_pairs[0]
    assert not torch.allclose(qm.submodule(norm_name).weight, model.get_submodule(norm_name).weight)
    zps = [float(qm.submodule(lin).act_q.quantizer.zero_point) for _, lin in qm.ln_linear_pairs]
    assert all(qm.submodule(lin).act_q.quantizer.scale.dim() == 0 for _, lin in qm.ln_linear_pairs)
    assert any(z != round(z) for z in zps)
    if name == "tiny_swin":
        assert any(lin.endswith("reduction") for _, lin in qm.ln_linear_pairs)
    assert "head" not in " ".join(lin for _, lin in qm.ln_linear_pairs)


@torch.no_grad()
def test_quantizer_placement_and_reinitialized_weights():
    _, qm, _ = _run("tiny_vit")
    for p in qm.active_points():
        assert p.enabled and p.quantizer is not None, p.name
        q = p.quantizer
        if p.kind == "weight":
            assert isinstance(q, UniformQuantizer) and q.granularity.kind == "channel" and not q.symmetric
        elif p.tag == P.POST_SOFTMAX:
            assert isinstance(q, LogQuantizer) and q.base == "sqrt2" and q.bits == 4
        elif p.tag == P.IMAGE:
            assert q.bits == 8 and q.granularity.kind == "tensor"
        else:
            assert q.granularity.kind == "tensor"
    # the reparameterized Linear's weight quantizer was re-initialized on the new weights
    lin = qm.submodule("blocks.0.attn.qkv")
    fresh = UniformQuantizer(4, granularity=lin.weight_q.quantizer.granularity)
    fresh.init_percentile(lin.weight)
    torch.testing.assert_close(lin.weight_q.quantizer.scale, fresh.scale, rtol=0, atol=0)


@pytest.fixture(scope="module")
def exact_tiny_vit():
    with torch.no_grad():
        return _run("tiny_vit")[1]


@torch.no_grad()
@pytest.mark.parametrize("mode", ["torch2.13", "torch2.14"])
def test_quantile_modes_reach_every_search(mode, exact_tiny_vit):
    """``quantile=torch2.13`` / ``torch2.14``: the searches take torch.quantile's quantiles (the
    reference's, on its torch or today's); the re-initialized weight quantizer equals a fresh
    search with them, not the default's, and the post-softmax steps move too."""
    _, qm, _ = _run("tiny_vit", RepQViTConfig(quantile=mode))
    lin = qm.submodule("blocks.0.attn.qkv")
    steps = {}
    for m in (mode, "exact"):
        fresh = UniformQuantizer(4, granularity=lin.weight_q.quantizer.granularity)
        fresh.init_percentile(lin.weight, quantile=m)
        steps[m] = fresh.scale
    assert torch.equal(lin.weight_q.quantizer.scale, steps[mode])
    assert not torch.equal(steps[mode], steps["exact"])
    soft = [p.name for p in qm.points() if p.tag == P.POST_SOFTMAX]
    assert any(not torch.equal(qm.point(n).quantizer.scale, exact_tiny_vit.point(n).quantizer.scale) for n in soft)


@torch.no_grad()
def test_division_divide_reaches_every_uniform_quantizer(exact_tiny_vit):
    """``division=divide``: every uniform quantizer divides (the reparameterized inputs and the
    re-initialized weight quantizers too); the default's none."""
    _, qm, info = _run("tiny_vit", RepQViTConfig(division="divide"))
    assert info["reparameterized"]
    for model, divide in ((qm, True), (exact_tiny_vit, False)):
        uniform = [p.quantizer for p in model.active_points() if isinstance(p.quantizer, UniformQuantizer)]
        assert len(uniform) > len(info["reparameterized"])
        assert all(q.divide is divide and (not q._fast if divide else True) for q in uniform)
    _, lin = qm.ln_linear_pairs[0]
    assert qm.submodule(lin).act_q.quantizer.divide


@torch.no_grad()
def test_without_reparameterization_post_ln_stays_per_channel():
    _, qm, info = _run("tiny_vit", RepQViTConfig(reparameterize=False))
    assert info["reparameterized"] == []
    assert qm.submodule("blocks.0.attn.qkv").act_q.quantizer.scale.shape == (96,)


@pytest.mark.parametrize("bits", [3, 4, 6])
def test_log_sqrt2_matches_closed_form_on_every_code(bits):
    d = torch.tensor(0.8)
    codes = torch.arange(2**bits, dtype=torch.float64)
    closed = 0.8 * 2.0 ** (-torch.ceil(codes / 2)) * (1 + (codes % 2) * (math.sqrt(2) - 1))
    exact = (0.8 * 2.0 ** (-codes / 2)).float()  # each code's value ...
    q = LogQuantizer(bits, "sqrt2")
    q.set_scale(d)
    torch.testing.assert_close(q(exact).double(), closed, rtol=1e-6, atol=0)
    # ... and values a little off a code's value round to it in the log domain
    torch.testing.assert_close(q(exact * 2.0**0.2).double(), closed, rtol=1e-6, atol=0)
    torch.testing.assert_close(q(exact * 2.0**-0.2).double(), closed, rtol=1e-6, atol=0)
    # below the last code (unclamped code >= 2^b) and exact zeros quantize to 0
    tiny = torch.tensor([0.0, 0.8 * 2.0 ** (-(2**bits) / 2 - 0.3)])
    assert torch.equal(q(tiny), torch.zeros(2))


def test_config_is_validated():
    with pytest.raises(ConfigError, match="softmax_quantizer"):
        build_config(RepQViTConfig, {"softmax_quantizer": "sqrt3"})
    assert build_config(RepQViTConfig, {"reparameterize": "false"}).reparameterize is False
    with pytest.raises(ConfigError, match=r"quantile='float32': expected one of exact, torch2.13, torch2.14"):
        build_config(RepQViTConfig, {"quantile": "float32"})
    with pytest.raises(ConfigError, match=r"quantile='torch': renamed; 'torch2.14' is what it computed"):
        build_config(RepQViTConfig, {"quantile": "torch"})
    with pytest.raises(ConfigError, match=r"division='floor': expected one of reciprocal, divide"):
        build_config(RepQViTConfig, {"division": "floor"})
