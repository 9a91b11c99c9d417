"""Exact enumerative coding of small index sets: ``ceil(sum_t log2 C(n_t, k_t))`` bits in all.

A k-subset ``c_1 < c_2 < ... < c_k`` of ``[0, n)`` has the combinadic rank
``r = sum_i C(c_i, i)`` (i from 1), a bijection onto ``[0, C(n, k))``. Several subsets (one
per tensor of a message) are joined into one mixed-radix integer
``R = r_1 + C_1 * (r_2 + C_2 * (r_3 + ...))`` written in ``ceil(log2(prod C_t) / 8)`` bytes,
so a whole message's small supports cost at most 7 padding bits above
``sum_t log2 C(n_t, k_t)``: no per-tensor byte alignment, no lengths, no flush bytes.

Python integers do the arithmetic (``math.comb`` is exact); decoding searches each ``c_i``
by bisection, ``O(k log n)`` binomials, so this is used for small ``k`` only
(:data:`ENUM_MAX_K` per tensor); larger supports go to the Numba index coders, which are
within 1 % of the bound there.

    >>> import numpy as np
    >>> sets = [(np.array([3, 17], np.int64), 100), (np.array([0], np.int64), 5)]
    >>> data = encode_ranks(sets)
    >>> len(data), ranks_bytes([(100, 2), (5, 1)])      # log2(C(100,2) * 5) = 14.6 bits
    (2, 2)
    >>> [x.tolist() for x in decode_ranks(data, [(100, 2), (5, 1)])]
    [[3, 17], [0]]
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from .errors import ConfigError, CorruptFrameError

__all__ = ["ENUM_MAX_K", "rank_subset", "unrank_subset", "encode_ranks", "decode_ranks",
           "ranks_bytes", "ranks_bits", "radix_product"]

#: Supports with at most this many entries are ranked exactly; larger ones use index coders.
ENUM_MAX_K = 48


def rank_subset(idx: np.ndarray, numel: int) -> int:
    """Combinadic rank of a strictly increasing support ``idx`` of ``[0, numel)``."""
    r = 0
    prev = -1
    for i, c in enumerate(idx.tolist(), start=1):
        if c <= prev or c >= numel:
            raise ConfigError(f"support must be strictly increasing in [0, {numel}), got {c} after {prev}")
        r += math.comb(c, i)
        prev = c
    return r


def unrank_subset(r: int, numel: int, k: int) -> np.ndarray:
    """The support of rank ``r`` (the caller guarantees ``0 <= r < C(numel, k)``)."""
    out = np.empty(k, np.int64)
    hi = numel                      # c_i < hi
    for i in range(k, 0, -1):
        lo = i - 1                  # C(i-1, i) = 0 <= r always
        top = hi - 1
        while lo < top:             # largest c in [lo, top] with C(c, i) <= r
            mid = (lo + top + 1) >> 1
            if math.comb(mid, i) <= r:
                lo = mid
            else:
                top = mid - 1
        out[i - 1] = lo
        r -= math.comb(lo, i)
        hi = lo
    return out


def radix_product(shapes: Sequence[tuple[int, int]]) -> int:
    """``prod_t C(n_t, k_t)``: the number of possible messages' supports."""
    p = 1
    for n, k in shapes:
        p *= math.comb(int(n), int(k))
    return p


def ranks_bits(shapes: Sequence[tuple[int, int]]) -> int:
    """Bits of the mixed-radix integer before byte padding: ``ceil(log2 prod C)``."""
    return (radix_product(shapes) - 1).bit_length()


def ranks_bytes(shapes: Sequence[tuple[int, int]]) -> int:
    """Bytes the joined ranks occupy (0 when every support is implied, e.g. k = 0 or n)."""
    return (ranks_bits(shapes) + 7) // 8


def encode_ranks(sets: Sequence[tuple[np.ndarray, int]]) -> bytes:
    """Join the ranks of ``[(idx, numel), ...]`` into one little-endian integer."""
    total = 0
    for idx, numel in reversed(sets):
        total = total * math.comb(int(numel), int(idx.size)) + rank_subset(idx, int(numel))
    nbytes = ranks_bytes([(n, i.size) for i, n in sets])
    return total.to_bytes(nbytes, "little")


def decode_ranks(data, shapes: Sequence[tuple[int, int]]) -> list[np.ndarray]:
    """Inverse of :func:`encode_ranks` for ``shapes = [(numel, k), ...]``; validates.

    The stored integer must be below ``prod C(n_t, k_t)`` (so padding bits are zero and every
    rank is in range): anything else is a :class:`~sparsecodec.errors.CorruptFrameError`.
    """
    nbytes = ranks_bytes(shapes)
    if len(data) != nbytes:
        raise CorruptFrameError(f"index ranks need {nbytes} bytes, got {len(data)}")
    total = int.from_bytes(bytes(data), "little")
    if total >= radix_product(shapes):
        raise CorruptFrameError("index ranks out of range: corrupt or crafted message")
    out = []
    for numel, k in shapes:
        radix = math.comb(int(numel), int(k))
        total, r = divmod(total, radix)
        out.append(unrank_subset(r, int(numel), int(k)))
    return out
