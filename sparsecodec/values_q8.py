"""The ``q8`` value coder: 8-bit integers with one float32 scale per tensor.

Payload (``4 + k`` bytes; nothing when ``k == 0``)::

    scale   float32 little-endian, s = fl32(max |v| / 127)   (finite, >= 0)
    q       k signed bytes, q_i = clip(round_half_even(v_i / s), -127, 127)

and the reconstruction is ``v_hat_i = q_i * s``, evaluated in the tensor's dtype by encoder
and decoder alike (so the encoder's ``v_hat`` is bit-identical to what is decoded). Rounding
is deterministic (round half to even), so no seed is needed. ``q = -128`` is never written
and is rejected, as is a negative, non-finite or too large scale: every accepted payload is
one the encoder can produce.

Exact under error feedback: for ``q_i = 0`` the residual is ``v_i`` itself; for ``|q_i| >= 1``
``|v_i - q_i s| <= s / 2`` puts ``v_i`` within a factor 2 of ``v_hat_i`` (same sign), so
``v_i - v_hat_i`` is exact by Sterbenz's lemma and ``x_hat + e_new == x + e_old`` holds
bit for bit (tested with hypothesis in ``tests/test_value_coders.py``).

A top-k message's value bits fall from ``32 k`` to ``8 k + 32``: ``>= 3.5x`` once a tensor
keeps ``k >= 28`` values. The worst-case error per kept value is ``max |v| / 254``; error
feedback carries it to the next round.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.0, 2.0, -1.0, 0.01, 0.0, 0.5], np.float32)
    >>> frame = sc.TopK(k=3, values="q8").encode(x)
    >>> frame.sections["values"], [round(float(v), 4) for v in sc.decode(bytes(frame))]
    (56, [0.0, 2.0, -1.0079, 0.0, 0.0, 0.5039])
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, CorruptFrameError
from .values import ValueCoder, register_value_coder

_QMAX = 127
#: The largest scale whose 127 multiple is finite in float32.
_SCALE_MAX = float(np.finfo(np.float32).max) / _QMAX


def _payload_bytes(k: int) -> int:
    return 4 + k if k else 0


def reconstruct(q: np.ndarray, scale: np.float32, dtype: np.dtype) -> np.ndarray:
    """``q * s`` in ``dtype``: the one formula both ends evaluate (``q8`` and ``q8b``)."""
    return q.astype(dtype) * dtype.type(scale)


def _encode(v: np.ndarray, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
    if v.size == 0:
        return b"", np.zeros(0, v.dtype)
    if not np.all(np.isfinite(v)):
        raise ConfigError("values='q8' cannot code NaN/Inf values; use values='fp32' with allow_nonfinite=True")
    peak = float(np.max(np.abs(v)))
    scale = np.float32(peak / _QMAX)
    if float(scale) > _SCALE_MAX:   # |v| within 0.01 % of float32's largest value
        raise ConfigError("a value is too large for q8's float32 scale; use values='fp32'")
    if scale == 0:      # all zeros, or below float32's smallest scale: nothing is sent but s = 0
        q = np.zeros(v.size, np.int8)
    else:
        q = np.clip(np.rint(v.astype(np.float64) / np.float64(scale)), -_QMAX, _QMAX).astype(np.int8)
    data = np.array([scale], "<f4").tobytes() + q.tobytes()
    return data, reconstruct(q, scale, v.dtype)


def reject_minus_128(q: np.ndarray, coder: str) -> np.ndarray:
    """``q`` itself, or CorruptFrameError: -128 is never written (shared with ``q8b``)."""
    if np.any(q == -128):
        raise CorruptFrameError(f"{coder} value -128 is never written (the range is -127..127): corrupt or crafted")
    return q


def _decode(data, k: int, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
    if k == 0:
        return np.zeros(0, dtype)
    scale = np.frombuffer(data, "<f4", count=1)[0]
    if not (np.isfinite(scale) and 0.0 <= float(scale) <= _SCALE_MAX) or np.signbit(scale):
        raise CorruptFrameError(f"q8 scale {float(scale)!r} is not a finite float32 in [0, {_SCALE_MAX:.3g}]: "
                                "corrupt or crafted")
    q = reject_minus_128(np.frombuffer(data, np.int8, count=k, offset=4), "q8")
    if scale == 0 and np.any(q):
        raise CorruptFrameError("q8 payload has a zero scale but non-zero values: corrupt or crafted")
    return reconstruct(q, scale, dtype)


Q8 = register_value_coder(ValueCoder("q8", 4, _payload_bytes, _encode, _decode, ef_exact=True,
                                     summary="int8, one float32 scale per tensor"))
