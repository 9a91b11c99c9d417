"""Wire format: preamble, sections, checksum and exact bit accounting.

Every message sparsecodec produces is a *frame*::

    offset  size  field
    0       2     magic  b"SC"
    2       1     format version (FORMAT_VERSION)
    3       1     flags  (bits 0-1 both set: a CRC-32 trailer is present; both clear: none;
                         one set is corrupt, so one flipped bit cannot disable the check;
                         bits 2-3 likewise: a bundle without CRC-32 carries per-entry CRC-8s;
                         other bits must be zero)
    4       1     codec wire id (see ``sparsecodec.registry``)
    5       ...   codec body (self-describing: dtype, shape, codec parameters, payload)
    end-4   4     CRC-32 (little-endian) of every preceding byte, if flag bit 0 is set

A *bundle* (``sparsecodec.bundle``) uses the same preamble with wire id ``BUNDLE_WIRE_ID``
and carries several codec bodies, each prefixed with its name and length, under one
checksum.

Integers inside bodies are unsigned LEB128 varints in canonical (shortest) form; a
non-canonical varint is a corrupt frame, so one value has exactly one encoding.

Accounting is exact: a :class:`Frame` knows how many bits each *section* occupies
(``header``, ``index``, ``values``, ``mask``, ``checksum``...) and the sections always add up
to ``8 * len(bytes(frame))``. Sections are byte-aligned; the padding bits of a bit-packed
section are counted in that section.

Example:
    >>> w = FrameWriter(wire_id=2, checksum=True)
    >>> w.varint(1000, "header")
    >>> frame = w.finish(numel=1000, codec_id="dense")
    >>> frame.nbits == 8 * len(bytes(frame))
    True
    >>> r = FrameReader(bytes(frame))
    >>> (r.wire_id, r.varint("numel", 10**6))
    (2, 1000)
    >>> r.expect_end()
"""

from __future__ import annotations

import functools
import zlib
from typing import Mapping

import numpy as np

from .errors import (
    BadMagicError,
    ChecksumError,
    ConfigError,
    CorruptFrameError,
    LimitExceededError,
    TruncatedFrameError,
    UnsupportedVersionError,
)
from ._bytes import crc8, encode_varint   # re-exported: the wire's byte-level primitives
from .registry import BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID   # the registry owns wire ids

__all__ = [
    "MAGIC",
    "FORMAT_VERSION",
    "DEFAULT_MAX_NUMEL",
    "BUNDLE_WIRE_ID",
    "Frame",
    "FrameInfo",
    "FrameWriter",
    "FrameReader",
    "frame_info",
    "DTYPE_CODES",
    "encode_varint",
]

MAGIC = b"SC"
FORMAT_VERSION = 1
PREAMBLE_BYTES = 5          # magic + version + flags + wire id
CRC_BYTES = 4
# The checksum flag is two bits that must agree (0b00 or 0b11): a single flipped bit can then
# never silently turn verification off, it makes the flags byte invalid instead.
FLAG_CHECKSUM = 0x03
# A bundle without the CRC-32 guards each entry's name/position and body length with a CRC-8
# instead, so that one flipped bit cannot rename a tensor. Two agreeing bits again; set only
# on bundles whose checksum flag is clear (bundles written before it have neither).
FLAG_ENTRY_CHECKS = 0x0C
_KNOWN_FLAGS = FLAG_CHECKSUM | FLAG_ENTRY_CHECKS
MAX_NDIM = 32

#: Decoders refuse frames declaring more elements than this unless the caller raises it.
#: Decoding work and memory grow with numel (an all-zero mask of n entries is legitimately a
#: few bytes), so this is what bounds a hostile frame: 2**28 elements (1 GiB of float32, ~1 s
#: of mask decoding). Pass ``max_numel=`` your model size to decode bigger messages.
DEFAULT_MAX_NUMEL = 1 << 28

# dtype codes on the wire. Stable: never renumber, only append.
DTYPE_CODES: dict[str, int] = {"float32": 1, "float64": 2, "float16": 3, "bool": 4, "uint8": 5}
_DTYPE_FROM_CODE = {v: np.dtype(k) for k, v in DTYPE_CODES.items()}
_INTP_MAX = int(np.iinfo(np.intp).max)




