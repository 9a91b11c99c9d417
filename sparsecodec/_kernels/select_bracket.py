"""The one-pass bracket kernels of exact top-k selection, and the bit tricks they use.

Split from :mod:`sparsecodec._kernels.select` (which re-exports every name here), with the
conventions described there: magnitude keys, ``spec = (mask, inf_key)``, status codes, every
write checked against its buffer.

``bracket_collect`` scans the keys once: each block of :data:`BLOCK` is reduced to its maximum
(a vectorized integer max), and a block that can hold a selected key is turned into 64-bit
compare masks whose set bits are written straight into the output (``tzcnt``); keys inside the
sampled bracket ``[lo, hi]`` are recorded per block and flushed every :data:`RECORDS` blocks.
``drop_band`` removes the rejected bracket entries; ``band_pass`` counts and collects the
bracket when the first pass overflowed.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from . import ERR_NONFINITE, ERR_OVERFLOW, ERR_RANGE, OK, jit

__all__ = ["BLOCK", "RECORDS", "bracket_collect", "drop_band", "band_pass"]

# Elements per block in the scanning kernels. A block is first reduced to its maximum key
# (a vectorized integer max); only blocks that can contain a selected element are looked
# at element by element. 64 keeps the fraction of blocks that must be inspected small at
# densities around 1e-3 while the reduction still runs at memory speed, and a block's
# compare results fit one uint64 mask (bracket_collect writes its set bits with tzcnt).
BLOCK = 64


@jit(inline="always")
def _block_max(u, mask, base, end):
    """Max raw key of ``u[base:end]``. A full block runs a loop with a constant trip count:
    LLVM vectorizes that reduction, and it runs about twice as fast as a loop of variable
    length (measured), so only the last, partial block takes the general loop."""
    m = mask ^ mask
    if end - base == BLOCK:
        for j in range(BLOCK):
            m = max(m, u[base + j] & mask)
    else:
        for j in range(base, end):
            m = max(m, u[j] & mask)
    return m


@jit
def _canon(v, mask, inf_key):
    return mask if v > inf_key else v


# numba sets DISABLE_JIT at import (from NUMBA_DISABLE_JIT); its config module does not declare it
if getattr(numba.config, "DISABLE_JIT", 0):
    def _ctz(word):
        """Trailing zero bits of a uint64 (64 for 0): the pure-Python twin of the intrinsic."""
        w = int(word)
        return (w & -w).bit_length() - 1 if w else 64

    def _popcount(word):
        """Set bits of a uint64: the pure-Python twin of the intrinsic."""
        return int(word).bit_count()

    def _drop_lowest(word):
        """``word`` without its lowest set bit (0 stays 0, without numpy's underflow warning)."""
        return word & (word - np.uint64(1)) if word else word
else:
    from numba.cpython.unsafe.numbers import trailing_zeros as _cttz

    @intrinsic
    def _ctpop(typingctx, word):
        if word != types.uint64:
            return None

        def codegen(context, builder, signature, args):
            return builder.ctpop(args[0])
        return types.uint64(types.uint64), codegen

    @jit(inline="always")
    def _ctz(word):
        """Trailing zero bits of a uint64 (64 for 0), one ``tzcnt`` instruction. An LLVM
        intrinsic, which plain Python cannot run: NUMBA_DISABLE_JIT=1 runs get the twin
        above. As int64: Numba would turn int64 + uint64 into float64."""
        return np.int64(_cttz(word))

    @jit(inline="always")
    def _popcount(word):
        """Set bits of a uint64, one ``popcnt`` instruction (see ``_ctz``)."""
        return np.int64(_ctpop(word))

    @jit(inline="always")
    def _drop_lowest(word):
        """``word`` without its lowest set bit (``blsr``; 0 wraps harmlessly to 0)."""
        return word & (word - np.uint64(1))


_ONE = np.uint64(1)


@jit(inline="always")
def _block_bits(u, mask, inf_key, allow, base, end, lo, hi):
    """``(status, at_least, above)``: bit j of ``at_least`` is set when key ``base + j``
    is ``>= lo``, of ``above`` when it is ``> hi``. The element loop for a block that is
    partial or holds a NaN/Inf (canonicalized, or ``ERR_NONFINITE``)."""
    at_least = np.uint64(0)
    above = np.uint64(0)
    for j in range(end - base):
        v = u[base + j] & mask
        if v >= inf_key:
            if not allow:
                return ERR_NONFINITE, at_least, above
            v = _canon(v, mask, inf_key)
        at_least |= np.uint64(v >= lo) << np.uint64(j)
        above |= np.uint64(v > hi) << np.uint64(j)
    return OK, at_least, above


# Blocks with band entries are recorded, and their band entries written RECORDS blocks at a
# time in a separate loop while their data is still in L2: interleaved with the writing
# loop of bracket_collect, that work made the whole pass 1.4x slower (measured, density 0.1).
RECORDS = 256


@jit(inline="always")
def _emit(idx, at_least, out, pos):
    """Write ``idx + j`` for each set bit j of ``at_least`` to ``out[pos:]``; return the new
    ``pos`` or ``ERR_OVERFLOW``. The bits are written 8 per turn (the writes past the last
    one are junk, overwritten later), so the loop exit is predictable."""
    count = _popcount(at_least)
    if pos + ((count + 7) & ~7) > out.size:
        return ERR_OVERFLOW
    first = pos
    bits = at_least
    while True:
        out[pos] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 1] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 2] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 3] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 4] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 5] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 6] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        out[pos + 7] = idx + _ctz(bits)
        bits = _drop_lowest(bits)
        pos += 8
        if bits == 0:
            break
    return first + count


