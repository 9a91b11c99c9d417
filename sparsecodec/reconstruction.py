"""What the decoder will return, known at encode time: the typed reconstruction of a body.

Every codec's body writer (``write_body`` / ``_write_body``, see :mod:`sparsecodec.abc`) returns
one of these, and :meth:`Codec.encode_with_reconstruction <sparsecodec.Codec.encode_with_reconstruction>`,
bundles (:func:`~sparsecodec.encode_bundle`'s ``on_encoded``), compact messages
(:func:`~sparsecodec.encode_packed`'s ``on_encoded``) and :class:`~sparsecodec.ErrorFeedback`
use it, so no message is decoded a second time to learn what its receiver will see:

* :class:`SparseRecon`: sorted int64 flat positions and their decoded values, zero elsewhere
  (TopK, with every value coder);
* :class:`IdentityRecon`: the input itself, which the decoder returns bit for bit (the
  lossless codecs: Dense, MaskCodec);
* :class:`DenseRecon`: the decoded array (``decoded=True`` when the base class had to decode
  the codec's own frame or body to learn it, because its ``write_body`` returned ``None``).

Each has ``apply_residual(e)``: ``e -= x_hat`` in place, with ``x_hat`` exactly the array the
decoder returns (what error feedback keeps), and ``to_dense()``: that array, newly allocated.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.5, -3.0, 0.25, 2.0], np.float32)
    >>> frame, recon = sc.TopK(k=2).encode_with_reconstruction(x)
    >>> recon
    SparseRecon(k=2 of 4, float32)
    >>> bool(np.array_equal(recon.to_dense(), sc.decode(bytes(frame))))
    True
    >>> e = x.copy()
    >>> recon.apply_residual(e)      # what was not sent
    >>> e.tolist()
    [0.5, 0.0, 0.25, 0.0]
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["Reconstruction", "SparseRecon", "DenseRecon", "IdentityRecon", "as_reconstruction"]


def _native(dtype: np.dtype) -> np.dtype:
    """The dtype a decoder returns for ``dtype``: the same kind in native byte order."""
    dtype = np.dtype(dtype)
    return dtype if dtype.isnative else dtype.newbyteorder("=")


class Reconstruction(abc.ABC):
    """What a decoder returns for one encoded tensor (see the module docstring).

    ``shape`` and ``dtype`` are those of the decoded array.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    @abc.abstractmethod
    def apply_residual(self, e: np.ndarray) -> None:
        """``e -= x_hat`` in place (``e``: a writable C-contiguous array of this shape and dtype)."""

    @abc.abstractmethod
    def to_dense(self) -> np.ndarray:
        """``x_hat``, bit for bit what the decoder returns, as a new array the caller owns."""

    def _check_target(self, e: Any) -> np.ndarray:
        # a non-contiguous e would make reshape(-1) a copy and the update silently vanish
        if (not isinstance(e, np.ndarray) or e.shape != self.shape or e.dtype != self.dtype
                or not e.flags.c_contiguous or not e.flags.writeable):
            raise ConfigError(f"apply_residual needs a writable C-contiguous {self.dtype} array of "
                              f"shape {self.shape}, got {getattr(e, 'dtype', type(e).__name__)}"
                              f"{getattr(e, 'shape', '')}")
        return e

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.dtype.name}{self.shape})"


