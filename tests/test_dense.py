import numpy as np
import pytest

import sparsecodec as sc
from sparsecodec.testing import check_codec


@pytest.mark.parametrize("codec", [sc.Dense(), sc.Dense(compression="zstd", checksum=True)])
def test_dense_conformance(codec):
    check_codec(codec, max_examples=25)


def test_dense_is_lossless_for_all_dtypes_and_counts_32_bits():
    rng = np.random.default_rng(0)
    for x in (rng.standard_normal((3, 5)).astype(np.float32), rng.standard_normal(7),
              rng.random(9) < 0.3, rng.integers(0, 255, 4).astype(np.uint8),
              np.float16([1.5, -2.0])):
        for codec in (sc.Dense(), sc.Dense(compression="zstd")):
            y = sc.decode(bytes(codec.encode(x)))
            assert y.dtype == x.dtype and np.array_equal(y, x)
    assert sc.Dense().encode(np.zeros(100, np.float32)).sections["values"] == 3200


def test_dense_zstd_shrinks_structured_tensors():
    x = np.zeros(10_000, np.float32)
    x[::100] = 1.0
    assert len(sc.Dense(compression="zstd").encode(x)) < len(sc.Dense().encode(x)) / 20


def test_dense_rejects_nonfinite_unless_allowed():
    with pytest.raises(sc.ConfigError):
        sc.Dense().encode(np.array([np.nan], np.float32))
    y = sc.decode(bytes(sc.Dense(allow_nonfinite=True).encode(np.array([np.inf], np.float32))))
    assert y[0] == np.inf
