"""Message-scoped value blocks in compact messages and the ``q8b`` coder (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sparsecodec as sc
from sparsecodec import values as vc
from sparsecodec.errors import ConfigError, CorruptFrameError, FrameError

CODERS = ("fp32", "q8", "q8b", "sign")
floats32 = st.floats(-2.0**100, 2.0**100, width=32, allow_subnormal=True)


def _flare_like(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """8 tensors like FLARE's CNN (conv/fc weights and biases)."""
    shapes = {"c1.w": (6, 1, 5, 5), "c1.b": (6,), "c2.w": (16, 6, 5, 5), "c2.b": (16,),
              "f1.w": (120, 256), "f1.b": (120,), "f2.w": (10, 120), "f2.b": (10,)}
    return {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}


FLARE_K = {"c1.w": 1, "c1.b": 1, "c2.w": 2, "c2.b": 2, "f1.w": 2, "f1.b": 2, "f2.w": 2, "f2.b": 2}  # 14


def _spec(model, values, values_scope, scope="tensor", k=None):
    if scope == "global":
        return sc.MessageSpec.from_tensors(model, sc.TopK(density=0.0005, values=values), "global", values_scope)
    codecs = {n: sc.TopK(k=(k or FLARE_K)[n], values=values) for n in model}
    return sc.MessageSpec.from_tensors(model, codecs, values_scope=values_scope)


def test_values_scope_is_validated_and_listed():
    model = _flare_like(np.random.default_rng(0))
    with pytest.raises(ConfigError, match="'tensor' or 'message'"):
        _spec(model, "q8", "layer")


def test_default_scope_fingerprint_and_bytes_are_unchanged():
    """values_scope="tensor" is the pre-issue-18 layout: same fingerprint, same bytes."""
    model = _flare_like(np.random.default_rng(1))
    codec = sc.TopK(k=2, values="q8")
    old = sc.MessageSpec.from_tensors(model, codec)
    new = sc.MessageSpec.from_tensors(model, codec, values_scope="tensor")
    assert old.fingerprint == new.fingerprint == sc.MessageSpec(old.schema, codec, "tensor").fingerprint
    assert bytes(sc.encode_packed(model, old)) == bytes(sc.encode_packed(model, new))
    msg = sc.MessageSpec.from_tensors(model, codec, values_scope="message")
    assert msg.fingerprint != old.fingerprint
    # a known fingerprint: the JSON of the default spec has no values_scope key
    schema = sc.Schema.from_tensors({"w": np.zeros(10, np.float32)})
    import json, zlib
    blob = json.dumps({"schema": schema.fingerprint, "codecs": {"w": sc.TopK(k=1).get_config()},
                       "scope": "tensor"}, sort_keys=True).encode()
    assert sc.MessageSpec(schema, sc.TopK(k=1)).fingerprint == zlib.crc32(blob) & 0xFFFFFFFF


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.sampled_from(CODERS), st.sampled_from(("tensor", "message")),
       st.sampled_from(("tensor", "global")))
def test_round_trip_and_sections(seed, values, values_scope, scope):
    rng = np.random.default_rng(seed)
    model = _flare_like(rng)
    spec = _spec(model, values, values_scope, scope)
    got: dict = {}
    frame = sc.encode_packed(model, spec, on_encoded=lambda n, r: got.__setitem__(n, r.to_dense()))
    per_sent = frame.meta["tensors"]
    assert sum(sum(s.values()) for s in per_sent.values()) == frame.nbits
    sections: dict = {}
    out = sc.decode_packed(bytes(frame), spec, sections=sections)
    assert sections == per_sent                      # sender and receiver attribute alike
    for n in model:
        assert out[n].tobytes() == got[n].tobytes()  # the recon is what is decoded, bit for bit
    if values == "fp32":
        for n in model:
            nz = out[n] != 0
            assert np.array_equal(out[n][nz], model[n][nz])


@pytest.mark.parametrize("values, tensor_bits, message_bits", [
    ("fp32", 32 * 14, 32 * 14), ("q8", 8 * 32 + 8 * 14, 32 + 8 * 14),
    ("q8b", 8 * 16 + 8 * 14, 16 + 8 * 14), ("sign", 8 * 32 + 8 * 8, 32 + 8 * 2),
    ("signb", 8 * 16 + 8 * 8, 16 + 8 * 2)])
def test_flare_like_value_bits(values, tensor_bits, message_bits):
    """8 tensors, k = 1..2, 14 values: message scope sends one scale."""
    model = _flare_like(np.random.default_rng(2))
    for scope, want in (("tensor", tensor_bits), ("message", message_bits)):
        frame = sc.encode_packed(model, _spec(model, values, scope))
        assert frame.sections["values"] == want, (values, scope)


