"""Write ``torch_quantile_<version>.json``: what ``torch.quantile`` of the installed torch returns
on fixed inputs, the oracle for ``quantile_rows(..., mode)`` in ``tests/test_quant.py``.

Run it in a virtual environment whose torch is the release to record (``tests/test_quant.py``
holds torch 2.13.0's file, the last release with float32 ranks and the 2^24-element cap;
``quantile_rows``'s mode ``torch2.13``)::

    python3 -m venv /tmp/v213 && /tmp/v213/bin/pip install torch==2.13.0 numpy
    /tmp/v213/bin/python tests/data/make_torch_quantile_fixture.py

Inputs come from numpy's PCG64 (seed 0, float32 standard normals), not from torch's generator, so
that any torch reads the same numbers; the file keeps their sum to show that. For rows over 2^24
elements the value is what RepQ-ViT's reference code falls back to when ``torch.quantile`` refuses:
``numpy.percentile(x, q * 100)`` cast to float32.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

SIZES = ((3, 1001), (3, 6304), (3, 100_003), (3, 2_420_736), (1, 2**24), (1, 2**24 + 1))
# RepQ-ViT's percentiles and 1 - pct, computed as its search computes them; the median; and
# eight uniform draws (seed 1), whose interpolation weights fall on both sides of 0.5
QS = (0.5, 0.999, 1.0 - 0.999, 0.9999, 1.0 - 0.9999, 0.99999, 1.0 - 0.99999,
      *(float(q) for q in np.random.default_rng(1).uniform(0.0, 1.0, 8)))


def inputs(rows: int, n: int) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((rows, n), dtype=np.float32)


def main() -> None:
    cases = []
    for rows, n in SIZES:
        x = inputs(rows, n)
        t = torch.from_numpy(x)
        for q in QS:
            vals = []
            for r in range(rows):  # one row at a time, as the reference's per-channel loop
                try:
                    v = torch.quantile(t[r], q)
                except RuntimeError as e:  # the reference's except branch
                    assert "too large" in str(e), e
                    v = torch.tensor(np.percentile(t[r], q * 100), dtype=torch.float32)
                vals.append(float(v).hex())
            cases.append({"rows": rows, "n": n, "q": q, "values": vals})
        print(f"{rows} x {n}: done", file=sys.stderr)
    out = {
        "torch": torch.__version__, "numpy": np.__version__,
        "input_sums": {f"{rows}x{n}": float(inputs(rows, n).astype(np.float64).sum()) for rows, n in SIZES},
        "cases": cases,
    }
    path = Path(__file__).with_name(f"torch_quantile_{torch.__version__.split('+')[0]}.json")
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(path)


if __name__ == "__main__":
    main()
