"""Model patches: a lossless sparse downlink between two versions of a model both ends know.

A server that knows which model version a client holds sends it only the positions where
the model changed since then, with their new values; the client assigns them and holds the
new model **bit for bit** (assignment, not addition: no rounding drift). A patch (wire id
``0x7C``) carries::

    bytes       field                                                         section
    5           preamble: b"SC", format version, flags, wire id 0x7C           header
    0 or 4      the schema fingerprint, only when the CRC is off               header
    varint      base version (what the receiver must hold)                     header
    varint      target version                                                 header
    4           CRC-32 digest of the target model (:func:`model_digest`)       header
    per entry, in schema order: varint k_t (changed positions)                 index
    ...         the supports, as in compact messages (exact joint rank for
                small k, index coders within 1 % of log2 C(n, k) otherwise)     index
    per entry: k_t new values, raw little-endian in the tensor's dtype        values
    4           CRC-32 seeded with the schema fingerprint, when on              checksum

The digest lets the receiver prove the result: a replica that was not at ``base`` (a client
that lost its state, a server with wrong bookkeeping) raises :class:`ReplicaMismatchError`
instead of silently diverging; the sender then answers with the dense model.

    >>> import numpy as np, sparsecodec as sc
    >>> from sparsecodec.patch import changed_positions, encode_patch, decode_patch, apply_patch
    >>> old = {"w": np.zeros(1000, np.float32), "b": np.ones(3, np.float32)}
    >>> new = {"w": old["w"].copy(), "b": old["b"].copy()}
    >>> new["w"][[5, 700]] = [0.25, -1.5]
    >>> schema = sc.Schema.from_tensors(old)
    >>> supports = {n: changed_positions(old[n], new[n]) for n in old}
    >>> frame = encode_patch(new, supports, schema, base=3, version=4)
    >>> frame.nbits                  # 72 fixed + 48 versions/digest + 16 k + 24 index + 64 values
    224
    >>> replica = {n: a.copy() for n, a in old.items()}
    >>> apply_patch(replica, 3, decode_patch(bytes(frame), schema))
    4
    >>> all(np.array_equal(replica[n], new[n]) for n in new)
    True
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from ._arrays import as_numpy
from ._compact import (SupportEntry, attribute_overhead, close_read_sections, finish_writer,
                       open_reader, read_supports, section_adder, start_writer, write_supports)
from .bounds import topk_index_bits
from .bundle import Schema
from .errors import ConfigError, LimitExceededError, SparseCodecError
from .frame import DEFAULT_MAX_NUMEL, Frame
from .registry import PATCH_WIRE_ID   # the registry owns every wire id

__all__ = ["PATCH_WIRE_ID", "Patch", "ReplicaMismatchError", "changed_positions", "model_digest",
           "encode_patch", "decode_patch", "apply_patch", "patch_bound_bits"]

_MAX_VERSION = (1 << 63) - 1


class ReplicaMismatchError(SparseCodecError):
    """The receiver's model is not the patch's base: it needs the dense model instead."""


def _numel(shape) -> int:
    return int(np.prod(shape, dtype=object)) if shape else 1


def _bits_view(a: np.ndarray) -> np.ndarray:
    """The raw bit patterns (NaN payloads and -0.0 compare as bits, not as floats)."""
    a = np.ascontiguousarray(a).reshape(-1)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def changed_positions(old, new) -> np.ndarray:
    """Ascending flat positions where ``new`` differs bitwise from ``old`` (same dtype/shape)."""
    old, new = as_numpy(old, what="old"), as_numpy(new, what="new")
    if old.dtype != new.dtype or old.shape != new.shape:
        raise ConfigError(f"cannot diff {old.dtype}{old.shape} against {new.dtype}{new.shape}")
    return np.flatnonzero(_bits_view(old) != _bits_view(new)).astype(np.int64, copy=False)


def model_digest(tensors: Mapping[str, Any], schema: Schema) -> int:
    """CRC-32 of the tensors' little-endian bytes in schema order (what a patch promises)."""
    crc = 0
    for name, dtype, shape in schema.entries:
        a = as_numpy(tensors[name], what=f"tensor {name!r}")
        if a.dtype != np.dtype(dtype) or tuple(a.shape) != tuple(shape):
            raise ConfigError(f"tensor {name!r} is {a.dtype}{a.shape}, the schema says {dtype}{tuple(shape)}")
        crc = zlib.crc32(np.ascontiguousarray(a, a.dtype.newbyteorder("<")).reshape(-1).view(np.uint8).data, crc)
    return crc & 0xFFFFFFFF


@dataclass
class Patch:
    """A decoded patch: base and target version, the target's digest, positions and values."""

    base: int
    version: int
    digest: int
    supports: dict[str, np.ndarray]
    values: dict[str, np.ndarray]
    sections: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return sum(int(s.size) for s in self.supports.values())


def patch_bound_bits(schema: Schema, ks: Mapping[str, int]) -> float:
    """The information a patch carries: ``sum_t log2 C(n_t, k_t)`` + the values' raw bits."""
    total = 0.0
    for name, dtype, shape in schema.entries:
        k = int(ks.get(name, 0))
        n = _numel(shape)
        total += topk_index_bits(n, k)
        total += 8 * np.dtype(dtype).itemsize * k
    return total


