"""Client state as bytes without pickle: what Flower's per-client ``Context.state`` holds.

A Flower ``Context.state`` is a ``RecordDict``: it keeps records (bytes, numbers, strings,
arrays) across rounds, not Python objects. :func:`encode_state` turns an algorithm's client
state (dataclasses holding numpy arrays, torch tensors, an :class:`sparsecodec.ErrorFeedback`,
an optimizer ``state_dict`` with int keys and tuples ...) into one ``bytes`` value and
:func:`decode_state` rebuilds it, bit for bit. The layout is a JSON skeleton, whose ``"a"``
list gives every array's dtype and shape, followed by the arrays' little-endian bytes::

    b"FLST2" | u32 length of the JSON | JSON {"v": skeleton, "a": [[dtype, shape], ...]} | bytes

The bytes are treated as hostile (a node's state store can be tampered with):

* no pickle, no import by a name read from the bytes: a class is rebuilt only if its exact
  ``module:qualname`` is in :data:`STATE_CLASSES` (the fl/sparsecodec types that occur in node
  states and checkpoints) or is one of the ``classes`` the caller passes;
* every size is checked before anything is allocated: the total length (``max_bytes``), the
  skeleton's length (``max_skeleton_bytes``), every array's elements (``max_numel`` in all),
  dtypes from a fixed list of non-empty numeric types, bytes present = bytes declared;
* dataclass fields are checked against their annotations (``dict[str, np.ndarray] | None`` ...);
* every malformed input raises :class:`StateError` (a :class:`sparsecodec.FrameError`).

    >>> import numpy as np, sparsecodec as sc
    >>> from fl.algorithms.ec import ECClientState
    >>> state = ECClientState()
    >>> _ = state.feedback.step("w", np.array([1.0, -3.0, 0.5], np.float32), sc.TopK(k=1))
    >>> back = decode_state(encode_state(state))
    >>> type(back).__name__, back.feedback.residual("w").tolist()
    ('ECClientState', [1.0, 0.0, 0.5])
    >>> decode_state(encode_state({0: (1, 2.5, None), "lr": [0.1, True]}))
    {0: (1, 2.5, None), 'lr': [0.1, True]}
    >>> decode_state(b"FLST2\\xff\\xff\\xff\\x7f{")
    Traceback (most recent call last):
    ...
    fl.flower.state.StateError: client state declares a 2147483647-byte skeleton, only 1 bytes follow
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import struct
import types
import typing
from typing import Any, Iterable, Mapping

import numpy as np

from sparsecodec.errors import ConfigError, FrameError
from sparsecodec.frame import DEFAULT_MAX_NUMEL

__all__ = ["encode_state", "decode_state", "StateError", "STATE_CLASSES", "DEFAULT_MAX_BYTES",
           "DEFAULT_MAX_SKELETON_BYTES", "DEFAULT_ALLOWED_MODULES"]

MAGIC = b"FLST2"
_HEAD = len(MAGIC) + 4
#: The classes :func:`decode_state` rebuilds, by exact ``module:qualname`` (every state class of
#: ``fl.algorithms`` and the ErrorFeedback they hold). A name maps to the annotation its
#: ``state_dict()`` must match for the ``state_dict`` classes, or ``None`` for dataclasses.
STATE_CLASSES: Mapping[str, Any] = {
    "fl.algorithms.base:ServerState": None,
    "fl.algorithms.ec:ECClientState": None,
    "fl.algorithms.flare:FLAREClientState": None,
    "fl.algorithms.fedpm:FedPMClientState": None,
    "fl.algorithms.fedpm:FedPMServerState": None,
    "fl.algorithms.ef21:EF21ClientState": None,
    "fl.algorithms.ef21:EF21ServerState": None,
    "fl.algorithms.proxskip:ProxSkipClientState": None,
    "sparsecodec.feedback:ErrorFeedback": dict[str, dict[str, np.ndarray]],
}
#: Kept for callers of the old signature: ``allowed_modules`` now only *narrows* the exact names.
DEFAULT_ALLOWED_MODULES = ("fl", "sparsecodec")
DEFAULT_MAX_BYTES = 1 << 31
#: JSON costs up to ~20x its length in Python objects, so the skeleton has its own, lower bound.
DEFAULT_MAX_SKELETON_BYTES = 16 << 20
_MAX_DEPTH = 64
_MAX_NDIM = 32
# little-endian numeric dtypes only: no object/void/string (zero itemsize), no big-endian twins
_DTYPES = {np.dtype(t).str: np.dtype(t) for t in (
    "?", "u1", "i1", "<u2", "<i2", "<u4", "<i4", "<u8", "<i8", "<f2", "<f4", "<f8", "<c8", "<c16")}
_TAGS = {"$nd", "$np", "$bytes", "$torch", "$tuple", "$dict", "$dc", "$sd"}


class StateError(FrameError):
    """The bytes are not a valid encoded state (or exceed the caller's limits)."""


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


# -- encoding ------------------------------------------------------------------------------------
class _Encoder:
    def __init__(self, names: set[str]) -> None:
        self.arrays: list[np.ndarray] = []
        self.names = names

    def array(self, a: np.ndarray) -> int:
        le = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if le.str not in _DTYPES:
            raise ConfigError(f"cannot store a {a.dtype} array without pickle (numeric dtypes only)")
        self.arrays.append(np.asarray(a, dtype=le, order="C"))      # keeps 0-d arrays 0-d
        return len(self.arrays) - 1

    def cls(self, x: Any) -> str:
        name = _qualname(type(x))
        if name not in self.names:
            raise ConfigError(f"{name} is not a registered state class (STATE_CLASSES); pass "
                              "classes=(...) to encode_state and decode_state")
        return name

    def enc(self, x: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise ConfigError("client state nested too deeply")
        d = depth + 1
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, np.generic):        # before float: np.float64 is a float subclass
            return {"$np": self.array(np.asarray(x))}
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return float(x)
        if isinstance(x, bytes):
            return {"$bytes": self.array(np.frombuffer(x, np.uint8))}
        if isinstance(x, np.ndarray):
            return {"$nd": self.array(x)}
        if type(x).__module__.startswith("torch") and type(x).__name__ == "Tensor":
            import torch

            t = x.detach().cpu()
            if t.dtype == torch.bfloat16:        # numpy has no bf16: its bits travel as int16
                return {"$torch": self.array(t.view(torch.int16).numpy()), "bf16": True}
            return {"$torch": self.array(t.numpy())}
        if isinstance(x, list):
            return [self.enc(v, d) for v in x]
        if isinstance(x, tuple):
            return {"$tuple": [self.enc(v, d) for v in x]}
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: self.enc(v, d) for k, v in x.items()}
            return {"$dict": [[self.enc(k, d), self.enc(v, d)] for k, v in x.items()]}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {"$dc": self.cls(x),
                    "f": {f.name: self.enc(getattr(x, f.name), d) for f in dataclasses.fields(x)}}
        if callable(getattr(x, "state_dict", None)) and callable(getattr(x, "load_state_dict", None)):
            return {"$sd": self.cls(x), "s": self.enc(x.state_dict(), d)}
        raise ConfigError(f"cannot store a {type(x).__name__} in Flower's Context.state without "
                          "pickle: use dataclasses, numpy arrays, torch tensors, plain containers, "
                          "or objects with state_dict()/load_state_dict()")


