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

``tzcnt`` and ``popcnt`` are LLVM intrinsics (``_ctz``, ``_popcount``, in
:mod:`sparsecodec._kernels.select_bracket` with the one-pass kernels that use them); runs with
``NUMBA_DISABLE_JIT=1`` use their pure-Python twins, which the tests' pure-Python rerun
checks against the same references.

The wrappers in :mod:`sparsecodec.selection` size every buffer; the kernels still check
each write against the buffer they were given and return ``ERR_OVERFLOW`` instead of
writing past it, and every loop is bounded by the array sizes.
"""

from __future__ import annotations

import numpy as np

from . import ERR_NONFINITE, ERR_OVERFLOW, ERR_RANGE, OK, jit
from .select_bracket import (BLOCK, RECORDS, _block_max, _canon, band_pass, bracket_collect,  # noqa: F401
                             drop_band)

__all__ = ["BLOCK", "RADIX_BINS", "RECORDS", "max_key", "first_nonfinite", "gather_keys",
           "topk_heap", "topk_small", "bracket_collect", "drop_band", "band_pass",
           "radix_histogram", "collect_threshold"]

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
