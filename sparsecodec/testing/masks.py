"""Hypothesis strategies for binary masks and probability vectors, and mask-codec properties.

* :func:`masks`: bool / uint8 masks of any shape: iid at densities from 0 to 1 (all-zero and
  all-one included), runs, and single elements;
* :func:`mask_probabilities`: per-entry probability vectors: uniform, Beta(0.5, 0.5),
  Beta(5, 5), near-deterministic {0.01, 0.99}, the clip limits {0, 1, 1e-9, 1 - 1e-9},
  constants, float32 or float64;
* :func:`masks_with_probabilities`: ``(mask, p)`` with the mask drawn from p, or contrary to
  it (ones where p = 0: the clipping path);
* :func:`check_mask_codec`: round trips under the three models, exact accounting, the
  cost bound, misuse errors and hostile bytes, for any codec with MaskCodec's interface.

Example:
    >>> import sparsecodec as sc
    >>> from sparsecodec.testing import check_mask_codec
    >>> check_mask_codec(sc.MaskCodec(), max_examples=3)
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..errors import ConfigError

__all__ = ["masks", "mask_probabilities", "masks_with_probabilities", "check_mask_codec",
           "quantized_cross_entropy"]

_PROFILES = ("uniform", "beta_half", "beta_five", "near_deterministic", "clip_limits", "constant")


def _shape_for(draw, numel: int, max_ndim: int) -> tuple[int, ...]:
    if max_ndim == 1 or numel == 0 or not draw(st.booleans()):
        return (numel,)
    for a in range(2, int(math.isqrt(numel)) + 1):
        if numel % a == 0:
            return (a, numel // a)
    return (1, numel)


@st.composite
def masks(draw, min_size: int = 0, max_size: int = 2000, dtypes=(np.bool_, np.uint8),
          max_ndim: int = 2) -> np.ndarray:
    """Masks: iid ones at a drawn density (0 and 1 included), runs of ones, or singletons."""
    n = draw(st.integers(min_size, max_size))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["iid", "iid", "runs", "zeros", "ones"]))
    if kind == "iid":
        density = draw(st.sampled_from([0.0, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0]))
        flat = rng.random(n) < density
    elif kind == "runs":
        flat = np.zeros(n, bool)
        for start in rng.integers(0, max(n, 1), size=int(rng.integers(0, 5))):
            flat[start:start + int(rng.integers(1, 200))] = True
    else:
        flat = np.full(n, kind == "ones")
    dtype = draw(st.sampled_from(list(dtypes)))
    return flat.astype(dtype).reshape(_shape_for(draw, n, max_ndim))


def _probabilities(rng: np.random.Generator, n: int, profile: str) -> np.ndarray:
    if profile == "uniform":
        return rng.random(n)
    if profile == "beta_half":
        return rng.beta(0.5, 0.5, n)
    if profile == "beta_five":
        return rng.beta(5.0, 5.0, n)
    if profile == "near_deterministic":
        return rng.choice(np.array([0.01, 0.99]), n)
    if profile == "clip_limits":
        return rng.choice(np.array([0.0, 1.0, 1e-9, 1.0 - 1e-9, 0.5]), n)
    return np.full(n, rng.choice(np.array([0.0, 1e-4, 0.3, 1.0])))


@st.composite
def mask_probabilities(draw, size: int, dtypes=(np.float64, np.float32)) -> np.ndarray:
    """A per-entry probability vector of ``size`` entries in [0, 1] (see module doc)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    p = _probabilities(rng, size, draw(st.sampled_from(_PROFILES)))
    return p.astype(draw(st.sampled_from(list(dtypes))))


