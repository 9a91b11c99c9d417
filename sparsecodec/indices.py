"""Index-set coders: how the positions of a top-k message travel.

A sorted support ``idx`` (int64, strictly increasing, in ``[0, numel)``) becomes a payload that
decodes from ``(payload, numel, k)`` alone. Coder parameters are *derived* from ``(numel, k)``,
never sent. Wire ids (:data:`INDEX_CODERS`) are stable forever.

=========  =================================================================  ====================
coder      payload                                                            bits / log2 C(n,k)
=========  =================================================================  ====================
raw        k indices at ``w = max(1, (numel-1).bit_length())`` bits, MSB first  1.3 - 12 (iid)
golomb     gaps ``idx_i - idx_{i-1} - 1``, Golomb code, Gallager-Van Voorhis m  1.002 - 1.014 (p<=0.3)
eliasfano  Elias-Fano, ``L = floor(log2(numel/k))`` low bits, upper bitmap      1.03 - 1.5
bitmap     arithmetic-coded bitmap (:mod:`sparsecodec.entropy_index`), O(n)     ~1 + 4.6 bits
zstd       gaps as LEB128 varints in one magicless zstd frame (level 9)         << 1 if structured
=========  =================================================================  ====================

(iid supports, k >= 100, n in 1e5..1e7, varint(k) included; ``benchmarks/indices_bench.py``.)
Every bit-packed payload ends at the next byte boundary with zero padding; leftover bytes or
non-zero padding bits are a :class:`~sparsecodec.errors.CorruptFrameError`. When ``k == 0`` or
``k == numel`` the support is implied by ``(numel, k)`` and every coder's payload is empty.

Example:
    >>> import numpy as np
    >>> idx = np.array([3, 10, 11, 500], dtype=np.int64)
    >>> payload = encode_indices(idx, 1000, "golomb")
    >>> decode_indices(payload, 1000, 4, "golomb").tolist()
    [3, 10, 11, 500]
    >>> index_payload_bits(idx, 1000, "golomb") == 8 * len(payload)
    True
    >>> choose_index_coder(np.arange(0, 10_000, 10), 10_000)   # a strided support
    'zstd'
"""

from __future__ import annotations

import math
import operator
from functools import lru_cache

import numpy as np

from ._kernels import (ERR_CORRUPT, ERR_ORDER, ERR_OVERFLOW, ERR_PADDING, ERR_RANGE,
                       ERR_TRUNCATED, OK)
from ._kernels.bitio import PAD
from ._kernels.eliasfano import ef_decode, ef_encode
from ._kernels.golomb import golomb_decode, golomb_encode, golomb_scan
from ._kernels.rawbits import raw_decode, raw_encode
from ._kernels.varint import gap_varints_encode
from .bounds import topk_index_bits
from .errors import ConfigError, CorruptFrameError, TruncatedFrameError
from .zstd_index import ZSTD_LEVEL
from .zstd_index import zstd_decode as _zstd_decode
from .zstd_index import zstd_encode as _zstd_encode
from .zstd_index import zstd_context as _zstd

__all__ = ["INDEX_CODERS", "DECODE_SPEED_ORDER", "FAST_CODERS", "NEAR_TIE", "NEAR_BOUND", "ZSTD_LEVEL", "encode_indices",
           "decode_indices", "index_payload_bits", "choose_index_coder", "raw_width",
           "golomb_parameter", "eliasfano_low_bits"]

INDEX_CODERS = {"raw": 0, "golomb": 1, "eliasfano": 2, "bitmap": 3, "zstd": 4, "gaps": 5}
_NAME_OF_ID = {v: k for k, v in INDEX_CODERS.items()}

#: Near-ties in :func:`choose_index_coder` go to the coder that comes first here: the order of
#: decode speed measured by ``benchmarks.indices_bench.bench_index_decode``.
DECODE_SPEED_ORDER = ("raw", "eliasfano", "zstd", "golomb", "gaps", "bitmap")
#: Coders whose decode is a few ns per index; "gaps" (arithmetic-coded, ~20x slower per
#: index) and "bitmap" (O(numel)) are used only where these are not already near the bound.
FAST_CODERS = ("raw", "eliasfano", "zstd", "golomb")
#: A fast coder within this fraction of log2 C(numel, k) is preferred to the slow ones.
NEAR_BOUND = 0.005
#: "gaps" (O(k)) is preferred to "bitmap" (O(numel)) unless bitmap saves more than this.
SLOW_TIE_BITS = 16
#: Candidates within this fraction of the smallest size count as tied.
NEAR_TIE = 0.003
_LOG_FRAC_BITS = 64


