"""Slow, obvious reference coders for sparsecodec.indices (pure Python: bit strings and ints).

Each encoder returns the payload bytes; each decoder returns a list of indices or raises
``RefError(kind)`` with kind ``"truncated"`` (the bits ran out) or ``"corrupt"`` (anything
else). The kernels must agree with these byte for byte and element for element. Parameters
are derived here independently of the library where that is feasible: the Golomb parameter
by the exact rational inequality of Gallager and Van Voorhis (big integers), the widths by
``math.log2`` on small numbers.
"""

from __future__ import annotations

import math

import zstandard

ZSTD_LEVEL = 9


class RefError(Exception):
    def __init__(self, kind: str):
        super().__init__(kind)
        self.kind = kind


# -- bit strings ------------------------------------------------------------------------------
def to_bytes(bits: str) -> bytes:
    """'0'/'1' string, zero-padded on the right to whole bytes."""
    bits += "0" * (-len(bits) % 8)
    return bytes(int(bits[i:i + 8], 2) for i in range(0, len(bits), 8))


def to_bits(payload: bytes) -> str:
    return "".join(format(b, "08b") for b in payload)


class BitReader:
    def __init__(self, payload: bytes):
        self.bits = to_bits(payload)
        self.pos = 0

    def read(self, n: int) -> int:
        if self.pos + n > len(self.bits):
            raise RefError("truncated")
        v = int(self.bits[self.pos:self.pos + n], 2) if n else 0
        self.pos += n
        return v

    def finish(self) -> None:
        """The rest must be fewer than 8 bits, all zero."""
        rest = self.bits[self.pos:]
        if len(rest) >= 8 or "1" in rest:
            raise RefError("corrupt")


def check_index(v: int, prev: int, numel: int) -> None:
    if v >= numel or v <= prev:
        raise RefError("corrupt")


# -- raw --------------------------------------------------------------------------------------
def raw_width(numel: int) -> int:
    w = 1
    while (1 << w) < numel:  # smallest w with 2**w >= numel
        w += 1
    return w


def raw_encode(idx, numel) -> bytes:
    if len(idx) in (0, numel):
        return b""
    w = raw_width(numel)
    return to_bytes("".join(format(int(v), f"0{w}b") for v in idx))


def raw_decode(payload: bytes, numel: int, k: int) -> list[int]:
    if k in (0, numel):
        if payload:
            raise RefError("corrupt")
        return list(range(k))
    w = raw_width(numel)
    if len(payload) < math.ceil(k * w / 8):
        raise RefError("truncated")
    r = BitReader(payload)
    out = []
    prev = -1
    for _ in range(k):
        v = r.read(w)
        check_index(v, prev, numel)
        out.append(v)
        prev = v
    r.finish()
    return out


# -- Golomb -----------------------------------------------------------------------------------
def golomb_m(numel: int, k: int) -> int:
    """Smallest m >= 1 with theta**m * (1 + theta) <= 1, theta = 1 - k/numel, exactly.

    Big-integer powers: only for m up to a few thousand (numel / k up to ~5000).
    """
    if k <= 0 or k >= numel:
        return 1
    a, n = numel - k, numel  # theta = a / n
    guess = max(1, math.ceil(math.log(1 + a / n) / -math.log(a / n)))
    m = max(1, guess - 2)
    while a ** m * (n + a) > n ** (m + 1):  # walk up from just below the float guess
        m += 1
    while m > 1 and a ** (m - 1) * (n + a) <= n ** m:
        m -= 1
    return m


def golomb_encode(idx, numel, m: int | None = None) -> bytes:
    """``m`` defaults to :func:`golomb_m` (pass it for huge numel/k, where that is too slow)."""
    k = len(idx)
    if k in (0, numel):
        return b""
    m = golomb_m(numel, k) if m is None else m
    c = 0
    while (1 << c) < m:
        c += 1
    cutoff = (1 << c) - m
    bits = []
    prev = -1
    for v in idx:
        gap = int(v) - prev - 1
        prev = int(v)
        q, r = divmod(gap, m)
        bits.append("1" * q + "0")
        if r < cutoff:
            bits.append(format(r, f"0{c - 1}b") if c > 1 else "")
        elif c:
            bits.append(format(r + cutoff, f"0{c}b"))
    return to_bytes("".join(bits))


def golomb_decode(payload: bytes, numel: int, k: int, m: int | None = None) -> list[int]:
    if k in (0, numel):
        if payload:
            raise RefError("corrupt")
        return list(range(k))
    m = golomb_m(numel, k) if m is None else m
    c = 0
    while (1 << c) < m:
        c += 1
    cutoff = (1 << c) - m
    r = BitReader(payload)
    out = []
    prev = -1
    for _ in range(k):
        q = 0
        while r.read(1) == 1:
            q += 1
            if prev + 1 + q * m >= numel:
                raise RefError("corrupt")
        rem = 0
        if c:
            head = r.read(c - 1)
            if head < cutoff:
                rem = head
            else:
                rem = (head << 1 | r.read(1)) - cutoff
        v = prev + 1 + q * m + rem
        check_index(v, prev, numel)
        out.append(v)
        prev = v
    r.finish()
    return out


