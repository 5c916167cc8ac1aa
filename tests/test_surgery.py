"""Model surgery: with every quantizer off the wrapped model computes what timm computes."""

import functools

import pytest
import timm
import torch
from conftest import set_fused_attn

from mgrq import zoo
from mgrq.errors import ConfigError
from mgrq.quant import point as P
from mgrq.quant.quantizers import UniformQuantizer
from mgrq.surgery import FP, LayerPolicy, quantize_model

TINY = ["tiny_vit", "tiny_deit", "tiny_swin"]
# Real ImageNet architectures (random weights, one 224px image) for each family.
REAL = ["deit_tiny_patch16_224", "deit_tiny_distilled_patch16_224", "swin_tiny_patch4_window7_224"]


def _tiny(name):
    return zoo.ZOO[name].build().eval(), torch.randn(3, 1, 32, 32)


@functools.cache
def _real(name):  # built once, shared by the fused and unfused cases
    return timm.create_model(name, pretrained=False).eval(), torch.randn(1, 3, 224, 224)


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
@pytest.mark.parametrize("case", [("tiny", n) for n in TINY] + [("real", n) for n in REAL], ids=lambda c: c[1])
@torch.no_grad()
def test_identity_quantization_off(case, fused):
    kind, name = case
    model, x = _tiny(name) if kind == "tiny" else _real(name)
    set_fused_attn(model, fused)
    ref = model(x)
    qm = quantize_model(model, LayerPolicy(4, 4))
    assert all(not p.enabled for p in qm.points())
    out = qm(x)
    assert (out - ref).abs().max() < 1e-5
    # chaining the reconstruction units reproduces the model
    u = x
    for unit in qm.units():
        u = unit(u)
    assert (u - ref).abs().max() < 1e-5


@torch.no_grad()
def test_identity_after_enabling_and_disabling():
    model, x = _tiny("tiny_vit")
    ref = model(x)
    qm = quantize_model(model, LayerPolicy(4, 4))
    for p in qm.points():
        q = UniformQuantizer(4)
        q.init_minmax(torch.randn(10) * 3)
        p.quantizer = q
    qm.set_quant(True, True)
    assert (qm(x) - ref).abs().max() > 1e-3  # quantization really changes the output
    with qm.quant_off():
        assert (qm(x) - ref).abs().max() < 1e-5
    assert all(p.enabled for p in qm.points())  # restored
    qm.set_quant(False, False)
    assert (qm(x) - ref).abs().max() < 1e-5


def test_points_placement_vit():
    model, _ = _tiny("tiny_deit")
    qm = quantize_model(model, LayerPolicy(4, 4))
    depth = len(model.blocks)
    by_tag = {t: qm.points(tag=t) for t in P.TAGS}
    assert len(by_tag[P.POST_SOFTMAX]) == depth
    assert len(by_tag[P.POST_GELU]) == depth
    assert len(by_tag[P.POST_LN]) == 2 * depth
    assert len(by_tag[P.Q]) == len(by_tag[P.K]) == len(by_tag[P.V]) == depth
    assert [p.name for p in by_tag[P.IMAGE]] == ["patch_embed.proj.act_q"]
    assert {p.name for p in by_tag[P.HEAD_IN]} == {"head.act_q", "head_dist.act_q"}  # distilled
    # every Linear (4 per block + 2 heads) and the conv have a weight point
    assert len(qm.points(kind="weight")) == 4 * depth + 2 + 1
    assert qm.point("blocks.0.attn.matmul2.a_q").tag == P.POST_SOFTMAX
    assert qm.point("blocks.0.mlp.fc2.act_q").tag == P.POST_GELU
    assert ("blocks.0.norm1", "blocks.0.attn.qkv") in qm.ln_linear_pairs
    assert ("blocks.0.norm2", "blocks.0.mlp.fc1") in qm.ln_linear_pairs
    assert len(qm.ln_linear_pairs) == 2 * depth  # the final norm -> head pair is not one


def test_points_placement_swin():
    model, _ = _tiny("tiny_swin")
    qm = quantize_model(model, LayerPolicy(4, 4))
    merges = [p for p in qm.points(tag=P.POST_LN) if p.name.endswith("reduction.act_q")]
    assert len(merges) == 2  # two PatchMerging layers (stages 2 and 3)
    assert any(a.endswith("downsample.norm") and b.endswith("downsample.reduction") for a, b in qm.ln_linear_pairs)
    kinds = [u.kind for u in qm.units()]
    assert kinds[0] == "embed" and kinds[-1] == "head" and kinds.count("merge") == 2
    assert kinds.count("block") == 6


def test_units_own_their_points():
    model, _ = _tiny("tiny_vit")
    qm = quantize_model(model, LayerPolicy(4, 4))
    units = qm.units()
    owned = [p.name for u in units for p in u.points()]
    assert sorted(owned) == sorted(p.name for p in qm.points())  # each point in exactly one unit
    assert len(owned) == len(set(owned))


def test_layer_policy_bits_and_overrides():
    model, _ = _tiny("tiny_vit")
    policy = LayerPolicy(4, 3, overrides=((r"^head\.", 8), (r"blocks\.0\.attn\.qkv\.weight", FP)))
    qm = quantize_model(model, policy)
    assert qm.point("head.weight_q").bits == 8 and qm.point("head.act_q").bits == 8
    assert qm.point("blocks.0.attn.qkv.weight_q").bits is None
    assert qm.point("blocks.1.attn.qkv.weight_q").bits == 4
    assert qm.point("blocks.1.attn.qkv.act_q").bits == 3
    assert qm.point("patch_embed.proj.act_q").bits == 8  # the image input
    assert qm.point("patch_embed.proj.weight_q").bits == 4
    assert "blocks.0.attn.qkv.weight_q" not in {p.name for p in qm.active_points()}


@pytest.mark.parametrize("kwargs,match", [
    (dict(w_bits=1, a_bits=4), "w_bits=1"),
    (dict(w_bits=4, a_bits=17), "a_bits=17"),
    (dict(w_bits=4, a_bits=4, overrides=(("(unclosed", 8),)), "not a valid regular expression"),
    (dict(w_bits=4, a_bits=4, overrides=(("head", 1),)), "'head'=1: expected an integer bit-width in 2..16"),
])
def test_layer_policy_rejects_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerPolicy(**kwargs)


def test_unsupported_model_lists_families():
    model = timm.create_model("resnet18", pretrained=False, num_classes=10)
    with pytest.raises(ConfigError, match="supported families are .*VisionTransformer.*SwinTransformer"):
        quantize_model(model, LayerPolicy(4, 4))


def test_original_model_untouched():
    model, x = _tiny("tiny_vit")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    qm = quantize_model(model, LayerPolicy(4, 4))
    for p in qm.points(kind="weight"):
        p.quantizer = UniformQuantizer(4)
        p.quantizer.init_minmax(torch.randn(5))
    assert type(model.blocks[0].attn).__name__ == "Attention"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