# -- parameters derived from (numel, k) -------------------------------------------------------
def raw_width(numel: int) -> int:
    """Bits per index of the raw coder: ``max(1, (numel-1).bit_length())``.

    >>> raw_width(1000), raw_width(1024), raw_width(1025)
    (10, 10, 11)
    """
    return max(1, (int(numel) - 1).bit_length())


def eliasfano_low_bits(numel: int, k: int) -> int:
    """Elias-Fano's ``L = floor(log2(numel / k))`` in integer arithmetic (0 when k == 0).

    >>> eliasfano_low_bits(10**7, 10**4), eliasfano_low_bits(1000, 1000)
    (9, 0)
    """
    numel, k = int(numel), int(k)
    if k <= 0:
        return 0
    # floor(log2(x)) == floor(log2(floor(x))) for real x >= 1
    return max(0, (numel // k).bit_length() - 1)


def _log2_ratio_fixed(a: int, b: int) -> int:
    """``log2(a / b) * 2**64`` rounded down, for integers ``a >= b >= 1``, in integer arithmetic.

    Integer-only so that encoder and decoder derive the same Golomb parameter on every
    machine (libm ``log`` may differ in the last ulp between platforms).
    """
    frac = _LOG_FRAC_BITS
    e = a.bit_length() - b.bit_length()  # >= 0 because a >= b
    if a < (b << e):
        e -= 1
    # y = a / (b * 2**e) in [1, 2), as a fixed-point number with `frac` fractional bits
    y = (a << frac) // (b << e)
    result = e << frac
    two = 2 << frac
    for i in range(frac):  # one bit of the fraction per squaring
        y = (y * y) >> frac
        if y >= two:
            y >>= 1
            result |= 1 << (frac - 1 - i)
    return result


@lru_cache(maxsize=4096)
def golomb_parameter(numel: int, k: int) -> tuple[int, int, int]:
    """``(m, c, cutoff)``: the Golomb parameter for ``p = k/numel`` and its truncated-binary split.

    ``m`` is Gallager and Van Voorhis' optimum for a geometric source with ``theta = 1 - p``,
    the smallest m with ``theta**m + theta**(m+1) <= 1``, i.e.
    ``m = ceil(log(1 + theta) / -log(theta))``, evaluated with the 64-bit fixed-point
    logarithms of :func:`_log2_ratio_fixed`. ``c = ceil(log2 m)``, ``cutoff = 2**c - m``.

    >>> golomb_parameter(10**7, 10**4)
    (693, 10, 331)
    >>> golomb_parameter(100, 100)
    (1, 0, 0)
    """
    numel, k = int(numel), int(k)
    if k <= 0 or k >= numel:
        m = 1
    else:
        # log(1 + theta) = log2((2n - k) / n);  -log(theta) = log2(n / (n - k))
        num = _log2_ratio_fixed(2 * numel - k, numel)
        den = _log2_ratio_fixed(numel, numel - k)
        m = max(1, -(-num // den))
    c = (m - 1).bit_length()
    return m, c, (1 << c) - m


# -- input handling ----------------------------------------------------------------------------
def _coder_name(coder, *, allow_id: bool) -> str:
    if isinstance(coder, str):
        if coder in INDEX_CODERS:
            return coder
        hint = " (call choose_index_coder() to resolve 'auto')" if coder == "auto" else ""
        raise ConfigError(f"unknown index coder {coder!r}{hint}; expected one of {sorted(INDEX_CODERS)}")
    if allow_id and isinstance(coder, (int, np.integer)) and not isinstance(coder, bool):
        if int(coder) in _NAME_OF_ID:
            return _NAME_OF_ID[int(coder)]
        raise ConfigError(f"unknown index coder id {int(coder)}; expected one of {sorted(_NAME_OF_ID)}")
    raise ConfigError(f"index coder must be a name{' or wire id' if allow_id else ''}, got {coder!r}")


def _count(value, what: str) -> int:
    try:
        n = operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {type(value).__name__}") from None
    if n < 0:
        raise ConfigError(f"{what} must be >= 0, got {n}")
    return n


def _support(idx, numel) -> tuple[np.ndarray, int]:
    """The support as a contiguous int64 array (not yet validated) and numel as an int."""
    numel = _count(numel, "numel")
    arr = np.asarray(idx)
    if arr.dtype != np.int64:
        if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise ConfigError(f"indices must be an integer array, got dtype {arr.dtype}")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
            raise ConfigError(f"index {int(arr.max())} is out of range for numel={numel}")
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ConfigError(f"indices must be a 1-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr), numel


def _raise_bad_support(status: int, idx: np.ndarray, numel: int) -> None:
    if status == ERR_RANGE:
        bad = idx[(idx < 0) | (idx >= numel)]
        raise ConfigError(f"index {int(bad[0])} is outside [0, numel={numel})")
    if status == ERR_ORDER:
        at = int(np.flatnonzero(np.diff(idx) <= 0)[0])
        raise ConfigError(f"indices must be strictly increasing: idx[{at}]={int(idx[at])} is "
                          f"followed by {int(idx[at + 1])}; sort and deduplicate them first")
    raise AssertionError(f"unexpected support status {status}")


def _scan(idx, numel) -> tuple[np.ndarray, int, tuple[int, int, int], int, int]:
    """Validate a support in one kernel pass that also sizes its Golomb code.

    Returns ``(idx, numel, (m, c, cutoff), Golomb codeword bits (before padding), equal
    neighbouring gaps)``.
    """
    idx, numel = _support(idx, numel)
    golomb = golomb_parameter(numel, idx.size)
    status, nbits, repeats = golomb_scan(idx, numel, *golomb)
    if status != OK:
        _raise_bad_support(status, idx, numel)
    return idx, numel, golomb, nbits, repeats


# -- public API --------------------------------------------------------------------------------
def encode_indices(idx: np.ndarray, numel: int, coder: str) -> bytes:
    """The payload of a sorted support under a concrete coder (not ``"auto"``).

    ``idx`` must be strictly increasing integers in ``[0, numel)`` (ConfigError otherwise,
    checked by one O(k) kernel pass). The payload decodes with
    ``decode_indices(payload, numel, len(idx), coder)``.

    >>> encode_indices(np.array([1, 2, 6]), 8, "raw").hex()   # 3-bit fields 001 010 110
    '2b00'
    >>> encode_indices(np.arange(5), 5, "golomb")              # k == numel: nothing to send
    b''
    """
    name = _coder_name(coder, allow_id=False)
    idx, numel, golomb, golomb_bits, _ = _scan(idx, numel)
    k = idx.size
    if k == 0 or k == numel:
        return b""
    if name == "zstd":
        return _zstd_encode(idx, numel)
    if name == "bitmap":
        from .entropy_index import encode_bitmap  # noqa: PLC0415 (another module, loaded on use)

        return bytes(encode_bitmap(idx, numel))
    if name == "gaps":
        from .entropy_index import encode_gaps  # noqa: PLC0415

        return bytes(encode_gaps(idx, numel))
    if name == "golomb":
        nbits = golomb_bits
    elif name == "raw":
        nbits = k * raw_width(numel)
    else:
        low_bits = eliasfano_low_bits(numel, k)
        nbits = k * low_bits + (int(idx[-1]) >> low_bits) + k
    nbytes = (nbits + 7) >> 3
    out = np.zeros(nbytes + PAD, np.uint8)  # the writers store whole 8-byte words
    if name == "golomb":
        written = golomb_encode(idx, *golomb, out)
    elif name == "raw":
        written = raw_encode(idx, raw_width(numel), out)
    else:
        written = ef_encode(idx, low_bits, out)
    if written != nbits:
        raise AssertionError(f"{name} encoder wrote {written} bits, expected {nbits}")
    return out[:nbytes].tobytes()


_FAULTS = {
    ERR_TRUNCATED: (TruncatedFrameError, "ends before its {k} indices are decoded"),
    ERR_RANGE: (CorruptFrameError, "decodes an index >= numel"),
    ERR_ORDER: (CorruptFrameError, "decodes indices that are not strictly increasing"),
    ERR_PADDING: (CorruptFrameError, "has trailing bytes or non-zero padding bits after its {k} indices"),
    ERR_CORRUPT: (CorruptFrameError, "holds a malformed codeword"),
    ERR_OVERFLOW: (CorruptFrameError, "overflows its output"),
}


def _frame_error(status: int, name: str, nbytes: int, numel: int, k: int) -> Exception:
    cls, what = _FAULTS.get(status, (CorruptFrameError, f"is invalid (status {status})"))
    return cls(f"{name} index payload of {nbytes} bytes (numel={numel}, k={k}) " + what.format(k=k))


def _min_payload_bits(name: str, numel: int, k: int) -> int:
    """A lower bound on the payload bits of k indices (0 where there is none: zstd, bitmap)."""
    if name == "raw":
        return k * raw_width(numel)
    if name == "golomb":  # a codeword has its stop bit and at least c - 1 remainder bits
        return k * max(1, golomb_parameter(numel, k)[1])
    if name == "eliasfano":  # L low bits and one upper one per index
        return k * (eliasfano_low_bits(numel, k) + 1)
    return 0


def decode_indices(payload, numel: int, k: int, coder, out: np.ndarray | None = None) -> np.ndarray:
    """Decode a payload (untrusted bytes) into ``k`` strictly increasing int64 indices ``< numel``.

    ``coder`` is a name or a wire id. Raises :class:`TruncatedFrameError` when the payload
    ends early and :class:`CorruptFrameError` for anything else wrong with it (out-of-range or
    unordered indices, malformed codewords, trailing bytes, non-zero padding); ConfigError
    when the *call* is wrong (k > numel, a bad ``out``). Work and memory are
    O(k + len(payload)); the Python part is O(1).

    >>> decode_indices(bytes.fromhex("2b00"), 8, 3, "raw").tolist()
    [1, 2, 6]
    >>> decode_indices(bytes.fromhex("2b01"), 8, 3, "raw")
    Traceback (most recent call last):
    ...
    sparsecodec.errors.CorruptFrameError: raw index payload of 2 bytes (numel=8, k=3) has trailing bytes or non-zero padding bits after its 3 indices
    """
    name = _coder_name(coder, allow_id=True)
    try:
        src = np.frombuffer(payload, np.uint8)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"payload must be a contiguous bytes-like object ({exc})") from None
    numel = _count(numel, "numel")
    k = _count(k, "k")
    if k > numel or numel >= 1 << 63:
        raise ConfigError(f"need 0 <= k <= numel < 2**63, got k={k}, numel={numel}")
    if out is not None and (not isinstance(out, np.ndarray) or out.dtype != np.int64
                            or out.shape != (k,) or not out.flags.c_contiguous
                            or not out.flags.writeable):
        raise ConfigError(f"out must be a writable C-contiguous int64 array of shape ({k},)")
    nbytes = src.size
    if k == 0 or k == numel:
        if nbytes:
            raise CorruptFrameError(f"{name} index payload must be empty when k={k} and "
                                    f"numel={numel} (the support is implied), got {nbytes} bytes")
        if out is None:
            return np.arange(k, dtype=np.int64)
        out[:] = np.arange(k, dtype=np.int64)
        return out
    if 8 * nbytes < _min_payload_bits(name, numel, k):  # before anything of size k exists
        raise _frame_error(ERR_TRUNCATED, name, nbytes, numel, k)
    if out is None:
        out = np.empty(k, np.int64)
    if name == "zstd":
        status = _zstd_decode(src, numel, k, out)
    elif name == "bitmap":
        from .entropy_index import decode_bitmap  # noqa: PLC0415

        return decode_bitmap(payload, numel, k, out=out)
    elif name == "gaps":
        from .entropy_index import decode_gaps  # noqa: PLC0415

        return decode_gaps(payload, numel, k, out=out)
    else:
        # the bit readers want the payload followed by PAD zero bytes (see _kernels.bitio)
        buf = np.zeros(nbytes + PAD, np.uint8)
        buf[:nbytes] = src
        if name == "golomb":
            m, c, cutoff = golomb_parameter(numel, k)
            status = golomb_decode(buf, nbytes, numel, k, m, c, cutoff, out)
        elif name == "eliasfano":
            status = ef_decode(buf, nbytes, numel, k, eliasfano_low_bits(numel, k), out)
        else:
            status = raw_decode(buf, nbytes, numel, k, raw_width(numel), out)
    if status != OK:
        raise _frame_error(status, name, nbytes, numel, k)
    return out


def index_payload_bits(idx: np.ndarray, numel: int, coder: str) -> int:
    """Payload size in bits (a multiple of 8) without encoding, where that is cheap.

    Exact for ``raw`` and ``eliasfano`` (closed forms in numel, k and the last index) and for
    ``golomb`` (one O(k) kernel pass). ``zstd`` is exact too but *encodes* (there is no
    cheaper way to know what zstd will find). ``bitmap`` is an *estimate*: the mean size
    ``bitmap_bits_estimate(numel, k)`` from :mod:`sparsecodec.entropy_index` rounded to whole
    bytes (the real size varies by a few bits with the support). The input is validated like
    :func:`encode_indices` does.

    >>> idx = np.array([5, 9, 700, 40000, 90000])
    >>> [index_payload_bits(idx, 10**5, c) for c in ("raw", "golomb", "eliasfano")]
    [88, 80, 80]
    """
    name = _coder_name(coder, allow_id=False)
    idx, numel, _, golomb_bits, _ = _scan(idx, numel)
    if idx.size in (0, numel):
        return 0
    if name == "golomb":
        return 8 * ((golomb_bits + 7) >> 3)
    if name == "zstd":
        return 8 * len(_zstd_encode(idx, numel))
    if name == "gaps":
        from .entropy_index import gaps_bits_estimate  # noqa: PLC0415

        return 8 * round(gaps_bits_estimate(numel, idx.size) / 8)
    return _closed_form_bits(name, idx, numel)


def _closed_form_bits(name: str, idx: np.ndarray, numel: int) -> int:
    k = idx.size
    if name == "raw":
        return 8 * ((k * raw_width(numel) + 7) >> 3)
    if name == "eliasfano":
        low_bits = eliasfano_low_bits(numel, k)
        return 8 * ((k * low_bits + (int(idx[-1]) >> low_bits) + k + 7) >> 3)
    from .entropy_index import bitmap_bits_estimate  # noqa: PLC0415

    return 8 * round(bitmap_bits_estimate(numel, k) / 8)  # the estimate is a mean size


def _looks_structured(repeats: int, k: int, numel: int) -> bool:
    """Whether consecutive equal gaps are far more frequent than in an iid support.

    For iid positions the gaps are ~geometric(p = k/numel) and two consecutive ones are equal
    with probability ``sum_g P(g)**2 = p / (2 - p)``. We call the support structured when the
    observed fraction exceeds that by 0.1 plus three standard errors: single-stride supports
    score ~1 and runs of length L ~(L-1)/L; iid ones essentially never pass.
    """
    if k < 3:
        return False
    p = k / numel
    expected = p / (2.0 - p)
    pairs = k - 1
    return repeats / pairs > expected + 0.1 + 3.0 * math.sqrt(expected * (1 - expected) / pairs)


#: The probe looks at this many leading gaps ...
PROBE_GAPS = 4096
#: ... and calls the support structured when zstd (level 1) codes them in less than this
#: fraction of their Golomb bits.
PROBE_GAIN = 0.75


def _probe_is_structured(idx: np.ndarray, numel: int, golomb: tuple[int, int, int]) -> bool:
    """Structure that equal neighbouring gaps miss: a pattern repeating with a long period.

    A weight matrix's chosen columns give the same *sequence* of gaps row after row, so
    neighbouring gaps differ but an LZ match finder sees long repeats. We compress the first
    :data:`PROBE_GAPS` gap varints at zstd level 1 (tens of microseconds, independent of k)
    and compare with their Golomb size, which zstd does not approach on iid gaps.
    """
    head = idx[:PROBE_GAPS]
    raw = np.empty(10 * head.size, np.uint8)
    nbytes = gap_varints_encode(head, raw)
    status, golomb_bits, _ = golomb_scan(head, numel, *golomb)
    if nbytes < 0 or status != OK:
        raise AssertionError("probe on a validated support failed")
    return 8 * len(_zstd(probe=True).compress(raw[:nbytes])) < PROBE_GAIN * golomb_bits


def choose_index_coder(idx: np.ndarray, numel: int) -> str:
    """The coder with the smallest payload for this support, found without encoding them all.

    Sizes: ``raw`` and ``eliasfano`` in closed form, ``golomb`` from one kernel pass (which
    also counts equal neighbouring gaps), ``bitmap`` from its O(1) estimate of the mean size
    (``log2 C(numel, k) + 4.6`` bits; only for numel within its ``MAX_NUMEL``). ``zstd`` is
    encoded once, and only when the gaps look structured: many equal neighbouring gaps
    (:func:`_looks_structured`, free) or, failing that, a fixed-size zstd probe of the first
    4096 gaps that beats Golomb clearly (:func:`_probe_is_structured`).
    ``gaps`` and ``bitmap`` (arithmetic-coded, ~log2 C + 5 bits) come from O(1) estimates.

    Rule, balancing size against decode speed:

    1. the fast coders (raw, eliasfano, zstd, golomb; a few ns per index) win when the best
       of them is within ``NEAR_TIE`` (0.3 %) of the smallest candidate or within
       ``NEAR_BOUND`` (0.5 %) of ``log2 C(numel, k)``; among those within that limit the
       fastest to decode (first in :data:`DECODE_SPEED_ORDER`) is chosen;
    2. otherwise (small k, where Golomb's per-gap redundancy shows, or densities near 0.4
       where it is ~3 % off) the arithmetic coders: ``gaps`` (O(k)) unless ``bitmap``
       (O(numel)) saves more than ``SLOW_TIE_BITS``.

    With ``k == 0`` or ``k == numel`` every payload is empty and the answer is ``"raw"``.

    >>> rng = np.random.default_rng(0)
    >>> choose_index_coder(np.sort(rng.choice(10**6, 1000, replace=False)), 10**6)
    'golomb'
    """
    idx, numel, golomb, golomb_bits, repeats = _scan(idx, numel)
    k = idx.size
    if k == 0 or k == numel:
        return "raw"
    sizes = {name: _closed_form_bits(name, idx, numel) for name in ("raw", "eliasfano")}
    sizes["golomb"] = 8 * ((golomb_bits + 7) >> 3)
    from . import entropy_index  # noqa: PLC0415 (another module, loaded on use)

    if _looks_structured(repeats, k, numel) or _probe_is_structured(idx, numel, golomb):
        sizes["zstd"] = 8 * len(_zstd_encode(idx, numel))
    slow = {}
    if numel <= entropy_index.MAX_NUMEL:  # the bitmap coder's own limit
        slow["bitmap"] = 8 * round(entropy_index.bitmap_bits_estimate(numel, k) / 8)
    if numel <= entropy_index.MAX_GAPS_NUMEL:   # payloads are whole bytes, like the others'
        slow["gaps"] = 8 * round(entropy_index.gaps_bits_estimate(numel, k) / 8)
    fast_best = min(sizes.values())
    slow_best = min(slow.values(), default=float("inf"))
    # the fast tier wins unless it is neither near the slow coders nor near the bound
    if fast_best <= slow_best * (1.0 + NEAR_TIE) or fast_best <= topk_index_bits(numel, k) * (1.0 + NEAR_BOUND):
        limit = fast_best * (1.0 + NEAR_TIE)
        return next(name for name in FAST_CODERS if name in sizes and sizes[name] <= limit)
    if "gaps" in slow and ("bitmap" not in slow or slow["gaps"] <= slow["bitmap"] + SLOW_TIE_BITS):
        return "gaps"
    return "bitmap"
