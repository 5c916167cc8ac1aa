"""The model zoo: timm ImageNet models (weights from the timm hub cache or a local file) and a
tiny offline zoo built from the same timm classes and trained on MNIST-5k.

Tiny checkpoints live in ``mgrq/zoo_weights/<name>.pth`` (a plain ``state_dict``) beside a
``<name>.json`` that records the command, seed, epochs and held-out accuracy that produced them.
They are re-made with ``mgrq zoo train <name> --force`` (without ``--force`` it refuses to
replace a shipped checkpoint; ``--out PATH`` writes elsewhere).
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import re
import shlex
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mgrq import records
from mgrq.errors import CheckpointError, ConfigError, compile_regex, first_line, unknown

WEIGHTS_DIR = Path(__file__).parent / "zoo_weights"


@dataclass(frozen=True)
class ZooEntry:
    name: str
    family: str  # "vit" | "deit" | "swin"
    description: str
    timm_name: str | None = None  # None for the tiny zoo
    build: Callable[[], nn.Module] | None = None
    epochs: int = 0  # tiny zoo: training recipe
    lr: float = 0.0

    @property
    def tiny(self) -> bool:
        return self.timm_name is None


def _tiny_vit() -> nn.Module:
    from timm.models.vision_transformer import VisionTransformer

    return VisionTransformer(
        img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=4,
        num_heads=3, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
    )


def _tiny_deit() -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(
        img_size=32, patch_size=4, in_chans=1, num_classes=10, embed_dim=96, depth=4,
        num_heads=3, mlp_ratio=4.0, qkv_bias=True, class_token=True, global_pool="token",
    )


def _tiny_swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(
        img_size=32, patch_size=2, in_chans=1, num_classes=10, window_size=4, embed_dim=48,
        depths=(2, 2, 2), num_heads=(3, 6, 12), mlp_ratio=4.0,
    )


# The timm models with their pretrained tag pinned: the weights timm 0.4.12 loaded for the plain
# name, which RepQ-ViT's and PTQ4ViT's tables (reports/published.csv) were measured with. timm 1.x
# picks other defaults for two of them (top-1 from timm's results/results-imagenet.csv):
# vit_base_patch16_224 -> augreg2_in21k_ft_in1k, 85.11 (augreg_in21k_ft_in1k: 84.53; the papers'
# FP: 84.54), and swin_small_patch4_window7_224 -> ms_in22k_ft_in1k, 83.33 (ms_in1k, timm 0.4.12's
# swin_small_patch4_window7_224.pth: 83.23; the papers': 83.23).
_TIMM = [
    ("vit_small_patch16_224", "augreg_in21k_ft_in1k", "vit", "ViT-S/16, ImageNet-1k (21k pre-trained, augreg)"),
    ("vit_base_patch16_224", "augreg_in21k_ft_in1k", "vit", "ViT-B/16, ImageNet-1k (21k pre-trained, augreg)"),
    ("deit_tiny_patch16_224", "fb_in1k", "deit", "DeiT-T/16, ImageNet-1k"),
    ("deit_small_patch16_224", "fb_in1k", "deit", "DeiT-S/16, ImageNet-1k"),
    ("deit_base_patch16_224", "fb_in1k", "deit", "DeiT-B/16, ImageNet-1k"),
    ("swin_tiny_patch4_window7_224", "ms_in1k", "swin", "Swin-T, ImageNet-1k"),
    ("swin_small_patch4_window7_224", "ms_in1k", "swin", "Swin-S, ImageNet-1k"),
    ("swin_base_patch4_window7_224", "ms_in22k_ft_in1k", "swin", "Swin-B, ImageNet-1k (22k pre-trained)"),
]

ZOO: dict[str, ZooEntry] = {
    "tiny_vit": ZooEntry("tiny_vit", "vit", "tiny ViT (cls token, dim 96, depth 4, 3 heads) on MNIST-5k, offline", build=_tiny_vit, epochs=40, lr=2e-3),
    "tiny_deit": ZooEntry("tiny_deit", "deit", "tiny DeiT (cls + distillation token) on MNIST-5k, offline", build=_tiny_deit, epochs=40, lr=2e-3),
    "tiny_swin": ZooEntry("tiny_swin", "swin", "tiny Swin (patch 2, window 4, dim 48, depths 2/2/2) on MNIST-5k, offline", build=_tiny_swin, epochs=30, lr=2e-3),
    **{n: ZooEntry(n, fam, f"{desc}; timm {n}.{tag}", timm_name=f"{n}.{tag}") for n, tag, fam, desc in _TIMM},
}


def get_entry(name: str) -> ZooEntry:
    if name not in ZOO:
        raise unknown("model", name, ZOO)
    return ZOO[name]


def tiny_weights_path(name: str) -> Path:
    return WEIGHTS_DIR / f"{name}.pth"


def weights_file(name: str, checkpoint: str | Path | None) -> Path | None:
    """The file a model's weights come from: ``checkpoint`` when given, a tiny model's committed
    weights, else the cached file of timm's pretrained weights (None when not cached)."""
    if checkpoint is not None:
        return Path(checkpoint).expanduser()
    if get_entry(name).tiny:
        return tiny_weights_path(name)
    cached = cached_pretrained(name)
    return Path(cached) if cached is not None else None