def encode_state(state: Any, *, classes: Iterable[type] = ()) -> bytes:
    """Serialize a client state (see the module docstring) into bytes; no pickle.

    Its classes must be in :data:`STATE_CLASSES` or ``classes`` (else :class:`ConfigError`)."""
    e = _Encoder(set(STATE_CLASSES) | {_qualname(c) for c in classes})
    tree = e.enc(state)
    meta = [[a.dtype.str, list(a.shape)] for a in e.arrays]
    skeleton = json.dumps({"v": tree, "a": meta}, separators=(",", ":"), allow_nan=True).encode()
    return b"".join([MAGIC, struct.pack("<I", len(skeleton)), skeleton]
                    + [a.tobytes() for a in e.arrays])


# -- decoding ------------------------------------------------------------------------------------
def _registry(classes: Iterable[type], allowed_modules: Iterable[str] | None) -> dict[str, Any]:
    reg: dict[str, Any] = dict(STATE_CLASSES)
    for c in classes:
        if not isinstance(c, type):
            raise ConfigError(f"classes must be classes, got {c!r}")
        reg[_qualname(c)] = c
    if allowed_modules is not None:
        mods = tuple(allowed_modules)
        reg = {n: v for n, v in reg.items()
               if any(n.partition(":")[0] == p or n.startswith(p + ".") for p in mods)}
    return reg


