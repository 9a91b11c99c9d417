"""numcodecs adapters for the lossless codecs, so zarr (and anything numcodecs-based) stores
masks and tensors in sparsecodec frames.

=====================  ===========================================================================
``codec_id``           adapter
=====================  ===========================================================================
``sparsecodec.mask``   :class:`MaskCodec`: a buffer of 0/1 bytes (a bool or uint8 mask), coded by
                       :class:`sparsecodec.MaskCodec` (adaptive model, or ``p=`` fixed Bernoulli)
``sparsecodec.dense``  :class:`DenseCodec`: the buffer read as ``dtype`` (float32/64/16, bool,
                       uint8), coded by :class:`sparsecodec.Dense` (``compression="zstd"``:
                       byte-shuffled zstd)
=====================  ===========================================================================

Both follow numcodecs' byte semantics: ``encode(buf)`` takes any buffer (array, bytes,
bytearray, ``array.array``) and returns the frame's bytes; ``decode(buf, out=None)`` returns the
original bytes as an array (into ``out`` when given). The frames are ordinary sparsecodec frames
(``sc.decode`` reads them; ``python -m sparsecodec inspect`` reports their bits). Decoding treats
the stored bytes as hostile, as every sparsecodec decoder does: a corrupt chunk is a
:class:`~sparsecodec.errors.FrameError` (a ``ValueError``), never a crash or a huge allocation.

They are registered with numcodecs on import and through the ``numcodecs.codecs`` entry point
(``pip install sparsecodec[numcodecs]``), so ``numcodecs.get_codec({"id": "sparsecodec.mask"})``
works without importing this module.

    >>> import numpy as np, numcodecs
    >>> mask = np.random.default_rng(0).random(10_000) < 0.05
    >>> codec = numcodecs.get_codec({"id": "sparsecodec.mask"})
    >>> enc = codec.encode(mask)
    >>> len(enc) < mask.size // 20                      # about 0.29 bits per entry
    True
    >>> bool(np.array_equal(codec.decode(enc).view(bool), mask))
    True
    >>> DenseCodec(dtype="<f4").decode(DenseCodec(dtype="<f4").encode(np.ones(3, np.float32))).tolist()
    [1.0, 1.0, 1.0]
"""

from __future__ import annotations

import numpy as np

try:
    from numcodecs.abc import Codec as _NumcodecsCodec  # type: ignore[import-untyped]
    from numcodecs.compat import ensure_contiguous_ndarray, ndarray_copy  # type: ignore[import-untyped]
    from numcodecs.registry import register_codec as _register  # type: ignore[import-untyped]
except ImportError as exc:   # the adapters subclass numcodecs' Codec: nothing to offer without it
    raise ImportError("sparsecodec.numcodecs_compat needs numcodecs: pip install "
                      "'sparsecodec[numcodecs]'") from exc

from .dense import Dense
from .errors import ConfigError, CorruptFrameError
from .frame import DEFAULT_MAX_NUMEL
from .mask import MaskCodec as _ScMask

__all__ = ["MaskCodec", "DenseCodec"]

_DENSE_DTYPES = ("float32", "float64", "float16", "bool", "uint8")


def _as_bytes(buf) -> np.ndarray:
    """Any buffer as a flat uint8 array, without a copy where the memory allows."""
    return ensure_contiguous_ndarray(buf).reshape(-1).view(np.uint8)


class MaskCodec(_NumcodecsCodec):
    """Binary masks (0/1 bytes) as :class:`sparsecodec.MaskCodec` frames.

    ``p=None`` codes with the adaptive model (count of ones, then about ``log2 C(n, ones)``
    bits); ``p=<float>`` with a fixed Bernoulli(p) written in the frame. ``lanes`` and
    ``checksum`` (a CRC-32 per chunk) are :class:`sparsecodec.MaskCodec`'s.
    """

    codec_id = "sparsecodec.mask"

    def __init__(self, p: float | None = None, lanes: int = 0, checksum: bool = False,
                 max_numel: int = DEFAULT_MAX_NUMEL) -> None:
        if p is not None:
            if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= float(p) <= 1.0:
                raise ConfigError(f"p must be None (adaptive) or a float in [0, 1], got {p!r}")
            p = float(p)
        self.p = p
        self.lanes = int(lanes)
        self.checksum = bool(checksum)
        self.max_numel = int(max_numel)
        self._codec = _ScMask(lanes=self.lanes, checksum=self.checksum)

    def encode(self, buf) -> bytes:
        flat = _as_bytes(buf)
        return bytes(self._codec.encode(flat) if self.p is None else self._codec.encode(flat, p=self.p))

    def decode(self, buf, out=None):
        # the frame says which model it was coded with (a fixed p is in the frame)
        try:
            dec = self._codec.decode(_as_bytes(buf), max_numel=self.max_numel)
        except ConfigError as exc:   # a per-entry-p frame: no chunk this adapter writes
            raise CorruptFrameError(f"this chunk is not a mask this codec writes: {exc}") from None
        return ndarray_copy(dec.reshape(-1).view(np.uint8), out)

    def __repr__(self) -> str:
        return (f"MaskCodec(p={self.p!r}, lanes={self.lanes!r}, checksum={self.checksum!r}, "
                f"max_numel={self.max_numel!r})")


class DenseCodec(_NumcodecsCodec):
    """A buffer read as ``dtype``, as :class:`sparsecodec.Dense` frames (lossless).

    ``compression="zstd"`` (the default here) byte-shuffles and zstd-compresses at ``level``;
    ``None`` stores the raw values. NaN and Inf are stored (zarr fill values are often NaN):
    ``allow_nonfinite=False`` rejects them instead, as ``sparsecodec.Dense`` does by default.
    """

    codec_id = "sparsecodec.dense"

    def __init__(self, dtype: str = "<f4", compression: str | None = "zstd", level: int = 3,
                 allow_nonfinite: bool = True, checksum: bool = False,
                 max_numel: int = DEFAULT_MAX_NUMEL) -> None:
        dt = np.dtype(dtype)
        if dt.name not in _DENSE_DTYPES or dt.byteorder == ">":
            raise ConfigError(f"dtype must be little-endian {'/'.join(_DENSE_DTYPES)}, got {dtype!r}")
        self.dtype = dt.str
        self.compression = compression
        self.level = int(level)
        self.allow_nonfinite = bool(allow_nonfinite)
        self.checksum = bool(checksum)
        self.max_numel = int(max_numel)
        self._codec = Dense(compression=compression, level=self.level,
                            allow_nonfinite=self.allow_nonfinite, checksum=self.checksum)

    def encode(self, buf) -> bytes:
        raw = _as_bytes(buf)
        itemsize = np.dtype(self.dtype).itemsize
        if raw.size % itemsize:
            raise ConfigError(f"a buffer of {raw.size} bytes is not a whole number of {self.dtype} items")
        return bytes(self._codec.encode(raw.view(self.dtype)))

    def decode(self, buf, out=None):
        dec = self._codec.decode(_as_bytes(buf), max_numel=self.max_numel)
        if dec.dtype != np.dtype(self.dtype):   # a chunk written by another configuration
            raise CorruptFrameError(f"the frame holds {dec.dtype} values, this codec is for {self.dtype}")
        return ndarray_copy(dec.reshape(-1), out)

    def __repr__(self) -> str:
        return (f"DenseCodec(dtype={self.dtype!r}, compression={self.compression!r}, "
                f"level={self.level!r}, allow_nonfinite={self.allow_nonfinite!r}, "
                f"checksum={self.checksum!r}, max_numel={self.max_numel!r})")


_register(MaskCodec)
_register(DenseCodec)
