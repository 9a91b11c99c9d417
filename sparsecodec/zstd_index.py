"""The ``zstd`` index coder: gaps (LEB128 varints or uint32) compressed by zstd.

For structured supports (runs of a weight matrix's rows, strided columns) an LZ coder finds
what the iid-optimal coders cannot. The payload is a layout byte and one *magicless* zstd
frame without content size, checksum or dictionary id (every byte counts). The decoder
checks that header layout, caps the window, walks the block headers itself to demand exact
consumption (python-zstandard ignores trailing data), and decompresses with a hard output
cap derived from k, so a crafted payload cannot allocate more than O(k).
"""

from __future__ import annotations

import threading

import numpy as np

from ._kernels import ERR_ORDER, ERR_PADDING, ERR_RANGE, ERR_TRUNCATED, OK
from ._kernels.varint import gap_varints_decode, gap_varints_encode, zstd_blocks_end
from .errors import CorruptFrameError
from .index_coders import Cost, IndexCoder, Support

__all__ = ["ZSTD_LEVEL", "PROBE_LEVEL", "ZSTD", "zstd_encode", "zstd_decode", "zstd_compressor",
           "zstd_coder"]

#: Fixed zstd level: structured gap streams shrink to a few bytes at any level; 9 keeps
#: encoding at tens of MB/s on the unstructured ones.
ZSTD_LEVEL = 9
#: the level of the structure probe in :mod:`sparsecodec.indices`: 3 sees column patterns of
#: real updates that level 1 misses, for ~1.5 us more per 4096 gaps
PROBE_LEVEL = 3

_zstd_local = threading.local()


def _contexts() -> dict:
    """This thread's zstd contexts, built on first use (they are costly to make and not
    thread-safe to share): compressors by level, and one decompressor."""
    ctx = getattr(_zstd_local, "ctx", None)
    if ctx is None:
        ctx = _zstd_local.ctx = {}
    return ctx


def zstd_compressor(level: int):
    """This thread's compressor at ``level``: magicless frames, no checksum, content size or
    dictionary id (every byte counts)."""
    ctx = _contexts()
    if level not in ctx:
        import zstandard

        params = zstandard.ZstdCompressionParameters.from_level(
            level, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0,
            write_content_size=0, write_dict_id=0)
        ctx[level] = zstandard.ZstdCompressor(compression_params=params)
    return ctx[level]


def _decompressor():
    ctx = _contexts()
    if "d" not in ctx:
        import zstandard

        ctx["d"] = (zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS), zstandard)
    return ctx["d"]