_DIGESTS: dict[tuple[str, int, int], str] = {}


def weights_digest(path: Path) -> str | None:
    """SHA-256 of a weights file's bytes (None when it cannot be read); cached per process by
    path, size and modification time. A file of the HF hub cache (a snapshot's link to
    ``blobs/<sha256>``) is named by it: read from the name."""
    try:
        st = path.stat()
    except OSError:
        return None
    real = path.resolve()
    if real.parent.name == "blobs" and re.fullmatch(r"[0-9a-f]{64}", real.name):
        return real.name  # the HF hub cache names a (Git LFS) weights file by its SHA-256: no 0.3 GB read
    key = (str(real), st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        import hashlib

        h = hashlib.sha256()
        try:
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            return None
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colour codes some libraries put in their messages


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a weights file (a ``state_dict``, or a dict holding one under ``state_dict``/
    ``model``) with one clear error for a missing or corrupt file."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise CheckpointError(f"checkpoint {path}: is a folder; expected a weights file (.pth/.pt/.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        msg = str(e)
        if cls := re.search(r"Unsupported global: GLOBAL (\S+)", msg):  # it unpickles, but holds Python objects
            raise CheckpointError(
                f"checkpoint {path}: holds Python objects besides tensors (e.g. {cls.group(1)}: a whole pickled "
                "model, or a training checkpoint with its arguments), which are not unpickled (they could run "
                "code); expected a state_dict of tensors: save model.state_dict() with torch.save"
            ) from None
        # torch's weights-only unpickler puts what it met after a long preamble
        why = next((ln.strip() for ln in msg.split("WeightsUnpickler error:", 1)[1].splitlines() if ln.strip()), "") \
            if "WeightsUnpickler error:" in msg else ""
        raise CheckpointError(
            f"checkpoint {path}: not a readable torch/safetensors weights file "
            f"({type(e).__name__}: {why or ANSI.sub('', first_line(e, 120, 'empty file'))}); expected a whole file "
            f"written by torch.save or safetensors (a truncated copy fails so too)"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        if isinstance(obj, dict):
            other = [f"{k} ({type(v).__name__})" for k, v in obj.items() if not isinstance(v, torch.Tensor)]
            found = f"; it holds {', '.join(other[:4])}{', ...' if len(other) > 4 else ''}"
        else:
            found = f"; it holds a {type(obj).__name__}"
        raise CheckpointError(f"checkpoint {path}: expected a state_dict of tensors, or a dict holding one under "
                              f"'state_dict' or 'model'{found}")
    check_finite(obj, f"checkpoint {path}")
    return obj


def check_finite(sd: dict[str, torch.Tensor], what: str) -> None:
    """Fail on the first floating tensor holding NaN/Inf (:class:`CheckpointError` naming ``what``,
    the tensor and the count): such weights load and fit the model, then fail deep inside a method
    (a quantizer's range init) or give a NaN accuracy. One ``isfinite`` pass per tensor."""
    for key, t in sd.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad = int((~torch.isfinite(t)).sum())
            raise CheckpointError(f"{what}: tensor {key} holds {bad} NaN/Inf value(s); expected finite weights")


def _load_into(model: nn.Module, sd: dict[str, torch.Tensor], path: Path | str, assign: bool = False,
               name: str = "the model") -> None:
    """Load ``sd`` strictly (torch decides what fits); :class:`CheckpointError` naming what does
    not: tensors of other shapes (the first with both shapes: the sign of another model size),
    then missing and unexpected keys, each with a count and an example."""
    try:
        model.load_state_dict(sd, strict=True, assign=assign)
    except RuntimeError as e:
        own = model.state_dict()
        shapes = [k for k in sd if k in own and tuple(sd[k].shape) != tuple(own[k].shape)]
        missing, extra = [k for k in own if k not in sd], [k for k in sd if k not in own]
        parts = []
        if shapes:
            k = shapes[0]
            parts.append(f"{len(shapes)} tensor(s) of another shape (first: {k} {list(sd[k].shape)} in the file, "
                         f"{list(own[k].shape)} in the model)")
        parts += [f"{len(ks)} {what} (e.g. {ks[0]})" for ks, what in ((missing, "missing"), (extra, "unexpected"))
                  if ks]
        why = "; ".join(parts) or " ".join(str(e).split())[:300]  # torch's own words: one line
        ddp = bool(extra) and set(missing) <= {k[7:] for k in extra} and all(  # it would fit without the prefix
            k.startswith("module.") and k[7:] in own and tuple(sd[k].shape) == tuple(own[k[7:]].shape) for k in extra)
        hint = " in its key layout: the file's keys carry the 'module.' prefix of a DDP save, to be stripped" if ddp else ""
        raise CheckpointError(f"checkpoint {path}: does not fit {name}: {why}; expected the weights of {name}{hint}") \
            from None


def create_model(
    name: str, checkpoint: str | Path | None = None, pretrained: bool = True
) -> nn.Module:
    """Build a zoo model in eval mode.

    - tiny zoo: the committed checkpoint, or ``checkpoint`` when given.
    - timm names: ``checkpoint`` when given (any timm-compatible ``state_dict``; the number of
      classes is read from its classifier, so fine-tuned heads load), else the timm pretrained
      weights from the hub cache (``pretrained=False`` gives random weights).
    """
    entry = get_entry(name)
    if entry.tiny:
        assert entry.build is not None
        model = entry.build()
        if pretrained or checkpoint is not None:
            path = Path(checkpoint) if checkpoint is not None else tiny_weights_path(name)
            if not path.is_file() and checkpoint is None:
                raise CheckpointError(
                    f"checkpoint {path}: not found; train it with `mgrq zoo train {name}`"
                )
            _load_into(model, load_state_dict_file(path), path, name=f"model {name}")
        return model.eval()

    import timm

    if checkpoint is not None:
        sd = load_state_dict_file(checkpoint)
        model = _timm_for(entry, sd)
        _load_into(model, sd, checkpoint, name=f"model {name}")
        return model.eval()
    try:
        model = timm.create_model(str(entry.timm_name), pretrained=pretrained)
    except Exception as e:  # the remedy first: a progress line or a summary may cut the message
        raise CheckpointError(
            f"model {name}: could not load the timm pretrained weights; pass --checkpoint PATH to a local "
            f"weights file or fill the HF hub cache ({type(e).__name__}: {first_line(e, 160)})"
        ) from None
    if pretrained:
        check_finite(model.state_dict(), f"model {name}: the timm pretrained weights")
    return model.eval()


def cached_pretrained(name: str) -> str | None:
    """Where timm model ``name``'s pretrained weights lie in the cache timm will read them from,
    None when they are not there. Reads no network. timm's order: the HF hub when the model has a
    hub id (its ``hf_hub_filename`` or ``pytorch_model.bin``, each ``.bin`` tried first as
    ``.safetensors``), unless ``TIMM_USE_OLD_CACHE`` is set and the URL's file is in torch's hub
    cache; the URL cache when there is no hub id."""
    import os

    import timm
    from huggingface_hub import constants, try_to_load_from_cache

    cfg = timm.models.get_pretrained_cfg(str(get_entry(name).timm_name))
    if cfg is None:
        return None
    old = Path(torch.hub.get_dir()) / "checkpoints" / Path(str(cfg.url)).name if cfg.url else None
    if old is not None and old.is_file() and (not cfg.hf_hub_id or int(os.environ.get("TIMM_USE_OLD_CACHE", 0)) > 0):
        return str(old)
    if not cfg.hf_hub_id:
        return None
    repo, _, rev = str(cfg.hf_hub_id).partition("@")
    want = str(cfg.hf_hub_filename or "pytorch_model.bin")
    safe = "model.safetensors" if want == "pytorch_model.bin" else want[:-4] + ".safetensors" if want.endswith(".bin") else None
    for f in (safe, want):
        hit = try_to_load_from_cache(repo, f, cache_dir=constants.HF_HUB_CACHE, revision=rev or None) if f else None
        if isinstance(hit, str):
            return hit
    return None


def check_all_pretrained_cached(names: list[str], where: str = "") -> None:
    """:func:`check_pretrained_cached` for several timm models at once (a suite's): one error
    naming every model whose weights are missing offline, with one command that fills the cache
    for all of them; the single-model message when only one is missing."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE:
        return
    missing = [m for m in names if not get_entry(m).tiny and cached_pretrained(m) is None]
    if len(missing) == 1:
        m = missing[0]
        check_pretrained_cached(m, where, f"--checkpoint {m}=PATH (or checkpoints.{m} in the file)")
    elif missing:
        tags = [str(get_entry(m).timm_name) for m in missing]
        raise CheckpointError(
            f"{where}models {', '.join(missing)}: their timm pretrained weights are not in the HF hub cache "
            f"{constants.HF_HUB_CACHE}, and HF_HUB_OFFLINE=1 forbids downloading them; expected --checkpoint "
            "MODEL=PATH for each (or checkpoints in the file), or the cache filled first where the hub is "
            "reachable: HF_HUB_OFFLINE=0 python -c \"import timm; [timm.create_model(m, pretrained=True) for m in "
            f"{tuple(tags)!r}]\""
        )


def check_pretrained_cached(name: str, where: str = "", flag: str = "--checkpoint PATH") -> None:
    """With the hub offline (``HF_HUB_OFFLINE=1``, as the nox sessions and most cluster nodes
    run), fail before any work when timm model ``name``'s pretrained weights are not cached:
    each job would fail on them. ``flag``: how the caller passes local weights instead. Online,
    timm downloads them when a job builds the model."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE or get_entry(name).tiny or cached_pretrained(name) is not None:
        return
    import timm

    cfg = timm.models.get_pretrained_cfg(str(get_entry(name).timm_name))
    hub_id = cfg.hf_hub_id if cfg is not None else None
    raise CheckpointError(
        f"{where}model {name}: its timm pretrained weights ({hub_id}) are not in the HF hub cache "
        f"{constants.HF_HUB_CACHE}, and HF_HUB_OFFLINE=1 forbids downloading them; expected {flag}, "
        "or the cache filled first where the hub is reachable: "
        f"HF_HUB_OFFLINE=0 python -c \"import timm; timm.create_model('{get_entry(name).timm_name}', pretrained=True)\""
    )


def _timm_for(entry: Any, sd: dict[str, torch.Tensor]) -> nn.Module:
    """The timm model of ``entry`` without weights, its classifier sized from ``sd`` (a fine-tuned
    checkpoint may carry its own number of classes)."""
    import timm

    head = next((sd[k] for k in ("head.weight", "head.fc.weight") if k in sd), None)
    kwargs: dict[str, Any] = {"num_classes": int(head.shape[0])} if head is not None else {}
    return timm.create_model(str(entry.timm_name), pretrained=False, **kwargs)


def num_classes(name: str) -> int:
    """The number of outputs of zoo model ``name`` with its default weights, without building it
    (with a checkpoint: :func:`check_checkpoint`'s answer, the checkpoint's own head). An
    ImageNet folder's class folders are checked against it before any work
    (``check_imagenet_root``)."""
    entry = get_entry(name)
    if entry.tiny:
        return 10
    import timm

    cfg = timm.models.get_pretrained_cfg(str(entry.timm_name))
    return int(cfg.num_classes) if cfg is not None and cfg.num_classes else 1000


def check_checkpoint(name: str, path: str | Path) -> int:
    """Fail before any work when a weights file does not load into zoo model ``name``
    (:class:`CheckpointError`: unreadable, NaN/Inf values, or keys and shapes that do not fit);
    else the number of classes of the model with these weights (a fine-tuned head may have its
    own). The model is built on the meta device, so only the file is read."""
    sd = load_state_dict_file(path)
    entry = get_entry(name)
    with torch.device("meta"):
        model = entry.build() if entry.build is not None else _timm_for(entry, sd)
    _load_into(model, sd, path, assign=True, name=f"model {name}")  # keys and shapes are checked all the same
    return int(getattr(model, "num_classes", 0))


@functools.cache
def _layout(name: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The quantization point names and the reconstruction unit names of zoo model ``name``
    (built once per process on the meta device: a suite checks the same models for its own and
    each method's overrides and unit patterns)."""
    from mgrq.surgery import LayerPolicy, point_names, quantize_model

    with torch.device("meta"):
        model = create_model(name, pretrained=False)
    qmodel = quantize_model(model, LayerPolicy(8, 8))
    return tuple(point_names(qmodel)), tuple(u.name for u in qmodel.units())


def _point_names(name: str) -> tuple[str, ...]:
    return _layout(name)[0]


def check_overrides(overrides: tuple[tuple[str, Any], ...] | list, models: list[str], where: str) -> None:
    """Fail before any work when a layer-policy pattern matches no quantization point of any of
    ``models`` (:class:`ConfigError` naming ``where``, the pattern and example point names). A
    pattern needs to match in one model only: a suite's overrides apply to every model of its
    grid, and e.g. ``reduction`` exists in Swin only. The models are built on the meta device
    (no weights, no memory), which takes well under a second each."""
    from mgrq.surgery import unmatched_overrides

    if not overrides:
        return
    names = [n for name in dict.fromkeys(models) for n in _point_names(name)]
    bad = unmatched_overrides(overrides, names)
    if bad:
        examples = ", ".join(dict.fromkeys([names[0], names[len(names) // 2], names[-1]]))
        raise ConfigError(
            f"{where}: layer policy pattern '{bad[0]}' matches no quantization point of "
            f"{', '.join(dict.fromkeys(models))}; expected a regex (re.search) for point names such as {examples}"
        )


def check_units(units: Any, models: list[str], where: str) -> None:
    """Fail before any work when a reconstruction method's ``units`` regex matches none of the
    units of one of ``models`` (:class:`ConfigError` naming ``where``, the model and its units):
    the engine refuses such a run (each of that model's cells would fail after calibration).
    Unlike a layer-policy pattern it must match in every model, as the engine checks per model."""
    if not units:
        return
    pattern = compile_regex(str(units), f"{where} units", "a regex searched in unit names")
    for name in dict.fromkeys(models):
        names = _layout(name)[1]
        if not any(pattern.search(u) for u in names):
            raise ConfigError(f"{where}: units='{units}' matches none of the units of {name}; expected a regex "
                              f"(re.search) for unit names such as {', '.join(names)}")


def data_bundle_for(name: str, model: nn.Module, data_root: str | Path | None, eval_split: str = "heldout"):
    """The data a zoo model is evaluated on: MNIST-5k for the tiny zoo, else an ImageNet folder."""
    from mgrq import data

    entry = get_entry(name)
    if entry.tiny:
        return data.mnist_bundle(eval_split)
    n = int(getattr(model, "num_classes", 1000))
    root = data.check_imagenet_root(data_root, name, num_classes=n, eval_split=eval_split)  # folders before images
    return data.imagenet_bundle(root, model, n, eval_split)


# --------------------------------------------------------------------------------------------
# Training the tiny zoo
# --------------------------------------------------------------------------------------------


def _random_shift(x: torch.Tensor, g: torch.Generator, max_shift: int = 2) -> torch.Tensor:
    """Random translation by up to ``max_shift`` pixels per image (x: ``[B, 1, 32, 32]``)."""
    b = x.shape[0]
    pad = torch.nn.functional.pad(x, (max_shift,) * 4, value=float(x.min()))
    dx = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    dy = torch.randint(0, 2 * max_shift + 1, (b,), generator=g)
    h, w = x.shape[-2:]
    rows = (dy[:, None] + torch.arange(h)[None]).view(b, 1, h, 1).expand(b, 1, h, w)
    cols = (dx[:, None] + torch.arange(w)[None]).view(b, 1, 1, w).expand(b, 1, h, w)
    pad_w = pad.shape[-1]
    flat = pad.flatten(2)
    idx = (rows * pad_w + cols).flatten(2)
    return flat.gather(2, idx).view_as(x)


def train_tiny(
    name: str,
    out: str | Path | None = None,
    epochs: int | None = None,
    seed: int = 0,
    batch_size: int = 128,
    progress: bool = True,
) -> dict[str, Any]:
    """Train a tiny-zoo model on the 4,000 MNIST-5k training digits and write its checkpoint and
    metadata (command, seed, held-out top-1). Returns the metadata."""
    from tqdm import tqdm

    from mgrq import data
    from mgrq.evaluate import evaluate

    entry = get_entry(name)
    if not entry.tiny:
        raise CheckpointError(f"model {name}: only the tiny zoo is trained here")
    assert entry.build is not None
    epochs = entry.epochs if epochs is None else epochs
    if epochs < 1 or batch_size < 1:
        raise ConfigError(f"zoo train {name}: epochs={epochs}, batch_size={batch_size}: expected both >= 1")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    bundle = data.mnist_bundle()
    x, y = bundle.train.images, bundle.train.labels  # type: ignore[attr-defined]
    model = entry.build()
    opt = torch.optim.AdamW(model.parameters(), lr=entry.lr, weight_decay=0.05)
    steps_per_epoch = math.ceil(len(x) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=entry.lr, total_steps=epochs * steps_per_epoch, pct_start=0.15
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.1)
    t0 = time.time()
    bar = tqdm(range(epochs), desc=f"train {name}", disable=not progress)
    for _ in bar:
        model.train()
        perm = torch.randperm(len(x), generator=g)
        total = 0.0
        for i in range(steps_per_epoch):
            idx = perm[i * batch_size : (i + 1) * batch_size]
            xb = _random_shift(x[idx], g)
            out_ = model(xb)
            if isinstance(out_, tuple):  # distilled model in training mode: (cls, dist)
                loss = sum(loss_fn(o, y[idx]) for o in out_) / len(out_)
            else:
                loss = loss_fn(out_, y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
        bar.set_postfix(loss=f"{total / steps_per_epoch:.3f}")
    model.eval()
    metrics = evaluate(model, bundle.val, progress=False)
    out_path = Path(out) if out is not None else tiny_weights_path(name)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save(sd, out_path)
    meta = {
        "model": name,
        "command": f"mgrq zoo train {name} --epochs {epochs} --seed {seed} --threads {torch.get_num_threads()}"
                   + (" --force" if out is None else f" --out {shlex.quote(str(out))}"),
        "seed": seed,
        "epochs": epochs,
        "batch_size": batch_size,
        "optimizer": f"AdamW(lr={entry.lr}, wd=0.05), one-cycle, label smoothing 0.1, shifts +-2px",
        "data": bundle.source,
        "heldout_top1": metrics["top1"],
        "heldout_top5": metrics["top5"],
        "train_seconds": round(time.time() - t0, 1),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),  # on a CPU the weights depend on it (the order of float sums)
        "cpu": records.cpu_name(),
        "sha256": hashlib.sha256(out_path.read_bytes()).hexdigest(),
    }
    out_path.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta
