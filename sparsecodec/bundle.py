"""Bundles: one message carrying many named tensors (a whole model update).

One preamble, one checksum (on by default), then per tensor its name and a codec body::

    preamble  magic, version, flags, wire id 0x7F          (header)
    varint    number of entries                            (header)
    per entry varint name length, UTF-8 name, varint body length   (header)
              [CRC-8, only without the CRC-32: see below]  (header)
              codec body: wire id, dtype/shape, payload     (the codec's own sections)
    CRC-32                                                 (checksum)

``checksum=False`` drops the CRC-32 (4 bytes) but sets the entry-check flag bits and puts a
CRC-8 after each entry's name and body length (covering, for the first entry, the entry
count too): one flipped bit can then change a value, but never rename a tensor, move it
to another schema position or change its dtype or shape (each body's tensor header has its
own CRC-8). Bundles written before the flag existed have neither and still decode.

With a :class:`Schema` (the names, dtypes and shapes both ends already know: the model's
architecture), the preamble is followed by the schema's CRC-32 fingerprint and each entry
carries its schema index instead of its name, and its body no tensor header. At FL-typical
sparsities this removes most of a message's fixed bits; a decoder holding another schema
gets a clear error instead of misplaced tensors.

``scope="global"`` (with a :class:`~sparsecodec.TopK` codec) picks the top-k over *all*
tensors together (SparsyFed, Sparse-ProxSkip) instead of per tensor (FLARE); each tensor's
body then holds its share of the k entries.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> rng = np.random.default_rng(0)
    >>> update = {"w": rng.standard_normal((20, 5)).astype(np.float32),
    ...           "b": rng.standard_normal(5).astype(np.float32)}
    >>> frame = sc.encode_bundle(update, sc.TopK(k=10), scope="global")
    >>> parts = sc.decode_bundle(bytes(frame))
    >>> sorted(parts), sum(int(np.count_nonzero(v)) for v in parts.values())
    (['b', 'w'], 10)
    >>> frame.nbits == sum(frame.sections.values())
    True
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from ._arrays import as_numpy
from .abc import Codec, body_reconstruction
from .errors import ConfigError, CorruptFrameError, LimitExceededError, SideInfoMismatchError
from .frame import (BUNDLE_WIRE_ID, DEFAULT_MAX_NUMEL, SCHEMA_BUNDLE_WIRE_ID, Frame, FrameReader,
                    FrameWriter, crc8)
from .generic import check_side, side_keys
from .reconstruction import Reconstruction, as_reconstruction
from .registry import codec_for_wire_id

__all__ = ["encode_bundle", "decode_bundle", "Bundle", "Schema"]


@dataclass(frozen=True)
class Schema:
    """The ordered (name, dtype, shape) of a message's tensors, known to both ends.

    >>> import numpy as np, sparsecodec as sc
    >>> model = {"w": np.zeros((4, 3), np.float32), "b": np.zeros(3, np.float32)}
    >>> schema = sc.Schema.from_tensors(model)
    >>> update = {"w": np.ones((4, 3), np.float32), "b": np.ones(3, np.float32)}
    >>> with_names = sc.encode_bundle(update, sc.TopK(k=2))
    >>> compact = sc.encode_bundle(update, sc.TopK(k=2), schema=schema)
    >>> compact.nbits < with_names.nbits
    True
    >>> sorted(sc.decode_bundle(bytes(compact), schema=schema))
    ['b', 'w']
    """

    entries: tuple[tuple[str, str, tuple[int, ...]], ...]
    _index: dict = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index = {}
        for i, (name, dtype, shape) in enumerate(self.entries):
            if name in index:
                raise ConfigError(f"schema names must be unique: {name!r} appears twice")
            np.dtype(dtype)
            index[name] = i
        object.__setattr__(self, "_index", index)

    @classmethod
    def from_tensors(cls, tensors: Mapping[str, Any]) -> "Schema":
        """The schema of a model's tensors (arrays, torch tensors, anything with dtype/shape)."""
        def dtype_name(x) -> str:
            dt = getattr(x, "dtype", None)
            if dt is None:
                return np.asarray(x).dtype.name
            if type(dt).__module__ == "torch":   # bfloat16 enters as float32 (see _arrays)
                return str(dt).replace("torch.", "").replace("bfloat16", "float32")
            return np.dtype(dt).name

        return cls(tuple((str(name), dtype_name(x), tuple(int(d) for d in x.shape))
                         for name, x in tensors.items()))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def fingerprint(self) -> int:
        """CRC-32 of the canonical (name, dtype, shape) list: what the frame carries."""
        blob = bytearray()
        for name, dtype, shape in self.entries:
            blob += name.encode("utf-8") + b"\0" + np.dtype(dtype).name.encode() + b"\0"
            blob += len(shape).to_bytes(1, "little") + b"".join(d.to_bytes(8, "little") for d in shape)
        return zlib.crc32(bytes(blob)) & 0xFFFFFFFF

    def position(self, name: str) -> int:
        try:
            return self._index[name]
        except KeyError:
            raise ConfigError(f"tensor {name!r} is not in the schema ({len(self)} names, e.g. "
                              f"{[e[0] for e in self.entries[:5]]})") from None

