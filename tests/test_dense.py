import tracemalloc

import numpy as np
import pytest
import zstandard

import sparsecodec as sc
from sparsecodec.frame import FrameWriter
from sparsecodec.testing import check_codec


@pytest.mark.parametrize("codec", [sc.Dense(), sc.Dense(compression="zstd", checksum=True)])
def test_dense_conformance(codec):
    check_codec(codec, max_examples=25)


def test_dense_is_lossless_for_all_dtypes_and_counts_32_bits():
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(7),
              rng.random(9) < 0.3, rng.integers(0, 255, 4).astype(np.uint8),
              np.float16([1.5, -2.0])):
        for codec in (sc.Dense(), sc.Dense(compression="zstd")):
            y = sc.decode(bytes(codec.encode(x)))
            assert y.dtype == x.dtype and np.array_equal(y, x)
    assert sc.Dense().encode(np.zeros(100, np.float32)).sections["values"] == 3200


def test_dense_zstd_shrinks_structured_tensors():
    x = np.zeros(10_000, np.float32)
    x[::100] = 1.0
    assert len(sc.Dense(compression="zstd").encode(x)) < len(sc.Dense().encode(x)) / 20


def test_dense_rejects_nonfinite_unless_allowed():
    with pytest.raises(sc.ConfigError):
        sc.Dense().encode(np.array([np.nan], np.float32))
    y = sc.decode(bytes(sc.Dense(allow_nonfinite=True).encode(np.array([np.inf], np.float32))))
    assert y[0] == np.inf


# -- issue 16: zstd payloads bounded by the header, decoded in place --------------------------
def _zstd_frame(content_size: int | None, blocks: bytes = b"\x01\x00\x00", window: int = 0x58) -> bytes:
    """A hand-made zstd frame: header declaring ``content_size`` (8 bytes, or absent with a
    window descriptor), then ``blocks`` (default: one empty last raw block)."""
    if content_size is None:
        return b"\x28\xb5\x2f\xfd" + bytes([0x00, window]) + blocks
    return b"\x28\xb5\x2f\xfd" + bytes([0xE0]) + content_size.to_bytes(8, "little") + blocks


def _dense_zstd(shape, payload: bytes, dtype=np.float32, checksum=False) -> bytes:
    w = FrameWriter(wire_id=2, checksum=checksum)
    w.tensor_header(np.dtype(dtype), shape)
    w.u8(1, "header")
    w.raw(payload, "values")
    return bytes(w.finish(numel=1, codec_id="dense"))


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        try:
            fn()
        except sc.FrameError:
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_dense_zstd_content_size_bomb_is_a_frame_error():
    # a frame of a few bytes whose zstd header declares 2**50 bytes used to raise MemoryError
    for data in (_dense_zstd((4,), _zstd_frame(2**50)),
                 _dense_zstd((4,), _zstd_frame(2**50), checksum=True)):
        with pytest.raises(sc.CorruptFrameError, match="declares"):
            sc.decode(data)
    w = FrameWriter(wire_id=sc.frame.BUNDLE_WIRE_ID, checksum=True)   # the bomb in a bundle
    w.varint(1, "header")
    bomb = _dense_zstd((4,), _zstd_frame(2**50))[4:]           # body: wire id onwards
    w.varint(1, "header"), w.raw(b"w", "header"), w.varint(len(bomb), "header")
    w.raw(bomb, "values")
    with pytest.raises(sc.CorruptFrameError, match="declares"):
        sc.decode_bundle(bytes(w.finish(numel=4, codec_id="bundle")))


def test_dense_zstd_declared_size_must_match_the_shape():
    x = np.arange(8, dtype=np.float32)
    good = zstandard.ZstdCompressor().compress(x.tobytes())
    with pytest.raises(sc.CorruptFrameError, match="declares 32 bytes"):
        sc.decode(_dense_zstd((9,), good))
    with pytest.raises(sc.CorruptFrameError, match="content size"):      # undeclared size
        sc.decode(_dense_zstd((8,), zstandard.ZstdCompressor(write_content_size=False)
                              .compress(x.tobytes())))
    with pytest.raises(sc.CorruptFrameError, match="trailing"):
        sc.decode(_dense_zstd((8,), good + b"\x00"))
    with pytest.raises(sc.CorruptFrameError):
        sc.decode(_dense_zstd((8,), good[:-1]))


def test_dense_zstd_hostile_header_allocates_nothing_big():
    # 2**27 float32 = 512 MiB declared by a 20-byte payload: refused before any allocation
    # (it used to allocate the full output before finding the payload empty)
    nbytes = 4 << 27
    data = _dense_zstd((1 << 27,), _zstd_frame(nbytes))
    with pytest.raises(sc.CorruptFrameError, match="cannot decompress"):
        sc.decode(data)
    assert _peak_bytes(lambda: sc.decode(data)) < 1 << 20
    # an RLE block (4 bytes) may legally claim 128 KiB: still bounded by the payload's length
    rle = (1 | (1 << 1) | (1 << 17 << 3)).to_bytes(3, "little") + b"\x00"
    data = _dense_zstd((1 << 27,), _zstd_frame(nbytes, rle))
    assert _peak_bytes(lambda: sc.decode(data)) < 1 << 20


def test_dense_zstd_decodes_into_its_output():
    # a valid frame needs about 1x its output (was ~3x: zstd output, unshuffled copy, astype)
    x = np.random.default_rng(0).standard_normal(1 << 20).astype(np.float32)   # 4 MiB
    data = bytes(sc.Dense(compression="zstd").encode(x))
    assert np.array_equal(sc.decode(data), x)
    assert _peak_bytes(lambda: sc.decode(data)) < 1.2 * x.nbytes
    out = np.empty_like(x)
    assert sc.Dense().decode(data, out=out) is out and np.array_equal(out, x)
    for y in (x.astype(np.float64)[:1000], x[:1001].astype(np.float16), x[:999] > 0,
              (np.abs(x[:77]) * 10).astype(np.uint8), np.zeros((0, 3), np.float32)):
        got = sc.decode(sc.Dense(compression="zstd").encode(y))
        assert got.dtype == y.dtype and got.shape == y.shape and np.array_equal(got, y)


def test_dense_nan_message_speaks_of_dense():
    with pytest.raises(sc.ConfigError, match="Dense got nan at flat index 2.*allow_nonfinite"):
        sc.Dense().encode(np.array([1, 2, np.nan], np.float32))
    with pytest.raises(sc.ConfigError, match="Dense got -inf") as info:
        sc.Dense().encode(np.array([[1, 2], [3, -np.inf]], np.float16))
    assert "top-k" not in str(info.value)


def test_dense_side_information_is_refused_clearly():
    data = bytes(sc.Dense().encode(np.zeros(3, np.float32)))
    with pytest.raises(sc.FrameError, match="'dense' frame, which takes no side information"):
        sc.decode(data, p=np.full(3, 0.5))
    with pytest.raises(sc.FrameError, match="schema="):
        sc.decode(data, schema=sc.Schema((("w", "float32", (3,)),)))
    assert sc.decode(data, p=None).shape == (3,)          # None means "not offered"
    with pytest.raises(sc.ConfigError, match="Dense takes no side information"):
        sc.Dense().decode(data, p=0.5)
