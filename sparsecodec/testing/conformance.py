"""A conformance suite any :class:`sparsecodec.Codec` can be checked with, ours or yours.

``check_codec(codec)`` runs hypothesis over generated updates and asserts, for each input:

1. exact accounting: ``frame.nbits == 8 * len(bytes(frame)) == sum(frame.sections.values())``;
2. values: ``codec.decode(bytes(frame))`` has the input's shape and holds the *right* values,
   judged against something the decoder did not produce:

   * ``lossless=True``: the input itself, bit for bit (same dtype, ``-0.0`` kept);
   * ``reference=fn``: ``fn(x)``, the reconstruction the codec promises (e.g. a plain numpy
     quantize-dequantize), exactly, or within ``atol``/``rtol`` when given;
   * ``atol=``/``rtol=`` alone: the input, within ``|y - x| <= atol + rtol * |x|``;
   * none of these: the codec's own reconstruction (same dtype and bits), which is only
     independent of the decoder when its ``write_body`` returns a
     :class:`~sparsecodec.Reconstruction` (TopK, Dense, MaskCodec do) or it overrides
     ``encode_and_reconstruct``. For a codec whose ``write_body`` returns ``None`` the base
     class decodes the frame to learn it, so the check would compare the decoder with itself:
     it refuses with a ConfigError instead;

   and in every case the decoded values equal the codec's reconstruction
   (:meth:`~sparsecodec.Codec.encode_with_reconstruction`, or ``encode_and_reconstruct`` when
   overridden), which error feedback relies on;
3. determinism: encoding twice gives the same bytes;
4. configuration: ``from_config(get_config())`` rebuilds an equal codec (the config is
   JSON-safe);
5. registry (registered codecs only): ``sparsecodec.decode`` and a bundle round trip give the
   same array as ``codec.decode``, and ``get_codec(get_config()) == codec``;
6. hostile bytes: every truncation, a trailing byte, and random single-bit flips raise a
   :class:`sparsecodec.FrameError` subclass, or (flips, checksum off) decode to an array of
   the *same* shape and dtype; with the checksum on every flip must be detected.

An unregistered codec is checked too (property 5 is skipped: nothing could find it by id); its
``wire_id`` must still be a valid codec id, and a codec whose ``codec_id`` or ``wire_id``
belongs to another registered class is refused with a ConfigError saying so.

Inputs the codec rejects with :class:`sparsecodec.ConfigError` (say ``k > numel``) are skipped
with ``hypothesis.assume``; any other exception fails the check.

Example:
    >>> import sparsecodec as sc
    >>> from sparsecodec.testing import check_codec
    >>> check_codec(sc.TopK(density=0.1), max_examples=5)
    >>> check_codec(sc.Dense(), max_examples=5, lossless=True)
"""

from __future__ import annotations

import json
from typing import Any, Callable

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ..errors import ConfigError, FrameError
from .strategies import update_tensors

__all__ = ["check_codec", "check_frame_properties", "check_hostile_bytes", "is_registered"]

Reference = Callable[[np.ndarray], Any]


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype
            and a.tobytes() == np.ascontiguousarray(b).tobytes())


def _first_difference(y: np.ndarray, e: np.ndarray, close: np.ndarray | None = None) -> str:
    """Where ``y`` and the expected ``e`` first differ, for the assertion message."""
    if y.shape != e.shape:
        return f"shape {y.shape} != expected {e.shape}"
    if close is None:
        if y.dtype != e.dtype:
            return f"dtype {y.dtype} != expected {e.dtype}"
        close = y == e
        if y.dtype.kind == "f":   # bit equality: -0.0 is not 0.0, NaN is NaN
            close = (close & (np.signbit(y) == np.signbit(e))) | (np.isnan(y) & np.isnan(e))
    bad = np.flatnonzero(~np.asarray(close).reshape(-1))
    if not bad.size:
        return "same values, different bytes"
    i = int(bad[0])
    return (f"{bad.size} of {y.size} values wrong; first at flat index {i}: decoded "
            f"{y.reshape(-1)[i]!r}, expected {e.reshape(-1)[i]!r}")


