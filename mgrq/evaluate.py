"""Top-1/top-5 evaluation with a progress bar; the device is chosen automatically."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mgrq.errors import ConfigError


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` when given ("cpu", "cuda", "cuda:1"), else CUDA when present, else CPU.
    A CUDA device always comes back with its index (``cuda`` -> ``cuda:0``), so devices compare
    equal to ``tensor.device``."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = parse_device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {str(device)!r}: no CUDA device is available here; expected cpu or auto")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        elif dev.index >= torch.cuda.device_count():
            raise ConfigError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    return dev


def parse_device(device: str | torch.device) -> torch.device:
    """Check a device string without touching the hardware (a login node may have no GPU)."""
    if isinstance(device, torch.device):
        return device
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    return dev


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; on exit every submodule gets back its own
    training flag (``model.train(flag)`` would set the wrapper's flag on all of them)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield model.eval()
    finally:
        for m, flag in flags:
            m.training = flag


def loader(dataset: Dataset, batch_size: int, workers: int = 0) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    workers: int = 0,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent on ``dataset`` (items: ``(image [C,H,W], label)``).

    Evaluation is deterministic: no shuffling, the model in eval mode, no randomness.
    """
    from tqdm import tqdm

    dev = pick_device(device)
    model.to(dev)
    correct1 = correct5 = seen = 0
    with eval_mode(model):
        for images, labels in tqdm(loader(dataset, batch_size, workers), desc=desc, disable=not progress, leave=False):
            images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
            logits = model(images)
            k = min(5, logits.shape[-1])
            top = logits.topk(k, dim=-1).indices
            hit = top == labels[:, None]
            correct1 += int(hit[:, 0].sum())
            correct5 += int(hit.any(dim=-1).sum())
            seen += labels.numel()
    return {"top1": 100.0 * correct1 / max(seen, 1), "top5": 100.0 * correct5 / max(seen, 1), "n": float(seen)}
