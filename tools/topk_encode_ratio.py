"""TopK.encode time over one read pass (x.sum()) at n = 1e7, per density and index coder, with
index bits over the bound (issue 18, item 5's figures)::

    python tools/topk_encode_ratio.py

Per density: ``TopK(index=...).encode`` over one pass for ``auto`` and fixed coders (with
the previous frame still alive, and with every frame dropped at once); the
index part alone on the same support: ``choose_index_coder`` (the choice by itself),
``choose_index_coder`` + ``encode_indices`` (what TopK's ``auto`` runs: two validation scans)
and ``encode_indices_auto`` (choice and encoding in one scan); and the index section's bits
(``varint(k)`` included) over ``log2 C(n, k)``.
"""

from __future__ import annotations

import os

for _v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import time  # noqa: E402

import numpy as np  # noqa: E402

import sparsecodec as sc  # noqa: E402
from sparsecodec.indices import choose_index_coder, encode_indices, encode_indices_auto  # noqa: E402

CODERS = ("auto", "golomb", "gaps", "bitmap")


def _best(f, repeats: int = 5) -> float:
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f()
        best = min(best, time.perf_counter() - t)
    return best


def main(n: int = 10**7) -> None:
    x = np.random.default_rng(0).standard_normal(n).astype(np.float32)
    one_pass = _best(lambda: x.sum())
    print(f"n = {n:g}, one read pass (x.sum()) {1e3 * one_pass:.2f} ms")
    for density in (1e-4, 1e-3, 0.1):
        k = sc.k_for(n, density=density)
        idx = sc.topk_indices(x, k)
        auto = choose_index_coder(idx, n)
        encode_indices_auto(idx, n)                                  # JIT warm-up
        choose = _best(lambda: choose_index_coder(idx, n))
        two_scans = _best(lambda: encode_indices(idx, n, choose_index_coder(idx, n)))
        one_scan = _best(lambda: encode_indices_auto(idx, n))
        print(f"density {density:g} (k = {k}): auto picks {auto}; choice alone {1e3 * choose:.3f} ms, "
              f"choose + encode {1e3 * two_scans:.3f} ms, encode_indices_auto {1e3 * one_scan:.3f} ms")
        for coder in CODERS:
            codec = sc.TopK(density=density, index=coder)
            codec.encode(x[:100_000])                                # JIT warm-up
            frame = codec.encode(x)
            bits = frame.sections["index"] / sc.bounds.topk_index_bits(n, k)
            # Two allocator situations: the last frame still alive while the next is made
            # (`frame = codec.encode(x)` in a loop), and every frame dropped at once
            # (`send(codec.encode(x))`). They differ by how much fresh memory the OS has to
            # page in, which at density 0.1 was up to 3 ms of the encode.
            held = _best(lambda: codec.encode(x), 5) / one_pass
            del frame
            dropped = _best(lambda: codec.encode(x), 5) / one_pass
            print(f"    TopK(index={coder!r:9s}) encode {held:6.1f}x one pass with the last frame kept, "
                  f"{dropped:6.1f}x with frames dropped   index bits / bound {bits:.4f}")


if __name__ == "__main__":
    main()
