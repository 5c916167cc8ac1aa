"""Peak memory of a stretch of work (mgrq.memory.PeakMemory), nested as a run around its units."""

from __future__ import annotations

import time

import pytest
import torch

from mgrq.memory import PeakMemory, _rss_bytes


def _touch(n_bytes: int, device: str) -> torch.Tensor:
    x = torch.empty(n_bytes // 4, dtype=torch.float32, device=device)
    x.fill_(1.0)  # resident, not only reserved
    return x


def test_cpu_peak_sees_a_transient_allocation_and_nests():
    base = _rss_bytes()
    assert base is not None, "this test needs /proc/self/statm (Linux)"
    # the outer sampler never samples within the block (60 s interval): its peak covers the
    # inner one's only because the inner context hands its peak back on exit
    with PeakMemory("cpu", interval=60.0) as outer, PeakMemory("cpu", interval=0.005) as inner:
        x = _touch(200 * 2**20, "cpu")
        deadline = time.monotonic() + 5.0  # keep x alive until the inner sampler has seen it
        while inner._peak < base + 190 * 2**20 and time.monotonic() < deadline:
            time.sleep(0.005)
        del x
    assert inner.kind == outer.kind == "cpu_rss_sampled"
    # the peak is the process's resident memory: it must exceed what was resident before by the
    # 200 MiB held inside (about 500 MiB are resident with torch imported, without any allocation)
    assert inner.mb - base / 2**20 >= 190
    assert outer.mb >= inner.mb


@pytest.mark.gpu
def test_cuda_nested_contexts_keep_the_outer_peak(require_cuda):
    dev = require_cuda
    with PeakMemory(dev) as outer:
        big = _touch(512 * 2**20, dev)
        del big  # the outer stretch peaked at >= 512 MiB before the inner context resets
        with PeakMemory(dev) as inner:
            small = _touch(64 * 2**20, dev)
            del small
        after = _touch(128 * 2**20, dev)
        del after
    assert inner.kind == "cuda_allocated" and 64 <= inner.mb < 512
    assert outer.mb >= 512
