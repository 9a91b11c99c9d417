"""Compact messages: what crosses the wire when both ends hold the :class:`MessageSpec`.

In federated learning both ends build the same model, so the tensors' names, dtypes and
shapes (the :class:`~sparsecodec.Schema`) and the codec configuration are known to both. A
compact message (wire id ``0x7D``) then carries only what the receiver cannot derive::

    bytes        field                                                        section
    5            preamble: b"SC", format version, flags, wire id 0x7D          header
    0 or 4       spec fingerprint, only when the CRC is off                    header
    per TopK entry with k="nnz", in schema order: varint k                     index
                 (a fixed k, a density, FLARE's rule: k is derived, not sent)
    ceil(B/8)    the small supports (k_t <= 48) of every TopK entry, ranked
                 exactly into one integer, B = ceil(log2 prod_t C(n_t, k_t))    index
    per large-k TopK entry: u8 index coder id, varint length, payload          index
    per value block: its values (the codec's value coder, one encode call)     values
                 values_scope="tensor" (default): one block per TopK entry;
                 values_scope="message": one per (coder, dtype, allow_nonfinite)
                 group, its entries' values concatenated in schema order, so
                 one q8 / q8b / sign scale per message (:mod:`._value_groups`)
    per other entry (Dense, MaskCodec, ...): varint body length, the codec's
                 body (u8 wire id, payload; no tensor header)                  header + theirs
    4            CRC-32 seeded with the spec fingerprint, when on              checksum

With ``scope="global"`` the top-k is taken over all TopK entries together and the support is
one set over their concatenation (``log2 C(sum n_t, K)`` bits, the bound of a global top-k).
The fingerprint (CRC-32 of the schema fingerprint, every tensor's codec config, the scope and,
only when it is ``"message"``, the values scope) is not sent when the CRC is on: it seeds the CRC, so a receiver holding another spec gets a
:class:`~sparsecodec.errors.ChecksumError` that says so. The fixed cost of a message is
72 bits (40 preamble + 32 CRC) plus under 8 bits of rank padding.

    >>> import numpy as np, sparsecodec as sc
    >>> rng = np.random.default_rng(0)
    >>> model = {"w": np.zeros((100, 50), np.float32), "b": np.zeros(50, np.float32)}
    >>> spec = sc.MessageSpec(sc.Schema.from_tensors(model), sc.TopK.flare(R=0.5))
    >>> update = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.items()}
    >>> frame = sc.encode_packed(update, spec)      # k = 26 and 1: log2 C(5000,26) C(50,1) = 236.6
    >>> frame.nbits, frame.sections
    (1176, {'header': 40, 'index': 240, 'values': 864, 'checksum': 32})
    >>> frame.nbits < sc.encode_bundle(update, spec.codec, schema=spec.schema).nbits  # 1312
    True
    >>> parts = sc.decode_packed(bytes(frame), spec)
    >>> sorted(parts), int(np.count_nonzero(parts["w"]))
    (['b', 'w'], 26)

A message-scoped value block shares one scale between the tensors (27 values, q8b):

    >>> one = sc.MessageSpec(spec.schema, sc.TopK.flare(R=0.5, values="q8b"), values_scope="message")
    >>> sc.encode_packed(update, one).sections["values"]        # 16 + 8 * 27
    232
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ._arrays import as_numpy
from ._compact import (OVERHEAD, SupportEntry, attribute_overhead, close_read_sections,
                       finish_writer, open_reader, read_supports, section_adder, start_writer,
                       write_supports)
from .abc import Codec, body_reconstruction
from .bounds import topk_index_bits
from .bundle import Schema, _codec_for, global_indices
from .errors import ConfigError, CorruptFrameError, LimitExceededError
from .frame import DEFAULT_MAX_NUMEL, Frame, FrameReader, FrameWriter
from .reconstruction import Reconstruction, SparseRecon, as_reconstruction
from .registry import PACKED_WIRE_ID   # the registry owns every wire id
from ._value_groups import share_bits, value_groups
from .values import decode_values, encode_values, value_payload_bytes

__all__ = ["MessageSpec", "PACKED_WIRE_ID", "encode_packed", "decode_packed"]

Sections = dict[str, dict[str, int]]
_SPEC_FORMAT = "sparsecodec.MessageSpec/1"


@dataclass(frozen=True)
class MessageSpec:
    """What both ends of a compact message know: the schema, the codec(s) and the scopes.

    ``codec`` is one codec for every tensor or a mapping name -> codec. ``values_scope``:
    ``"tensor"`` (default) codes each TopK tensor's values on their own (one scale per tensor
    for the quantized coders); ``"message"`` codes the values of all TopK tensors sharing a
    value coder, dtype and ``allow_nonfinite`` as one block (one scale per message).

        >>> import numpy as np, sparsecodec as sc
        >>> schema = sc.Schema.from_tensors({"a": np.zeros(4, np.float32)})
        >>> a, b = sc.MessageSpec(schema, sc.TopK(k=1)), sc.MessageSpec(schema, sc.TopK(k=1), values_scope="message")
        >>> a.fingerprint == b.fingerprint
        False
    """

    schema: Schema
    codec: Any
    scope: str = "tensor"
    values_scope: str = "tensor"
    _fingerprint: int = field(init=False, repr=False, compare=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.schema, Schema):
            raise ConfigError(f"schema must be a sparsecodec.Schema, got {type(self.schema).__name__}")
        if self.scope not in ("tensor", "global"):
            raise ConfigError(f"scope must be 'tensor' or 'global', got {self.scope!r}")
        if self.values_scope not in ("tensor", "message"):
            raise ConfigError(f"values_scope must be 'tensor' or 'message', got {self.values_scope!r}")
        configs = {name: _codec_for(self.codec, name).get_config() for name, _, _ in self.schema.entries}
        known: dict[str, Any] = {"schema": self.schema.fingerprint, "codecs": configs, "scope": self.scope}
        if self.values_scope != "tensor":    # absent by default: older specs' fingerprints unchanged
            known["values_scope"] = self.values_scope
        blob = json.dumps(known, sort_keys=True).encode()
        object.__setattr__(self, "_fingerprint", zlib.crc32(blob) & 0xFFFFFFFF)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any], codec: Any, scope: str = "tensor",
                     values_scope: str = "tensor") -> "MessageSpec":
        """The spec of messages carrying tensors shaped like ``tensors`` (e.g. the model)."""
        return cls(Schema.from_tensors(tensors), codec, scope, values_scope)

    @property
    def fingerprint(self) -> int:
        """CRC-32 of the schema fingerprint, every tensor's codec config and the scope(s)."""
        return self._fingerprint

    def codec_for(self, name: str) -> Codec:
        return _codec_for(self.codec, name)

    def to_json(self) -> str:
        """The spec as JSON, for :meth:`from_json` and ``python -m sparsecodec inspect MSG
        --spec SPEC.json`` (a compact message is unreadable without it).

            >>> import numpy as np, sparsecodec as sc
            >>> spec = sc.MessageSpec.from_tensors({"w": np.zeros(8, np.float32)}, sc.TopK(k=2))
            >>> sc.MessageSpec.from_json(spec.to_json()).fingerprint == spec.fingerprint
            True
        """
        one = isinstance(self.codec, Codec)
        return json.dumps({
            "format": _SPEC_FORMAT, "schema": [[n, d, list(s)] for n, d, s in self.schema.entries],
            "codec" if one else "codecs": self.codec.get_config() if one
            else {name: c.get_config() for name, c in self.codec.items()},
            "scope": self.scope, "values_scope": self.values_scope}, indent=1)

    @classmethod
    def from_json(cls, text: str | bytes) -> "MessageSpec":
        """The spec :meth:`to_json` wrote (ConfigError, saying what is wrong, otherwise)."""
        from .registry import get_codec

        try:
            raw = json.loads(text)
            if not isinstance(raw, dict) or raw.get("format") != _SPEC_FORMAT:
                raise ValueError(f"not a {_SPEC_FORMAT} document (its 'format' key)")
            schema = Schema(tuple((str(n), str(d), tuple(int(x) for x in s)) for n, d, s in raw["schema"]))
            if "codec" in raw:
                codec: Any = get_codec(raw["codec"])
            else:
                codec = {str(name): get_codec(cfg) for name, cfg in dict(raw["codecs"]).items()}
            return cls(schema, codec, str(raw.get("scope", "tensor")), str(raw.get("values_scope", "tensor")))
        except ConfigError as exc:
            raise ConfigError(f"MessageSpec JSON: {exc}") from None
        except (ValueError, TypeError, KeyError) as exc:
            raise ConfigError(f"cannot read a MessageSpec from this JSON: {exc!r}; write it with "
                              "MessageSpec.to_json()") from None


