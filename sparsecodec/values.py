"""Value coders: how the k kept values of a top-k frame are stored.

=========  =====  ===========================================================
name       bytes  rounding
=========  =====  ===========================================================
``fp32``   4      exact for float32 input; round-to-nearest-even from float64
``fp64``   8      exact for float32 and float64 input
``fp16``   2      IEEE half, round-to-nearest-even; |v| > 65504 is an error
``bf16``   2      bfloat16 (top 16 bits of float32), round-to-nearest-even
=========  =====  ===========================================================

All values are little-endian on the wire. The reconstruction ``v_hat`` is returned in the
input dtype, so error feedback can compute ``a - x_hat`` exactly: rounding to a coarser
format keeps ``v_hat`` within a factor 2 of ``v`` (same sign), so by Sterbenz's lemma the
residual ``v - v_hat`` is exact and ``v_hat + (v - v_hat) == v``.

Example:
    >>> import numpy as np
    >>> data, v_hat = encode_values(np.array([1.0, -2.5], np.float32), "bf16")
    >>> len(data), v_hat.tolist()
    (4, [1.0, -2.5])
    >>> decode_values(data, 2, "bf16", np.dtype(np.float32)).tolist()
    [1.0, -2.5]
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, CorruptFrameError

__all__ = ["VALUE_CODERS", "VALUE_BYTES", "encode_values", "decode_values"]

VALUE_CODERS = {"fp32": 0, "fp16": 1, "bf16": 2, "fp64": 3}   # wire ids: stable forever
VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}
_VALUE_NAMES = {v: k for k, v in VALUE_CODERS.items()}
_FP16_MAX = 65504.0


def value_coder_name(wire_id: int) -> str:
    try:
        return _VALUE_NAMES[wire_id]
    except KeyError:
        raise CorruptFrameError(f"unknown value coder id {wire_id}") from None


def _bf16_bits(v32: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round-to-nearest-even."""
    u = v32.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    # Rounding a NaN's payload can carry into the exponent and the sign (0x7FFFFFFF would
    # become 0x8000, -0.0): a NaN keeps its sign and top payload bits and is made quiet.
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = np.where(nan, (u >> 16) | 0x0040, rounded)
    return rounded.astype(np.uint16)


def encode_values(v: np.ndarray, coder: str, *, allow_nonfinite: bool = False) -> tuple[bytes, np.ndarray]:
    """Encode 1-D float values; returns (bytes, reconstruction in ``v.dtype``)."""
    if coder not in VALUE_CODERS:
        raise ConfigError(f"values must be one of {sorted(VALUE_CODERS)}, got {coder!r}")
    v = np.asarray(v)
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, with a message
        return _encode(v, coder, allow_nonfinite)


def _encode(v: np.ndarray, coder: str, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
    if coder == "fp64":
        wire = v.astype("<f8")
    elif coder == "fp32":
        wire = v.astype("<f4")
    elif coder == "fp16":
        if v.size and float(np.max(np.abs(v[np.isfinite(v)]), initial=0.0)) > _FP16_MAX:
            raise ConfigError("a value exceeds the fp16 range (|v| > 65504); use values='bf16' or 'fp32'")
        wire = v.astype("<f2")
    else:  # bf16
        bits = _bf16_bits(v.astype(np.float32))
        wire = bits.astype("<u2")
        recon32 = (bits.astype(np.uint32) << 16).view(np.float32)
        if not allow_nonfinite and not np.all(np.isfinite(recon32)):
            raise ConfigError("a value overflows bfloat16 (|v| > 3.39e38); use values='fp32'")
        return wire.tobytes(), recon32.astype(v.dtype, copy=False)
    recon = wire.astype(v.dtype, copy=False)
    if not allow_nonfinite and not np.all(np.isfinite(recon)):
        raise ConfigError(f"a value overflows {coder}; use a wider value format")
    return wire.tobytes(), recon


def decode_values(data, k: int, coder: str, dtype: np.dtype, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Decode ``k`` values (the caller has checked ``len(data) == k * VALUE_BYTES[coder]``)."""
    # Widening a signalling NaN raises FloatingPointError under np.seterr(invalid="raise"):
    # non-finite values are the frame's business, rejected below unless it allows them.
    with np.errstate(over="ignore", invalid="ignore"):
        if coder == "bf16":
            bits = np.frombuffer(data, dtype="<u2", count=k)
            out = (bits.astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)
        else:
            wire = {"fp32": "<f4", "fp16": "<f2", "fp64": "<f8"}[coder]
            out = np.frombuffer(data, dtype=wire, count=k).astype(dtype)
    if not allow_nonfinite and k and not np.isfinite(out).all():
        raise CorruptFrameError(
            "frame holds a NaN/Inf value but was not written with allow_nonfinite=True: corrupt or crafted")
    return out
