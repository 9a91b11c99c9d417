"""What a frame or bundle holds, read from its bytes alone, with the bound beside every figure.

:func:`inspect_frame` (one codec frame) and :func:`inspect_bundle` (a bundle, self-describing
``0x7F`` or against a :class:`~sparsecodec.Schema`, ``0x7E``) walk the bytes field by field
and report, per tensor: name, codec, dtype, shape, numel, k, index and value coders, bits per
section, bits per parameter and the information bound. Nothing is taken from the sender's
claims (a ledger's JSON, ``frame.meta``): the sections are measured on the bytes, and they
always add up to ``8 * len(data)``. Every body is also decoded, so a report describes a valid
message; hostile bytes raise a :class:`~sparsecodec.errors.FrameError`, as the decoders do
(``verify=False`` reads the structure only, for a receiver that decodes the message anyway).
``python -m sparsecodec inspect FILE`` prints the same as a table.

Bounds (never used *as* bit counts, see :mod:`sparsecodec.bounds`):

* TopK: ``log2 C(n, k)`` for the index section plus the value bits as stored. It is the
  bound for an *iid* (uniformly random) support; clustered or strided supports can beat it
  (``index="zstd"`` does), and the report says so when they do;
* MaskCodec: adaptive ``log2 C(n, ones)`` (the mask given its count of ones); fixed p the
  cross-entropy of the mask under the frame's quantized p; per-entry p needs that p (side
  information, never in the bytes: pass it to decode and bound the mask, else the bound is
  missing and the payload unverified);
* Dense: none (lossless, no model); a zstd body notes its raw size.

    >>> import numpy as np, sparsecodec as sc
    >>> from sparsecodec.inspect import inspect_bundle
    >>> rng = np.random.default_rng(0)
    >>> update = {"w": rng.standard_normal((100, 50)).astype(np.float32),
    ...           "mask": rng.random(1000) < 0.1}
    >>> data = bytes(sc.encode_bundle(update, {"w": sc.TopK(k=50), "mask": sc.MaskCodec()}))
    >>> rep = inspect_bundle(data)
    >>> rep.nbits == 8 * len(data) == sum(rep.sections.values())
    True
    >>> w = rep.tensor("w")
    >>> (w.codec, w.shape, w.k, w.index_coder, w.value_coder, w.sections["values"])
    ('topk', (100, 50), 50, 'gaps', 'fp32', 1600)
    >>> round(w.bound_bits - 1600, 1) == round(sc.bounds.topk_index_bits(5000, 50), 1)
    True

To inspect a new message kind (another wire id), add a function to :data:`MESSAGE_INSPECTORS`;
a new codec's body layout goes into :data:`BODY_INSPECTORS` (unlisted registered codecs are
still decoded and reported, their payload as one ``body`` section).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping

import numpy as np

from .bounds import mask_bits, topk_index_bits
from .errors import ConfigError, CorruptFrameError, LimitExceededError
from .frame import (BUNDLE_WIRE_ID, CRC_BYTES, DEFAULT_MAX_NUMEL, PREAMBLE_BYTES,
                    SCHEMA_BUNDLE_WIRE_ID, FrameReader)
from .registry import codec_for_wire_id

__all__ = ["TensorReport", "MessageReport", "inspect_frame", "inspect_bundle", "inspect_message",
           "MESSAGE_INSPECTORS", "BODY_INSPECTORS", "BUNDLE_OVERHEAD"]

#: Name under which a bundle's own bytes (preamble, count, names, lengths, CRC) are reported,
#: the same as :data:`fl.channel.BUNDLE_OVERHEAD`, so ``report.tensor_sections()`` is a ledger row.
BUNDLE_OVERHEAD = "_bundle"
_SECTION_ORDER = ("header", "model", "index", "values", "mask", "body", "checksum")


@dataclass(frozen=True)
class TensorReport:
    """One tensor of a message, as its bytes say. ``sections`` sums to :attr:`bits`."""

    name: str | None
    codec: str
    wire_id: int
    dtype: str | None
    shape: tuple[int, ...] | None
    numel: int | None
    sections: Mapping[str, int]
    k: int | None = None                 # TopK: entries sent; MaskCodec: ones (when known)
    index_coder: str | None = None
    value_coder: str | None = None
    model: str | None = None             # MaskCodec probability model
    bound_bits: float | None = None      # bound of the payload sections (all but header/checksum)
    bound: str | None = None             # what the bound is
    verified: bool = True                # the body was decoded (False: needs side information)
    notes: tuple[str, ...] = ()

    @property
    def bits(self) -> int:
        return sum(self.sections.values())

    @property
    def payload_bits(self) -> int:
        """Bits of the sections the bound is for (everything but header and checksum)."""
        return sum(v for s, v in self.sections.items() if s not in ("header", "checksum"))

    @property
    def bpp(self) -> float:
        """Bits per parameter, this tensor's header included."""
        return self.bits / self.numel if self.numel else math.nan

    def to_dict(self) -> dict[str, Any]:
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["shape"] = None if self.shape is None else list(self.shape)
        d["sections"], d["notes"] = dict(self.sections), list(self.notes)
        d.update(bits=self.bits, payload_bits=self.payload_bits, bpp=_finite(self.bpp))
        return d


