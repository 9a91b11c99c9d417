"""The ``sign`` value coder: one bit per value and one float32 scale per tensor (scaled sign).

Payload (``4 + ceil(k / 8)`` bytes; nothing when ``k == 0``)::

    scale   float32 little-endian, s = fl32(mean |v|)        (finite, >= 0)
    signs   k bits, LSB first, 1 = negative; the last byte's unused bits are 0

and ``v_hat_i = -s`` or ``+s``. This is the scaled sign compressor ``C(v) = (||v||_1 / k)
sign(v)`` of EF-SignSGD (Karimireddy et al., "Error Feedback Fixes SignSGD and other Gradient
Compression Schemes", ICML 2019), applied to the k kept values of each tensor: with error
feedback its bias is carried to the next round. ``sign(0)`` is ``+``. Rounding is
deterministic; no seed is needed.

Error feedback is *not* exact here: ``v_hat = ±s`` can be far from ``v``, so the residual
``fl(v - v_hat)`` is rounded once, and ``|v_hat + e_new - (x + e_old)| <= 2**-24 |v - v_hat|``
per kept float32 entry (``2**-53`` for float64); elsewhere it is exact (tested in
``tests/test_value_coders.py``).

A top-k message's value bits fall from ``32 k`` to ``8 ceil(k / 8) + 32``: ``>= 20x`` for
every tensor keeping ``k >= 65`` values; the per-tensor scale dominates below that.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.0, 2.0, -1.0, 0.01, 0.0, 0.5], np.float32)
    >>> frame = sc.TopK(k=3, values="sign").encode(x)
    >>> frame.sections["values"], sc.decode(bytes(frame)).tolist()
    (40, [0.0, 1.1666666269302368, -1.1666666269302368, 0.0, 0.0, 1.1666666269302368])
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, CorruptFrameError
from .values import ValueCoder, register_value_coder


def _payload_bytes(k: int) -> int:
    return 4 + (k + 7) // 8 if k else 0


def unpack_signs(data, offset: int, k: int, name: str) -> np.ndarray:
    """The k sign bits at byte ``offset`` (LSB first, 1 = negative), refusing non-zero
    padding bits (an encoder writes zeros there). Shared with :mod:`.values_signb`."""
    packed = np.frombuffer(data, np.uint8, offset=offset, count=(k + 7) // 8)
    if k % 8 and packed[-1] >> (k % 8):
        raise CorruptFrameError(f"{name} payload has non-zero padding bits after its k signs: corrupt or crafted")
    return np.unpackbits(packed, count=k, bitorder="little").astype(bool)


def _reconstruct(negative: np.ndarray, scale: np.float32, dtype: np.dtype) -> np.ndarray:
    s = dtype.type(scale)
    return np.where(negative, -s, s).astype(dtype, copy=False)


def _encode(v: np.ndarray, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
    if v.size == 0:
        return b"", np.zeros(0, v.dtype)
    if not np.all(np.isfinite(v)):
        raise ConfigError("values='sign' cannot code NaN/Inf values; use values='fp32' with allow_nonfinite=True")
    scale = np.float32(np.mean(np.abs(v.astype(np.float64))))
    if not np.isfinite(scale):
        raise ConfigError("the mean magnitude overflows sign's float32 scale; use values='fp32'")
    negative = v < 0
    bits = np.packbits(negative, bitorder="little")
    return np.array([scale], "<f4").tobytes() + bits.tobytes(), _reconstruct(negative, scale, v.dtype)


def _decode(data, k: int, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
    if k == 0:
        return np.zeros(0, dtype)
    scale = np.frombuffer(data, "<f4", count=1)[0]
    if not np.isfinite(scale) or np.signbit(scale):
        raise CorruptFrameError(f"sign scale {float(scale)!r} is not a finite float32 >= 0: corrupt or crafted")
    return _reconstruct(unpack_signs(data, 4, k, "sign"), scale, dtype)


SIGN = register_value_coder(ValueCoder("sign", 5, _payload_bytes, _encode, _decode, ef_exact=False,
                                       summary="scaled sign, one float32 scale per tensor"))
