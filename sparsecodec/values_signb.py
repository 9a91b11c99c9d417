"""The ``signb`` value coder: scaled sign, as :mod:`sparsecodec.values_sign`, with a bfloat16
scale (2 bytes instead of 4).

Payload (``2 + ceil(k / 8)`` bytes; nothing when ``k == 0``)::

    scale   bfloat16 little-endian (the upper 16 bits of a float32): s = mean |v| rounded to
            the nearest bfloat16 (finite, >= 0, +0)
    signs   k bits, LSB first, 1 = negative; the last byte's unused bits are 0

and ``v_hat_i = -s`` or ``+s``. Rounding the scale to 8 significant bits changes ``v_hat`` by
at most 2**-9 relative, which error feedback carries to the next round like the rest of the
sign compressor's bias (Karimireddy et al., ICML 2019). The residual is ``fl(v - v_hat)``,
one rounding, as for ``sign``: ``|v_hat + e_new - (x + e_old)| <= 2**-24 |v - v_hat|`` per
kept float32 entry (``2**-53`` for float64).

Its wire id is 7, the first past the TopK config byte's three bits: a TopK frame spends one
more header byte on it (:data:`sparsecodec.values.VALUE_ID_ESCAPE`); a compact message, which
takes the coder from its spec, spends none. A message-scoped value block of K values
(``MessageSpec(values_scope="message")``) costs ``16 + 8 ceil(K / 8)`` bits: ``>= 20x`` below
fp32 for ``K >= 23``.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.array([0.0, 2.0, -1.0, 0.01, 0.0, 0.5], np.float32)
    >>> frame = sc.TopK(k=3, values="signb").encode(x)
    >>> frame.sections["values"], sc.decode(bytes(frame)).tolist()
    (24, [0.0, 1.1640625, -1.1640625, 0.0, 0.0, 1.1640625])
"""

from __future__ import annotations

import numpy as np

from .errors import ConfigError, CorruptFrameError
from .values import ValueCoder, _bf16_bits, register_value_coder
from .values import bf16_value as _scale
from .values_sign import _reconstruct, unpack_signs


def _payload_bytes(k: int) -> int:
    return 2 + (k + 7) // 8 if k else 0


def _encode(v: np.ndarray, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
    if v.size == 0:
        return b"", np.zeros(0, v.dtype)
    if not np.all(np.isfinite(v)):
        raise ConfigError("values='signb' cannot code NaN/Inf values; use values='fp32' with allow_nonfinite=True")
    bits = int(_bf16_bits(np.array([np.mean(np.abs(v.astype(np.float64)))], np.float32))[0])
    scale = _scale(bits)
    if not np.isfinite(scale):
        raise ConfigError("the mean magnitude overflows signb's bfloat16 scale; use values='fp32'")
    negative = v < 0
    signs = np.packbits(negative, bitorder="little")
    return bits.to_bytes(2, "little") + signs.tobytes(), _reconstruct(negative, scale, v.dtype)


def _decode(data, k: int, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
    if k == 0:
        return np.zeros(0, dtype)
    bits = int.from_bytes(bytes(data[:2]), "little")
    scale = _scale(bits)
    if not np.isfinite(scale) or bits & 0x8000:
        raise CorruptFrameError(f"signb scale {float(scale)!r} is not a finite bfloat16 >= +0: corrupt or crafted")
    return _reconstruct(unpack_signs(data, 2, k, "signb"), scale, dtype)


SIGNB = register_value_coder(ValueCoder("signb", 7, _payload_bytes, _encode, _decode, ef_exact=False,
                                        summary="scaled sign, one bfloat16 scale per tensor or message"))