@dataclass(frozen=True)
class MessageReport:
    """A whole message: its kind, its own bytes (``overhead``) and its tensors.

    ``sections`` (whole message) and :meth:`tensor_sections` both sum to ``8 * nbytes``.
    """

    kind: str                            # "frame", "bundle" or "schema bundle"
    wire_id: int
    nbytes: int
    has_checksum: bool
    overhead: Mapping[str, int]
    tensors: tuple[TensorReport, ...]
    notes: tuple[str, ...] = field(default=())

    @property
    def nbits(self) -> int:
        return 8 * self.nbytes

    @property
    def numel(self) -> int:
        return sum(t.numel or 0 for t in self.tensors)

    @property
    def bpp(self) -> float:
        return self.nbits / self.numel if self.numel else math.nan

    @property
    def sections(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for part in [self.overhead] + [t.sections for t in self.tensors]:
            for k, v in part.items():
                out[k] = out.get(k, 0) + v
        return _ordered(out)

    @property
    def bound_bits(self) -> float | None:
        """Sum of the tensors' bounds; None if any tensor has none."""
        b = [t.bound_bits for t in self.tensors]
        return None if any(x is None for x in b) else float(sum(b))  # type: ignore[arg-type]

    def tensor(self, name: str) -> TensorReport:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)

    def tensor_sections(self) -> dict[str, dict[str, int]]:
        """``{name: {section: bits}}`` plus :data:`BUNDLE_OVERHEAD`: a ledger row from the bytes."""
        out = {str(t.name): dict(t.sections) for t in self.tensors}
        if self.overhead:
            out[BUNDLE_OVERHEAD] = dict(self.overhead)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "wire_id": self.wire_id, "nbytes": self.nbytes,
                "nbits": self.nbits, "has_checksum": self.has_checksum, "numel": self.numel,
                "bpp": _finite(self.bpp), "sections": self.sections,
                "overhead": dict(self.overhead), "bound_bits": self.bound_bits,
                "tensors": [t.to_dict() for t in self.tensors], "notes": list(self.notes)}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """A plain-text table: one row per tensor, the message's own bytes, the total."""
        from .__main__ import format_table   # the CLI's formatting, shared

        return format_table(self)


def _finite(x: float) -> float | None:
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _ordered(sections: Mapping[str, int]) -> dict[str, int]:
    keys = [s for s in _SECTION_ORDER if s in sections] + sorted(set(sections) - set(_SECTION_ORDER))
    return {k: sections[k] for k in keys}


