"""Probability models for binary masks, and the one place their quantization rules live.

All models drive the same binary range coder (:mod:`sparsecodec._kernels.rangecoder`):

``adaptive`` (model id 0): count-then-enumerative. The frame carries the number of ones ``k``
    (a varint, about log2(n) bits); then bit i is coded with P(1) = (ones left) / (positions
    left), which is the exact model of a uniformly random mask with k ones, so the payload
    costs ``log2 C(n, k)`` plus a few bits. ``log2 C(n, k) + log2 n`` is below the adaptive
    bound ``n * H_b(k/n)`` up to a few bits (H_b(f) n - log2 C(n, k) ~ 0.5 log2(2 pi n f(1-f))).
    Positions whose bit is already determined (no ones left, or only ones left) cost nothing.
``fixed`` (model id 1): one Bernoulli(p) for every bit; the quantized p travels in the frame.
``per-entry`` (model id 2): bit i ~ Bernoulli(p[i]); ``p`` is side information both ends hold
    and is never written.

Quantization (PROB_BITS = 20): ``q = clip(floor(p * 2**20 + 0.5), 1, 2**20 - 1)`` computed in
float64 (exact for float32 and float64 inputs, so either end may hold either dtype), and the
coder uses P(1) = q / 2**20. Clipping keeps both sub-intervals non-empty: p = 0 and p = 1 are
legal and a "contrary" bit costs 20 bits instead of being uncodable. The enumerative model's
q is integer-only: ``clip((ones * 2**20 + positions // 2) // positions, 1, 2**20 - 1)``.
NaN or a p outside [0, 1] is a :class:`~sparsecodec.errors.ConfigError` (per-entry vectors are
checked inside the coding loop, so no extra pass over the vector is made).

Lanes: the fixed and per-entry models can split the mask into two halves coded as independent
streams (``lanes=2``), which the decoder interleaves (two dependency chains, ~1.4x faster). It
costs one more flush (<= 9 bits, ~5 on average) and the varint length of lane 0 (<= 2 bytes
below 2**17 payload bits), so the automatic choice uses two lanes where speed matters or the
cost vanishes: ``numel >= LANE_SPLIT_MIN_NUMEL`` or an expected payload of at least
``LANE_SPLIT_MIN_BITS``. Either way the worst case stays inside 1.001 x cross-entropy + 64
bits (quantized p <= 24 bits + two flushes <= 18 + length <= 16 below 2**17 bits).

Example:
    >>> quantize_probability(0.05), quantize_probability(0.0), quantize_probability(1.0)
    (52429, 1, 1048575)
    >>> round(dequantize_probability(52429), 6)
    0.05
"""

from __future__ import annotations

import math

import numpy as np

from ._kernels import (ERR_CORRUPT, ERR_NONFINITE, ERR_ORDER, ERR_OVERFLOW, ERR_PADDING,
                       ERR_RANGE, ERR_TRUNCATED, OK)
from ._kernels.enumerative import decode_enumerative, encode_enumerative
from ._kernels.rangecoder import (PROB_BITS, decode_bernoulli, encode_bernoulli,
                                  max_payload_bytes)
from .bounds import binary_entropy
from .errors import ConfigError, CorruptFrameError, TruncatedFrameError

__all__ = ["PROB_BITS", "PROB_ONE", "MODEL_ADAPTIVE", "MODEL_FIXED", "MODEL_PER_ENTRY",
           "MODEL_NAMES", "LANE_SPLIT_MIN_BITS", "LANE_SPLIT_MIN_NUMEL", "quantize_probability",
           "dequantize_probability", "enumerative_probability", "as_probability_vector",
           "expected_bits", "choose_lanes", "lane_split", "encode_bernoulli_lanes",
           "decode_bernoulli_lanes", "encode_adaptive", "decode_adaptive", "raise_for_status"]

