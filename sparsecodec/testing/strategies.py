"""Hypothesis strategies for FL updates, sparse supports and codec configurations.

Use them to property-test your own encoders::

    from hypothesis import given
    from sparsecodec.testing import update_vectors

    @given(update_vectors(max_size=500))
    def test_my_codec_round_trips(x):
        ...

The generated updates deliberately include what breaks naive codecs: exact ties, zeros and
negative zeros, denormals, huge and tiny magnitudes, single elements and empty arrays.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

__all__ = ["update_vectors", "update_tensors", "sparse_supports", "topk_configs",
           "dense_configs", "codec_configs", "model_updates"]

_SPECIALS32 = [0.0, -0.0, 1.0, -1.0, 1e-45, -1e-45, 1.17549435e-38, 3.0e38, -3.0e38, 0.5, 2.0]


@st.composite
def update_vectors(draw, min_size: int = 0, max_size: int = 2000,
                   dtypes=(np.float32, np.float64), allow_ties: bool = True) -> np.ndarray:
    """1-D float update vectors: gaussian bulk plus ties, zeros, denormals and extremes."""
    dtype = np.dtype(draw(st.sampled_from(list(dtypes))))
    n = draw(st.integers(min_size, max_size))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["normal", "heavy", "ties", "sparse", "special", "constant"]))
    if kind == "normal":
        x = rng.standard_normal(n)
    elif kind == "heavy":
        x = rng.standard_cauchy(n) * 10.0 ** rng.integers(-20, 20)
    elif kind == "ties" and allow_ties:
        x = rng.integers(-3, 4, n).astype(np.float64)
    elif kind == "sparse":
        x = np.where(rng.random(n) < 0.05, rng.standard_normal(n), 0.0)
    elif kind == "special":
        x = rng.choice(np.array(_SPECIALS32), n)
    else:
        x = np.full(n, draw(st.sampled_from([0.0, 1.0, -2.5])))
    return x.astype(dtype)


@st.composite
def update_tensors(draw, max_numel: int = 2000, max_ndim: int = 4) -> np.ndarray:
    """Updates with a shape (conv kernels, matrices, scalars with ndim 0)."""
    ndim = draw(st.integers(0, max_ndim))
    shape = tuple(draw(st.lists(st.integers(0, 12), min_size=ndim, max_size=ndim)))
    numel = int(np.prod(shape)) if shape else 1
    if numel > max_numel:
        shape = (max_numel,)
        numel = max_numel
    flat = draw(update_vectors(min_size=numel, max_size=numel))
    return flat.reshape(shape)


@st.composite
def model_updates(draw, max_tensors: int = 5, max_numel: int = 500) -> dict[str, np.ndarray]:
    """A whole model update: ``{name: tensor}`` with the same dtype for all tensors."""
    count = draw(st.integers(1, max_tensors))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    out = {}
    for i in range(count):
        t = draw(update_tensors(max_numel=max_numel))
        out[f"layer{i}.{draw(st.sampled_from(['weight', 'bias']))}"] = t.astype(dtype)
    return out


@st.composite
def sparse_supports(draw, numel: int | None = None, max_numel: int = 5000) -> tuple[int, np.ndarray]:
    """``(numel, idx)``: a sorted, duplicate-free int64 support, iid or clustered."""
    if numel is None:
        numel = draw(st.integers(1, max_numel))
    kind = draw(st.sampled_from(["iid", "clustered", "strided", "empty", "full", "edges"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "empty":
        return numel, np.zeros(0, np.int64)
    if kind == "full":
        return numel, np.arange(numel, dtype=np.int64)
    if kind == "edges":
        return numel, np.unique(np.array([0, numel - 1], np.int64))
    k = draw(st.integers(0, numel))
    if kind == "iid":
        idx = rng.choice(numel, size=k, replace=False)
    elif kind == "clustered":
        starts = rng.integers(0, numel, size=max(1, k // 16 + 1))
        idx = np.concatenate([np.arange(s, min(numel, s + 16)) for s in starts])[:k]
    else:
        stride = draw(st.integers(1, max(1, numel // max(1, k))))
        idx = np.arange(rng.integers(0, stride), numel, stride)[:k]
    return numel, np.unique(np.asarray(idx, np.int64))


def topk_configs() -> st.SearchStrategy:
    """Valid ``sparsecodec.TopK`` instances over all index and value coders."""
    from ..indices import INDEX_CODERS
    from ..topk import TopK

    index = st.sampled_from(["auto", *INDEX_CODERS])
    values = st.sampled_from(["fp32", "fp64", "bf16"])   # fp16 has a range limit; tested apart
    by_k = st.builds(TopK, k=st.integers(0, 50), values=values, index=index,
                     checksum=st.booleans())
    by_density = st.builds(TopK, density=st.floats(0.0, 1.0), values=values, index=index,
                           k_rule=st.sampled_from(["round", "ceil", "flare"]), checksum=st.booleans())
    nnz = st.builds(TopK, k=st.just("nnz"), index=index, checksum=st.booleans())
    return st.one_of(by_k, by_density, nnz)


def dense_configs() -> st.SearchStrategy:
    from ..dense import Dense

    return st.builds(Dense, compression=st.sampled_from([None, "zstd"]), level=st.integers(1, 5),
                     checksum=st.booleans())


def codec_configs() -> st.SearchStrategy:
    """Any built-in tensor codec for float updates (TopK or Dense)."""
    return st.one_of(topk_configs(), dense_configs())
