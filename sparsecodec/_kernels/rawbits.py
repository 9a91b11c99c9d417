"""Payload-end checks shared by the bit-packed decoders, and the fixed-width ("raw") coder.

Raw payload: ``k`` indices of ``width`` bits each, MSB first, back to back, zero-padded to a
byte. The width is derived from ``numel`` (``max(1, (numel-1).bit_length())``), never sent.

Decoders here and in the sibling modules take ``(buf, nbytes, ...)``: ``buf`` holds the
``nbytes`` payload bytes followed by at least :data:`~.bitio.PAD` zero bytes
(:func:`~.bitio.padded`); they return ERR_CORRUPT if that is not so.
"""

from __future__ import annotations

import numpy as np

from . import ERR_CORRUPT, ERR_ORDER, ERR_PADDING, ERR_RANGE, ERR_TRUNCATED, OK, jit
from .bitio import PAD, flush_bits, put_wide, read_bits

__all__ = ["padding_status", "bad_reader_args", "raw_encode", "raw_decode"]


@jit
def bad_reader_args(buf, nbytes, k, out):
    """True when a decoder's buffers cannot be used safely (caller bug, not hostile data)."""
    return nbytes < 0 or buf.shape[0] < nbytes + PAD or k < 0 or out.shape[0] < k


@jit
def padding_status(buf, nbytes, end_bit):
    """How a bitstream that ends at ``end_bit`` fits a payload of ``nbytes`` bytes.

    OK when the payload is exactly ``ceil(end_bit / 8)`` bytes and the padding bits after
    ``end_bit`` are zero; ERR_TRUNCATED when it is shorter; ERR_PADDING otherwise.
    """
    need = (end_bit + 7) >> 3
    if nbytes < need:
        return ERR_TRUNCATED
    if nbytes > need:
        return ERR_PADDING
    spare = 8 * nbytes - end_bit
    if spare > 0 and (buf[nbytes - 1] & ((1 << spare) - 1)) != 0:
        return ERR_PADDING
    return OK


@jit
def raw_encode(idx, width, out):
    """Pack a *valid* support at ``width`` (1..64) bits per index into the zeroed ``out``.

    Returns the number of bits written, or ERR_OVERFLOW when ``out`` (which needs PAD spare
    bytes) is too small.
    """
    acc, free, pos = np.uint64(0), 64, 0
    for i in range(idx.shape[0]):
        acc, free, pos = put_wide(out, acc, free, pos, np.uint64(idx[i]), width)
    return flush_bits(out, acc, free, pos)


@jit
def raw_decode(buf, nbytes, numel, k, width, out):
    """Unpack ``k`` indices of ``width`` (1..63) bits into ``out[:k]``; a status code.

    The payload length is checked first (exactly ``ceil(k * width / 8)`` bytes, zero
    padding), then each index against ``numel`` and its predecessor.
    """
    if bad_reader_args(buf, nbytes, k, out) or width < 1 or width > 63:
        return ERR_CORRUPT
    status = padding_status(buf, nbytes, k * width)
    if status != OK:
        return status
    prev = -1
    for i in range(k):
        v = np.int64(read_bits(buf, i * width, width))
        if v >= numel:
            return ERR_RANGE
        if v <= prev:
            return ERR_ORDER
        out[i] = v
        prev = v
    return OK