class Frame(bytes):
    """An encoded message: the bytes that travel plus their exact bit breakdown.

    A frame *is* its wire bytes: ``Frame`` subclasses :class:`bytes`, so it is bytes-like
    (buffer protocol, ``memoryview(frame)``, ``codec.decode(codec.encode(x))``, numcodecs,
    sockets) on every supported Python, and ``bytes(frame)`` is a plain ``bytes`` copy.
    ``frame.sections`` maps section name to bits and sums to
    ``frame.nbits == 8 * len(frame)``. Equality is equality of the bytes.

    >>> import numpy as np, sparsecodec as sc
    >>> codec = sc.Dense()
    >>> frame = codec.encode(np.arange(3, dtype=np.float32))
    >>> codec.decode(frame).tolist(), memoryview(frame).nbytes, type(bytes(frame)).__name__
    ([0.0, 1.0, 2.0], 23, 'bytes')
    """

    # bytes subclasses cannot have non-empty __slots__: the attributes live in __dict__ and
    # __setattr__ keeps them read-only, as the frozen dataclass this replaced did.
    sections: Mapping[str, int]
    numel: int
    codec_id: str
    meta: Mapping[str, object]

    def __new__(cls, data, sections: Mapping[str, int], numel: int, codec_id: str,
                meta: Mapping[str, object] | None = None) -> "Frame":
        self = super().__new__(cls, data)
        set_ = object.__setattr__
        set_(self, "sections", dict(sections))
        set_(self, "numel", int(numel))
        set_(self, "codec_id", str(codec_id))
        set_(self, "meta", dict(meta or {}))
        return self

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"Frame is immutable: cannot set {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"Frame is immutable: cannot delete {name!r}")

    def __reduce__(self):
        return (Frame, (bytes(self), dict(self.sections), self.numel, self.codec_id, dict(self.meta)))

    @property
    def data(self) -> bytes:
        """The wire bytes as a plain :class:`bytes` (a copy; the frame itself is bytes-like)."""
        return bytes(self)

    @property
    def nbits(self) -> int:
        """Exact size in bits: ``8 * len(bytes(self))``."""
        return 8 * len(self)

    @property
    def bpp(self) -> float:
        """Bits per parameter, everything included."""
        return self.nbits / self.numel if self.numel else float("nan")

    @property
    def payload_bpp(self) -> float:
        """Bits per parameter without the fixed overhead (header and checksum sections)."""
        fixed = self.sections.get("header", 0) + self.sections.get("checksum", 0)
        return (self.nbits - fixed) / self.numel if self.numel else float("nan")

    def __repr__(self) -> str:
        secs = ", ".join(f"{k}={v}" for k, v in self.sections.items())
        return f"Frame({self.codec_id}, numel={self.numel}, nbits={self.nbits}: {secs})"


@functools.lru_cache(maxsize=1024)
def _tensor_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The tensor header's bytes (see :meth:`FrameWriter.tensor_header`), built once per
    (dtype, shape): a model's tensors repeat every round, and building it (dtype name, dims,
    CRC-8 in Python) was a fifth of a small tensor's encode."""
    name = dtype.name
    if name not in DTYPE_CODES:
        raise ConfigError(f"dtype {name} cannot be framed; supported: {sorted(DTYPE_CODES)}")
    if len(shape) > MAX_NDIM:
        raise ConfigError(f"at most {MAX_NDIM} dimensions, got {len(shape)}")
    if any(not 0 <= d < 1 << 64 for d in shape):
        raise ConfigError(f"dimensions must be in [0, 2**64), got shape {shape}")
    biggest = max(shape, default=0)
    wcode = next(c for c in range(4) if biggest < 1 << (8 << c))
    nw = len(shape) | (wcode << 6)
    head = bytes([DTYPE_CODES[name], nw, nw]) + b"".join(d.to_bytes(1 << wcode, "little") for d in shape)
    return head + bytes([crc8(head)])


#: Payloads at least this large are kept by reference until a frame is joined (smaller ones
#: are cheaper to copy into the bytearray than to keep as separate pieces).
_BY_REFERENCE = 1 << 16


