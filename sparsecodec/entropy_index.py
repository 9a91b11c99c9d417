"""Index sets coded with the binary range coder: the ``bitmap`` and ``gaps`` index coders.

A sorted index set of size k in [0, numel) is the mask with ones at those positions. The
decoder knows k, so the exact enumerative model applies: bit i is a one with probability
(ones left) / (positions left), an integer-only q (:func:`sparsecodec.models.enumerative_probability`).
That is the uniform distribution over all k-subsets, so the payload is ``log2 C(numel, k)``
plus the coder's flush (<= 9 bits, ~4.6 on average) and a rounding term, whereas Bernoulli(k/numel) would cost
``log2 C(n, k) + 0.5 log2(2 pi k (1 - k/n))``. Positions whose bit is determined (no ones
left, or only ones left) are not coded, so the tail of the bitmap is free.

The payload is exactly the range-coder stream (no header: numel and k are known to the
decoder); :func:`decode_bitmap` accepts only what :func:`encode_bitmap` writes, so trailing or
altered bytes raise :class:`~sparsecodec.errors.FrameError` subclasses. Cost: O(numel) time,
one integer division per coded position; memory O(k).

``gaps`` (for low densities): each gap (zeros before the next one) is coded through its binary
digits under a geometric model with p = (ones left + 1) / (positions left + 1), whose digits
are independent Bernoullis (digit i is one with probability s / (1 + s), s = (1 - p)**(2**i),
s in 32-bit integer fixed point); digits that would overshoot the largest possible gap are
known zeros and not coded. O(k log(numel/k)) time. The model costs ~0.8 bit over
``log2 C(n, k)`` at k = 100; with the flush, the payload averages ``log2 C(n, k) + 5.3`` bits
(measured over n in [1e5, 1e7]; Golomb: + 9.7; the O(numel) ``bitmap``: + 4.9).

Example:
    >>> import numpy as np
    >>> idx = np.array([3, 17, 18, 60])
    >>> payload = encode_bitmap(idx, 100)
    >>> decode_bitmap(payload, 100, 4).tolist()
    [3, 17, 18, 60]
    >>> from sparsecodec.bounds import topk_index_bits
    >>> 8 * len(payload) <= topk_index_bits(100, 4) + 16
    True
"""

from __future__ import annotations

import numpy as np

from ._kernels import ERR_ORDER, ERR_OVERFLOW, ERR_RANGE
from ._kernels import enumerative as _enum
from ._kernels.enumerative import decode_enumerative_indices, encode_enumerative_indices
from ._kernels.rangecoder import max_payload_bytes
from .bounds import topk_index_bits
from ._kernels import OK
from .errors import ConfigError
from .index_coders import Cost, IndexCoder, Support
from .models import raise_for_status

__all__ = ["encode_bitmap", "decode_bitmap", "bitmap_bits_estimate", "encode_gaps",
           "decode_gaps", "gaps_bits_estimate", "MAX_NUMEL", "MAX_GAPS_NUMEL", "BITMAP", "GAPS"]

#: the enumerative q computes ones * 2**20 in 64 bits; numel stays far below that limit
MAX_NUMEL = 1 << 42
#: the gap model's 32-bit fixed point needs (positions left) << 32 to fit in 64 bits
MAX_GAPS_NUMEL = 1 << 32
#: mean payload bits of ``gaps`` over log2 C(n, k) (model ~0.8 + flush; measured at k = 10,
#: 100, 1000 over n in [1e5, 1e7]: 5.0..5.3; tests/test_entropy_index.py checks it)
_GAPS_MEAN_OVERHEAD_BITS = 5.2

#: the mean payload bits over log2 C(n, k): the prefix-free flush plus byte rounding (measured
#: over 2000 random supports: mean 4.6, range 0..9, std 2.3; see
#: tests/test_entropy_index.py::test_bitmap_estimate_is_close)
_MEAN_OVERHEAD_BITS = 4.6


def _check_sizes(numel, k, limit: int = MAX_NUMEL) -> tuple[int, int]:
    try:
        numel, k = int(numel), int(k)
    except (TypeError, ValueError):
        raise ConfigError(f"numel and k must be integers, got {numel!r}, {k!r}") from None
    if not 0 <= k <= numel <= limit:
        raise ConfigError(f"need 0 <= k <= numel <= {limit}, got k={k}, numel={numel}")
    return numel, k


def _encode(kernel, idx, numel: int, limit: int, capacity, name: str) -> bytes:
    arr = np.asarray(idx)
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise ConfigError(f"idx must be a 1-D integer array, got shape {arr.shape} dtype {arr.dtype}")
    numel, k = _check_sizes(numel, arr.size, limit)
    if arr.dtype.kind == "u" and arr.size and int(arr.max()) >= numel:
        raise ConfigError(f"indices must be < numel={numel}")
    arr = np.ascontiguousarray(arr, dtype=np.int64)
    # First try a buffer sized from the expected payload (the kernels check every write and
    # report ERR_OVERFLOW); only a support far off the estimate pays for the worst-case size,
    # which is ~20x larger (every coded bit may cost up to 21 bits).
    worst = capacity(numel, k)
    expected = int(topk_index_bits(numel, k) * 1.25 / 8) + 64
    out = np.empty(min(worst, expected), np.uint8)
    nbytes = kernel(arr, numel, out)
    if nbytes == ERR_OVERFLOW and out.size < worst:
        out = np.empty(worst, np.uint8)
        nbytes = kernel(arr, numel, out)
    if nbytes in (ERR_ORDER, ERR_RANGE):
        raise ConfigError(f"idx must be strictly increasing integers in [0, {numel}) "
                          f"(status {nbytes}); sort and deduplicate them first")
    raise_for_status(nbytes, f"{name} index set", numel, encoding=True)
    return out[:nbytes].tobytes()


