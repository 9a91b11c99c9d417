"""Golomb coding of the gaps of a sorted index set.

Gap ``g_i = idx_i - idx_{i-1} - 1`` (with ``idx_{-1} = -1``), parameter ``m >= 1``. A gap is
``q = g // m`` in unary (q one bits, then a zero) followed by the remainder ``r = g % m`` in
truncated binary: with ``c = ceil(log2 m)`` and ``cutoff = 2**c - m``, remainders below
``cutoff`` take ``c - 1`` bits (value r) and the others ``c`` bits (value ``r + cutoff``).
``m = 1`` is plain unary (``c = cutoff = 0``). The stream is MSB first and zero-padded to a
byte (see :mod:`.bitio`).

The parameter is derived by the caller from (numel, k); nothing but the codewords is sent.
"""

from __future__ import annotations

import numpy as np

from . import ERR_CORRUPT, ERR_ORDER, ERR_OVERFLOW, ERR_RANGE, ERR_TRUNCATED, OK, jit
from .bitio import (U64_ONE, clz64, flush_bits, load_be64, ones_run, peek_bits, put_bits,
                    put_wide, read_bits, store_be64)
from .rawbits import bad_reader_args, padding_status

__all__ = ["golomb_scan", "golomb_encode", "golomb_scan_encode", "golomb_table", "TABLE_MAX", "golomb_bits_bound", "golomb_decode",
           "divmod_m"]


@jit(inline="always")
def divmod_m(gap, m, inv_m):
    """``divmod(gap, m)`` for ``gap >= 0``, with ``inv_m = 1.0 / m`` precomputed.

    A 64-bit integer division costs tens of cycles and the encoders need one per gap; the
    float estimate is off by at most one for ``gap < 2**50`` and is corrected exactly below
    (larger gaps take the plain division).
    """
    if gap >= (1 << 50):
        q = gap // m
        return q, gap - q * m
    q = np.int64(gap * inv_m)
    r = gap - q * m
    if r < 0:
        q -= 1
        r += m
    elif r >= m:
        q += 1
        r -= m
    return q, r


@jit
def golomb_scan(idx, numel, m, c, cutoff):
    """One pass over a support: ``(status, payload bits before padding, repeated gaps)``.

    Validates while it measures: ERR_RANGE for an index < 0 or >= numel, ERR_ORDER for one
    not above its predecessor (the first fault found).
    ``repeated gaps`` counts ``i >= 1`` with ``g_i == g_{i-1}``: the structure statistic the
    automatic coder choice uses to decide whether trying zstd is worth it.
    """
    prev = -1
    prev_gap = -1
    nbits = 0
    repeats = 0
    inv_m = 1.0 / m
    for i in range(idx.shape[0]):
        v = idx[i]
        if v < 0 or v >= numel:
            return ERR_RANGE, 0, 0
        if v <= prev:
            return ERR_ORDER, 0, 0
        gap = v - prev - 1
        q, r = divmod_m(gap, m, inv_m)
        nbits += q + 1 + (c - 1 if r < cutoff else c)
        if gap == prev_gap:
            repeats += 1
        prev_gap = gap
        prev = v
    return OK, nbits, repeats


@jit
def golomb_encode(idx, m, c, cutoff, out):
    """Write the codewords of a *valid* support into the zeroed ``out`` (PAD spare bytes).

    Returns the number of bits written (>= 0), or ERR_OVERFLOW if ``out`` is too small.
    """
    acc, free, pos = np.uint64(0), 64, 0
    inv_m = 1.0 / m
    prev = -1
    for i in range(idx.shape[0]):
        gap = idx[i] - prev - 1
        prev = idx[i]
        q, r = divmod_m(gap, m, inv_m)
        if r < cutoff:
            rbits = c - 1
            code = np.uint64(r)
        else:
            rbits = c
            code = np.uint64(r + cutoff)
        nbits = q + 1 + rbits
        if nbits <= 57:
            # the whole codeword in one append: q ones, a zero, the remainder
            ones = (U64_ONE << np.uint64(q)) - U64_ONE
            acc, free, pos = put_bits(out, acc, free, pos, (ones << np.uint64(rbits + 1)) | code, nbits)
        else:
            rest = q
            while rest > 0:
                n = min(rest, 57)
                acc, free, pos = put_bits(out, acc, free, pos, (U64_ONE << np.uint64(n)) - U64_ONE, n)
                rest -= n
            acc, free, pos = put_bits(out, acc, free, pos, np.uint64(0), 1)
            acc, free, pos = put_wide(out, acc, free, pos, code, rbits)
    return flush_bits(out, acc, free, pos)


