"""Slow, obvious references for top-k selection and for each kernel in
``sparsecodec._kernels.select``. Plain Python loops over plain Python numbers: no blocks,
no sampling, no cleverness. The tests compare the fast code to these element for element.
"""

from __future__ import annotations

import math

import numpy as np

from sparsecodec._kernels import ERR_NONFINITE, ERR_OVERFLOW, OK
from sparsecodec._kernels.select import BLOCK, RADIX_BINS

KEY_DTYPE = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}
MASK = {np.uint32: 0x7FFF_FFFF, np.uint64: 0x7FFF_FFFF_FFFF_FFFF}
INF_KEY = {np.uint32: 0x7F80_0000, np.uint64: 0x7FF0_0000_0000_0000}


# --- the definition of the result --------------------------------------------------------

def rank(v: float, allow_nonfinite: bool = False):
    """Sort key of one value: larger magnitude ranks first (NaN > inf > finite)."""
    if math.isnan(v):
        if not allow_nonfinite:
            raise ValueError("NaN")
        return (2, 0.0)
    if math.isinf(v):
        if not allow_nonfinite:
            raise ValueError("inf")
        return (1, 0.0)
    return (0, abs(v))


def topk_reference(x, k: int, allow_nonfinite: bool = False) -> np.ndarray:
    """Ascending positions of the k largest |x|; among equal magnitudes the lower index."""
    vals = [float(v) for v in x]

    def order_key(i):           # descending rank, then ascending index
        return tuple(-c for c in rank(vals[i], allow_nonfinite)), i
    order = sorted(range(len(vals)), key=order_key)
    return np.array(sorted(order[:k]), dtype=np.int64)


def topk_global_reference(arrays, k: int, allow_nonfinite: bool = False) -> list[np.ndarray]:
    """The same on the concatenation, split back into per-array local indices."""
    pos = topk_reference(np.concatenate([np.asarray(a, np.float64) for a in arrays])
                         if arrays else np.zeros(0), k, allow_nonfinite)
    parts, start = [], 0
    for a in arrays:
        sel = pos[(pos >= start) & (pos < start + len(a))]
        parts.append((sel - start).astype(np.int64))
        start += len(a)
    return parts


def topk_lexsort(x, k: int) -> np.ndarray:
    """The same definition, vectorized, for the large deterministic cases (finite x)."""
    mag = np.abs(np.asarray(x, dtype=np.float64))
    return np.sort(np.lexsort((np.arange(mag.size), -mag))[:k]).astype(np.int64)


# --- keys ------------------------------------------------------------------------------------

def keys_of(x) -> list[int]:
    """Raw magnitude keys: the float bits with the sign bit cleared, as Python ints."""
    kd = KEY_DTYPE[np.asarray(x).dtype]
    return [int(b) & MASK[kd] for b in np.asarray(x).view(kd)]


def canon(key: int, kd) -> int:
    """Every NaN key becomes the largest key, so NaNs tie whatever their payload."""
    return MASK[kd] if key > INF_KEY[kd] else key


def _blocks(n):
    return [(b, min(b + BLOCK, n)) for b in range(0, n, BLOCK)]


def _block_refused(keys, kd, allow, base, end):
    return (not allow) and any(keys[j] >= INF_KEY[kd] for j in range(base, end))


# --- one reference per kernel ------------------------------------------------------------------

def gather_keys_ref(x, allow, first, stride, cap, pos):
    """(return value, keys written) of ``gather_keys``."""
    kd = KEY_DTYPE[x.dtype]
    keys = keys_of(x)
    written = []
    for i in range(first, len(keys), stride):
        if keys[i] >= INF_KEY[kd] and not allow:
            return ERR_NONFINITE, written
        if pos + len(written) >= cap:
            return ERR_OVERFLOW, written
        written.append(canon(keys[i], kd))
    return pos + len(written), written


