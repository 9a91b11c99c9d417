"""Generic decoding: the frame names its codec, so no configuration is needed.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.0, 3.0, -1.0, 0.5], np.float32)
    >>> sc.decode(bytes(sc.TopK(k=2).encode(x))).tolist()
    [0.0, 3.0, -1.0, 0.0]
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .frame import BUNDLE_WIRE_ID, DEFAULT_MAX_NUMEL, SCHEMA_BUNDLE_WIRE_ID, FrameReader
from .registry import codec_for_wire_id

__all__ = ["decode"]


def decode(data, *, max_numel: int = DEFAULT_MAX_NUMEL, **side: Any) -> np.ndarray | dict:
    """Decode any sparsecodec frame: an array, or ``{name: array}`` for a bundle.

    ``max_numel`` caps what a hostile frame can make the decoder allocate. Side information
    (``p=`` for per-entry mask models) is passed through to the codec; for bundles pass
    ``side={name: {...}}`` and, for a bundle encoded against one, ``schema=``.
    """
    r = FrameReader(data, max_numel=max_numel)
    if r.wire_id in (BUNDLE_WIRE_ID, SCHEMA_BUNDLE_WIRE_ID):
        from .bundle import _read_entries

        return _read_entries(r, max_numel, side.get("side") or {}, side.get("schema"))
    x = codec_for_wire_id(r.wire_id)._read_body(r, **side)
    r.expect_end()
    return x
