"""MSB-first bit reading and writing helpers, small enough for LLVM to inline into kernels.

Conventions shared by every bit-packed index coder:

* bit ``b`` of a stream lives in byte ``b >> 3`` at position ``7 - (b & 7)`` (MSB first), so
  a stream read left to right is the concatenation of its codewords, most significant bit
  of each codeword first;
* writers append codewords to a 64-bit accumulator that is stored eight bytes at a time
  (:func:`put_bits` / :func:`flush_bits`) into a buffer sized exactly plus :data:`PAD` spare
  bytes (cut off afterwards); padding bits are zero by construction;
* readers get the payload copied into a buffer with :data:`PAD` extra zero bytes (see
  :func:`padded`) and never touch a byte outside that buffer: bits past the payload read as
  zero, and the caller compares its final bit position with ``8 * nbytes`` to detect
  truncation. This keeps the hot path free of per-read length checks while staying memory
  safe whatever the bytes say.

All arithmetic on bit windows is done in ``uint64`` with explicit casts: Numba (like NumPy 1)
turns ``uint64 op int64`` into ``float64``, which would silently corrupt the bits.

Example:
    >>> import numpy as np
    >>> buf = np.zeros(1 + PAD, np.uint8)
    >>> acc, free, pos = put_bits(buf, np.uint64(0), 64, 0, np.uint64(0b000), 3)
    >>> acc, free, pos = put_bits(buf, np.uint64(acc), free, pos, np.uint64(0b101), 3)
    >>> flush_bits(buf, np.uint64(acc), free, pos)      # bits in the stream
    6
    >>> format(int(buf[0]), "08b")
    '00010100'
    >>> int(read_bits(padded(buf[:1]), 3, 3))
    5
"""

from __future__ import annotations

import numba
import numpy as np

from . import ERR_OVERFLOW, jit

__all__ = ["PAD", "padded", "load_be64", "peek_bits", "read_bits", "store_be64", "put_bits",
           "put_wide", "flush_bits", "ones_run", "clz64", "U64_ONE"]

#: Spare zero bytes after a payload: readers and writers touch whole 8-byte windows.
PAD = 8
U64_ONE = np.uint64(1)
_MASK8 = np.uint64(0xFF)


def padded(payload) -> np.ndarray:
    """A uint8 copy of ``payload`` followed by :data:`PAD` zero bytes (what readers take)."""
    src = np.frombuffer(payload, np.uint8)
    buf = np.zeros(src.size + PAD, np.uint8)
    buf[:src.size] = src
    return buf


@jit(inline="always")
def load_be64(buf, byte_pos):
    """The 8 bytes at ``byte_pos`` as a big-endian uint64; 0 when they are not all in ``buf``.

    Readers pass the payload followed by :data:`PAD` zero bytes, so every window that overlaps
    real data is complete and a window entirely past the data is rightly 0. (A byte-by-byte
    tail loop here instead makes the hot loops of every decoder ~5x slower: LLVM no longer
    folds the eight loads into one.)
    """
    if 0 <= byte_pos and byte_pos + 8 <= buf.shape[0]:
        # unsigned subscripts skip Numba's negative-index wraparound, so LLVM can fold the
        # eight loads into one unaligned big-endian load (movbe / bswap)
        p = np.uint64(byte_pos)
        return ((np.uint64(buf[p]) << np.uint64(56))
                | (np.uint64(buf[p + np.uint64(1)]) << np.uint64(48))
                | (np.uint64(buf[p + np.uint64(2)]) << np.uint64(40))
                | (np.uint64(buf[p + np.uint64(3)]) << np.uint64(32))
                | (np.uint64(buf[p + np.uint64(4)]) << np.uint64(24))
                | (np.uint64(buf[p + np.uint64(5)]) << np.uint64(16))
                | (np.uint64(buf[p + np.uint64(6)]) << np.uint64(8))
                | np.uint64(buf[p + np.uint64(7)]))
    return np.uint64(0)


@jit(inline="always")
def peek_bits(buf, bitpos, nbits):
    """The ``nbits`` (1..57) bits starting at ``bitpos``, as the low bits of a uint64.

    57 is the widest window one 8-byte load always covers (up to 7 bits of it are skipped).
    """
    word = load_be64(buf, bitpos >> 3) << np.uint64(bitpos & 7)
    return word >> np.uint64(64 - nbits)


@jit(inline="always")
def read_bits(buf, bitpos, nbits):
    """Like :func:`peek_bits` for any width 0..64 (two loads when wider than 57 bits)."""
    if nbits == 0:
        return np.uint64(0)
    if nbits <= 57:
        return peek_bits(buf, bitpos, nbits)
    high = peek_bits(buf, bitpos, nbits - 32)
    low = peek_bits(buf, bitpos + nbits - 32, 32)
    return (high << np.uint64(32)) | low


