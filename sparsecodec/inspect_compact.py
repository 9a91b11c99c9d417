"""Reports on the messages only their two ends can read: compact messages and model patches.

A compact message (wire id ``0x7D``, :mod:`sparsecodec.packed`) and a model patch (``0x7C``,
:mod:`sparsecodec.patch`) carry no names, dtypes, shapes or codec configuration: both ends
hold them (the :class:`~sparsecodec.MessageSpec`, the :class:`~sparsecodec.Schema`), and the
CRC-32 is seeded with their fingerprint. :func:`~sparsecodec.inspect_message` sends such
bytes here before any CRC check, so that without the spec the answer is "pass the spec", not
a misleading "corrupted in transit". With it, the message is decoded (every field checked)
and reported like a bundle: bits per tensor per section from the bytes, the message's own
bytes as ``_bundle``, and the bound beside them.

    >>> import numpy as np, sparsecodec as sc
    >>> model = {"w": np.zeros((100, 50), np.float32), "b": np.zeros(50, np.float32)}
    >>> spec = sc.MessageSpec(sc.Schema.from_tensors(model), sc.TopK.flare(R=0.5))
    >>> rng = np.random.default_rng(0)
    >>> update = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.items()}
    >>> report = sc.inspect_message(bytes(sc.encode_packed(update, spec)), spec=spec)
    >>> report.kind, report.nbits, [(t.name, t.k, t.sections) for t in report.tensors]
    ('compact message', 1176, [('w', 26, {'index': 232, 'values': 832}), ('b', 1, {'index': 5, 'values': 32})])
    >>> report.overhead, round(report.bound_bits, 1)   # 3 bits: the joint rank's padding
    ({'index': 3, 'header': 40, 'checksum': 32}, 1100.6)
    >>> sc.inspect_message(bytes(sc.encode_packed(update, spec)))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: this is a compact message (wire id 0x7D): ... Pass spec=... (command line: --spec SPEC.json, ...)
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .bounds import topk_index_bits
from .errors import ConfigError
from .frame import FLAG_CHECKSUM, MAGIC
from .inspect import BUNDLE_OVERHEAD, MessageReport, TensorReport
from .registry import PACKED_WIRE_ID, PATCH_WIRE_ID

__all__ = ["peek_wire_id", "inspect_packed", "inspect_patch", "COMPACT_INSPECTORS"]


def peek_wire_id(data) -> int | None:
    """The wire id of a message that starts with a valid preamble, else None (the frame
    reader then says what is wrong with it)."""
    try:
        head = bytes(memoryview(data).cast("B")[:5])
    except TypeError:
        return None
    return head[4] if len(head) == 5 and head[:2] == MAGIC else None


def _has_crc(data) -> bool:
    return bool(memoryview(data).cast("B")[3] & FLAG_CHECKSUM)


def inspect_packed(data, *, spec=None, max_numel: int, **_: Any) -> MessageReport:
    """Report on a compact message, decoded against ``spec`` (ConfigError without it)."""
    from .packed import MessageSpec, decode_packed
    from .topk import TopK

    if not isinstance(spec, MessageSpec):
        raise ConfigError(
            "this is a compact message (wire id 0x7D): it holds no names, shapes or codec "
            "settings, so it is read against the MessageSpec both ends hold. Pass spec=... "
            "(command line: --spec SPEC.json, written by MessageSpec.to_json())")
    sections: dict = {}
    info: dict = {}
    decode_packed(data, spec, max_numel=max_numel, sections=sections, info=info)
    ks = info["k"]
    tensors = []
    for name, dtype, shape in spec.schema.entries:
        codec = spec.codec_for(name)
        numel = int(np.prod(shape, dtype=np.int64))
        per = sections.get(name, {})
        topk = isinstance(codec, TopK)
        value_coder = codec.values if isinstance(codec, TopK) else None
        bound = None
        if topk and spec.scope == "tensor":
            bound = topk_index_bits(numel, ks[name]) + per.get("values", 0)
        elif not topk:       # its payload as coded: the codec's own business
            bound = float(sum(v for s, v in per.items() if s not in ("header", "checksum")))
        tensors.append(TensorReport(
            name=name, codec=codec.codec_id, wire_id=codec.wire_id, dtype=dtype,
            shape=tuple(shape), numel=numel, sections=per, k=ks.get(name),
            value_coder=value_coder, bound_bits=bound,
            bound="log2 C(n,k) + values as coded (iid support)" if topk and bound is not None
            else ("payload as coded" if bound is not None else None)))
    notes = []
    if spec.scope == "global":
        notes.append(f"global top-k: one support over all TopK tensors, so no per-tensor bound; "
                     f"the message's (log2 C(sum n, K) + values + other payloads) is "
                     f"{info['bound_bits']:,.1f} bits")
    return MessageReport("compact message", PACKED_WIRE_ID, len(memoryview(data).cast("B")),
                         _has_crc(data), sections.get(BUNDLE_OVERHEAD, {}), tuple(tensors),
                         tuple(notes))


def inspect_patch(data, *, spec=None, schema=None, max_numel: int, **_: Any) -> MessageReport:
    """Report on a model patch, decoded against ``schema`` (or ``spec.schema``)."""
    from .bundle import Schema
    from .patch import decode_patch

    if schema is None and spec is not None:
        schema = spec.schema
    if not isinstance(schema, Schema):
        raise ConfigError(
            "this is a model patch (wire id 0x7C): it holds no names or shapes, so it is read "
            "against the Schema both ends hold. Pass schema=... (command line: --schema "
            "SCHEMA.json, a JSON list of [name, dtype, shape], or --spec SPEC.json)")
    patch = decode_patch(data, schema, max_numel=max_numel)
    tensors = []
    for name, dtype, shape in schema.entries:
        numel = int(np.prod(shape, dtype=np.int64))
        k = int(patch.supports[name].size)
        tensors.append(TensorReport(
            name=name, codec="patch", wire_id=PATCH_WIRE_ID, dtype=dtype, shape=tuple(shape),
            numel=numel, sections=patch.sections.get(name, {}), k=k,
            value_coder=f"raw {np.dtype(dtype).name}",
            bound_bits=topk_index_bits(numel, k) + 8 * np.dtype(dtype).itemsize * k,
            bound="log2 C(n,k) + raw values (iid support)"))
    notes = (f"base version {patch.base} -> version {patch.version}, "
             f"target digest {patch.digest:08x}",)
    return MessageReport("model patch", PATCH_WIRE_ID, len(memoryview(data).cast("B")),
                         _has_crc(data), patch.sections.get(BUNDLE_OVERHEAD, {}), tuple(tensors),
                         notes)


#: wire id -> inspector, for the messages read against what both ends hold (no CRC check first)
COMPACT_INSPECTORS: dict[int, Callable[..., MessageReport]] = {
    PACKED_WIRE_ID: inspect_packed, PATCH_WIRE_ID: inspect_patch}