def _varint_cap(numel: int, k: int) -> int:
    """Most bytes k gap varints can take when every gap is < numel."""
    return k * max(1, -(-max(1, numel - 1).bit_length() // 7))


# The zstd payload starts with a layout byte: the gaps as LEB128 varints (compact for small
# gaps) or as little-endian uint32 (``idx[0]`` then ``idx[i] - idx[i-1]``), whose fixed width
# lets zstd match long periodic patterns (matrix columns) better. The encoder keeps the smaller,
# so the coder is never worse than int32 gaps + zstd on the same indices.
_LAYOUT_VARINT, _LAYOUT_U32 = 0, 1


def zstd_encode(idx: np.ndarray, numel: int, level: int = ZSTD_LEVEL) -> bytes:
    """The payload of a *valid* support: layout byte + one zstd frame at ``level``."""
    raw = np.empty(10 * idx.size, np.uint8)
    nbytes = gap_varints_encode(idx, raw)
    if nbytes < 0:
        raise AssertionError("gap varint buffer overflow")  # 10 bytes hold any int64 gap
    compressor = zstd_compressor(level)
    best = bytes([_LAYOUT_VARINT]) + compressor.compress(raw[:nbytes])
    if numel <= 1 << 32:
        # idx[0] - 0, then the differences, written straight as uint32 (every gap of a support
        # of numel <= 2**32 fits): no int64 temporary, no bytes copy (1.8 -> 0.5 ms at k = 1e6)
        gaps = np.empty(idx.size, "<u4")
        gaps[:1] = idx[:1]
        np.subtract(idx[1:], idx[:-1], out=gaps[1:], casting="unsafe")
        u32 = bytes([_LAYOUT_U32]) + compressor.compress(gaps)
        if len(u32) < len(best):
            best = u32
    return best


def zstd_decode(buf: np.ndarray, numel: int, k: int, out: np.ndarray) -> int:
    """Validate the frame container, decompress with a hard output cap, decode the gaps.

    The same decoder reads every level's frames (the level is an encoder choice only).
    """
    nbytes = buf.size
    if nbytes < 3:
        return ERR_TRUNCATED
    layout = int(buf[0])
    if layout not in (_LAYOUT_VARINT, _LAYOUT_U32) or (layout == _LAYOUT_U32 and numel > 1 << 32):
        raise CorruptFrameError(f"zstd index payload: unknown gap layout {layout}")
    buf = buf[1:]
    nbytes -= 1
    # Frame header (magicless): the descriptor byte must be 0 (no content size, no single
    # segment, no checksum, no dictionary) as our encoder writes it, then a window byte.
    if buf[0] != 0:
        raise CorruptFrameError(f"zstd index payload: unexpected frame descriptor 0x{int(buf[0]):02x}")
    exponent, mantissa = int(buf[1]) >> 3, int(buf[1]) & 7
    window = (1 << (10 + exponent)) + ((1 << (10 + exponent)) >> 3) * mantissa
    cap = _varint_cap(numel, k) if layout == _LAYOUT_VARINT else 4 * k
    window_limit = max(1 << 10, 1 << (cap - 1).bit_length())  # zstd shrinks the window to the input
    if window > window_limit:
        raise CorruptFrameError(f"zstd index payload declares a {window}-byte window; {k} gaps "
                                f"need at most {window_limit}")
    end = zstd_blocks_end(buf, 2)
    if end < 0:
        return end
    if end != nbytes:
        return ERR_PADDING
    decompressor, zstandard = _decompressor()
    try:
        raw = decompressor.decompress(buf, max_output_size=cap)
    except zstandard.ZstdError as exc:
        raise CorruptFrameError(f"zstd index payload does not decompress ({exc}); at most {cap} "
                                f"bytes of gaps are allowed for k={k}") from None
    if layout == _LAYOUT_VARINT:
        return gap_varints_decode(np.frombuffer(raw, np.uint8), numel, k, out)
    if len(raw) != 4 * k:
        return ERR_TRUNCATED if len(raw) < 4 * k else ERR_PADDING
    gaps = np.frombuffer(raw, "<u4").astype(np.int64)
    if k > 1 and int(gaps[1:].min()) < 1:
        return ERR_ORDER
    np.cumsum(gaps, out=out)
    return ERR_RANGE if int(out[-1]) >= numel else OK




def zstd_coder(name: str, wire_id: int, level: int, *, encode_cost: Cost, auto: str) -> IndexCoder:
    """The table record of the zstd gap coder at one ``level`` (same payload layout and decoder)."""
    def encode(s: Support) -> bytes:
        return zstd_encode(s.idx, s.numel, level)

    return IndexCoder(
        name, wire_id, encode=encode, decode=zstd_decode,
        size=lambda s: 8 * len(encode(s)), size_exact=True, size_encodes=True,
        encode_cost=encode_cost, decode_cost=Cost(5000, 2.1), auto=auto,
        summary=f"gaps as LEB128 varints (or u32) in one magicless zstd frame (level {level})")


#: ``zstd``: only tried on structured supports, where the gaps repeat (iid ones cost ~15 % over
#: the bound); costs fitted on iid supports (benchmarks/indices_bench.py bench_index_costs;
#: structured ones compress faster)
ZSTD = zstd_coder("zstd", 4, ZSTD_LEVEL, encode_cost=Cost(13000, 55.0), auto="structured")
