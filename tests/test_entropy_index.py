"""The range-coded ``bitmap`` index coder: reference agreement, bounds, bad payloads, misuse."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_rangecoder as ref
from sparsecodec.bounds import topk_index_bits
from sparsecodec.entropy_index import (bitmap_bits_estimate, decode_bitmap, decode_gaps,
                                       encode_bitmap, encode_gaps, gaps_bits_estimate)
from sparsecodec.indices import index_payload_bits
from sparsecodec.errors import ConfigError, CorruptFrameError, FrameError, TruncatedFrameError
from sparsecodec.testing import sparse_supports

NOJIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"


def as_bits(idx: np.ndarray, numel: int) -> np.ndarray:
    bits = np.zeros(numel, np.uint8)
    bits[idx] = 1
    return bits


@settings(max_examples=80, deadline=None)
@given(sparse_supports(max_numel=600))
def test_bitmap_matches_reference_small(support):
    numel, idx = support
    payload = encode_bitmap(idx, numel)
    assert payload == ref.encode_enumerative(as_bits(idx, numel))
    got = decode_bitmap(payload, numel, idx.size)
    assert got.dtype == np.int64 and np.array_equal(got, idx)


def _hostile_variants(payload: bytes, rng, extra: bytes, junk: int) -> list[bytes]:
    """The payload cut, extended, bit-flipped, plus empty and random bytes."""
    candidates = [b"", payload + extra, payload[:-1], bytes(rng.integers(0, 256, junk, np.uint8))]
    for _ in range(10):
        bad = bytearray(payload)
        if bad:
            bad[int(rng.integers(len(bad)))] ^= 1 << int(rng.integers(8))
        candidates.append(bytes(bad))
    return candidates


def _accepts_exactly_what_reference_accepts(payload, decode, ref_decode, numel, k, rng, extra, junk):
    """Kernel and reference agree on every hostile variant: both reject, or both decode alike."""
    for data in _hostile_variants(payload, rng, extra, junk):
        try:
            expected = ref_decode(data)
        except ref.Reject:
            expected = None
        try:
            got = decode(data, numel, k)
        except FrameError:
            got = None
        assert (got is None) == (expected is None), data.hex()
        if got is not None:
            assert got.tolist() == expected
            assert np.all(np.diff(got) > 0) and (k == 0 or 0 <= got[0] and got[-1] < numel)


@settings(max_examples=40, deadline=None)
@given(sparse_supports(max_numel=300), st.integers(0, 2**32 - 1))
def test_bitmap_accepts_exactly_what_reference_accepts_small(support, seed):
    numel, idx = support
    _accepts_exactly_what_reference_accepts(
        encode_bitmap(idx, numel), decode_bitmap,
        lambda d: np.flatnonzero(ref.decode_enumerative(d, numel, idx.size)).tolist(),
        numel, idx.size, np.random.default_rng(seed), b"\x01", 12)


@settings(max_examples=60, deadline=None)
@given(sparse_supports(max_numel=3000))
def test_bitmap_cost_bound(support):
    numel, idx = support
    bits = 8 * len(encode_bitmap(idx, numel))
    assert bits <= 1.001 * topk_index_bits(numel, idx.size) + 16


@pytest.mark.parametrize("density", [0.02, 0.05, 0.1, 0.25, 0.5])
def test_bitmap_target_at_n_1e5(density):
    """Issue target: payload <= 1.001 log2 C(n, k) + 16 bits for densities 0.02..0.5."""
    n = 100_000
    k = int(n * density)
    idx = np.sort(np.random.default_rng(1).choice(n, k, replace=False))
    bits = 8 * len(encode_bitmap(idx, n))
    assert bits <= 1.001 * topk_index_bits(n, k) + 16


def test_bitmap_estimate_is_close():
    """The estimate is unbiased to within a couple of bits over random supports."""
    rng = np.random.default_rng(2)
    errors = []
    for _ in range(200):
        numel = int(rng.integers(1000, 20_000))
        k = int(rng.integers(1, numel))
        idx = np.sort(rng.choice(numel, k, replace=False))
        errors.append(8 * len(encode_bitmap(idx, numel)) - bitmap_bits_estimate(numel, k))
    assert abs(np.mean(errors)) < 1.0 and max(np.abs(errors)) < 12, (np.mean(errors), max(errors))
    assert bitmap_bits_estimate(10, 0) == bitmap_bits_estimate(10, 10) == 0.0


def test_empty_and_full_supports_are_free():
    assert encode_bitmap(np.zeros(0, np.int64), 100) == b""
    assert encode_bitmap(np.arange(100), 100) == b""
    assert decode_bitmap(b"", 100, 100).tolist() == list(range(100))
    assert decode_bitmap(b"", 0, 0).size == 0
    with pytest.raises(CorruptFrameError):
        decode_bitmap(b"\x00", 100, 0)


def test_every_truncation_and_extension_is_rejected():
    rng = np.random.default_rng(3)
    numel = 20_000
    idx = np.sort(rng.choice(numel, 2_000, replace=False))
    payload = encode_bitmap(idx, numel)
    for cut in range(len(payload)):
        with pytest.raises(FrameError):
            decode_bitmap(payload[:cut], numel, idx.size)
    with pytest.raises(TruncatedFrameError):
        decode_bitmap(payload[:len(payload) // 2], numel, idx.size)
    for extra in (b"\x00", b"\x80", b"\xff\xff"):
        with pytest.raises(CorruptFrameError):
            decode_bitmap(payload + extra, numel, idx.size)
    for _ in range(50):
        junk = bytes(rng.integers(0, 256, int(rng.integers(0, 3000)), np.uint8))
        try:
            got = decode_bitmap(junk, numel, idx.size)
        except FrameError:
            continue
        assert got.size == idx.size and np.all(np.diff(got) > 0) and got[-1] < numel


def test_misuse_is_a_config_error():
    with pytest.raises(ConfigError):
        encode_bitmap(np.array([3, 1]), 10)
    with pytest.raises(ConfigError):
        encode_bitmap(np.array([1, 1]), 10)
    with pytest.raises(ConfigError):
        encode_bitmap(np.array([-1, 4]), 10)
    with pytest.raises(ConfigError):
        encode_bitmap(np.array([4, 10]), 10)
    with pytest.raises(ConfigError):
        encode_bitmap(np.array([4, 10], np.uint64), 10)
    with pytest.raises(ConfigError):
        encode_bitmap(np.array([0.5]), 10)
    with pytest.raises(ConfigError):
        decode_bitmap(b"", 10, 11)
    with pytest.raises(ConfigError):
        decode_bitmap(b"", 10, 2, out=np.empty(2, np.int32))
    with pytest.raises(ConfigError):
        decode_bitmap("text", 10, 2)
    out = np.empty(2, np.int64)
    assert decode_bitmap(encode_bitmap(np.array([2, 7]), 10), 10, 2, out=out) is out
    assert out.tolist() == [2, 7]


# -- the gap coder -----------------------------------------------------------------------
@settings(max_examples=80, deadline=None)
@given(sparse_supports(max_numel=5000))
def test_gaps_match_reference_small(support):
    numel, idx = support
    payload = encode_gaps(idx, numel)
    assert payload == ref.encode_gaps(idx, numel)
    got = decode_gaps(payload, numel, idx.size)
    assert got.dtype == np.int64 and np.array_equal(got, idx)


@settings(max_examples=40, deadline=None)
@given(sparse_supports(max_numel=2000), st.integers(0, 2**32 - 1))
def test_gaps_accept_exactly_what_reference_accepts_small(support, seed):
    numel, idx = support
    _accepts_exactly_what_reference_accepts(
        encode_gaps(idx, numel), decode_gaps, lambda d: ref.decode_gaps(d, numel, idx.size),
        numel, idx.size, np.random.default_rng(seed), b"\x00", 9)


def test_gaps_beat_golomb_at_k_100():
    """Mean excess over log2 C(n, k) at k = 100, n in [1e5, 1e7]: gaps ~5.3 bits, Golomb ~9.7."""
    rng = np.random.default_rng(1)
    gaps, golomb, estimate = [], [], []
    for _ in range(60):
        numel = int(rng.integers(10**5, 10**7))
        idx = np.sort(rng.choice(numel, 100, replace=False))
        bound = topk_index_bits(numel, 100)
        bits = 8 * len(encode_gaps(idx, numel))
        gaps.append(bits - bound)
        golomb.append(index_payload_bits(idx, numel, "golomb") - bound)
        estimate.append(bits - gaps_bits_estimate(numel, 100))
    assert np.mean(gaps) < 6.5 and max(gaps) < 12, (np.mean(gaps), max(gaps))
    assert np.mean(gaps) < np.mean(golomb) - 2
    assert abs(np.mean(estimate)) < 1.5


def test_gaps_edge_cases_and_misuse():
    assert encode_gaps(np.zeros(0, np.int64), 10) == b""
    assert encode_gaps(np.arange(10), 10) == b""
    assert decode_gaps(b"", 10, 10).tolist() == list(range(10))
    assert decode_gaps(encode_gaps(np.array([2**32 - 1]), 2**32), 2**32, 1).tolist() == [2**32 - 1]
    with pytest.raises(ConfigError):
        encode_gaps(np.array([1, 1]), 10)
    with pytest.raises(ConfigError):
        encode_gaps(np.array([5]), 2**32 + 1)
    with pytest.raises(CorruptFrameError):
        decode_gaps(b"\x01", 10, 0)
    idx = np.sort(np.random.default_rng(0).choice(10**6, 300, replace=False))
    payload = encode_gaps(idx, 10**6)
    for cut in range(len(payload)):
        with pytest.raises(FrameError):
            decode_gaps(payload[:cut], 10**6, 300)


@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: this test is the one that starts the pure-Python rerun, so it does not nest one (unset it to run it)")
def test_subset_without_jit():
    """The index kernels agree with the reference when they run as plain Python too."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-x", "-k", "small",
                           "-p", "no:cacheprovider", "--hypothesis-seed=0",
                           "-W", "ignore::RuntimeWarning"], env=env, capture_output=True,
                          text=True, timeout=300, cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def test_encoders_retry_with_the_worst_case_buffer(monkeypatch):
    """The first output buffer is sized from the expected payload; a support that needs more
    must come out identical through the worst-case retry (the kernels report ERR_OVERFLOW)."""
    from sparsecodec import entropy_index as ei

    rng = np.random.default_rng(3)
    idx = np.sort(rng.choice(200_000, 3000, replace=False)).astype(np.int64)
    expected = {name: getattr(ei, f"encode_{name}")(idx, 200_000) for name in ("gaps", "bitmap")}
    monkeypatch.setattr(ei, "topk_index_bits", lambda numel, k: 0.0)   # first buffer: 64 bytes
    for name, payload in expected.items():
        assert getattr(ei, f"encode_{name}")(idx, 200_000) == payload
