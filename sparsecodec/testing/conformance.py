"""A conformance suite any :class:`sparsecodec.Codec` can be checked with, ours or yours.

``check_codec(codec)`` runs hypothesis over generated updates and asserts, for each input:

1. exact accounting: ``frame.nbits == 8 * len(bytes(frame)) == sum(frame.sections.values())``;
2. round trip: ``codec.decode(bytes(frame))`` equals ``encode_and_reconstruct``'s ``x_hat``
   (same shape, same dtype, same bits), and ``sparsecodec.decode`` agrees;
3. determinism: encoding twice gives the same bytes;
4. configuration: ``get_codec(codec.get_config()) == codec`` (the config is JSON-safe);
5. hostile bytes: every truncation, a trailing byte, and random single-bit flips raise a
   :class:`sparsecodec.FrameError` subclass, or (flips, checksum off) decode to an array of
   the *same* shape and dtype; with the checksum on every flip must be detected.

Inputs the codec rejects with :class:`sparsecodec.ConfigError` (say ``k > numel``) are skipped
with ``hypothesis.assume``; any other exception fails the check.

Example:
    >>> import sparsecodec as sc
    >>> from sparsecodec.testing import check_codec
    >>> check_codec(sc.TopK(density=0.1), max_examples=5)
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ..errors import ConfigError, FrameError
from .strategies import update_tensors

__all__ = ["check_codec", "check_frame_properties", "check_hostile_bytes"]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype
            and a.tobytes() == np.ascontiguousarray(b).tobytes())


def check_frame_properties(codec, x: np.ndarray, **side) -> None:
    """Properties 1-4 for one input (raises AssertionError with a reason)."""
    import sparsecodec as sc

    frame, x_hat = codec.encode_and_reconstruct(x, **side)
    data = bytes(frame)
    assert frame.nbits == 8 * len(data), "nbits must equal 8 * len(bytes(frame))"
    assert sum(frame.sections.values()) == frame.nbits, f"sections {frame.sections} do not sum to nbits"
    assert all(v >= 0 for v in frame.sections.values()), "negative section size"
    y = codec.decode(data, **side)
    assert _same(y, x_hat), "decode(bytes) differs from encode_and_reconstruct's x_hat"
    assert y.shape == np.shape(x), f"decoded shape {y.shape} != input shape {np.shape(x)}"
    assert _same(sc.decode(data, **side), y), "sparsecodec.decode differs from codec.decode"
    assert bytes(codec.encode(x, **side)) == data, "encoding is not deterministic"
    cfg = codec.get_config()
    json.dumps(cfg)
    assert sc.get_codec(cfg) == codec, "get_codec(get_config()) does not rebuild an equal codec"


def check_hostile_bytes(codec, data: bytes, shape, dtype, *, rng: np.random.Generator,
                        flips: int = 64, **side) -> None:
    """Property 5 for one encoded frame."""
    from ..frame import FLAG_CHECKSUM

    has_crc = len(data) > 3 and (data[3] & FLAG_CHECKSUM) == FLAG_CHECKSUM
    for cut in range(len(data)):
        try:
            codec.decode(data[:cut], **side)
        except FrameError:
            continue
        raise AssertionError(f"a frame truncated to {cut} of {len(data)} bytes decoded without error")
    try:
        codec.decode(data + b"\x00", **side)
    except FrameError:
        pass
    else:
        raise AssertionError("a trailing byte was accepted")
    nbits = 8 * len(data)
    positions = range(nbits) if nbits <= flips else rng.choice(nbits, size=flips, replace=False)
    for bit in positions:
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            y = codec.decode(bytes(bad), **side)
        except FrameError:
            continue
        if has_crc:
            raise AssertionError(f"checksum on, but flipping bit {bit} was not detected")
        assert y.shape == tuple(shape) and y.dtype == dtype, (
            f"flipping bit {bit} decoded to another shape/dtype {y.dtype}{y.shape}")


def check_codec(codec, *, max_examples: int = 50, inputs: st.SearchStrategy | None = None,
                hostile: bool = True, **side) -> None:
    """Run the conformance properties against ``codec`` (see the module docstring)."""
    strategy = inputs if inputs is not None else update_tensors(max_numel=1500)

    @settings(max_examples=max_examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(x=strategy, seed=st.integers(0, 2**32 - 1))
    def run(x, seed):
        try:
            frame = codec.encode(x, **side)
        except ConfigError:
            assume(False)
            return
        check_frame_properties(codec, x, **side)
        if hostile:
            check_hostile_bytes(codec, bytes(frame), np.shape(x), np.asarray(x).dtype,
                                rng=np.random.default_rng(seed), **side)

    run()
