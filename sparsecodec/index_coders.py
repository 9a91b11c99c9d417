"""The index-coder table: one :class:`IndexCoder` record per coder, registered in one place.

A record says everything the rest of the library needs about a coder: its name and wire id,
how it encodes a validated support and decodes an untrusted payload, its size (exact, or an
estimate, and whether knowing it costs an encode), a lower bound on its payload for the
decoder's early truncation check, the largest ``numel`` it handles, whether ``auto`` may pick
it, and its measured time per call. :mod:`sparsecodec.indices` (encode, decode, sizes, the
automatic choice) reads only this table, so a new coder is one module that builds its record
plus one :func:`register_index_coder` line (the built-in ones are in ``indices.py``).

Example, a (silly) coder that writes the support as a bitmap of ``numel`` bits::

    >>> import numpy as np
    >>> from sparsecodec._kernels import ERR_CORRUPT, ERR_PADDING, OK
    >>> from sparsecodec.index_coders import Cost, IndexCoder, get_index_coder
    >>> def encode(s):                        # s: a validated Support
    ...     mask = np.zeros(s.numel, bool); mask[s.idx] = True
    ...     return np.packbits(mask).tobytes()
    >>> def decode(src, numel, k, out):       # untrusted src; returns a status code
    ...     bits = np.unpackbits(src)
    ...     if bits.size != 8 * (-(-numel // 8)) or bits[numel:].any():
    ...         return ERR_PADDING
    ...     found = np.flatnonzero(bits[:numel])
    ...     if found.size != k:
    ...         return ERR_CORRUPT
    ...     out[:] = found
    ...     return OK
    >>> plain = IndexCoder("plainbitmap", 15, encode, decode,
    ...                    size=lambda s: 8 * (-(-s.numel // 8)), size_exact=True,
    ...                    encode_cost=Cost(per_element_ns=1.0), decode_cost=Cost(per_element_ns=1.0),
    ...                    auto="never")
    >>> plain.name, plain.wire_id, get_index_coder("golomb").wire_id
    ('plainbitmap', 15, 1)

(``register_index_coder(plain)`` would make it ``index="plainbitmap"`` everywhere; wire ids
are forever, so a real coder takes the next free id and never gives it back.)
"""

from __future__ import annotations

import functools
import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import Callable, Mapping

import numpy as np

from ._kernels import ERR_ORDER, ERR_RANGE, OK
from ._kernels.bitio import PAD
from ._kernels.golomb import TABLE_MAX, golomb_bits_bound, golomb_scan, golomb_scan_encode, golomb_table
from .errors import ConfigError
from .index_params import golomb_parameter

__all__ = ["Cost", "Support", "IndexCoder", "scan_support", "register_index_coder",
           "get_index_coder", "registered_index_coders", "auto_candidates", "INDEX_CODERS", "AUTO_MODES",
           "MAX_WIRE_ID"]

#: a TopK frame keeps the index coder id in the low 4 bits of its config byte
MAX_WIRE_ID = 15
#: ``IndexCoder.auto``: always a candidate of the automatic choice, only when the support
#: looks structured (the coder needs structure to win and sizing it means encoding it), or never
AUTO_MODES = ("always", "structured", "never")


@dataclass(frozen=True)
class Cost:
    """Time of one call, modelled as ``fixed_ns + per_index_ns * k + per_element_ns * numel``.

    The figures are measured (``benchmarks/indices_bench.py``, iid supports); the automatic
    choice uses them only as ratios between coders.

    >>> Cost(1000, 2.5).ns(10**7, 10**4)
    26000.0
    """

    fixed_ns: float = 0.0
    per_index_ns: float = 0.0
    per_element_ns: float = 0.0

    def ns(self, numel: int, k: int) -> float:
        return self.fixed_ns + self.per_index_ns * k + self.per_element_ns * numel


@dataclass(frozen=True)
class Support:
    """A validated support and what the one validation pass learnt about it.

    ``idx`` is int64, C-contiguous, strictly increasing in ``[0, numel)``; ``golomb`` the
    ``(m, c, cutoff)`` of :func:`~sparsecodec.index_params.golomb_parameter`;
    ``golomb_bits`` the Golomb codewords' bits (before padding); ``repeats`` how many
    neighbouring gaps are equal (the cheap structure statistic); ``golomb_payload`` the
    Golomb payload itself when the scan was asked to write it (``None`` otherwise).
    """

    idx: np.ndarray
    numel: int
    golomb: tuple[int, int, int]
    golomb_bits: int
    repeats: int
    golomb_payload: bytes | None = None

    @property
    def k(self) -> int:
        return int(self.idx.size)


def _no_minimum(numel: int, k: int) -> int:
    return 0