@st.composite
def masks_with_probabilities(draw, min_size: int = 0, max_size: int = 2000,
                             contrary: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``(mask, p)``: the mask drawn from p, or (``contrary``) made to disagree with it."""
    n = draw(st.integers(min_size, max_size))
    p = draw(mask_probabilities(n))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    how = draw(st.sampled_from(["sampled", "sampled", "contrary", "random"] if contrary
                               else ["sampled"]))
    if how == "sampled":
        flat = rng.random(n) < p
    elif how == "contrary":
        flat = rng.random(n) >= p          # mostly the unlikely bit: every clip is exercised
    else:
        flat = rng.random(n) < 0.5
    dtype = draw(st.sampled_from([np.bool_, np.uint8]))
    shape = _shape_for(draw, n, 2)
    return flat.astype(dtype).reshape(shape), p.reshape(shape)


def quantized_cross_entropy(mask, p) -> float:
    """Cross-entropy in bits of ``mask`` under the *quantized* model the coder uses."""
    from ..models import PROB_ONE, quantize_probability

    m = np.asarray(mask).reshape(-1).astype(bool)
    pa = np.asarray(p, dtype=np.float64)
    if pa.ndim == 0:
        q = np.full(m.size, quantize_probability(float(pa)), np.float64)
    else:
        q = np.clip(np.floor(pa.reshape(-1) * PROB_ONE + 0.5), 1, PROB_ONE - 1)
    prob_one = q / PROB_ONE
    return float(-np.sum(np.where(m, np.log2(prob_one), np.log2(1.0 - prob_one))))


def _coded_bits(frame) -> int:
    """The bits the model and the payload take (everything but tensor header and checksum)."""
    return frame.sections.get("model", 0) + frame.sections.get("mask", 0)


def _check_one(codec, mask: np.ndarray, p, rng: np.random.Generator, hostile: bool) -> None:
    from ..bounds import mask_bits, topk_index_bits
    from .conformance import check_frame_properties, check_hostile_bytes

    side = {} if p is None else {"p": p}
    check_frame_properties(codec, mask, lossless=True, **side)   # masks are lossless
    frame = codec.encode(mask, **side)
    n = mask.size
    coded = _coded_bits(frame)
    if p is None:
        ones = int(np.count_nonzero(mask))
        # count varint + log2 C(n, k) + flush (9) + truncation (< 4e-4 bit per coded bit)
        limit = 8 * len(_varint(ones)) + topk_index_bits(n, ones) * 1.001 + 9 + 4e-4 * n
        assert coded <= limit, f"adaptive: {coded} bits > {limit:.1f}"
        assert coded <= 1.001 * mask_bits(mask) + 64, "adaptive: above 1.001 n H_b(f) + 64"
    else:
        # per lane: cross-entropy under the quantized model + flush (9) + truncation; plus the
        # lane-0 length varint and the quantized p
        limit = quantized_cross_entropy(mask, p) + 2 * 9 + 4e-4 * n + 8 * 8
        assert coded <= limit, f"{coded} bits > quantized cross-entropy bound {limit:.1f}"
    if p is not None and np.ndim(p) > 0:
        try:
            codec.decode(bytes(frame))
        except ConfigError:
            pass
        else:
            raise AssertionError("decoding a per-entry frame without p must raise ConfigError")
        try:
            codec.decode(bytes(frame), p=np.asarray(p).reshape(-1)[:-1] if n else np.zeros(1))
        except ConfigError:
            pass
        else:
            raise AssertionError("a p vector of the wrong length must raise ConfigError")
    if hostile:
        check_hostile_bytes(codec, bytes(frame), mask.shape, mask.dtype, rng=rng, flips=16, **side)


def _varint(value: int) -> bytes:
    from ..frame import encode_varint

    return encode_varint(value)


def check_mask_codec(codec, max_examples: int = 50, hostile: bool = True) -> None:
    """Run the mask-codec properties for adaptive, fixed-p and per-entry models.

    For every generated input: round trip (mask dtype and shape kept), exact accounting,
    determinism, config round trip, the cost bound (cross-entropy under the quantized model
    plus flush, lanes and header terms; adaptive: ``log2 C(n, k)`` plus the count), the misuse
    errors (per-entry frame without p, wrong-length p) and, with ``hostile``, truncations,
    a trailing byte and bit flips raising :class:`~sparsecodec.errors.FrameError`.
    """
    opts = settings(max_examples=max_examples, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

    @opts
    @given(masks(max_size=600), st.integers(0, 2**32 - 1))
    def adaptive(mask, seed):
        _check_one(codec, mask, None, np.random.default_rng(seed), hostile)

    @opts
    @given(masks(max_size=600), st.sampled_from([0.0, 1e-4, 0.05, 0.5, 0.97, 1.0]),
           st.integers(0, 2**32 - 1))
    def fixed(mask, p, seed):
        _check_one(codec, mask, p, np.random.default_rng(seed), hostile)

    @opts
    @given(masks_with_probabilities(max_size=600), st.integers(0, 2**32 - 1))
    def per_entry(mask_p, seed):
        mask, p = mask_p
        _check_one(codec, mask, p, np.random.default_rng(seed), hostile)

    adaptive()
    fixed()
    per_entry()
