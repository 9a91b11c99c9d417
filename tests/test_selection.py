"""Exact top-k selection: the public functions against the slow definition, every path
(heap, fused quickselect, exact partition, sampled bracket or plan B, radix) forced on
small inputs, each kernel against its reference in ``tests/reference_selection.py``,
adversarial and clustered inputs at n = 2e5, the error contract, and a pure-Python
(NUMBA_DISABLE_JIT=1) rerun of a subset.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import reference_selection as ref
from sparsecodec import ConfigError
from sparsecodec import selection as sel
from sparsecodec._kernels import ERR_NONFINITE, ERR_OVERFLOW, ERR_RANGE, OK
from sparsecodec._kernels import select as K
from sparsecodec.selection import check_finite, topk_indices, topk_indices_global, topk_select

NOJIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
EXAMPLES = 30 if NOJIT else 80
MAX_N = 300 if NOJIT else 3000
hyp = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                      HealthCheck.function_scoped_fixture])

SPECIALS = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 1e-45, -1e-45, 5e-324, 1e-310, 3.0e38, -3.0e38,
            1e300, 0.5, 0.25]
NONFINITE = [np.nan, -np.nan, np.inf, -np.inf]

# Thresholds of the dispatch, shrunk so that inputs of a few hundred elements take each
# path in turn. "sampled" makes every input above 40 elements go through the sampled
# bracket or plan B (and their radix fallback) with a sample of at least 16 keys.
PATHS = {
    "default": {},
    "heap": {"_HEAP_K": 10**9, "_TINY_N": 0},
    "tiny": {"_HEAP_K": 0, "_TINY_N": 10**9},
    "exact": {"_HEAP_K": 0, "_TINY_N": 0},
    "sampled": {"_SMALL_N": 40, "_SAMPLE_MIN": 16},
}


def set_path(name, monkeypatch):
    for attr, value in PATHS[name].items():
        monkeypatch.setattr(sel, attr, value)


@st.composite
def vectors(draw, max_n=None, nonfinite=False, dtype=None):
    """Float arrays with forced ties, signed zeros, denormals and huge values: values are
    drawn from a small palette (shared with random normals), so equal magnitudes are
    common; the array itself comes from a seeded generator, which keeps drawing cheap."""
    n = draw(st.integers(0, MAX_N if max_n is None else max_n))
    dt = dtype or draw(st.sampled_from([np.float32, np.float64]))
    palette = draw(st.lists(st.sampled_from(SPECIALS + (NONFINITE if nonfinite else [])),
                            min_size=1, max_size=6))
    share = draw(st.sampled_from([0.0, 0.3, 0.9, 1.0]))
    order = draw(st.sampled_from(["shuffled", "ascending", "descending", "clustered"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    values = np.array(palette, dtype=np.float64)
    if dt is np.float32:                 # keep the huge values finite after the cast
        values = np.where(np.isfinite(values), np.clip(values, -3e38, 3e38), values)
    x = rng.standard_normal(n).astype(dt)
    pick = rng.random(n) < share
    x[pick] = values.astype(dt)[rng.integers(0, len(palette), n)][pick]
    if order == "clustered":             # a few contiguous blocks hold the large magnitudes
        for start in rng.integers(0, max(n, 1), 3):
            block = x[start:start + int(rng.integers(1, 100))]
            block[np.abs(block) < 1e30] *= 1e3        # (the huge ones stay finite)
    elif order != "shuffled" and not nonfinite:
        x = np.sort(np.abs(x))[:: 1 if order == "ascending" else -1].copy()
    if nonfinite:                        # NaNs of every sign and payload must tie
        bits = x.view(ref.KEY_DTYPE[x.dtype])
        nan = np.isnan(x) & (rng.random(n) < 0.5)
        kd = bits.dtype.type
        payload = rng.integers(1, 1 << 20, n).astype(bits.dtype)
        bits[nan] = (kd(ref.INF_KEY[kd]) | payload[nan]
                     | (rng.integers(0, 2, n).astype(bits.dtype) << kd(8 * x.itemsize - 1))[nan])
    return x


def check_selection(x, k, allow=False):
    got = topk_indices(x, k, allow_nonfinite=allow)
    assert got.dtype == np.int64 and got.shape == (k,)
    np.testing.assert_array_equal(got, ref.topk_reference(x, k, allow))


# --- the public functions against the definition ----------------------------------------------

@pytest.mark.parametrize("path", list(PATHS))
@hyp
@given(data=st.data())
def test_topk_matches_reference(path, data, monkeypatch):
    set_path(path, monkeypatch)
    x = data.draw(vectors())
    k = data.draw(st.integers(0, x.size))
    check_selection(x, k)


@pytest.mark.parametrize("path", ["default", "heap", "sampled"])
@hyp
@given(data=st.data())
def test_topk_allow_nonfinite_ranks_nan_above_inf(path, data, monkeypatch):
    set_path(path, monkeypatch)
    x = data.draw(vectors(nonfinite=True))
    k = data.draw(st.integers(0, x.size))
    check_selection(x, k, allow=True)


@pytest.mark.parametrize("path", ["default", "sampled"])
@hyp
@given(data=st.data())
def test_global_matches_reference_on_concatenation(path, data, monkeypatch):
    set_path(path, monkeypatch)
    dt = data.draw(st.sampled_from([np.float32, np.float64, None]))   # None: mixed
    arrays = data.draw(st.lists(vectors(max_n=MAX_N // 3, dtype=dt), max_size=5))
    k = data.draw(st.integers(0, sum(a.size for a in arrays)))
    got = topk_indices_global(arrays, k)
    want = ref.topk_global_reference(arrays, k)
    assert len(got) == len(arrays) and sum(g.size for g in got) == k
    for g, w in zip(got, want):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)


def test_tie_rule_and_signed_zero():
    x = np.array([-0.0, 3.0, 0.0, -3.0, 3.0, 1.0], dtype=np.float32)
    assert topk_indices(x, 2).tolist() == [1, 3]          # three tie at 3: lowest two win
    assert topk_indices(x, 5).tolist() == [0, 1, 3, 4, 5]  # -0.0 at index 0 beats +0.0 at 2
    assert topk_indices(x, 0).tolist() == []
    assert topk_indices(x, 6).tolist() == list(range(6))
    parts = topk_indices_global([x[:3], x[3:]], 2)
    assert [p.tolist() for p in parts] == [[1], [0]]       # earlier array wins the tie


# --- robustness of each stage: any estimate gives the exact result or a clean miss ---------------

def _keys(x):
    ks = sel._KEYSPACES[x.dtype.itemsize]
    return ks, x.view(ks.key_dtype)


@hyp
@given(data=st.data())
def test_every_stage_is_exact_for_any_threshold(data):
    """The bracket (one-sided, as for small k, and two-sided) and plan B either return the
    exact answer or None (miss), whatever the threshold estimates and buffer sizes; radix
    select needs no estimate and is always exact."""
    x = data.draw(vectors())
    if x.size == 0:
        return
    k = data.draw(st.integers(1, x.size))
    ks, u = _keys(x)
    want = ref.topk_reference(x, k)
    keys = sorted(set(ref.keys_of(x)))
    lo = data.draw(st.sampled_from(keys))
    hi = data.draw(st.sampled_from([v for v in keys if v >= lo]))
    cap = data.draw(st.integers(0, x.size + 1))
    band_cap = data.draw(st.integers(0, x.size + 1))
    gather = data.draw(st.booleans())
    for found in (sel._plan_bracket([x], ["x"], k, ks, False, lo, int(ks.spec[0]), cap, cap, gather),
                  sel._plan_bracket([x], ["x"], k, ks, False, lo, hi, cap, band_cap, gather)):
        if found is not None:
            np.testing.assert_array_equal(found[0], want)
            if gather:     # the raw keys gathered on the way are x[want]'s bits
                assert found[1].tobytes() == x[want].tobytes()
            else:
                assert found[1] is None
    got = sel._plan_b([x], ["x"], k, ks, False, lo, hi, cap)
    if got is not None:
        np.testing.assert_array_equal(got, want)
    for bucket_cap in (None, 0):        # early exit into plan B, or every radix digit
        pos, keys = sel._radix([x], ["x"], k, ks, False, x.size, bucket_cap, gather)
        np.testing.assert_array_equal(pos, want)
        assert keys is None or keys.tobytes() == x[want].tobytes()


# --- each kernel against its reference ---------------------------------------------------------

@hyp
@given(data=st.data())
def test_kernels_match_references(data):
    x = data.draw(vectors(nonfinite=data.draw(st.booleans())))
    allow = data.draw(st.booleans())
    ks, u = _keys(x)
    kd = ks.key_dtype
    n = x.size
    raw = ref.keys_of(x)
    pool = sorted(set(ref.canon(v, kd) for v in raw)) or [0]
    lo = data.draw(st.sampled_from(pool))
    hi = data.draw(st.sampled_from([v for v in pool if v >= lo]))
    cap = data.draw(st.integers(0, n + 2))
    offset = data.draw(st.integers(0, 10**6))

    # gather_keys
    first, stride = data.draw(st.integers(0, n + 1)), data.draw(st.integers(1, 5))
    pos0 = data.draw(st.integers(0, 3))
    out = np.zeros(cap + pos0, kd)
    status = K.gather_keys(u, ks.spec, allow, first, stride, out, pos0)
    want_status, want = ref.gather_keys_ref(x, allow, first, stride, cap + pos0, pos0)
    assert status == want_status
    if status >= 0:
        assert out[pos0:status].tolist() == want

    # max_key / first_nonfinite
    assert int(K.max_key(u, ks.spec)) == max(raw, default=0)
    bad = [i for i, v in enumerate(raw) if v >= ref.INF_KEY[kd]]
    assert K.first_nonfinite(u, ks.spec) == (bad[0] if bad else -1)

    # bracket_collect, then drop_band on what it collected
    pos0, bp0 = data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3))
    band_cap = data.draw(st.integers(0, n + 2))
    out = np.zeros(cap + pos0, np.int64)
    band_pos = np.zeros(band_cap + bp0, np.int64)
    band_key = np.zeros(band_cap + bp0, kd)
    state = np.array([pos0, bp0], np.int64)
    gather = data.draw(st.booleans())     # the raw keys of what is kept, parallel to out
    vals = np.zeros(out.size if gather else 0, kd)
    status = K.bracket_collect(u, ks.spec, allow, kd(lo), kd(hi), offset, out, band_pos,
                               band_key, state, vals)
    want_status, want, want_band = ref.bracket_collect_ref(x, allow, lo, hi, offset,
                                                           cap + pos0, band_cap + bp0, pos0, bp0)
    assert status == want_status
    if status == OK:
        count, band = state.tolist()
        assert count == pos0 + len(want) and band == bp0 + len(want_band)
        assert out[pos0:count].tolist() == want
        if gather:
            assert vals[pos0:count].tolist() == [int(u[i - offset]) for i in want]
        assert list(zip(band_pos[bp0:band].tolist(), band_key[bp0:band].tolist())) == want_band
        if vals.size > 1:          # a values buffer of another length is refused
            assert K.bracket_collect(u, ks.spec, allow, kd(lo), kd(hi), offset, out, band_pos,
                                     band_key, np.array([pos0, bp0], np.int64),
                                     vals[:-1]) == ERR_RANGE
        if want_band:
            t = data.draw(st.sampled_from([v for _, v in want_band]))
            eq_left = data.draw(st.integers(0, len(want_band)))
            kept = ref.drop_band_ref(out[:count].tolist(), want_band, t, eq_left)
            args = (count, band_pos[bp0:], band_key[bp0:], len(want_band), kd(t), eq_left)
            none = np.zeros(0, kd)
            if kept:
                assert K.drop_band(out.copy(), *args, np.zeros(len(kept) - 1, np.int64),
                                   none, none) == ERR_OVERFLOW
            dest = np.zeros(len(kept) + data.draw(st.integers(0, 2)), np.int64)
            vdest = np.zeros(dest.size if gather else 0, kd)
            got = K.drop_band(out.copy(), *args, dest, vals, vdest)
            assert got == len(kept) and dest[:got].tolist() == kept
            if gather:      # the values follow their positions
                assert vdest[:got].tolist() == ref.drop_band_ref(vals[:count].tolist(), want_band, t, eq_left)
                assert K.drop_band(out.copy(), *args, dest, vals, vdest[:-1]) == ERR_RANGE
            bad = band_pos[bp0:band].copy()
            bad[[0, -1]] = bad[[-1, 0]]          # positions out of order, or past count
            if len(want_band) > 1 and bad[0] != bad[-1]:
                assert K.drop_band(out.copy(), count, bad, band_key[bp0:], len(want_band),
                                   ks.spec[0], 0, dest, none, none) == ERR_RANGE  # every entry dropped
            assert K.drop_band(out.copy(), count, band_pos[bp0:], band_key[bp0:],
                               band_key.size - bp0 + 1, kd(t), 0, dest, none, none) == ERR_RANGE

    # band_pass
    state0 = (data.draw(st.integers(0, 3)), data.draw(st.integers(0, 3)))
    state = np.array(state0, np.int64)
    band = np.zeros(cap, kd)
    status = K.band_pass(u, ks.spec, allow, kd(lo), kd(hi), band, state)
    want_status, want_state, want_band = ref.band_pass_ref(x, allow, lo, hi, cap, state0)
    assert status == want_status
    if status == OK:
        assert tuple(state.tolist()) == want_state
        stored = min(want_state[0], cap) - min(state0[0], cap)
        assert band[min(state0[0], cap):min(want_state[0], cap)].tolist() == want_band[:stored]

    # radix_histogram
    shift = data.draw(st.sampled_from(ks.shifts))
    pmask = (ref.MASK[kd] >> (shift + 16)) << (shift + 16)
    prefix = (data.draw(st.sampled_from(pool)) & pmask)
    hist = np.zeros(K.RADIX_BINS, np.int64)
    status = K.radix_histogram(u, ks.spec, allow, kd(shift), kd(prefix), kd(pmask), hist)
    want_status, want_hist = ref.radix_histogram_ref(x, allow, shift, prefix, pmask)
    assert status == want_status
    if status == OK:
        assert {int(d): int(hist[d]) for d in np.flatnonzero(hist)} == want_hist

    # collect_threshold
    pos0, eq0 = data.draw(st.integers(0, 3)), data.draw(st.integers(0, n + 1))
    out = np.zeros(cap + pos0, np.int64)
    state = np.array([pos0, eq0], np.int64)
    status = K.collect_threshold(u, ks.spec, allow, kd(lo), offset, out, state)
    want_status, want, want_eq = ref.collect_threshold_ref(x, allow, lo, offset, cap + pos0,
                                                           pos0, eq0)
    assert status == want_status
    if status == OK:
        assert state.tolist() == [pos0 + len(want), want_eq]
        assert out[pos0:pos0 + len(want)].tolist() == want


def test_bracket_collect_flushes_band_records():
    """More blocks with band entries than ``K.RECORDS``: their band entries are written in
    several flushes (hypothesis inputs are too short for one), and across two arrays."""
    x = np.random.default_rng(9).standard_normal(40_000).astype(np.float32)
    ks, u = _keys(x)
    lo, hi = (ks.key_dtype(np.float32(v).view(np.uint32)) for v in (1.0, 1.2))
    out = np.zeros(x.size + 64, np.int64)
    band_pos = np.zeros(x.size, np.int64)
    band_key = np.zeros(x.size, ks.key_dtype)
    state = np.zeros(2, np.int64)
    for part, offset in ((u[:25_001], 0), (u[25_001:], 25_001)):
        assert K.bracket_collect(part, ks.spec, False, lo, hi, offset, out, band_pos, band_key,
                                 state, np.zeros(0, ks.key_dtype)) == OK
    status, want, want_band = ref.bracket_collect_ref(x, False, int(lo), int(hi), 0, out.size,
                                                      band_key.size, 0, 0)
    # (one array in the reference: its blocks differ, its entries may not)
    assert status == OK and len(want_band) > 4 * K.RECORDS
    count, band = state.tolist()
    assert out[:count].tolist() == want
    assert list(zip(band_pos[:band].tolist(), band_key[:band].tolist())) == want_band


@hyp
@given(data=st.data())
def test_fused_small_kernels_match_reference(data):
    x = data.draw(vectors(max_n=400, nonfinite=data.draw(st.booleans())))
    allow = data.draw(st.booleans())
    ks, u = _keys(x)
    k = data.draw(st.integers(0, x.size))
    finite_or_allowed = allow or bool(np.all(np.isfinite(x)))
    want = ref.topk_reference(x, k, allow) if finite_or_allowed else None

    out = np.zeros(k, np.int64)
    status = K.topk_small(u, ks.spec, allow, k, np.zeros(x.size, ks.key_dtype), out)
    if want is None:
        assert status == ERR_NONFINITE
    else:
        assert status == k and out.tolist() == want.tolist()

    if k >= 1:
        heap_idx = np.zeros(k, np.int64)
        args = (u, ks.spec, allow, k, np.zeros(k, ks.key_dtype), heap_idx)
        if want is None:
            assert K.topk_heap(*args, x.size) == ERR_NONFINITE
            return
        inserted = ref.heap_insertions_ref(x, k, allow)
        assert K.topk_heap(*args, inserted) == k and heap_idx.tolist() == want.tolist()
        if inserted:
            assert K.topk_heap(*args, inserted - 1) == ERR_OVERFLOW


# --- large deterministic and adversarial cases (n = 2e5) ------------------------------------------

def _adversarial(name, n, rng, k=None):
    if name == "normal":
        return rng.standard_normal(n)
    if name == "ascending":
        return np.sort(np.abs(rng.standard_normal(n)))
    if name == "descending":
        return -np.sort(np.abs(rng.standard_normal(n)))[::-1]
    if name == "constant":
        return np.full(n, -0.75)
    if name == "zeros":
        return np.where(rng.random(n) < 0.5, 0.0, -0.0)
    if name == "mostly_zero":           # fewer nonzeros than k: ties at zero decide
        x = np.zeros(n)
        x[rng.integers(0, n, 37)] = rng.standard_normal(37)
        return x
    if name == "one_huge":
        x = rng.standard_normal(n) * 1e-30
        x[n // 3] = 1e30
        return x
    if name == "denormal":
        return rng.integers(-50, 50, n) * 1e-45 if n else np.zeros(0)
    if name == "quantized":             # many ties at the threshold
        return np.round(rng.standard_normal(n) * 4) / 4
    if name == "sample_aligned":        # large values sit exactly on the sample positions
        x = rng.standard_normal(n) * 1e-3
        stride = sel._sample_stride(n, k)
        x[stride // 2::stride] = 100.0 + rng.random(x[stride // 2::stride].size)
        return x
    if name == "sample_avoiding":       # ...or everywhere except there
        x = rng.standard_normal(n) + 100.0
        stride = sel._sample_stride(n, k)
        x[stride // 2::stride] = 1e-3
        return x
    if name == "hot_blocks":            # clustered: 8 contiguous blocks (1 %) are 100x larger
        x = rng.standard_normal(n)
        for start in rng.choice(n - n // 800, 8, replace=False):
            x[start:start + n // 800] *= 100.0
        return x
    if name == "sorted_runs":           # clustered: heavy tails, ascending in runs of 4096
        x = np.abs(rng.standard_t(2, n))
        for start in range(0, n, 4096):
            x[start:start + 4096].sort()
        return np.where(rng.random(n) < 0.5, -x, x)
    if name == "narrow_cluster":        # the top values in one run shorter than the stride
        x = rng.standard_normal(n)
        x[n // 2:n // 2 + 7] = 1e6
        return x
    raise KeyError(name)


ADVERSARIAL = ["normal", "ascending", "descending", "constant", "zeros", "mostly_zero",
               "one_huge", "denormal", "quantized", "sample_aligned", "sample_avoiding",
               "hot_blocks", "sorted_runs", "narrow_cluster"]


@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: large inputs take minutes without the compiled kernels (unset it to run this)")
@pytest.mark.parametrize("name", ADVERSARIAL)
def test_large_adversarial_inputs(name):
    n = 200_000
    base = _adversarial(name, n, np.random.default_rng(ADVERSARIAL.index(name)))
    for dt in (np.float32, np.float64):
        x = base.astype(dt)
        for k in (1, 200, 20_000, 150_000):
            # the sample's stride depends on k: the sample_* inputs are made for each k
            xk = _adversarial(name, n, np.random.default_rng(ADVERSARIAL.index(name)),
                              k).astype(dt) if name.startswith("sample_") else x
            np.testing.assert_array_equal(topk_indices(xk, k), ref.topk_lexsort(xk, k))
            idx, vals = topk_select(xk, k)      # values gathered by the selection pass
            np.testing.assert_array_equal(idx, ref.topk_lexsort(xk, k))
            assert vals.dtype == xk.dtype and vals.tobytes() == xk[idx].tobytes()
        ks = sel._KEYSPACES[x.dtype.itemsize]
        np.testing.assert_array_equal(sel._radix([x], ["x"], 777, ks, False, n, bucket_cap=0)[0],
                                      ref.topk_lexsort(x, 777))
        parts = topk_indices_global([x[:70_001], x[70_001:70_001], x[70_001:]], 2000)
        got = np.concatenate([parts[0], parts[2] + 70_001])
        np.testing.assert_array_equal(got, ref.topk_lexsort(x, 2000))


@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: large inputs take minutes without the compiled kernels (unset it to run this)")
def test_channel_periodic_layout_keeps_the_fast_path(monkeypatch):
    """A (rows, 256) gradient whose every 16th column is large repeats with period 16: a
    sample stride sharing that factor would see only one phase, miss the estimate and
    fall back to radix select. Exact either way; this checks it stays fast."""
    rng = np.random.default_rng(11)
    x = rng.standard_normal((1000, 256)).astype(np.float32)
    x[:, ::16] *= 1000.0
    x = x.ravel()

    def no_fallback(*args, **kwargs):
        raise AssertionError("the sampled estimate missed")
    monkeypatch.setattr(sel, "_radix", no_fallback)
    for k in (100, 2000, 100_000):
        np.testing.assert_array_equal(topk_indices(x, k), ref.topk_lexsort(x, k))


@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: large inputs take minutes without the compiled kernels (unset it to run this)")
@pytest.mark.parametrize("name", ["normal", "hot_blocks", "sorted_runs"])
def test_clustered_inputs_keep_the_one_pass_path(name, monkeypatch):
    """Magnitudes concentrated in a few contiguous blocks (or ascending runs) are sampled
    at every block, so the bracket holds: one collecting pass, no radix fallback, and no
    second pass over the data (plan B) either."""
    x = _adversarial(name, 400_000, np.random.default_rng(7)).astype(np.float32)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the sampled bracket missed")
    monkeypatch.setattr(sel, "_radix", no_fallback)
    monkeypatch.setattr(sel, "_plan_b", no_fallback)
    for k in (40, 400, 4000, 40_000, 200_000):
        np.testing.assert_array_equal(topk_indices(x, k), ref.topk_lexsort(x, k))


@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: large inputs take minutes without the compiled kernels (unset it to run this)")
def test_large_nonfinite_allowed_and_refused():
    x = np.random.default_rng(5).standard_normal(100_000).astype(np.float32)
    x[[10, 70_000]] = [np.inf, -np.inf]
    x[[500, 99_999]] = [np.nan, -np.nan]
    assert topk_indices(x, 3, allow_nonfinite=True).tolist() == [10, 500, 99_999]
    with pytest.raises(ConfigError, match=r"x contains \+inf at index 10"):
        topk_indices(x, 3)


def test_noncontiguous_and_byteswapped_inputs():
    rng = np.random.default_rng(3)
    x = rng.standard_normal(1001)
    for view in (x[::3], x.astype(">f8"), x.astype(np.float32)[::-2]):
        np.testing.assert_array_equal(topk_indices(view, 50),
                                      ref.topk_lexsort(np.asarray(view, np.float64), 50))


# --- the error contract --------------------------------------------------------------------------

@pytest.mark.parametrize("x, k, match", [
    ([object(), object()], 1, "not a numeric array"),
    (np.arange(4), 1, "float32 or float64"),
    (np.ones(4, np.float16), 1, "float32 or float64"),
    (np.ones((2, 2)), 1, "1-D"),
    (np.ones(4), -1, "0 <= k <= numel"),
    (np.ones(4), 5, "0 <= k <= numel"),
    (np.ones(4), True, "integer"),
    (np.ones(4), 1.0, "integer"),
])
def test_misuse_is_config_error(x, k, match):
    with pytest.raises(ConfigError, match=match):
        topk_indices(x, k)


def test_lists_are_array_likes():
    # issue 17: any array-like enters; a list of floats is read as float64
    np.testing.assert_array_equal(topk_indices([1.0, -3.0, 2.0], 2), [1, 2])


@pytest.mark.parametrize("n", [5, 1000, 100_000])
@pytest.mark.parametrize("k", [0, 1, 3])
@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, r"\+inf"), (-np.inf, "-inf")])
def test_nonfinite_is_config_error_saying_what_and_where(n, k, bad, word):
    if NOJIT and n > 1000:
        pytest.skip("NUMBA_DISABLE_JIT=1 is set: large inputs take minutes without the compiled kernels (unset it to run this)")
    x = np.ones(n, np.float32)
    x[n - 2] = bad
    with pytest.raises(ConfigError, match=rf"x contains {word} at index {n - 2}.*Clean the update"):
        topk_indices(x, k)
    with pytest.raises(ConfigError, match=rf"arrays\[1\] contains {word} at index {n - 2}"):
        topk_indices_global([np.ones(3, np.float32), x], k)
    with pytest.raises(ConfigError, match=rf"x contains {word} at index {n - 2}"):
        check_finite(x)


def test_global_misuse():
    with pytest.raises(ConfigError, match="list or tuple"):
        topk_indices_global(np.ones(3), 1)
    with pytest.raises(ConfigError, match=r"arrays\[1\] must have dtype float32 or float64"):
        topk_indices_global([np.ones(3), np.ones(3, np.int32)], 1)
    with pytest.raises(ConfigError, match="0 <= k <= numel"):
        topk_indices_global([np.ones(3)], 4)
    assert topk_indices_global([], 0) == []


def test_check_finite_accepts_any_shape():
    check_finite(np.zeros((3, 4), np.float32))
    x = np.zeros((3, 4))
    x[2, 1] = np.nan
    with pytest.raises(ConfigError, match=r"x contains NaN at index 9 \(position \(2, 1\)\)"):
        check_finite(x)
    with pytest.raises(ConfigError, match="float32 or float64"):
        check_finite(np.zeros(3, np.int32))


# --- pure Python run -----------------------------------------------------------------------------

@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: this test is the one that starts the pure-Python rerun (unset it to run it)")
def test_subset_without_jit():
    """The kernels' Python source must give the same answers as compiled (and as the
    references): Numba does not bounds-check, Python does."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    subset = ("test_topk_matches_reference or test_kernels_match_references or "
              "test_fused_small or test_every_stage or test_tie_rule or test_nonfinite_is")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", __file__, "-q", "-x", "-p", "no:cacheprovider",
         "-k", subset], env=env, capture_output=True, text=True, timeout=600,
        cwd=os.path.dirname(__file__))
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
