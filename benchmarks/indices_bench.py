"""Index coding: payload bits against ``log2 C(n, k)`` and coder speed, beside baselines.

Every coder and every baseline is run on the same supports in the same process run. Bits
include ``varint(k)`` (the TopK frame sends it in front of the payload), so a ratio of 1.0
means "as small as any coder of k-subsets can be". Baselines: raw int32 (``32 k``), int32
bytes + zstd, int32 gaps + zstd (zstd at the index coder's level, standard frames).

    python -m benchmarks.indices_bench            # prints the tables of the report
"""

from __future__ import annotations

import time

import numpy as np
import zstandard

from sparsecodec.bounds import topk_index_bits
from sparsecodec.frame import encode_varint
from sparsecodec.indices import (INDEX_CODERS, ZSTD_LEVEL, choose_index_coder, decode_indices,
                                 encode_indices, get_index_coder)

__all__ = ["iid_support", "clustered_support", "strided_support", "SUPPORTS", "bench_indices",
           "bench_index_decode", "bench_index_costs"]

#: the row length of the weight matrix the structured supports are cut from
MATRIX_COLS = 1000


def iid_support(n: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """k positions drawn uniformly without replacement (sorted int64)."""
    return np.sort(rng.choice(n, k, replace=False)).astype(np.int64)


def clustered_support(n: int, k: int, rng: np.random.Generator, cols: int = MATRIX_COLS) -> np.ndarray:
    """Whole rows of an ``(n // cols) x cols`` matrix: a few contiguous runs.

    ``ceil(k / cols)`` distinct random rows, the first k of their positions (the last run may
    be cut short). With fewer than ``cols`` positions it is a single run at a random start.
    """
    if k <= cols:
        start = int(rng.integers(0, n - k + 1))
        return np.arange(start, start + k, dtype=np.int64)
    rows = np.sort(rng.choice(n // cols, -(-k // cols), replace=False))
    return (rows[:, None] * cols + np.arange(cols)).reshape(-1)[:k].astype(np.int64)


def strided_support(n: int, k: int, rng: np.random.Generator, cols: int = MATRIX_COLS) -> np.ndarray:
    """Whole columns of an ``(n // cols) x cols`` matrix: the same gaps row after row.

    ``ceil(k / rows)`` distinct random columns; all their positions in row-major order, the
    first k of them (a single column is a pure stride-``cols`` sequence).
    """
    rows = n // cols
    chosen = np.sort(rng.choice(cols, min(cols, -(-k // rows)), replace=False))
    return (np.arange(rows)[:, None] * cols + chosen).reshape(-1)[:k].astype(np.int64)


SUPPORTS = {"iid": iid_support, "clustered": clustered_support, "strided": strided_support}


def _baselines(idx: np.ndarray) -> dict[str, int]:
    cctx = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    as_int32 = idx.astype(np.int32)
    gaps = np.diff(as_int32, prepend=np.int32(0))
    return {"int32": 32 * idx.size,
            "int32_zstd": 8 * len(cctx.compress(as_int32.tobytes())),
            "delta_zstd": 8 * len(cctx.compress(gaps.tobytes()))}


def bench_indices(ns=(10**5, 10**6, 10**7),
                  densities=(1e-5, 1e-4, 1e-3, 1e-2, 2e-2, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5),
                  seed: int = 0, max_encode_s: float = 1.0) -> list[dict]:
    """One row per (n, density, support kind): bits of every coder and baseline vs the bound.

    Columns: ``k``, ``bound_bits`` = log2 C(n, k); per coder the ratio
    ``(8 len(varint k) + payload bits) / bound`` (exact bits in ``row["bits"]``); ``auto``,
    the coder :func:`choose_index_coder` picked, and its ratio; the baselines' ratios.
    Rows with k < 1 are skipped.
    """
    rng = np.random.default_rng(seed)
    rows = []
    for n in ns:
        for density in densities:
            k = int(round(n * density))
            if k < 1:
                continue
            for kind, make in SUPPORTS.items():
                idx = make(n, k, rng)
                varint_bits = 8 * len(encode_varint(k))
                bound = topk_index_bits(n, k)
                # a coder whose table cost says > max_encode_s for this size is left out (None):
                # zstd19 at k = 5e6 would take seconds to tens of seconds per row
                coders = [c for c in INDEX_CODERS
                          if get_index_coder(c).encode_cost.ns(n, k) <= 1e9 * max_encode_s]
                bits = {c: varint_bits + 8 * len(encode_indices(idx, n, c)) for c in coders}
                bits.update({b: v + varint_bits for b, v in _baselines(idx).items()})
                auto = choose_index_coder(idx, n)
                if auto not in bits:
                    bits[auto] = varint_bits + 8 * len(encode_indices(idx, n, auto))
                row = {"n": n, "density": density, "support": kind, "k": k, "bound_bits": bound}
                row.update({c: bits[c] / bound if c in bits else None for c in INDEX_CODERS})
                row.update(auto=auto, auto_ratio=bits[auto] / bound)
                row.update({b: bits[b] / bound for b in ("int32", "int32_zstd", "delta_zstd")})
                row["bits"] = bits
                rows.append(row)
    return rows


def _timings(fn, repeats: int) -> tuple[float, float]:
    """(best, median) wall seconds of ``fn()`` over ``repeats`` runs."""
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times), float(np.median(times))


def bench_index_decode(n: int = 10**7, density: float = 1e-3, repeats: int = 20,
                       seed: int = 0) -> list[dict]:
    """Encode/decode wall time per coder on one iid support, JIT compiled beforehand.

    Decode is ``decode_indices`` as the TopK codec calls it (wrapper included) with a
    preallocated output; ``decode_GBps`` counts the decoded int64 indices (8 bytes each) per
    second of the best run. The last row names the coder ``auto`` picks and the time
    ``choose_index_coder`` takes.
    """
    rng = np.random.default_rng(seed)
    k = int(round(n * density))
    idx = iid_support(n, k, rng)
    out = np.empty(k, np.int64)
    bound = topk_index_bits(n, k)
    rows = []
    for coder in INDEX_CODERS:
        payload = encode_indices(idx, n, coder)                     # warm-up: compiles
        assert np.array_equal(decode_indices(payload, n, k, coder, out=out), idx)
        enc_best, enc_median = _timings(lambda: encode_indices(idx, n, coder), repeats)
        dec_best, dec_median = _timings(lambda: decode_indices(payload, n, k, coder, out=out), repeats)
        rows.append({"coder": coder, "n": n, "k": k, "payload_bits": 8 * len(payload),
                     "ratio": (8 * len(payload) + 8 * len(encode_varint(k))) / bound,
                     "encode_s": enc_best, "encode_s_median": enc_median,
                     "decode_s": dec_best, "decode_s_median": dec_median,
                     "decode_GBps": 8 * k / dec_best / 1e9})
    choose_index_coder(idx, n)
    best, median = _timings(lambda: choose_index_coder(idx, n), repeats)
    rows.append({"coder": f"auto -> {choose_index_coder(idx, n)}", "n": n, "k": k,
                 "encode_s": best, "encode_s_median": median})
    return rows


#: (n, k) points of :func:`bench_index_costs`: k and n vary independently, so that the fixed,
#: per-index and per-element terms of the cost model can be told apart
COST_GRID = ((10**3, 10), (10**4, 100), (10**5, 100), (10**5, 10**4), (10**6, 10**3), (10**6, 10**5), (10**7, 10**3),
             (10**7, 10**4), (10**7, 10**6))


def _fit(points: list[tuple[int, int, float]]) -> tuple[float, float, float]:
    """Non-negative ``(fixed, per index, per element)`` ns fitted to ``(n, k, ns)`` in relative
    error (every point counts alike, whatever its size); a negative term is dropped and the
    rest refitted."""
    terms = [0, 1, 2]
    while True:
        a = np.array([[(1.0, k, n)[t] / ns for t in terms] for n, k, ns in points])
        coef = np.linalg.lstsq(a, np.ones(len(points)), rcond=None)[0]
        if (coef >= 0).all():
            out = [0.0, 0.0, 0.0]
            for t, c in zip(terms, coef):
                out[t] = float(c)
            return out[0], out[1], out[2]
        terms = [t for t, c in zip(terms, coef) if c > 0]


def bench_index_costs(grid=COST_GRID, repeats: int = 5, seed: int = 0,
                      max_slow_k: int = 10**4) -> list[dict]:
    """Measured encode and decode time of every registered coder on iid supports, fitted to
    the table's cost model ``fixed + per_index * k + per_element * numel`` (ns).

    Encode is the record's ``encode`` on a validated support (the one validation scan is
    shared by all coders, so it is left out); decode is ``decode_indices`` with a
    preallocated output, as TopK calls it. Best of ``repeats``. Coders whose table cost says
    they take > 1 us per index (zstd19) are timed only up to ``max_slow_k`` indices. Compare
    the fitted columns with ``encode_cost`` / ``decode_cost`` in each coder's record.
    """
    from sparsecodec.index_coders import registered_index_coders, scan_support

    rng = np.random.default_rng(seed)
    supports = [(n, iid_support(n, k, rng)) for n, k in grid]
    rows = []
    for coder in registered_index_coders():
        enc, dec = [], []
        for n, idx in supports:
            if coder.encode_cost.per_index_ns > 1000 and idx.size > max_slow_k:
                continue
            s = scan_support(idx, n)
            out = np.empty(idx.size, np.int64)
            payload = coder.encode(s)                                   # warm-up: compiles
            decode_indices(payload, n, idx.size, coder.name, out=out)
            enc.append((n, idx.size, 1e9 * _timings(lambda: coder.encode(s), repeats)[0]))
            dec.append((n, idx.size, 1e9 * _timings(
                lambda: decode_indices(payload, n, idx.size, coder.name, out=out), repeats)[0]))
        (ef, ek, en), (df, dk, dn) = _fit(enc), _fit(dec)
        rows.append({"coder": coder.name, "enc_fixed_ns": ef, "enc_ns_per_index": ek,
                     "enc_ns_per_element": en, "dec_fixed_ns": df, "dec_ns_per_index": dk,
                     "dec_ns_per_element": dn,
                     "table_enc": str(coder.encode_cost), "table_dec": str(coder.decode_cost)})
    return rows


def _print(title: str, rows: list[dict]) -> None:
    from benchmarks.__main__ import print_table

    print_table(title, rows)


if __name__ == "__main__":
    _print("Index bits / log2 C(n,k), varint(k) included", bench_indices())
    _print("Index encode/decode (n=1e7, density 1e-3, iid; encode_s of 'auto' = the choice)",
           bench_index_decode())
    _print("Index coder costs fitted to fixed + per index * k + per element * n (ns, iid)",
           bench_index_costs())
