"""The value-coder table and the quantized coders (q8, sign) under error feedback (issue 18)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import sparsecodec as sc
from sparsecodec import values as vc
from sparsecodec.errors import ConfigError, CorruptFrameError, FrameError

QUANTIZED = ("q8", "sign")
WITH_Q8B = QUANTIZED + ("q8b", "signb")   # q8b's own crafted-payload tests: tests/test_values_scope.py
floats32 = st.floats(-2.0**100, 2.0**100, width=32, allow_subnormal=True)


def test_every_coder_is_in_one_table_with_unique_ids():
    names = sorted(vc.VALUE_CODERS)
    assert {"fp32", "fp16", "bf16", "fp64", "q8", "sign"} <= set(names)
    assert len(set(vc.VALUE_CODERS.values())) == len(names)
    for name in names:
        rec = vc.value_coder(name)
        assert rec.name == name and vc.value_coder_name(rec.wire_id) == name
    with pytest.raises(ConfigError, match="already registered"):
        vc.register_value_coder(vc.value_coder("q8"))
    with pytest.raises(ConfigError, match="values must be one of"):
        sc.TopK(k=1, values="q4")


@pytest.mark.parametrize("coder", sorted(vc.VALUE_CODERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_payload_size_and_decode_match_the_encoder(coder, dtype):
    rng = np.random.default_rng(3)
    for k in (0, 1, 7, 8, 9, 100):
        v = (rng.standard_normal(k) * 3).astype(dtype)
        data, vhat = vc.encode_values(v, coder)
        assert len(data) == vc.value_payload_bytes(coder, k)
        assert vhat.dtype == v.dtype
        out = vc.decode_values(data, k, coder, np.dtype(dtype))
        assert out.dtype == v.dtype and out.tobytes() == vhat.tobytes()


def test_q8_and_sign_sizes_and_reconstructions():
    v = np.array([1.0, -0.5, 0.25, -2.0], np.float32)
    data, vhat = vc.encode_values(v, "q8")
    assert len(data) == 8
    s = np.float32(2.0 / 127)
    assert np.array_equal(vhat, np.rint(v / s).astype(np.float32) * s)
    data, vhat = vc.encode_values(v, "sign")
    assert len(data) == 5 and data[4] == 0b1010
    assert np.array_equal(vhat, np.float32(0.9375) * np.sign(v))


@settings(max_examples=150, deadline=None)
@given(hnp.arrays(np.float32, st.integers(1, 60), elements=floats32), st.integers(1, 60),
       st.sampled_from(WITH_Q8B))
def test_error_feedback_invariant(x, k, coder):
    """q8, q8b: ``x_hat + e_new == x + e_old`` exactly; sign: within one rounding of a - x_hat."""
    k = min(k, x.size)
    ef = sc.ErrorFeedback()
    ef.step("w", x * np.float32(0.5), sc.TopK(k=k, values=coder))   # a non-zero e_old
    e_old = ef.residual("w").copy()
    with np.errstate(over="ignore"):
        a = x + e_old
    if not np.all(np.isfinite(a)):
        return
    frame = ef.step("w", x, sc.TopK(k=k, values=coder))
    x_hat = sc.decode(bytes(frame))
    e_new = ef.residual("w")
    if coder in ("q8", "q8b"):
        assert np.array_equal((x_hat + e_new).view(np.uint32), a.view(np.uint32)) or \
            np.array_equal(x_hat + e_new, a)
    else:
        err = np.abs((x_hat.astype(np.float64) + e_new) - a)
        bound = 2.0**-24 * np.abs(a.astype(np.float64) - x_hat) + 2.0**-149
        assert np.all(err <= bound)
        assert np.array_equal(e_new[x_hat == 0], a[x_hat == 0])


def test_sign_residual_is_not_exact_somewhere():
    # the documented bound is needed: a case where a - x_hat rounds
    x = np.array([1.0000001, 3000.0, 0.0], np.float32)
    ef = sc.ErrorFeedback()
    frame = ef.step("w", x, sc.TopK(k=2, values="sign"))
    x_hat = sc.decode(bytes(frame))
    assert not np.array_equal(x_hat + ef.residual("w"), x)


@pytest.mark.parametrize("coder", WITH_Q8B)
def test_non_finite_values_are_refused_with_the_fix(coder):
    x = np.array([np.inf, 1.0, 0.0], np.float32)
    with pytest.raises(ConfigError, match="fp32"):
        sc.TopK(k=2, values=coder, allow_nonfinite=True).encode(x)


def _frame(coder, k=9):
    x = np.linspace(-1, 1, 40, dtype=np.float32)
    return bytearray(bytes(sc.TopK(k=k, values=coder).encode(x)))


@pytest.mark.parametrize("coder", QUANTIZED)
def test_crafted_scales_are_corrupt(coder):
    for bad in (np.float32(np.nan), np.float32(-1.0), np.float32(np.inf)):
        data = _frame(coder)
        at = len(data) - vc.value_payload_bytes(coder, 9)
        data[at:at + 4] = np.array([bad], "<f4").tobytes()
        with pytest.raises(CorruptFrameError, match="scale"):
            sc.decode(bytes(data))


def test_q8_minus_128_and_zero_scale_are_corrupt():
    data = _frame("q8")
    data[-1] = 0x80
    with pytest.raises(CorruptFrameError, match="-128"):
        sc.decode(bytes(data))
    data = _frame("q8")
    at = len(data) - 13
    data[at:at + 4] = bytes(4)
    with pytest.raises(CorruptFrameError, match="zero scale"):
        sc.decode(bytes(data))


def test_sign_padding_bits_are_corrupt():
    data = _frame("sign", k=9)
    data[-1] |= 0x80
    with pytest.raises(CorruptFrameError, match="padding"):
        sc.decode(bytes(data))


@pytest.mark.parametrize("coder", WITH_Q8B)
def test_quantized_values_in_bundles_and_compact_messages(coder):
    rng = np.random.default_rng(0)
    tensors = {"a": rng.standard_normal((30, 40)).astype(np.float32),
               "b": rng.standard_normal(50).astype(np.float32)}
    codec = sc.TopK(density=0.1, values=coder)
    frame, x_hat = codec.encode_and_reconstruct(tensors["a"])
    bundle = sc.encode_bundle(tensors, codec)
    got = sc.decode_bundle(bytes(bundle))
    assert np.array_equal(got["a"], x_hat)
    spec = sc.MessageSpec.from_tensors(tensors, codec)
    msg = sc.encode_packed(tensors, spec)
    out = sc.decode_packed(bytes(msg), spec)
    assert all(np.array_equal(out[n], got[n]) for n in tensors)
    # q8 / sign cut the value section of the compact message
    fp32 = sc.encode_packed(tensors, sc.MessageSpec.from_tensors(tensors, sc.TopK(density=0.1)))
    assert msg.sections["values"] < fp32.sections["values"] / (3.5 if coder in ("q8", "q8b") else 20)


@pytest.fixture
def scratch_table():
    saved = (dict(vc._TABLE), dict(vc._BY_ID), dict(vc.VALUE_CODERS))
    yield
    for live, old in zip((vc._TABLE, vc._BY_ID, vc.VALUE_CODERS), saved):
        live.clear()
        live.update(old)


def test_a_new_value_coder_is_one_record_and_one_registration(scratch_table):
    """A coder registered from outside works in TopK frames, bundles, compact messages and
    inspect without any other edit: the seam issue 18 asks for."""
    def enc(v, allow_nonfinite):
        w = v.astype("<f4")[::-1]      # reversed fp32: a format no builtin writes
        return w.tobytes(), v.astype(np.float32).astype(v.dtype)

    def dec(data, k, dtype, allow_nonfinite):
        return np.frombuffer(data, "<f4", count=k)[::-1].astype(dtype)

    # an id past the config byte's three bits: TopK frames write it after the escape (7)
    vc.register_value_coder(vc.ValueCoder("rev32", 9, lambda k: 4 * k, enc, dec, ef_exact=True))
    x = np.random.default_rng(1).standard_normal(200).astype(np.float32)
    codec = sc.TopK(k=9, values="rev32")
    frame, x_hat = codec.encode_and_reconstruct(x)
    assert np.array_equal(sc.decode(bytes(frame)), x_hat)
    assert sc.inspect_frame(bytes(frame)).sections["values"] == 9 * 32
    tensors = {"w": x.reshape(10, 20)}
    spec = sc.MessageSpec.from_tensors(tensors, codec)
    assert np.array_equal(sc.decode_packed(bytes(sc.encode_packed(tensors, spec)), spec)["w"].reshape(-1), x_hat)
    config = bytes(frame)[5 + 5]                # after the preamble and a 1-D tensor header
    assert (config >> 4) & 7 == vc.VALUE_ID_ESCAPE and bytes(frame)[11] == 9 - vc.VALUE_ID_ESCAPE
    with pytest.raises(ConfigError, match="wire ids are 0..134"):
        vc.register_value_coder(vc.ValueCoder("x", 135, lambda k: k, enc, dec, ef_exact=True))


@pytest.mark.parametrize("algorithm", ["ec", "ef21", "flare", "fedavg-topk", "sparse-proxskip"])
def test_fl_configs_select_value_coders_by_name(algorithm):
    from fl.algorithms import get_algorithm

    algo = get_algorithm(algorithm)
    for coder in ("q8", "q8b", "sign", "signb"):
        assert algo.make_config(values=coder).codec().values == coder
    with pytest.raises(Exception, match="q8"):      # the error lists the choices
        algo.make_config(values="q4")


@pytest.mark.parametrize("coder", sorted(vc.VALUE_CODERS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_owned_values_give_the_same_bytes_and_reconstruction(coder, dtype):
    """``owned=True`` (TopK's gathered values) skips the copies only where the payload is the
    input's own bytes (fp32 of float32, fp64 of float64); every coder writes the same bytes
    and reconstruction either way, and NaN/Inf are still refused."""
    v = (np.random.default_rng(8).standard_normal(1000) * 3).astype(dtype)
    data, vhat = vc.encode_values(v.copy(), coder)
    owned = v.copy()
    data_o, vhat_o = vc.encode_values(owned, coder, owned=True)
    assert bytes(data_o) == bytes(data) and vhat_o.dtype == vhat.dtype
    assert vhat_o.tobytes() == vhat.tobytes()
    as_is = (coder, np.dtype(dtype).name) in (("fp32", "float32"), ("fp64", "float64"))
    assert (vhat_o is owned) == as_is              # no copy exactly where none is needed
    if as_is:
        assert isinstance(data_o, memoryview) and data_o.readonly
        bad = owned.copy()
        bad[3] = np.nan
        with pytest.raises(ConfigError, match="NaN or infinite"):
            vc.encode_values(bad, coder, owned=True)
        data_n, vhat_n = vc.encode_values(bad, coder, owned=True, allow_nonfinite=True)
        assert bytes(data_n) == bad.tobytes() and vhat_n is bad
    else:
        assert type(data_o) is bytes


def test_topk_reconstruction_does_not_alias_the_frame():
    """TopK keeps its gathered values as v_hat and hands a view of them to the frame writer;
    the frame holds its own copy, so writing to v_hat does not change the frame."""
    x = np.random.default_rng(4).standard_normal(100_000).astype(np.float32)
    frame, idx, v_hat = sc.TopK(density=0.5, values="fp32").encode_sparse(x)
    before = bytes(frame)
    v_hat[:] = 0.0
    assert bytes(frame) == before
    assert np.array_equal(sc.decode(frame)[idx], x[idx])


def test_signb_is_sign_with_a_bfloat16_scale_behind_the_escape():
    v = np.array([1.0, -0.5, 0.25, -2.0], np.float32)
    data, vhat = vc.encode_values(v, "signb")
    assert len(data) == 3 and data[2] == 0b1010
    assert data[:2] == (np.array([0.9375], np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
    assert np.array_equal(vhat, np.float32(0.9375) * np.sign(v))
    x = np.linspace(-1, 1, 40, dtype=np.float32)
    sign, signb = (sc.TopK(k=9, values=c).encode(x) for c in ("sign", "signb"))
    # one header byte more (the escaped id), two scale bytes fewer
    assert signb.sections["header"] == sign.sections["header"] + 8
    assert signb.sections["values"] == sign.sections["values"] - 16
    assert sc.inspect_frame(bytes(signb)).tensors[0].value_coder == "signb"


def test_crafted_escaped_value_ids_and_signb_payloads_are_frame_errors():
    good = _frame("signb")
    at = 5 + 5                                   # the config byte of a 1-D float32 frame
    assert (good[at] >> 4) & 7 == vc.VALUE_ID_ESCAPE and good[at + 1] == 0
    for ext, match in ((5, "unknown value coder id 12"), (127, "unknown value coder id 134"),
                       (0x80, "varint|extended value coder id")):
        data = bytearray(good)
        data[at + 1] = ext
        with pytest.raises(FrameError, match=match):
            sc.decode(bytes(data))
    with pytest.raises(FrameError):              # cut right after the escape
        sc.decode(bytes(good[:at + 1]))
    vat = len(good) - vc.value_payload_bytes("signb", 9)
    for bits, match in ((0x8000, "scale"), (0x7F80, "scale"), (0x7FC0, "scale"), (0xBF80, "scale")):
        data = bytearray(good)
        data[vat:vat + 2] = bits.to_bytes(2, "little")
        with pytest.raises(CorruptFrameError, match=match):
            sc.decode(bytes(data))
    data = bytearray(good)
    data[-1] |= 0x80
    with pytest.raises(CorruptFrameError, match="padding"):
        sc.decode(bytes(data))
