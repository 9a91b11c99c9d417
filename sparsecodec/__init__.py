"""sparsecodec: communication-compression codecs for federated learning.

Exact top-k selection, index sets coded near ``log2 C(n, k)``, entropy-coded binary masks,
error feedback, and a versioned, validated wire format whose bit counts are read from the
bytes actually produced.

    >>> import numpy as np, sparsecodec as sc
    >>> x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    >>> codec = sc.TopK(k=100)
    >>> frame = codec.encode(x)
    >>> frame.nbits == 8 * len(bytes(frame))
    True
    >>> x_hat = sc.decode(bytes(frame))
    >>> bool(np.all(x_hat[sc.topk_indices(x, 100)] == x[sc.topk_indices(x, 100)]))
    True

Submodules are imported on first use, so ``import sparsecodec`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .errors import (BadMagicError, ChecksumError, ConfigError, CorruptFrameError, FrameError,
                     LimitExceededError, SideInfoMismatchError, SparseCodecError,
                     TruncatedFrameError, UnsupportedVersionError)
from .frame import DEFAULT_MAX_NUMEL, FORMAT_VERSION, Frame, FrameReader, FrameWriter
from .info import FrameInfo, frame_info

__version__ = "0.1.0"

# public name -> submodule that defines it (imported lazily, PEP 562)
_LAZY = {
    "Codec": "abc",
    "register_codec": "registry", "get_codec": "registry", "registered_codecs": "registry",
    "topk_indices": "selection", "topk_indices_global": "selection", "check_finite": "selection",
    "TopK": "topk", "k_for": "topk",
    "Dense": "dense",
    "MaskCodec": "mask",
    "ErrorFeedback": "feedback",
    "Reconstruction": "reconstruction", "SparseRecon": "reconstruction",
    "DenseRecon": "reconstruction", "IdentityRecon": "reconstruction",
    "encode_bundle": "bundle", "decode_bundle": "bundle", "Bundle": "bundle", "Schema": "bundle",
    "decode": "generic",
    "inspect_frame": "inspect", "inspect_bundle": "inspect", "inspect_message": "inspect",
    "MessageSpec": "packed", "encode_packed": "packed", "decode_packed": "packed",
    "bounds": None, "testing": None, "indices": None, "values": None, "registry": None,
}

if TYPE_CHECKING:
    # what the lazy table resolves to, spelled out for type checkers and IDEs (without it every
    # sc.* is Any); tests/test_packaging.py checks that it names exactly the keys of _LAZY
    from . import bounds, indices, registry, testing, values
    from .abc import Codec
    from .bundle import Bundle, Schema, decode_bundle, encode_bundle
    from .dense import Dense
    from .feedback import ErrorFeedback
    from .generic import decode
    from .inspect import inspect_bundle, inspect_frame, inspect_message
    from .mask import MaskCodec
    from .packed import MessageSpec, decode_packed, encode_packed
    from .reconstruction import DenseRecon, IdentityRecon, Reconstruction, SparseRecon
    from .registry import get_codec, register_codec, registered_codecs
    from .selection import check_finite, topk_indices, topk_indices_global
    from .topk import TopK, k_for

__all__ = sorted(
    ["__version__", "FORMAT_VERSION", "DEFAULT_MAX_NUMEL", "Frame", "FrameWriter", "FrameReader",
     "frame_info",
     "SparseCodecError", "ConfigError", "FrameError", "TruncatedFrameError", "BadMagicError",
     "UnsupportedVersionError", "ChecksumError", "CorruptFrameError", "LimitExceededError",
     "SideInfoMismatchError"]
    + list(_LAZY))


# hidden from type checkers, so that a misspelt sc.Name is an error there rather than Any
if not TYPE_CHECKING:
    def __getattr__(name: str):
        if name not in _LAZY:
            raise AttributeError(f"module 'sparsecodec' has no attribute {name!r}")
        mod = _LAZY[name]
        if mod is None:
            value = importlib.import_module(f".{name}", __name__)
        else:
            value = getattr(importlib.import_module(f".{mod}", __name__), name)
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return __all__