MAX_NAME_BYTES = 1024
MAX_ENTRIES = 1 << 20


def _codec_for(codec: Codec | Mapping[str, Codec], name: str) -> Codec:
    if isinstance(codec, Codec):
        return codec
    try:
        return codec[name]
    except KeyError:
        raise ConfigError(f"no codec given for tensor {name!r}") from None


def global_indices(tensors: Mapping[str, np.ndarray], codec) -> dict[str, np.ndarray]:
    """Per-tensor positions of the global top-k over all tensors (``scope="global"``)."""
    from .selection import topk_indices_global
    from .topk import TopK

    if not isinstance(codec, TopK) or codec.k == "nnz":
        raise ConfigError("scope='global' needs one TopK codec with k=<int> or density=<fraction>")
    flats = [codec.prepare_input(x).reshape(-1) for x in tensors.values()]
    total = sum(f.size for f in flats)
    k = codec.k_for(total)
    parts = topk_indices_global(flats, k, allow_nonfinite=codec.allow_nonfinite)
    return dict(zip(tensors.keys(), parts))


def encode_bundle(tensors: Mapping[str, Any], codec: Codec | Mapping[str, Codec], *,
                  scope: str = "tensor", checksum: bool = True,
                  side: Mapping[str, Mapping[str, Any]] | None = None,
                  schema: Schema | None = None,
                  on_encoded: Callable[[str, Reconstruction], None] | None = None) -> Frame:
    """Encode named tensors into one message.

    ``codec`` is one codec for all tensors or a mapping name -> codec. ``scope`` is
    ``"tensor"`` (each tensor coded on its own) or ``"global"`` (one top-k over all).
    ``side`` gives side information per tensor name (``{"mask": {"p": probs}}``).
    ``schema``: send schema positions instead of names and omit per-tensor headers (the
    decoder must pass the same schema).
    ``on_encoded(name, recon)`` receives each tensor's :class:`~sparsecodec.Reconstruction`
    (what the decoder will return for it), which error feedback uses to update residuals in
    place; a codec whose body writer returns ``None`` has its body (not the bundle) decoded
    once for it, and only when ``on_encoded`` is given. ``frame.meta["tensors"]`` holds each
    tensor's bits per section, for ledgers.
    """
    if scope not in ("tensor", "global"):
        raise ConfigError(f"scope must be 'tensor' or 'global', got {scope!r}")
    tensors = {n: as_numpy(x, what=f"tensor {n!r}") for n, x in tensors.items()}
    chosen = global_indices(tensors, codec) if scope == "global" else {}
    w = FrameWriter(SCHEMA_BUNDLE_WIRE_ID if schema is not None else BUNDLE_WIRE_ID,
                    checksum=checksum, entry_checks=not checksum)
    if schema is not None:
        w.raw(schema.fingerprint.to_bytes(4, "little"), "header")
    entry_start = len(w)            # the first entry check covers the entry count too
    w.varint(len(tensors), "header")
    per_tensor: dict[str, dict[str, int]] = {}
    numel = 0
    for name, x in tensors.items():
        if not isinstance(name, str):
            raise ConfigError(f"tensor names must be str, got {type(name).__name__}")
        name_b = name.encode("utf-8")
        if len(name_b) > MAX_NAME_BYTES:
            raise ConfigError(f"tensor name longer than {MAX_NAME_BYTES} bytes: {name[:40]}...")
        c = _codec_for(codec, name)
        known = None
        if schema is not None:
            pos = schema.position(name)
            known = schema.entries[pos][1:]
        body_w = FrameWriter(c.wire_id, body_only=True, known=known)
        given = (side or {}).get(name, {})
        extra = dict(given)
        if name in chosen:
            extra["indices"] = chosen[name]
        try:
            result = as_reconstruction(c._write_body(x, body_w, **extra), type(c).__name__)
        except ConfigError as exc:   # name the tensor: a bundle holds many
            raise ConfigError(f"tensor {name!r}: {exc}") from None
        body, sections = body_w.body()
        if schema is not None:
            w.varint(pos, "header")
        else:
            w.varint(len(name_b), "header")
            w.raw(name_b, "header")
        w.varint(len(body), "header")
        if not checksum:
            w.crc8_since(entry_start, "header")
        w.embed(body, sections)
        entry_start = len(w)
        per_tensor[name] = sections
        numel += int(np.size(x))
        if on_encoded is not None:
            on_encoded(name, body_reconstruction(c, x, result, body, known, given))
    return w.finish(numel=numel, codec_id="bundle", meta={"tensors": per_tensor})


