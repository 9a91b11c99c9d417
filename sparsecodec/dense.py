"""The ``Dense`` codec: a whole tensor, losslessly, so dense messages are counted too.

FedAvg uploads and dense downlinks go through the same frames as sparse ones, so a ledger
never mixes formulas with measured bits. Values keep their dtype (float32 stays 32 bits per
parameter; float64 64); ``compression="zstd"`` byte-shuffles (all first bytes, then all
second bytes, ...) and zstd-compresses, which helps on tensors with structure (masks, sparse
models, low-entropy exponents).

Frame body::

    header   dtype, ndim, dims; config byte (bit 0: shuffle+zstd, bit 7: non-finite allowed)
    values   raw little-endian values, or the zstd frame of the shuffled bytes

Decoding treats the zstd frame as hostile: it must declare its content size, equal to the
tensor's byte count (our encoder always writes it), and end exactly at the end of the
payload, and its length must be able to hold that many bytes at zstd's highest ratio; all
of this is checked before the output is allocated. The byte planes are then streamed
straight into the output array (``out=`` when given), so a frame needs about 1x its output
in memory (at most 2x for small tensors, whose zstd window is the whole content). When a
frame is rejected after that point, what ``out`` holds is unspecified.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    >>> frame = sc.Dense().encode(x)
    >>> frame.sections["values"] == 32 * x.size
    True
    >>> bool(np.array_equal(sc.decode(bytes(frame)), x))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import zstandard

from ._arrays import as_numpy
from .abc import Codec
from .errors import ConfigError, CorruptFrameError
from ._kernels.varint import zstd_blocks_end
from .frame import DTYPE_CODES, FrameReader, FrameWriter
from .reconstruction import IdentityRecon
from .registry import register_codec

__all__ = ["Dense"]

_COMPRESSIONS = (None, "zstd")


@register_codec
@dataclass(frozen=True)
class Dense(Codec):
    """Lossless dense tensor codec (optionally byte-shuffled and zstd-compressed)."""

    compression: str | None = None
    level: int = 3
    allow_nonfinite: bool = False
    checksum: bool = False

    codec_id: ClassVar[str] = "dense"
    wire_id: ClassVar[int] = 2

    def __post_init__(self) -> None:
        if self.compression not in _COMPRESSIONS:
            raise ConfigError(f"compression must be one of {_COMPRESSIONS}, got {self.compression!r}")
        if not 1 <= int(self.level) <= 22:
            raise ConfigError(f"zstd level must be in 1..22, got {self.level}")

    def encode(self, x, **side: Any):
        return super().encode(as_numpy(x), **side)

    def _write_body(self, x, w: FrameWriter, **side: Any) -> IdentityRecon:
        # the values keep their dtype and bytes (zstd is lossless too): the decoder returns
        # the input bit for bit, for every dtype, so the reconstruction is the input itself
        x = as_numpy(x)
        if x.dtype.name not in DTYPE_CODES:
            raise ConfigError(f"Dense codes {sorted(DTYPE_CODES)} arrays, got {x.dtype}")
        if x.dtype.kind == "f" and not self.allow_nonfinite:
            _check_finite_input(x)
        le = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).reshape(-1)
        w.tensor_header(x.dtype, x.shape)
        w.u8((1 if self.compression == "zstd" else 0) | (0x80 if self.allow_nonfinite else 0), "header")
        if self.compression == "zstd":
            shuffled = le.view(np.uint8).reshape(-1, x.dtype.itemsize).T.copy()
            w.raw(zstandard.ZstdCompressor(level=int(self.level)).compress(shuffled.data), "values")
        else:
            w.raw(le.view(np.uint8), "values")
        return IdentityRecon(x)

    @classmethod
    def _read_body(cls, r: FrameReader, out: np.ndarray | None = None, **side: Any) -> np.ndarray:
        if side:
            raise ConfigError(f"Dense takes no side information, got {', '.join(sorted(side))}=")
        dtype, shape, numel = r.tensor_header()
        config = r.u8("config byte")
        if config & ~0x81:
            raise CorruptFrameError(f"unknown bits in dense config byte 0x{config:02x}")
        nbytes = numel * dtype.itemsize
        if config & 1:
            blob = r.take_rest()
            _check_zstd_container(blob, nbytes)     # before the output is allocated
            result = _target(out, dtype, shape)
            _unshuffle_zstd(blob, result.reshape(-1), nbytes)
        else:
            if r.remaining != nbytes:
                raise CorruptFrameError(
                    f"dense payload is {r.remaining} bytes, the header's shape {shape} needs {nbytes}")
            result = _target(out, dtype, shape)
            result.reshape(-1)[...] = np.frombuffer(r.take(nbytes, "values"), dtype.newbyteorder("<"))
        flat = result.reshape(-1)
        if dtype == np.bool_ and flat.size and flat.view(np.uint8).max() > 1:
            raise CorruptFrameError("bool payload holds bytes other than 0/1")
        if dtype.kind == "f" and not config & 0x80 and not _all_finite(flat):
            raise CorruptFrameError("frame holds NaN/Inf but was not written with allow_nonfinite=True")
        if out is not None and result is not out:
            out[...] = result
            return out
        return result


def _check_finite_input(x: np.ndarray) -> None:
    """NaN/Inf in a tensor given to Dense is misuse: say which and where (flat C index)."""
    flat = x.reshape(-1)
    step = 1 << 20
    for i in range(0, flat.size, step):
        bad = np.flatnonzero(~np.isfinite(flat[i:i + step]))
        if bad.size:
            j = i + int(bad[0])
            raise ConfigError(
                f"Dense got {flat[j]} at flat index {j}: a lossless dense frame holds finite "
                "values unless written by Dense(allow_nonfinite=True); clean the tensor "
                "(np.nan_to_num) or pass allow_nonfinite=True")


def _target(out: np.ndarray | None, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array decoded into: ``out`` itself when it is a contiguous match, else a new one."""
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype:
            raise ConfigError(f"out must be a {dtype} array of shape {tuple(shape)}")
        if not out.flags.writeable:
            raise ConfigError("out must be writable")
        if out.flags.c_contiguous:
            return out
    return np.empty(shape, dtype)


