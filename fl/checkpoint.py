"""Checkpoints as files that are data, not code: no pickle, a SHA-256 digest, atomic writes.

A checkpoint is the nested dict of :meth:`fl.simulation.Simulation.state_dict` (server and
client states, generator states, ledger, metrics) in the hardened encoding of
:mod:`fl.flower.state` (a JSON skeleton plus raw little-endian arrays; classes only from its
exact registry), behind a small self-describing header::

    b"FLCKPT\\r\\n" | u16 version | u32 header length | header JSON | payload (FLST2 bytes)
    header = {"format": "fl.checkpoint", "version": 1, "encoding": "FLST2",
              "payload_bytes": N, "sha256": "<hex of the payload>"}

Loading checks, in this order and before reading more than the header: the file's size against
``max_bytes``, the magic, the version, the header, ``payload_bytes`` against the file's size;
then the digest of the payload, then decodes it with :func:`fl.flower.state.decode_state`'s
bounds. Anything wrong (a flipped byte, a truncated file, a pickle, a foreign file) raises one
:class:`CheckpointError` (a :class:`sparsecodec.FrameError`) naming the file; nothing in the
file is ever executed. The ``\\r\\n`` in the magic catches a file mangled by text-mode copying.

    >>> import os, tempfile, numpy as np
    >>> from fl.algorithms.base import ServerState
    >>> path = os.path.join(tempfile.mkdtemp(), "checkpoint.ckpt")
    >>> save_checkpoint(path, {"rounds_done": 2, "server": ServerState({"w": np.ones(3, np.float32)})})
    >>> load_checkpoint(path)["server"].params["w"].tolist()
    [1.0, 1.0, 1.0]
    >>> with open(path, "r+b") as f:            # one flipped bit in the payload
    ...     _ = f.seek(-1, os.SEEK_END); b = f.read(1); _ = f.seek(-1, os.SEEK_END)
    ...     _ = f.write(bytes([b[0] ^ 1]))
    >>> load_checkpoint(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    fl.checkpoint.CheckpointError: .../checkpoint.ckpt: SHA-256 of the payload does not match the header (corrupt file)
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any, Iterable

from sparsecodec.errors import FrameError

from .flower.state import MAGIC as STATE_MAGIC
from .flower.state import StateError, decode_state, encode_state

__all__ = ["save_checkpoint", "load_checkpoint", "CheckpointError", "VERSION", "DEFAULT_MAX_BYTES"]

MAGIC = b"FLCKPT\r\n"
VERSION = 1
_PREFIX = struct.Struct("<HI")         # version, header length
_HEAD = len(MAGIC) + _PREFIX.size
_MAX_HEADER = 4096
_HEADER_KEYS = {"format", "version", "encoding", "payload_bytes", "sha256"}
#: Bounds for :func:`load_checkpoint`: a checkpoint holds every client's state, so they are
#: generous; pass lower ones for files of unknown origin.
DEFAULT_MAX_BYTES = 1 << 34
DEFAULT_MAX_SKELETON_BYTES = 1 << 28


class CheckpointError(FrameError):
    """A checkpoint file is corrupt, truncated, foreign, or over the caller's limits."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any], *, classes: Iterable[type] = ()) -> None:
    """Write ``state`` to ``path`` atomically (a temporary file in the same directory, fsync,
    then ``os.replace``): a crash leaves the old checkpoint or the new one, never half of one.

    ``classes``: state classes beyond :data:`fl.flower.state.STATE_CLASSES` (a custom
    algorithm's); an object the encoding cannot hold raises :class:`sparsecodec.ConfigError`."""
    payload = encode_state(state, classes=classes)
    header = json.dumps({"format": "fl.checkpoint", "version": VERSION, "encoding": STATE_MAGIC.decode(),
                         "payload_bytes": len(payload), "sha256": hashlib.sha256(payload).hexdigest()},
                        separators=(",", ":"), sort_keys=True).encode()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + _PREFIX.pack(VERSION, len(header)) + header)
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _header(path: Path, head: bytes, raw: bytes, size: int) -> dict[str, Any]:
    def fail(why: str) -> CheckpointError:
        return CheckpointError(f"{path}: {why}")

    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise fail("corrupt checkpoint header (not JSON)") from None
    if not isinstance(header, dict) or set(header) != _HEADER_KEYS:
        keys = sorted(header)[:8] if isinstance(header, dict) else type(header).__name__
        raise fail(f"corrupt checkpoint header (keys {keys})")
    n, digest = header["payload_bytes"], header["sha256"]
    if (header["format"] != "fl.checkpoint" or header["version"] != VERSION
            or header["encoding"] != STATE_MAGIC.decode()):
        raise fail(f"unsupported checkpoint header {header['format']!r} v{header['version']!r} "
                   f"{header['encoding']!r}")
    if type(n) is not int or n != size - len(head) - len(raw):
        raise fail(f"header declares a {n!r}-byte payload, the file holds {size - len(head) - len(raw)} "
                   "(truncated or corrupt file)")
    if not (isinstance(digest, str) and len(digest) == 64 and all(c in "0123456789abcdef" for c in digest)):
        raise fail("corrupt checkpoint header (sha256)")
    return header


def load_checkpoint(path: str | os.PathLike, *, classes: Iterable[type] = (),
                    max_bytes: int = DEFAULT_MAX_BYTES, max_numel: int | None = None,
                    max_skeleton_bytes: int = DEFAULT_MAX_SKELETON_BYTES) -> dict[str, Any]:
    """Read what :func:`save_checkpoint` wrote; every failure is a :class:`CheckpointError`
    naming ``path`` (a missing file stays a ``FileNotFoundError``).

    ``max_bytes`` bounds the file's size (checked before reading it), ``max_numel`` the arrays'
    elements in all (default: ``max_bytes``), ``max_skeleton_bytes`` the JSON part; memory used
    is about the file's size plus the skeleton's Python objects."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise CheckpointError(f"{path}: {size} bytes exceed max_bytes={max_bytes}")
        head = f.read(_HEAD)
        if not head.startswith(MAGIC):
            hint = (" (a pickle, e.g. a checkpoint.pkl from before issue 16: not loaded, pickles "
                    "can run code)" if head[:1] == b"\x80" else "")
            raise CheckpointError(f"{path}: not an fl checkpoint (starts with {head[:8]!r}){hint}")
        if len(head) < _HEAD:
            raise CheckpointError(f"{path}: truncated checkpoint ({size} bytes)")
        version, n = _PREFIX.unpack_from(head, len(MAGIC))
        if version != VERSION:
            raise CheckpointError(f"{path}: checkpoint version {version}, this code reads {VERSION}")
        if n > _MAX_HEADER or n > size - _HEAD:
            raise CheckpointError(f"{path}: header length {n} (max {_MAX_HEADER}, file {size} bytes)")
        raw = f.read(n)
        header = _header(path, head, raw, size)
        payload = f.read(header["payload_bytes"] + 1)          # +1: a file that grew is caught
    if len(payload) != header["payload_bytes"]:
        raise CheckpointError(f"{path}: the file changed while it was read")
    if hashlib.sha256(payload).hexdigest() != header["sha256"]:
        raise CheckpointError(f"{path}: SHA-256 of the payload does not match the header (corrupt file)")
    try:
        state = decode_state(payload, classes=classes, max_bytes=max_bytes,
                             max_numel=max_bytes if max_numel is None else max_numel,
                             max_skeleton_bytes=max_skeleton_bytes)
    except StateError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: a checkpoint holds a dict, this one a {type(state).__name__}")
    return state