# -- per-codec body layouts ---------------------------------------------------------------------
class _Sections:
    """Bits per section, counted from reader positions (so they are the bytes, exactly)."""

    def __init__(self) -> None:
        self.bits: dict[str, int] = {}

    def add(self, section: str, nbytes: int) -> None:
        # a field of zero bytes still names its section, as FrameWriter counts it
        self.bits[section] = self.bits.get(section, 0) + 8 * nbytes


def _topk_body(r: FrameReader, sec: _Sections, decoded, side) -> dict[str, Any]:
    from .topk import index_coder_names, read_value_coder
    from .values import value_payload_bytes

    start = r.pos
    dtype, shape, numel = r.tensor_header()
    config = r.u8("config byte")
    names = index_coder_names()
    if config & 0x0F not in names:   # read unverified with verify=False: check it here
        raise CorruptFrameError(f"unknown index coder id {config & 0x0F}")
    index = names[config & 0x0F]
    values = read_value_coder(r, config)
    sec.add("header", r.pos - start)
    start = r.pos
    k = r.varint("k", numel)
    vbytes = value_payload_bytes(values, k)
    r.take(r.remaining - vbytes, "index payload")
    sec.add("index", r.pos - start)
    r.take(vbytes, "values")
    sec.add("values", vbytes)
    index_bound = topk_index_bits(numel, k)
    notes = []
    if sec.bits.get("index", 0) < index_bound:
        notes.append(f"index section ({sec.bits['index']} bits) is below log2 C(n,k) = "
                     f"{index_bound:.1f}: a structured support (clustered, strided), which "
                     "the iid bound does not cover")
    return dict(dtype=dtype, shape=shape, numel=numel, k=k, index_coder=index, value_coder=values,
                bound_bits=index_bound + 8 * vbytes,
                bound=f"log2 C(n,k) + {values} values (iid support)", notes=notes)


def _dense_body(r: FrameReader, sec: _Sections, decoded, side) -> dict[str, Any]:
    start = r.pos
    dtype, shape, numel = r.tensor_header()
    config = r.u8("config byte")
    sec.add("header", r.pos - start)
    n = r.remaining
    r.take(n, "values")
    sec.add("values", n)
    notes = []
    if config & 1:
        notes.append(f"zstd: {8 * n} bits of values, {8 * numel * dtype.itemsize} raw")
    return dict(dtype=dtype, shape=shape, numel=numel, value_coder="zstd" if config & 1 else "raw",
                bound=None, notes=notes)


def _mask_body(r: FrameReader, sec: _Sections, decoded, side) -> dict[str, Any]:
    from .models import MODEL_ADAPTIVE, MODEL_FIXED, MODEL_NAMES, PROB_ONE

    start = r.pos
    dtype, shape, numel = r.tensor_header()
    byte = r.u8("mask model byte")
    sec.add("header", r.pos - start)
    model = byte & 0x03
    if model not in MODEL_NAMES:
        raise CorruptFrameError(f"unknown mask model byte 0x{byte:02x}")
    start = r.pos
    ones: int | None = None
    q = 0
    if model == MODEL_ADAPTIVE:
        ones = r.varint("count of ones", numel)
    elif model == MODEL_FIXED:
        q = r.varint("quantized p", PROB_ONE - 1)
    if model in (MODEL_ADAPTIVE, MODEL_FIXED):
        sec.add("model", r.pos - start)
    n = r.remaining
    r.take(n, "mask payload")
    sec.add("mask", n)
    p = side.get("p")
    if decoded is not None and ones is None:
        ones = int(np.count_nonzero(decoded))
    notes: list[str] = []
    info: dict[str, Any] = dict(dtype=dtype, shape=shape, numel=numel, k=ones,
                                model=MODEL_NAMES[model], notes=notes)
    if model == MODEL_ADAPTIVE and ones is not None:
        info.update(bound_bits=topk_index_bits(numel, ones), bound="log2 C(n, ones) (exchangeable mask)")
    elif model == MODEL_FIXED and decoded is not None:
        info.update(bound_bits=mask_bits(decoded, q / PROB_ONE),
                    bound=f"cross-entropy under the frame's p = {q / PROB_ONE:.6g}")
    elif decoded is not None and p is not None:
        info.update(bound_bits=mask_bits(decoded, p), bound="cross-entropy under the given per-entry p")
    else:
        notes.append("per-entry p is side information, not in the bytes: pass p to "
                             "verify the payload and bound it")
    return info


