"""Kernels for exact top-k selection by magnitude.

Every kernel works on *magnitude keys*: the float array reinterpreted as unsigned integers
(float32 -> uint32, float64 -> uint64) with the sign bit cleared. For finite values the
unsigned order of the keys is exactly the order of ``|x|`` (IEEE 754 stores non-negative
floats in lexicographic order, denormals and zero included, and -0.0 becomes +0.0), so
comparisons are exact and integer max-reductions vectorize without fastmath. A key
``>= inf_key`` is Inf (``== inf_key``) or NaN (``> inf_key``).

``spec = (mask, inf_key)`` carries the two constants in the key dtype, so the same source
compiles for both widths without mixing signed and unsigned integers (Numba would turn such
a mix into float64). With ``allow`` set, non-finite keys are *canonicalized*: Inf keeps its
key and every NaN becomes ``mask``, the largest key, so that all NaNs tie (lower index wins)
whatever their payload; without it, a non-finite key makes the kernel return
``ERR_NONFINITE``.

``tzcnt`` and ``popcnt`` are LLVM intrinsics (``_ctz``, ``_popcount``); runs with
``NUMBA_DISABLE_JIT=1`` use their pure-Python twins, which the tests' pure-Python rerun
checks against the same references.

The wrappers in :mod:`sparsecodec.selection` size every buffer; the kernels still check
each write against the buffer they were given and return ``ERR_OVERFLOW`` instead of
writing past it, and every loop is bounded by the array sizes.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import types
from numba.extending import intrinsic

from . import ERR_NONFINITE, ERR_OVERFLOW, ERR_RANGE, OK, jit

__all__ = ["BLOCK", "RADIX_BINS", "RECORDS", "max_key", "first_nonfinite", "gather_keys",
           "topk_heap", "topk_small", "bracket_collect", "drop_band", "band_pass",
           "radix_histogram", "collect_threshold"]

# Elements per block in the scanning kernels. A block is first reduced to its maximum key
# (a vectorized integer max); only blocks that can contain a selected element are looked
# at element by element. 64 keeps the fraction of blocks that must be inspected small at
# densities around 1e-3 while the reduction still runs at memory speed, and a block's
# compare results fit one uint64 mask (bracket_collect writes its set bits with tzcnt).
BLOCK = 64
# Radix select uses 16-bit digits: a 65536-bin int64 histogram (512 KiB) stays in L2.
RADIX_BINS = 1 << 16
_DIGIT = np.uint64(RADIX_BINS - 1)


@jit
def max_key(u, spec):
    """Largest raw magnitude key of ``u`` (0 for an empty array); vectorized."""
    mask, inf_key = spec
    m = mask ^ mask
    for b in range((u.size + BLOCK - 1) // BLOCK):
        base = b * BLOCK
        m = max(m, _block_max(u, mask, base, min(base + BLOCK, u.size)))
    return m


@jit
def first_nonfinite(u, spec):
    """Index of the first NaN/Inf in ``u``, or -1 when there is none."""
    mask, inf_key = spec
    for i in range(u.size):
        if (u[i] & mask) >= inf_key:
            return i
    return -1


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


@jit
def gather_keys(u, spec, allow, first, stride, out, pos):
    """Write the keys of ``u[first], u[first + stride], ...`` to ``out[pos:]``.

    Returns the new write position, ``ERR_NONFINITE``, or ``ERR_OVERFLOW`` when ``out`` is
    too small. ``stride = 1, first = 0`` copies all keys (the exact path for small inputs,
    vectorized block by block); a larger stride draws the deterministic sample that the
    threshold is estimated from.
    """
    mask, inf_key = spec
    n = u.size
    if stride < 1 or first < 0 or pos < 0:
        return ERR_RANGE
    stride = min(stride, n + 1)        # so that i + stride cannot overflow
    i = first
    if stride == 1:
        while i + BLOCK <= n and pos + BLOCK <= out.size:
            m = _block_max(u, mask, i, i + BLOCK)
            if m >= inf_key:
                break                   # the element loop below deals with it
            for j in range(BLOCK):
                out[pos + j] = u[i + j] & mask
            i += BLOCK
            pos += BLOCK
    while i < n:
        v = u[i] & mask
        if v >= inf_key:
            if not allow:
                return ERR_NONFINITE
            v = _canon(v, mask, inf_key)
        if pos >= out.size:
            return ERR_OVERFLOW
        out[pos] = v
        pos += 1
        i += stride
    return pos


@jit
def _insertion_sort(a, lo, hi):
    for i in range(lo + 1, hi + 1):
        v = a[i]
        j = i - 1
        while j >= lo and a[j] > v:
            a[j + 1] = a[j]
            j -= 1
        a[j + 1] = v


@jit
def _sift_down(a, lo, root, end):
    while True:
        child = 2 * root + 1
        if child >= end:
            return
        if child + 1 < end and a[lo + child] < a[lo + child + 1]:
            child += 1
        if a[lo + root] < a[lo + child]:
            a[lo + root], a[lo + child] = a[lo + child], a[lo + root]
            root = child
        else:
            return


@jit
def _heapsort(a, lo, hi):
    m = hi - lo + 1
    for start in range(m // 2 - 1, -1, -1):
        _sift_down(a, lo, start, m)
    for end in range(m - 1, 0, -1):
        a[lo], a[lo + end] = a[lo + end], a[lo]
        _sift_down(a, lo, 0, end)


@jit
def _kth_smallest(a, m, p):
    """Reorder ``a[:m]`` so that ``a[:p] <= a[p] <= a[p+1:m]``; return ``a[p]``.

    Quickselect (median of three, Hoare partition: equal keys split evenly, so constant
    input is not quadratic) with a depth budget, after which the remaining range is
    heap-sorted: O(m) expected, O(m log m) worst case, in place.
    """
    lo = 0
    hi = m - 1
    budget = 8
    size = m
    while size > 0:
        budget += 2
        size >>= 1
    while hi - lo > 16:
        if budget == 0:
            _heapsort(a, lo, hi)
            return a[p]
        budget -= 1
        mid = lo + (hi - lo) // 2
        if a[mid] < a[lo]:
            a[mid], a[lo] = a[lo], a[mid]
        if a[hi] < a[lo]:
            a[hi], a[lo] = a[lo], a[hi]
        if a[hi] < a[mid]:
            a[hi], a[mid] = a[mid], a[hi]
        pivot = a[mid]
        i = lo
        j = hi
        # a[lo] <= pivot <= a[hi], and after each swap a[i-1] <= pivot <= a[j+1]: these are
        # the sentinels that keep both scans inside [lo, hi] without index checks.
        while i <= j:
            while a[i] < pivot:
                i += 1
            while a[j] > pivot:
                j -= 1
            if i <= j:
                a[i], a[j] = a[j], a[i]
                i += 1
                j -= 1
        if p <= j:
            hi = j
        elif p >= i:
            lo = i
        else:
            return a[p]
    _insertion_sort(a, lo, hi)
    return a[p]


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
def bracket_collect(u, spec, allow, lo, hi, offset, out, band_pos, band_key, state):
    """Append ``offset + i`` for every key ``>= lo`` to ``out``, in index order; for each
    of them whose key is also ``<= hi`` (the *band*), append its position in ``out`` to
    ``band_pos`` and its key to ``band_key``.

    ``state = [entries in out, entries in the band]`` is read and updated, so several
    arrays can be passed in turn. Returns ``OK``, ``ERR_NONFINITE``, ``ERR_RANGE`` or
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
    if pos < 0 or pos > out.size or bp < 0 or bp > bcap:
        return ERR_RANGE
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
def drop_band(out, count, band_pos, band_key, band, t, eq_left, dest):
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
    """
    if count < 0 or count > out.size or band < 0 or band > min(band_pos.size, band_key.size):
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


@jit
def radix_histogram(u, spec, allow, shift, prefix, prefix_mask, hist):
    """Add to ``hist`` the 16-bit digit ``(key >> shift)`` of every key whose masked
    prefix ``key & prefix_mask`` equals ``prefix``. Returns ``OK`` or a status code."""
    mask, inf_key = spec
    if hist.size < RADIX_BINS:
        return ERR_OVERFLOW
    for i in range(u.size):
        v = u[i] & mask
        if v >= inf_key:
            if not allow:
                return ERR_NONFINITE
            v = _canon(v, mask, inf_key)
        if (v & prefix_mask) == prefix:
            hist[np.int64((v >> shift) & _DIGIT)] += 1
    return OK


@jit
def _find_cut(u, mask, inf_key, t, eq_left):
    """Index of the ``eq_left``-th key equal to ``t`` and 0, or ``(n - 1, eq_left - ties)``
    when ``u`` holds fewer ties: every tie up to the returned index is to be taken."""
    n = u.size
    nan_tie = t > inf_key      # t is the canonical NaN key: every NaN is a tie
    for b in range((n + BLOCK - 1) // BLOCK):
        base = b * BLOCK
        end = min(base + BLOCK, n)
        ties = 0
        # raw keys, so that the count vectorizes: for t <= inf_key a raw key equals t
        # exactly when its canonical key does
        if end - base == BLOCK and not nan_tie:
            for j in range(BLOCK):
                ties += 1 if (u[base + j] & mask) == t else 0
        else:
            for j in range(base, end):
                ties += 1 if _canon(u[j] & mask, mask, inf_key) == t else 0
        if ties < eq_left:
            eq_left -= ties
            continue
        for j in range(base, end):
            if _canon(u[j] & mask, mask, inf_key) == t:
                eq_left -= 1
                if eq_left == 0:
                    return j, eq_left
    return n - 1, eq_left


@jit
def _collect_threshold(u, mask, inf_key, allow, t, offset, out, pos, eq_left):
    n = u.size
    cap = out.size
    # Ties are taken in index order up to `cut`: keys >= t before it, keys > t after it.
    # Locating the cut first keeps the hot loop a plain compare-and-append: at large k
    # about half of the keys are taken, and a branch per key would be mispredicted half
    # of the time.
    cut = -1
    if eq_left > 0:
        cut, eq_left = _find_cut(u, mask, inf_key, t, eq_left)
    for b in range((n + BLOCK - 1) // BLOCK):  # not range(0, n, BLOCK): 3x slower
        base = b * BLOCK
        end = min(base + BLOCK, n)
        m = _block_max(u, mask, base, end)
        if m >= inf_key:
            if not allow:
                return ERR_NONFINITE, eq_left
            m = _canon(m, mask, inf_key)
        if m < t or (m == t and base > cut):
            continue
        fast = m < inf_key and end - base == BLOCK and pos + BLOCK <= cap
        if fast and end - 1 <= cut:
            for j in range(BLOCK):
                out[pos] = offset + base + j
                pos += (u[base + j] & mask) >= t
        elif fast and base > cut:
            for j in range(BLOCK):
                out[pos] = offset + base + j
                pos += (u[base + j] & mask) > t
        else:
            for j in range(base, end):
                v = _canon(u[j] & mask, mask, inf_key)
                if v > t or (v == t and j <= cut):
                    if pos >= cap:
                        return ERR_OVERFLOW, eq_left
                    out[pos] = offset + j
                    pos += 1
    return pos, eq_left


@jit
def collect_threshold(u, spec, allow, t, offset, out, state):
    """Write ``offset + i`` for every key ``> t`` and for the first ``state[1]`` keys
    ``== t`` (lower index wins ties), in index order, from ``out[state[0]]``.

    ``state = [write position, equal keys still to take]`` is updated so that several
    arrays can be passed in turn. Returns ``OK`` or a status code.
    """
    mask, inf_key = spec
    if state[0] < 0 or state[0] > out.size:
        return ERR_RANGE
    pos, eq_left = _collect_threshold(u, mask, inf_key, allow, t, offset, out, state[0], state[1])
    if pos < 0:
        return pos
    state[0] = pos
    state[1] = eq_left
    return OK


@jit
def _worse(key_a, idx_a, key_b, idx_b):
    """Is (key_a, idx_a) ranked below (key_b, idx_b)? Smaller key, or same key, later index."""
    return key_a < key_b or (key_a == key_b and idx_a > idx_b)


@jit
def _heap_sift(heap_key, heap_idx, root, size):
    while True:
        child = 2 * root + 1
        if child >= size:
            return
        if child + 1 < size and _worse(heap_key[child + 1], heap_idx[child + 1],
                                       heap_key[child], heap_idx[child]):
            child += 1
        if not _worse(heap_key[child], heap_idx[child], heap_key[root], heap_idx[root]):
            return
        heap_key[root], heap_key[child] = heap_key[child], heap_key[root]
        heap_idx[root], heap_idx[child] = heap_idx[child], heap_idx[root]
        root = child


@jit
def topk_heap(u, spec, allow, k, heap_key, heap_idx, budget):
    """Exact top-k of one array in a single pass, for small ``k``: a heap of the best ``k``
    seen so far, its root the worst of them. On shuffled data an element is rejected after
    one comparison with the root (only about ``k ln(n/k)`` are inserted); input in
    ascending order would insert every element, so after ``budget`` insertions the kernel
    gives up with ``ERR_OVERFLOW`` and the caller takes another path.

    On success ``heap_idx[:k]`` holds the chosen indices, ascending; returns ``k`` or a
    status code.
    """
    mask, inf_key = spec
    n = u.size
    if k < 1 or k > n or heap_key.size < k or heap_idx.size < k:
        return ERR_RANGE
    for i in range(k):
        v = u[i] & mask
        if v >= inf_key:
            if not allow:
                return ERR_NONFINITE
            v = _canon(v, mask, inf_key)
        heap_key[i] = v
        heap_idx[i] = i
    for root in range(k // 2 - 1, -1, -1):
        _heap_sift(heap_key, heap_idx, root, k)
    inserted = 0
    for i in range(k, n):
        v = u[i] & mask
        if v >= inf_key:
            if not allow:
                return ERR_NONFINITE
            v = _canon(v, mask, inf_key)
        # strictly greater: an equal key comes later than everything in the heap and loses
        if v > heap_key[0]:
            inserted += 1
            if inserted > budget:
                return ERR_OVERFLOW
            heap_key[0] = v
            heap_idx[0] = i
            _heap_sift(heap_key, heap_idx, 0, k)
    _insertion_sort(heap_idx, 0, k - 1)
    return k


@jit
def topk_small(u, spec, allow, k, scratch, out):
    """The whole exact selection for one small array in a single call (no sampling).

    Copies the keys to ``scratch``, finds the k-th largest key ``t`` by quickselect, then
    collects indices ``> t`` plus the lowest-index ties ``== t``. Returns ``k`` or a status.
    """
    mask, inf_key = spec
    n = u.size
    if k < 0 or k > n or scratch.size < n or out.size < k:
        return ERR_RANGE
    if k == 0:
        # still validate: NaN/Inf is refused whatever k is
        if not allow and max_key(u, spec) >= inf_key:
            return ERR_NONFINITE
        return 0
    pos = gather_keys(u, spec, allow, 0, 1, scratch, 0)
    if pos < 0:
        return pos
    t = _kth_smallest(scratch, n, n - k)
    # scratch[n-k+1:] now holds the other k-1 largest keys: count those strictly above t
    above = 0
    for i in range(n - k + 1, n):
        above += scratch[i] > t
    pos, eq_left = _collect_threshold(u, mask, inf_key, allow, t, 0, out, 0, k - above)
    return pos