def bracket_collect_ref(x, allow, lo, hi, offset, cap, band_cap, pos, bp):
    """(status, indices written, [(position in out, key)] of the band) of
    ``bracket_collect``; block by block, because a refused non-finite value is reported as
    soon as its block is reached and a block's entries are reserved 8 at a time."""
    kd = KEY_DTYPE[x.dtype]
    keys = keys_of(x)
    written, band = [], []
    if not (0 <= pos <= cap and 0 <= bp <= band_cap):
        return ERR_RANGE, written, band
    for base, end in _blocks(len(keys)):
        if _block_refused(keys, kd, allow, base, end):
            return ERR_NONFINITE, written, band
        chosen = [j for j in range(base, end) if canon(keys[j], kd) >= lo]
        if not chosen:
            continue
        if pos + len(written) + -(-len(chosen) // 8) * 8 > cap:
            return ERR_OVERFLOW, written, band
        for j in chosen:
            v = canon(keys[j], kd)
            if v <= hi:
                if bp + len(band) >= band_cap:
                    return ERR_OVERFLOW, written, band
                band.append((pos + len(written), v))
            written.append(offset + j)
    return OK, written, band


def drop_band_ref(out, band, t, eq_left):
    """``out`` without the band entries ``(position, key)`` that are not chosen: keys > t
    stay, and the first ``eq_left`` keys == t (band order)."""
    dropped = set()
    for p, v in band:
        if v > t:
            continue
        if v == t and eq_left > 0:
            eq_left -= 1
            continue
        dropped.add(p)
    return [v for i, v in enumerate(out) if i not in dropped]


def band_pass_ref(x, allow, lo, hi, cap, state):
    """(status, new state, band keys stored) of ``band_pass``."""
    kd = KEY_DTYPE[x.dtype]
    keys = keys_of(x)
    band, above = state
    stored = []
    if any(k >= INF_KEY[kd] for k in keys) and not allow:
        return ERR_NONFINITE, None, None
    for key in keys:
        v = canon(key, kd)
        if v > hi:
            above += 1
        elif v >= lo:
            if band < cap:
                stored.append(v)
            band += 1
    return OK, (band, above), stored


def radix_histogram_ref(x, allow, shift, prefix, prefix_mask):
    """(status, {digit: count}) of ``radix_histogram``."""
    kd = KEY_DTYPE[x.dtype]
    hist = {}
    for key in keys_of(x):
        if key >= INF_KEY[kd] and not allow:
            return ERR_NONFINITE, None
        v = canon(key, kd)
        if v & prefix_mask == prefix:
            d = (v >> shift) % RADIX_BINS
            hist[d] = hist.get(d, 0) + 1
    return OK, hist


def collect_threshold_ref(x, allow, t, offset, cap, pos, eq_left):
    """(status, written, eq_left) of ``collect_threshold``."""
    kd = KEY_DTYPE[x.dtype]
    keys = keys_of(x)
    written = []
    for base, end in _blocks(len(keys)):
        if _block_refused(keys, kd, allow, base, end):
            return ERR_NONFINITE, written, eq_left
        for j in range(base, end):
            v = canon(keys[j], kd)
            if v > t or (v == t and eq_left > 0):
                eq_left -= v == t
                if pos + len(written) >= cap:
                    return ERR_OVERFLOW, written, eq_left
                written.append(offset + j)
    return OK, written, eq_left


def heap_insertions_ref(x, k, allow=False) -> int:
    """How many elements after the first k enter the running top k (what ``topk_heap``
    counts against its budget): element i enters when it ranks in the top k of x[:i+1]."""
    kd = KEY_DTYPE[x.dtype]
    keys = [canon(v, kd) for v in keys_of(x)]
    best = sorted(((-keys[i], i) for i in range(k)))
    count = 0
    for i in range(k, len(keys)):
        if (-keys[i], i) < best[-1]:
            count += 1
            best[-1] = (-keys[i], i)
            best.sort()
    return count
