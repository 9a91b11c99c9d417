"""Shared machinery of the frames that rely on what both ends know (compact messages, patches).

Such a frame starts with the usual 5-byte preamble (magic, version, flags, wire id); its
checksum flag (bits 0-1, both set or both clear, as everywhere) announces a CRC-32 trailer
**seeded** with a 32-bit value both ends derive (the message spec's fingerprint, the
schema's): a receiver holding other knowledge than the sender then fails the check instead of
decoding garbage. Without the CRC the seed is written after the preamble instead, so the
mismatch is still caught.

Sparse parts are written as one block:

* small supports (``k <= ENUM_MAX_K`` with ``index="auto"``) of all entries, ranked exactly
  into one mixed-radix integer (:mod:`sparsecodec.enumerative_rank`), ``ceil(B / 8)`` bytes
  for ``B = ceil(log2 prod C(n_t, k_t))``;
* each other support: u8 index coder id, varint payload length, payload
  (:mod:`sparsecodec.indices`, within 1 % of ``log2 C(n, k)``).

Bits are attributed per tensor (ledgers): a ranked set gets the increase of the cumulative
exact bit count it causes; the joined integer's byte padding (< 8 bits) is the message's.
"""

from __future__ import annotations

import zlib
from typing import Callable, Sequence

import numpy as np

from .enumerative_rank import ENUM_MAX_K, decode_ranks, encode_ranks, radix_product
from .errors import (BadMagicError, ChecksumError, CorruptFrameError, TruncatedFrameError,
                     UnsupportedVersionError)
from .frame import CRC_BYTES, FLAG_CHECKSUM, FORMAT_VERSION, MAGIC, FrameReader, FrameWriter
from .indices import INDEX_CODERS, decode_indices, encode_indices, encode_indices_auto

__all__ = ["seeded_crc", "start_writer", "finish_writer", "open_reader", "SupportEntry",
           "write_supports", "read_supports", "OVERHEAD", "section_adder", "attribute_overhead",
           "close_read_sections"]

#: Key under which bits that belong to no tensor are attributed.
OVERHEAD = "_bundle"
Add = Callable[[str, str, int], None]


Sections = dict[str, dict[str, int]]


def section_adder(per: Sections) -> Add:
    """``add(name, section, bits)`` accumulating into ``per`` (zero bits add nothing)."""
    def add(name: str, section: str, bits: int) -> None:
        if bits:
            d = per.setdefault(name, {})
            d[section] = d.get(section, 0) + bits
    return add


def attribute_overhead(per: Sections, sections: dict[str, int]) -> None:
    """Encoder side: whatever the per-tensor rows do not hold (preamble, CRC, padding) is the
    message's own, under :data:`OVERHEAD`; the rows then add up to the frame exactly."""
    overhead = dict(sections)
    for name, secs in per.items():
        if name != OVERHEAD:
            for k, v in secs.items():
                overhead[k] = overhead.get(k, 0) - v
    if any(v < 0 for v in overhead.values()):
        raise RuntimeError(f"sparsecodec bug: per-tensor bits exceed the frame's {dict(sections)}")
    per[OVERHEAD] = {k: v for k, v in overhead.items() if v}


def close_read_sections(per: Sections, head_bits: int, has_crc: bool, nbytes: int) -> Sections:
    """Decoder side: add the preamble (and CRC) to :data:`OVERHEAD`; check the exact total."""
    own = per.setdefault(OVERHEAD, {})
    own["header"] = own.get("header", 0) + head_bits
    if has_crc:
        own["checksum"] = 32
    if sum(sum(s.values()) for s in per.values()) != 8 * nbytes:
        raise RuntimeError("sparsecodec bug: decoded sections do not add up to the message")
    return per


def seeded_crc(seed: int, data) -> int:
    """CRC-32 of ``seed`` (4 bytes, little-endian) followed by ``data``."""
    return zlib.crc32(data, zlib.crc32(int(seed).to_bytes(4, "little"))) & 0xFFFFFFFF


def start_writer(wire_id: int, seed: int, checksum: bool) -> FrameWriter:
    """A writer with the preamble written (and the seed, when there is no CRC)."""
    w = FrameWriter(None, body_only=True)
    w.raw(MAGIC + bytes([FORMAT_VERSION, FLAG_CHECKSUM if checksum else 0, wire_id]), "header")
    if not checksum:
        w.raw(int(seed).to_bytes(4, "little"), "header")
    return w


def finish_writer(w: FrameWriter, seed: int, checksum: bool) -> tuple[bytes, dict[str, int]]:
    if checksum:
        body, _ = w.body()
        w.raw(seeded_crc(seed, body).to_bytes(CRC_BYTES, "little"), "checksum")
    return w.body()


