"""Index-set coders: how the positions of a top-k message travel.

A sorted support ``idx`` (int64, strictly increasing, in ``[0, numel)``) becomes a payload that
decodes from ``(payload, numel, k)`` alone. Coder parameters are *derived* from ``(numel, k)``,
never sent. Wire ids (:data:`INDEX_CODERS`) are stable forever.

Every coder is one record of the table in :mod:`sparsecodec.index_coders` (name, wire id,
encode, decode, exact or estimated size, measured cost), built next to its implementation and
registered below; this module's functions only read that table. A new coder is one module
plus one ``register_index_coder`` line.

=========  ==  =============================================================  ====================
coder      id  payload                                                        bits / log2 C(n,k)
=========  ==  =============================================================  ====================
raw        0   k indices at ``w = max(1, (numel-1).bit_length())`` bits        1.3 - 12 (iid)
golomb     1   gaps ``idx_i - idx_{i-1} - 1``, Golomb, Gallager-Van Voorhis m  1.002 - 1.014 (p<=0.3)
eliasfano  2   Elias-Fano, ``L = floor(log2(numel/k))`` low bits, upper bitmap  1.03 - 1.5
bitmap     3   arithmetic-coded bitmap (:mod:`sparsecodec.entropy_index`), O(n) ~1 + 4.6 bits
zstd       4   gaps as LEB128 varints (or u32) in one magicless zstd frame, 9   << 1 if structured
gaps       5   arithmetic-coded gap digits, geometric model, O(k log(n/k))     ~1 + 5.2 bits
zstd19     6   the zstd layout at level 19 (same decoder; 10-30x slower)       2-11 % below zstd
=========  ==  =============================================================  ====================

(iid supports, k >= 100, n in 1e5..1e7, varint(k) included; ``benchmarks/indices_bench.py``;
zstd19 on structured supports, ``tests/test_index_table.py``.)
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
from typing import Iterable

import numpy as np

from ._kernels import (ERR_CORRUPT, ERR_ORDER, ERR_OVERFLOW, ERR_PADDING, ERR_RANGE,
                       ERR_TRUNCATED, OK)
from ._kernels.varint import gap_varints_encode
from .errors import ConfigError, CorruptFrameError, TruncatedFrameError
from .index_coders import (INDEX_CODERS, IndexCoder, Support, auto_candidates, count, get_index_coder,
                           register_index_coder, registered_index_coders, scan_support)
from .index_params import eliasfano_low_bits, golomb_parameter, raw_width
from .zstd_index import PROBE_LEVEL, ZSTD_LEVEL, zstd_compressor
from . import entropy_index, index_basic, index_zstd19, zstd_index

__all__ = ["INDEX_CODERS", "SIZE_TOLERANCE", "SIZE_TOLERANCE_BITS", "SPEEDUP", "ZSTD_LEVEL", "encode_indices",
           "encode_indices_auto", "decode_indices", "index_payload_bits", "choose_index_coder",
           "raw_width", "golomb_parameter", "eliasfano_low_bits", "register_index_coder",
           "registered_index_coders", "get_index_coder", "IndexCoder"]

# -- the built-in coders: a new coder is its module plus one line here ------------------------
register_index_coder(index_basic.RAW)
register_index_coder(index_basic.GOLOMB)
register_index_coder(index_basic.ELIASFANO)
register_index_coder(entropy_index.BITMAP)
register_index_coder(zstd_index.ZSTD)
register_index_coder(entropy_index.GAPS)
register_index_coder(index_zstd19.ZSTD19)

#: In :func:`choose_index_coder`, a candidate within this fraction of the smallest candidate's
#: bits, or within SIZE_TOLERANCE_BITS of them (the arithmetic coders enter with mean sizes
#: 0.6 bit apart, a difference no payload shows: tiny k would otherwise go to O(numel) bitmap) ...
SIZE_TOLERANCE = 0.01
SIZE_TOLERANCE_BITS = 1
#: ... that is at least this many times faster (encode + decode, from the table's measured
#: costs) than the current pick takes its place.
SPEEDUP = 3.0
#: A coder whose size is an estimate is encoded to size it exactly when its measured encode
#: cost is at most this (ns): always (small tensors, where the estimate's +-8 bits matter) ...
EXACT_SIZE_BUDGET_NS = 20_000
#: ... and on supports that look structured, where the estimates do not hold
STRUCTURED_EXACT_SIZE_BUDGET_NS = 100_000


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
    record = get_index_coder(coder)
    support = scan_support(idx, numel, golomb_payload=record.name == "golomb")
    if support.k in (0, support.numel):
        return b""
    return record.encode(support)


def encode_indices_auto(idx: np.ndarray, numel: int, coders: Iterable[str] | None = None) -> tuple[str, bytes]:
    """``(coder, payload)``: :func:`choose_index_coder` and :func:`encode_indices` in one
    validation pass (and without encoding twice a coder the choice had to encode to size).

    >>> coder, payload = encode_indices_auto(np.arange(0, 10_000, 10), 10_000)
    >>> coder, len(payload), decode_indices(payload, 10_000, 1000, coder)[-3:].tolist()
    ('zstd', 15, [9970, 9980, 9990])
    """
    candidates = _candidates(coders)
    # the scan writes the Golomb payload on the way (the usual pick for large k)
    support = scan_support(idx, numel, golomb_payload=any(c.name == "golomb" for c in candidates))
    if support.k in (0, support.numel):
        return "raw", b""
    record, payload = _choose(support, candidates)
    return record.name, record.encode(support) if payload is None else payload


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


def decode_indices(payload, numel: int, k: int, coder, out: np.ndarray | None = None) -> np.ndarray:
    """Decode a payload (untrusted bytes) into ``k`` strictly increasing int64 indices ``< numel``.

    ``coder`` is a name or a wire id. Raises :class:`TruncatedFrameError` when the payload
    ends early and :class:`CorruptFrameError` for anything else wrong with it (out-of-range or
    unordered indices, malformed codewords, trailing bytes, non-zero padding); ConfigError
    when the *call* is wrong (k > numel, a bad ``out``). Work and memory are
    O(k + len(payload)) (O(numel) for ``bitmap``); the Python part is O(1).

    >>> decode_indices(bytes.fromhex("2b00"), 8, 3, "raw").tolist()
    [1, 2, 6]
    >>> decode_indices(bytes.fromhex("2b01"), 8, 3, "raw")
    Traceback (most recent call last):
    ...
    sparsecodec.errors.CorruptFrameError: raw index payload of 2 bytes (numel=8, k=3) has trailing bytes or non-zero padding bits after its 3 indices
    """
    record = get_index_coder(coder, allow_id=True)
    name = record.name
    try:
        src = np.frombuffer(payload, np.uint8)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"payload must be a contiguous bytes-like object ({exc})") from None
    numel = count(numel, "numel")
    k = count(k, "k")
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
    if 8 * nbytes < record.min_payload_bits(numel, k):  # before anything of size k exists
        raise _frame_error(ERR_TRUNCATED, name, nbytes, numel, k)
    if out is None:
        out = np.empty(k, np.int64)
    status = record.decode(src, numel, k, out)
    if status != OK:
        raise _frame_error(status, name, nbytes, numel, k)
    return out


def index_payload_bits(idx: np.ndarray, numel: int, coder: str) -> int:
    """Payload size in bits (a multiple of 8) without encoding, where that is cheap.

    Exact for ``raw`` and ``eliasfano`` (closed forms in numel, k and the last index) and for
    ``golomb`` (one O(k) kernel pass). The zstd coders are exact too but *encode* (there is
    no cheaper way to know what zstd will find). ``bitmap`` and ``gaps`` are *estimates*: their
    mean size (``log2 C(numel, k)`` + 4.6 and + 5.2 bits, :mod:`sparsecodec.entropy_index`)
    rounded to whole bytes (the real size varies by a few bits with the support). Each
    coder's record says which (``get_index_coder(name).size_exact``). The input is validated
    like :func:`encode_indices` does.

    >>> idx = np.array([5, 9, 700, 40000, 90000])
    >>> [index_payload_bits(idx, 10**5, c) for c in ("raw", "golomb", "eliasfano")]
    [88, 80, 80]
    """
    record = get_index_coder(coder)
    support = scan_support(idx, numel)
    if support.k in (0, support.numel):
        return 0
    bits = record.size(support)
    return int(bits) if record.size_exact else 8 * round(bits / 8)


# -- the automatic choice ----------------------------------------------------------------------
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
PROBE_GAPS = 8192
#: ... and calls the support structured when zstd (level 3) codes them in less than this
#: fraction of their Golomb bits. iid supports score >= 1.009 at densities 1e-3..0.2 and
#: 0.97 at 0.9 (n 1e4..1e7); the top 1e4 of a 1000x1000 update with column scales
#: |N(0,1)|**4 0.80..0.93 (6 seeds; zstd on the whole support ~0.76 of Golomb), the top 1e5
#: 0.89..0.91. The previous probe (4096 gaps, level 1, 0.75) missed all of those.
PROBE_GAIN = 0.92


def _probe_is_structured(s: Support) -> bool:
    """Structure that equal neighbouring gaps miss: a pattern repeating with a long period.

    A weight matrix's chosen columns give the same *sequence* of gaps row after row, so
    neighbouring gaps differ but an LZ match finder sees long repeats. We compress the first
    :data:`PROBE_GAPS` gap varints at zstd level 3 (~25 us, independent of k)
    and compare with their share of the Golomb size (the validation scan's, pro rata: a
    second scan of the head cost as much as the rest of the probe), which zstd does not
    approach on iid gaps.
    """
    head = s.idx[:PROBE_GAPS]
    raw = np.empty(10 * head.size, np.uint8)
    nbytes = gap_varints_encode(head, raw)
    if nbytes < 0:
        raise AssertionError("probe on a validated support failed")
    head_golomb_bits = s.golomb_bits * head.size / s.k
    return 8 * len(zstd_compressor(PROBE_LEVEL).compress(raw[:nbytes])) < PROBE_GAIN * head_golomb_bits


def _candidates(coders: Iterable[str] | None) -> tuple[IndexCoder, ...]:
    if coders is None:
        return auto_candidates()
    if isinstance(coders, str):
        raise ConfigError(f"coders must be an iterable of coder names, got the string {coders!r}")
    chosen = tuple(get_index_coder(name) for name in coders)
    if not chosen:
        raise ConfigError("coders must name at least one index coder")
    return chosen


def _choose(s: Support, candidates: tuple[IndexCoder, ...]) -> tuple[IndexCoder, bytes | None]:
    """The rule of :func:`choose_index_coder`; also the payload if sizing had to encode it."""
    numel, k = s.numel, s.k
    structured: bool | None = None
    sizes: dict[str, float] = {}
    payloads: dict[str, bytes] = {}
    by_name = {}
    for coder in candidates:
        if numel > coder.max_numel:
            continue
        gated = coder.auto == "structured" or coder.size_encodes
        # mean-size estimates hold for iid-like supports only (gaps codes a run of k in a few
        # bytes, not ~log2 C(n, k)): a coder cheap enough to run is sized by running it
        cost = 0.0 if coder.size_exact else coder.encode_cost.ns(numel, k)
        exact = not coder.size_exact and cost <= EXACT_SIZE_BUDGET_NS
        if structured is None and (gated or (not coder.size_exact and not exact
                                             and cost <= STRUCTURED_EXACT_SIZE_BUDGET_NS)):
            structured = _looks_structured(s.repeats, k, numel) or _probe_is_structured(s)
        if gated and not structured:
            continue
        if structured and not coder.size_exact and cost <= STRUCTURED_EXACT_SIZE_BUDGET_NS:
            exact = True
        if coder.size_encodes or exact:
            payloads[coder.name] = coder.encode(s)
            sizes[coder.name] = 8 * len(payloads[coder.name])
        else:
            sizes[coder.name] = coder.size(s)
        by_name[coder.name] = coder
    if not sizes:
        raise ConfigError(f"no candidate index coder handles numel={numel}: "
                          f"{[c.name for c in candidates]}")
    time = {name: coder.time_ns(numel, k) for name, coder in by_name.items()}
    smallest = min(sizes.values())
    within = max(smallest * (1.0 + SIZE_TOLERANCE), smallest + SIZE_TOLERANCE_BITS)
    pick = min(sizes, key=lambda name: (sizes[name], time[name]))
    while True:  # each step is >= SPEEDUP x faster, so this ends after a few steps
        faster = [name for name in sizes if sizes[name] <= within and SPEEDUP * time[name] <= time[pick]]
        if not faster:
            return by_name[pick], payloads.get(pick)
        pick = min(faster, key=lambda name: (sizes[name], time[name]))


def choose_index_coder(idx: np.ndarray, numel: int, coders: Iterable[str] | None = None) -> str:
    """The coder for this support: the smallest, unless a much faster one is nearly as small.

    Candidates: ``coders`` (names), by default every registered coder whose ``auto`` is not
    ``"never"`` (all built-ins but ``zstd19``), skipping those whose ``max_numel`` is too small.
    Sizes come from each record's ``size``: closed forms (``raw``, ``eliasfano``), the
    validation scan (``golomb``), O(1) mean estimates (``bitmap``, ``gaps``); a coder whose size
    needs an encode (zstd) is a candidate only when the support looks structured: many equal
    neighbouring gaps (:func:`_looks_structured`, free) or, failing that, a fixed-size zstd
    probe of the first 8192 gaps that beats Golomb clearly (:func:`_probe_is_structured`).
    Estimated coders whose measured cost to run is at most :data:`EXACT_SIZE_BUDGET_NS`
    (20 us: small tensors), or :data:`STRUCTURED_EXACT_SIZE_BUDGET_NS` (100 us) on a
    structured support, where the estimates do not hold, are sized by encoding.

    Rule: start from the smallest candidate (ties: the faster); while some candidate within
    :data:`SIZE_TOLERANCE` (1 %) or :data:`SIZE_TOLERANCE_BITS` (1) of the smallest size is at least :data:`SPEEDUP` (3x) faster
    to encode plus decode than the current pick (the records' measured costs), take the
    smallest such one. At n = 1e7 and density 0.1 this is ``golomb`` (0.75 % over ``gaps``,
    ~10x faster); at small k, where Golomb's per-gap redundancy shows, ``gaps``.

    With ``k == 0`` or ``k == numel`` every payload is empty and the answer is ``"raw"``.
    :func:`encode_indices_auto` chooses and encodes in one validation pass.

    >>> rng = np.random.default_rng(0)
    >>> choose_index_coder(np.sort(rng.choice(10**6, 1000, replace=False)), 10**6)
    'golomb'
    >>> dense = np.sort(rng.choice(10**6, 10**5, replace=False))   # gaps: 0.7 % smaller, 10x slower
    >>> choose_index_coder(dense, 10**6), choose_index_coder(dense, 10**6, coders=["gaps", "raw"])
    ('golomb', 'gaps')
    """
    support = scan_support(idx, numel)
    if support.k in (0, support.numel):
        return "raw"
    return _choose(support, _candidates(coders))[0].name
