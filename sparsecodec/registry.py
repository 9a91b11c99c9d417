"""Codec registry: codec classes by name (``codec_id``) and by wire id.

Third-party codecs register the same way ours do, so ``get_codec(config)`` and the generic
:func:`sparsecodec.decode` work for them too.

Example:
    >>> import sparsecodec as sc
    >>> codec = sc.get_codec({"id": "topk", "k": 10})
    >>> codec == sc.TopK(k=10)
    True
"""

from __future__ import annotations

from typing import Any

from .errors import ConfigError, CorruptFrameError

__all__ = ["register_codec", "get_codec", "codec_class", "codec_for_wire_id",
           "codec_name_for_wire_id", "registered_codecs"]

_BY_NAME: dict[str, type] = {}
_BY_WIRE: dict[int, type] = {}
# Wire ids 1..63 are sparsecodec's own; 64..126 are free for users; 127 is the bundle.
USER_WIRE_IDS = range(64, 127)
# Built-in codecs live in modules imported lazily by ``sparsecodec/__init__``; a lookup that
# misses imports them so that ``sparsecodec.decode`` works before the codec was touched.
_BUILTIN_MODULES = ("topk", "dense", "mask")


def _import_builtins() -> None:
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"sparsecodec.{mod}")


def register_codec(cls):
    """Class decorator: make a :class:`~sparsecodec.abc.Codec` subclass findable."""
    name = getattr(cls, "codec_id", None)
    wire = getattr(cls, "wire_id", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{cls.__name__} needs a non-empty str class attribute codec_id")
    if not isinstance(wire, int) or not 1 <= wire <= 126:
        raise ConfigError(f"{cls.__name__}.wire_id must be an int in 1..126 (64..126 for user codecs)")
    for table, key in ((_BY_NAME, name), (_BY_WIRE, wire)):
        other = table.get(key)
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ConfigError(f"{key!r} is already registered by {other.__name__}")
    _BY_NAME[name] = cls
    _BY_WIRE[wire] = cls
    return cls


def registered_codecs() -> dict[str, type]:
    _import_builtins()
    return dict(_BY_NAME)


def codec_class(name: str) -> type:
    if name not in _BY_NAME:
        _import_builtins()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}; registered: {sorted(_BY_NAME)}") from None


def get_codec(config: dict[str, Any]):
    """Build a codec from ``codec.get_config()`` output."""
    if not isinstance(config, dict) or "id" not in config:
        raise ConfigError("a codec config is a dict with an 'id' key, e.g. {'id': 'topk', 'k': 10}")
    return codec_class(config["id"]).from_config(config)


def codec_for_wire_id(wire_id: int) -> type:
    if wire_id not in _BY_WIRE:
        _import_builtins()
    try:
        return _BY_WIRE[wire_id]
    except KeyError:
        raise CorruptFrameError(
            f"frame names codec wire id {wire_id}, which no registered codec uses "
            f"(known: {sorted(_BY_WIRE)}); import the package that defines it") from None


def codec_name_for_wire_id(wire_id: int) -> str:
    from .frame import BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID

    if wire_id in (BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID):
        return "bundle"
    return codec_for_wire_id(wire_id).codec_id