#: wire id -> ``f(reader, sections, decoded array or None, side) -> fields``: how a codec body
#: splits into sections. A registered codec that is not listed is reported as one ``body``.
BODY_INSPECTORS: dict[int, Callable[..., dict[str, Any]]] = {1: _topk_body, 2: _dense_body, 3: _mask_body}


def _needs_side(wire_id: int, r: FrameReader) -> bool:
    """A per-entry mask cannot be decoded without its p: look at its model byte."""
    if wire_id != 3:
        return False
    probe = FrameReader(r.buf, max_numel=r.max_numel, body_only=True, start=r.pos - 1, end=r.end,
                        known=r.known)
    probe.tensor_header()
    return probe.u8("mask model byte") & 0x03 == 2


def _body_report(name: str | None, r: FrameReader, side: Mapping[str, Any],
                 lead: Mapping[str, int], verify: bool = True) -> TensorReport:
    """Decode one body (validating it), then split it into sections.

    ``r`` has consumed the wire id; ``lead`` is the bits already read for this tensor (the
    wire id in a bundle; the preamble in a frame)."""
    cls = codec_for_wire_id(r.wire_id)
    what = "the frame" if name is None else f"entry {name!r}"
    if side and r.wire_id != 3:
        raise CorruptFrameError(f"{what} is a {cls.codec_id!r} body, which takes no side "
                                f"information, but {', '.join(sorted(side))} was given")
    start = r.pos
    decoded = None
    verified = verify and not (_needs_side(r.wire_id, r) and side.get("p") is None)
    if verified:
        dec = FrameReader(r.buf, max_numel=r.max_numel, body_only=True, start=start - 1, end=r.end,
                          known=r.known)
        try:
            decoded = cls._read_body(dec, **dict(side))
        except ConfigError as exc:   # side information that does not fit these bytes
            raise CorruptFrameError(f"{what}: {exc}") from None
        dec.expect_end()
    sec = _Sections()
    for s, v in lead.items():
        sec.bits[s] = sec.bits.get(s, 0) + v
    layout = BODY_INSPECTORS.get(r.wire_id)
    if layout is None:
        n = r.remaining
        r.take(n, "body")
        sec.add("body", n)
        info: dict[str, Any] = {}
        if decoded is not None:
            info = dict(dtype=decoded.dtype, shape=decoded.shape, numel=int(decoded.size))
    else:
        info = layout(r, sec, decoded, side)
    r.expect_end()
    dtype, shape = info.pop("dtype", None), info.pop("shape", None)
    return TensorReport(name=name, codec=cls.codec_id, wire_id=r.wire_id,
                        dtype=None if dtype is None else np.dtype(dtype).name,
                        shape=None if shape is None else tuple(int(d) for d in shape),
                        numel=info.pop("numel", None), sections=_ordered(sec.bits),
                        verified=verified, notes=tuple(info.pop("notes", ())), **info)


# -- messages -------------------------------------------------------------------------------------
def _single(r: FrameReader, *, schema=None, side=None, verify: bool = True, **_: Any) -> MessageReport:
    if schema is not None:
        raise ConfigError("schema= is for bundles; this is a single codec frame")
    crc = CRC_BYTES if r.has_checksum else 0
    t = _body_report(None, r, dict(side or {}), {"header": 8 * PREAMBLE_BYTES}, verify)
    if crc:
        t = replace(t, sections=_ordered({**t.sections, "checksum": 8 * crc}))
    return MessageReport("frame", r.wire_id, len(r.buf), r.has_checksum, {}, (t,))