class FrameWriter:
    """Builds a frame (or a bare codec body) and counts bytes per section.

    Small fields are appended to a bytearray; a large immutable ``bytes`` payload (and a
    view given to :meth:`raw_view`) is kept by reference and copied once, when
    :meth:`finish` joins the pieces. A frame is a ``bytes`` subclass, so building it from a
    bytearray would copy every byte twice (once into a temporary ``bytes``); joining the
    pieces copies the large ones once less, which at density 0.1 of 1e7 floats is 4 MB of
    fresh memory and a copy saved per frame.
    """

    __slots__ = ("_parts", "_parts_len", "_buf", "_sections", "_checksum", "_body_only", "known")

    def __init__(self, wire_id: int | None = None, *, checksum: bool = False,
                 body_only: bool = False, known: tuple | None = None,
                 entry_checks: bool = False) -> None:
        # ``known=(dtype, shape)``: both ends already know the tensor's dtype and shape (a
        # bundle schema), so tensor_header() checks them and writes nothing.
        self.known = known
        self._parts: list = []     # bytes-like pieces before _buf, in order
        self._parts_len = 0
        self._buf = bytearray()
        self._sections: dict[str, int] = {}
        self._checksum = checksum
        self._body_only = body_only
        if not body_only:
            if wire_id is None:
                raise ConfigError("a frame needs a wire_id (only body_only writers may omit it)")
            if entry_checks and (checksum or wire_id not in (BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID)):
                raise ConfigError("entry_checks is for bundles without a CRC-32")
            flags = (FLAG_CHECKSUM if checksum else 0) | (FLAG_ENTRY_CHECKS if entry_checks else 0)
            self.raw(MAGIC + bytes([FORMAT_VERSION, flags, wire_id]), "header")
        elif wire_id is not None:
            self.u8(wire_id, "header")

    def __len__(self) -> int:
        return self._parts_len + len(self._buf)

    def _count(self, section: str, nbytes: int) -> None:
        self._sections[section] = self._sections.get(section, 0) + 8 * nbytes

    def u8(self, value: int, section: str) -> None:
        self._buf.append(value)
        self._count(section, 1)

    def varint(self, value: int, section: str) -> None:
        b = encode_varint(int(value))
        self._buf += b
        self._count(section, len(b))

    def raw(self, data, section: str) -> None:
        """Append the bytes of any buffer; a large ``bytes`` object is kept by reference (it is
        immutable), anything else is copied now, so the caller may reuse it."""
        if type(data) is bytes and len(data) >= _BY_REFERENCE:
            self._keep(data, len(data))          # immutable: safe to hold until finish()
            self._count(section, len(data))
            return
        mv = memoryview(data).cast("B")
        self._buf += mv
        self._count(section, mv.nbytes)

    def raw_view(self, data, section: str) -> None:
        """Append ``data`` without copying it now: the caller guarantees that its bytes do
        not change until :meth:`finish` or :meth:`body` (e.g. a value array it created)."""
        mv = memoryview(data).cast("B")
        if mv.nbytes >= _BY_REFERENCE:
            self._keep(mv, mv.nbytes)
        else:
            self._buf += mv
        self._count(section, mv.nbytes)

    def _keep(self, piece, nbytes: int) -> None:
        if self._buf:
            self._parts.append(bytes(self._buf))
            self._parts_len += len(self._buf)
            self._buf = bytearray()
        self._parts.append(piece)
        self._parts_len += nbytes

    def _joined(self, start: int = 0) -> bytes:
        """The bytes written from offset ``start``, as one ``bytes``."""
        if not self._parts:
            return bytes(self._buf[start:] if start else self._buf)
        data = b"".join([*self._parts, self._buf])
        return data[start:] if start else data

    def tensor_header(self, dtype: np.dtype, shape: tuple[int, ...]) -> None:
        """dtype and shape, protected so that no single flipped bit can change them.

        Layout (section ``header``): dtype code; ``ndim | width_code << 6`` written twice (a
        flip in one copy is detected, so the header's extent cannot silently change); each
        dim little-endian in ``1 << width_code`` bytes; CRC-8 of those bytes. Together these
        make every single-bit error in dtype/shape detectable even without the frame CRC.
        """
        dt = np.dtype(dtype)
        if self.known is not None:
            if (dt, tuple(shape)) != (np.dtype(self.known[0]), tuple(self.known[1])):
                raise ConfigError(f"tensor is {dt.name}{tuple(shape)} but the schema says "
                                  f"{np.dtype(self.known[0]).name}{tuple(self.known[1])}")
            return
        self.raw(_tensor_header(dt, tuple(int(d) for d in shape)), "header")

    def crc8_since(self, start: int, section: str) -> None:
        """Append the CRC-8 of the bytes written from offset ``start`` (a bundle entry check)."""
        self.u8(crc8(self._joined(start)), section)

    def embed(self, body: bytes, sections: Mapping[str, int]) -> None:
        """Append a codec body written by another (body-only) writer, with its sections."""
        if type(body) is bytes and len(body) >= _BY_REFERENCE:
            self._keep(body, len(body))
        else:
            self._buf += body
        for k, v in sections.items():
            self._sections[k] = self._sections.get(k, 0) + v

    def body(self) -> tuple[bytes, dict[str, int]]:
        """The bytes and sections written so far (for a bundle entry)."""
        return self._joined(), dict(self._sections)

    def finish(self, numel: int, codec_id: str, meta: Mapping[str, object] | None = None) -> Frame:
        if self._checksum:
            crc = 0
            for piece in (*self._parts, self._buf):
                crc = zlib.crc32(piece, crc)
            self.raw((crc & 0xFFFFFFFF).to_bytes(4, "little"), "checksum")
        # Frame(bytearray) would copy twice (bytes(bytearray), then into the subclass)
        return Frame(self._joined(), self._sections, int(numel), codec_id, meta)


