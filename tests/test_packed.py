"""Compact messages (sparsecodec.packed) and model patches (sparsecodec.patch)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sparsecodec as sc
from sparsecodec.enumerative_rank import decode_ranks, encode_ranks, rank_subset, unrank_subset
from sparsecodec.errors import ChecksumError, ConfigError, FrameError
from sparsecodec.patch import (ReplicaMismatchError, apply_patch, changed_positions, decode_patch,
                               encode_patch, model_digest)


def _model(rng, shapes=((30, 20), (20,), (5, 4, 3))):
    return {f"t{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}


# -- enumerative ranks --------------------------------------------------------------------------
@given(st.integers(1, 200).flatmap(lambda n: st.tuples(st.just(n), st.sets(st.integers(0, n - 1), max_size=min(n, 12)))))
@settings(max_examples=200, deadline=None)
def test_rank_is_a_bijection(args):
    n, s = args
    idx = np.array(sorted(s), np.int64)
    r = rank_subset(idx, n)
    assert 0 <= r < math.comb(n, idx.size)
    np.testing.assert_array_equal(unrank_subset(r, n, idx.size), idx)


def test_joined_ranks_cost_the_bound_rounded_up_to_a_byte():
    rng = np.random.default_rng(0)
    sets = [(np.sort(rng.choice(n, k, replace=False)).astype(np.int64), n) for n, k in [(10_000, 3), (500, 1), (7, 7), (90, 0)]]
    data = encode_ranks(sets)
    bound = sum(math.log2(math.comb(n, s.size)) for s, n in sets)
    assert len(data) == math.ceil(math.ceil(bound) / 8)
    for got, (s, _) in zip(decode_ranks(data, [(n, s.size) for s, n in sets]), sets):
        np.testing.assert_array_equal(got, s)


def test_out_of_range_rank_is_corrupt():
    shapes = [(10, 2)]               # C(10, 2) = 45 < 2**8
    with pytest.raises(FrameError, match="out of range"):
        decode_ranks(bytes([45]), shapes)
    with pytest.raises(FrameError):
        decode_ranks(b"", shapes)


# -- compact messages ---------------------------------------------------------------------------
CODECS = [sc.TopK.flare(R=0.5), sc.TopK(k=3), sc.TopK(density=0.2), sc.TopK(k="nnz"),
          sc.TopK(k=3, values="fp16"), sc.TopK(density=0.2, index="raw"), sc.Dense()]


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: str(c.get_config()))
@pytest.mark.parametrize("checksum", [True, False])
def test_compact_round_trip_equals_the_self_describing_bundle(codec, checksum):
    rng = np.random.default_rng(1)
    x = _model(rng)
    if codec.get_config().get("k") == "nnz":
        for a in x.values():
            a[np.abs(a) < 1.5] = 0
    spec = sc.MessageSpec.from_tensors(x, codec)
    frame = sc.encode_packed(x, spec, checksum=checksum)
    want = sc.decode_bundle(bytes(sc.encode_bundle(x, codec)))
    sections: dict = {}
    got = sc.decode_packed(bytes(frame), spec, sections=sections)
    for n in x:
        np.testing.assert_array_equal(got[n], want[n])
    # bits are read off the bytes: the receiver's rows equal the sender's and add up
    assert sections == frame.meta["tensors"]
    assert sum(sum(s.values()) for s in sections.values()) == 8 * len(bytes(frame))
    assert frame.nbits < sc.encode_bundle(x, codec, schema=spec.schema, checksum=checksum).nbits


def test_global_scope_and_mixed_codecs():
    rng = np.random.default_rng(2)
    x = _model(rng)
    spec = sc.MessageSpec.from_tensors(x, sc.TopK(k=10), scope="global")
    got = sc.decode_packed(bytes(sc.encode_packed(x, spec)), spec)
    want = sc.decode_bundle(bytes(sc.encode_bundle(x, sc.TopK(k=10), scope="global")))
    assert all(np.array_equal(got[n], want[n]) for n in x)
    mixed = {"t0": sc.TopK(k="nnz"), "t1": sc.Dense(), "t2": sc.TopK(k=2)}
    spec = sc.MessageSpec.from_tensors(x, mixed)
    got = sc.decode_packed(bytes(sc.encode_packed(x, spec)), spec)
    np.testing.assert_array_equal(got["t1"], x["t1"])


def test_global_scope_fixed_k_may_exceed_one_tensor():
    """k is the message's under scope="global": a k larger than some tensor is valid, as in
    a bundle, and both ends derive it (nothing per tensor is sent)."""
    rng = np.random.default_rng(4)
    x = {"small": rng.standard_normal(10).astype(np.float32) + 100,   # all ten are kept
         "big": rng.standard_normal(1000).astype(np.float32)}
    want = sc.decode_bundle(bytes(sc.encode_bundle(x, sc.TopK(k=20), scope="global")))
    for values_scope in ("tensor", "message"):
        spec = sc.MessageSpec.from_tensors(x, sc.TopK(k=20), scope="global", values_scope=values_scope)
        got = sc.decode_packed(bytes(sc.encode_packed(x, spec)), spec)
        assert all(np.array_equal(got[n], want[n]) for n in x)
        assert [int(np.count_nonzero(got[n])) for n in x] == [10, 10]


def test_flare_T2_message_is_near_its_bound():
    """A FLARE uplink (k = 1 per small tensor) costs the bound + 72 fixed bits + < 8 padding."""
    rng = np.random.default_rng(3)
    x = _model(rng, shapes=((32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (512, 1024), (512,), (10, 512), (10,)))
    codec = sc.TopK.flare(R=0.001)
    spec = sc.MessageSpec.from_tensors(x, codec)
    frame = sc.encode_packed(x, spec)
    ks = [codec.k_for(a.size) for a in x.values()]
    bound = sum(math.log2(math.comb(a.size, k)) for a, k in zip(x.values(), ks)) + 32 * sum(ks)
    assert bound <= frame.nbits - 72 < bound + 8


def test_wrong_spec_is_a_clear_error():
    rng = np.random.default_rng(4)
    x = _model(rng)
    spec = sc.MessageSpec.from_tensors(x, sc.TopK(k=3))
    data = bytes(sc.encode_packed(x, spec))
    other = sc.MessageSpec.from_tensors(x, sc.TopK(k=4))
    with pytest.raises(ChecksumError, match="another schema"):
        sc.decode_packed(data, other)
    nocrc = bytes(sc.encode_packed(x, spec, checksum=False))
    with pytest.raises(FrameError, match="encoded against"):
        sc.decode_packed(nocrc, other)
    with pytest.raises(ConfigError, match="exactly its schema"):
        sc.encode_packed({"t0": x["t0"]}, spec)


def test_every_truncation_and_bit_flip_is_a_frame_error():
    rng = np.random.default_rng(5)
    x = _model(rng)
    spec = sc.MessageSpec.from_tensors(x, sc.TopK(k="nnz"))
    for a in x.values():
        a[np.abs(a) < 1.0] = 0
    data = bytes(sc.encode_packed(x, spec))
    for cut in range(len(data)):
        with pytest.raises(FrameError):
            sc.decode_packed(data[:cut], spec)
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameError):
            sc.decode_packed(bytes(bad), spec)


def test_error_feedback_with_a_spec_keeps_the_invariant():
    rng = np.random.default_rng(6)
    x = _model(rng)
    codec = sc.TopK.flare(R=1.0)
    spec = sc.MessageSpec.from_tensors(x, codec)
    ef = sc.ErrorFeedback()
    e_old = {n: np.zeros_like(a) for n, a in x.items()}
    for _ in range(3):
        frame = ef.step_bundle(x, codec, spec=spec)
        sent = sc.decode_packed(bytes(frame), spec)
        for n in x:
            np.testing.assert_array_equal(sent[n] + ef.residual(n), x[n] + e_old[n])
            e_old[n] = ef.residual(n).copy()
    with pytest.raises(ConfigError, match="spec"):
        ef.step_bundle(x, sc.TopK(k=1), spec=spec)


# -- patches ------------------------------------------------------------------------------------
def test_patch_reproduces_the_target_bit_for_bit_including_nan_and_negative_zero():
    rng = np.random.default_rng(7)
    old = _model(rng)
    new = {n: a.copy() for n, a in old.items()}
    new["t0"].reshape(-1)[[3, 100, 599]] = [np.nan, -0.0, 2.0]
    new["t2"].reshape(-1)[rng.choice(60, 50, replace=False)] += 1   # a large k: an index coder
    old["t1"][4] = 0.0
    new["t1"][4] = -0.0
    schema = sc.Schema.from_tensors(old)
    supports = {n: changed_positions(old[n], new[n]) for n in old}
    assert supports["t1"].tolist() == [4]
    frame = encode_patch(new, supports, schema, base=7, version=9)
    patch = decode_patch(bytes(frame), schema)
    assert patch.sections == frame.meta["tensors"]
    replica = {n: a.copy() for n, a in old.items()}
    assert apply_patch(replica, 7, patch, schema) == 9
    for n in new:
        assert replica[n].tobytes() == new[n].tobytes()
    assert frame.nbits >= frame.meta["bound_bits"]


def test_patch_to_a_wrong_replica_is_detected():
    rng = np.random.default_rng(8)
    old = _model(rng)
    new = {n: a + 1 for n, a in old.items()}
    new["t1"] = old["t1"].copy()
    schema = sc.Schema.from_tensors(old)
    frame = encode_patch(new, {n: changed_positions(old[n], new[n]) for n in old}, schema, base=1, version=2)
    patch = decode_patch(bytes(frame), schema)
    with pytest.raises(ReplicaMismatchError, match="version"):
        apply_patch({n: a.copy() for n, a in old.items()}, 0, patch, schema)
    lost = {n: np.zeros_like(a) for n, a in old.items()}      # a client that lost its state
    with pytest.raises(ReplicaMismatchError, match="digest"):
        apply_patch(lost, 1, patch, schema)
    assert model_digest(new, schema) == patch.digest


def test_hostile_patches_raise_frame_errors():
    rng = np.random.default_rng(9)
    old = _model(rng)
    new = {n: a.copy() for n, a in old.items()}
    new["t0"].reshape(-1)[:5] = 0
    schema = sc.Schema.from_tensors(old)
    data = bytes(encode_patch(new, {n: changed_positions(old[n], new[n]) for n in old}, schema,
                              base=0, version=1, checksum=False))
    for cut in range(len(data)):
        with pytest.raises(FrameError):
            decode_patch(data[:cut], schema)
    flips = 0
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            p = decode_patch(bytes(bad), schema)
        except FrameError:
            continue
        flips += 1     # without the CRC a flip may decode: the digest then refuses the result,
        replica = {n: a.copy() for n, a in old.items()}   # or it hit the version numbers only
        try:
            apply_patch(replica, 0, p, schema)
        except ReplicaMismatchError:
            continue
        assert all(replica[n].tobytes() == new[n].tobytes() for n in new) and p.version != 1
    assert flips < 8 * len(data)


def test_frame_info_reads_a_prefix_and_knows_compact_messages_and_patches():
    rng = np.random.default_rng(10)
    x = _model(rng)
    data = bytes(sc.Dense(checksum=True).encode(x["t0"]))
    assert sc.frame_info(data[:5]).codec_id == "dense"          # the preamble alone
    with pytest.raises(FrameError):
        sc.frame_info(data[:12])                                # a prefix is not the whole frame
    assert sc.frame_info(data[:12], verify=False).nbytes == 12
    spec = sc.MessageSpec.from_tensors(x, sc.TopK(k=2))
    assert sc.frame_info(bytes(sc.encode_packed(x, spec))).codec_id == "packed"
    schema = sc.Schema.from_tensors(x)
    patch = encode_patch(x, {}, schema, base=0, version=1)
    assert sc.frame_info(bytes(patch)).codec_id == "patch"
