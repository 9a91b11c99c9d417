"""TopK.encode time over one read pass (x.sum()) at n = 1e7, per density and index coder, with
index bits over the bound (issue 18, item 5's figures)::

    python tools/topk_encode_ratio.py
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

import sparsecodec as sc  # noqa: E402
from sparsecodec.indices import choose_index_coder  # noqa: E402


def _best(f, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main(n: int = 10**7) -> None:
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    one_pass = _best(lambda: x.sum())
    for density in (1e-4, 1e-3, 0.1):
        k = sc.k_for(n, density=density)
        t = time.perf_counter()
        auto = choose_index_coder(sc.topk_indices(x, k), n)
        choose_ms = 1e3 * (time.perf_counter() - t)
        for coder in ("auto", "golomb", "gaps"):
            codec = sc.TopK(density=density, index=coder)
            codec.encode(x[:100_000])                       # JIT warm-up
            frame = codec.encode(x)
            ratio = _best(lambda: codec.encode(x)) / one_pass
            bits = frame.sections["index"] / sc.bounds.topk_index_bits(n, k)
            name = f"auto ({auto}, choice incl. selection {choose_ms:.1f} ms)" if coder == "auto" else coder
            print(f"density {density:g}  {name:44s} {ratio:6.1f}x one pass   index bits / bound {bits:.4f}")


if __name__ == "__main__":
    main()