def golomb_bits_bound(numel: int, k: int, m: int, c: int) -> int:
    """No valid support of k indices in [0, numel) has more codeword bits than this: the gaps
    sum to at most numel - k, so the unary parts to at most (numel - k) // m, and each
    codeword adds a stop bit and at most c remainder bits."""
    return (numel - k) // m + k * (c + 1)


#: Largest codeword table :func:`golomb_table` builds (gaps below it are looked up).
TABLE_MAX = 1 << 12


def golomb_table(m: int, c: int, cutoff: int) -> tuple[np.ndarray, np.ndarray]:
    """``(words, nbits)``: the codeword of every gap ``g < T`` (right-aligned, as
    :func:`golomb_scan_encode` appends it) and its length, for the largest
    ``T <= TABLE_MAX`` whose codewords all fit 57 bits. Read-only arrays."""
    g = np.arange(min(TABLE_MAX, 57 * m), dtype=np.int64)
    q, r = g // m, g % m
    long_code = r >= cutoff
    rbits = c - 1 + long_code
    nbits = q + 1 + rbits
    fits = int(np.count_nonzero(nbits <= 57))   # nbits grows with g: a prefix fits
    q, r, rbits, long_code = q[:fits], r[:fits], rbits[:fits], long_code[:fits]
    code = (r + np.where(long_code, cutoff, 0)).astype(np.uint64)
    ones = (np.uint64(1) << q.astype(np.uint64)) - np.uint64(1)
    words = (ones << (rbits + 1).astype(np.uint64)) | code
    lengths = nbits[:fits].astype(np.uint8)
    words.flags.writeable = False
    lengths.flags.writeable = False
    return words, lengths


@jit
def golomb_scan_encode(idx, numel, m, c, cutoff, out, table_words, table_nbits):
    """:func:`golomb_scan` and :func:`golomb_encode` in one pass over the support.

    ``out`` holds :func:`golomb_bits_bound` bits plus PAD bytes (it need not be zeroed:
    every byte of the stream is stored). ``table_words`` / ``table_nbits`` are
    :func:`golomb_table`'s for ``(m, c, cutoff)``, or empty arrays. Returns
    ``(status, bits written, repeated gaps)``; on ERR_RANGE / ERR_ORDER ``out`` holds junk.

    Two things made it about 2x faster than its :func:`put_bits` version (3.7 -> 1.8 ms for
    k = 1e6 of n = 1e7; ``encode_indices_auto`` in ``python tools/topk_encode_ratio.py``
    times it today): a gap below the table size takes its codeword from the table (two loads instead
    of a division and the truncated-binary arithmetic), and the writer keeps at most 7
    pending bits: each codeword is ORed into the 64-bit register, the register is stored
    (8 bytes, big-endian) at the current byte, and the whole bytes are shifted out, so
    there is one store per codeword and no branch on the word filling up. Codewords over
    57 bits (a unary run of 57+ ones, one in ~2**57 honest gaps) take the general writer.
    """
    cap = out.shape[0] - 8    # the last byte position an 8-byte store may start at
    tsize = min(table_words.shape[0], table_nbits.shape[0])
    acc = np.uint64(0)        # pending bits, left-aligned
    used = 0                  # how many (0..7 between codewords)
    pos = 0
    inv_m = 1.0 / m
    prev = -1
    prev_gap = -1
    repeats = 0
    for i in range(idx.shape[0]):
        v = idx[i]
        if v < 0 or v >= numel:
            return ERR_RANGE, 0, 0
        if v <= prev:
            return ERR_ORDER, 0, 0
        gap = v - prev - 1
        repeats += gap == prev_gap
        prev_gap = gap
        prev = v
        if pos > cap:
            return OK, ERR_OVERFLOW, repeats
        if gap < tsize:           # 0 <= gap: in bounds of both tables
            word = table_words[gap]
            nbits = np.int64(table_nbits[gap])
        else:
            q, r = divmod_m(gap, m, inv_m)
            long_code = r >= cutoff   # truncated binary, as selects (no coin-flip branch)
            rbits = c - 1 + long_code
            code = np.uint64(r + (cutoff if long_code else 0))
            nbits = q + 1 + rbits
            if nbits > 57:
                # golomb_encode's general writer, copied (as a shared inline helper it made
                # both loops 2-3x slower, measured)
                free = 64 - used
                rest = q
                while rest > 0:
                    n = min(rest, 57)
                    acc, free, pos = put_bits(out, acc, free, pos, (U64_ONE << np.uint64(n)) - U64_ONE, n)
                    rest -= n
                acc, free, pos = put_bits(out, acc, free, pos, np.uint64(0), 1)
                acc, free, pos = put_wide(out, acc, free, pos, code, rbits)
                if pos < 0:
                    return OK, ERR_OVERFLOW, repeats
                used = 64 - free
                while used >= 8:      # back to at most 7 pending bits
                    if pos > cap:
                        return OK, ERR_OVERFLOW, repeats
                    store_be64(out, pos, acc)
                    pos += 1
                    acc = acc << np.uint64(8)
                    used -= 8
                continue
            # q ones, a zero, the remainder
            word = (((U64_ONE << np.uint64(q)) - U64_ONE) << np.uint64(rbits + 1)) | code
        # with used <= 7 and nbits <= 57 the codeword fits the register
        acc |= word << np.uint64(64 - used - nbits)
        used += nbits
        store_be64(out, pos, acc)
        nbytes = used >> 3
        pos += nbytes
        half = np.uint64(nbytes << 2)     # shift by 8 * nbytes (0..64) in two halves:
        acc = (acc << half) << half       # a shift by 64 is undefined in LLVM
        used &= 7
    if used:
        if pos > cap:
            return OK, ERR_OVERFLOW, repeats
        store_be64(out, pos, acc)
    return OK, 8 * pos + used, repeats


