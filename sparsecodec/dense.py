"""The ``Dense`` codec: a whole tensor, losslessly, so dense messages are counted too.

FedAvg uploads and dense downlinks go through the same frames as sparse ones, so a ledger
never mixes formulas with measured bits. Values keep their dtype (float32 stays 32 bits per
parameter; float64 64); ``compression="zstd"`` byte-shuffles (all first bytes, then all
second bytes, ...) and zstd-compresses, which helps on tensors with structure (masks, sparse
models, low-entropy exponents).

Frame body::

    header   dtype, ndim, dims; config byte (bit 0: shuffle+zstd, bit 7: non-finite allowed)
    values   raw little-endian values, or the zstd frame of the shuffled bytes

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
from .frame import DTYPE_CODES, FrameReader, FrameWriter
from .registry import register_codec
from .selection import check_finite

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

    def _write_body(self, x, w: FrameWriter, **side: Any) -> None:
        x = as_numpy(x)
        if x.dtype.name not in DTYPE_CODES:
            raise ConfigError(f"Dense codes {sorted(DTYPE_CODES)} arrays, got {x.dtype}")
        if x.dtype.kind == "f" and not self.allow_nonfinite:
            if x.dtype.itemsize >= 4:
                check_finite(x.reshape(-1))
            elif not np.isfinite(x).all():
                raise ConfigError("Dense got NaN/Inf; clean the tensor or pass allow_nonfinite=True")
        le = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("<")).reshape(-1)
        w.tensor_header(x.dtype, x.shape)
        w.u8((1 if self.compression == "zstd" else 0) | (0x80 if self.allow_nonfinite else 0), "header")
        if self.compression == "zstd":
            shuffled = le.view(np.uint8).reshape(-1, x.dtype.itemsize).T.copy()
            w.raw(zstandard.ZstdCompressor(level=int(self.level)).compress(shuffled.tobytes()), "values")
        else:
            w.raw(le.view(np.uint8), "values")

    def encode_and_reconstruct(self, x, **side: Any):
        x = as_numpy(x)
        frame = self.encode(x)
        return frame, np.array(x, copy=True)   # lossless: the reconstruction is the input

    @classmethod
    def _read_body(cls, r: FrameReader, out: np.ndarray | None = None) -> np.ndarray:
        dtype, shape, numel = r.tensor_header()
        config = r.u8("config byte")
        if config & ~0x81:
            raise CorruptFrameError(f"unknown bits in dense config byte 0x{config:02x}")
        nbytes = numel * dtype.itemsize
        if config & 1:
            blob = r.take_rest()
            try:
                raw = zstandard.ZstdDecompressor().decompress(bytes(blob), max_output_size=nbytes,
                                                             allow_extra_data=False)
            except zstandard.ZstdError as exc:
                raise CorruptFrameError(f"dense zstd payload is corrupt: {exc}") from None
            if len(raw) != nbytes:
                raise CorruptFrameError(f"dense payload decompresses to {len(raw)} bytes, expected {nbytes}")
            arr = np.frombuffer(raw, np.uint8).reshape(dtype.itemsize, numel).T
            arr = np.ascontiguousarray(arr).view(dtype.newbyteorder("<")).reshape(-1)
        else:
            if r.remaining != nbytes:
                raise CorruptFrameError(
                    f"dense payload is {r.remaining} bytes, the header's shape {shape} needs {nbytes}")
            arr = np.frombuffer(r.take(nbytes, "values"), dtype.newbyteorder("<"))
        if dtype == np.bool_ and arr.size and arr.view(np.uint8).max() > 1:
            raise CorruptFrameError("bool payload holds bytes other than 0/1")
        if dtype.kind == "f" and not config & 0x80 and arr.size and not np.isfinite(arr).all():
            raise CorruptFrameError("frame holds NaN/Inf but was not written with allow_nonfinite=True")
        if out is None:
            return arr.astype(dtype).reshape(shape)
        if out.shape != tuple(shape) or out.dtype != dtype:
            raise ConfigError(f"out must be a {dtype} array of shape {tuple(shape)}")
        out[...] = arr.reshape(shape)
        return out