def _check_values(codec, x: np.ndarray, y: np.ndarray, x_hat: np.ndarray, *, lossless: bool,
                  reference: Reference | None, atol: float | None, rtol: float | None) -> None:
    name = type(codec).__name__
    if atol is None and rtol is None:
        if lossless or reference is not None:
            e = x if lossless else np.asarray(reference(x))   # type: ignore[misc]
            what = "the input (lossless=True)" if lossless else "reference(x)"
            assert _same(y, e), f"{name}: decode(bytes) differs from {what}: {_first_difference(y, e)}"
    else:
        e = np.asarray(reference(x)) if reference is not None else x
        assert y.shape == e.shape, f"{name}: decoded shape {y.shape} != expected {e.shape}"
        close = np.isclose(y.astype(np.float64), e.astype(np.float64), rtol=rtol or 0.0,
                           atol=atol or 0.0, equal_nan=True)
        assert close.all(), (f"{name}: decode(bytes) is not within atol={atol}, rtol={rtol} of "
                             f"{'reference(x)' if reference is not None else 'the input'}: "
                             f"{_first_difference(y, e, close)}")
    assert _same(y, x_hat), (f"{name}: decode(bytes) differs from the codec's reconstruction "
                             f"(encode_and_reconstruct's x_hat): {_first_difference(y, x_hat)}")


class _NoExpectation(ConfigError):
    """The refusal of a check that could only compare the decoder with itself."""


def _refuse_without_expectation(codec) -> None:
    raise _NoExpectation(
        f"check_codec cannot tell right values from wrong ones for {type(codec).__name__}: "
        "its write_body returns no reconstruction, so Codec derives it by decoding the frame, "
        "and the round trip would compare the decoder with itself. Pass lossless=True, "
        "reference=fn (x -> the reconstruction the codec promises) or atol=/rtol= (closeness "
        "to the input), or return a sparsecodec.Reconstruction from write_body")


def _encode_with_expectation(codec, x, side) -> tuple[Any, np.ndarray, bool]:
    """(frame, x_hat, independent): the codec's reconstruction, and whether the decoder made it."""
    from ..abc import Codec
    from ..reconstruction import DenseRecon

    if type(codec).encode_and_reconstruct is not Codec.encode_and_reconstruct:
        frame, x_hat = codec.encode_and_reconstruct(x, **side)     # the codec's own override
        return frame, np.asarray(x_hat), True
    frame, recon = codec.encode_with_reconstruction(x, **side)
    return frame, recon.to_dense(), not (isinstance(recon, DenseRecon) and recon.decoded)


def _has_expectation(lossless: bool, reference: Reference | None, atol, rtol) -> bool:
    return lossless or reference is not None or atol is not None or rtol is not None


def _validate_options(codec, lossless: bool, reference: Reference | None, atol, rtol) -> None:
    if lossless and (reference is not None or atol is not None or rtol is not None):
        raise ConfigError("lossless=True already fixes the expected values (the input, bit for "
                          "bit); do not combine it with reference= or atol=/rtol=")
    if reference is not None and not callable(reference):
        raise ConfigError("reference= is a function x -> expected reconstruction")
    for tol in (atol, rtol):
        if tol is not None and not (isinstance(tol, (int, float)) and tol >= 0):
            raise ConfigError(f"atol/rtol must be numbers >= 0, got {tol!r}")


def is_registered(codec) -> bool:
    """Whether ``sparsecodec.decode`` / ``get_codec`` find ``codec``'s own class.

    False for a codec registered under neither id; a ConfigError when its ``codec_id`` or
    ``wire_id`` belongs to another class (the generic decoder would read its frames with that
    class), or when its ``wire_id`` is not a valid codec id.
    """
    from ..registry import _BY_WIRE, _is_builtin, check_wire_id, registered_codecs

    cls = type(codec)
    cid = getattr(cls, "codec_id", None)
    if not isinstance(cid, str) or not cid:
        raise ConfigError(f"{cls.__name__} needs a non-empty str class attribute codec_id")
    wire = getattr(cls, "wire_id", None)
    by_name = registered_codecs().get(cid)
    by_wire = _BY_WIRE.get(wire) if isinstance(wire, int) else None
    if by_name is cls and by_wire is cls:
        return True
    taken = [f"{what} is registered by {other.__module__}.{other.__qualname__}"
             for what, other in ((f"codec_id {cid!r}", by_name), (f"wire id {wire}", by_wire))
             if other is not None and other is not cls]
    if taken or by_name is cls or by_wire is cls:
        raise ConfigError(
            f"{cls.__name__}'s {' and '.join(taken) or 'ids are registered inconsistently'}: "
            "sparsecodec.decode would read its frames with another class. Give it its own "
            "codec_id and a free wire_id (64..123) and decorate it with "
            "@sparsecodec.register_codec")
    check_wire_id(wire, cls.__name__, builtin=_is_builtin(cls))
    return False


