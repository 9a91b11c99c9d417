"""The ``zstd19`` index coder (wire id 6): the ``zstd`` gap coder at zstd's level 19.

Same payload layout and the same decoder as ``zstd`` (:mod:`sparsecodec.zstd_index`); only the
encoder searches harder. On structured supports (rows and columns of weight matrices, real
updates) it is 2-11 % smaller than level 9, but it encodes 10-30x slower (~4 us per index), so the automatic
choice never considers it unless asked: ``TopK(..., index="zstd19")``, or
``choose_index_coder(idx, numel, coders=[..., "zstd19"])``.

    >>> import numpy as np, sparsecodec as sc
    >>> from sparsecodec.indices import choose_index_coder, decode_indices, encode_indices
    >>> rng = np.random.default_rng(0)   # a conv layer's update: some filters far larger
    >>> w = rng.standard_normal((64, 576)) * np.abs(rng.standard_normal((64, 1))) ** 4
    >>> idx = sc.topk_indices(w.reshape(-1), 1843)
    >>> len(encode_indices(idx, w.size, "zstd")), len(encode_indices(idx, w.size, "zstd19"))
    (600, 555)
    >>> choose_index_coder(idx, w.size), choose_index_coder(idx, w.size, coders=["golomb", "zstd19"])
    ('zstd', 'zstd19')
    >>> p = encode_indices(idx, w.size, "zstd19")
    >>> bool(np.array_equal(decode_indices(p, w.size, idx.size, "zstd19"), idx))
    True
"""

from __future__ import annotations

from .index_coders import Cost
from .zstd_index import zstd_coder

__all__ = ["ZSTD19"]

# encode cost fitted on iid supports like the others' (bench_index_costs); on the structured
# supports it is for, 3-5 us per index (zstd: 0.1-0.15)
ZSTD19 = zstd_coder("zstd19", 6, 19, encode_cost=Cost(15000, 400.0), auto="never")
