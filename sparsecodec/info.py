"""What a frame's preamble says, read without decoding: above both the wire format
(:mod:`sparsecodec.frame`) and the registry of wire ids (:mod:`sparsecodec.registry`), so
neither imports the other's reader of names."""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ConfigError
from .frame import (_KNOWN_FLAGS, FLAG_CHECKSUM, FORMAT_VERSION, MAGIC, PREAMBLE_BYTES,
                    FrameReader)
from .registry import MESSAGE_KINDS, PACKED_WIRE_ID, PATCH_WIRE_ID, codec_name_for_wire_id

__all__ = ["FrameInfo", "frame_info"]


@dataclass(frozen=True)
class FrameInfo:
    """What the preamble says, readable without decoding the payload."""

    format_version: int
    wire_id: int
    codec_id: str
    has_checksum: bool
    nbytes: int


def frame_info(data, *, verify: bool | None = None) -> FrameInfo:
    """What a frame's preamble says, without decoding the payload.

    The first 5 bytes suffice (e.g. the start of a stream): ``verify=None`` (the default)
    checks the CRC-32 only when ``data`` may be the whole frame, i.e. when it is longer than
    the preamble; ``verify=False`` never does (``nbytes`` is then what was given);
    ``verify=True`` always does. Compact messages and patches (wire ids 0x7D, 0x7C) carry a
    CRC seeded with what both ends know: it is checked by their decoders, not here.

    >>> import numpy as np, sparsecodec as sc
    >>> data = bytes(sc.Dense(checksum=True).encode(np.zeros(3, np.float32)))
    >>> sc.frame_info(data).codec_id, sc.frame_info(data[:5]).has_checksum
    ('dense', True)
    """
    try:
        buf = memoryview(data).cast("B")
    except TypeError as exc:
        raise ConfigError(f"frame_info() needs a bytes-like object, got {type(data).__name__}") from exc
    if len(buf) < PREAMBLE_BYTES or bytes(buf[0:2]) != MAGIC:
        FrameReader(buf)            # raises the precise error (bad magic, truncated)
    if buf[2] != FORMAT_VERSION or buf[3] & ~_KNOWN_FLAGS or buf[3] & FLAG_CHECKSUM not in (0, FLAG_CHECKSUM):
        FrameReader(buf)            # raises the precise error (version, flags)
    wire_id = buf[4]
    seeded = wire_id in (PACKED_WIRE_ID, PATCH_WIRE_ID)
    if (verify or (verify is None and len(buf) > PREAMBLE_BYTES)) and not seeded:
        FrameReader(buf)            # verifies the CRC-32 of the whole frame
    name = MESSAGE_KINDS.get(wire_id) or codec_name_for_wire_id(wire_id)
    return FrameInfo(FORMAT_VERSION, wire_id, name, bool(buf[3] & FLAG_CHECKSUM), len(buf))
