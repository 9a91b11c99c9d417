"""Codec registry: codec classes by name (``codec_id``) and by wire id.

Third-party codecs register the same way ours do, so ``get_codec(config)``, bundles and the
generic :func:`sparsecodec.decode` work for them too.

Wire ids (the byte after the flags in every frame):

* 1..63 (:data:`BUILTIN_WIRE_IDS`): sparsecodec's own codecs;
* 64..123 (:data:`USER_WIRE_IDS`): free for third-party codecs;
* 124..127 (:data:`RESERVED_WIRE_IDS`): message kinds that are not codecs (bundles, compact
  messages, downlink patches); 0 and 128..255 are unassigned and rejected.

Example:
    >>> import sparsecodec as sc
    >>> codec = sc.get_codec({"id": "topk", "k": 10})
    >>> codec == sc.TopK(k=10)
    True
    >>> sc.registry.check_wire_id(126, "MyCodec")
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: MyCodec.wire_id 126 (0x7e) is reserved for schema bundles; user codecs take wire ids 64..123
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeVar

from .errors import ConfigError, CorruptFrameError

if TYPE_CHECKING:
    from .abc import Codec

__all__ = ["register_codec", "get_codec", "codec_class", "codec_for_wire_id",
           "codec_name_for_wire_id", "registered_codecs", "check_wire_id", "BUILTIN_WIRE_IDS",
           "USER_WIRE_IDS", "RESERVED_WIRE_IDS", "MESSAGE_KINDS", "BUNDLE_WIRE_ID",
           "SCHEMA_BUNDLE_WIRE_ID", "PACKED_WIRE_ID", "PATCH_WIRE_ID"]

_BY_NAME: dict[str, type[Codec]] = {}
_BY_WIRE: dict[int, type[Codec]] = {}
BUILTIN_WIRE_IDS = range(1, 64)
USER_WIRE_IDS = range(64, 124)
# The registry owns every wire id: the codecs' (registered below) and those of the message
# kinds that are not one codec's frame, which frame.py, bundle.py, packed.py and patch.py import
# from here (so the registry imports none of them).
PATCH_WIRE_ID = 0x7C
PACKED_WIRE_ID = 0x7D
SCHEMA_BUNDLE_WIRE_ID = 0x7E
BUNDLE_WIRE_ID = 0x7F
#: wire ids of the message kinds that are not codecs
RESERVED_WIRE_IDS: dict[int, str] = {
    PATCH_WIRE_ID: "downlink patches (sparsecodec.patch)",
    PACKED_WIRE_ID: "compact messages (sparsecodec.packed)",
    SCHEMA_BUNDLE_WIRE_ID: "schema bundles",
    BUNDLE_WIRE_ID: "bundles",
}
#: the name :func:`codec_name_for_wire_id` gives each message kind
MESSAGE_KINDS: dict[int, str] = {BUNDLE_WIRE_ID: "bundle", SCHEMA_BUNDLE_WIRE_ID: "bundle",
                                 PACKED_WIRE_ID: "packed", PATCH_WIRE_ID: "patch"}
# Built-in codecs live in modules imported lazily by ``sparsecodec/__init__``; a lookup that
# misses imports them so that ``sparsecodec.decode`` works before the codec was touched.
_BUILTIN_MODULES = ("topk", "dense", "mask")

C = TypeVar("C", bound="type[Codec]")


def _import_builtins() -> None:
    import importlib

    for mod in _BUILTIN_MODULES:
        importlib.import_module(f"sparsecodec.{mod}")


def check_wire_id(wire_id: Any, owner: str = "codec", *, builtin: bool = False) -> int:
    """``wire_id`` if a codec may use it, else a :class:`ConfigError` saying which ids are free.

    ``builtin`` allows sparsecodec's own range 1..63 (used for classes defined in sparsecodec).
    """
    free = f"user codecs take wire ids {USER_WIRE_IDS.start}..{USER_WIRE_IDS.stop - 1}"
    if isinstance(wire_id, bool) or not isinstance(wire_id, int):
        raise ConfigError(f"{owner} needs an int class attribute wire_id ({free}); "
                          f"got {wire_id!r}")
    if wire_id in RESERVED_WIRE_IDS:
        raise ConfigError(f"{owner}.wire_id {wire_id} (0x{wire_id:02x}) is reserved for "
                          f"{RESERVED_WIRE_IDS[wire_id]}; {free}")
    if wire_id in BUILTIN_WIRE_IDS and not builtin:
        raise ConfigError(f"{owner}.wire_id {wire_id} is in 1..63, reserved for sparsecodec's "
                          f"built-in codecs; {free}")
    if wire_id not in BUILTIN_WIRE_IDS and wire_id not in USER_WIRE_IDS:
        raise ConfigError(f"{owner}.wire_id {wire_id} is not an assigned codec id; {free}")
    return wire_id


def _is_builtin(cls: type) -> bool:
    return (cls.__module__ or "").split(".")[0] == "sparsecodec"


def register_codec(cls: C) -> C:
    """Class decorator: make a :class:`~sparsecodec.Codec` subclass findable.

    It checks ``codec_id`` (a non-empty str) and ``wire_id`` (64..123 for codecs defined
    outside sparsecodec; bundle and message ids are rejected) and that neither is taken by
    another class. Re-registering a class of the same qualified name (a reloaded module)
    replaces it.
    """
    name = getattr(cls, "codec_id", None)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{cls.__name__} needs a non-empty str class attribute codec_id")
    wire = check_wire_id(getattr(cls, "wire_id", None), cls.__name__, builtin=_is_builtin(cls))
    for other, key in ((_BY_NAME.get(name), repr(name)), (_BY_WIRE.get(wire), f"wire id {wire}")):
        if other is not None and other.__qualname__ != cls.__qualname__:
            raise ConfigError(f"{cls.__name__}: {key} is already registered by {other.__name__}")
    _BY_NAME[name] = cls
    _BY_WIRE[wire] = cls
    return cls


def registered_codecs() -> dict[str, type[Codec]]:
    _import_builtins()
    return dict(_BY_NAME)


def codec_class(name: str) -> type[Codec]:
    if name not in _BY_NAME:
        _import_builtins()
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ConfigError(f"unknown codec {name!r}; registered: {sorted(_BY_NAME)}") from None


def get_codec(config: dict[str, Any]) -> Codec:
    """Build a codec from ``codec.get_config()`` output."""
    if not isinstance(config, dict) or "id" not in config:
        raise ConfigError("a codec config is a dict with an 'id' key, e.g. {'id': 'topk', 'k': 10}")
    return codec_class(config["id"]).from_config(config)


def codec_for_wire_id(wire_id: int) -> type[Codec]:
    if wire_id not in _BY_WIRE:
        _import_builtins()
    try:
        return _BY_WIRE[wire_id]
    except KeyError:
        raise CorruptFrameError(
            f"frame names codec wire id {wire_id}, which no registered codec uses "
            f"(known: {sorted(_BY_WIRE)}); import the package that defines it") from None


def codec_name_for_wire_id(wire_id: int) -> str:
    """The codec id, or the message kind (``"bundle"``, ``"packed"``, ``"patch"``)."""
    if wire_id in MESSAGE_KINDS:
        return MESSAGE_KINDS[wire_id]
    return codec_for_wire_id(wire_id).codec_id