@dataclass(frozen=True, eq=False, repr=False)
class SparseRecon(Reconstruction):
    """``x_hat`` is zero except ``x_hat.flat[idx] = values`` (TopK's frames).

    ``idx``: strictly increasing flat positions in ``[0, prod(shape))`` (the body writer has
    validated them, as ``encode_indices`` does), kept as int64; ``values``: the decoded values,
    one per position, in ``dtype``. Neither is copied.

    >>> import numpy as np
    >>> r = SparseRecon(np.array([1, 3]), np.array([2.0, -1.0], np.float32), (2, 2), np.float32)
    >>> r.to_dense().tolist()
    [[0.0, 2.0], [0.0, -1.0]]
    """

    idx: np.ndarray
    values: np.ndarray
    shape: tuple[int, ...]
    dtype: np.dtype

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        set_(self, "dtype", np.dtype(self.dtype))
        set_(self, "shape", tuple(int(d) for d in self.shape))
        idx, values = np.asarray(self.idx), np.asarray(self.values)
        if idx.ndim != 1 or idx.dtype.kind not in "iu":
            raise ConfigError(f"SparseRecon idx must be a 1-D integer array, got {idx.dtype}{idx.shape}")
        if values.shape != idx.shape or values.dtype != self.dtype:
            raise ConfigError(f"SparseRecon values must be {self.dtype} with one per index "
                              f"({idx.size}), got {values.dtype}{values.shape}")
        set_(self, "idx", idx.astype(np.int64, copy=False))
        set_(self, "values", values)

    @property
    def k(self) -> int:
        """The number of positions sent."""
        return int(self.idx.size)

    def apply_residual(self, e: np.ndarray) -> None:
        # positions are unique, so the fancy-indexed in-place subtraction touches each once
        self._check_target(e).reshape(-1)[self.idx] -= self.values

    def to_dense(self) -> np.ndarray:
        out = np.zeros(self.shape, self.dtype)
        out.reshape(-1)[self.idx] = self.values
        return out

    def __repr__(self) -> str:
        numel = int(np.prod(self.shape, dtype=np.int64))
        return f"SparseRecon(k={self.k} of {numel}, {self.dtype.name})"


@dataclass(frozen=True, eq=False, repr=False)
class DenseRecon(Reconstruction):
    """``x_hat`` as an array (not copied). ``decoded=True`` when it was obtained by decoding
    the codec's own frame or body (its ``write_body`` returned ``None``): it then says nothing
    the decoder did not, and the conformance suite asks for an independent expectation.

    >>> import numpy as np
    >>> e = np.ones(3, np.float32)
    >>> DenseRecon(np.array([0.5, 1.0, 2.0], np.float32)).apply_residual(e)
    >>> e.tolist()
    [0.5, 0.0, -1.0]
    """

    x_hat: np.ndarray
    decoded: bool = False
    shape: tuple[int, ...] = field(init=False)
    dtype: np.dtype = field(init=False)

    def __post_init__(self) -> None:
        x_hat = np.asarray(self.x_hat)
        object.__setattr__(self, "x_hat", x_hat)
        object.__setattr__(self, "shape", tuple(x_hat.shape))
        object.__setattr__(self, "dtype", x_hat.dtype)

    def apply_residual(self, e: np.ndarray) -> None:
        np.subtract(self._check_target(e), self.x_hat, out=e)

    def to_dense(self) -> np.ndarray:
        return np.array(self.x_hat, copy=True, order="C")


@dataclass(frozen=True, eq=False, repr=False)
class IdentityRecon(Reconstruction):
    """Lossless: the decoder returns the input ``x`` bit for bit (in native byte order).

    ``x`` is the encoded array itself, not a copy: it describes the reconstruction only while
    ``x`` is unchanged. ``apply_residual(x)`` on the input itself (error feedback) leaves
    ``x - x`` (zeros) there, after which ``to_dense()`` returns those zeros: take it first.

    >>> import numpy as np
    >>> a = np.array([1.5, -2.0], np.float32)
    >>> r = IdentityRecon(a)
    >>> r.to_dense().tolist()
    [1.5, -2.0]
    >>> r.apply_residual(a); a.tolist()
    [0.0, 0.0]
    """

    x: np.ndarray
    shape: tuple[int, ...] = field(init=False)
    dtype: np.dtype = field(init=False)

    def __post_init__(self) -> None:
        x = np.asarray(self.x)
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "shape", tuple(x.shape))
        object.__setattr__(self, "dtype", _native(x.dtype))

    def apply_residual(self, e: np.ndarray) -> None:
        # elementwise with out=e: exact even when e is x itself (then e becomes x - x)
        np.subtract(self._check_target(e), self.x, out=e)

    def to_dense(self) -> np.ndarray:
        return np.array(self.x, dtype=self.dtype, copy=True, order="C")


def as_reconstruction(result: Any, who: str) -> Reconstruction | None:
    """A body writer's return value checked: a :class:`Reconstruction`, or ``None``.

    Anything else is a ``TypeError`` naming ``who`` (the codec class): before this contract a
    writer could return a free-form hint, which nothing can use safely.
    """
    if result is None or isinstance(result, Reconstruction):
        return result
    raise TypeError(f"{who}.write_body returned {type(result).__name__}; it must return a "
                    "sparsecodec.Reconstruction (SparseRecon, DenseRecon, IdentityRecon) or None "
                    "(see docs/codec_authors.md)")
