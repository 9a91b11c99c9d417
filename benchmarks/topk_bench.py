"""Whole-codec figures: TopK.encode time vs one pass over the input, and its peak memory.

Both are measured in the same process run as their reference (``x.sum()``), after JIT
warm-up, single-threaded. Peak memory is measured in a fresh subprocess two ways: growth of
``ru_maxrss`` (every allocator, NumPy, Numba's NRT and zstd included, as long as the block
is large enough to be mmapped fresh) and tracemalloc's peak (NumPy's and Python's
allocations, exactly).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

import sparsecodec as sc


def _best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def bench_topk_encode(n: int = 10**7, density: float = 1e-3, repeats: int = 7, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(n).astype(np.float32)
    codec = sc.TopK(density=density)
    codec.encode(x[:100_000])            # JIT warm-up (compilation excluded from timings)
    frame = codec.encode(x)
    data = bytes(frame)
    codec.decode(data)
    t_sum = _best(lambda: x.sum(), repeats)
    t_enc = _best(lambda: codec.encode(x), repeats)
    t_dec = _best(lambda: codec.decode(data), repeats)
    k = frame.meta["k"]
    bound = sc.bounds.topk_index_bits(n, k)
    return [{
        "case": "TopK.encode", "n": n, "k": k, "seconds": t_enc, "x.sum_seconds": t_sum,
        "ratio_to_sum": t_enc / t_sum, "decode_seconds": t_dec,
        "sections": dict(frame.sections), "nbits": frame.nbits, "index_bound_bits": bound,
        "index_ratio": frame.sections["index"] / bound,
        "raw_bits_k(32+ceil(log2 n))": k * (32 + int(np.ceil(np.log2(n)))),
        "bitmap_plus_values_bits": n + 32 * k,
    }]


_MEM_SCRIPT = r"""
import json, resource, sys, tracemalloc, numpy as np, sparsecodec as sc
n, density = int(sys.argv[1]), float(sys.argv[2])
# float32 straight from the generator: no float64 temporary inflating the high-water mark
x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
codec = sc.TopK(density=density)
codec.encode(x[:100_000]); codec.encode(x[:200_000])      # compile + warm caches
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
tracemalloc.start()
frame = codec.encode(x)
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
print(json.dumps({"peak_extra_bytes_rss": after - before, "peak_extra_bytes_tracemalloc": traced_peak,
                  "input_bytes": x.nbytes, "output_bytes": len(frame)}))
"""


def bench_topk_memory(n: int = 10**7, density: float = 1e-3) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(n), str(density)], check=True,
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(case="TopK.encode peak memory", n=n, density=density,
               limit_bytes=4 * n + row["output_bytes"])
    # RSS growth catches Numba's (untraced) allocations, tracemalloc NumPy's: both must fit
    row["within_limit"] = max(row["peak_extra_bytes_rss"], row["peak_extra_bytes_tracemalloc"]) <= row["limit_bytes"]
    return [row]