def encode_patch(target: Mapping[str, Any], supports: Mapping[str, Any], schema: Schema, *,
                 base: int, version: int, digest: int | None = None, checksum: bool = True) -> Frame:
    """The patch taking a replica at ``base`` to ``target`` (at ``version``).

    ``supports[name]``: ascending positions to overwrite (absent = unchanged). ``digest``
    defaults to :func:`model_digest` of ``target``.
    """
    for v, what in ((base, "base"), (version, "version")):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 0 <= int(v) <= _MAX_VERSION:
            raise ConfigError(f"{what} must be an int in [0, 2**63), got {v!r}")
    unknown = sorted(set(supports) - {e[0] for e in schema.entries})
    if unknown:
        raise ConfigError(f"supports for tensors not in the schema: {unknown[:5]}")
    digest = model_digest(target, schema) if digest is None else int(digest)
    per: dict[str, dict[str, int]] = {}
    add = section_adder(per)

    w = start_writer(PATCH_WIRE_ID, schema.fingerprint, checksum)
    w.varint(int(base), "header")
    w.varint(int(version), "header")
    w.raw(int(digest).to_bytes(4, "little"), "header")
    entries, idxs, vals = [], [], []
    for name, dtype, shape in schema.entries:
        n = _numel(shape)
        idx = np.ascontiguousarray(supports.get(name, np.empty(0, np.int64)), dtype=np.int64).reshape(-1)
        before = len(w)
        w.varint(idx.size, "index")
        add(name, "index", 8 * (len(w) - before))
        entries.append(SupportEntry(name, n, idx.size))
        idxs.append(idx)
        flat = as_numpy(target[name], what=f"tensor {name!r}").reshape(-1)
        if flat.dtype != np.dtype(dtype) or flat.size != n:
            raise ConfigError(f"tensor {name!r} is {flat.dtype}[{flat.size}], the schema says {dtype}{tuple(shape)}")
        if idx.size and (idx[0] < 0 or idx[-1] >= n or np.any(np.diff(idx) <= 0)):
            raise ConfigError(f"supports[{name!r}] must be strictly ascending positions in [0, {n})")
        vals.append(np.ascontiguousarray(flat[idx], flat.dtype.newbyteorder("<")))
    write_supports(w, entries, idxs, add)
    for (name, _, _), chosen in zip(schema.entries, vals):
        w.raw(chosen.view(np.uint8), "values")
        add(name, "values", 8 * chosen.nbytes)
    data, sections = finish_writer(w, schema.fingerprint, checksum)
    attribute_overhead(per, sections)
    return Frame(data, sections, sum(_numel(e[2]) for e in schema.entries), "patch",
                 {"tensors": per, "base": int(base), "version": int(version), "k": sum(i.size for i in idxs),
                  "bound_bits": patch_bound_bits(schema, {e.owner: e.k for e in entries})})


def decode_patch(data, schema: Schema, *, max_numel: int = DEFAULT_MAX_NUMEL) -> Patch:
    """Read and validate a patch against ``schema`` (nothing is applied yet)."""
    total = sum(_numel(e[2]) for e in schema.entries)
    if total > max_numel:
        raise LimitExceededError(f"the schema's tensors hold {total} elements > max_numel={max_numel}")
    r, head_bits, has_crc = open_reader(data, PATCH_WIRE_ID, schema.fingerprint, max_numel, "model patch")
    per: dict[str, dict[str, int]] = {}
    add = section_adder(per)

    start = r.pos
    base = r.varint("base version", _MAX_VERSION)
    version = r.varint("target version", _MAX_VERSION)
    digest = int.from_bytes(r.take(4, "model digest"), "little")
    head_bits += 8 * (r.pos - start)
    entries = []
    for name, _, shape in schema.entries:
        n = _numel(shape)
        before = r.pos
        k = r.varint(f"entry {name!r} k", n)
        add(name, "index", 8 * (r.pos - before))
        entries.append(SupportEntry(name, n, k))
    idxs = read_supports(r, entries, add)
    supports, values = {}, {}
    for (name, dtype, _), e, idx in zip(schema.entries, entries, idxs):
        dt = np.dtype(dtype)
        raw = r.take(e.k * dt.itemsize, f"entry {name!r} values")
        values[name] = np.frombuffer(raw, dt.newbyteorder("<")).astype(dt)
        add(name, "values", 8 * e.k * dt.itemsize)
        supports[name] = idx
    r.expect_end()
    close_read_sections(per, head_bits, has_crc, len(r.buf))
    return Patch(base, version, digest, supports, values, per)


def apply_patch(replica: Mapping[str, np.ndarray], replica_version: int | None, patch: Patch,
                schema: Schema | None = None) -> int:
    """Assign the patch into ``replica`` (writable arrays, in place); returns the new version.

    Raises :class:`ReplicaMismatchError` if the replica is not at ``patch.base`` (checked
    before anything is written) or does not match the patch's digest afterwards (the replica
    is then garbage: drop it and ask for the dense model).
    """
    if replica_version is None or int(replica_version) != patch.base:
        raise ReplicaMismatchError(f"the patch goes from version {patch.base}, the replica holds "
                                   f"{replica_version}: the dense model is needed")
    if set(patch.supports) - set(replica):
        raise ReplicaMismatchError(f"the replica lacks tensors {sorted(set(patch.supports) - set(replica))[:5]}")
    for name, idx in patch.supports.items():
        a = replica[name]
        if idx.size:
            if (a.dtype != patch.values[name].dtype or a.size <= int(idx[-1])
                    or not a.flags.c_contiguous or not a.flags.writeable):
                raise ReplicaMismatchError(f"replica tensor {name!r} is {a.dtype}[{a.size}]: not this model")
            a.reshape(-1)[idx] = patch.values[name]
    if schema is None:
        schema = Schema.from_tensors(replica)
    if model_digest(replica, schema) != patch.digest:
        raise ReplicaMismatchError(f"after the patch to version {patch.version} the replica's digest "
                                   "differs from the server's model: the dense model is needed")
    return patch.version