@jit(inline="always")
def _emit_values(u, base, at_least, vals, pos):
    """Write the raw keys (the float bits, sign included) of the set bits of ``at_least`` to
    ``vals[pos:]``, 8 per turn like :func:`_emit` (the caller checked the room). The junk
    turns past the last bit read ``u[base + (64 & 63)] = u[base]``: never outside the block."""
    bits = at_least
    while True:
        vals[pos] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 1] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 2] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 3] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 4] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 5] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 6] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        vals[pos + 7] = u[base + (_ctz(bits) & 63)]
        bits = _drop_lowest(bits)
        pos += 8
        if bits == 0:
            break


@jit(inline="always")
def _flush_band(u, mask, inf_key, rec, rec_bits, r, band_pos, band_key, bp):
    """Write the band entries of the ``r`` recorded blocks (``rec[i]``: the block's start
    and the position of its first entry in out; ``rec_bits[i]``: its ``at_least`` and band
    bits). The caller has checked that they fit."""
    for i in range(r):
        base = rec[i, 0]
        first = rec[i, 1]
        at_least = rec_bits[i, 0]
        bits = rec_bits[i, 1]
        while bits != 0:
            j = _ctz(bits)
            band_pos[bp] = first + _popcount(at_least & ((_ONE << np.uint64(j)) - _ONE))
            band_key[bp] = _canon(u[base + j] & mask, mask, inf_key)
            bp += 1
            bits = _drop_lowest(bits)
    return bp


@jit
def bracket_collect(u, spec, allow, lo, hi, offset, out, band_pos, band_key, state, vals):
    """Append ``offset + i`` for every key ``>= lo`` to ``out``, in index order; for each
    of them whose key is also ``<= hi`` (the *band*), append its position in ``out`` to
    ``band_pos`` and its key to ``band_key``.

    ``state = [entries in out, entries in the band]`` is read and updated, so several
    arrays can be passed in turn. When ``vals`` is not empty (it must then be as long as
    ``out``), ``vals[i]`` gets the raw key of ``out[i]`` (the float's bits): the gather of
    the selected values, made while their block is in L1. Returns ``OK``, ``ERR_NONFINITE``, ``ERR_RANGE`` or
    ``ERR_OVERFLOW``: a band entry would not fit, or a block's entries, rounded up to a
    multiple of 8, would not fit in ``out`` (the entries are written 8 at a time; the
    slots past the count hold junk).

    Each block of 64 keys costs one vectorized max reduction; a block that reaches ``lo``
    is turned into 64-bit masks by vectorized compares, and its set bits are written out
    with ``tzcnt``, 8 per iteration, so the cost per selected element is a few cycles and
    no mispredicted branch: at density 0.1 the whole pass costs about 2 reads of the data,
    against 5 for a branch-free compaction of every element (both measured).
    """
    mask, inf_key = spec
    n = u.size
    pos = state[0]
    bp = state[1]
    bcap = min(band_pos.size, band_key.size)
    if pos < 0 or pos > out.size or bp < 0 or bp > bcap or (vals.size and vals.size != out.size):
        return ERR_RANGE
    gather = vals.size > 0
    skip = min(lo, inf_key)   # a block whose max is below both holds nothing and no NaN/Inf
    rec = np.empty((RECORDS, 2), np.int64)
    rec_bits = np.empty((RECORDS, 2), np.uint64)
    r = 0
    pending = bp              # band entries so far, written or recorded
    full = n // BLOCK
    for b in range(full + 1):
        base = b * BLOCK
        if b < full:
            m = _block_max(u, mask, base, base + BLOCK)
            if m < skip:
                continue
        elif base == n:
            break
        else:
            m = inf_key       # the partial last block takes the element loop
        if m >= inf_key:
            status, at_least, above = _block_bits(u, mask, inf_key, allow, base,
                                                  min(base + BLOCK, n), lo, hi)
            if status != OK:
                return status
            if at_least == 0:
                continue
        else:
            at_least = np.uint64(0)
            for j in range(BLOCK):
                at_least |= np.uint64((u[base + j] & mask) >= lo) << np.uint64(j)
            above = np.uint64(0)
            if m > hi:
                for j in range(BLOCK):
                    above |= np.uint64((u[base + j] & mask) > hi) << np.uint64(j)
        first = pos
        pos = _emit(offset + base, at_least, out, pos)
        if pos < 0:
            return pos
        if gather:      # _emit checked that out, as long as vals, had room for the turns
            _emit_values(u, base, at_least, vals, first)
        band = at_least & ~above
        pending += _popcount(band)
        if pending > bcap:
            return ERR_OVERFLOW
        rec[r, 0] = base      # recorded always, kept if the block has band entries: no branch
        rec[r, 1] = first
        rec_bits[r, 0] = at_least
        rec_bits[r, 1] = band
        r += band != 0
        if r == RECORDS:
            bp = _flush_band(u, mask, inf_key, rec, rec_bits, r, band_pos, band_key, bp)
            r = 0
    bp = _flush_band(u, mask, inf_key, rec, rec_bits, r, band_pos, band_key, bp)
    state[0] = pos
    state[1] = bp
    return OK


