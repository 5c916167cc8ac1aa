"""Model surgery: a timm ViT / DeiT / Swin -> a :class:`QuantModel` with named quantization
points, a layer policy that assigns bit-widths, and the model's reconstruction units.

Quantization placement (RepQ-ViT's convention, the project default): the input and weight of
every Linear (qkv, proj, fc1, fc2, head, Swin reduction), both operands of both attention
matmuls, and the patch-embedding conv (weight at the low bit-width, image input at 8 bits).
LayerNorm, softmax, GELU, residual adds and embeddings stay in full precision.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from mgrq.errors import ConfigError, compile_regex
from mgrq.quant import point as P
from mgrq.quant.functional import check_bits
from mgrq.surgery.layers import (
    QuantAttention,
    QuantConv2d,
    QuantLinear,
    QuantWindowAttention,
)

SUPPORTED = "timm VisionTransformer (ViT, DeiT), VisionTransformerDistilled (DeiT-distilled), SwinTransformer (v1)"
FP = "fp"  # layer-policy value: keep this point in full precision


@dataclass(frozen=True)
class LayerPolicy:
    """Bit-widths per point: ``w_bits`` for weights, ``a_bits`` for activations, ``image_bits``
    for the image input, and ``overrides``: ``(regex, bits or "fp")`` pairs matched with
    ``re.search`` against point names in order (first match wins), e.g.
    ``(("^head\\.", 8),)`` keeps the classifier at 8 bits."""

    w_bits: int
    a_bits: int
    image_bits: int = 8
    overrides: tuple[tuple[str, int | str], ...] = ()

    def __post_init__(self) -> None:
        check_bits(self.w_bits, "w_bits")
        check_bits(self.a_bits, "a_bits")
        check_bits(self.image_bits, "image_bits")
        for pattern, bits in self.overrides:
            compile_regex(pattern, "layer policy override", "a regex searched in layer names")
            if bits != FP:
                try:
                    check_bits(bits, f"layer policy override '{pattern}'")  # type: ignore[arg-type]
                except ConfigError as e:
                    raise ConfigError(f"{e} or 'fp' (keep full precision)") from None

    def bits_for(self, p: P.QuantPoint) -> int | None:
        """Bit-width for a point, or None to keep it in full precision."""
        for pattern, bits in self.overrides:
            if re.search(pattern, p.name):
                return None if bits == FP else int(bits)
        if p.kind == "weight":
            return self.w_bits
        return self.image_bits if p.tag == P.IMAGE else self.a_bits


@dataclass
class Unit:
    """A reconstruction unit: ``fn`` maps the previous unit's output to this unit's output, and
    chaining every unit's ``fn`` reproduces the model's forward exactly."""

    name: str
    kind: str  # "embed" | "block" | "merge" | "head"
    modules: list[nn.Module]
    fn: Callable[[torch.Tensor], torch.Tensor]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)

    def points(self) -> list[P.QuantPoint]:
        seen: dict[int, P.QuantPoint] = {}
        for m in self.modules:
            for sub in m.modules():
                if isinstance(sub, P.QuantPoint):
                    seen.setdefault(id(sub), sub)
        return list(seen.values())

    def parameters(self) -> Iterator[nn.Parameter]:
        seen: set[int] = set()
        for m in self.modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    yield p


class QuantModel(nn.Module):
    """A timm model with quantization points. ``forward(x [B, C, H, W]) -> logits [B, classes]``.

    Attributes:
        model: the (copied) timm model, with quantizable layers in place.
        family: ``"vit"`` (ViT/DeiT, incl. distilled) or ``"swin"``.
        policy: the :class:`LayerPolicy` that set each point's ``bits``.
        ln_linear_pairs: ``(norm fqn, linear fqn)`` pairs where a LayerNorm feeds a Linear
            directly (norm1->qkv, norm2->fc1, Swin norm->reduction): RepQ-ViT's
            reparameterization sites. The final norm -> head pair is not among them.
    """

    def __init__(self, model: nn.Module, family: str, policy: LayerPolicy, pairs: list[tuple[str, str]]):
        super().__init__()
        self.model = model
        self.family = family
        self.policy = policy
        self.ln_linear_pairs = pairs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def points(self, kind: str | None = None, tag: str | None = None) -> list[P.QuantPoint]:
        """Quantization points in forward order, optionally filtered by kind and tag."""
        return [
            m for m in self.model.modules()
            if isinstance(m, P.QuantPoint)
            and (kind is None or m.kind == kind)
            and (tag is None or m.tag == tag)
        ]

    def point(self, name: str) -> P.QuantPoint:
        for p in self.points():
            if p.name == name:
                return p
        raise KeyError(name)

    def active_points(self) -> list[P.QuantPoint]:
        """Points the policy quantizes (bits not None)."""
        return [p for p in self.points() if p.bits is not None]

    def submodule(self, fqn: str) -> nn.Module:
        return self.model.get_submodule(fqn)

    def set_quant(self, weights: bool | None = None, acts: bool | None = None) -> None:
        """Switch weight and/or activation quantization on or off (points without a quantizer
        or kept in full precision by the policy stay off)."""
        for p in self.points():
            flag = weights if p.kind == "weight" else acts
            if flag is not None:
                p.enabled = bool(flag) and p.quantizer is not None and p.bits is not None

    @contextmanager
    def quant_off(self) -> Iterator[QuantModel]:
        """Temporarily run the model in full precision; restores every point's switch."""
        saved = [(p, p.enabled) for p in self.points()]
        try:
            for p, _ in saved:
                p.enabled = False
            yield self
        finally:
            for p, state in saved:
                p.enabled = state

    def units(self) -> list[Unit]:
        return build_units(self)


