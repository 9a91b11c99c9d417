"""Generic decoding: the frame names its codec, so no configuration is needed.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.0, 3.0, -1.0, 0.5], np.float32)
    >>> sc.decode(bytes(sc.TopK(k=2).encode(x))).tolist()
    [0.0, 3.0, -1.0, 0.0]

Side information is checked against what the frame's codec takes (its ``side_keys`` class
attribute, empty when absent), because the frame, not the caller, picks the codec:

    >>> sc.decode(sc.Dense().encode(x), p=0.5)   # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sparsecodec.errors.SideInfoMismatchError: the frame is a 'dense' frame, which takes no side information, but p= was passed...
"""

from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from .errors import ConfigError, SideInfoMismatchError
from .frame import BUNDLE_WIRE_ID, DEFAULT_MAX_NUMEL, SCHEMA_BUNDLE_WIRE_ID, FrameReader
from .registry import codec_for_wire_id

__all__ = ["decode"]

_BUNDLE_KEYS = ("side", "schema")


def check_side(what: str, takes: Iterable[str], offered: Iterable[str]) -> None:
    """Raise :class:`SideInfoMismatchError` if ``offered`` holds keys ``takes`` lacks.

    ``what`` names the frame (``"a 'dense' frame"``, ``"entry 'w' (a 'dense' body)"``).
    """
    takes = tuple(takes)
    extra = sorted(set(offered) - set(takes))
    if extra:
        names = ", ".join(f"{k}=" for k in extra)
        accepts = ("takes no side information" if not takes
                   else "takes only " + ", ".join(f"{k}=" for k in takes))
        raise SideInfoMismatchError(
            f"the frame is {what}, which {accepts}, but {names} was passed: the bytes are not "
            "the kind of frame this call expects (crafted, or encoded by another codec)")


def side_keys(cls: type) -> tuple[str, ...]:
    """The side-information keyword arguments a codec class's decoder takes."""
    return tuple(getattr(cls, "side_keys", ()))


def decode(data, *, max_numel: int = DEFAULT_MAX_NUMEL, out: np.ndarray | None = None,
           as_torch: bool = False, **side: Any) -> Any:
    """Decode any sparsecodec frame: an array, or ``{name: array}`` for a bundle.

    ``max_numel`` caps what a hostile frame can make the decoder allocate. Side information
    (``p=`` for per-entry mask models) is passed through to the codec; for bundles pass
    ``side={name: {...}}`` and, for a bundle encoded against one, ``schema=``. Side
    information the frame's codec does not take is a :class:`~sparsecodec.errors.FrameError`
    (:class:`~sparsecodec.errors.SideInfoMismatchError`) naming the mismatch. ``out``: an
    array of the frame's dtype and shape to decode a single tensor into. ``as_torch=True``
    returns CPU torch tensors sharing memory with the decoded arrays (torch must be installed).
    """
    result = _decode(data, max_numel, out, side)
    if not as_torch:
        return result
    from ._arrays import to_torch

    return {n: to_torch(a) for n, a in result.items()} if isinstance(result, dict) else to_torch(result)


def _decode(data, max_numel: int, out, side: dict) -> np.ndarray | dict:
    side = {k: v for k, v in side.items() if v is not None}   # None means "not offered"
    r = FrameReader(data, max_numel=max_numel)
    if r.wire_id in (BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID):
        from .bundle import _read_entries

        check_side("a bundle", _BUNDLE_KEYS, side)
        if out is not None:
            raise ConfigError("out= is for single-tensor frames; this frame is a bundle")
        return _read_entries(r, max_numel, side.get("side") or {}, side.get("schema"))
    cls = codec_for_wire_id(r.wire_id)
    check_side(f"a {cls.codec_id!r} frame", side_keys(cls), side)
    x = cls._read_body(r, out=out, **side)
    r.expect_end()
    return x