PROB_ONE = 1 << PROB_BITS
MODEL_ADAPTIVE = 0
MODEL_FIXED = 1
MODEL_PER_ENTRY = 2
MODEL_NAMES = {MODEL_ADAPTIVE: "adaptive", MODEL_FIXED: "fixed", MODEL_PER_ENTRY: "per-entry"}

#: two lanes cost ~20 more bits (<= 33): use them for large masks or large payloads
LANE_SPLIT_MIN_BITS = 1 << 16
LANE_SPLIT_MIN_NUMEL = 1 << 20
#: the per-entry entropy estimate that picks the lane count looks at this many entries
_ESTIMATE_SAMPLES = 4096


def quantize_probability(p) -> int:
    """The 20-bit integer probability of a one used by the coder for ``p`` (see module doc).

    >>> quantize_probability(0.5), quantize_probability(1e-9)
    (524288, 1)
    """
    try:
        pf = float(p)
    except (TypeError, ValueError):
        raise ConfigError(f"p must be a number in [0, 1] or a per-entry array, got {p!r}") from None
    if not 0.0 <= pf <= 1.0:
        raise ConfigError(f"p must be in [0, 1], got {pf}")
    return min(max(math.floor(pf * float(PROB_ONE) + 0.5), 1), PROB_ONE - 1)


def dequantize_probability(q: int) -> float:
    """``q / 2**20``: the probability the coder actually uses."""
    return int(q) / PROB_ONE