def _is_topk(codec: Codec) -> bool:
    from .topk import TopK

    return isinstance(codec, TopK)


class _Plan:
    """The layout both ends derive from the spec."""

    def __init__(self, spec: MessageSpec) -> None:
        self.spec = spec
        self.names = [e[0] for e in spec.schema.entries]
        self.entries = spec.schema.entries
        # TopK's fields (k, values, index...) are read off the entries that are TopK
        self.codecs: list[Any] = [spec.codec_for(name) for name in self.names]
        self.numels = [int(np.prod(shape, dtype=object)) if shape else 1 for _, _, shape in self.entries]
        self.topk = [i for i, c in enumerate(self.codecs) if _is_topk(c)]
        self.other = [i for i in range(len(self.names)) if i not in set(self.topk)]
        if spec.scope == "global":
            cs = {self.codecs[i] for i in self.topk}
            if len(cs) != 1 or next(iter(cs)).k == "nnz":
                raise ConfigError("scope='global' needs one TopK codec with k=<int> or density=<fraction> "
                                  "shared by the TopK entries")

    def fixed_k(self, i: int) -> int | None:
        """Entry ``i``'s k when both ends derive it (None: sent as a varint). Under
        ``scope="global"`` a fixed k is the whole message's (each tensor's share is read off
        the one support), so it may exceed a single tensor's size."""
        c = self.codecs[i]
        if c.k == "nnz":
            return None
        if self.spec.scope == "global":
            return c.k_for(sum(self.numels[j] for j in self.topk))
        return c.k_for(self.numels[i])

    def support_entries(self, ks: Mapping[int, int]) -> list[SupportEntry]:
        if self.spec.scope == "global":
            c = self.codecs[self.topk[0]]
            n = sum(self.numels[i] for i in self.topk)
            return [SupportEntry(OVERHEAD, n, c.k_for(n), c.index)]
        return [SupportEntry(self.names[i], self.numels[i], ks[i], self.codecs[i].index) for i in self.topk]

    def value_groups(self) -> list[list[int]]:
        return value_groups(self.topk, self.codecs, [e[1] for e in self.entries], self.spec.values_scope)

    def offsets(self) -> np.ndarray:
        return np.cumsum([0] + [self.numels[i] for i in self.topk])


