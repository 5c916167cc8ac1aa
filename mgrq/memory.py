"""Peak memory of a stretch of work (a run, a reconstruction unit).

- CUDA: ``torch.cuda.max_memory_allocated`` after resetting the peak at the start
  (kind ``cuda_allocated``).
- CPU: the process's resident set size sampled every ``interval`` seconds from
  ``/proc/self/statm`` by a background thread (kind ``cpu_rss_sampled``). Unlike ``ru_maxrss``
  (the process's all-time peak) it belongs to this stretch only, so cells that run one after the
  other in one job get their own figures. Where ``/proc`` is missing it falls back to
  ``ru_maxrss`` (kind ``cpu_maxrss``).

Contexts nest (a run around its reconstruction units), and an outer context's peak is at least
each inner one's: on CUDA an inner context resets the device's peak counter, so it hands the
peak it measured, and the one the outer context had seen before the reset, back to the
enclosing context; on the CPU an inner context hands back its sampled peak, which the outer
context's own sampler may have missed between two of its samples.
"""

from __future__ import annotations

import os
import resource
import threading

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
_STATM = "/proc/self/statm"
_CUDA_ACTIVE: list[PeakMemory] = []  # open CUDA contexts, innermost last
_CPU_ACTIVE: list[PeakMemory] = []  # open sampled CPU contexts, innermost last


def _rss_bytes() -> int | None:
    try:
        with open(_STATM) as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """``with PeakMemory(device) as pm: ...`` then ``pm.mb`` (MiB) and ``pm.kind``."""

    def __init__(self, device: torch.device | str, interval: float = 0.05):
        self.device = torch.device(device)
        self.interval = interval
        self.mb = 0.0
        self.kind = ""
        self._peak = 0
        self._carry = 0  # bytes peaked in inner contexts (CUDA: also before an inner one reset the counter)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            if _CUDA_ACTIVE:
                outer = _CUDA_ACTIVE[-1]
                outer._carry = max(outer._carry, torch.cuda.max_memory_allocated(self.device))
            torch.cuda.reset_peak_memory_stats(self.device)
            _CUDA_ACTIVE.append(self)
        else:
            rss = _rss_bytes()
            if rss is not None:
                self._peak = rss
                self._thread = threading.Thread(target=self._sample, daemon=True)
                self._thread.start()
                _CPU_ACTIVE.append(self)
        return self

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            if self in _CUDA_ACTIVE:
                _CUDA_ACTIVE.remove(self)
            peak = max(torch.cuda.max_memory_allocated(self.device), self._carry)
            if _CUDA_ACTIVE:
                _CUDA_ACTIVE[-1]._carry = max(_CUDA_ACTIVE[-1]._carry, peak)
            self.mb, self.kind = peak / 2**20, "cuda_allocated"
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            if self in _CPU_ACTIVE:
                _CPU_ACTIVE.remove(self)
            peak = max(self._peak, _rss_bytes() or 0, self._carry)
            if _CPU_ACTIVE:
                _CPU_ACTIVE[-1]._carry = max(_CPU_ACTIVE[-1]._carry, peak)
            self.mb, self.kind = peak / 2**20, "cpu_rss_sampled"
        else:
            self.mb, self.kind = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, "cpu_maxrss"
