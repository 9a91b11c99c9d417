"""The :class:`Codec` base class.

A codec is stateless and configured at construction (subclasses are frozen dataclasses, so
equality is equality of configuration). It turns an array into a :class:`~sparsecodec.frame.Frame`
and bytes back into an array. The frame is self-describing: :func:`sparsecodec.decode` can
decode it without knowing the configuration.

Subclasses implement two body-level methods, which bundles reuse:

* ``_write_body(x, w, **side)``: write dtype/shape/parameters/payload into a
  :class:`~sparsecodec.frame.FrameWriter` (it may return a reconstruction hint, e.g. TopK's
  ``(idx, v_hat)``, which error feedback uses to avoid decoding twice);
* ``_read_body(r, out=None, **side) -> ndarray`` (a classmethod): read the same from a
  :class:`~sparsecodec.frame.FrameReader` that has already consumed the wire id.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import numpy as np

from .errors import ConfigError, CorruptFrameError
from .frame import DEFAULT_MAX_NUMEL, Frame, FrameReader, FrameWriter

__all__ = ["Codec"]


class Codec(abc.ABC):
    codec_id: ClassVar[str]
    wire_id: ClassVar[int]

    # -- to implement ----------------------------------------------------------------------
    @abc.abstractmethod
    def _write_body(self, x: np.ndarray, w: FrameWriter, **side: Any) -> Any:
        """Write the codec body of ``x``. May return a codec-specific reconstruction hint
        (TopK returns ``(idx, v_hat)``), which bundles pass on to error feedback."""

    @classmethod
    @abc.abstractmethod
    def _read_body(cls, r: FrameReader, out: np.ndarray | None = None, **side: Any) -> np.ndarray:
        """Read a body written by :meth:`_write_body` (validating everything)."""

    #: whether frames carry a CRC-32 by default (bundles always default to one per message)
    checksum: bool = False

    # -- public API ------------------------------------------------------------------------
    def encode(self, x, **side: Any) -> Frame:
        """Encode ``x`` into a :class:`Frame`; ``bytes(frame)`` is what travels."""
        w = FrameWriter(self.wire_id, checksum=self.checksum)
        self._write_body(x, w, **side)
        return w.finish(numel=int(np.size(x)), codec_id=self.codec_id)

    def encode_and_reconstruct(self, x, **side: Any) -> tuple[Frame, np.ndarray]:
        """Encode and also return what the decoder will reconstruct.

        The default decodes the frame; codecs that know their reconstruction cheaply
        (TopK, Dense) override it so error feedback does not decode twice.
        """
        frame = self.encode(x, **side)
        return frame, self.decode(frame.data, **side)

    def decode(self, data, out: np.ndarray | None = None, *, max_numel: int = DEFAULT_MAX_NUMEL,
               **side: Any) -> np.ndarray:
        """Decode bytes produced by this codec (or any codec of the same kind)."""
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
        x = type(self)._read_body(r, out=out, **side)
        r.expect_end()
        return x

    # -- configuration ---------------------------------------------------------------------
    def get_config(self) -> dict[str, Any]:
        """JSON-safe configuration with an ``"id"``; :meth:`from_config` inverts it."""
        cfg: dict[str, Any] = {"id": self.codec_id}
        if dataclasses.is_dataclass(self):
            for f in dataclasses.fields(self):
                cfg[f.name] = getattr(self, f.name)
        return cfg

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> "Codec":
        config = dict(config)
        cid = config.pop("id", cls.codec_id)
        if cid != cls.codec_id:
            raise ConfigError(f"config id {cid!r} does not match codec {cls.codec_id!r}")
        try:
            return cls(**config)
        except TypeError as exc:
            raise ConfigError(f"bad config for codec {cls.codec_id!r}: {exc}") from None