@dataclass(frozen=True)
class IndexCoder:
    """One index coder. See the module docstring for an example.

    * ``encode(support) -> bytes``: the payload of a validated :class:`Support` with
      ``0 < k < numel`` (the table's caller handles the implied supports);
    * ``decode(src, numel, k, out) -> status``: decode *untrusted* ``src`` (a uint8 array)
      into ``out`` (int64, shape ``(k,)``), ``0 < k < numel``, already checked against
      ``min_payload_bits``; returns ``OK`` or an ``ERR_*`` code of :mod:`sparsecodec._kernels`
      (or raises a :class:`~sparsecodec.errors.FrameError` itself). It must accept only
      strictly increasing indices ``< numel`` and only what ``encode`` writes, in work and
      memory O(k + len(src)) (or O(numel) if its ``decode_cost`` says so);
    * ``size(support) -> bits``: the payload size, a multiple of 8 when ``size_exact``, else
      the expected (mean) size, a float; ``size_encodes``: computing it runs the encoder;
    * ``min_payload_bits(numel, k)``: no valid payload is shorter (0 if nothing is known);
    * ``max_numel``: larger tensors are refused by the coder and skipped by ``auto``;
    * ``auto``: one of :data:`AUTO_MODES`;
    * ``encode_cost`` / ``decode_cost``: measured :class:`Cost` per call;
    * ``summary``: one line for tables (payload layout).
    """

    name: str
    wire_id: int
    encode: Callable[[Support], bytes]
    decode: Callable[[np.ndarray, int, int, np.ndarray], int]
    size: Callable[[Support], float]
    size_exact: bool
    encode_cost: Cost
    decode_cost: Cost
    size_encodes: bool = False
    min_payload_bits: Callable[[int, int], int] = _no_minimum
    max_numel: int = (1 << 63) - 1
    auto: str = "always"
    summary: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.isidentifier() or self.name == "auto":
            raise ConfigError(f"an index coder name must be an identifier other than 'auto', got {self.name!r}")
        if (isinstance(self.wire_id, bool) or not isinstance(self.wire_id, int)
                or not 0 <= self.wire_id <= MAX_WIRE_ID):
            raise ConfigError(f"index coder wire id must be an int in [0, {MAX_WIRE_ID}] (TopK "
                              f"frames hold it in 4 bits), got {self.wire_id!r}")
        if self.auto not in AUTO_MODES:
            raise ConfigError(f"auto must be one of {AUTO_MODES}, got {self.auto!r}")
        for what in ("encode_cost", "decode_cost"):
            if not isinstance(getattr(self, what), Cost):
                raise ConfigError(f"{what} must be a Cost, got {getattr(self, what)!r}")

    def time_ns(self, numel: int, k: int) -> float:
        """Encode plus decode time of one message, from the measured costs."""
        return self.encode_cost.ns(numel, k) + self.decode_cost.ns(numel, k)


# -- the registry -------------------------------------------------------------------------------
_BY_NAME: dict[str, IndexCoder] = {}
_BY_ID: dict[int, IndexCoder] = {}
_WIRE_IDS: dict[str, int] = {}
#: name -> wire id of every registered coder: a live, read-only view of the table
INDEX_CODERS: Mapping[str, int] = MappingProxyType(_WIRE_IDS)


def register_index_coder(coder: IndexCoder) -> IndexCoder:
    """Add a coder to the table; a name or wire id already taken is a ConfigError.

    >>> from sparsecodec import indices
    >>> register_index_coder(get_index_coder("golomb"))
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: index coder name 'golomb' is already registered (wire id 1)
    """
    if not isinstance(coder, IndexCoder):
        raise ConfigError(f"register_index_coder needs an IndexCoder record, got {type(coder).__name__}")
    if coder.name in _BY_NAME:
        raise ConfigError(f"index coder name {coder.name!r} is already registered "
                          f"(wire id {_BY_NAME[coder.name].wire_id})")
    if coder.wire_id in _BY_ID:
        raise ConfigError(f"index coder wire id {coder.wire_id} is already taken by "
                          f"{_BY_ID[coder.wire_id].name!r}")
    _BY_NAME[coder.name] = coder
    _BY_ID[coder.wire_id] = coder
    _WIRE_IDS[coder.name] = coder.wire_id
    _AUTO.clear()
    return coder


def _unregister_index_coder(name: str) -> None:
    """Tests only: wire ids are forever, a released one must never reach a wire."""
    coder = _BY_NAME.pop(name)
    del _BY_ID[coder.wire_id], _WIRE_IDS[name]
    _AUTO.clear()


def registered_index_coders() -> tuple[IndexCoder, ...]:
    """Every registered record, by wire id.

    >>> from sparsecodec import indices
    >>> [c.name for c in registered_index_coders()][:3]
    ['raw', 'golomb', 'eliasfano']
    """
    return tuple(_BY_ID[i] for i in sorted(_BY_ID))


_AUTO: list[tuple[IndexCoder, ...]] = []   # cache of auto_candidates(), emptied on (un)registering


