"""The index-coder table: registration rules, the live INDEX_CODERS view, a coder added from
outside, and the ``zstd19`` coder (the seam's proof: one module plus one registration line)."""

from __future__ import annotations

import numpy as np
import pytest
import zstandard

import reference_indices as ref
import sparsecodec as sc
from sparsecodec import index_coders as tab
from sparsecodec import indices as ix
from sparsecodec._kernels import ERR_CORRUPT, ERR_PADDING, OK
from sparsecodec.errors import ConfigError, CorruptFrameError, TruncatedFrameError


def test_table_matches_the_wire_ids():
    """The wire ids are forever: the table must keep every one where it was."""
    assert dict(ix.INDEX_CODERS) == {"raw": 0, "golomb": 1, "eliasfano": 2, "bitmap": 3,
                                     "zstd": 4, "gaps": 5, "zstd19": 6}
    assert ix.INDEX_CODERS is tab.INDEX_CODERS
    records = ix.registered_index_coders()
    assert [r.wire_id for r in records] == sorted(ix.INDEX_CODERS.values())
    for r in records:
        assert ix.get_index_coder(r.name) is r and ix.get_index_coder(r.wire_id, allow_id=True) is r
        assert r.summary and r.time_ns(10**6, 10**3) > 0
    with pytest.raises(TypeError):
        ix.INDEX_CODERS["mine"] = 9  # type: ignore[index]   # read-only view


def test_registration_refuses_duplicates_and_bad_records():
    golomb = ix.get_index_coder("golomb")
    with pytest.raises(ConfigError, match="already registered"):
        ix.register_index_coder(golomb)
    with pytest.raises(ConfigError, match="already taken by 'raw'"):
        ix.register_index_coder(tab.IndexCoder("other", 0, golomb.encode, golomb.decode, golomb.size,
                                               True, golomb.encode_cost, golomb.decode_cost))
    with pytest.raises(ConfigError, match="IndexCoder"):
        ix.register_index_coder("golomb")  # type: ignore[arg-type]
    for bad in ({"name": "auto"}, {"name": "no spaces"}, {"wire_id": 16}, {"wire_id": True},
                {"auto": "sometimes"}, {"encode_cost": 3.0}):
        fields = dict(name="x", wire_id=14, encode=golomb.encode, decode=golomb.decode,
                      size=golomb.size, size_exact=True, encode_cost=golomb.encode_cost,
                      decode_cost=golomb.decode_cost) | bad
        with pytest.raises(ConfigError):
            tab.IndexCoder(**fields)
    assert set(ix.INDEX_CODERS) == {r.name for r in ix.registered_index_coders()}


# -- a coder registered from outside: the docstring's plain bitmap ------------------------------
def _plain_encode(s: tab.Support) -> bytes:
    mask = np.zeros(s.numel, bool)
    mask[s.idx] = True
    return np.packbits(mask).tobytes()