def enumerative_probability(ones_left: int, positions_left: int) -> int:
    """The adaptive model's integer q for the next bit (needs 0 < ones_left < positions_left).

    >>> enumerative_probability(1, 4)
    262144
    """
    q = (int(ones_left) * PROB_ONE + int(positions_left) // 2) // int(positions_left)
    return min(max(q, 1), PROB_ONE - 1)


def as_probability_vector(p, numel: int) -> np.ndarray:
    """Per-entry side information as a flat float32/float64 array of ``numel`` entries.

    Only its shape and type are checked here (NaN / range are checked while coding). Other
    real dtypes are converted to float64.
    """
    arr = np.asarray(p)
    if arr.dtype.kind not in "fiub":
        raise ConfigError(f"per-entry p must be a real array, got dtype {arr.dtype}")
    if arr.size != numel:
        raise ConfigError(f"per-entry p has {arr.size} entries but the mask has {numel}: pass the "
                          "probability vector of this exact tensor (same size, any shape)")
    if arr.dtype not in (np.float32, np.float64):
        arr = arr.astype(np.float64)
    return np.ascontiguousarray(arr).reshape(-1)


def expected_bits(numel: int, p) -> float:
    """The expected payload of a mask drawn from the model (sampled for per-entry p).

    Used only to choose the lane count, so it is cheap: a per-entry vector is estimated from
    at most 4096 evenly spaced entries (NaN counts as 0.5; the coder rejects it later).
    """
    if numel == 0:
        return 0.0
    if np.ndim(p) == 0:
        return numel * binary_entropy(dequantize_probability(int(p)))
    step = max(1, numel // _ESTIMATE_SAMPLES)
    sample = np.nan_to_num(np.asarray(p[::step], dtype=np.float64), nan=0.5)
    sample = np.clip(sample, 2.0 ** -PROB_BITS, 1.0 - 2.0 ** -PROB_BITS)
    h = -(sample * np.log2(sample) + (1.0 - sample) * np.log2(1.0 - sample))
    return float(numel * h.mean())


def choose_lanes(numel: int, p) -> int:
    """2 when ``numel >= LANE_SPLIT_MIN_NUMEL`` or the expected payload is at least
    ``LANE_SPLIT_MIN_BITS``, else 1."""
    if numel >= LANE_SPLIT_MIN_NUMEL:
        return 2
    return 2 if numel >= 2 and expected_bits(numel, p) >= LANE_SPLIT_MIN_BITS else 1


def lane_split(numel: int, lanes: int) -> int:
    """Entries in lane 0: all of them, or the first ceil(numel / 2)."""
    return numel if lanes == 1 else (numel + 1) // 2


_DECODE_FAULTS = {
    ERR_TRUNCATED: (TruncatedFrameError, "ends before its {n} bits are decoded"),
    ERR_CORRUPT: (CorruptFrameError, "is corrupt (the coded value leaves its interval)"),
    ERR_PADDING: (CorruptFrameError, "has trailing bytes or a non-canonical flush"),
    ERR_RANGE: (CorruptFrameError, "decodes an index >= numel"),
    ERR_ORDER: (CorruptFrameError, "decodes indices that are not strictly increasing"),
    ERR_OVERFLOW: (CorruptFrameError, "overflows its output"),
}


def raise_for_status(status: int, what: str, n: int, *, encoding: bool = False) -> None:
    """Map a kernel status to the exception the caller should see (no-op for OK / counts)."""
    if status >= OK:
        return
    if status == ERR_NONFINITE:
        raise ConfigError("p holds NaN or a value outside [0, 1]; per-entry probabilities must "
                          "be finite numbers in [0, 1]")
    if encoding:
        if status == ERR_RANGE:
            raise ConfigError("a uint8 mask must hold only 0 and 1 (use a bool array, or "
                              "mask.astype(bool) if any non-zero value means one)")
        raise AssertionError(f"range coder failed with status {status} while encoding {what}")
    cls, msg = _DECODE_FAULTS.get(status, (CorruptFrameError, "is invalid (status {n})"))
    raise cls(f"{what} " + msg.format(n=n))


def _src(p, lo: int, hi: int):
    """The coder's view of a model on entries [lo, hi): a uint64 q or a slice of the vector."""
    return np.uint64(p) if np.ndim(p) == 0 else p[lo:hi]


def encode_bernoulli_lanes(mask: np.ndarray, p, lanes: int) -> list[bytes]:
    """Code a flat uint8 0/1 mask under q (int) or a per-entry vector; one payload per lane."""
    n = mask.size
    h = lane_split(n, lanes)
    payloads = []
    for lo, hi in ((0, h), (h, n))[:lanes]:
        out = np.empty(max_payload_bytes(hi - lo), np.uint8)
        nbytes = encode_bernoulli(mask[lo:hi], _src(p, lo, hi), out)
        raise_for_status(nbytes, "mask", n, encoding=True)
        payloads.append(out[:nbytes].tobytes())
    return payloads


_EMPTY = np.zeros(0, np.uint8)


def decode_bernoulli_lanes(payloads: list[np.ndarray], p, out: np.ndarray) -> None:
    """Decode into the flat uint8 ``out`` from one or two lane payloads (uint8 arrays)."""
    n = out.size
    h = lane_split(n, len(payloads))
    pay_b = payloads[1] if len(payloads) == 2 else _EMPTY
    status = decode_bernoulli(payloads[0], pay_b, _src(p, 0, h), _src(p, h, n), out[:h], out[h:])
    raise_for_status(status, f"mask payload ({len(payloads)} lane(s))", n)


def encode_adaptive(mask: np.ndarray, ones: int) -> bytes:
    """The enumerative payload of a flat uint8 0/1 mask holding ``ones`` ones."""
    out = np.empty(max_payload_bytes(mask.size), np.uint8)
    nbytes = encode_enumerative(mask, ones, out)
    raise_for_status(nbytes, "mask", mask.size, encoding=True)
    return out[:nbytes].tobytes()


def decode_adaptive(payload: np.ndarray, ones: int, out: np.ndarray) -> None:
    """Decode an enumerative payload into the flat uint8 ``out`` (``ones`` <= out.size)."""
    status = decode_enumerative(payload, ones, out)
    raise_for_status(status, "mask payload (adaptive model)", out.size)
