"""Exact top-k selection by magnitude, per array and across several arrays.

The result is *defined* by a total order, so it never depends on the algorithm:

* larger ``|x|`` first; ``-0.0`` and ``+0.0`` are equal magnitudes;
* among equal magnitudes the **lower index wins** (for :func:`topk_indices_global`, the
  lower position in the concatenation of the arrays, in the order given);
* indices are returned sorted **ascending** (the order index coders want).

NaN or Inf anywhere in the input is a :class:`~sparsecodec.ConfigError`: an update that
contains them is broken and must be cleaned by the caller. With ``allow_nonfinite=True``
they are ranked instead: ``+inf`` and ``-inf`` have the largest magnitude, every NaN (any
sign or payload) ranks above them, and ties among them again go to the lower index.

How it is fast (the kernels live in :mod:`sparsecodec._kernels.select`): magnitudes are
compared as unsigned integers (the float bits with the sign cleared), which is exact and
needs no ``np.abs`` copy. A bracket ``lo <= t <= hi`` around the k-th largest magnitude
``t`` is estimated from a deterministic strided sample; one pass writes the positions of
all elements ``>= lo`` straight into the output (blocks of 64 whose maximum is below
``lo`` are skipped after a vectorized reduction; the others become 64-bit masks whose set
bits are written with ``tzcnt``) and keeps the few keys inside the bracket; the exact
``t`` is found among those, and the bracket entries it rejects are removed in place.
:func:`topk_select` (what :class:`~sparsecodec.TopK` calls) has the same pass write the
selected values too, while their block is in L1, instead of reading ``x`` again. If
the estimate misses (adversarial order, many ties), an exact radix select on the keys
takes over, so the result is exact for every input. Small inputs use quickselect on a
copy of the keys, with no sampling.

    >>> import numpy as np
    >>> topk_indices(np.array([0.5, -3.0, 2.0, -2.0, 0.0], dtype=np.float32), 2)
    array([1, 2])
"""

from __future__ import annotations

import math
import operator
from typing import NamedTuple, Sequence

import numpy as np

from ._kernels import ERR_NONFINITE, ERR_OVERFLOW
from ._kernels import select as _k
from .errors import ConfigError

__all__ = ["topk_indices", "topk_select", "topk_indices_global", "check_finite"]

# Inputs up to this many elements take an exact path without sampling: below it, the
# fixed cost of the sampled path (a dozen kernel calls, a 1e3-1e4 element sample) loses.
_SMALL_N = 1 << 15
_TINY_N = 1 << 11       # up to here one fused kernel call (quickselect) beats numpy's partition
_HEAP_K = 32            # up to this k (and _SMALL_N) a one-pass heap selection is used
_SAMPLE_MAX = 1 << 16   # sample size cap: the threshold estimate then costs ~0.3 ms
_SAMPLE_MIN = 1 << 10
_Z = 4.0                # margin in standard deviations: a miss is ~1e-4 on shuffled data
# No buffer of keys larger than numel/_CAND_DIV entries is allocated: a bracket that would
# need one (massive ties, a wild estimate) misses cleanly and radix select takes over.
_CAND_DIV = 8


class _KeySpace(NamedTuple):
    key_dtype: type
    spec: tuple            # (mask, inf_key) in the key dtype, as the kernels want it
    shifts: tuple          # radix digit positions, most significant first


_KEYSPACES = {
    4: _KeySpace(np.uint32, (np.uint32(0x7FFF_FFFF), np.uint32(0x7F80_0000)), (15, 0)),
    8: _KeySpace(np.uint64, (np.uint64(0x7FFF_FFFF_FFFF_FFFF), np.uint64(0x7FF0_0000_0000_0000)),
                 (47, 31, 15, 0)),
}