def check_frame_properties(codec, x: np.ndarray, *, lossless: bool = False,
                           reference: Reference | None = None, atol: float | None = None,
                           rtol: float | None = None, registered: bool | None = None,
                           **side: Any) -> None:
    """Properties 1-5 for one input (raises AssertionError with a reason).

    ``registered`` (default: looked up with :func:`is_registered`) says whether property 5
    applies. Without ``lossless``/``reference``/``atol``/``rtol``, a codec whose reconstruction
    comes from decoding its own frame is refused with a ConfigError.
    """
    import sparsecodec as sc

    _validate_options(codec, lossless, reference, atol, rtol)
    if registered is None:
        registered = is_registered(codec)
    frame, x_hat, independent = _encode_with_expectation(codec, x, side)
    if not (independent or _has_expectation(lossless, reference, atol, rtol)):
        _refuse_without_expectation(codec)
    data = bytes(frame)
    assert frame.nbits == 8 * len(data), "nbits must equal 8 * len(bytes(frame))"
    assert sum(frame.sections.values()) == frame.nbits, f"sections {frame.sections} do not sum to nbits"
    assert all(v >= 0 for v in frame.sections.values()), "negative section size"
    y = codec.decode(data, **side)
    assert y.shape == np.shape(x), f"decoded shape {y.shape} != input shape {np.shape(x)}"
    _check_values(codec, np.asarray(x), y, x_hat, lossless=lossless, reference=reference,
                  atol=atol, rtol=rtol)
    assert bytes(codec.encode(x, **side)) == data, "encoding is not deterministic"
    cfg = codec.get_config()
    json.dumps(cfg)
    assert type(codec).from_config(cfg) == codec, "from_config(get_config()) does not rebuild an equal codec"
    if registered:
        generic = sc.decode(data, **side)
        assert isinstance(generic, np.ndarray) and _same(generic, y), \
            "sparsecodec.decode differs from codec.decode"
        assert sc.get_codec(cfg) == codec, "get_codec(get_config()) does not rebuild an equal codec"
        bundle = sc.encode_bundle({"t": x}, codec, side={"t": side})
        got = sc.decode_bundle(bytes(bundle), side={"t": side})["t"]
        assert _same(got, y), "a bundle round trip differs from codec.decode"


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
                hostile: bool = True, lossless: bool = False, reference: Reference | None = None,
                atol: float | None = None, rtol: float | None = None, **side: Any) -> None:
    """Run the conformance properties against ``codec`` (see the module docstring).

    ``lossless``, ``reference``, ``atol`` and ``rtol`` say what the decoded values must be;
    ``inputs`` replaces the generated updates (a hypothesis strategy of arrays); ``side`` is
    passed to every encode and decode.
    """
    _validate_options(codec, lossless, reference, atol, rtol)
    registered = is_registered(codec)
    strategy = inputs if inputs is not None else update_tensors(max_numel=1500)
    refused: list[_NoExpectation] = []   # known only once the codec encoded an input

    @settings(max_examples=max_examples, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(x=strategy, seed=st.integers(0, 2**32 - 1))
    def run(x, seed):
        if refused:
            return
        try:
            frame = codec.encode(x, **side)
        except ConfigError:
            assume(False)
            return
        try:
            check_frame_properties(codec, x, lossless=lossless, reference=reference, atol=atol,
                                   rtol=rtol, registered=registered, **side)
        except _NoExpectation as exc:   # raised after the examples, not as a hypothesis failure
            refused.append(exc)
            return
        if hostile:
            check_hostile_bytes(codec, bytes(frame), np.shape(x), np.asarray(x).dtype,
                                rng=np.random.default_rng(seed), **side)

    run()
    if refused:
        raise ConfigError(str(refused[0])) from None
