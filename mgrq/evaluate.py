"""Top-1/top-5 evaluation with a progress bar; the device is chosen automatically."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from mgrq.errors import ConfigError, EvaluationError


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


WORKERS_ENV = "MGRQ_DATA_WORKERS"


def default_workers(cpus: int) -> int:
    """Loader processes beside the evaluating one, for ``cpus`` CPUs: one per CPU less one, at most 8."""
    return max(0, min(8, cpus - 1))


def data_workers(dataset: Dataset, batch_size: int) -> int:
    """Loader processes for ``dataset`` evaluated on a GPU (on a CPU the model's own threads use
    the cores, so :func:`evaluate` decodes in its process there): none for images held in memory
    (the tiny zoo: nothing to decode); for image files (ImageNet: ~4 ms of JPEG decoding and
    resizing per image, about 3 minutes per pass over the 50,000 validation images in one
    process) ``$MGRQ_DATA_WORKERS`` when set (a suite job sets it to its thread budget less one,
    at most 8, unless the caller did), else one per CPU this process may use less one, at most 8;
    never more than there are batches."""
    import math
    import os

    from torch.utils.data import Subset, TensorDataset

    from mgrq.data import TensorImages

    base = dataset
    while isinstance(base, Subset):
        base = base.dataset
    if isinstance(base, (TensorImages, TensorDataset)):
        return 0
    env = os.environ.get(WORKERS_ENV, "").strip()
    if env:
        if not env.isdigit():
            raise ConfigError(f"{WORKERS_ENV}={env!r}: expected a non-negative integer (0: decode in this process)")
        n = int(env)
    else:
        n = default_workers(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else 0
    return max(0, min(n, math.ceil(len(dataset) / batch_size)))  # type: ignore[arg-type]  # map-style


def _worker_init(_: int) -> None:
    """A loader process ignores SIGTERM: SLURM signals the whole job on a requeue or cancel, and a
    worker killed first would fail the cell (torch reports its death) before the job's own
    handler stops it as unfinished. It ends when its loader is shut down (:func:`batches` does,
    also on an error), or with its parent; :func:`_kill_leftover_workers` covers the rest."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _kill_leftover_workers() -> None:
    """At exit, SIGKILL the loader processes still alive (a loader iterator abandoned without being
    shut down). multiprocessing's own exit handler would SIGTERM them, which they ignore, and then
    wait for them forever: the process would hang instead of exiting."""
    import multiprocessing
    import signal
    import threading

    left = [p for p in multiprocessing.active_children() if is_loader_process(p.pid)]
    if not left:
        return
    if threading.current_thread() is threading.main_thread():  # torch's SIGCHLD handler would raise on their deaths
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    for p in left:
        p.kill()


def is_loader_process(pid: int | None) -> bool:
    """Whether ``pid`` is a torch loader process (it names itself ``pt_data_worker``; Linux)."""
    try:
        return open(f"/proc/{pid}/comm").read().strip() == "pt_data_worker"
    except OSError:
        return False


def loader(dataset: Dataset, batch_size: int, workers: int | None = None, pin: bool = False) -> DataLoader:
    """Batches of ``dataset`` in order; ``workers=None``: :func:`data_workers`. Iterate it with
    :func:`batches`, which shuts its loader processes down however the loop ends."""
    n = data_workers(dataset, batch_size) if workers is None else workers
    if n > 0:
        _register_exit_kill()
    return DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=n, pin_memory=pin and n > 0,
                      worker_init_fn=_worker_init if n > 0 else None)


@functools.cache
def _register_exit_kill() -> None:
    import atexit

    atexit.register(_kill_leftover_workers)  # runs before multiprocessing's handler (registered earlier)


@contextlib.contextmanager
def batches(data: DataLoader) -> Iterator[Iterator[Any]]:
    """An iterator over ``data`` whose loader processes are shut down (sent their stop signal and
    joined) when the block ends, by an exception or an interrupt too: an iterator left to the
    garbage collector keeps its processes while a traceback holds it."""
    it = iter(data)
    try:
        yield it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int = 250,
    device: str | torch.device | None = None,
    workers: int | None = None,
    progress: bool = True,
    desc: str = "eval",
) -> dict[str, float]:
    """Top-1 and top-5 accuracy in percent on ``dataset`` (items: ``(image [C,H,W], label)``).

    Evaluation is deterministic: no shuffling, the model in eval mode, no randomness; the
    loader processes (``workers``, default :func:`data_workers` on a GPU, none on a CPU) change
    the speed, not the result. An image whose logits hold a NaN or Inf (a quantizer with a NaN
    step, a broken weight) raises :class:`~mgrq.errors.EvaluationError` at the end: argmax over
    NaN picks a class anyway, and the accuracy would read as a (poor) result.
    """
    from tqdm import tqdm

    dev = pick_device(device)
    model.to(dev)
    correct1 = correct5 = seen = broken = 0
    with eval_mode(model):
        cuda = dev.type == "cuda"
        data = loader(dataset, batch_size, workers if workers is not None or cuda else 0, pin=cuda)
        with batches(data) as it:
            for images, labels in tqdm(it, total=len(data), desc=desc, disable=not progress, leave=False):
                images, labels = images.to(dev, non_blocking=True), labels.to(dev, non_blocking=True)
                logits = model(images)
                k = min(5, logits.shape[-1])
                top = logits.topk(k, dim=-1).indices
                hit = top == labels[:, None]
                correct1 += int(hit[:, 0].sum())
                correct5 += int(hit.any(dim=-1).sum())
                broken += int((~torch.isfinite(logits)).any(dim=-1).sum())
                seen += labels.numel()
    if broken:
        raise EvaluationError(f"{desc}: the model's outputs are NaN or Inf for {broken} of {seen} images; expected "
                              "finite logits (a quantizer with a NaN or zero step, or a weight broken by the method?)")
    return {"top1": 100.0 * correct1 / max(seen, 1), "top5": 100.0 * correct5 / max(seen, 1), "n": float(seen)}
