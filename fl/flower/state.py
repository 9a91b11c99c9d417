"""Client state as bytes without pickle: what Flower's per-client ``Context.state`` holds.

A Flower ``Context.state`` is a ``RecordDict``: it keeps records (bytes, numbers, strings,
arrays) across rounds, not Python objects. :func:`encode_state` turns an algorithm's client
state (dataclasses holding numpy arrays, torch tensors, an :class:`sparsecodec.ErrorFeedback`,
an optimizer ``state_dict`` with int keys and tuples ...) into one ``bytes`` value and
:func:`decode_state` rebuilds it, bit for bit. The layout is a JSON skeleton followed by the
arrays in ``.npy`` format (``np.save(allow_pickle=False)``)::

    b"FLST1" | u32 length of the JSON | JSON skeleton | npy array 0 | npy array 1 | ...

Decoding never runs pickle and only rebuilds classes from allowed modules (``fl.*`` and
``sparsecodec.*`` by default): a dataclass from its fields, any other class through its
``state_dict()`` / ``load_state_dict()`` pair (that is how an ``ErrorFeedback`` travels).

    >>> import numpy as np, sparsecodec as sc
    >>> from fl.algorithms.ec import ECClientState
    >>> state = ECClientState()
    >>> _ = state.feedback.step("w", np.array([1.0, -3.0, 0.5], np.float32), sc.TopK(k=1))
    >>> back = decode_state(encode_state(state))
    >>> type(back).__name__, back.feedback.residual("w").tolist()
    ('ECClientState', [1.0, 0.0, 0.5])
    >>> decode_state(encode_state({0: (1, 2.5, None), "lr": [0.1, True]}))
    {0: (1, 2.5, None), 'lr': [0.1, True]}
"""

from __future__ import annotations

import dataclasses
import importlib
import io
import json
import struct
from typing import Any, Iterable

import numpy as np

from sparsecodec.errors import ConfigError

__all__ = ["encode_state", "decode_state", "DEFAULT_ALLOWED_MODULES"]

MAGIC = b"FLST1"
#: Modules whose classes :func:`decode_state` may rebuild (prefix match on ``module.``).
DEFAULT_ALLOWED_MODULES = ("fl", "sparsecodec")
_MAX_DEPTH = 64


def _qualname(obj: Any) -> str:
    cls = type(obj)
    return f"{cls.__module__}:{cls.__qualname__}"


class _Encoder:
    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []

    def array(self, a: np.ndarray) -> int:
        if a.dtype.hasobject:
            raise ConfigError("object arrays cannot be stored without pickle")
        self.arrays.append(a if a.flags.c_contiguous else a.copy(order="C"))  # keeps 0-d arrays 0-d
        return len(self.arrays) - 1

    def enc(self, x: Any, depth: int = 0) -> Any:
        if depth > _MAX_DEPTH:
            raise ConfigError("client state nested too deeply")
        d = depth + 1
        if x is None or isinstance(x, (bool, str)):
            return x
        if isinstance(x, int):
            return int(x)
        if isinstance(x, float):
            return float(x)
        if isinstance(x, bytes):
            return {"$bytes": self.array(np.frombuffer(x, np.uint8))}
        if isinstance(x, np.ndarray):
            return {"$nd": self.array(x)}
        if isinstance(x, np.generic):
            return {"$np": self.array(np.asarray(x))}
        if type(x).__module__.startswith("torch") and type(x).__name__ == "Tensor":
            return {"$torch": self.array(x.detach().cpu().numpy())}
        if isinstance(x, list):
            return [self.enc(v, d) for v in x]
        if isinstance(x, tuple):
            return {"$tuple": [self.enc(v, d) for v in x]}
        if isinstance(x, dict):
            if all(isinstance(k, str) and not k.startswith("$") for k in x):
                return {k: self.enc(v, d) for k, v in x.items()}
            return {"$dict": [[self.enc(k, d), self.enc(v, d)] for k, v in x.items()]}
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {"$dc": _qualname(x),
                    "f": {f.name: self.enc(getattr(x, f.name), d) for f in dataclasses.fields(x)}}
        if callable(getattr(x, "state_dict", None)) and callable(getattr(x, "load_state_dict", None)):
            return {"$sd": _qualname(x), "s": self.enc(x.state_dict(), d)}
        raise ConfigError(f"cannot store a {type(x).__name__} in Flower's Context.state without "
                          "pickle: use dataclasses, numpy arrays, torch tensors, plain containers, "
                          "or objects with state_dict()/load_state_dict()")


