"""sparsecodec.numcodecs_compat under numcodecs' own test helpers, and in zarr.

The helpers (``numcodecs.tests.common``) are the ones numcodecs runs on its built-in codecs.
``check_backwards_compatibility`` reads the committed fixtures in tests/golden/numcodecs/: the
encoded chunks of a past version must keep decoding. It would silently write missing fixtures,
so this test first requires them to exist; regenerate only on purpose, with
``SPARSECODEC_WRITE_FIXTURES=1``.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

numcodecs = pytest.importorskip(
    "numcodecs", reason="numcodecs is not installed (pip install 'sparsecodec[numcodecs]')")
common = pytest.importorskip("numcodecs.tests.common",
                             reason="numcodecs' test helpers are not shipped by this install")

import sparsecodec as sc  # noqa: E402
from sparsecodec.errors import ConfigError, FrameError  # noqa: E402
from sparsecodec.numcodecs_compat import DenseCodec, MaskCodec  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
FIXTURES = REPO / "tests" / "golden" / "numcodecs"


def _masks():
    rng = np.random.default_rng(20261203)
    return [rng.random(5000) < 0.05,
            (rng.random((40, 30)) < 0.3).astype(np.uint8),
            np.asfortranarray(rng.random((30, 40)) < 0.5),
            np.ones(77, bool),
            np.zeros(1, bool)]


def _dense_arrays():
    rng = np.random.default_rng(7)
    x = rng.standard_normal((20, 30)).astype(np.float32)
    x[3, 4] = np.nan                                     # zarr fill values are often NaN
    return {"<f4": [x, np.asfortranarray(x), np.linspace(0, 1, 1000, dtype=np.float32)],
            "<f8": [rng.standard_normal(500)],
            "<f2": [rng.standard_normal(300).astype(np.float16)],
            "|b1": [rng.random(1000) < 0.2],
            "|u1": [rng.integers(0, 256, 999, dtype=np.uint8)]}


MASK_CODECS = [MaskCodec(), MaskCodec(p=0.05), MaskCodec(p=0.3, lanes=2, checksum=True)]


@pytest.mark.parametrize("codec", MASK_CODECS, ids=repr)
def test_mask_encode_decode(codec):
    for mask in _masks():
        common.check_encode_decode(mask, codec)


@pytest.mark.parametrize("dtype", list(_dense_arrays()))
@pytest.mark.parametrize("compression", ["zstd", None])
def test_dense_encode_decode(dtype, compression):
    codec = DenseCodec(dtype=dtype, compression=compression)
    for arr in _dense_arrays()[dtype]:
        common.check_encode_decode(arr, codec)


@pytest.mark.parametrize("codec", MASK_CODECS + [DenseCodec(), DenseCodec(dtype="<f8", compression=None,
                                                                          checksum=True)], ids=repr)
def test_config_round_trips_through_json_and_the_registry(codec):
    common.check_config(codec)
    assert numcodecs.get_codec(codec.get_config()) == codec


def test_repr(monkeypatch):
    # check_repr evaluates the statement in numcodecs.tests.common's namespace
    monkeypatch.setitem(vars(common), "MaskCodec", MaskCodec)
    monkeypatch.setitem(vars(common), "DenseCodec", DenseCodec)
    common.check_repr("MaskCodec(p=None, lanes=0, checksum=False, max_numel=268435456)")
    common.check_repr("MaskCodec(p=0.25, lanes=2, checksum=True, max_numel=1000)")
    common.check_repr("DenseCodec(dtype='<f4', compression='zstd', level=3, allow_nonfinite=True, "
                      "checksum=False, max_numel=268435456)")
    common.check_repr("DenseCodec(dtype='<f8', compression=None, level=3, allow_nonfinite=False, "
                      "checksum=True, max_numel=268435456)")


def _backwards(codec_id, arrays, codecs, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    here = FIXTURES / "fixture" / codec_id
    if not os.environ.get("SPARSECODEC_WRITE_FIXTURES"):
        assert len(list(here.glob("array.*.npy"))) == len(arrays), f"missing fixtures in {here}"
        for j in range(len(codecs)):
            assert len(list((here / f"codec.{j:02d}").glob("encoded.*.dat"))) == len(arrays)
    common.check_backwards_compatibility(codec_id, arrays, codecs)


def test_mask_backwards_compatibility(monkeypatch):
    _backwards(MaskCodec.codec_id, _masks(), MASK_CODECS, monkeypatch)


def test_dense_backwards_compatibility(monkeypatch):
    arrays = [a.astype(np.float32) for a in _dense_arrays()["<f4"]]
    codecs = [DenseCodec(), DenseCodec(compression=None), DenseCodec(compression="zstd", level=19)]
    _backwards(DenseCodec.codec_id, arrays, codecs, monkeypatch)


def test_chunks_are_sparsecodec_frames_with_exact_bits():
    mask = _masks()[0]
    enc = MaskCodec().encode(mask)
    rep = sc.inspect_frame(enc)
    assert rep.nbits == 8 * len(enc) and rep.tensors[0].codec == "mask"
    assert rep.tensors[0].sections["mask"] <= rep.tensors[0].bound_bits + 16   # near log2 C(n, ones)
    assert np.array_equal(sc.decode(enc).view(bool), mask)


def test_hostile_chunks_and_bad_input():
    codec = MaskCodec(checksum=True)
    enc = bytearray(codec.encode(_masks()[0]))
    enc[len(enc) // 2] ^= 0x10
    with pytest.raises(FrameError):
        codec.decode(bytes(enc))
    with pytest.raises(FrameError):        # a dense chunk is not a mask chunk
        MaskCodec().decode(DenseCodec().encode(np.zeros(4, np.float32)))
    with pytest.raises(FrameError):        # a chunk of another dtype
        DenseCodec(dtype="<f8").decode(DenseCodec(dtype="<f4").encode(np.zeros(4, np.float32)))
    with pytest.raises(FrameError):        # more elements than the codec allows
        MaskCodec(max_numel=100).decode(MaskCodec().encode(np.zeros(101, bool)))
    with pytest.raises(ConfigError):       # not a 0/1 mask
        MaskCodec().encode(np.array([0, 2, 1], np.uint8))
    with pytest.raises(ConfigError):
        DenseCodec(dtype="<f4").encode(b"12345")
    with pytest.raises(ConfigError):
        DenseCodec(dtype="<i4")
    with pytest.raises(ConfigError):
        MaskCodec(p=1.5)


def test_entry_point_finds_the_codecs_without_importing_them():
    code = ("import sys, numcodecs.registry as r\n"
            "assert 'sparsecodec.numcodecs_compat' not in sys.modules\n"
            "assert {'sparsecodec.mask', 'sparsecodec.dense'} <= set(r.entries), sorted(r.entries)\n"
            "c = r.get_codec({'id': 'sparsecodec.dense', 'dtype': '<f8'})\n"
            "print(type(c).__module__, type(c).__name__)\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == ["sparsecodec.numcodecs_compat", "DenseCodec"]


def test_zarr_stores_a_mask(tmp_path):
    zarr = pytest.importorskip("zarr", reason="zarr is in the [test] extra: pip install -e '.[test]'")
    mask = np.random.default_rng(1).random((200, 500)) < 0.02
    z = zarr.create_array(str(tmp_path / "mask.zarr"), shape=mask.shape, chunks=(100, 500),
                          dtype=bool, compressors=MaskCodec(), zarr_format=2)
    z[:] = mask
    back = zarr.open_array(str(tmp_path / "mask.zarr"), mode="r")
    assert np.array_equal(back[:], mask)
    chunk = (tmp_path / "mask.zarr" / "0.0").read_bytes()   # one chunk on disk: a mask frame
    rep = sc.inspect_frame(chunk)
    assert rep.tensors[0].numel == 100 * 500 and rep.nbits == 8 * len(chunk)
    assert len(chunk) < 100 * 500 / 8 / 4      # 4x smaller than bit-packing at 2 % ones


def test_mutated_chunks_raise_only_frame_errors():
    rng = np.random.default_rng(11)
    p = rng.random(2000) * 0.2
    per_entry = bytes(sc.MaskCodec().encode(rng.random(2000) < p, p=p))   # needs side information
    with pytest.raises(FrameError, match="not a mask this codec writes"):
        MaskCodec().decode(per_entry)
    cases = [(MaskCodec(), MaskCodec().encode(_masks()[0])),
             (MaskCodec(), MaskCodec(p=0.05).encode(_masks()[0])),
             (MaskCodec(), per_entry),
             (DenseCodec(), DenseCodec().encode(_dense_arrays()["<f4"][0])),
             (DenseCodec(compression=None), DenseCodec(compression=None).encode(np.arange(50, dtype=np.float32)))]
    for codec, enc in cases:
        for trial in range(150):
            buf = bytearray(enc)
            if trial % 3 == 0:
                buf = buf[: rng.integers(0, len(buf))]
            else:
                buf[rng.integers(0, len(buf))] ^= 1 << int(rng.integers(0, 8))
            try:
                codec.decode(bytes(buf))
            except FrameError:
                pass