def _load_class(name: str, entry: Any) -> type:
    """The class of a registered name: given by the caller, or imported from the fixed list."""
    if isinstance(entry, type):
        return entry
    module, _, qual = name.partition(":")
    return getattr(importlib.import_module(module), qual)      # names from STATE_CLASSES only


def _conforms(v: Any, hint: Any, depth: int = 0) -> bool:
    """Does ``v`` match the annotation ``hint`` (``dict[str, np.ndarray] | None``, ``int`` ...)?"""
    if hint is Any:
        return True
    if depth > _MAX_DEPTH:
        return False
    d = depth + 1
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(v, a, d) for a in args)
    if hint is None or hint is type(None):
        return v is None
    if origin in (dict, Mapping):
        return isinstance(v, dict) and (not args or all(
            _conforms(k, args[0], d) and _conforms(x, args[1], d) for k, x in v.items()))
    if origin is list:
        return isinstance(v, list) and (not args or all(_conforms(x, args[0], d) for x in v))
    if origin is not None:          # tuple[...], Callable ...: not in any state class, unchecked
        return isinstance(v, origin)
    if hint is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if hint is float:
        return isinstance(v, float)
    return isinstance(hint, type) and isinstance(v, hint)


class _Decoder:
    def __init__(self, arrays: list[np.ndarray], registry: dict[str, Any]) -> None:
        self.arrays, self.registry = arrays, registry
        self.used: set[int] = set()

    def arr(self, i: Any) -> np.ndarray:
        if type(i) is not int or not 0 <= i < len(self.arrays) or i in self.used:
            raise StateError(f"client state refers to array {i!r} of {len(self.arrays)} "
                             "(out of range or used twice)")
        self.used.add(i)
        return self.arrays[i]

    def tagged(self, x: dict, tag: str, *extra: str) -> Any:
        if set(x) != {tag, *extra}:
            raise StateError(f"a {tag} entry has the keys {sorted(x)}, expected {sorted({tag, *extra})}")
        return x[tag]

    def cls(self, name: Any) -> tuple[type, Any]:
        if not isinstance(name, str) or name not in self.registry:
            raise StateError(f"client state names class {name!r}, which is not a registered "
                             f"state class ({len(self.registry)} allowed, exact names)")
        entry = self.registry[name]
        return _load_class(name, entry), entry

    def dec(self, x: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise StateError("client state nested too deeply")
        d = depth + 1
        if isinstance(x, list):
            return [self.dec(v, d) for v in x]
        if not isinstance(x, dict):
            return x             # None, bool, int, float, str: what JSON gives
        tags = _TAGS.intersection(x)
        if not tags:
            if any(k.startswith("$") for k in x):
                raise StateError(f"unknown tag in client state keys {sorted(x)[:4]}")
            return {k: self.dec(v, d) for k, v in x.items()}
        if "$nd" in x:
            return self.arr(self.tagged(x, "$nd"))
        if "$np" in x:
            a = self.arr(self.tagged(x, "$np"))
            if a.ndim:
                raise StateError(f"a numpy scalar has shape {a.shape}")
            return a[()]
        if "$bytes" in x:
            a = self.arr(self.tagged(x, "$bytes"))
            if a.dtype != np.uint8 or a.ndim != 1:
                raise StateError(f"bytes stored as a {a.dtype} array of shape {a.shape}")
            return a.tobytes()
        if "$torch" in x:
            return self.torch(x)
        if "$tuple" in x:
            items = self.tagged(x, "$tuple")
            if not isinstance(items, list):
                raise StateError("a $tuple entry is not a list")
            return tuple(self.dec(v, d) for v in items)
        if "$dict" in x:
            return self.mapping(self.tagged(x, "$dict"), d)
        if "$dc" in x:
            return self.dataclass(self.tagged(x, "$dc", "f"), x["f"], d)
        return self.stateful(self.tagged(x, "$sd", "s"), x["s"], d)

    def torch(self, x: dict) -> Any:
        import torch

        bf16 = "bf16" in x
        a = self.arr(self.tagged(x, "$torch", *(["bf16"] if bf16 else [])))
        if bf16 and (x["bf16"] is not True or a.dtype != np.int16):
            raise StateError("a bf16 tensor must travel as int16")
        if a.dtype.kind == "u" and a.dtype != np.uint8:
            raise StateError(f"torch has no {a.dtype} tensors here")
        t = torch.from_numpy(a)
        return t.view(torch.bfloat16) if bf16 else t

    def mapping(self, pairs: Any, d: int) -> dict:
        if not isinstance(pairs, list) or not all(isinstance(p, list) and len(p) == 2 for p in pairs):
            raise StateError("a $dict entry is not a list of [key, value] pairs")
        out = {}
        for k, v in pairs:
            key = self.dec(k, d)
            try:
                hash(key)
            except TypeError:
                raise StateError(f"a dict key decodes to an unhashable {type(key).__name__}") from None
            out[key] = self.dec(v, d)
        return out

    def dataclass(self, name: Any, raw: Any, d: int) -> Any:
        cls, _ = self.cls(name)
        if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)) or not isinstance(raw, dict):
            raise StateError(f"{name!r} is stored as a dataclass but is not one (or has no fields)")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        if set(raw) != set(fields):
            raise StateError(f"{name} has fields {sorted(fields)}, the state {sorted(raw)[:8]}")
        values = {k: self.dec(v, d) for k, v in raw.items()}
        try:
            hints = typing.get_type_hints(cls)
        except (NameError, TypeError):      # a caller's class with unresolvable annotations
            hints = {}
        for k, v in values.items():
            if not _conforms(v, hints.get(k, Any)):
                raise StateError(f"{name}.{k} must be {hints[k]}, the state holds a {type(v).__name__}")
        try:
            obj = cls(**{k: v for k, v in values.items() if fields[k].init})
        except (TypeError, ValueError) as exc:     # a caller's class may check its fields
            raise StateError(f"{name} rejects the stored fields: {exc}") from None
        for k, v in values.items():
            if not fields[k].init:
                object.__setattr__(obj, k, v)
        return obj

    def stateful(self, name: Any, raw: Any, d: int) -> Any:
        cls, entry = self.cls(name)
        if dataclasses.is_dataclass(cls):
            raise StateError(f"{name!r} is a dataclass, stored as a state_dict object")
        state = self.dec(raw, d)
        hint = entry if not isinstance(entry, type) and entry is not None else Any
        if not _conforms(state, hint):
            raise StateError(f"the state_dict of {name} must be {hint}")
        try:
            obj = cls()
            obj.load_state_dict(state)
        except (TypeError, ValueError, KeyError) as exc:
            raise StateError(f"{name}.load_state_dict rejects the stored state: {exc}") from None
        return obj


