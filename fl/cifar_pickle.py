"""CIFAR's python-pickle batches, read without executing anything (used by :mod:`fl.data`).

The official files are pickles (Python 2, protocol 2). This module holds the restricted
unpickler that reads them: only the globals numpy arrays need, each mapped to an inert
stand-in, lengths checked against the file before anything is built. Any other content is a
:class:`fl.data.DatasetFormatError`.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools

import numpy as np

from .data import DatasetFormatError

__all__ = ["read_cifar_pickle", "CIFAR_MAX_FILE_BYTES"]


# -- CIFAR: the official python-pickle batches, read without executing anything ---------------
# The files are pickles (Python 2, protocol 2): dicts of bytes keys, lists of ints, bytes and
# numpy uint8 arrays. The unpickler below resolves only the globals numpy arrays need and maps
# each one to an inert stand-in of ours (never numpy's own callables, which can allocate
# arbitrary shapes): a hostile file cannot call os.system & co, and nothing is allocated
# beyond the bytes the file really holds (the counted lengths are checked first).
CIFAR_MAX_FILE_BYTES = 512 << 20       # the real files: 31 MB (CIFAR-10), 155 MB (CIFAR-100)
_CIFAR_DTYPES = frozenset(f"{k}{n}" for k in "ui" for n in "1248") | {"f4", "f8", "b1"}


class _Global:
    """What a global of the file resolves to: calls ``fn`` (one of the stand-ins below) and
    nothing else. No ``__dict__`` and a refusing ``__setstate__``: a BUILD opcode aimed at it
    cannot set attributes on our module's functions or classes (``__defaults__``...)."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args):
        if self.fn is None:      # numpy.ndarray: only an argument of _reconstruct
            raise pickle.UnpicklingError("numpy.ndarray may not be called")
        return self.fn(*args)

    def __setstate__(self, state):
        raise pickle.UnpicklingError("BUILD on a global is not allowed")


class _DtypeStub:
    __slots__ = ("spec", "order")

    def __init__(self, spec, align=False, copy=True):
        spec = spec.decode("ascii") if isinstance(spec, bytes) else spec
        if not isinstance(spec, str) or spec not in _CIFAR_DTYPES:
            raise pickle.UnpicklingError(f"dtype {spec!r} is not a plain numeric dtype")
        self.spec, self.order = spec, "|"

    def __setstate__(self, state):
        order = state[1].decode("ascii") if isinstance(state[1], bytes) else state[1]
        if order not in ("|", "<", ">", "="):
            raise pickle.UnpicklingError(f"dtype byte order {order!r}")
        self.order = order

    def dtype(self) -> np.dtype:
        return np.dtype(self.spec if self.order == "|" else self.order + self.spec)


def _build_array(raw, dtype, shape, fortran) -> np.ndarray:
    if not isinstance(dtype, _DtypeStub) or not isinstance(raw, (bytes, bytearray)):
        raise pickle.UnpicklingError("array state is not (dtype, raw bytes)")
    if (not isinstance(shape, tuple) or len(shape) > 8
            or not all(isinstance(d, int) and d >= 0 for d in shape)):
        raise pickle.UnpicklingError(f"array shape {shape!r}")
    dt = dtype.dtype()
    if int(np.prod(shape, dtype=np.int64)) * dt.itemsize != len(raw):
        raise pickle.UnpicklingError(f"array {shape} {dt} does not match its {len(raw)} bytes")
    # a read-only view of the file's own bytes (no copy: CIFAR-100's train file is 155 MB)
    return np.frombuffer(raw, dt).reshape(shape, order="F" if fortran else "C")


class _ArrayStub:           # numpy's _reconstruct(ndarray, (0,), b"b") then BUILD(state)
    __slots__ = ("array",)

    def __init__(self, subtype, shape, typecode):
        if subtype is not _NDARRAY:
            raise pickle.UnpicklingError("_reconstruct of something other than numpy.ndarray")
        self.array: np.ndarray | None = None

    def __setstate__(self, state):
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("array state is not a 4- or 5-tuple")
        shape, dtype, fortran, raw = state[-4:]
        self.array = _build_array(raw, dtype, shape, bool(fortran))


def _frombuffer(buf, dtype, shape, order):   # numpy's protocol-5 reduction
    return _build_array(buf.raw() if isinstance(buf, pickle.PickleBuffer) else buf,
                        dtype, shape, order == "F")


def _latin1_encode(text, encoding="utf-8"):  # how Python 3 writes bytes at protocol 2
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is allowed only for latin1 text")
    return text.encode("latin1")


def _empty_bytes(*args):                     # b"" at protocol 2 is bytes()
    if args:
        raise pickle.UnpicklingError("bytes() is allowed only without arguments")
    return b""


_NDARRAY = _Global(None)
_CIFAR_GLOBALS = {("numpy", "ndarray"): _NDARRAY, ("numpy", "dtype"): _Global(_DtypeStub),
                  ("_codecs", "encode"): _Global(_latin1_encode),
                  ("__builtin__", "bytes"): _Global(_empty_bytes),
                  ("builtins", "bytes"): _Global(_empty_bytes)}
for _core in ("numpy.core", "numpy._core"):
    _CIFAR_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _Global(_ArrayStub)
    _CIFAR_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _Global(_frombuffer)


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) not in _CIFAR_GLOBALS:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a CIFAR batch holds only dicts, lists, bytes, "
                f"ints and numpy arrays (nothing was executed)")
        return _CIFAR_GLOBALS[(module, name)]

    def persistent_load(self, pid):
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_cifar_pickle(path: str | os.PathLike) -> dict:
    """Read one CIFAR python-pickle batch as a dict (keys are bytes, as the files store them:
    ``b"data"``, ``b"labels"``...), with (read-only) numpy arrays restored, **without running
    any code** from the file: any other global (``os.system``, ``builtins.eval``...) raises
    :class:`DatasetFormatError`, as do truncated files and counted lengths past the end.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "batch")
    >>> with open(path, "wb") as f:
    ...     pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [3, 1]}, f, protocol=2)
    >>> batch = read_cifar_pickle(path)
    >>> batch[b"data"].shape, batch[b"data"].dtype, batch[b"labels"]
    ((2, 3072), dtype('uint8'), [3, 1])
    """
    size = os.path.getsize(path)
    if size > CIFAR_MAX_FILE_BYTES:
        raise DatasetFormatError(f"{path}: {size} bytes, more than any CIFAR batch")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        for _ in pickletools.genops(raw):   # checks every counted length against the bytes
            pass
        obj = _CifarUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as exc:   # only our stand-ins can be called: any failure is a bad file
        raise DatasetFormatError(f"{path}: not a CIFAR python-pickle batch: {exc}") from None
    if not isinstance(obj, dict):
        raise DatasetFormatError(f"{path}: the pickle holds a {type(obj).__name__}, not a dict")
    return {k: (v.array if isinstance(v, _ArrayStub) else v) for k, v in obj.items()}