def _bundle(r: FrameReader, *, schema=None, side=None, verify: bool = True, **_: Any) -> MessageReport:
    from .bundle import MAX_ENTRIES, MAX_NAME_BYTES

    side = dict(side or {})
    over = _Sections()
    over.add("header", PREAMBLE_BYTES)
    kind = "bundle"
    if r.wire_id == SCHEMA_BUNDLE_WIRE_ID:
        kind = "schema bundle"
        if schema is None:
            raise ConfigError("this bundle was encoded against a Schema: pass the same schema= "
                              "(python -m sparsecodec inspect FILE --schema SCHEMA.json)")
        stored = int.from_bytes(r.take(4, "schema fingerprint"), "little")
        over.add("header", 4)
        if stored != schema.fingerprint:
            raise CorruptFrameError(f"schema fingerprint {stored:08x} does not match the schema "
                                    f"given ({schema.fingerprint:08x})")
        limit = len(schema)
    else:
        schema, limit = None, MAX_ENTRIES
    pos = entry_start = r.pos
    count = r.varint("entry count", min(limit, r.remaining))
    over.add("header", r.pos - pos)
    # without the CRC-32, newer bundles guard each entry's name/position/length with a CRC-8
    # (frame flag ``entry_checks``; the first one covers the entry count too)
    entry_checks = bool(getattr(r, "entry_checks", False))
    tensors: list[TensorReport] = []
    seen: set[str] = set()
    budget = r.max_numel
    for i in range(count):
        pos = r.pos
        known = None
        if schema is not None:
            j = r.varint(f"entry {i} schema position", len(schema) - 1)
            name, known = schema.entries[j][0], schema.entries[j][1:]
        else:
            raw = r.take(r.varint(f"entry {i} name length", MAX_NAME_BYTES), f"entry {i} name")
            try:
                name = bytes(raw).decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptFrameError(f"entry {i} name is not valid UTF-8") from None
        if name in seen:
            raise CorruptFrameError(f"tensor name {name!r} appears twice")
        seen.add(name)
        length = r.varint(f"entry {name!r} body length", r.remaining)
        if entry_checks:
            from .frame import crc8

            expected = crc8(bytes(r.buf[entry_start:r.pos]))
            if r.u8(f"entry {i} CRC-8") != expected:
                raise CorruptFrameError(f"bundle entry {i} ({name!r}) fails its CRC-8: its name, "
                                        "position or length was corrupted")
        over.add("header", r.pos - pos)
        start = r.pos
        r.take(length, f"entry {name!r} body")
        sub = FrameReader(r.buf, max_numel=budget, body_only=True, start=start, end=start + length,
                          known=known)
        try:
            t = _body_report(name, sub, dict(side.get(name) or {}), {"header": 8}, verify)
        except LimitExceededError as exc:
            raise LimitExceededError(f"bundle exceeds max_numel={r.max_numel} in entry {name!r}: {exc}") from None
        budget -= t.numel or 0
        tensors.append(t)
        entry_start = r.pos
    r.expect_end()
    if r.has_checksum:
        over.add("checksum", CRC_BYTES)
    return MessageReport(kind, r.wire_id, len(r.buf), r.has_checksum, _ordered(over.bits),
                         tuple(tensors), tuple(_global_note(tensors)))


def _global_note(tensors: list[TensorReport]) -> list[str]:
    top = [t for t in tensors if t.codec == "topk"]
    if len(top) < 2:
        return []
    n, k = sum(t.numel or 0 for t in top), sum(t.k or 0 for t in top)
    per = sum(topk_index_bits(t.numel or 0, t.k or 0) for t in top)
    return [f"per-tensor index bounds sum to {per:.1f} bits; if these {len(top)} TopK tensors were "
            f"selected together (scope='global'), their support's bound is log2 C({n},{k}) = "
            f"{topk_index_bits(n, k):.1f} bits"]