def _plain_decode(src, numel, k, out):
    bits = np.unpackbits(src)
    if bits.size != 8 * (-(-numel // 8)) or bits[numel:].any():
        return ERR_PADDING
    found = np.flatnonzero(bits[:numel])
    if found.size != k:
        return ERR_CORRUPT
    out[:] = found
    return OK


PLAIN = tab.IndexCoder("plainbitmap", 15, _plain_encode, _plain_decode,
                       size=lambda s: 8 * (-(-s.numel // 8)), size_exact=True,
                       encode_cost=tab.Cost(per_element_ns=1.0), decode_cost=tab.Cost(per_element_ns=1.0),
                       min_payload_bits=lambda numel, k: 8 * (-(-numel // 8)), auto="never")


@pytest.fixture
def plain():
    ix.register_index_coder(PLAIN)
    try:
        yield PLAIN
    finally:
        tab._unregister_index_coder(PLAIN.name)
    assert "plainbitmap" not in ix.INDEX_CODERS


def test_a_new_coder_is_one_record(plain):
    """Registered, the record is a coder everywhere the table is read."""
    assert ix.INDEX_CODERS["plainbitmap"] == 15                     # the live view
    idx = np.array([1, 9, 10, 63])
    payload = ix.encode_indices(idx, 64, "plainbitmap")
    assert len(payload) == 8 and ix.index_payload_bits(idx, 64, "plainbitmap") == 64
    assert ix.decode_indices(payload, 64, 4, 15).tolist() == idx.tolist()
    with pytest.raises(TruncatedFrameError):                         # its min_payload_bits
        ix.decode_indices(payload[:7], 64, 4, "plainbitmap")
    with pytest.raises(CorruptFrameError, match="malformed"):        # its status codes
        ix.decode_indices(bytes(8), 64, 4, "plainbitmap")
    assert ix.choose_index_coder(idx, 64) != "plainbitmap"          # auto="never" ...
    assert ix.choose_index_coder(idx, 64, coders=["plainbitmap"]) == "plainbitmap"  # ... unless named
    with pytest.raises(ConfigError, match="unknown index coder"):
        ix.encode_indices(idx, 64, "plainbitmap2")
    with pytest.raises(ConfigError, match="strictly increasing"):   # validation stays the table's
        ix.encode_indices(np.array([3, 2]), 64, "plainbitmap")


# -- zstd19 ---------------------------------------------------------------------------------------
def _reference_zstd19(idx: np.ndarray, numel: int) -> bytes:
    """tests/reference_indices.zstd_encode's layouts at level 19, from the reference gap bytes."""
    params = zstandard.ZstdCompressionParameters.from_level(
        19, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0, write_content_size=0,
        write_dict_id=0)
    cctx = zstandard.ZstdCompressor(compression_params=params)
    best = b"\x00" + cctx.compress(ref.gap_varints(idx))
    if numel <= 2**32:
        alt = b"\x01" + cctx.compress(np.diff(idx, prepend=0).astype("<u4").tobytes())
        best = alt if len(alt) < len(best) else best
    return best


def _structured_supports():
    rng = np.random.default_rng(4)
    cols = np.sort(rng.choice(1000, 37, replace=False))
    yield (np.arange(200)[:, None] * 1000 + cols).reshape(-1), 200_000        # matrix columns
    rows = np.sort(rng.choice(300, 12, replace=False))
    yield (rows[:, None] * 700 + np.arange(700)).reshape(-1), 300 * 700         # whole rows
    w = rng.standard_normal((64, 576)) * np.abs(rng.standard_normal((64, 1))) ** 4
    yield sc.topk_indices(w.reshape(-1), 1843), w.size                          # a conv update
    yield np.sort(rng.choice(10**5, 3000, replace=False)), 10**5                 # iid
    yield np.array([0, 2**40 + 5]), 2**41                                        # varint layout only


def test_zstd19_matches_reference_and_decodes_with_the_zstd_decoder():
    for idx, numel in _structured_supports():
        p19 = ix.encode_indices(idx, numel, "zstd19")
        assert p19 == _reference_zstd19(idx, numel)
        assert ref.zstd_decode(p19, numel, idx.size) == idx.tolist()   # the zstd reference reads it
        for coder in ("zstd19", "zstd"):                                 # one decoder, both ids
            assert ix.decode_indices(p19, numel, idx.size, coder).tolist() == idx.tolist()
        assert ix.index_payload_bits(idx, numel, "zstd19") == 8 * len(p19)


def test_zstd19_is_smaller_on_structure_and_only_chosen_when_asked():
    idx, numel = list(_structured_supports())[2]
    p9, p19 = (ix.encode_indices(idx, numel, c) for c in ("zstd", "zstd19"))
    assert len(p19) <= 0.95 * len(p9)
    assert ix.choose_index_coder(idx, numel) == "zstd"                  # not by default: slow
    assert ix.encode_indices_auto(idx, numel, coders=["golomb", "zstd", "zstd19"]) == ("zstd19", p19)
    iid = np.sort(np.random.default_rng(0).choice(10**5, 3000, replace=False))
    assert ix.choose_index_coder(iid, 10**5, coders=["golomb", "zstd19"]) == "golomb"  # not tried
    x = np.zeros(numel, np.float32)
    x[idx] = 1.0 + np.arange(idx.size, dtype=np.float32)
    codec = sc.TopK(k=int(idx.size), index="zstd19")
    frame = bytes(codec.encode(x))
    assert np.array_equal(sc.decode(frame), x)
    assert len(frame) < len(bytes(sc.TopK(k=int(idx.size), index="zstd").encode(x)))


def test_zstd19_hostile_frames():
    """A level-19 frame can declare a large window: the decoder's window cap still holds."""
    idx = np.arange(0, 3000, 3)
    payload = ix.encode_indices(idx, 3000, "zstd19")
    with pytest.raises(CorruptFrameError, match="window"):
        ix.decode_indices(bytes([0, 0, 20 << 3]) + payload[3:], 3000, 3, "zstd19")
    with pytest.raises(CorruptFrameError, match="trailing"):
        ix.decode_indices(payload + payload[1:], 3000, idx.size, "zstd19")