@jit(inline="always")
def store_be64(buf, byte_pos, word):
    """Store uint64 ``word`` big-endian at ``byte_pos`` (the caller checked the room)."""
    p = np.uint64(byte_pos)
    buf[p] = np.uint8(word >> np.uint64(56))
    buf[p + np.uint64(1)] = np.uint8((word >> np.uint64(48)) & _MASK8)
    buf[p + np.uint64(2)] = np.uint8((word >> np.uint64(40)) & _MASK8)
    buf[p + np.uint64(3)] = np.uint8((word >> np.uint64(32)) & _MASK8)
    buf[p + np.uint64(4)] = np.uint8((word >> np.uint64(24)) & _MASK8)
    buf[p + np.uint64(5)] = np.uint8((word >> np.uint64(16)) & _MASK8)
    buf[p + np.uint64(6)] = np.uint8((word >> np.uint64(8)) & _MASK8)
    buf[p + np.uint64(7)] = np.uint8(word & _MASK8)


@jit(inline="always")
def put_bits(buf, acc, free, pos, value, nbits):
    """Append the low ``nbits`` (0..57) bits of uint64 ``value`` to a bit stream.

    The stream state is ``(acc, free, pos)``: ``acc`` holds pending bits left-aligned with
    ``free`` (1..64) unused low bits, and ``pos`` is the byte offset where ``acc`` will be
    stored once full; start from ``(np.uint64(0), 64, 0)``. Returns the new state. Bits are
    stored eight bytes at a time (no read-modify-write); a store that would leave ``buf``
    is skipped and sets ``pos = -1`` for good, which :func:`flush_bits` reports.
    """
    if nbits <= 0:
        return acc, free, pos
    value = value & ((U64_ONE << np.uint64(nbits)) - U64_ONE)
    if nbits < free:
        return acc | (value << np.uint64(free - nbits)), free - nbits, pos
    spill = nbits - free  # 0..56 bits that do not fit in this word
    acc = acc | (value >> np.uint64(spill))
    if pos < 0 or pos + 8 > buf.shape[0]:
        return acc, free, -1
    store_be64(buf, pos, acc)
    if spill == 0:
        return np.uint64(0), 64, pos + 8
    return value << np.uint64(64 - spill), 64 - spill, pos + 8


@jit(inline="always")
def put_wide(buf, acc, free, pos, value, nbits):
    """:func:`put_bits` for widths up to 64 (two appends when wider than 57 bits)."""
    if nbits > 57:
        acc, free, pos = put_bits(buf, acc, free, pos, value >> np.uint64(32), nbits - 32)
        return put_bits(buf, acc, free, pos, value, 32)
    return put_bits(buf, acc, free, pos, value, nbits)


@jit(inline="always")
def flush_bits(buf, acc, free, pos):
    """Store the pending bits (zero-padded to a byte); returns the stream length in bits.

    ERR_OVERFLOW when any store did not fit. ``buf`` needs :data:`PAD` spare bytes after the
    stream, because the last store is a whole 8-byte word.
    """
    if pos < 0:
        return ERR_OVERFLOW
    if free == 64:
        return 8 * pos
    if pos + 8 > buf.shape[0]:
        return ERR_OVERFLOW
    store_be64(buf, pos, acc)
    return 8 * pos + 64 - free


# numba sets DISABLE_JIT at import (from NUMBA_DISABLE_JIT); its config module does not declare it
if getattr(numba.config, "DISABLE_JIT", 0):
    def clz64(word):
        """Leading zero bits of a uint64 (64 for 0): the pure-Python twin of the intrinsic."""
        return 64 - int(word).bit_length()
else:
    from numba.cpython.unsafe.numbers import leading_zeros as _ctlz

    @jit(inline="always")
    def clz64(word):
        """Leading zero bits of a uint64 (64 for 0), one ``lzcnt``/``bsr`` instruction.

        An LLVM intrinsic, which plain Python cannot run: NUMBA_DISABLE_JIT=1 runs get the
        ``bit_length`` twin above, and tests/test_indices.py checks the two agree.
        """
        return np.int64(_ctlz(word))


@jit(inline="always")
def ones_run(buf, bitpos, limit):
    """How many consecutive 1 bits start at ``bitpos``, counting at most ``limit``.

    For unary runs longer than a window (hostile, or astronomically unlikely in honest
    Golomb data). Bits past the buffer read as 0, so a run always stops there: at most
    ``(8 * len(buf) - bitpos) // 57 + 1`` windows are loaded, whatever the bytes say.
    """
    run = 0
    while run < limit:
        # leading ones of the 57-bit window; its 7 vacated low bits invert to ones, so <= 57
        n = clz64(~(peek_bits(buf, bitpos + run, 57) << np.uint64(7)))
        run += n
        if n < 57:
            break
    return min(run, limit)