def open_reader(data, wire_id: int, seed: int, max_numel: int, what: str) -> tuple[FrameReader, int, bool]:
    """Validate preamble, seed/CRC; returns (reader over the body, header bits, has_crc)."""
    try:
        buf = memoryview(data).cast("B")
    except TypeError:
        raise CorruptFrameError(f"{what}: need a bytes-like object, got {type(data).__name__}") from None
    n = len(buf)
    if n < 5:
        if bytes(buf[:2]) != MAGIC[: min(2, n)]:
            raise BadMagicError("not a sparsecodec frame: bad magic bytes")
        raise TruncatedFrameError(f"truncated {what}: {n} bytes is shorter than the 5-byte preamble")
    if bytes(buf[:2]) != MAGIC:
        raise BadMagicError(f"not a sparsecodec frame: magic is {bytes(buf[:2])!r}, expected {MAGIC!r}")
    if buf[2] != FORMAT_VERSION:
        raise UnsupportedVersionError(f"frame format version {buf[2]} is not supported by this "
                                      f"sparsecodec (reads version {FORMAT_VERSION})")
    if buf[4] != wire_id:
        raise CorruptFrameError(f"not a {what} (wire id 0x{buf[4]:02x}, expected 0x{wire_id:02x})")
    flags = buf[3]
    if flags not in (0, FLAG_CHECKSUM):
        raise CorruptFrameError(f"invalid flags byte 0x{flags:02x} in a {what} (corrupted)")
    if flags:
        if n < 5 + CRC_BYTES:
            raise TruncatedFrameError(f"truncated {what}: no room for its CRC-32")
        if int.from_bytes(buf[n - CRC_BYTES:], "little") != seeded_crc(seed, buf[: n - CRC_BYTES]):
            raise ChecksumError(
                f"{what} failed its CRC-32 (seeded with what both ends know): corrupted in transit, "
                "or encoded against another schema / codec configuration than the decoder holds")
        r = FrameReader(buf, max_numel=max_numel, body_only=True, start=4, end=n - CRC_BYTES)
        return r, 40, True
    r = FrameReader(buf, max_numel=max_numel, body_only=True, start=4, end=n)
    stored = int.from_bytes(r.take(4, "seed"), "little")
    if stored != seed:
        raise CorruptFrameError(
            f"{what} was encoded against {stored:08x}, the decoder holds {seed:08x}: another schema "
            "or codec configuration (or corrupted)")
    return r, 72, False


class SupportEntry:
    """One support in a sparse block: who owns its bits, its size, and its coder."""

    __slots__ = ("owner", "numel", "k", "coder")

    def __init__(self, owner: str, numel: int, k: int, coder: str = "auto") -> None:
        self.owner, self.numel, self.k, self.coder = owner, int(numel), int(k), coder

    @property
    def ranked(self) -> bool:
        return self.coder == "auto" and self.k <= ENUM_MAX_K


def _share_ranked(ranked: Sequence[SupportEntry], add: Add) -> None:
    prod, prev = 1, 0
    for e in ranked:
        prod *= radix_product([(e.numel, e.k)])
        cum = (prod - 1).bit_length()
        add(e.owner, "index", cum - prev)
        prev = cum
    add(OVERHEAD, "index", 8 * ((prev + 7) // 8) - prev)


def write_supports(w: FrameWriter, entries: Sequence[SupportEntry], supports: Sequence[np.ndarray],
                   add: Add) -> None:
    """Write the supports (ascending int64 arrays, one per entry) as described above."""
    ranked = [j for j, e in enumerate(entries) if e.ranked]
    if ranked:
        w.raw(encode_ranks([(supports[j], entries[j].numel) for j in ranked]), "index")
        _share_ranked([entries[j] for j in ranked], add)
    for e, idx in zip(entries, supports):
        if e.ranked:
            continue
        if e.coder == "auto":   # one validation pass chooses and encodes
            coder, payload = encode_indices_auto(idx, e.numel)
        else:
            coder, payload = e.coder, encode_indices(idx, e.numel, e.coder)
        before = len(w)
        w.u8(INDEX_CODERS[coder], "index")
        w.varint(len(payload), "index")
        w.raw(payload, "index")
        add(e.owner, "index", 8 * (len(w) - before))


def read_supports(r: FrameReader, entries: Sequence[SupportEntry], add: Add) -> list[np.ndarray]:
    """Inverse of :func:`write_supports`; every support is validated (ascending, in range)."""
    out: list[np.ndarray | None] = [None] * len(entries)
    ranked = [j for j, e in enumerate(entries) if e.ranked]
    if ranked:
        shapes = [(entries[j].numel, entries[j].k) for j in ranked]
        nbytes = ((radix_product(shapes) - 1).bit_length() + 7) // 8
        sets = decode_ranks(r.take(nbytes, "index ranks"), shapes)
        for j, s in zip(ranked, sets):
            out[j] = s
        _share_ranked([entries[j] for j in ranked], add)
    for j, e in enumerate(entries):
        if e.ranked:
            continue
        before = r.pos
        coder_id = r.u8(f"{e.owner!r} index coder id")
        names = {v: k for k, v in INDEX_CODERS.items()}   # the live table: later registrations count
        if coder_id not in names:
            raise CorruptFrameError(f"{e.owner!r}: unknown index coder id {coder_id}")
        if e.coder != "auto" and names[coder_id] != e.coder:
            raise CorruptFrameError(f"{e.owner!r}: index coder {names[coder_id]!r}, the "
                                    f"configuration says {e.coder!r}")
        length = r.varint(f"{e.owner!r} index payload length", r.remaining)
        out[j] = decode_indices(r.take(length, f"{e.owner!r} index payload"), e.numel, e.k,
                                names[coder_id])
        add(e.owner, "index", 8 * (r.pos - before))
    return out  # type: ignore[return-value]