def _decode(kernel, payload, numel: int, k: int, out, limit: int, name: str) -> np.ndarray:
    try:
        src = np.frombuffer(payload, np.uint8)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"payload must be a contiguous bytes-like object ({exc})") from None
    numel, k = _check_sizes(numel, k, limit)
    if out is None:
        out = np.empty(k, np.int64)
    elif (not isinstance(out, np.ndarray) or out.dtype != np.int64 or out.shape != (k,)
          or not out.flags.c_contiguous or not out.flags.writeable):
        raise ConfigError(f"out must be a writable C-contiguous int64 array of shape ({k},)")
    status = kernel(src, numel, out)
    raise_for_status(status, f"{name} index payload of {src.size} bytes (numel={numel}, k={k})", k)
    return out


def encode_bitmap(idx: np.ndarray, numel: int) -> bytes:
    """The payload of a strictly increasing int index set in [0, numel) (k = len(idx) is implied).

    >>> encode_bitmap(np.array([0, 1]), 2)      # k == numel: nothing to send
    b''
    """
    return _encode(encode_enumerative_indices, idx, numel, MAX_NUMEL,
                   lambda n, k: max_payload_bytes(n), "bitmap")


def decode_bitmap(payload, numel: int, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode ``k`` strictly increasing int64 indices < numel from untrusted ``payload``.

    Raises :class:`~sparsecodec.errors.TruncatedFrameError` / ``CorruptFrameError`` for a bad
    payload and ConfigError for a bad call. The payload must be consumed exactly.
    """
    return _decode(decode_enumerative_indices, payload, numel, k, out, MAX_NUMEL, "bitmap")


def encode_gaps(idx: np.ndarray, numel: int) -> bytes:
    """The ``gaps`` payload of a strictly increasing index set in [0, numel <= 2**32).

    >>> payload = encode_gaps(np.array([5, 900_000]), 10**6)
    >>> decode_gaps(payload, 10**6, 2).tolist()
    [5, 900000]
    """
    return _encode(_enum.encode_gaps, idx, numel, MAX_GAPS_NUMEL,
                   lambda n, k: max_payload_bytes(34 * k), "gaps")


def decode_gaps(payload, numel: int, k: int, out: np.ndarray | None = None) -> np.ndarray:
    """Decode ``k`` strictly increasing int64 indices < numel from an untrusted ``gaps`` payload.

    Every decoded gap is within range by construction; a payload that is not exactly the
    encoder's output raises a :class:`~sparsecodec.errors.FrameError` subclass.
    """
    return _decode(_enum.decode_gaps, payload, numel, k, out, MAX_GAPS_NUMEL, "gaps")


def gaps_bits_estimate(numel: int, k: int) -> float:
    """Expected payload bits of :func:`encode_gaps`: ``log2 C(numel, k) + 5.2`` (0 if k in {0, numel}).

    >>> round(gaps_bits_estimate(10**7, 100))
    1806
    """
    numel, k = _check_sizes(numel, k, MAX_GAPS_NUMEL)
    if k == 0 or k == numel:
        return 0.0
    return topk_index_bits(numel, k) + _GAPS_MEAN_OVERHEAD_BITS


def bitmap_bits_estimate(numel: int, k: int) -> float:
    """Expected payload bits of :func:`encode_bitmap`: ``log2 C(numel, k) + 4.6`` (0 if k in {0, numel}).

    O(1); the index-coder choice compares it with the other coders' exact sizes.

    >>> round(bitmap_bits_estimate(10**6, 10**4))
    80790
    """
    numel, k = _check_sizes(numel, k)
    if k == 0 or k == numel:
        return 0.0
    return topk_index_bits(numel, k) + _MEAN_OVERHEAD_BITS


# -- the index-coder table's records (sizes are the O(1) mean estimates above) ------------------
def _bitmap_decode(src: np.ndarray, numel: int, k: int, out: np.ndarray) -> int:
    decode_bitmap(src, numel, k, out=out)  # raises a FrameError subclass for a bad payload
    return OK


def _gaps_decode(src: np.ndarray, numel: int, k: int, out: np.ndarray) -> int:
    decode_gaps(src, numel, k, out=out)
    return OK


def _bitmap_encode(s: Support) -> bytes:
    return encode_bitmap(s.idx, s.numel)


def _gaps_encode(s: Support) -> bytes:
    return encode_gaps(s.idx, s.numel)


# costs in ns, fitted to iid supports, n = 1e3..1e7, k = 10..1e6 (benchmarks/indices_bench.py
# bench_index_costs):
# the bitmap walks every position up to the last index, gaps codes ~log2(n/k) digits per index
BITMAP = IndexCoder(
    "bitmap", 3, encode=_bitmap_encode, decode=_bitmap_decode,
    size=lambda s: bitmap_bits_estimate(s.numel, s.k), size_exact=False, max_numel=MAX_NUMEL,
    encode_cost=Cost(2000, 1.0, 4.0), decode_cost=Cost(2000, 10.0, 5.3),
    summary="arithmetic-coded bitmap under the exact enumerative model, O(numel)")
GAPS = IndexCoder(
    "gaps", 5, encode=_gaps_encode, decode=_gaps_decode,
    size=lambda s: gaps_bits_estimate(s.numel, s.k), size_exact=False, max_numel=MAX_GAPS_NUMEL,
    encode_cost=Cost(4000, 80.0), decode_cost=Cost(4000, 78.0),
    summary="arithmetic-coded gap digits under a geometric model, O(k log(numel/k))")
