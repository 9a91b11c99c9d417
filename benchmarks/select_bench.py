"""Top-k selection against its baselines, all measured in the same run, one thread each.

Rows (``seconds`` is the best of ``repeats`` timings; JIT compilation is excluded by a
warm-up call on the same input first):

* ``topk_indices``: ours, exact, ascending indices, lower index wins ties;
* ``torch.topk``: ``torch.topk(torch.from_numpy(x).abs(), k)`` with ``torch.set_num_threads(1)``;
* ``np.argpartition``: ``np.argpartition(np.abs(x), n - k)`` (unordered, ties arbitrary);
* ``x.sum``: one vectorized read of the data, the reference for "one pass";
* small-n rows (n = 100, 1000, 5000): ours and argpartition, each timed over many calls.

    >>> rows = bench_select(n=20_000, density=1e-2, repeats=1, small_sizes=())
    >>> sorted({r["case"] for r in rows})
    ['np.argpartition', 'topk_indices', 'torch.topk', 'x.sum']
"""

from __future__ import annotations

import time

import numpy as np

from sparsecodec.selection import topk_indices

__all__ = ["bench_select"]


def _best(fn, repeats: int, number: int = 1) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(number):
            fn()
        best = min(best, (time.perf_counter() - start) / number)
    return best


def bench_select(n: int = 10**7, density: float = 1e-3, repeats: int = 5, seed: int = 0,
                 small_sizes: tuple = (100, 1000, 5000)) -> list[dict]:
    """Time top-k selection of ``k = max(1, round(density * n))`` on float32 normals."""
    x = np.random.default_rng(seed).standard_normal(n).astype(np.float32)
    k = max(1, round(density * n))
    rows = []

    def row(case, seconds, n_, k_):
        rows.append({"case": case, "n": n_, "k": k_, "seconds": seconds})

    topk_indices(x, k)                               # compile (or load the JIT cache)
    row("topk_indices", _best(lambda: topk_indices(x, k), repeats), n, k)
    try:
        import torch
    except ImportError:                              # torch is an optional dependency
        torch = None
    if torch is not None:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            xt = torch.from_numpy(x)
            torch.topk(xt.abs(), k)
            row("torch.topk", _best(lambda: torch.topk(xt.abs(), k), repeats), n, k)
        finally:
            torch.set_num_threads(threads)
    row("np.argpartition", _best(lambda: np.argpartition(np.abs(x), n - k), repeats), n, k)
    row("x.sum", _best(x.sum, repeats), n, k)

    for small_n in small_sizes:
        xs = np.random.default_rng(seed + small_n).standard_normal(small_n).astype(np.float32)
        ks = max(1, round(density * small_n))
        number = max(20, 200_000 // small_n)
        topk_indices(xs, ks)
        row("topk_indices", _best(lambda: topk_indices(xs, ks), repeats, number), small_n, ks)
        row("np.argpartition",
            _best(lambda: np.argpartition(np.abs(xs), small_n - ks), repeats, number),
            small_n, ks)
    return rows


if __name__ == "__main__":
    for r in bench_select():
        print(f"{r['case']:>16}  n={r['n']:>9}  k={r['k']:>6}  {r['seconds'] * 1e3:9.4f} ms")
