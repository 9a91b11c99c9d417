"""LEB128 gap streams (the byte layout under the zstd index coder) and a zstd frame walker.

Gap stream: ``g_i = idx_i - idx_{i-1} - 1`` (``idx_{-1} = -1``) as unsigned LEB128 varints in
canonical (shortest) form, back to back. Why this layout: the gaps of a strided support are
one repeated byte string and those of a clustered support are mostly ``0x00``, which zstd's
match finder reduces to almost nothing, while the varints keep the raw stream short when it
does not (a fixed-width layout would hand zstd 3-4 bytes per gap).

:func:`zstd_blocks_end` walks the block headers of a zstd frame so the wrapper can demand
that the payload is *exactly* one frame (the zstd library silently ignores trailing bytes).
"""

from __future__ import annotations

import numpy as np

from . import ERR_CORRUPT, ERR_OVERFLOW, ERR_PADDING, ERR_RANGE, ERR_TRUNCATED, OK, jit

__all__ = ["gap_varints_encode", "gap_varints_decode", "zstd_blocks_end"]


@jit
def gap_varints_encode(idx, out):
    """Write the gaps of a *valid* support as LEB128 into ``out``; bytes written or ERR_OVERFLOW."""
    nbytes = out.shape[0]
    pos = 0
    prev = -1
    for i in range(idx.shape[0]):
        gap = idx[i] - prev - 1
        prev = idx[i]
        while True:
            if pos >= nbytes:
                return ERR_OVERFLOW
            if gap < 0x80:
                out[pos] = np.uint8(gap)
                pos += 1
                break
            out[pos] = np.uint8((gap & 0x7F) | 0x80)
            pos += 1
            gap >>= 7
    return pos


@jit
def gap_varints_decode(buf, numel, k, out):
    """Decode exactly ``k`` canonical gap varints filling all of ``buf``; a status code.

    ERR_TRUNCATED when the bytes end early, ERR_CORRUPT for a non-canonical or over-long
    (> 9 bytes, 63 bits) varint, ERR_RANGE when an index would reach ``numel`` (checked
    before the addition, so nothing overflows), ERR_PADDING for bytes left over.
    """
    nbytes = buf.shape[0]
    if out.shape[0] < k:
        return ERR_RANGE
    pos = 0
    prev = -1
    for i in range(k):
        gap = 0
        shift = 0
        while True:
            if pos >= nbytes:
                return ERR_TRUNCATED
            byte = np.int64(buf[pos])
            pos += 1
            gap |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0 and shift > 0:
                    return ERR_CORRUPT
                break
            shift += 7
            if shift > 56:
                return ERR_CORRUPT
        if gap > numel - 2 - prev:
            return ERR_RANGE
        prev = prev + 1 + gap
        out[i] = prev
    if pos != nbytes:
        return ERR_PADDING
    return OK


@jit
def zstd_blocks_end(buf, start):
    """Offset just past the last block of a zstd frame whose blocks begin at ``start``.

    Each block is a 3-byte little-endian header (bit 0: last block, bits 1-2: type, bits
    3-23: size) followed by ``size`` bytes (raw, compressed) or 1 byte (RLE). Returns the end
    offset (>= 0), ERR_TRUNCATED or ERR_CORRUPT (reserved block type). Each step advances
    at least 3 bytes, so the walk ends.
    """
    nbytes = buf.shape[0]
    pos = start
    while True:
        if pos < 0 or pos + 3 > nbytes:
            return ERR_TRUNCATED
        header = np.int64(buf[pos]) | (np.int64(buf[pos + 1]) << 8) | (np.int64(buf[pos + 2]) << 16)
        pos += 3
        block_type = (header >> 1) & 3
        if block_type == 3:
            return ERR_CORRUPT
        size = 1 if block_type == 1 else header >> 3
        if pos + size > nbytes:
            return ERR_TRUNCATED
        pos += size
        if header & 1:
            return pos
