"""Cached unit inputs and targets, and the per-iteration batch source.

For unit ``k`` the cache holds, for every calibration image: ``x_q`` (the unit input from the
already-quantized units ``1..k-1``), ``x_f`` (the input from the FP model), ``y`` (the FP output
of the unit on ``x_f``) and optionally Fisher weights of the output error. The engine builds
them once per unit by chaining: ``x_f`` of unit ``k+1`` is ``y`` of unit ``k`` and ``x_q`` of unit
``k+1`` is the reconstructed unit ``k`` applied to its ``x_q``: one unit forward per unit, not a
forward of the whole prefix per unit as in the reference code.

Placement: on the compute device when they fit (``index_select`` inside the training step), else
in pinned CPU memory, gathered on the host and copied asynchronously into static device
buffers before each step (double-buffered).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mgrq.evaluate import pick_device


@dataclass
class UnitCache:
    """Cached tensors of one unit, each ``[n, ...]`` (``x_q`` may be the same tensor as ``x_f``:
    the first unit's input is the image for both paths)."""

    x_q: torch.Tensor
    x_f: torch.Tensor
    y: torch.Tensor
    fisher: torch.Tensor | None = None

    @property
    def n(self) -> int:
        return self.x_f.shape[0]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {"x_q": self.x_q, "x_f": self.x_f, "y": self.y}
        if self.fisher is not None:
            out["fisher"] = self.fisher
        return out


def nbytes(*ts: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in ts if t is not None)


class BatchSource:
    """Per-iteration batches of a :class:`UnitCache`.

    ``prepare(it)`` runs on the host before iteration ``it`` (writes the batch indices into a
    static device tensor; for a CPU cache also gathers the rows and starts their copy);
    ``get()`` runs inside the traced step and returns the batch tensors ``[B, ...]``.
    The index schedule ``[iters, B]`` is drawn up front from a seeded CPU generator (sampling
    with replacement, as QDrop), so it does not depend on the device.
    """

    def __init__(self, cache: UnitCache, batch: int, iters: int, seed: int, device: torch.device):
        device = pick_device(device)  # cuda -> cuda:N, to compare with tensor.device
        self.cache, self.device = cache, device
        g = torch.Generator().manual_seed(seed)
        self.schedule = torch.randint(0, cache.n, (iters, batch), generator=g)
        self.idx = torch.zeros(batch, dtype=torch.int64, device=device)
        self.streamed = cache.x_f.device != device
        placed = {t.device for t in cache.tensors().values()}
        if len(placed) != 1:
            raise ValueError(f"cache tensors on several devices {sorted(map(str, placed))}: expected one")
        if not self.streamed:
            self._sched_dev = self.schedule.to(device)
            return
        # pinned staging (two sets) -> static device buffers
        same = cache.x_q is cache.x_f
        self._names = [k for k in cache.tensors() if not (same and k == "x_q")]
        src = cache.tensors()
        self._static = {k: torch.empty((batch, *src[k].shape[1:]), dtype=src[k].dtype, device=device) for k in self._names}
        self._stage = [{k: torch.empty((batch, *src[k].shape[1:]), dtype=src[k].dtype).pin_memory() for k in self._names} for _ in range(2)]
        self._events: list[torch.cuda.Event | None] = [None, None]
        self._flip = 0

    def prepare(self, it: int) -> None:
        if not self.streamed:
            self.idx.copy_(self._sched_dev[it])
            return
        rows = self.schedule[it]
        slot = self._flip
        self._flip ^= 1
        ev = self._events[slot]
        if ev is not None:
            ev.synchronize()  # the copy that used this staging set 2 iterations ago is done
        src = self.cache.tensors()
        for k in self._names:
            torch.index_select(src[k], 0, rows, out=self._stage[slot][k])
            self._static[k].copy_(self._stage[slot][k], non_blocking=True)
        self.idx.copy_(rows, non_blocking=True)
        if self.device.type == "cuda":
            ev = torch.cuda.Event()
            ev.record()
            self._events[slot] = ev

    def get(self) -> dict[str, torch.Tensor]:
        """Batch tensors (``x_q``, ``x_f``, ``y``, optionally ``fisher``), each ``[B, ...]``."""
        if self.streamed:
            out = dict(self._static)
            out.setdefault("x_q", out["x_f"])
            return out
        src = self.cache.tensors()
        out = {k: t.index_select(0, self.idx) for k, t in src.items() if not (k == "x_q" and t is src["x_f"])}
        out.setdefault("x_q", out["x_f"])
        return out