@jit
def golomb_decode(buf, nbytes, numel, k, m, c, cutoff, out):
    """Decode ``k`` gaps from ``buf`` into indices ``out[:k]``; returns a status code.

    Hostile input: every gap is checked against the room left below ``numel`` before it
    is added (so nothing overflows), a long unary run is abandoned as soon as it would leave
    the range, reads past the end see zeros and end in ERR_TRUNCATED, and the stream must
    end in the last byte with zero padding (ERR_PADDING otherwise). Work is O(k + nbytes).
    ``(m, c, cutoff)`` must be consistent (``m = 2**c - cutoff``, ``m >= 1``).
    """
    if (bad_reader_args(buf, nbytes, k, out) or c < 0 or c > 63 or cutoff < 0
            or m != (1 << c) - cutoff):
        return ERR_CORRUPT
    total = 8 * nbytes
    bitpos = 0
    prev = -1
    rmask = (U64_ONE << np.uint64(c)) - U64_ONE
    small_m = m <= (1 << 56)  # then q * m cannot overflow for q < 57
    # The next `avail` stream bits, left-aligned in a register (the vacated low bits are 0).
    # Decoding from a register keeps the memory load off the bit-position dependency chain
    # and ctlz avoids a branch per unary bit: ~2x faster than one load per codeword.
    reg = np.uint64(0)
    avail = 0
    for i in range(k):
        room = numel - 2 - prev  # the largest gap that keeps idx_i < numel
        if avail < c + 8:
            reg = load_be64(buf, bitpos >> 3) << np.uint64(bitpos & 7)
            avail = 64 - (bitpos & 7)
        q = clz64(~reg)  # the unary ones; stops at the vacated zeros, so q <= avail
        r = 0
        if q < 57 and small_m and q + 1 + c <= avail:
            # fast path: the whole codeword is in the register
            reg = reg << np.uint64(q + 1)
            nbits = q + 1
            if c > 0:
                x = np.int64(reg >> np.uint64(64 - c))
                # truncated binary, written as selects so LLVM can avoid a coin-flip branch
                head = x >> 1
                long_code = head >= cutoff
                r = x - cutoff if long_code else head
                rbits = c if long_code else c - 1
                reg = reg << np.uint64(rbits)
                nbits += rbits
            avail -= nbits
            bitpos += nbits
            qm = q * m
        else:
            # a codeword that does not fit the register, an astronomically large m, or a
            # unary run longer than 57 bits (probability ~2**-57 for honest data): read from
            # memory, with the run length bounded by the room left
            avail = 0  # refill before the next codeword
            window = peek_bits(buf, bitpos, 57)
            q = clz64(~(window << np.uint64(7)))  # leading ones of the window (<= 57)
            if room < 0:
                return ERR_RANGE
            qmax = room // m
            if q == 57:
                q += ones_run(buf, bitpos + 57, qmax)
            if q > qmax:
                if bitpos + q > total:
                    return ERR_TRUNCATED
                return ERR_RANGE
            qm = q * m
            bitpos += q + 1
            if c > 0:
                used = q + 1 + c
                if used <= 57:
                    x = np.int64((window >> np.uint64(57 - used)) & rmask)
                else:
                    x = np.int64(read_bits(buf, bitpos, c))
                head = x >> 1
                long_code = head >= cutoff
                r = x - cutoff if long_code else head
                bitpos += c if long_code else c - 1
        if bitpos > total:
            return ERR_TRUNCATED
        gap = qm + r
        if gap > room:
            return ERR_RANGE
        prev = prev + 1 + gap
        out[i] = prev
    return padding_status(buf, nbytes, bitpos)
