"""Information bounds, printed beside the real bit counts (never used *as* bit counts).

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> round(sc.bounds.topk_index_bits(1000, 10), 2)
    77.8
    >>> sc.bounds.mask_bits(np.array([True, False]), 0.5)
    2.0
"""

from __future__ import annotations

import math

import numpy as np

from .errors import ConfigError

__all__ = ["topk_index_bits", "mask_bits", "binary_entropy", "dense_bits", "fedpm_ideal_bpp"]

_LN2 = math.log(2.0)


def topk_index_bits(numel: int, k: int) -> float:
    """``log2 C(numel, k)``: the bits needed to name a k-subset of ``numel`` positions."""
    numel, k = int(numel), int(k)
    if not 0 <= k <= numel:
        raise ConfigError(f"need 0 <= k <= numel, got k={k}, numel={numel}")
    return (math.lgamma(numel + 1) - math.lgamma(k + 1) - math.lgamma(numel - k + 1)) / _LN2


def binary_entropy(f: float) -> float:
    """``H_b(f)`` in bits."""
    if f <= 0.0 or f >= 1.0:
        return 0.0
    return -(f * math.log2(f) + (1.0 - f) * math.log2(1.0 - f))


def mask_bits(mask, p=None) -> float:
    """Cross-entropy of ``mask`` in bits under a model: ``sum_i -log2 P(mask_i)``.

    ``p`` is the probability of a one: a scalar, a per-entry array of the mask's size, or
    ``None`` for the adaptive model, whose bound is ``n * H_b(f)`` with f the fraction of ones.
    A mask entry that has probability 0 under the model costs ``inf`` bits here (the coder
    clips probabilities, so it still codes it, at a finite cost).
    """
    m = np.asarray(mask).reshape(-1).astype(bool, copy=False)
    n = m.size
    if p is None:
        return n * binary_entropy(float(np.count_nonzero(m)) / n) if n else 0.0
    pa = np.asarray(p, dtype=np.float64)
    if pa.ndim == 0:
        q = float(pa)
        if not 0.0 <= q <= 1.0:
            raise ConfigError(f"p must be in [0, 1], got {q}")
        ones = int(np.count_nonzero(m))
        with np.errstate(divide="ignore"):
            return float(-(ones * np.log2(q) if ones else 0.0)
                         - ((n - ones) * np.log2(1.0 - q) if n - ones else 0.0))
    pa = pa.reshape(-1)
    if pa.size != n:
        raise ConfigError(f"per-entry p has {pa.size} entries but the mask has {n}")
    if np.any(~((pa >= 0.0) & (pa <= 1.0))):
        raise ConfigError("per-entry p must lie in [0, 1] (and not be NaN)")
    with np.errstate(divide="ignore"):
        return float(-np.sum(np.where(m, np.log2(pa), np.log2(1.0 - pa))))


def dense_bits(numel: int, bits_per_value: int = 32) -> int:
    """The dense float message size the papers count: ``32 * numel``."""
    return int(numel) * int(bits_per_value)


def fedpm_ideal_bpp(mask) -> float:
    """The FedPM papers' ideal rate ``H_b(f) + log2(d)/d`` (docs/conventions.md, "Bit accounting")."""
    m = np.asarray(mask).reshape(-1)
    d = m.size
    f = float(np.count_nonzero(m)) / d
    return binary_entropy(f) + math.log2(d) / d
