"""Hostile bytes: random, crafted and corrupted frames raise FrameError subclasses only."""

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sparsecodec as sc
from sparsecodec.frame import FrameWriter, crc8, encode_varint
from sparsecodec.testing import check_hostile_bytes

CODECS = [sc.TopK(k=20), sc.TopK(density=0.3, index="bitmap"), sc.TopK(k=5, index="raw"),
          sc.TopK(k=30, index="eliasfano"), sc.TopK(k=30, index="golomb"), sc.TopK(k=30, index="zstd"),
          sc.Dense(), sc.Dense(compression="zstd")]


@settings(max_examples=200)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(blob):
    # max_numel bounds the work a hostile frame can demand (decoding is O(numel))
    for prefix in (b"", b"SC\x01\x00", b"SC\x01\x00\x01", b"SC\x01\x00\x02", b"SC\x01\x00\x03",
                   b"SC\x01\x00\x7f"):
        try:
            sc.decode(prefix + blob, max_numel=1 << 20)
        except sc.FrameError:
            pass
        except sc.ConfigError as exc:
            # the one legitimate non-FrameError: a well-formed preamble that declares it needs
            # side information the caller did not pass (a schema bundle, a per-entry mask)
            assert "schema=" in str(exc) or "side information" in str(exc), exc


@pytest.mark.parametrize("codec", CODECS, ids=lambda c: repr(c)[:60])
def test_every_truncation_and_flips(codec):
    rng = np.random.default_rng(7)
    x = rng.standard_normal((7, 11)).astype(np.float32)
    data = bytes(codec.encode(x))
    check_hostile_bytes(codec, data, x.shape, x.dtype, rng=rng, flips=400)


def _topk_frame(shape, k, index_id=1, value_id=0, payload=b"", values=b""):
    w = FrameWriter(1)
    w.tensor_header(np.dtype(np.float32), shape)
    w.u8(index_id | (value_id << 4), "header")
    w.varint(k, "index")
    w.raw(payload, "index")
    w.raw(values, "values")
    return bytes(w.finish(numel=1, codec_id="topk"))


def test_crafted_headers():
    # huge numel: refused before any allocation
    with pytest.raises(sc.LimitExceededError):
        sc.decode(_topk_frame((2**40,), 1))
    with pytest.raises(sc.LimitExceededError):
        sc.decode(_topk_frame((2**20, 2**20), 1))
    # k larger than numel
    with pytest.raises(sc.CorruptFrameError, match="k"):
        sc.decode(_topk_frame((10,), 11))
    # k claims more values than bytes present
    with pytest.raises(sc.FrameError):
        sc.decode(_topk_frame((10**6,), 10**5))
    # unknown coder ids
    with pytest.raises(sc.CorruptFrameError, match="index coder"):
        sc.decode(_topk_frame((10,), 1, index_id=9, values=b"\0" * 4))
    with pytest.raises(sc.CorruptFrameError, match="value coder"):
        sc.decode(_topk_frame((10,), 1, value_id=7, values=b"\0" * 4))
    # raw coder: index out of range, unsorted and duplicate indices
    raw = sc.indices.INDEX_CODERS["raw"]
    with pytest.raises(sc.CorruptFrameError):
        sc.decode(_topk_frame((10,), 1, raw, payload=bytes([0xF0]), values=b"\0\0\x80\x3f"))  # index 15 >= 10
    two = np.zeros(2, np.float32).tobytes()
    with pytest.raises(sc.CorruptFrameError):
        sc.decode(_topk_frame((16,), 2, raw, payload=bytes([0x53]), values=two))  # 5 then 3: unsorted
    with pytest.raises(sc.CorruptFrameError):
        sc.decode(_topk_frame((16,), 2, raw, payload=bytes([0x55]), values=two))  # duplicate
    # unknown codec wire id and dtype
    with pytest.raises(sc.CorruptFrameError, match="wire id"):
        sc.decode(b"SC\x01\x00\x3e")
    head = bytes([0x63, 1, 1, 5])      # dtype code 0x63 does not exist; header CRC is valid
    with pytest.raises(sc.CorruptFrameError, match="dtype"):
        sc.decode(b"SC\x01\x00\x01" + head + bytes([crc8(head)]))
    head = bytes([1, 1, 2, 5])         # the two ndim copies differ
    with pytest.raises(sc.CorruptFrameError, match="ndim"):
        sc.decode(b"SC\x01\x00\x01" + head + bytes([crc8(head)]))