def encode_packed(tensors: Mapping[str, Any], spec: MessageSpec, *, checksum: bool = True,
                  side: Mapping[str, Mapping[str, Any]] | None = None,
                  on_encoded: Callable[[str, Reconstruction], None] | None = None) -> Frame:
    """Encode ``tensors`` (exactly the schema's names) as a compact message; see the module doc.

    ``on_encoded(name, recon)`` receives each tensor's :class:`~sparsecodec.Reconstruction`,
    in schema order, once the whole message is written (error feedback): a
    :class:`~sparsecodec.SparseRecon` for TopK entries, the body writer's for the others (a
    body whose writer returns ``None`` is decoded once for it, only when ``on_encoded`` is
    given). ``frame.meta["tensors"]`` holds each tensor's bits per section, plus
    ``"_bundle"`` for the message's own.
    """
    plan = _Plan(spec)
    names = plan.names
    if set(tensors) != set(names):
        missing, extra = sorted(set(names) - set(tensors)), sorted(set(tensors) - set(names))
        raise ConfigError(f"a compact message carries exactly its schema's tensors: missing "
                          f"{missing[:5]}, not in the schema {extra[:5]}")
    arrays = {}
    for name, dtype, shape in plan.entries:
        x = as_numpy(tensors[name], what=f"tensor {name!r}")
        if x.dtype != np.dtype(dtype) or tuple(x.shape) != tuple(shape):
            raise ConfigError(f"tensor {name!r} is {x.dtype}{tuple(x.shape)} but the schema says "
                              f"{np.dtype(dtype).name}{tuple(shape)}")
        arrays[name] = x
    sel: dict[int, np.ndarray] = {}
    try:
        if spec.scope == "global":
            chosen = global_indices({names[i]: arrays[names[i]] for i in plan.topk}, plan.codecs[plan.topk[0]])
            sel = {i: chosen[names[i]] for i in plan.topk}
        else:
            for i in plan.topk:
                c = plan.codecs[i]
                sel[i] = c.select(c.prepare_input(arrays[names[i]]).reshape(-1))
    except ConfigError as exc:
        raise ConfigError(f"tensor {names[i] if spec.scope != 'global' else 'update'!r}: {exc}") from None
    ks = {i: int(sel[i].size) for i in plan.topk}
    per: Sections = {}
    add = section_adder(per)
    w = start_writer(PACKED_WIRE_ID, spec.fingerprint, checksum)
    for i in plan.topk:
        if plan.fixed_k(i) is None:
            before = len(w)
            w.varint(ks[i], "index")
            add(names[i], "index", 8 * (len(w) - before))
    if spec.scope == "global":
        off = plan.offsets()
        supports = [np.concatenate([sel[i] + off[j] for j, i in enumerate(plan.topk)])]
    else:
        supports = [sel[i] for i in plan.topk]
    write_supports(w, plan.support_entries(ks), supports, add)
    results: dict[str, Reconstruction] = {}
    for group in plan.value_groups():
        c = plan.codecs[group[0]]
        v = [arrays[names[i]].reshape(-1)[sel[i]] for i in group]
        try:
            # a new array (a gather or a concatenation): the coder may keep it as v_hat
            vbytes, vhat = encode_values(v[0] if len(v) == 1 else np.concatenate(v), c.values,
                                         allow_nonfinite=c.allow_nonfinite, owned=True)
        except ConfigError as exc:
            who = names[group[0]] if len(group) == 1 else [names[i] for i in group]
            raise ConfigError(f"tensor {who!r}: {exc}") from None
        w.raw_view(vbytes, "values")   # nothing writes to vhat before the message is finished
        gks = [ks[i] for i in group]
        cuts = np.cumsum([0] + gks)
        for j, (i, bits) in enumerate(zip(group, share_bits(8 * len(vbytes), gks))):
            add(names[i], "values", bits)
            x = arrays[names[i]]
            # each tensor's slice of the block's v_hat: error feedback stays per tensor and exact
            results[names[i]] = SparseRecon(sel[i], vhat[cuts[j]:cuts[j + 1]], x.shape, x.dtype)
    for i in plan.other:
        name, dtype, shape = plan.entries[i]
        c = plan.codecs[i]
        body_w = FrameWriter(c.wire_id, body_only=True, known=(dtype, shape))
        given = (side or {}).get(name, {})
        try:
            result = as_reconstruction(c._write_body(arrays[name], body_w, **dict(given)),
                                       type(c).__name__)
        except ConfigError as exc:
            raise ConfigError(f"tensor {name!r}: {exc}") from None
        body, _ = body_w.body()
        if on_encoded is not None:
            results[name] = body_reconstruction(c, arrays[name], result, body, (dtype, shape), given)
        before = len(w)
        w.varint(len(body), "header")
        w.raw(body[:1], "header")                 # the body's codec wire id
        add(name, "header", 8 * (len(w) - before))
        # the body's own sections are not visible to a decoder that reads bytes only: the
        # payload is one section per codec kind, so sender and receiver count alike
        w.raw(body[1:], _body_section(c))
        add(name, _body_section(c), 8 * (len(body) - 1))
    data, sections = finish_writer(w, spec.fingerprint, checksum)
    attribute_overhead(per, sections)
    frame = Frame(data, sections, sum(plan.numels), "packed",
                  {"tensors": per, "bound_bits": message_bound_bits(plan, ks, per)})
    if on_encoded is not None:
        for name in names:
            on_encoded(name, results[name])
    return frame