def _all_finite(flat: np.ndarray) -> bool:
    """NaN/Inf check in slices, so a big tensor needs no tensor-sized boolean temporary."""
    step = 1 << 18
    return all(bool(np.isfinite(flat[i:i + step]).all()) for i in range(0, flat.size, step))


# zstd frames (RFC 8878): a block holds at most 128 KiB of output and takes at least its
# 3-byte header, so a payload of n bytes can never decompress to more than n / 3 * 128 KiB.
_ZSTD_BLOCK_MAX = 1 << 17
_CHUNK = 1 << 18           # decompressed bytes per read: small next to any real window


def _check_zstd_container(blob: memoryview, nbytes: int) -> None:
    """Refuse a zstd payload that cannot be the header's tensor before allocating for it.

    The frame must declare its content size (our encoder always does) and it must equal
    the tensor's byte count; it must name no dictionary; its blocks must end exactly at the
    end of the payload (python-zstandard ignores trailing bytes); and its length must be able
    to hold ``nbytes`` of output at zstd's highest possible ratio.
    """
    try:
        params = zstandard.get_frame_parameters(blob)
        header = zstandard.frame_header_size(blob)
    except zstandard.ZstdError as exc:
        raise CorruptFrameError(f"dense zstd payload has no valid zstd frame header: {exc}") from None
    if params.content_size == zstandard.CONTENTSIZE_UNKNOWN:
        raise CorruptFrameError("dense zstd payload does not declare its content size")
    if params.content_size != nbytes:
        raise CorruptFrameError(f"dense zstd payload declares {params.content_size} bytes of "
                                f"content, the header's shape needs {nbytes}")
    if params.dict_id:
        raise CorruptFrameError(f"dense zstd payload names dictionary {params.dict_id}; none is used")
    if nbytes > len(blob) // 3 * _ZSTD_BLOCK_MAX:
        raise CorruptFrameError(f"a {len(blob)}-byte zstd payload cannot decompress to {nbytes} bytes")
    end = zstd_blocks_end(np.frombuffer(blob, np.uint8), header)
    if end < 0:
        raise CorruptFrameError("dense zstd payload: truncated or reserved block")
    end += 4 if params.has_checksum else 0
    if end != len(blob):
        raise CorruptFrameError(f"dense zstd payload: the zstd frame ends at byte {end} of "
                                f"{len(blob)} (truncated or trailing bytes)")


def _unshuffle_zstd(blob: memoryview, flat: np.ndarray, nbytes: int) -> None:
    """Stream-decompress the byte planes straight into ``flat``'s bytes (little-endian).

    The output never exceeds ``nbytes`` (the read stops there and zstd checks the declared
    content size), and memory beyond ``flat`` is one chunk plus zstd's window, which it
    bounds by the declared content size: a valid frame needs about 1x its output, at most 2x.
    """
    itemsize = flat.dtype.itemsize
    numel = flat.size
    planes = flat.view(np.uint8).reshape(numel, itemsize)     # planes[:, j] is byte plane j
    direct = itemsize == 1                                     # no shuffle: decode in place
    chunk = np.empty(0 if direct else min(_CHUNK, nbytes), np.uint8)
    reader = zstandard.ZstdDecompressor().stream_reader(blob, read_across_frames=False)
    pos = 0
    try:
        while pos < nbytes:
            want = min(_CHUNK, nbytes - pos)
            target = planes.reshape(-1)[pos:pos + want] if direct else chunk[:want]
            got = reader.readinto(target.data)
            if got <= 0:
                raise CorruptFrameError(f"dense zstd payload ends after {pos} of {nbytes} bytes")
            if not direct:
                done = 0
                while done < got:            # a chunk may straddle two byte planes
                    plane, off = divmod(pos + done, numel)
                    m = min(got - done, numel - off)
                    planes[off:off + m, plane] = chunk[done:done + m]
                    done += m
            pos += got
        if reader.read(1):
            raise CorruptFrameError(f"dense zstd payload decompresses to more than {nbytes} bytes")
    except zstandard.ZstdError as exc:
        raise CorruptFrameError(f"dense zstd payload is corrupt: {exc}") from None
    finally:
        reader.close()
    if not np.dtype(flat.dtype).newbyteorder("<").isnative:
        flat.byteswap(inplace=True)          # the planes are little-endian on the wire