def _arrays(view: memoryview, meta: Any, max_numel: int) -> list[np.ndarray]:
    """Every array's (dtype, shape) checked, then the bytes: nothing is allocated before."""
    if not isinstance(meta, list):
        raise StateError("the array table of the client state is not a list")
    specs, numel, offset = [], 0, 0
    for entry in meta:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)
                and entry[0] in _DTYPES and isinstance(entry[1], list) and len(entry[1]) <= _MAX_NDIM
                and all(type(n) is int and n >= 0 for n in entry[1])):
            raise StateError(f"bad array entry {str(entry)[:80]} (a known dtype, a shape of ints >= 0)")
        dtype, shape = _DTYPES[entry[0]], tuple(entry[1])
        n = span = 1
        for s in shape:      # zero dims count as 1 in ``span`` so numpy's strides cannot overflow
            n, span = n * s, span * max(s, 1)
        numel += n
        if span > max_numel or numel > max_numel:
            raise StateError(f"client state arrays hold more than max_numel={max_numel} elements")
        specs.append((dtype, shape, n, offset))
        offset += n * dtype.itemsize
    if offset != len(view):
        raise StateError(f"client state arrays declare {offset} bytes, {len(view)} follow the skeleton")
    return [np.frombuffer(view, dtype, n, off).reshape(shape).copy() for dtype, shape, n, off in specs]