# -- Elias-Fano -------------------------------------------------------------------------------
def ef_low_bits(numel: int, k: int) -> int:
    low = 0
    while (1 << (low + 1)) * k <= numel:  # largest L with 2**L <= numel / k
        low += 1
    return low


def eliasfano_encode(idx, numel) -> bytes:
    k = len(idx)
    if k in (0, numel):
        return b""
    low = ef_low_bits(numel, k)
    lower = "".join(format(int(v) & ((1 << low) - 1), f"0{low}b") if low else "" for v in idx)
    ones = {(int(v) >> low) + i for i, v in enumerate(idx)}
    upper = "".join("1" if p in ones else "0" for p in range(max(ones) + 1))
    return to_bytes(lower + upper)


def eliasfano_decode(payload: bytes, numel: int, k: int) -> list[int]:
    if k in (0, numel):
        if payload:
            raise RefError("corrupt")
        return list(range(k))
    low = ef_low_bits(numel, k)
    r = BitReader(payload)
    lows = [r.read(low) for _ in range(k)]
    out = []
    prev = -1
    zeros = 0
    for i in range(k):
        while r.read(1) == 0:
            zeros += 1
        v = (zeros << low) | lows[i]
        check_index(v, prev, numel)
        out.append(v)
        prev = v
    r.finish()
    return out


# -- zstd over LEB128 gaps --------------------------------------------------------------------
def leb128(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def gap_varints(idx) -> bytes:
    out = bytearray()
    prev = -1
    for v in idx:
        out += leb128(int(v) - prev - 1)
        prev = int(v)
    return bytes(out)


def parse_gap_varints(raw: bytes, numel: int, k: int) -> list[int]:
    out = []
    prev = -1
    pos = 0
    for _ in range(k):
        start = pos
        gap = 0
        shift = 0
        while True:
            if pos >= len(raw):
                raise RefError("truncated")
            byte = raw[pos]
            pos += 1
            gap |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                break
            if shift > 56:  # a 9th byte that continues: over 63 bits, whatever follows
                raise RefError("corrupt")
        if leb128(gap) != raw[start:pos]:  # non-canonical
            raise RefError("corrupt")
        v = prev + 1 + gap
        check_index(v, prev, numel)
        out.append(v)
        prev = v
    if pos != len(raw):
        raise RefError("corrupt")
    return out


def _zstd_params():
    return zstandard.ZstdCompressionParameters.from_level(
        ZSTD_LEVEL, format=zstandard.FORMAT_ZSTD1_MAGICLESS, write_checksum=0,
        write_content_size=0, write_dict_id=0)


def zstd_encode(idx, numel) -> bytes:
    """Layout byte 0 + zstd(varint gaps), or 1 + zstd(uint32 gaps) when that is shorter."""
    if len(idx) in (0, numel):
        return b""
    cctx = zstandard.ZstdCompressor(compression_params=_zstd_params())
    best = b"\x00" + cctx.compress(gap_varints(idx))
    if numel <= 2**32:
        prev, raw = 0, bytearray()
        for i in idx:
            raw += int(i - prev).to_bytes(4, "little")
            prev = int(i)
        alt = b"\x01" + cctx.compress(bytes(raw))
        if len(alt) < len(best):
            best = alt
    return best


def zstd_decode(payload: bytes, numel: int, k: int) -> list[int]:
    """Decompress with the streaming API (no size limit needed for trusted test data)."""
    if k in (0, numel):
        if payload:
            raise RefError("corrupt")
        return list(range(k))
    if not payload or payload[0] not in (0, 1):
        raise RefError("corrupt")
    layout, payload = payload[0], payload[1:]
    dobj = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompressobj()
    try:
        raw = dobj.decompress(payload)
    except zstandard.ZstdError:
        raise RefError("corrupt") from None
    if not dobj.eof:
        raise RefError("truncated")
    if dobj.unused_data:
        raise RefError("corrupt")
    if layout == 0:
        return parse_gap_varints(raw, numel, k)
    if len(raw) != 4 * k:
        raise RefError("corrupt")
    out, pos = [], 0
    for i in range(k):
        gap = int.from_bytes(raw[4 * i:4 * i + 4], "little")
        if i and gap < 1:
            raise RefError("corrupt")
        pos += gap
        out.append(pos)
    if out[-1] >= numel:
        raise RefError("corrupt")
    return out


ENCODERS = {"raw": raw_encode, "golomb": golomb_encode, "eliasfano": eliasfano_encode,
            "zstd": zstd_encode}
DECODERS = {"raw": raw_decode, "golomb": golomb_decode, "eliasfano": eliasfano_decode,
            "zstd": zstd_decode}