_NATIVE_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def _as_vector(x, name: str, any_shape: bool = False) -> np.ndarray:
    """Validate a float32/float64 array; return it 1-D, native-endian and C-contiguous."""
    if (type(x) is np.ndarray and x.ndim == 1 and x.dtype in _NATIVE_FLOATS
            and x.flags.c_contiguous):
        return x                 # the common case, checked cheaply: small inputs notice
    if not isinstance(x, np.ndarray):
        from ._arrays import as_numpy

        x = as_numpy(x, what=name)
    dt = x.dtype
    if dt.kind != "f" or dt.itemsize not in _KEYSPACES:
        raise ConfigError(f"{name} must have dtype float32 or float64, got {dt}")
    if x.ndim != 1:
        if not any_shape:
            raise ConfigError(f"{name} must be 1-D, got shape {x.shape} "
                              "(pass x.ravel() to select over all its entries)")
        x = x.reshape(-1)
    if not dt.isnative:
        x = x.astype(dt.newbyteorder("="))
    if not x.flags.c_contiguous:
        x = np.ascontiguousarray(x)
    return x


def _as_k(k, numel: int) -> int:
    if type(k) is int and 0 <= k <= numel:
        return k
    if isinstance(k, (bool, np.bool_)):
        raise ConfigError(f"k must be an integer, got {k!r}")
    try:
        k = operator.index(k)
    except TypeError:
        raise ConfigError(f"k must be an integer, got {type(k).__name__}") from None
    if not 0 <= k <= numel:
        raise ConfigError(f"need 0 <= k <= numel, got k={k}, numel={numel}")
    return k


def _raise_nonfinite(arrays, names, ks: _KeySpace, shape=None):
    for x, name in zip(arrays, names):
        i = int(_k.first_nonfinite(x.view(ks.key_dtype), ks.spec))
        if i >= 0:
            v = x[i]
            what = "NaN" if np.isnan(v) else ("+inf" if v > 0 else "-inf")
            where = f"index {i}"
            if shape is not None and len(shape) != 1:
                where += f" (position {tuple(map(int, np.unravel_index(i, shape)))})"
            raise ConfigError(
                f"{name} contains {what} at {where}: top-k selection needs finite values. "
                "Clean the update first (find where it diverged, or np.nan_to_num it), or "
                "pass allow_nonfinite=True to rank +-inf as the largest magnitudes and NaN "
                "above them")
    raise RuntimeError("sparsecodec bug: a kernel reported NaN/Inf but none was found "
                       "(was the array modified during selection?)")


def _check(status, arrays, names, ks):
    """Map a kernel status to an exception; return the count otherwise."""
    if status == ERR_NONFINITE:
        _raise_nonfinite(arrays, names, ks)
    if status < 0:
        raise RuntimeError(f"sparsecodec bug: selection kernel returned status {status} "
                           "(was the array modified during selection?)")
    return status


def check_finite(x, *, name: str = "x") -> None:
    """Raise :class:`~sparsecodec.ConfigError` if ``x`` holds a NaN or an infinity.

    One vectorized pass over the float bits (no temporary for a contiguous array); any
    shape is accepted, and the message gives the flat (C-order) index and the position of
    the first offending value.

    >>> check_finite(np.zeros(3, dtype=np.float32))
    >>> check_finite(np.array([1.0, np.inf]))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: x contains +inf at index 1: top-k selection needs ...
    """
    v = _as_vector(x, name, any_shape=True)
    ks = _KEYSPACES[v.dtype.itemsize]
    if _k.max_key(v.view(ks.key_dtype), ks.spec) >= ks.spec[1]:
        _raise_nonfinite([v], [name], ks, np.shape(x))


