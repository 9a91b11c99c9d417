"""The bit-packed index coders ``raw``, ``golomb`` and ``eliasfano``: their table records.

Each payload is MSB-first codewords padded with zero bits to the next byte (see
:mod:`sparsecodec._kernels.bitio`); parameters come from ``(numel, k)``
(:mod:`sparsecodec.index_params`). Sizes are exact closed forms (Golomb's from the validation
scan), and every coder has a lower bound on its payload, so a decoder refuses a payload too
short for k before allocating anything of size k.

    >>> import numpy as np
    >>> from sparsecodec.index_coders import scan_support
    >>> s = scan_support(np.array([1, 2, 6]), 8)
    >>> RAW.encode(s).hex(), RAW.size(s), GOLOMB.size(s)    # 3-bit fields 001 010 110
    ('2b00', 16, 8)
"""

from __future__ import annotations

import numpy as np

from ._kernels.bitio import PAD
from ._kernels.eliasfano import ef_decode, ef_encode
from ._kernels.golomb import golomb_decode, golomb_encode
from ._kernels.rawbits import raw_decode, raw_encode
from .index_coders import Cost, IndexCoder, Support
from .index_params import eliasfano_low_bits, golomb_parameter, raw_width

__all__ = ["RAW", "GOLOMB", "ELIASFANO"]


def _whole_bytes(nbits: int) -> int:
    return 8 * ((nbits + 7) >> 3)


def _write(kernel, nbits: int, *args) -> bytes:
    """Run a bit writer into a zeroed buffer of exactly the payload (plus the PAD spare bytes
    the writers need: they store whole 8-byte words) and check it wrote ``nbits``."""
    nbytes = (nbits + 7) >> 3
    out = np.zeros(nbytes + PAD, np.uint8)
    written = kernel(*args, out)
    if written != nbits:
        raise AssertionError(f"{getattr(kernel, '__name__', kernel)} wrote {written} bits, expected {nbits}")
    return out[:nbytes].tobytes()


def _padded(src: np.ndarray) -> np.ndarray:
    """The bit readers want the payload followed by PAD zero bytes (see _kernels.bitio)."""
    buf = np.zeros(src.size + PAD, np.uint8)
    buf[:src.size] = src
    return buf


# -- raw: k fields of w = max(1, (numel-1).bit_length()) bits ------------------------------------
def _raw_bits(s: Support) -> int:
    return s.k * raw_width(s.numel)


def _raw_decode(src: np.ndarray, numel: int, k: int, out: np.ndarray) -> int:
    return raw_decode(_padded(src), src.size, numel, k, raw_width(numel), out)


RAW = IndexCoder(
    "raw", 0,
    encode=lambda s: _write(raw_encode, _raw_bits(s), s.idx, raw_width(s.numel)),
    decode=_raw_decode,
    size=lambda s: _whole_bytes(_raw_bits(s)), size_exact=True,
    min_payload_bits=lambda numel, k: k * raw_width(numel),
    # ns, fitted to iid supports, n = 1e3..1e7, k = 10..1e6 (benchmarks/indices_bench.py
    # bench_index_costs; two runs on a shared 2-core machine, rounded)
    encode_cost=Cost(2500, 1.2), decode_cost=Cost(3500, 1.5),
    summary="k indices at w = max(1, (numel-1).bit_length()) bits, MSB first")


# -- golomb: gaps idx_i - idx_{i-1} - 1, Golomb code with Gallager-Van Voorhis m ----------------
def _golomb_decode(src: np.ndarray, numel: int, k: int, out: np.ndarray) -> int:
    m, c, cutoff = golomb_parameter(numel, k)
    return golomb_decode(_padded(src), src.size, numel, k, m, c, cutoff, out)


def _golomb_encode(s: Support) -> bytes:
    if s.golomb_payload is not None:  # the validation scan wrote it already
        return s.golomb_payload
    return _write(golomb_encode, s.golomb_bits, s.idx, *s.golomb)


GOLOMB = IndexCoder(
    "golomb", 1,
    encode=_golomb_encode,
    decode=_golomb_decode,
    size=lambda s: _whole_bytes(s.golomb_bits), size_exact=True,
    # a codeword has its stop bit and at least c - 1 remainder bits
    min_payload_bits=lambda numel, k: k * max(1, golomb_parameter(numel, k)[1]),
    encode_cost=Cost(1500, 3.5), decode_cost=Cost(3000, 4.5),
    summary="gaps idx_i - idx_{i-1} - 1, Golomb code, Gallager-Van Voorhis m")


# -- eliasfano: L = floor(log2(numel/k)) low bits per index, then the upper bitmap --------------
def _ef_bits(s: Support) -> int:
    low_bits = eliasfano_low_bits(s.numel, s.k)
    return s.k * low_bits + (int(s.idx[-1]) >> low_bits) + s.k


def _ef_decode(src: np.ndarray, numel: int, k: int, out: np.ndarray) -> int:
    return ef_decode(_padded(src), src.size, numel, k, eliasfano_low_bits(numel, k), out)


ELIASFANO = IndexCoder(
    "eliasfano", 2,
    encode=lambda s: _write(ef_encode, _ef_bits(s), s.idx, eliasfano_low_bits(s.numel, s.k)),
    decode=_ef_decode,
    size=lambda s: _whole_bytes(_ef_bits(s)), size_exact=True,
    min_payload_bits=lambda numel, k: k * (eliasfano_low_bits(numel, k) + 1),  # L low + one upper bit
    encode_cost=Cost(2500, 1.9), decode_cost=Cost(3000, 4.0),
    summary="Elias-Fano, L = floor(log2(numel/k)) low bits, upper bitmap")
