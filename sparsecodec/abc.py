"""The :class:`Codec` base class: the extension API for codec authors.

A codec is stateless and configured at construction (subclasses are frozen dataclasses, so
equality is equality of configuration). It turns an array into a :class:`~sparsecodec.Frame`
and bytes back into an array. The frame is self-describing: :func:`sparsecodec.decode` can
decode it without knowing the configuration (once the codec is registered).

A codec implements two body-level hooks, which frames, bundles and compact messages all use:

* ``write_body(self, x, w, **side)``: write dtype/shape/parameters/payload of the numpy array
  ``x`` into a :class:`~sparsecodec.FrameWriter` ``w``, and return what the decoder will
  reconstruct, a :class:`~sparsecodec.Reconstruction` (TopK: a
  :class:`~sparsecodec.SparseRecon`; Dense and MaskCodec, lossless: an
  :class:`~sparsecodec.IdentityRecon`), or ``None``. For ``None`` the base class derives a
  :class:`~sparsecodec.DenseRecon` where one is needed (:meth:`Codec.encode_with_reconstruction`,
  bundles and compact messages under error feedback) by decoding the codec's own frame or body
  once; a codec that knows its reconstruction saves that decode;
* ``read_body(cls, r, out=None, **side) -> ndarray`` (a classmethod): read the same from a
  :class:`~sparsecodec.FrameReader` ``r`` that has already consumed the wire id, treating every
  byte as hostile (raise :class:`~sparsecodec.FrameError` subclasses, never crash).

The built-in codecs define them under their older private names ``_write_body`` /
``_read_body``; either spelling works, the other one is made an alias of it. The full guide,
with a complete third-party codec, is ``docs/codec_authors.md``.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

from ._arrays import as_numpy
from .errors import ConfigError, CorruptFrameError
from .frame import DEFAULT_MAX_NUMEL, Frame, FrameReader, FrameWriter
from .reconstruction import DenseRecon, Reconstruction, as_reconstruction

__all__ = ["Codec", "body_reconstruction"]

# (public hook, legacy private name): a class that defines one gets the other as an alias, so
# callers using either name (bundles call ``_write_body``) reach the same implementation.
_HOOKS = (("write_body", "_write_body"), ("read_body", "_read_body"))


def _defines(cls: type, name: str) -> bool:
    return any(name in k.__dict__ for k in cls.__mro__ if k is not Codec)


class Codec(abc.ABC):
    """Base class of every codec, ours and third-party ones.

    Subclass it as a frozen dataclass, set the class attributes ``codec_id`` (a unique name,
    the ``"id"`` of :meth:`get_config`) and ``wire_id`` (the byte that names the codec in a
    frame; user codecs take 64..123, see :data:`sparsecodec.registry.USER_WIRE_IDS`), and
    implement :meth:`write_body` and :meth:`read_body`. :meth:`encode`, :meth:`decode`,
    :meth:`encode_with_reconstruction`, :meth:`encode_and_reconstruct`, :meth:`get_config` and
    :meth:`from_config` come with it.
    Decorate the class with :func:`sparsecodec.register_codec` so that
    :func:`sparsecodec.decode`, :func:`sparsecodec.get_codec` and bundles find it.

    A lossless float32 codec in a few lines (left unregistered here, so only its own
    :meth:`decode` reads its frames):

    >>> import dataclasses, numpy as np, sparsecodec as sc
    >>> @dataclasses.dataclass(frozen=True)
    ... class Raw32(sc.Codec):
    ...     codec_id = "raw32_example"
    ...     wire_id = 120
    ...     def write_body(self, x, w, **side):
    ...         w.tensor_header(np.dtype(np.float32), x.shape)
    ...         w.raw(np.ascontiguousarray(x, "<f4"), "values")
    ...     @classmethod
    ...     def read_body(cls, r, out=None, **side):
    ...         dtype, shape, numel = r.tensor_header()
    ...         if dtype != np.float32 or r.remaining != 4 * numel:
    ...             raise sc.CorruptFrameError("raw32: bad dtype or payload length")
    ...         return np.frombuffer(r.take(4 * numel, "values"), "<f4").astype(np.float32).reshape(shape)
    >>> frame = Raw32().encode(np.arange(3, dtype=np.float32))
    >>> frame.sections
    {'header': 80, 'values': 96}
    >>> Raw32().decode(bytes(frame)).tolist()
    [0.0, 1.0, 2.0]
    """

    codec_id: ClassVar[str]
    wire_id: ClassVar[int]

    #: whether frames carry a CRC-32 by default (bundles always default to one per message)
    checksum: bool = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        for public, legacy in _HOOKS:
            if public in cls.__dict__ and legacy not in cls.__dict__:
                setattr(cls, legacy, cls.__dict__[public])
            elif legacy in cls.__dict__ and public not in cls.__dict__:
                setattr(cls, public, cls.__dict__[legacy])

    def __new__(cls, *args: Any, **kwargs: Any) -> "Codec":
        # the check abc.abstractmethod would make, done by hand: the hooks have two names, and
        # a static abstract method would make type checkers reject the built-in codecs
        missing = [public for public, legacy in _HOOKS
                   if not (_defines(cls, public) or _defines(cls, legacy))]
        if missing:
            raise TypeError(f"can't instantiate codec {cls.__name__}: it does not implement "
                            f"{' and '.join(missing)} (see docs/codec_authors.md)")
        return super().__new__(cls)

    # -- to implement ----------------------------------------------------------------------
    def write_body(self, x: np.ndarray, w: FrameWriter, **side: Any) -> Any:
        """Write the codec body of the numpy array ``x`` into ``w`` (to implement).

        Start with ``w.tensor_header(dtype, shape)`` (it writes nothing when a bundle schema
        already fixes them), then the codec's parameters and payload, each in a named section
        (``"header"``, ``"index"``, ``"values"``...): the sections are the frame's bit breakdown.
        Reject inputs the codec cannot code with :class:`~sparsecodec.ConfigError`.

        Return the :class:`~sparsecodec.Reconstruction` the decoder will produce, bit for bit
        (``IdentityRecon(x)`` for a lossless codec, ``SparseRecon``, ``DenseRecon``), or
        ``None``: the base class then decodes the frame (or bundle body) once where the
        reconstruction is needed. Anything else is a ``TypeError``.
        """
        raise NotImplementedError(f"{type(self).__name__} must implement write_body")

    @classmethod
    def read_body(cls, r: FrameReader, out: np.ndarray | None = None, **side: Any) -> np.ndarray:
        """Read a body written by :meth:`write_body` from ``r`` (to implement).

        Start with ``dtype, shape, numel = r.tensor_header()`` (it enforces ``max_numel``).
        The bytes are hostile: check every length and value before allocating or indexing,
        and raise :class:`~sparsecodec.CorruptFrameError` (or another
        :class:`~sparsecodec.FrameError`) for anything inconsistent. Consume exactly the
        body: the caller rejects trailing bytes. Honour ``out`` (write into it) when given.
        """
        raise NotImplementedError(f"{cls.__name__} must implement read_body")

    # the legacy names, typed loosely so that the built-ins' narrower signatures (keyword-only
    # side information such as ``p=``) remain valid overrides
    def _write_body(self, *args: Any, **kwargs: Any) -> Any:
        return self.write_body(*args, **kwargs)

    @classmethod
    def _read_body(cls, *args: Any, **kwargs: Any) -> Any:
        return cls.read_body(*args, **kwargs)

    # -- public API ------------------------------------------------------------------------
    def encode(self, x: Any, **side: Any) -> Frame:
        """Encode ``x`` (a numpy array, CPU torch tensor or array-like) into a :class:`Frame`.

        ``bytes(frame)`` is what travels; ``frame.sections`` is its exact bit breakdown.
        """
        return self._encode_body(x, side)[1]

    def encode_with_reconstruction(self, x: Any, **side: Any) -> tuple[Frame, Reconstruction]:
        """Encode and also return what the decoder will reconstruct, as a typed object.

        The reconstruction is what :meth:`write_body` returned; when it returned ``None``, a
        :class:`~sparsecodec.DenseRecon` (``decoded=True``) of this frame decoded once.

        >>> import numpy as np, sparsecodec as sc
        >>> frame, recon = sc.Dense().encode_with_reconstruction(np.ones(3, np.float32))
        >>> type(recon).__name__, recon.to_dense().tolist()
        ('IdentityRecon', [1.0, 1.0, 1.0])
        """
        x, frame, recon = self._encode_body(x, side)
        if recon is None:
            limit = max(int(np.size(x)), DEFAULT_MAX_NUMEL)   # our own frame: any size we wrote
            recon = DenseRecon(self.decode(frame, max_numel=limit, **side), decoded=True)
        return frame, recon

    def encode_and_reconstruct(self, x: Any, **side: Any) -> tuple[Frame, np.ndarray]:
        """Encode and also return what the decoder will reconstruct, as a new array.

        :meth:`encode_with_reconstruction` with the reconstruction made dense.
        """
        frame, recon = self.encode_with_reconstruction(x, **side)
        return frame, recon.to_dense()

    def _encode_body(self, x: Any, side: dict) -> tuple[np.ndarray, Frame, Reconstruction | None]:
        x = as_numpy(x)
        w = FrameWriter(self.wire_id, checksum=self.checksum)
        recon = as_reconstruction(self.write_body(x, w, **side), type(self).__name__)
        frame = w.finish(numel=int(np.size(x)), codec_id=self.codec_id, meta=self._frame_meta(recon))
        return x, frame, recon

    def _frame_meta(self, recon: Reconstruction | None) -> dict[str, Any] | None:
        """Extra ``frame.meta`` entries for a frame whose body returned ``recon`` (TopK: k)."""
        return None

    def decode(self, data: Any, out: np.ndarray | None = None, *,
               max_numel: int = DEFAULT_MAX_NUMEL, **side: Any) -> np.ndarray:
        """Decode bytes produced by this codec (or any codec of the same kind).

        ``max_numel`` caps the elements a (possibly hostile) frame may declare.
        """
        r = FrameReader(data, max_numel=max_numel)
        if r.wire_id != self.wire_id:
            from .registry import codec_name_for_wire_id

            try:
                other = codec_name_for_wire_id(r.wire_id)
            except CorruptFrameError:
                other = f"wire id {r.wire_id}"
            raise CorruptFrameError(
                f"this frame was written by codec {other!r}, not {self.codec_id!r}; "
                "use sparsecodec.decode(data) to decode any frame")
        x = type(self).read_body(r, out=out, **side)
        r.expect_end()
        return x

    # -- configuration ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """JSON-safe configuration with an ``"id"``; :meth:`from_config` inverts it.

        For a dataclass codec it holds every field; other codecs override it.
        """
        cfg: dict[str, Any] = {"id": self.codec_id}
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                cfg[f.name] = getattr(self, f.name)
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        """Rebuild a codec from :meth:`get_config` output (:class:`ConfigError` if invalid)."""
        config = dict(config)
        cid = config.pop("id", cls.codec_id)
        if cid != cls.codec_id:
            raise ConfigError(f"config id {cid!r} does not match codec {cls.codec_id!r}")
        try:
            return cls(**config)
        except TypeError as exc:
            raise ConfigError(f"bad config for codec {cls.codec_id!r}: {exc}") from None


def body_reconstruction(codec: Codec, x: np.ndarray, result: Any, body: bytes,
                        known: tuple | None = None, side: Any = None) -> Reconstruction:
    """The reconstruction of one body a bundle or compact message holds.

    ``result`` is what ``codec._write_body(x, ...)`` returned for ``body`` (the bytes of its
    body-only writer, wire id first; ``known``: the schema's (dtype, shape), if any). ``None``
    is completed by reading that body once (with the tensor's side information ``side``),
    never the whole message.
    """
    recon = as_reconstruction(result, type(codec).__name__)
    if recon is not None:
        return recon
    extra = {k: v for k, v in dict(side or {}).items() if v is not None}
    r = FrameReader(body, max_numel=max(int(np.size(x)), DEFAULT_MAX_NUMEL), body_only=True,
                    known=known)
    x_hat = type(codec)._read_body(r, **extra)
    r.expect_end()
    return DenseRecon(x_hat, decoded=True)