def topk_indices(x: np.ndarray, k: int, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Positions of the ``k`` largest ``|x|``, as an ascending int64 array.

    ``x`` is a 1-D float32 or float64 array (a non-contiguous one is copied first) and
    ``0 <= k <= x.size``. Among equal magnitudes the lower index wins; ``-0.0`` equals
    ``+0.0``. NaN/Inf raise :class:`~sparsecodec.ConfigError` (for every ``k``) unless
    ``allow_nonfinite=True``, which ranks +-inf above every finite value and NaN above inf.

    >>> x = np.array([1.0, -4.0, 4.0, 0.5, 4.0], dtype=np.float32)
    >>> topk_indices(x, 2)          # three values tie at 4.0: the lower indices win
    array([1, 2])
    >>> topk_indices(x, 0), topk_indices(x, 5)
    (array([], dtype=int64), array([0, 1, 2, 3, 4]))
    >>> topk_indices(np.array([1.0, np.nan, 2.0]), 1, allow_nonfinite=True)
    array([1])
    """
    return _topk(x, k, allow_nonfinite)[0]


def topk_select(x: np.ndarray, k: int, *, allow_nonfinite: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``(idx, x[idx])``: :func:`topk_indices` and the values it selects, in one call.

    Where the selection takes its one-pass bracket path (the usual one for large inputs),
    the values are written by the same pass that finds them, which saves the second read
    of ``x`` that ``x[idx]`` costs (about one memory pass at density 0.1). The values are a
    new array, bit-identical to ``x[idx]``.

    >>> x = np.array([1.0, -4.0, 4.0, 0.5, 4.0], dtype=np.float32)
    >>> idx, vals = topk_select(x, 2)
    >>> idx.tolist(), vals.tolist()
    ([1, 2], [-4.0, 4.0])
    """
    x = _as_vector(x, "x")
    idx, keys = _topk(x, k, allow_nonfinite, gather=True)
    return idx, (x[idx] if keys is None else keys.view(x.dtype))


def _topk(x: np.ndarray, k: int, allow_nonfinite: bool,
          gather: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """``(idx, raw keys of the selection or None)``; see :func:`topk_indices`."""
    x = _as_vector(x, "x")
    k = _as_k(k, x.size)
    ks = _KEYSPACES[x.dtype.itemsize]
    allow = bool(allow_nonfinite)
    u: np.ndarray = x.view(ks.key_dtype)
    n = x.size
    if n <= _SMALL_N:
        out = np.empty(k, np.int64)
        if 0 < k <= _HEAP_K:
            # the budget bounds an ascending (adversarial) order to a few times the cost
            # of the shuffled case before giving up
            got = _k.topk_heap(u, ks.spec, allow, k, np.empty(k, ks.key_dtype), out,
                               4 * k * n.bit_length() + 32)
            if got == k:
                return out, None
            if got != ERR_OVERFLOW:      # NaN/Inf (raises ConfigError), else a bug
                _check(got, [x], ["x"], ks)
                raise RuntimeError(f"sparsecodec bug: selected {got} of k={k}")
        if n <= _TINY_N:
            got = _check(_k.topk_small(u, ks.spec, allow, k, np.empty(n, ks.key_dtype), out),
                         [x], ["x"], ks)
            if got != k:
                raise RuntimeError(f"sparsecodec bug: selected {got} of k={k}")
            return out, None
        return _select_exact([x], ["x"], k, ks, allow), None
    if k == 0 or k == n:
        if not allow:
            check_finite(x)
        return np.arange(k, dtype=np.int64), None
    return _select([x], ["x"], k, ks, allow, gather)


def topk_indices_global(arrays: Sequence[np.ndarray], k: int, *,
                        allow_nonfinite: bool = False) -> list[np.ndarray]:
    """Global top-k over several 1-D arrays, as if concatenated, without concatenating.

    Returns one ascending int64 index array per input array (indices local to that array);
    their lengths sum to ``k``. The order and tie rule are those of :func:`topk_indices`
    on ``np.concatenate(arrays)``: among equal magnitudes the earlier array, then the lower
    index, wins. Arrays are float32 or float64; if both occur, magnitudes are compared in
    float64 (exact), at the cost of a float64 copy of the float32 arrays.

    >>> a = np.array([3.0, 1.0], dtype=np.float32); b = np.array([-3.0, 5.0], dtype=np.float32)
    >>> topk_indices_global([a, b], 2)      # 5.0, then the first of the tied 3.0s
    [array([0]), array([1])]
    """
    if isinstance(arrays, np.ndarray) or not isinstance(arrays, (list, tuple)):
        raise ConfigError("arrays must be a list or tuple of 1-D float arrays, "
                          f"got {type(arrays).__name__}")
    names = [f"arrays[{j}]" for j in range(len(arrays))]
    xs = [_as_vector(a, nm) for a, nm in zip(arrays, names)]
    total = sum(x.size for x in xs)
    k = _as_k(k, total)
    if not xs:
        return []
    if len({x.dtype for x in xs}) > 1:
        # float32 -> float64 is exact, so ranking in float64 keeps the order; it costs a
        # float64 copy of the float32 arrays, so it is only done for mixed input
        xs = [x.astype(np.float64) for x in xs]
    ks = _KEYSPACES[xs[0].dtype.itemsize]
    allow = bool(allow_nonfinite)
    if total <= _SMALL_N:
        pos = _select_exact(xs, names, k, ks, allow)
    elif k == 0 or k == total:
        if not allow:
            for x, nm in zip(xs, names):
                check_finite(x, name=nm)
        pos = np.arange(k, dtype=np.int64)
    else:
        pos = _select(xs, names, k, ks, allow)[0]
    offsets = np.cumsum([0] + [x.size for x in xs])
    cuts = np.searchsorted(pos, offsets)
    return [pos[cuts[j]:cuts[j + 1]] - offsets[j] for j in range(len(xs))]


# --- the paths ------------------------------------------------------------------------------
# Each returns the k chosen positions in the concatenation, ascending (global positions).

def _kth_largest(keys: np.ndarray, r: int) -> int:
    """The r-th largest (1-based) key; reorders ``keys`` in place (no copy). numpy's
    introselect is used rather than a Numba quickselect: it is vectorized (x86-simd-sort)
    and 5-20x faster on 1e4-1e6 keys (measured), and it guards its own worst case."""
    p = keys.size - r
    keys.partition(p)
    return int(keys[p])


def _collect(xs, names, k, ks, allow, t, eq_left):
    """Final pass: keys > t, plus the first ``eq_left`` keys == t, into an array of k."""
    out = np.empty(k, np.int64)
    state = np.array([0, eq_left], np.int64)
    tk = ks.key_dtype(t)
    offset = 0
    for x, nm in zip(xs, names):
        _check(_k.collect_threshold(x.view(ks.key_dtype), ks.spec, allow, tk, offset, out,
                                    state), xs, names, ks)
        offset += x.size
    if state[0] != k:
        raise RuntimeError(f"sparsecodec bug: selected {state[0]} of k={k}")
    return out


def _select_exact(xs, names, k, ks, allow):
    """Partition a copy of all keys (one input-sized temporary): for small inputs."""
    total = sum(x.size for x in xs)
    keys = np.empty(total, ks.key_dtype)
    pos = 0
    for x in xs:
        pos = _check(_k.gather_keys(x.view(ks.key_dtype), ks.spec, allow, 0, 1, keys, pos),
                     xs, names, ks)
    if k == 0:
        return np.empty(0, np.int64)
    t = _kth_largest(keys, k)          # the other k-1 largest now sit after position total-k
    return _collect(xs, names, k, ks, allow, t,
                    k - int(np.count_nonzero(keys[total - k + 1:] > t)))


def _select(xs, names, k, ks, allow, gather=False):
    """Sampled bracket ``lo <= t <= hi`` around the k-th largest key ``t`` (for small k,
    hi is the largest key: every candidate is kept), one collecting pass (plan B when
    the bracket is a single tied key), then the exact radix fallback if it missed.
    Returns ``(positions, raw keys or None)``: with ``gather``, the bracket paths also
    return the selected raw keys (see :func:`_plan_bracket`); plan B does not."""
    total = sum(x.size for x in xs)
    sample = _sample(xs, names, ks, allow, total, k)
    m = sample.size
    mu = k * m / total                 # expected number of top-k elements in the sample
    r_lo = min(m, math.ceil(mu + _Z * math.sqrt(mu) + 2))
    lo = _kth_largest(sample, r_lo)    # the r_lo largest now sit in sample[m - r_lo:]
    top = sample[m - r_lo:]
    q = int(np.count_nonzero(sample >= lo))   # > r_lo when the sample has ties at lo
    cap = math.ceil((q + _Z * math.sqrt(q) + 2) * total / m)
    r_hi = math.floor(mu - _Z * math.sqrt(mu) - 2)
    hi = _kth_largest(top.copy(), r_hi) if r_hi >= 1 else int(ks.spec[0])
    if int(np.count_nonzero(top > lo)) <= max(r_hi, 0):
        # the sample's keys tie at lo over the whole bracket (lo == hi, or for small k no
        # key above lo: constant or mostly-zero input): t is lo, count the ties, store nothing
        got = _plan_b(xs, names, k, ks, allow, lo, lo, 0)
        found = None if got is None else (got, None)
    else:
        band = q - int(np.count_nonzero(top > hi))
        band_cap = min(math.ceil((band + _Z * math.sqrt(band) + 2) * total / m),
                       total // _CAND_DIV)
        found = _plan_bracket(xs, names, k, ks, allow, lo, hi, min(cap, total), band_cap, gather)
    return found if found is not None else _radix(xs, names, k, ks, allow, total, gather=gather)


def _sample_stride(total: int, k: int | None = None) -> int:
    """Distance between sampled positions: about total / sample size, but coprime with 30,
    so that a layout that repeats every 2**a * 3**b * 5**c elements (rows, channels,
    heads) is sampled at every phase instead of at one.

    The sample size grows with k as ``6 * (k * total) ** (1/3)``: a larger sample narrows
    the bracket, whose keys cost ~25 ns each to keep, but costs ~7 ns per sampled key
    (gather and partition); that balance is at about this size (1.2e4 keys for k = 1e3 of
    1e7, 6.5e4 for k >= 1e5). ``k=None`` takes the largest size.
    """
    size = min(_SAMPLE_MAX, max(_SAMPLE_MIN, total // 16))
    if k is not None:
        size = min(size, max(_SAMPLE_MIN, round(6 * (k * total) ** (1 / 3))))
    stride = max(1, total // size)
    while stride > 1 and math.gcd(stride, 30) != 1:
        stride -= 1
    return stride


def _sample(xs, names, ks, allow, total, k=None):
    """Keys at the positions stride//2 + i*stride of the concatenation (deterministic:
    the same input always takes the same path)."""
    stride = _sample_stride(total, k)
    start = stride // 2
    sample = np.empty((total - 1 - start) // stride + 1, ks.key_dtype)
    pos = offset = 0
    for x in xs:
        first = start - offset if offset <= start else (-(offset - start)) % stride
        pos = _check(_k.gather_keys(x.view(ks.key_dtype), ks.spec, allow, first, stride,
                                    sample, pos), xs, names, ks)
        offset += x.size
    if pos != sample.size:
        raise RuntimeError(f"sparsecodec bug: sampled {pos} keys, expected {sample.size}")
    return sample


def _plan_bracket(xs, names, k, ks, allow, lo, hi, cap, band_cap, gather=False):
    """One pass writes the positions of all keys >= lo (at most ``cap``) and keeps the keys
    in ``[lo, hi]`` (at most ``band_cap``, with their place in the output); when the count
    above ``hi`` is below k and the count from ``lo`` reaches it, the exact threshold is
    found among the band keys, and the output is copied without the band entries it
    rejects. With ``gather``, the same pass also writes the raw keys (float bits) of what
    it keeps, so the selected values come without a second read of the input.
    Returns ``(positions, raw keys or None)``, or None when the bracket missed or a buffer
    overflowed."""
    out = np.empty(cap + _k.BLOCK, np.int64)   # + BLOCK: the kernel writes 8 at a time
    vals = np.empty(out.size if gather else 0, ks.key_dtype)
    band_pos = np.empty(band_cap, np.int64)
    band_key = np.empty(band_cap, ks.key_dtype)
    state = np.zeros(2, np.int64)
    offset = 0
    lo_k, hi_k = ks.key_dtype(lo), ks.key_dtype(hi)
    for x in xs:
        status = _k.bracket_collect(x.view(ks.key_dtype), ks.spec, allow, lo_k, hi_k, offset,
                                    out, band_pos, band_key, state, vals)
        if status == ERR_OVERFLOW:
            return None              # lo far too low (ties, adversarial order): fall back
        _check(status, xs, names, ks)
        offset += x.size
    count, band = int(state[0]), int(state[1])
    above = count - band
    if not above < k <= count:
        return None                  # the bracket missed the k-th largest key
    need = k - above
    keys = band_key[:band]
    t = _kth_largest(keys.copy(), need)
    eq_left = need - int(np.count_nonzero(keys > t))
    result = np.empty(k, np.int64)
    kept = np.empty(k if gather else 0, ks.key_dtype)
    got = _check(_k.drop_band(out, count, band_pos, band_key, band, ks.key_dtype(t), eq_left,
                              result, vals, kept), xs, names, ks)
    if got != k:
        raise RuntimeError(f"sparsecodec bug: selected {got} of k={k}")
    return result, (kept if gather else None)


def _plan_b(xs, names, k, ks, allow, lo, hi, band_cap):
    """Two-sided bracket lo <= t <= hi: count keys above hi, keep those in [lo, hi], find
    the exact threshold among them, then one collecting pass. For large k (the candidate
    set would be big) and for ties at the threshold (lo == hi: nothing needs storing)."""
    band_key = np.empty(band_cap, ks.key_dtype)
    state = np.zeros(2, np.int64)
    for x in xs:
        _check(_k.band_pass(x.view(ks.key_dtype), ks.spec, allow, ks.key_dtype(lo),
                            ks.key_dtype(hi), band_key, state), xs, names, ks)
    band, above = int(state[0]), int(state[1])
    if not above < k <= above + band:
        return None                  # the bracket missed the k-th largest key
    need = k - above
    if lo == hi:
        t = lo
        eq_left = need
    elif band <= band_cap:
        t = _kth_largest(band_key[:band], need)
        eq_left = need - int(np.count_nonzero(band_key[band - need + 1:band] > t))
    else:
        return None                  # band overflowed its buffer
    return _collect(xs, names, k, ks, allow, t, eq_left)


def _radix(xs, names, k, ks, allow, total, bucket_cap=None, gather=False):
    """Exact radix select on 16-bit digits of the keys, then one collecting pass.

    Stops refining early when the digit bucket holding the k-th key is small enough to
    keep (the bracket on that bucket). Exact for every input: no estimate is involved.
    Returns ``(positions, raw keys or None)`` like :func:`_select`.
    """
    hist = np.zeros(_k.RADIX_BINS, np.int64)
    prefix = prefix_mask = 0
    need = k                         # rank of the k-th key inside the current bucket
    if bucket_cap is None:
        bucket_cap = max(4096, total // (4 * _CAND_DIV))
    for shift in ks.shifts:
        hist[:] = 0
        for x in xs:
            _check(_k.radix_histogram(x.view(ks.key_dtype), ks.spec, allow,
                                      ks.key_dtype(shift), ks.key_dtype(prefix),
                                      ks.key_dtype(prefix_mask), hist), xs, names, ks)
        from_top = np.cumsum(hist[::-1])
        i = int(np.searchsorted(from_top, need))
        digit = _k.RADIX_BINS - 1 - i
        need -= int(from_top[i] - hist[digit])
        prefix |= digit << shift
        prefix_mask |= (_k.RADIX_BINS - 1) << shift
        if shift == 0:
            return _collect(xs, names, k, ks, allow, prefix, need), None
        if hist[digit] <= bucket_cap:
            # the counts are exact: every key above the bucket and the bucket itself fit
            bucket = int(hist[digit])
            found = _plan_bracket(xs, names, k, ks, allow, prefix, prefix | ((1 << shift) - 1),
                                  k - need + bucket, bucket, gather)
            if found is None:
                raise RuntimeError("sparsecodec bug: radix bucket inconsistent "
                                   "(was the array modified during selection?)")
            return found
    raise AssertionError("unreachable: the last radix digit has shift 0")
