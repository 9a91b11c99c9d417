"""The exception hierarchy.

Two families, both subclasses of :class:`ValueError` so that callers who only know the
standard library still catch them:

* :class:`ConfigError`: the *caller* misused the API (bad ``k``, NaN input, wrong side
  information). The message says how to fix the call.
* :class:`FrameError`: the *bytes* are not a valid frame (truncated, corrupted, crafted).
  Decoders raise only subclasses of it on hostile input, never ``IndexError``, ``MemoryError``
  or a segfault.

:class:`SideInfoMismatchError` (side information that does not fit the frame) is in both.
"""

from __future__ import annotations

__all__ = [
    "SparseCodecError",
    "ConfigError",
    "FrameError",
    "TruncatedFrameError",
    "BadMagicError",
    "UnsupportedVersionError",
    "ChecksumError",
    "CorruptFrameError",
    "LimitExceededError",
    "SideInfoMismatchError",
]


class SparseCodecError(Exception):
    """Base class of every error sparsecodec raises on purpose."""


class ConfigError(SparseCodecError, ValueError):
    """Misuse: an invalid configuration, argument or input array."""


class FrameError(SparseCodecError, ValueError):
    """The bytes given to a decoder are not a valid frame."""


class TruncatedFrameError(FrameError):
    """The buffer ends before the frame does."""


class BadMagicError(FrameError):
    """The buffer does not start with the sparsecodec magic bytes."""


class UnsupportedVersionError(FrameError):
    """The frame was written by a format version this library cannot read."""


class ChecksumError(FrameError):
    """The CRC-32 stored in the frame does not match its content."""


class CorruptFrameError(FrameError):
    """A field or payload is inconsistent (bad id, out-of-range index, trailing bytes, ...)."""


class LimitExceededError(FrameError):
    """The frame declares more elements than the caller's ``max_numel`` allows."""


class SideInfoMismatchError(FrameError, ConfigError):
    """The frame does not fit the side information the caller offered.

    E.g. ``decode(data, p=probs)`` on a frame that names the ``dense`` codec, a mask frame
    coded with the adaptive model, or one of another size than ``p``. Either party can be at
    fault, so it is both: a :class:`FrameError` (a server that drops clients sending bad
    bytes catches it; the frame picked the codec) and a :class:`ConfigError` (code that
    treated a wrong ``p`` as misuse keeps working). The message names the mismatch.
    """
