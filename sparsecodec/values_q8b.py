"""The ``q8b`` value coder: 8-bit integers with one bfloat16 scale (2 bytes instead of 4).

Payload (``2 + k`` bytes; nothing when ``k == 0``)::

    scale   bfloat16 little-endian (the upper 16 bits of a float32): the smallest bfloat16
            s with 127 s >= max |v|, i.e. max |v| / 127 rounded UP    (finite, >= 0, +0)
    q       k signed bytes, q_i = clip(round_half_even(v_i / s), -127, 127)

and ``v_hat_i = q_i * s`` in the tensor's dtype, the one formula both ends evaluate. Rounding
the scale up (not to nearest) keeps ``|v_i| / s <= 127``: the clip never bites at the peak.
With a 2-byte scale, a message-scoped value block (``MessageSpec(values_scope="message")``)
holding K values costs ``16 + 8 K`` bits.

Exact under error feedback. ``s`` has 8 significant bits and ``|q| <= 127`` 7, so ``q s`` is
exact in float32 and float64 (bfloat16 shares float32's exponent range, subnormals
included). For ``q_i = 0`` the residual is ``v_i`` itself. For ``|q_i| >= 1``: rounding is
monotone and round-half-even sends 1/2 to 0, so ``|q_i| >= 1`` needs ``fl(|v_i| / s) > |q_i| - 1/2``,
hence ``|v_i| > (|q_i| - 1/2) s >= |v_hat_i| / 2``; and ``|v_i| <= (|q_i| + 1/2) s <= 2 |v_hat_i|``
(up to one float64 rounding of the quotient, far inside the slack for ``|q_i| >= 1``),
same sign: ``v_i`` is within a
factor 2 of ``v_hat_i``, so ``v_i - v_hat_i`` is exact by Sterbenz's lemma and
``x_hat + e_new == x + e_old`` holds bit for bit (tested with hypothesis, tiny, subnormal and
huge magnitudes included, in ``tests/test_values_scope.py``).

Values too small for any non-zero bfloat16 step (``max |v| < 127 * 2**-133`` rounds the scale
up to ``2**-133``, and then some or all ``q`` are 0) are sent as ``q = 0``, their residual kept
exactly. A scale whose 127 multiple would overflow float32 is a ConfigError suggesting
``values='fp32'``. The decoder rejects a non-finite, negative or ``-0`` scale, a scale above
that limit, ``q = -128``, a zero scale with non-zero ``q``, and a ``max |q|`` too small for the
scale (an encoder's scale is the smallest that fits, so ``max |q| >= 126`` for a normal one).

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.0, 2.0, -1.0, 0.01, 0.0, 0.5], np.float32)
    >>> frame = sc.TopK(k=3, values="q8b").encode(x)
    >>> frame.sections["values"], [round(float(v), 4) for v in sc.decode(bytes(frame))]
    (40, [0.0, 1.9995, -0.9998, 0.0, 0.0, 0.5078])
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, CorruptFrameError
from .values import ValueCoder, register_value_coder
from .values import bf16_value as _scale
from .values_q8 import _QMAX, reconstruct, reject_minus_128
#: bfloat16 bit pattern of the largest scale whose 127 multiple is finite in float32.
_MAX_BITS = int((np.array([np.finfo(np.float32).max / _QMAX], np.float32).view(np.uint32)[0]) >> 16)


def _payload_bytes(k: int) -> int:
    return 2 + k if k else 0


def _fits(bits: int, peak: float) -> bool:
    # 127 s is exact in float64 (8 + 7 significant bits), so this comparison is exact
    return _QMAX * float(_scale(bits)) >= peak


def _scale_bits(peak: float) -> int:
    """The smallest bfloat16 pattern s (as bits) with 127 s >= peak (peak > 0, finite)."""
    s32 = np.float32(peak / _QMAX)           # near the answer; fixed up exactly below
    bits = int(np.array([s32], np.float32).view(np.uint32)[0])
    bits = (bits >> 16) + (1 if bits & 0xFFFF else 0)
    while bits < 0x7F80 and not _fits(bits, peak):
        bits += 1                            # positive bfloat16 patterns are ordered like values
    while bits > 1 and _fits(bits - 1, peak):
        bits -= 1
    return bits


def _encode(v: np.ndarray, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
    if v.size == 0:
        return b"", np.zeros(0, v.dtype)
    if not np.all(np.isfinite(v)):
        raise ConfigError("values='q8b' cannot code NaN/Inf values; use values='fp32' with allow_nonfinite=True")
    peak = float(np.max(np.abs(v)))
    if peak == 0:          # all zeros: s = 0, every q = 0
        bits, q = 0, np.zeros(v.size, np.int8)
    else:
        bits = _scale_bits(peak)
        if bits > _MAX_BITS:
            raise ConfigError("a value is too large for q8b's bfloat16 scale (127 s overflows float32); "
                              "use values='fp32'")
        s = np.float64(_scale(bits))
        q = np.clip(np.rint(v.astype(np.float64) / s), -_QMAX, _QMAX).astype(np.int8)
    scale = _scale(bits)
    return np.array([bits], "<u2").tobytes() + q.tobytes(), reconstruct(q, scale, v.dtype)


def _decode(data, k: int, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
    if k == 0:
        return np.zeros(0, dtype)
    bits = int(np.frombuffer(data, "<u2", count=1)[0])
    if bits > _MAX_BITS:     # sign bit set (negative, -0), NaN/Inf, or beyond the float32 limit
        raise CorruptFrameError(f"q8b scale bits 0x{bits:04x} are not a bfloat16 in [+0, "
                                f"{float(_scale(_MAX_BITS)):.3g}]: corrupt or crafted")
    q = reject_minus_128(np.frombuffer(data, np.int8, count=k, offset=2), "q8b")
    peak_q = int(np.max(np.abs(q.astype(np.int16))))
    if bits == 0 and peak_q:
        raise CorruptFrameError("q8b payload has a zero scale but non-zero values: corrupt or crafted")
    if bits > 1:
        # the encoder's scale is the smallest that fits: max|v| > 127 * prev(s), so
        # max|q| = rint(max|v| / s) cannot be below rint(127 prev(s) / s) (ties: lenient)
        low = _QMAX * float(_scale(bits - 1)) / float(_scale(bits))
        if peak_q + 0.5 < low:
            raise CorruptFrameError(f"q8b max |q| = {peak_q} is too small for its scale (an encoder "
                                    "picks the smallest scale that fits): corrupt or crafted")
    return reconstruct(q, _scale(bits), dtype)


Q8B = register_value_coder(ValueCoder("q8b", 6, _payload_bytes, _encode, _decode, ef_exact=True,
                                      summary="int8, one bfloat16 scale (rounded up)"))
