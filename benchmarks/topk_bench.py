"""Whole-codec figures: TopK.encode time vs one pass over the input, and its peak memory.

Time is measured in the same process run as its reference (``x.sum()``), after JIT warm-up,
single-threaded. Peak memory is measured in a fresh subprocess (:func:`bench_topk_memory`)
two ways: the growth of the process's own resident high-water mark (``VmHWM``, every
allocator: NumPy, Numba's NRT, zstd) and tracemalloc's peak (NumPy's and Python's
allocations, exactly, but not Numba's).
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


# Why not ru_maxrss: on Linux, getrusage(RUSAGE_SELF).ru_maxrss is max(signal->maxrss, the
# mm's high-water mark), and execve copies the *pre-exec* image's high-water mark (the forked
# parent's) into signal->maxrss. A child of a benchmark runner that already peaked at a few
# hundred MB starts with that ru_maxrss, and an encode needing less never moves it: the old
# "RSS growth 0 B". /proc/self/status VmHWM is the high-water mark of this process's own mm
# (new at exec), and writing "5" to /proc/self/clear_refs (Linux >= 4.0) resets it to the
# current RSS, so after the warm-up the baseline is the live RSS and the growth is the encode's
# own peak. Where the reset is refused the RSS figure is reported as None (not 0).
# MALLOC_MMAP_THRESHOLD_ (set by the parent) fixes glibc's mmap threshold at 64 KiB: blocks at
# least that large are mmapped fresh and unmapped on free, so the warm-up's freed buffers are
# not resident at the baseline (glibc's dynamic threshold would otherwise rise to 32 MiB after
# the first free, and later buffers could reuse resident heap, hiding part of the peak).
# tracemalloc runs on a second encode: its own bookkeeping is malloc'd and would inflate VmHWM.
_MEM_SCRIPT = r"""
import json, sys, tracemalloc, numpy as np, sparsecodec as sc

def status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)

def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

n, density = int(sys.argv[1]), float(sys.argv[2])
# float32 straight from the generator: no float64 temporary
x = np.random.default_rng(0).standard_normal(n, dtype=np.float32)
codec = sc.TopK(density=density)
codec.encode(x)       # full-size warm-up: compiles what this n and k use (auto's choice included)
rss_peak = None
if reset_hwm():
    before = status_kib("VmRSS")
    frame = codec.encode(x)
    rss_peak = (status_kib("VmHWM") - before) * 1024
    del frame
tracemalloc.start()
frame = codec.encode(x)
traced_peak = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"peak_extra_bytes_rss": rss_peak, "peak_extra_bytes_tracemalloc": traced_peak,
                  "rss_method": "VmHWM growth after clear_refs reset" if rss_peak is not None else "unavailable",
                  "input_bytes": x.nbytes, "output_bytes": len(frame)}))
"""


def bench_topk_memory(n: int = 10**7, density: float = 1e-3) -> list[dict]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
           "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run([sys.executable, "-c", _MEM_SCRIPT, str(n), str(density)], check=True,
                         capture_output=True, text=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row.update(case="TopK.encode peak memory", n=n, density=density,
               limit_bytes=4 * n + row["output_bytes"])
    # RSS growth catches Numba's (untraced) allocations, tracemalloc NumPy's: both must fit
    measured = [v for v in (row["peak_extra_bytes_rss"], row["peak_extra_bytes_tracemalloc"]) if v is not None]
    row["within_limit"] = max(measured) <= row["limit_bytes"]
    return [row]