def decode_packed(data, spec: MessageSpec, *, max_numel: int = DEFAULT_MAX_NUMEL,
                  side: Mapping[str, Mapping[str, Any]] | None = None,
                  sections: dict | None = None, info: dict | None = None) -> dict[str, np.ndarray]:
    """Decode a compact message against ``spec``; validates everything first.

    ``sections``, if a dict, receives the bits per tensor per section read off the bytes
    (name -> {section: bits}, plus ``"_bundle"`` for the message's own), summing to
    ``8 * len(data)``. ``info``, if a dict, receives ``k`` (per TopK tensor) and
    ``bound_bits`` (:func:`message_bound_bits`).
    """
    plan = _Plan(spec)
    total_numel = sum(plan.numels)
    if total_numel > max_numel:
        raise LimitExceededError(f"the spec's tensors hold {total_numel} elements > max_numel={max_numel}")
    r, head_bits, has_crc = open_reader(data, PACKED_WIRE_ID, spec.fingerprint, max_numel, "compact message")
    names = plan.names
    per: Sections = {}
    add = section_adder(per)
    ks: dict[int, int] = {}
    for i in plan.topk:
        k = plan.fixed_k(i)
        if k is None:
            before = r.pos
            k = r.varint(f"entry {names[i]!r} k", plan.numels[i])
            add(names[i], "index", 8 * (r.pos - before))
        ks[i] = k
    entries = plan.support_entries(ks)
    supports = read_supports(r, entries, add)
    if spec.scope == "global":
        off = plan.offsets()
        flat = supports[0]
        cuts = np.searchsorted(flat, off)
        sel = {i: flat[cuts[j]:cuts[j + 1]] - off[j] for j, i in enumerate(plan.topk)}
        ks = {i: int(s.size) for i, s in sel.items()}
    else:
        sel = dict(zip(plan.topk, supports))
    out: dict[str, np.ndarray] = {}
    for group in plan.value_groups():
        c = plan.codecs[group[0]]
        gks = [ks[i] for i in group]
        vdtype = np.dtype(plan.entries[group[0]][1])
        nbytes = value_payload_bytes(c.values, sum(gks))
        what = f"entry {names[group[0]]!r} values" if len(group) == 1 else f"value block of {len(group)} entries"
        vals = decode_values(r.take(nbytes, what), sum(gks), c.values, vdtype,
                             allow_nonfinite=c.allow_nonfinite)
        cuts = np.cumsum([0] + gks)
        for j, (i, bits) in enumerate(zip(group, share_bits(8 * nbytes, gks))):
            name, _, shape = plan.entries[i]
            add(name, "values", bits)
            x = np.zeros(shape, vdtype)
            x.reshape(-1)[sel[i]] = vals[cuts[j]:cuts[j + 1]]
            out[name] = x
    for i in plan.other:
        name, dtype, shape = plan.entries[i]
        before = r.pos
        length = r.varint(f"entry {name!r} body length", r.remaining)
        add(name, "header", 8 * (r.pos - before))
        start = r.pos
        r.take(length, f"entry {name!r} body")
        sub = FrameReader(r.buf, max_numel=max_numel, body_only=True, start=start, end=start + length,
                          known=(dtype, shape))
        c = plan.codecs[i]
        if sub.wire_id != c.wire_id:
            raise CorruptFrameError(f"entry {name!r} holds codec wire id {sub.wire_id}; the spec "
                                    f"says {type(c).__name__} (wire id {c.wire_id})")
        try:
            out[name] = type(c)._read_body(sub, **dict((side or {}).get(name, {})))
        except TypeError as exc:      # side information the codec does not take
            raise ConfigError(f"entry {name!r}: {exc}") from None
        sub.expect_end()
        add(name, "header", 8)                             # the body's wire id byte
        add(name, _body_section(c), 8 * (length - 1))
    r.expect_end()
    if info is not None:
        info["k"] = {names[i]: ks[i] for i in plan.topk}
        info["bound_bits"] = message_bound_bits(plan, ks, per)
    if sections is not None:
        sections.clear()
        sections.update(close_read_sections(per, head_bits, has_crc, len(r.buf)))
    return {name: out[name] for name in names}


def message_bound_bits(plan: "_Plan", ks: Mapping[int, int], per: Sections) -> float:
    """What a compact message's information requires, with zero fixed overhead: each support
    at ``log2 C(n, k)`` (one ``log2 C(sum n, K)`` for a global top-k; the bound for iid
    supports, which structured ones can beat), the values as coded, other entries' payloads
    as coded (their codec's own business)."""
    total = 0.0
    if plan.spec.scope == "global":
        total += topk_index_bits(sum(plan.numels[i] for i in plan.topk), sum(ks.values()))
    else:
        total += sum(topk_index_bits(plan.numels[i], ks[i]) for i in plan.topk)
    for i in plan.topk:
        total += per.get(plan.names[i], {}).get("values", 0)
    for i in plan.other:
        total += per.get(plan.names[i], {}).get(_body_section(plan.codecs[i]), 0)
    return total


def _body_section(codec: Codec) -> str:
    """A non-TopK entry's payload section (one per codec kind; exact total)."""
    from .mask import MaskCodec

    return "mask" if isinstance(codec, MaskCodec) else "values"