def decode_state(data: bytes, *, classes: Iterable[type] = (), max_bytes: int = DEFAULT_MAX_BYTES,
                 max_numel: int = DEFAULT_MAX_NUMEL, max_skeleton_bytes: int = DEFAULT_MAX_SKELETON_BYTES,
                 allowed_modules: Iterable[str] | None = None) -> Any:
    """Rebuild what :func:`encode_state` wrote; only classes named exactly in
    :data:`STATE_CLASSES` or given in ``classes`` (``allowed_modules`` narrows these further).

    ``max_bytes`` bounds ``len(data)``, ``max_skeleton_bytes`` the JSON part and ``max_numel``
    the elements of all arrays together; decoding allocates about ``len(data)`` plus the
    skeleton's objects. Any malformed or over-limit input raises :class:`StateError`.
    """
    registry = _registry(classes, allowed_modules)
    try:
        view = memoryview(data).cast("B")
    except TypeError:
        raise StateError(f"a client state is bytes, not {type(data).__name__}") from None
    if len(view) > max_bytes:
        raise StateError(f"client state of {len(view)} bytes exceeds max_bytes={max_bytes}")
    if len(view) < _HEAD or view[:len(MAGIC)] != MAGIC:
        old = " (FLST1, written before issue 16)" if view[:5] == b"FLST1" else ""
        raise StateError(f"not an encoded client state (bad magic{old})")
    (n,) = struct.unpack_from("<I", view, len(MAGIC))
    if n > len(view) - _HEAD:
        raise StateError(f"client state declares a {n}-byte skeleton, only {len(view) - _HEAD} bytes follow")
    if n > max_skeleton_bytes:
        raise StateError(f"client state skeleton of {n} bytes exceeds "
                         f"max_skeleton_bytes={max_skeleton_bytes}")
    try:
        skeleton = json.loads(bytes(view[_HEAD:_HEAD + n]))
    except (ValueError, RecursionError) as exc:     # UnicodeDecodeError, JSONDecodeError, int digits
        raise StateError(f"corrupt client state skeleton: {str(exc)[:200]}") from None
    if not isinstance(skeleton, dict) or set(skeleton) != {"v", "a"}:
        raise StateError("the client state skeleton is not {'v': ..., 'a': [...]}")
    arrays = _arrays(view[_HEAD + n:], skeleton["a"], max(0, min(int(max_numel), 1 << 62)))
    decoder = _Decoder(arrays, registry)
    try:
        out = decoder.dec(skeleton["v"])
    except RecursionError:
        raise StateError("client state nested too deeply") from None
    if len(decoder.used) != len(arrays):
        raise StateError(f"client state stores {len(arrays)} arrays, uses {len(decoder.used)}")
    return out
