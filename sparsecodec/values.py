"""Value coders: how the k kept values of a top-k frame are stored, and their table.

Every value coder is one :class:`ValueCoder` record in one table (:func:`register_value_coder`),
read by :class:`~sparsecodec.TopK` frames, compact messages (:mod:`sparsecodec.packed`) and
:func:`~sparsecodec.inspect_bundle`. A new coder is one module holding its record plus one
registration (see :mod:`sparsecodec.values_q8`).

=========  ============  ===================================================  ==========
name       bytes (k)     rounding                                             EF exact
=========  ============  ===================================================  ==========
``fp32``   4 k           exact for float32; round-to-nearest-even from fp64   yes
``fp64``   8 k           exact for float32 and float64 input                  yes
``fp16``   2 k           IEEE half, round-to-nearest-even; |v| > 65504 errs   yes
``bf16``   2 k           bfloat16 (top 16 bits of float32), nearest-even      yes
``q8``     4 + k         int8 ``round(v / s)``, one fp32 scale ``s`` per      yes
                         tensor (:mod:`sparsecodec.values_q8`)
``q8b``    2 + k         int8 ``round(v / s)``, one bfloat16 scale ``s``      yes
                         rounded up (:mod:`sparsecodec.values_q8b`)
``sign``   4 + ceil(k/8) ``±s``, ``s = mean |v|`` per tensor, scaled sign     bounded
                         (:mod:`sparsecodec.values_sign`)
``signb``  2 + ceil(k/8) ``sign`` with a bfloat16 scale (wire id 7, escaped)     bounded
                         (:mod:`sparsecodec.values_signb`)
=========  ============  ===================================================  ==========

All values are little-endian on the wire. The payload size is a function of ``k`` alone, so
a frame's index payload length is implied. The reconstruction ``v_hat`` is returned in the
input dtype, bit-identical to what the decoder returns, so error feedback can compute the
residual ``a - x_hat``. "EF exact" means ``v - v_hat`` is computed exactly in floating point:
``v_hat`` is 0 or within a factor 2 of ``v`` (same sign), so Sterbenz's lemma applies and
``v_hat + (v - v_hat) == v``. Where it is not (``sign``: ``v_hat = ±s`` can be far from ``v``),
the residual is ``fl(v - v_hat)``, one rounding: ``|v_hat + e_new - (x + e_old)| <=
2**-24 |v - v_hat|`` per kept float32 entry (``2**-53`` for float64), and exact elsewhere.

Example:
    >>> import numpy as np
    >>> data, v_hat = encode_values(np.array([1.0, -2.5], np.float32), "bf16")
    >>> len(data), v_hat.tolist()
    (4, [1.0, -2.5])
    >>> decode_values(data, 2, "bf16", np.dtype(np.float32)).tolist()
    [1.0, -2.5]
    >>> value_payload_bytes("q8", 100), value_payload_bytes("sign", 100)
    (104, 17)
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from .errors import ConfigError, CorruptFrameError

__all__ = ["ValueCoder", "register_value_coder", "value_coder", "VALUE_CODERS", "VALUE_BYTES",
           "value_payload_bytes", "encode_values", "decode_values", "VALUE_ID_ESCAPE",
           "MAX_VALUE_WIRE_ID"]

#: Wire ids, stable forever. Ids 0-6 live in bits 4-6 of a TopK frame's config byte; 7 there is
#: an escape: the id follows the config byte as a varint of ``id - 7``, so ids 7..134 cost one
#: byte more per frame (a compact message takes the coder from its spec and sends no id).
VALUE_ID_ESCAPE = 7
MAX_VALUE_WIRE_ID = VALUE_ID_ESCAPE + 127   # the escape's varint stays one byte


@dataclass(frozen=True)
class ValueCoder:
    """One value coder: its name, wire id, payload size and the two directions.

    ``encode(v, allow_nonfinite) -> (bytes, v_hat)`` with ``v_hat`` in ``v.dtype`` and equal to
    what ``decode`` returns; ``decode(data, k, dtype, allow_nonfinite) -> values`` reads exactly
    ``payload_bytes(k)`` untrusted bytes (the caller has checked the length) and raises
    :class:`~sparsecodec.errors.CorruptFrameError` for anything the encoder cannot write.
    ``ef_exact`` says whether ``v - v_hat`` is exact (see the module docstring).
    """

    name: str
    wire_id: int
    payload_bytes: Callable[[int], int]
    encode: Callable[[np.ndarray, bool], tuple[bytes, np.ndarray]]
    decode: Callable[[bytes, int, np.dtype, bool], np.ndarray]
    ef_exact: bool
    summary: str = ""


_TABLE: dict[str, ValueCoder] = {}
#: name -> wire id, a live view of the table (kept for the modules and users that read it).
VALUE_CODERS: dict[str, int] = {}
#: name -> bytes per value, for the fixed-width float formats only.
VALUE_BYTES = {"fp32": 4, "fp16": 2, "bf16": 2, "fp64": 8}
_BY_ID: dict[int, ValueCoder] = {}
_FP16_MAX = 65504.0
#: coders whose payload is the input's own bytes for this dtype (little-endian, on a
#: little-endian machine): ``encode_values(..., owned=True)`` skips their copies
_STORED_AS_IS = {name: np.dtype(wire) for name, wire in (("fp32", "<f4"), ("fp64", "<f8"))
                 if np.dtype(wire).isnative}


def register_value_coder(coder: ValueCoder) -> ValueCoder:
    """Add a coder to the table; a name or wire id already taken is a ConfigError."""
    if not 0 <= coder.wire_id <= MAX_VALUE_WIRE_ID:
        raise ConfigError(f"value coder wire ids are 0..{MAX_VALUE_WIRE_ID}, got {coder.wire_id}")
    if coder.name in _TABLE or coder.wire_id in _BY_ID:
        raise ConfigError(f"value coder {coder.name!r} / wire id {coder.wire_id} is already registered")
    _TABLE[coder.name] = coder
    _BY_ID[coder.wire_id] = coder
    VALUE_CODERS[coder.name] = coder.wire_id
    return coder


def value_coder(name: str) -> ValueCoder:
    """The record of a coder by name (ConfigError, listing the choices, if unknown)."""
    try:
        return _TABLE[name]
    except (KeyError, TypeError):
        raise ConfigError(f"values must be one of {sorted(_TABLE)}, got {name!r}") from None


def value_coder_name(wire_id: int) -> str:
    try:
        return _BY_ID[wire_id].name
    except KeyError:
        raise CorruptFrameError(f"unknown value coder id {wire_id}") from None


def value_payload_bytes(coder: str, k: int) -> int:
    """Bytes that ``k`` values take under ``coder``."""
    return value_coder(coder).payload_bytes(int(k))


def encode_values(v: np.ndarray, coder: str, *, allow_nonfinite: bool = False,
                  owned: bool = False) -> tuple[bytes | memoryview, np.ndarray]:
    """Encode 1-D float values; returns (bytes, reconstruction in ``v.dtype``).

    ``owned=True`` says ``v`` is a new array the caller gives away (such as ``x[idx]``):
    a coder that stores ``v`` unchanged (``fp32`` of float32, ``fp64`` of float64) then
    returns ``v`` itself as the reconstruction and a read-only memoryview of it as the
    bytes, instead of two copies (8 MB of copying for a million float32 values). The
    view is only valid while nobody writes to ``v``: copy it (``bytes(data)``) to keep it.
    """
    rec = value_coder(coder)
    v = np.asarray(v)
    as_is = _STORED_AS_IS.get(rec.name)     # (not `v.dtype == None`: numpy says True for float64)
    if owned and as_is is not None and v.dtype == as_is and v.ndim == 1 and v.flags.c_contiguous:
        if not allow_nonfinite and not np.isfinite(v).all():
            raise ConfigError(f"a value is NaN or infinite and {rec.name} frames refuse them "
                              "unless allow_nonfinite=True")
        return v.data.cast("B").toreadonly(), v
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is detected below, with a message
        return rec.encode(v, allow_nonfinite)


def decode_values(data, k: int, coder: str, dtype: np.dtype, *, allow_nonfinite: bool = False) -> np.ndarray:
    """Decode ``k`` values (the caller has checked ``len(data) == value_payload_bytes(coder, k)``)."""
    # Widening a signalling NaN raises FloatingPointError under np.seterr(invalid="raise"):
    # non-finite values are the frame's business, rejected below unless it allows them.
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        out = value_coder(coder).decode(data, int(k), np.dtype(dtype), allow_nonfinite)
    if not allow_nonfinite and k and not np.isfinite(out).all():
        raise CorruptFrameError(
            "frame holds a NaN/Inf value but was not written with allow_nonfinite=True: corrupt or crafted")
    return out


# -- the IEEE formats --------------------------------------------------------------------------
def _bf16_bits(v32: np.ndarray) -> np.ndarray:
    """float32 -> bfloat16 bit patterns (uint16), round-to-nearest-even."""
    u = v32.view(np.uint32).astype(np.uint64)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    # Rounding a NaN's payload can carry into the exponent and the sign (0x7FFFFFFF would
    # become 0x8000, -0.0): a NaN keeps its sign and top payload bits and is made quiet.
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    rounded = np.where(nan, (u >> 16) | 0x0040, rounded)
    return rounded.astype(np.uint16)


def bf16_value(bits: int) -> np.float32:
    """The float32 a bfloat16 bit pattern stands for (the scales of ``q8b`` and ``signb``)."""
    return np.array([int(bits) << 16], np.uint32).view(np.float32)[0]


def _ieee(wire: str, name: str):
    def encode(v: np.ndarray, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
        if name == "fp16" and v.size and float(np.max(np.abs(v[np.isfinite(v)]), initial=0.0)) > _FP16_MAX:
            raise ConfigError("a value exceeds the fp16 range (|v| > 65504); use values='bf16' or 'fp32'")
        w = v.astype(wire)
        recon = w.astype(v.dtype, copy=False)
        if not allow_nonfinite and not np.all(np.isfinite(recon)):
            raise ConfigError(f"a value overflows {name}; use a wider value format")
        return w.tobytes(), recon

    def decode(data, k: int, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
        return np.frombuffer(data, dtype=wire, count=k).astype(dtype)

    return encode, decode


def _bf16_encode(v: np.ndarray, allow_nonfinite: bool) -> tuple[bytes, np.ndarray]:
    bits = _bf16_bits(v.astype(np.float32))
    recon32 = (bits.astype(np.uint32) << 16).view(np.float32)
    if not allow_nonfinite and not np.all(np.isfinite(recon32)):
        raise ConfigError("a value overflows bfloat16 (|v| > 3.39e38); use values='fp32'")
    return bits.astype("<u2").tobytes(), recon32.astype(v.dtype, copy=False)


def _bf16_decode(data, k: int, dtype: np.dtype, allow_nonfinite: bool) -> np.ndarray:
    bits = np.frombuffer(data, dtype="<u2", count=k)
    return (bits.astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)


def _fixed_width(nbytes: int) -> Callable[[int], int]:
    return lambda k: nbytes * k


for _name, _id, _wire in (("fp32", 0, "<f4"), ("fp16", 1, "<f2"), ("fp64", 3, "<f8")):
    _enc, _dec = _ieee(_wire, _name)
    register_value_coder(ValueCoder(_name, _id, _fixed_width(VALUE_BYTES[_name]), _enc, _dec,
                                    ef_exact=True, summary=f"IEEE {_name}"))
register_value_coder(ValueCoder("bf16", 2, _fixed_width(2), _bf16_encode, _bf16_decode, ef_exact=True,
                                summary="bfloat16"))

#: Coders in their own modules, each registering its record on import: a new coder is one
#: module plus one entry here.
_CODER_MODULES = ("values_q8", "values_sign", "values_q8b", "values_signb")
for _module in _CODER_MODULES:
    importlib.import_module(f".{_module}", __package__)