def test_crafted_bundles():
    body = bytes(sc.Dense().encode(np.ones(4, np.float32)))[4:]      # wire id + body
    def bundle(entries, count=None):
        out = b"SC\x01\x00\x7f" + encode_varint(len(entries) if count is None else count)
        for name, b in entries:
            out += encode_varint(len(name)) + name + encode_varint(len(b)) + b
        return out
    assert set(sc.decode_bundle(bundle([(b"w", body)]))) == {"w"}
    with pytest.raises(sc.CorruptFrameError, match="twice"):
        sc.decode_bundle(bundle([(b"w", body), (b"w", body)]))
    with pytest.raises(sc.FrameError):
        sc.decode_bundle(bundle([(b"w", body)], count=10**9))
    with pytest.raises(sc.CorruptFrameError, match="UTF-8"):
        sc.decode_bundle(bundle([(b"\xff\xfe", body)]))
    with pytest.raises(sc.FrameError):
        sc.decode_bundle(bundle([(b"w", body + b"\0")]))
    with pytest.raises(sc.LimitExceededError):
        sc.decode_bundle(bundle([(b"a", body), (b"b", body)]), max_numel=6)


def _layout(parts):
    return {name: (a.dtype, a.shape) for name, a in parts.items()}


def test_no_single_bit_flip_renames_or_reshapes_a_bundle_tensor_without_checksum():
    # issue 16: names were unguarded without the CRC-32, so one flipped bit renamed a tensor
    rng = np.random.default_rng(3)
    update = {"conv.w": rng.standard_normal((3, 4)).astype(np.float32),
              "fc.b": rng.standard_normal(5).astype(np.float32),
              "mask": rng.random(6) < 0.5}
    codecs = {"conv.w": sc.TopK(k=2), "fc.b": sc.Dense(), "mask": sc.MaskCodec()}
    schema = sc.Schema.from_tensors({**update, "extra": np.zeros((2, 2), np.float32)})
    cases = [(sc.encode_bundle(update, codecs, checksum=False), None),
             (sc.encode_bundle(update, codecs, checksum=False, schema=schema), schema),
             (sc.encode_bundle({"fc.b": update["fc.b"]}, sc.Dense(), checksum=False, schema=schema),
              schema)]
    for frame, sch in cases:
        data = bytes(frame)
        good = _layout(sc.decode_bundle(data, schema=sch))
        assert good == _layout({k: v for k, v in update.items() if k in good})
        for bit in range(8 * len(data)):
            bad = bytearray(data)
            bad[bit // 8] ^= 1 << (bit % 8)
            try:
                got = _layout(sc.decode_bundle(bytes(bad), schema=sch))
            except sc.FrameError:
                continue
            except sc.ConfigError as exc:     # wire id 0x7f -> 0x7e: now asks for a schema
                assert sch is None and "schema=" in str(exc)
                continue
            assert got == good, f"flip of bit {bit} changed the layout {good} to {got}"
    assert len(cases[0][0]) < len(sc.encode_bundle(update, codecs))   # still smaller than CRC-32


def test_bf16_nan_decodes_under_seterr_raise():
    # issue 16: a signalling-NaN bf16 value raised FloatingPointError when widened to float64
    frame = bytearray(bytes(sc.TopK(k=1, values="bf16", allow_nonfinite=True).encode(
        np.array([0.0, 2.0], np.float64))))
    frame[-2:] = (0x7F81).to_bytes(2, "little")        # the one value: a signalling NaN
    with np.errstate(all="raise"):
        assert np.isnan(sc.decode(bytes(frame))[1])
        frame[10] &= 0x7F     # config byte (after the 5-byte preamble, 5-byte tensor header)
        with pytest.raises(sc.CorruptFrameError, match="NaN"):
            sc.decode(bytes(frame))


def test_bf16_keeps_nan_a_nan():
    # rounding a NaN with a full payload used to carry into the sign: 0x7FFFFFFF became -0.0
    nans = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7F800001, 0x7FC00000], np.uint32).view(np.float32)
    codec = sc.TopK(k=4, values="bf16", allow_nonfinite=True)
    got = sc.decode(bytes(codec.encode(nans)))
    assert np.isnan(got).all() and np.array_equal(np.signbit(got), np.signbit(nans))