def family_of(model: nn.Module) -> str:
    from timm.models.swin_transformer import SwinTransformer
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, SwinTransformer):
        return "swin"
    raise ConfigError(f"unsupported model {type(model).__name__}: supported families are {SUPPORTED}")


def _act_tag(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    if leaf in ("qkv", "fc1", "reduction"):
        return P.POST_LN
    if leaf == "fc2":
        return P.POST_GELU
    if leaf == "proj" and ".attn." in f".{name}":
        return P.ATTN_OUT
    if name.startswith("head"):
        return P.HEAD_IN
    return P.LINEAR_IN


def _replace(root: nn.Module, fqn: str, new: nn.Module) -> None:
    parent_name, _, leaf = fqn.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def quantize_model(model: nn.Module, policy: LayerPolicy) -> QuantModel:
    """Copy ``model`` and make it quantizable. Every point starts disabled without a quantizer:
    the result computes exactly what ``model`` does until a method sets quantizers."""
    from timm.layers import Attention
    from timm.models.swin_transformer import WindowAttention

    family = family_of(model)
    model = copy.deepcopy(model).eval()
    for name, m in list(model.named_modules()):
        if type(m) is Attention:
            _replace(model, name, QuantAttention(m))
        elif type(m) is WindowAttention:
            _replace(model, name, QuantWindowAttention(m))
        elif isinstance(m, nn.Module) and "attn" in name.rsplit(".", 1)[-1] and hasattr(m, "qkv") and not isinstance(m, (QuantAttention, QuantWindowAttention)):
            raise ConfigError(f"unsupported attention {type(m).__name__} at {name}: supported families are {SUPPORTED}")
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Linear) and not isinstance(m, QuantLinear):
            _replace(model, name, QuantLinear.wrap(m, _act_tag(name)))
    conv = model.patch_embed.proj
    if not isinstance(conv, nn.Conv2d):
        raise ConfigError(f"unsupported patch embedding {type(conv).__name__}: expected a Conv2d")
    model.patch_embed.proj = QuantConv2d.wrap(conv)

    pairs: list[tuple[str, str]] = []
    for name, m in model.named_modules():
        pre = f"{name}." if name else ""
        if hasattr(m, "norm1") and hasattr(m, "attn") and hasattr(m.attn, "qkv"):
            pairs.append((f"{pre}norm1", f"{pre}attn.qkv"))
        if hasattr(m, "norm2") and hasattr(m, "mlp") and hasattr(m.mlp, "fc1"):
            pairs.append((f"{pre}norm2", f"{pre}mlp.fc1"))
        if hasattr(m, "norm") and hasattr(m, "reduction"):
            pairs.append((f"{pre}norm", f"{pre}reduction"))
    for name, m in model.named_modules():
        if isinstance(m, P.QuantPoint):
            m.name = name
            m.bits = policy.bits_for(m)  # type: ignore[assignment]
    return QuantModel(model, family, policy, pairs).eval()  # the copied timm model is in eval mode


def point_names(qm: QuantModel) -> list[str]:
    """The names of a quantizable model's points, in module order (what overrides match)."""
    return [n for n, m in qm.model.named_modules() if isinstance(m, P.QuantPoint)]


def unmatched_overrides(overrides: tuple[tuple[str, int | str], ...] | list, names: list[str]) -> list[str]:
    """The override patterns that ``re.search`` finds in none of ``names``."""
    return [pattern for pattern, _ in overrides if not any(re.search(pattern, n) for n in names)]


def build_units(qm: QuantModel) -> list[Unit]:
    """Reconstruction units in forward order: the patch embedding (with position embedding and
    prefix tokens), each ViT ``Block`` / each Swin ``PatchMerging`` and ``SwinTransformerBlock``,
    and the head (final norm, pooling, classifier)."""
    m = qm.model
    units: list[Unit] = []
    if qm.family == "vit":
        pre = [m.patch_embed] + [getattr(m, a) for a in ("patch_drop", "norm_pre") if hasattr(m, a)]

        def embed(x: torch.Tensor) -> torch.Tensor:
            x = m._pos_embed(m.patch_embed(x))
            for mod in pre[1:]:
                x = mod(x)
            return x

        units.append(Unit("patch_embed", "embed", pre, embed))
        for i, blk in enumerate(m.blocks):
            units.append(Unit(f"blocks.{i}", "block", [blk], blk))
    else:
        units.append(Unit("patch_embed", "embed", [m.patch_embed], m.patch_embed))
        for s, stage in enumerate(m.layers):
            if not isinstance(stage.downsample, nn.Identity):
                units.append(Unit(f"layers.{s}.downsample", "merge", [stage.downsample], stage.downsample))
            for j, blk in enumerate(stage.blocks):
                units.append(Unit(f"layers.{s}.blocks.{j}", "block", [blk], blk))

    def head(x: torch.Tensor) -> torch.Tensor:
        return m.forward_head(m.norm(x))

    head_mods = [m.norm] + [mod for a in ("fc_norm", "head", "head_dist") if isinstance(mod := getattr(m, a, None), nn.Module)]
    units.append(Unit("head", "head", head_mods, head))
    return units