#: wire id -> ``f(reader, **options) -> MessageReport`` for messages that are not one codec
#: frame. Any other wire id is read as a single frame of the codec registered under it.
MESSAGE_INSPECTORS: dict[int, Callable[..., MessageReport]] = {
    BUNDLE_WIRE_ID: _bundle, SCHEMA_BUNDLE_WIRE_ID: _bundle}


def inspect_message(data, *, schema=None, spec=None, side=None, max_numel: int = DEFAULT_MAX_NUMEL,
                    verify: bool = True, **options: Any) -> MessageReport:
    """Report on any sparsecodec message (frame, bundle, compact message, model patch),
    dispatching on its wire id.

    ``verify=False`` skips decoding the bodies (for a receiver that decodes them anyway): the
    structure is still read and checked field by field, so the sections are exact and
    hostile bytes still raise a FrameError, but payload errors (a bad index, a NaN) are not
    caught, a fixed-p mask has no bound, and ``verified`` is False. A compact message needs
    ``spec`` (its :class:`~sparsecodec.MessageSpec`) and a model patch ``schema`` (or
    ``spec``): :mod:`sparsecodec.inspect_compact`, always decoded.
    """
    from .inspect_compact import COMPACT_INSPECTORS, peek_wire_id

    wire_id = peek_wire_id(data)
    compact = None if wire_id is None else COMPACT_INSPECTORS.get(wire_id)
    if compact is not None:      # before the CRC check: theirs is seeded with the spec
        return compact(data, spec=spec, schema=schema, max_numel=max_numel)
    r = FrameReader(data, max_numel=max_numel)
    return MESSAGE_INSPECTORS.get(r.wire_id, _single)(r, schema=schema, side=side, verify=verify,
                                                      **options)


def inspect_frame(data, *, p=None, max_numel: int = DEFAULT_MAX_NUMEL,
                  verify: bool = True) -> MessageReport:
    """Report on one codec frame (``p``: a per-entry mask's probabilities, to verify and bound it).

    >>> import numpy as np, sparsecodec as sc
    >>> x = np.zeros(100_000, np.float32); x[::100] = 1.0    # a strided support
    >>> frame = sc.TopK(k=1000).encode(x)
    >>> t = inspect_frame(frame).tensors[0]
    >>> t.sections == dict(frame.sections), t.index_coder, t.sections["index"]
    (True, 'zstd', 136)
    >>> round(sc.bounds.topk_index_bits(100_000, 1000)), t.notes[0].startswith("index section")
    (8073, True)
    """
    r = FrameReader(data, max_numel=max_numel)
    if r.wire_id in MESSAGE_INSPECTORS:
        raise CorruptFrameError(f"wire id 0x{r.wire_id:02X} is not a single codec frame: use "
                                "inspect_bundle(data) (or inspect_message)")
    return _single(r, side={} if p is None else {"p": p}, verify=verify)


def inspect_bundle(data, schema=None, *, side: Mapping[str, Mapping[str, Any]] | None = None,
                   max_numel: int = DEFAULT_MAX_NUMEL, verify: bool = True) -> MessageReport:
    """Report on a bundle: per tensor its sections, plus the bundle's own bytes.

    ``schema`` is needed for a bundle encoded against one (wire id 0x7E). ``side`` maps a
    tensor name to its side information (``{"mask": {"p": probs}}``), used only to verify
    and bound per-entry masks. ``report.tensor_sections()`` is the ledger row of the message.
    ``verify=False``: see :func:`inspect_message`.
    """
    r = FrameReader(data, max_numel=max_numel)
    if r.wire_id not in MESSAGE_INSPECTORS:
        raise CorruptFrameError(f"wire id 0x{r.wire_id:02X} is a single codec frame, not a bundle: "
                                "use inspect_frame(data)")
    return MESSAGE_INSPECTORS[r.wire_id](r, schema=schema, side=side, verify=verify)
