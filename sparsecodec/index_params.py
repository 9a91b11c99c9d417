"""Parameters the bit-packed index coders derive from ``(numel, k)`` alone (never sent).

Integer arithmetic only, so that encoder and decoder derive the same parameters on every
machine. Re-exported by :mod:`sparsecodec.indices`.

    >>> raw_width(1000), eliasfano_low_bits(10**7, 10**4), golomb_parameter(10**7, 10**4)
    (10, 9, (693, 10, 331))
"""

from __future__ import annotations

from functools import lru_cache

__all__ = ["raw_width", "eliasfano_low_bits", "golomb_parameter"]

_LOG_FRAC_BITS = 64


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