def test_groups_by_coder_and_dtype_in_first_appearance_order():
    rng = np.random.default_rng(3)
    model = {"a": rng.standard_normal(20).astype(np.float32), "b": rng.standard_normal(20),
             "c": rng.standard_normal(20).astype(np.float32), "d": rng.standard_normal(20).astype(np.float32)}
    codecs = {"a": sc.TopK(k=3, values="q8"), "b": sc.TopK(k=2, values="q8"),
              "c": sc.TopK(k=4, values="q8"), "d": sc.TopK(k=1, values="q8b")}
    spec = sc.MessageSpec.from_tensors(model, codecs, values_scope="message")
    frame = sc.encode_packed(model, spec)
    # blocks: (q8, f4) a+c: 4 + 7; (q8, f8) b: 4 + 2; (q8b, f4) d: 2 + 1
    assert frame.sections["values"] == 8 * (11 + 6 + 3)
    per = frame.meta["tensors"]
    assert per["a"]["values"] + per["c"]["values"] == 8 * 11
    assert per["a"]["values"] == 8 * 11 - (8 * 11 * 4) // 7   # remainder on the first
    out = sc.decode_packed(bytes(frame), spec)
    assert out["b"].dtype == np.float64 and np.count_nonzero(out["c"]) == 4


@settings(max_examples=150, deadline=None)
@given(st.lists(hnp.arrays(np.float32, st.integers(1, 30), elements=floats32), min_size=1, max_size=5),
       st.integers(1, 30), st.sampled_from(("q8", "q8b")), st.sampled_from((1.0, 2.0**-130, 2.0**100)))
def test_error_feedback_through_a_message_block_is_exact(xs, k, values, mag):
    """``x_hat + e_new == x + e_old`` bit for bit, tiny, subnormal and huge magnitudes included."""
    with np.errstate(over="ignore", under="ignore"):
        xs = [(x * np.float32(mag)).astype(np.float32) for x in xs]
    xs = [np.where(np.isfinite(x), x, np.float32(0)) for x in xs]
    model = {f"t{i}": x for i, x in enumerate(xs)}
    codecs = {n: sc.TopK(k=min(k, x.size), values=values) for n, x in model.items()}
    spec = sc.MessageSpec.from_tensors(model, codecs, values_scope="message")
    ef = sc.ErrorFeedback()
    half = {n: x * np.float32(0.5) for n, x in model.items()}
    try:
        ef.step_bundle(half, codecs, spec=spec)                 # a non-zero e_old
        e_old = {n: ef.residual(n).copy() for n in model}
        with np.errstate(over="ignore"):
            a = {n: model[n] + e_old[n] for n in model}
        if not all(np.all(np.isfinite(v)) for v in a.values()):
            return
        frame = ef.step_bundle(model, codecs, spec=spec)
    except ConfigError as exc:                                  # a scale beyond float32
        assert "fp32" in str(exc)
        return
    x_hat = sc.decode_packed(bytes(frame), spec)
    for n in model:
        assert np.array_equal((x_hat[n] + ef.residual(n)).view(np.uint32), a[n].view(np.uint32)) or \
            np.array_equal(x_hat[n] + ef.residual(n), a[n])


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(st.sampled_from((np.float32, np.float64)), st.integers(1, 40), elements=floats32))
def test_q8b_scale_is_the_smallest_bfloat16_that_fits(v):
    data, vhat = vc.encode_values(v, "q8b")
    assert len(data) == 2 + v.size
    bits = int.from_bytes(data[:2], "little")
    s = float(np.array([bits << 16], np.uint32).view(np.float32)[0])
    peak = float(np.max(np.abs(v)))
    q = np.frombuffer(data, np.int8, offset=2)
    assert 127 * s >= peak and (bits <= 1 or 127 * float(np.array([(bits - 1) << 16], np.uint32)
                                                          .view(np.float32)[0]) < peak or peak == 0)
    assert np.array_equal(vhat, q.astype(v.dtype) * v.dtype.type(s))
    assert vc.decode_values(data, v.size, "q8b", v.dtype).tobytes() == vhat.tobytes()
    nz = q != 0
    r = v[nz].astype(np.float64) - vhat[nz]
    assert np.all(np.abs(r) <= s / 2 * (1 + 2.0**-40))
    # Sterbenz: v within a factor 2 of v_hat, so v - v_hat is exact in v's dtype
    assert np.array_equal((v[nz] - vhat[nz]).astype(np.float64), r)