class FrameReader:
    """Cursor over untrusted bytes. Every read is checked against the buffer first.

    Constructing it validates the preamble and, when the frame carries one, the CRC-32.
    Codec bodies are then read field by field; :meth:`expect_end` rejects trailing bytes.
    """

    __slots__ = ("buf", "pos", "end", "wire_id", "has_checksum", "entry_checks", "max_numel", "known")

    def __init__(self, data, *, max_numel: int = DEFAULT_MAX_NUMEL, body_only: bool = False,
                 start: int = 0, end: int | None = None, known: tuple | None = None) -> None:
        self.known = known   # (dtype, shape) from a bundle schema: the body has no tensor header
        try:
            buf = memoryview(data).cast("B")
        except TypeError as exc:
            raise ConfigError(f"decode() needs a bytes-like object, got {type(data).__name__}") from exc
        self.buf = buf
        self.pos = start
        self.end = len(buf) if end is None else end
        try:
            if isinstance(max_numel, (str, bytes)):
                raise TypeError
            self.max_numel = int(max_numel)
        except (TypeError, ValueError, OverflowError):
            raise ConfigError(f"max_numel must be a number of elements, got {max_numel!r}") from None
        if self.max_numel < 0:
            raise ConfigError(f"max_numel must be >= 0, got {max_numel!r}")
        self.has_checksum = False
        self.entry_checks = False
        if body_only:
            self.wire_id = self.u8("codec wire id")
            return
        if self.end - self.pos < PREAMBLE_BYTES:
            if bytes(buf[: min(2, self.end)]) != MAGIC[: min(2, self.end)]:
                raise BadMagicError("not a sparsecodec frame: bad magic bytes")
            raise TruncatedFrameError(
                f"truncated frame: {self.end} bytes is shorter than the {PREAMBLE_BYTES}-byte preamble")
        if bytes(buf[0:2]) != MAGIC:
            raise BadMagicError(f"not a sparsecodec frame: magic is {bytes(buf[0:2])!r}, expected {MAGIC!r}")
        version = buf[2]
        if version != FORMAT_VERSION:
            raise UnsupportedVersionError(
                f"frame format version {version} is not supported by this sparsecodec "
                f"(reads version {FORMAT_VERSION}); upgrade sparsecodec to read it")
        flags = buf[3]
        if flags & ~_KNOWN_FLAGS:
            raise CorruptFrameError(f"unknown flag bits 0x{flags & ~_KNOWN_FLAGS:02x} in frame header")
        if flags & FLAG_CHECKSUM not in (0, FLAG_CHECKSUM):
            raise CorruptFrameError("inconsistent checksum flag bits in frame header (corrupted)")
        if flags & FLAG_ENTRY_CHECKS not in (0, FLAG_ENTRY_CHECKS) or (
                flags & FLAG_ENTRY_CHECKS and flags & FLAG_CHECKSUM):
            raise CorruptFrameError("inconsistent entry-check flag bits in frame header (corrupted)")
        self.entry_checks = bool(flags & FLAG_ENTRY_CHECKS)
        if flags & FLAG_CHECKSUM:
            if self.end < PREAMBLE_BYTES + CRC_BYTES:
                raise TruncatedFrameError("truncated frame: no room for its CRC-32 trailer")
            self.end -= CRC_BYTES
            stored = int.from_bytes(buf[self.end:self.end + CRC_BYTES], "little")
            actual = zlib.crc32(buf[: self.end]) & 0xFFFFFFFF
            if stored != actual:
                raise ChecksumError(
                    f"CRC-32 mismatch (stored {stored:08x}, computed {actual:08x}): the frame was "
                    "corrupted or truncated in transit")
            self.has_checksum = True
        self.pos = 4
        self.wire_id = self.u8("codec wire id")
        if self.entry_checks and self.wire_id not in (BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID):
            raise CorruptFrameError("the entry-check flag is set on a frame that is not a bundle")

    # -- primitive reads -------------------------------------------------------------------
    @property
    def remaining(self) -> int:
        return self.end - self.pos

    def _need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.end:
            raise TruncatedFrameError(
                f"truncated frame: {what} needs {n} bytes at offset {self.pos}, only "
                f"{self.end - self.pos} left")

    def u8(self, what: str) -> int:
        self._need(1, what)
        v = self.buf[self.pos]
        self.pos += 1
        return v

    def varint(self, what: str, max_value: int) -> int:
        """A canonical LEB128 varint that must be ``<= max_value``."""
        value = 0
        shift = 0
        start = self.pos
        while True:
            if self.pos >= self.end:
                raise TruncatedFrameError(f"truncated frame: varint {what} at offset {start} is cut off")
            byte = self.buf[self.pos]
            self.pos += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                if byte == 0 and shift > 7:
                    raise CorruptFrameError(f"{what}: non-canonical varint at offset {start}")
                break
            if shift > 63:
                raise CorruptFrameError(f"{what}: varint at offset {start} is longer than 9 bytes")
            if value > max_value:  # early exit: no need to read further
                break
        if value > max_value:
            raise CorruptFrameError(f"{what} = {value} exceeds its limit {max_value}")
        return value

    def take(self, n: int, what: str) -> memoryview:
        self._need(n, what)
        mv = self.buf[self.pos:self.pos + n]
        self.pos += n
        return mv

    def take_rest(self) -> memoryview:
        return self.take(self.end - self.pos, "rest")

    def expect_end(self) -> None:
        if self.pos != self.end:
            raise CorruptFrameError(
                f"{self.end - self.pos} unexpected trailing bytes after the end of the frame body")

    # -- shared structures -----------------------------------------------------------------
    def tensor_header(self) -> tuple[np.dtype, tuple[int, ...], int]:
        """Read dtype, shape; verify the header CRC-8; check numel against ``max_numel``."""
        if self.known is not None:
            dtype, shape = np.dtype(self.known[0]), tuple(int(d) for d in self.known[1])
            numel = int(np.prod(shape, dtype=object)) if shape else 1
            if numel > self.max_numel:
                raise LimitExceededError(f"schema tensor {shape} exceeds max_numel={self.max_numel}")
            return dtype, shape, numel
        start = self.pos
        code = self.u8("dtype code")
        nw = self.u8("ndim")
        if self.u8("ndim copy") != nw:
            raise CorruptFrameError("tensor header corrupted: the two copies of ndim differ")
        ndim, width = nw & 0x3F, 1 << (nw >> 6)
        if ndim > MAX_NDIM:
            raise CorruptFrameError(f"ndim {ndim} exceeds the maximum {MAX_NDIM}")
        raw = self.take(ndim * width, "shape")
        head = bytes(self.buf[start:self.pos])
        if self.u8("header CRC-8") != crc8(head):
            raise CorruptFrameError("tensor header corrupted: its CRC-8 does not match (dtype/shape)")
        if code not in _DTYPE_FROM_CODE:
            raise CorruptFrameError(f"unknown dtype code {code}")
        shape = tuple(int.from_bytes(raw[i * width:(i + 1) * width], "little") for i in range(ndim))
        dtype = _DTYPE_FROM_CODE[code]
        numel, span = 1, dtype.itemsize
        for d in shape:
            numel *= d
            span *= max(d, 1)
        # numpy holds a shape only if the item size times the product of its non-zero
        # dimensions fits in an intp; a zero-size shape such as (0, 2**63) passes max_numel,
        # so it is refused here rather than as a ValueError from inside numpy.
        if span > _INTP_MAX:
            raise CorruptFrameError(f"frame declares shape {shape}, which no array can have "
                                    f"(the dimensions overflow a {_INTP_MAX.bit_length() + 1}-bit size)")
        if numel > self.max_numel:
            raise LimitExceededError(
                f"frame declares shape {shape} = {numel} elements, more than max_numel="
                f"{self.max_numel}; pass a larger max_numel to decode() if this is intended")
        return dtype, shape, numel


def __getattr__(name: str):
    """``frame_info`` / ``FrameInfo`` moved to :mod:`sparsecodec.info` (above this module and
    the registry); kept importable from here."""
    if name in ("frame_info", "FrameInfo"):
        from . import info

        return getattr(info, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
