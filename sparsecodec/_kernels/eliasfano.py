"""Elias-Fano coding of a sorted index set.

With ``L`` low bits per index (derived by the caller from numel and k), the payload is::

    lower  k * L bits: the low L bits of each index, back to back
    upper  a bitmap with a one at position (idx_i >> L) + i for every i, *ending at the last
           one* (the trailing zeros of the textbook layout carry no information)
    pad    zero bits up to the next byte

so it takes ``ceil((k * L + (idx_{k-1} >> L) + k) / 8)`` bytes. The lower bits come first so
that both parts are found without a length field, and decoding is a single pass: each byte of
the upper bitmap is looked up in a 256-entry table of its set-bit positions.
"""

from __future__ import annotations

import numpy as np

from . import ERR_CORRUPT, ERR_ORDER, ERR_RANGE, ERR_TRUNCATED, jit
from .bitio import U64_ONE, flush_bits, peek_bits, put_bits, put_wide, read_bits
from .rawbits import bad_reader_args, padding_status

__all__ = ["ef_encode", "ef_decode", "BIT_COUNT", "BIT_POSITIONS"]


def _bit_tables():
    count = np.zeros(256, np.int64)
    positions = np.zeros((256, 8), np.int64)
    for byte in range(256):
        for t in range(8):
            if byte & (0x80 >> t):  # MSB first: bit 7 of the byte is stream position 0
                positions[byte, count[byte]] = t
                count[byte] += 1
    return count, positions


BIT_COUNT, BIT_POSITIONS = _bit_tables()


@jit
def ef_encode(idx, low_bits, out):
    """Write a *valid* support into the zeroed ``out`` (PAD spare bytes).

    Returns the number of bits written, or ERR_OVERFLOW when ``out`` is too small.
    """
    k = idx.shape[0]
    acc, free, pos = np.uint64(0), 64, 0
    for i in range(k):
        acc, free, pos = put_wide(out, acc, free, pos, np.uint64(idx[i]), low_bits)
    # upper bitmap: before the one of element i come (high_i - high_{i-1}) zeros
    prev_high = 0
    for i in range(k):
        high = idx[i] >> low_bits
        zeros = high - prev_high
        prev_high = high
        while zeros >= 57:
            acc, free, pos = put_bits(out, acc, free, pos, np.uint64(0), 57)
            zeros -= 57
        acc, free, pos = put_bits(out, acc, free, pos, U64_ONE, zeros + 1)
    return flush_bits(out, acc, free, pos)


@jit
def ef_decode(buf, nbytes, numel, k, low_bits, out):
    """Decode ``k`` indices into ``out[:k]``; returns a status code.

    Checks: the lower part fits; every high part is at most ``(numel-1) >> L`` (so the shift
    cannot overflow) and every index is ``< numel`` and larger than the previous one (the
    textbook code also allows repeats); the bitmap holds k ones before the payload ends; the
    stream ends in the last byte with zero padding. Work is O(k + nbytes).
    """
    if bad_reader_args(buf, nbytes, k, out) or low_bits < 0 or low_bits > 62:
        return ERR_CORRUPT
    if k == 0:
        return padding_status(buf, nbytes, 0)
    total = 8 * nbytes
    upper = k * low_bits
    if upper > total:
        return ERR_TRUNCATED
    high_max = (numel - 1) >> low_bits
    first = upper >> 3
    shift = upper & 7
    n_upper_bytes = (total - upper + 7) >> 3
    narrow = 1 <= low_bits <= 57  # one window per low part (L = 0 reads nothing)
    i = 0
    prev = -1
    for j in range(n_upper_bytes):
        # byte j of the bitmap, realigned to the bitmap's start (the zero pad after the
        # payload makes buf[first + j + 1] safe and makes bits past the payload read as 0);
        # unsigned subscripts spare Numba's negative-index checks in this hot loop
        at = np.uint64(first + j)
        byte = np.uint64(((np.int64(buf[at]) << shift) | (np.int64(buf[at + U64_ONE]) >> (8 - shift))) & 0xFF)
        for t in range(BIT_COUNT[byte]):
            pos = 8 * j + BIT_POSITIONS[byte, np.uint64(t)]
            high = pos - i
            if high > high_max:
                return ERR_RANGE
            if narrow:
                low = np.int64(peek_bits(buf, i * low_bits, low_bits))
            else:
                low = np.int64(read_bits(buf, i * low_bits, low_bits))
            v = (high << low_bits) | low
            if v >= numel:
                return ERR_RANGE
            if v <= prev:
                return ERR_ORDER
            out[i] = v
            prev = v
            i += 1
            if i == k:
                return padding_status(buf, nbytes, upper + pos + 1)
    return ERR_TRUNCATED