def test_q8b_limits():
    with pytest.raises(ConfigError, match="fp32"):
        vc.encode_values(np.array([np.finfo(np.float32).max], np.float32), "q8b")
    with pytest.raises(ConfigError, match="fp32"):
        vc.encode_values(np.array([np.nan], np.float32), "q8b")
    data, vhat = vc.encode_values(np.array([1e-45, -1e-45], np.float32), "q8b")   # below every step
    assert data[:2] == b"\x01\x00" and not np.any(vhat)
    data, vhat = vc.encode_values(np.zeros(3, np.float32), "q8b")
    assert data == bytes(5) and not np.any(vhat)
    assert vc.value_payload_bytes("q8b", 0) == 0 and vc.value_payload_bytes("q8b", 10) == 12
    assert vc.value_coder("q8b").wire_id == 6


@pytest.mark.parametrize("scale, q, what", [
    (0x8000, [1], "scale"), (0x8041, [1], "scale"), (0x7F80, [1], "scale"), (0x7FC0, [1], "scale"),
    (0x7F00, [1], "scale"), (0x3F80, [-128], "-128"), (0x0000, [3], "zero scale"),
    (0x3F80, [100], "too small")])
def test_q8b_crafted_payloads_are_corrupt(scale, q, what):
    data = scale.to_bytes(2, "little") + np.array(q, np.int8).tobytes()
    with pytest.raises(CorruptFrameError, match=what):
        vc.decode_values(data, len(q), "q8b", np.dtype(np.float32))


def test_truncated_and_corrupted_message_blocks_raise_frame_errors():
    rng = np.random.default_rng(4)
    model = _flare_like(rng)
    for values in ("q8", "q8b", "sign", "signb"):
        spec = _spec(model, values, "message")
        for checksum in (True, False):
            data = bytes(sc.encode_packed(model, spec, checksum=checksum))
            for cut in range(len(data)):
                with pytest.raises(FrameError):
                    sc.decode_packed(data[:cut], spec)
            with pytest.raises(FrameError):
                sc.decode_packed(data + b"\x00", spec)
            for _ in range(200):
                buf = bytearray(data)
                buf[int(rng.integers(len(buf)))] ^= 1 << int(rng.integers(8))
                try:
                    sc.decode_packed(bytes(buf), spec)
                except FrameError:
                    pass
    # a message-scoped message is not readable with the per-tensor spec (the fingerprint differs)
    data = bytes(sc.encode_packed(model, _spec(model, "q8", "message")))
    with pytest.raises(FrameError):
        sc.decode_packed(data, _spec(model, "q8", "tensor"))


# -- fl: sim.values_scope reaches the spec --------------------------------------------------
TINY_FL = ["dataset=synthetic-logistic", "data.n_train=120", "data.n_test=30", "data.dim=12",
           "data.num_classes=3", "model=logistic-regression", "model_options.in_features=12",
           "model_options.num_classes=3", "model_options.init=torch_default", "rounds=1",
           "sim.clients=4", "sim.clients_per_round=2", "algo.lr=0.2", "algo.batch_size=8",
           "algo.ec.density=0.2", "algo.ec.values='q8b'"]


def test_sim_values_scope_reaches_the_uplink_spec(tmp_path):
    from fl.channel import Channel
    from fl.config import resolve_config
    from fl.simulation import run_simulation

    sent = []
    config = resolve_config(algorithm="ec", sets=TINY_FL + ["sim.values_scope='message'"])
    result = run_simulation(config, tmp_path, channel=Channel(tap=lambda m, c: sent.append(m)))
    ups = [m for m in sent if m.direction == "up"]
    assert ups and result.ledger.total_bits() == sum(8 * len(m.data) for m in sent)
    for msg in ups:
        assert msg.spec.values_scope == "message"
        info: dict = {}
        sc.decode_packed(msg.data, msg.spec, info=info)
        assert msg.sections["values"] == 16 + 8 * sum(info["k"].values())   # one q8b scale
        assert sum(sum(s.values()) for s in msg.tensor_sections.values()) == 8 * len(msg.data)


def test_sim_values_scope_is_validated():
    from fl.config import resolve_config

    with pytest.raises(ConfigError, match="'tensor', 'message'"):
        resolve_config(algorithm="ec", sets=TINY_FL + ["sim.values_scope='layer'"])
    with pytest.raises(ConfigError, match="sim.wire='compact'"):
        resolve_config(algorithm="ec", sets=TINY_FL + ["sim.values_scope='message'", "sim.wire='bundle'"])
    assert resolve_config(algorithm="ec", sets=TINY_FL).sim.values_scope == "tensor"