@jit
def drop_band(out, count, band_pos, band_key, band, t, eq_left, dest, vals, vdest):
    """Write ``out[:count]`` to ``dest`` in order, leaving out the band entries that are not
    chosen: of the band, the entries with key ``> t`` stay, and the first ``eq_left`` with
    key ``== t`` (band order is index order: the lower index wins ties). Returns the number
    written; ``ERR_OVERFLOW`` when ``dest`` is too small; ``ERR_RANGE`` when the arguments
    are inconsistent (positions must increase and lie below ``count``; the entries of
    ``out`` must be >= 0). ``out`` is overwritten.

    Dropped entries are first overwritten with -1 in ``out``, then one branch-free pass
    copies the rest: about half of the band is dropped, in random order, so a branch per
    entry or a copy loop per gap would be mispredicted half of the time (2-3x slower,
    measured). Writing to a new, exact ``dest`` instead of compacting in place lets the
    large ``out`` be freed at once (and its memory reused by the caller's next buffers).

    ``vals`` (parallel to ``out``, see :func:`bracket_collect`) is compacted the same way
    into ``vdest`` (as long as ``dest``); pass two empty arrays to skip the values.
    """
    if count < 0 or count > out.size or band < 0 or band > min(band_pos.size, band_key.size):
        return ERR_RANGE
    gather = vals.size > 0
    if gather and (vals.size < count or vdest.size != dest.size):
        return ERR_RANGE
    first = count             # the first dropped position
    prev = -1
    kept = count
    for i in range(band):
        p = band_pos[i]
        if p <= prev or p >= count or out[p] < 0:
            return ERR_RANGE
        prev = p
        v = band_key[i]
        tie = v == t
        keep = (v > t) | (tie & (eq_left > 0))
        eq_left -= np.int64(tie & keep)
        kept -= np.int64(not keep)
        out[p] |= np.int64(keep) - 1           # -1 when dropped
        first = min(first, count if keep else p)
    if kept > dest.size:
        return ERR_OVERFLOW
    for j in range(first):
        dest[j] = out[j]
    end = count
    while end > first and out[end - 1] < 0:
        end -= 1              # then out[end - 1] is kept: every write below lands < kept
    w = first
    if gather:
        for j in range(first):
            vdest[j] = vals[j]
        for j in range(first, end):
            v = out[j]
            dest[w] = v
            vdest[w] = vals[j]
            w += v >= 0
        return w
    for j in range(first, end):
        v = out[j]
        dest[w] = v
        w += v >= 0
    return w


@jit
def band_pass(u, spec, allow, lo, hi, out_key, state):
    """Count keys ``> hi`` and keys in ``[lo, hi]``; keep the first band keys in ``out_key``.

    ``state[0]`` (band count, may exceed ``out_key.size``: the surplus is counted, not
    stored) and ``state[1]`` (count above ``hi``) are read and updated, so several arrays
    can be passed in turn. Returns ``OK`` or a status code.
    """
    mask, inf_key = spec
    n = u.size
    cap = out_key.size
    c = state[0]
    above = state[1]
    if c < 0 or above < 0:
        return ERR_RANGE
    for b in range((n + BLOCK - 1) // BLOCK):  # not range(0, n, BLOCK): 3x slower
        base = b * BLOCK
        end = min(base + BLOCK, n)
        m = _block_max(u, mask, base, end)
        if m >= inf_key:
            if not allow:
                return ERR_NONFINITE
            m = _canon(m, mask, inf_key)
        if m < lo:
            continue
        full = end - base == BLOCK and m < inf_key
        if full and c + BLOCK <= cap:
            for j in range(BLOCK):
                v = u[base + j] & mask
                above += v > hi
                out_key[c] = v
                c += (v >= lo) & (v <= hi)
        elif full and c >= cap:
            for j in range(BLOCK):
                v = u[base + j] & mask
                above += v > hi
                c += (v >= lo) & (v <= hi)
        else:
            for j in range(base, end):
                v = _canon(u[j] & mask, mask, inf_key)
                if v > hi:
                    above += 1
                elif v >= lo:
                    if c < cap:
                        out_key[c] = v
                    c += 1
    state[0] = c
    state[1] = above
    return OK


