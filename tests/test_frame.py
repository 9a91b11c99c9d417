"""Wire-format primitives: varints, preamble validation, section accounting."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sparsecodec as sc
from sparsecodec.frame import BUNDLE_WIRE_ID, FrameReader, FrameWriter, encode_varint
from sparsecodec.mask import _model_byte


@given(st.integers(0, 2**63 - 1))
def test_varint_round_trip(v):
    w = FrameWriter(wire_id=2)
    w.varint(v, "header")
    frame = w.finish(numel=1, codec_id="x")
    r = FrameReader(bytes(frame))
    assert r.varint("v", 2**63) == v
    r.expect_end()


def test_varint_rejects_non_canonical_and_overlong():
    base = b"SC\x01\x00\x02"
    with pytest.raises(sc.CorruptFrameError, match="non-canonical"):
        FrameReader(base + b"\x80\x00").varint("v", 10**9)
    with pytest.raises(sc.CorruptFrameError, match="exceeds its limit"):
        FrameReader(base + encode_varint(1001)).varint("v", 1000)
    with pytest.raises(sc.TruncatedFrameError):
        FrameReader(base + b"\x80").varint("v", 10**9)
    with pytest.raises(sc.CorruptFrameError):
        FrameReader(base + b"\xff" * 12).varint("v", 2**70)


def test_preamble_errors_are_specific():
    with pytest.raises(sc.BadMagicError):
        FrameReader(b"XX\x01\x00\x01")
    with pytest.raises(sc.UnsupportedVersionError, match="version 9"):
        FrameReader(b"SC\x09\x00\x01")
    with pytest.raises(sc.CorruptFrameError, match="flag"):
        FrameReader(b"SC\x01\x04\x01")
    with pytest.raises(sc.CorruptFrameError, match="inconsistent checksum flag"):
        FrameReader(b"SC\x01\x01\x01" + b"\0" * 8)
    with pytest.raises(sc.TruncatedFrameError):
        FrameReader(b"SC\x01")
    with pytest.raises(sc.TruncatedFrameError):
        FrameReader(b"SC\x01\x03\x01")   # checksum flag set but no room for the CRC
    with pytest.raises(sc.ConfigError):
        FrameReader(12345)


def test_checksum_detects_every_single_bit_flip():
    w = FrameWriter(wire_id=2, checksum=True)
    w.raw(bytes(range(40)), "values")
    data = bytes(w.finish(numel=40, codec_id="x"))
    for bit in range(8 * len(data)):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(sc.FrameError):
            FrameReader(bytes(bad))


def test_sections_sum_to_nbits():
    w = FrameWriter(wire_id=1, checksum=True)
    w.tensor_header(np.dtype(np.float32), (3, 4))
    w.varint(300, "index")
    w.raw(b"\x00" * 7, "values")
    f = w.finish(numel=12, codec_id="x")
    assert f.nbits == 8 * len(bytes(f)) == sum(f.sections.values())
    assert f.sections["checksum"] == 32 and f.sections["values"] == 56 and f.sections["index"] == 16


def test_tensor_header_limits():
    w = FrameWriter(wire_id=2)
    w.tensor_header(np.dtype(np.float32), (1000, 1000))
    data = bytes(w.finish(numel=10**6, codec_id="x"))
    with pytest.raises(sc.LimitExceededError, match="max_numel"):
        FrameReader(data, max_numel=10**5).tensor_header()
    assert FrameReader(data).tensor_header()[2] == 10**6
    with pytest.raises(sc.ConfigError):
        FrameWriter(wire_id=2).tensor_header(np.dtype(np.complex64), (2,))


def test_no_single_bit_flip_changes_dtype_or_shape_without_checksum():
    for shape in [(), (0,), (3, 4), (70000, 2), (2, 3, 4, 5, 6)]:
        w = FrameWriter(wire_id=2)
        w.tensor_header(np.dtype(np.float32), shape)
        data = bytes(w.finish(numel=1, codec_id="x"))
        for bit in range(8 * len(data)):
            bad = bytearray(data)
            bad[bit // 8] ^= 1 << (bit % 8)
            try:
                r = FrameReader(bytes(bad))
                dtype, got, _ = r.tensor_header()
            except sc.FrameError:
                continue
            assert (dtype, got) == (np.dtype(np.float32), shape), (
                f"flip of bit {bit} gave {dtype}{got} instead of float32{shape}")


# -- issue 16: shapes numpy cannot hold ------------------------------------------------------
def _empty_body_frame(wire_id: int, dtype, shape, body: bytes) -> bytes:
    w = FrameWriter(wire_id=wire_id)
    w.tensor_header(np.dtype(dtype), shape)
    w.raw(body, "header")
    return bytes(w.finish(numel=0, codec_id="x"))


@pytest.mark.parametrize("shape", [(0, 2**63), (0, 2**64 - 1), (2**62, 0, 4),
                                   (0, 2**40, 2**40), (2**31, 2**31, 4, 0)])
def test_zero_size_shapes_numpy_cannot_represent_are_frame_errors(shape):
    # numel is 0, so max_numel does not stop them; numpy would raise ValueError
    frames = [_empty_body_frame(2, np.float32, shape, b"\x00"),       # dense, raw, no values
              _empty_body_frame(1, np.float32, shape, b"\x01\x00"),   # topk, k = 0
              _empty_body_frame(3, np.bool_, shape,                   # mask, adaptive, 0 ones
                                bytes([_model_byte(0, 1), 0]))]
    for data in frames:
        with pytest.raises(sc.CorruptFrameError, match="no array can have"):
            sc.decode(data)


def test_zero_size_shapes_numpy_can_represent_still_decode():
    for shape in [(0,), (0, 2**40), (2**20, 0, 2**20)]:
        got = sc.decode(_empty_body_frame(2, np.float32, shape, b"\x00"))
        assert got.shape == shape and got.dtype == np.float32


# -- issue 17: a Frame is bytes-like -----------------------------------------------------------
def test_frame_is_bytes_like():
    import pickle

    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    for codec in (sc.Dense(), sc.Dense(compression="zstd"), sc.TopK(k=2), sc.MaskCodec()):
        arr = x > 2 if isinstance(codec, sc.MaskCodec) else x
        frame = codec.encode(arr)
        plain = bytes(frame)
        assert type(plain) is bytes and plain == frame.data == frame
        assert memoryview(frame).tobytes() == plain and len(frame) == len(plain)
        for decoded in (codec.decode(frame), sc.decode(frame), sc.decode(memoryview(frame))):
            assert np.array_equal(decoded, codec.decode(plain))
        again = pickle.loads(pickle.dumps(frame))
        assert again == frame and again.sections == frame.sections and again.numel == frame.numel
        assert frame.nbits == 8 * len(plain) == sum(frame.sections.values())
    bundle = sc.encode_bundle({"w": x}, sc.TopK(k=2))
    assert np.array_equal(sc.decode_bundle(bundle)["w"], sc.decode_bundle(bytes(bundle))["w"])
    with pytest.raises(AttributeError, match="immutable"):
        frame.numel = 3


def test_max_numel_must_be_a_count():
    data = bytes(sc.Dense().encode(np.zeros(3, np.float32)))
    for bad in ("100", None, -1, float("inf"), [3]):
        with pytest.raises(sc.ConfigError, match="max_numel"):
            sc.decode(data, max_numel=bad)
    assert sc.decode(data, max_numel=np.int64(3)).shape == (3,)


@pytest.mark.parametrize("checksum", [False, True])
def test_writer_pieces_give_the_bytes_of_one_buffer(monkeypatch, checksum):
    """Large payloads are kept by reference and joined once at finish(); frames, bodies,
    CRC-32s and bundle entry checks are byte for byte those of a writer that copies
    everything into one bytearray (_BY_REFERENCE past any size)."""
    import sparsecodec.frame as fr

    rng = np.random.default_rng(5)
    piece = fr._BY_REFERENCE
    big = rng.integers(0, 256, 3 * piece, dtype=np.uint8)

    def write(w):
        w.u8(7, "header")
        w.raw(big.tobytes(), "index")                 # bytes: kept by reference
        w.varint(300, "index")
        w.raw_view(big[::-1].copy(), "values")        # a view the caller will not change
        start = len(w)
        w.raw(bytearray(b"tail"), "values")           # mutable: always copied
        w.raw_view(b"xy", "values")                   # small: copied
        w.embed(big[:piece].tobytes(), {"index": 8 * piece})
        w.crc8_since(start, "header")
        return w

    def build():
        frame = write(FrameWriter(BUNDLE_WIRE_ID, checksum=checksum)).finish(1, "t")
        body = write(FrameWriter(body_only=True)).body()
        return bytes(frame), dict(frame.sections), body

    pieces = build()
    monkeypatch.setattr(fr, "_BY_REFERENCE", 1 << 62)
    assert build() == pieces
    data, sections, (body, body_sections) = pieces
    assert sum(sections.values()) == 8 * len(data) and sum(body_sections.values()) == 8 * len(body)
    if checksum:
        FrameReader(data)                             # its CRC-32 verifies
