"""Running one training step in eager mode, under ``torch.compile``, or replayed from a CUDA graph.

A step is ``forward(variant) -> total loss`` (the part that may be compiled) followed by
``update(total)`` (backward, learning-rate update, optimizer step, bookkeeping; eager code that
may be captured). ``variant`` is a tuple of booleans (which loss terms are active this
iteration); every variant gets its own compiled code and its own CUDA graph.

- The first call of each variant always runs eagerly (loss terms record their first value
  there, which ``fusion='normalized'`` divides by).
- ``compile``: later calls use ``torch.compile(forward, fullgraph=True)``. Random ops use eager
  semantics (``fallback_random``), so compiled and eager steps draw the same random numbers.
- ``cudagraphs``: after ``WARMUP`` eager calls of a variant on the side stream, one call is
  captured (``torch.cuda.graph``) and every later call replays it; the caller runs the loop on a
  side stream. Gradients are set to None before each capture so that each graph owns its
  gradient buffers.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from mgrq.errors import ConfigError


def check_compile_device(mode: str, device: torch.device) -> None:
    """CUDA graphs (``cudagraphs``, ``compile+cudagraphs``) need a CUDA device: ``ConfigError``
    (a ``ValueError``) otherwise, so a run can refuse the mode before doing any work."""
    if "cudagraphs" in mode and device.type != "cuda":
        raise ConfigError(f"compile={mode}: CUDA graphs need a CUDA device, this run is on {device}; "
                          "expected none, kernels or compile")

WARMUP = 3


class StepRunner:
    def __init__(
        self,
        forward: Callable[[tuple[bool, ...]], torch.Tensor],
        update: Callable[[torch.Tensor], None],
        zero_grad: Callable[[], None],
        mode: str,
        device: torch.device,
    ):
        self.forward, self.update, self.zero_grad = forward, update, zero_grad
        self.mode, self.device = mode, device
        self.use_compile = "compile" in mode
        self.use_graphs = "cudagraphs" in mode
        check_compile_device(mode, device)
        self.compiled: Callable[[tuple[bool, ...]], torch.Tensor] | None = None
        if self.use_compile:
            self.compiled = torch.compile(forward, fullgraph=True, dynamic=False)
        self._rng: Any = _RandomLikeEager() if self.use_compile else contextlib.nullcontext()
        self.graphs: dict[tuple[bool, ...], torch.cuda.CUDAGraph] = {}
        self.calls: Counter[tuple[bool, ...]] = Counter()

    def _fn(self, n: int) -> Callable[[tuple[bool, ...]], torch.Tensor]:
        return self.compiled if (self.compiled is not None and n >= 1) else self.forward

    def _eager(self, variant: tuple[bool, ...], n: int) -> None:
        self.zero_grad()
        with self._rng:
            total = self._fn(n)(variant)
            self.update(total)

    def __call__(self, variant: tuple[bool, ...]) -> None:
        n = self.calls[variant]
        self.calls[variant] += 1
        if not self.use_graphs or n < WARMUP:
            self._eager(variant, n)
            return
        g = self.graphs.get(variant)
        if g is None:
            self.zero_grad()
            g = torch.cuda.CUDAGraph()
            with self._rng, torch.cuda.graph(g):
                total = self._fn(n)(variant)
                self.update(total)
            self.graphs[variant] = g
        g.replay()

    def close(self) -> None:
        self.graphs.clear()


class _RandomLikeEager:
    """Make inductor keep random ops as eager aten calls (same numbers as eager mode)."""

    def __enter__(self) -> None:
        import torch._inductor.config as cfg

        self._cfg: Any = cfg
        self._old = cfg.fallback_random
        cfg.fallback_random = True

    def __exit__(self, *exc: Any) -> None:
        self._cfg.fallback_random = self._old
