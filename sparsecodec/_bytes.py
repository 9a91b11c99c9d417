"""Byte-level primitives of the wire format: the CRC-8 that guards tensor headers and bundle
entries, and the unsigned LEB128 varint. A leaf module (no sparsecodec imports but the errors),
re-exported by :mod:`sparsecodec.frame`.

    >>> encode_varint(300).hex(), crc8(b"SC")
    ('ac02', 253)
"""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["crc8", "encode_varint"]


def _crc8_table() -> list[int]:
    table = []
    for byte in range(256):
        c = byte
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC8 = _crc8_table()


def crc8(data: bytes) -> int:
    """CRC-8 (polynomial 0x07): detects every single-bit error; guards tensor headers."""
    c = 0
    for b in data:
        c = _CRC8[c ^ b]
    return c


def encode_varint(value: int) -> bytes:
    """Unsigned LEB128 (shortest form)."""
    if value < 0:
        raise ConfigError(f"varint must be >= 0, got {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
