"""Bundles (one message, one checksum) and error feedback (exact invariant, checkpoints)."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sparsecodec as sc
from sparsecodec.testing import model_updates


@given(update=model_updates(), data=st.data())
def test_bundle_round_trip_and_accounting(update, data):
    total = sum(v.size for v in update.values())
    scope = data.draw(st.sampled_from(["tensor", "global"]))
    k = data.draw(st.integers(0, min(total, min(v.size for v in update.values()))))
    frame = sc.encode_bundle(update, sc.TopK(k=k), scope=scope)
    parts = sc.decode_bundle(bytes(frame))
    assert list(parts) == list(update)
    assert frame.nbits == 8 * len(bytes(frame)) == sum(frame.sections.values())
    per = frame.meta["tensors"]
    assert set(per) == set(update)
    nnz_budget = k if scope == "global" else k * len(update)
    assert sum(int(np.count_nonzero(v)) for v in parts.values()) <= nnz_budget
    for name, x in update.items():
        assert parts[name].shape == x.shape and parts[name].dtype == x.dtype


def test_global_scope_selects_over_all_tensors():
    update = {"a": np.array([1.0, 9.0, 2.0], np.float32), "b": np.array([8.0, -7.0], np.float32)}
    parts = sc.decode_bundle(bytes(sc.encode_bundle(update, sc.TopK(k=3), scope="global")))
    assert parts["a"].tolist() == [0.0, 9.0, 0.0] and parts["b"].tolist() == [8.0, -7.0]


def test_bundle_checksum_detects_flips_and_limits_apply():
    update = {"w": np.arange(50, dtype=np.float32), "b": np.ones(3, np.float32)}
    data = bytes(sc.encode_bundle(update, sc.Dense()))
    for bit in range(0, 8 * len(data), 7):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(sc.FrameError):
            sc.decode_bundle(bytes(bad))
    with pytest.raises(sc.LimitExceededError):
        sc.decode_bundle(data, max_numel=52)
    assert set(sc.decode(data)) == {"w", "b"}


def test_bundle_mixed_codecs_and_duplicate_names_rejected():
    update = {"w": np.linspace(-1, 1, 40).astype(np.float32), "bn": np.ones(4, np.float32)}
    frame = sc.encode_bundle(update, {"w": sc.TopK(k=4), "bn": sc.Dense()})
    parts = sc.decode_bundle(bytes(frame))
    assert np.array_equal(parts["bn"], update["bn"]) and np.count_nonzero(parts["w"]) == 4
    with pytest.raises(sc.ConfigError, match="no codec"):
        sc.encode_bundle(update, {"w": sc.TopK(k=4)})


@given(xs=st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=6), data=st.data())
def test_error_feedback_invariant_is_exact(xs, data):
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    values = data.draw(st.sampled_from(["fp32", "fp16", "bf16"]))
    n = data.draw(st.integers(1, 300))
    codec = sc.TopK(k=data.draw(st.integers(0, n)), values=values)
    ef = sc.ErrorFeedback()
    for seed in xs:
        x = (np.random.default_rng(seed).standard_normal(n) * 100).astype(dtype)
        e_old = ef.residual("t")
        e_old = np.zeros(n, dtype) if e_old is None else e_old.copy()
        frame = ef.step("t", x, codec)
        x_hat = codec.decode(bytes(frame))
        assert np.array_equal(x_hat + ef.residual("t"), x + e_old), "x_hat + e_new != x + e_old"


def test_error_feedback_updates_in_place_and_checkpoints():
    ef = sc.ErrorFeedback()
    x = np.arange(10, dtype=np.float32)
    ef.step("w", x, sc.TopK(k=2))
    buf = ef.residual("w")
    ef.step("w", x, sc.TopK(k=2))
    assert ef.residual("w") is buf                    # same buffer: updated in place
    state = ef.state_dict()
    ef2 = sc.ErrorFeedback()
    ef2.load_state_dict(state)
    f1, f2 = ef.step("w", x, sc.TopK(k=2)), ef2.step("w", x, sc.TopK(k=2))
    assert bytes(f1) == bytes(f2) and np.array_equal(ef.residual("w"), ef2.residual("w"))
    with pytest.raises(sc.ConfigError, match="changed"):
        ef.step("w", np.ones(3, np.float32), sc.TopK(k=1))
    with pytest.raises(sc.ConfigError):
        ef.step("w", np.full(10, np.nan, np.float32), sc.TopK(k=1))
    assert np.array_equal(ef.residual("w"), ef2.residual("w"))   # a rejected step leaves no trace


def test_error_feedback_bundle_global_matches_invariant():
    rng = np.random.default_rng(0)
    update = {"a": rng.standard_normal((8, 8)).astype(np.float32), "b": rng.standard_normal(5).astype(np.float32)}
    ef = sc.ErrorFeedback()
    for _ in range(3):
        olds = {n: (ef.residual(n).copy() if ef.residual(n) is not None else np.zeros_like(v)) for n, v in update.items()}
        frame = ef.step_bundle(update, sc.TopK(density=0.1), scope="global")
        parts = sc.decode_bundle(bytes(frame))
        for n, v in update.items():
            assert np.array_equal(parts[n] + ef.residual(n), v + olds[n])
    dense_ef = sc.ErrorFeedback()
    dense_ef.step_bundle(update, sc.Dense())
    assert all(not np.any(dense_ef.residual(n)) for n in update)