def encode_state(state: Any) -> bytes:
    """Serialize a client state (see the module docstring) into bytes; no pickle."""
    e = _Encoder()
    skeleton = json.dumps(e.enc(state), separators=(",", ":"), allow_nan=True).encode()
    buf = io.BytesIO()
    buf.write(MAGIC + struct.pack("<I", len(skeleton)) + skeleton)
    for a in e.arrays:
        np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _resolve(name: str, allowed: Iterable[str]) -> type:
    module, _, qual = name.partition(":")
    if not any(module == p or module.startswith(p + ".") for p in allowed):
        raise ConfigError(f"client state names class {name!r} outside the allowed modules {tuple(allowed)}")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise ConfigError(f"{name!r} is not a class")
    return obj


class _Decoder:
    def __init__(self, arrays: list[np.ndarray], allowed: tuple[str, ...]) -> None:
        self.arrays, self.allowed = arrays, allowed

    def arr(self, i: Any) -> np.ndarray:
        if not isinstance(i, int) or not 0 <= i < len(self.arrays):
            raise ConfigError(f"client state refers to array {i!r} of {len(self.arrays)}")
        return self.arrays[i]

    def dec(self, x: Any) -> Any:
        if isinstance(x, list):
            return [self.dec(v) for v in x]
        if not isinstance(x, dict):
            return x
        if "$nd" in x:
            return self.arr(x["$nd"]).copy()
        if "$np" in x:
            return self.arr(x["$np"])[()]
        if "$bytes" in x:
            return self.arr(x["$bytes"]).tobytes()
        if "$torch" in x:
            import torch

            return torch.from_numpy(self.arr(x["$torch"]).copy())
        if "$tuple" in x:
            return tuple(self.dec(v) for v in x["$tuple"])
        if "$dict" in x:
            return {_hashable(self.dec(k)): self.dec(v) for k, v in x["$dict"]}
        if "$dc" in x:
            cls = _resolve(x["$dc"], self.allowed)
            if not dataclasses.is_dataclass(cls):
                raise ConfigError(f"{x['$dc']!r} is not a dataclass")
            values = {k: self.dec(v) for k, v in x["f"].items()}
            fields = {f.name: f for f in dataclasses.fields(cls)}
            if set(values) != set(fields):
                raise ConfigError(f"{x['$dc']} has fields {sorted(fields)}, the state {sorted(values)}")
            obj = cls(**{k: v for k, v in values.items() if fields[k].init})
            for k, v in values.items():
                if not fields[k].init:
                    object.__setattr__(obj, k, v)
            return obj
        if "$sd" in x:
            obj = _resolve(x["$sd"], self.allowed)()
            obj.load_state_dict(self.dec(x["s"]))
            return obj
        return {k: self.dec(v) for k, v in x.items()}


def _hashable(k: Any) -> Any:
    return tuple(_hashable(v) for v in k) if isinstance(k, list) else k


def decode_state(data: bytes, *, allowed_modules: Iterable[str] = DEFAULT_ALLOWED_MODULES) -> Any:
    """Rebuild what :func:`encode_state` wrote; classes only from ``allowed_modules``."""
    data = bytes(data)
    if not data.startswith(MAGIC) or len(data) < len(MAGIC) + 4:
        raise ConfigError("not an encoded client state (bad magic)")
    (n,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    try:
        skeleton = json.loads(data[start:start + n])
    except ValueError as exc:
        raise ConfigError(f"corrupt client state skeleton: {exc}") from None
    buf = io.BytesIO(data[start + n:])
    arrays = []
    while buf.tell() < len(buf.getbuffer()):
        arrays.append(np.load(buf, allow_pickle=False))
    return _Decoder(arrays, tuple(allowed_modules)).dec(skeleton)