def decode_bundle(data, *, max_numel: int = DEFAULT_MAX_NUMEL,
                  side: Mapping[str, Mapping[str, Any]] | None = None,
                  schema: Schema | None = None, as_torch: bool = False) -> dict[str, Any]:
    """Decode a bundle into ``{name: array}``; validates everything before returning.

    ``max_numel`` bounds the total number of elements over all tensors. ``side`` gives side
    information per tensor name (e.g. ``{"mask": {"p": probs}}`` for a MaskCodec entry).
    ``as_torch=True``: CPU torch tensors sharing memory with the decoded arrays.
    """
    r = FrameReader(data, max_numel=max_numel)
    if r.wire_id not in (BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID):
        raise CorruptFrameError("not a bundle frame; use sparsecodec.decode(data) for single tensors")
    out = _read_entries(r, max_numel, side or {}, schema)
    if as_torch:
        from ._arrays import to_torch

        return {n: to_torch(a) for n, a in out.items()}
    return out


def _read_entries(r: FrameReader, max_numel: int, side: Mapping[str, Mapping[str, Any]],
                  schema: Schema | None = None) -> dict:
    # the caller's arguments, checked before the (untrusted) entries are read
    if not isinstance(side, Mapping) or not all(v is None or isinstance(v, Mapping)
                                                for v in side.values()):
        raise ConfigError("side= is {tensor name: {keyword: value}}, e.g. {'mask': {'p': probs}}")
    if schema is not None and not isinstance(schema, Schema):
        raise ConfigError(f"schema= must be a sparsecodec.Schema, got {type(schema).__name__}")
    if r.wire_id == SCHEMA_BUNDLE_WIRE_ID:
        if schema is None:
            # a FrameError too: a flipped wire id (0x7F -> 0x7E) lands here (tools/fuzz_long.py)
            raise SideInfoMismatchError("this bundle was encoded against a Schema: pass the same "
                                        "schema=sc.Schema.from_tensors(model) to decode it (or the "
                                        "message is corrupt)")
        stored = int.from_bytes(r.take(4, "schema fingerprint"), "little")
        if stored != schema.fingerprint:
            raise CorruptFrameError(
                f"schema fingerprint {stored:08x} does not match the decoder's schema "
                f"({schema.fingerprint:08x}): encoded against another model layout, or corrupted")
        count_limit = len(schema)
    else:
        schema = None
        count_limit = MAX_ENTRIES
    entry_start = r.pos
    count = r.varint("entry count", min(count_limit, r.remaining))
    out: dict[str, np.ndarray] = {}
    budget = int(max_numel)
    for i in range(count):
        known = None
        if schema is not None:
            pos = r.varint(f"entry {i} schema position", len(schema) - 1)
            name, known = schema.entries[pos][0], schema.entries[pos][1:]
        else:
            name_len = r.varint(f"entry {i} name length", MAX_NAME_BYTES)
            try:
                name = bytes(r.take(name_len, f"entry {i} name")).decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptFrameError(f"entry {i} name is not valid UTF-8") from None
        if name in out:
            raise CorruptFrameError(f"tensor name {name!r} appears twice")
        body_len = r.varint(f"entry {name!r} body length", r.remaining)
        if r.entry_checks:
            expected = crc8(bytes(r.buf[entry_start:r.pos]))
            if r.u8(f"entry {i} CRC-8") != expected:
                raise CorruptFrameError(f"bundle entry {i} ({name!r}) fails its CRC-8: its name, "
                                        "position or length was corrupted")
        start = r.pos
        r.take(body_len, f"entry {name!r} body")
        sub = FrameReader(r.buf, max_numel=budget, body_only=True, start=start, end=start + body_len,
                          known=known)
        cls = codec_for_wire_id(sub.wire_id)
        extra = {k: v for k, v in dict(side.get(name) or {}).items() if v is not None}
        check_side(f"a bundle whose entry {name!r} is a {cls.codec_id!r} body", side_keys(cls), extra)
        try:
            arr = cls._read_body(sub, **extra)
        except LimitExceededError as exc:
            raise LimitExceededError(f"bundle exceeds max_numel={max_numel} in entry {name!r}: {exc}") from None
        sub.expect_end()
        budget -= arr.size
        out[name] = arr
        entry_start = r.pos
    r.expect_end()
    return out


class Bundle:
    """Namespace kept for discoverability: ``Bundle.encode`` / ``Bundle.decode``."""

    encode = staticmethod(encode_bundle)
    decode = staticmethod(decode_bundle)
