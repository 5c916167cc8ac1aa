"""Calibration helpers: PTQ algorithms as context managers around a plain forward loop.

``lazy_init`` initializes each point's quantizer from the first tensor that reaches it, in
forward order, while quantization is on: a point downstream sees inputs already quantized by the
points before it (RepQ-ViT's calibration protocol). ``capture`` records the tensors reaching
points without changing anything.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager

import torch

from mgrq.quant.point import QuantPoint


@contextmanager
def lazy_init(
    points: Iterable[QuantPoint], init: Callable[[QuantPoint, torch.Tensor], None]
) -> Iterator[None]:
    """While active, the first tensor reaching each point calls ``init(point, x)`` before the
    point quantizes it; the hook then removes itself. Hooks are removed on exit."""
    handles = []

    def make_hook(p: QuantPoint):
        def hook(module: QuantPoint, args: tuple[torch.Tensor, ...]) -> None:
            init(module, args[0].detach())
            handles_by_point.pop(id(module)).remove()

        return hook

    handles_by_point = {}
    for p in points:
        h = p.register_forward_pre_hook(make_hook(p))
        handles_by_point[id(p)] = h
        handles.append(h)
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def capture(points: Iterable[QuantPoint], store: dict[str, list[torch.Tensor]], to_cpu: bool = False) -> Iterator[None]:
    """Append every tensor reaching each point (before quantization) to ``store[point.name]``."""
    handles = []
    for p in points:
        store.setdefault(p.name, [])

        def hook(module: QuantPoint, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            store[module.name].append(x.cpu() if to_cpu else x)

        handles.append(p.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()