def auto_candidates() -> tuple[IndexCoder, ...]:
    """The records ``auto`` considers by default (``auto != "never"``), by wire id."""
    if not _AUTO:
        _AUTO.append(tuple(c for c in registered_index_coders() if c.auto != "never"))
    return _AUTO[0]


def get_index_coder(coder, *, allow_id: bool = False) -> IndexCoder:
    """The record of a coder name (or wire id, with ``allow_id``); ConfigError if unknown."""
    if isinstance(coder, str):
        if coder in _BY_NAME:
            return _BY_NAME[coder]
        hint = " (call choose_index_coder() to resolve 'auto')" if coder == "auto" else ""
        raise ConfigError(f"unknown index coder {coder!r}{hint}; expected one of {sorted(_BY_NAME)}")
    if allow_id and isinstance(coder, (int, np.integer)) and not isinstance(coder, bool):
        if int(coder) in _BY_ID:
            return _BY_ID[int(coder)]
        raise ConfigError(f"unknown index coder id {int(coder)}; expected one of {sorted(_BY_ID)}")
    raise ConfigError(f"index coder must be a name{' or wire id' if allow_id else ''}, got {coder!r}")


# -- validating a support once ------------------------------------------------------------------
def count(value, what: str) -> int:
    """A non-negative integer argument, or ConfigError."""
    try:
        n = operator.index(value)
    except TypeError:
        raise ConfigError(f"{what} must be an integer, got {type(value).__name__}") from None
    if n < 0:
        raise ConfigError(f"{what} must be >= 0, got {n}")
    return n


def _as_support_array(idx, numel: int) -> np.ndarray:
    """The support as a contiguous int64 array (not yet validated)."""
    arr = np.asarray(idx)
    if arr.dtype != np.int64:
        if arr.dtype.kind not in "iu" and not (arr.size == 0 and arr.dtype.kind == "f"):
            raise ConfigError(f"indices must be an integer array, got dtype {arr.dtype}")
        if arr.dtype == np.uint64 and arr.size and int(arr.max()) >= 2**63:
            raise ConfigError(f"index {int(arr.max())} is out of range for numel={numel}")
        arr = arr.astype(np.int64)
    if arr.ndim != 1:
        raise ConfigError(f"indices must be a 1-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _raise_bad_support(status: int, idx: np.ndarray, numel: int) -> None:
    if status == ERR_RANGE:
        bad = idx[(idx < 0) | (idx >= numel)]
        raise ConfigError(f"index {int(bad[0])} is outside [0, numel={numel})")
    if status == ERR_ORDER:
        at = int(np.flatnonzero(np.diff(idx) <= 0)[0])
        raise ConfigError(f"indices must be strictly increasing: idx[{at}]={int(idx[at])} is "
                          f"followed by {int(idx[at + 1])}; sort and deduplicate them first")
    raise AssertionError(f"unexpected support status {status}")


_NO_TABLE = (np.empty(0, np.uint64), np.empty(0, np.uint8))
_NO_TABLE[0].flags.writeable = _NO_TABLE[1].flags.writeable = False


@functools.lru_cache(maxsize=64)
def _cached_golomb_table(golomb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    return golomb_table(*golomb)


def _golomb_table(k: int, golomb: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The codeword table for a support of ``k`` indices, or none (empty arrays) when the
    support is too small for building it (up to TABLE_MAX entries, ~40 us) to pay; built
    once per parameter, as the same (numel, k) recur every round."""
    return _cached_golomb_table(golomb) if k >= TABLE_MAX else _NO_TABLE


def scan_support(idx, numel, *, golomb_payload: bool = False) -> Support:
    """Validate a support (ConfigError if it is not one) in one kernel pass that also sizes
    its Golomb code and counts equal neighbouring gaps; with ``golomb_payload``, the same
    pass writes the Golomb codewords too (for the golomb coder and the automatic choice,
    which would otherwise walk the support a second time to encode it).

    >>> s = scan_support([3, 10, 11, 500], 1000)
    >>> s.k, s.golomb, s.golomb_bits
    (4, (173, 8, 83), 35)
    """
    numel = count(numel, "numel")
    arr = _as_support_array(idx, numel)
    golomb = golomb_parameter(numel, arr.size)
    payload = None
    if golomb_payload and 0 < arr.size < numel:
        # sized for the worst valid support (the writer also refuses to overflow it)
        out = np.empty((golomb_bits_bound(numel, arr.size, golomb[0], golomb[1]) + 7) // 8 + PAD, np.uint8)
        status, nbits, repeats = golomb_scan_encode(arr, numel, *golomb, out, *_golomb_table(arr.size, golomb))
        if status == OK:
            if nbits < 0:
                raise AssertionError(f"Golomb writer status {nbits} within its bound")
            payload = out[:(nbits + 7) >> 3].tobytes()
    else:
        status, nbits, repeats = golomb_scan(arr, numel, *golomb)
    if status != OK:
        _raise_bad_support(status, arr, numel)
    return Support(arr, numel, golomb, int(nbits), int(repeats), payload)
