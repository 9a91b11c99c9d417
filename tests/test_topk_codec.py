"""The TopK codec: k rules, exactness, accounting, configs, misuse."""

import numpy as np
import pytest
from hypothesis import given, strategies as st

import sparsecodec as sc
from sparsecodec.indices import INDEX_CODERS
from sparsecodec.testing import check_codec, update_tensors


def _reference_topk(flat, k):
    order = sorted(range(flat.size), key=lambda i: (-abs(float(flat[i])), i))
    return np.array(sorted(order[:k]), dtype=np.int64)


@given(x=update_tensors(max_numel=800), data=st.data())
def test_round_trip_is_exact_on_the_support(x, data):
    k = data.draw(st.integers(0, x.size))
    index = data.draw(st.sampled_from(["auto", *INDEX_CODERS]))
    codec = sc.TopK(k=k, index=index, values="fp32" if x.dtype == np.float32 else "fp64")
    frame = codec.encode(x)
    y = codec.decode(bytes(frame))
    assert y.shape == x.shape and y.dtype == x.dtype
    idx = _reference_topk(x.reshape(-1), k)
    expect = np.zeros(x.size, x.dtype)
    expect[idx] = x.reshape(-1)[idx]
    assert y.reshape(-1).tobytes() == expect.tobytes()
    assert frame.nbits == 8 * len(bytes(frame)) == sum(frame.sections.values())


@pytest.mark.parametrize("codec", [
    sc.TopK(k=7), sc.TopK(density=0.05), sc.TopK(density=0.2, values="bf16", checksum=True),
    sc.TopK(k="nnz"), sc.TopK.flare(R=1.0), sc.TopK(density=0.3, index="bitmap"),
    sc.TopK(density=0.01, index="golomb", values="fp64"), sc.TopK(k=3, index="raw"),
    sc.TopK(density=0.1, index="eliasfano"), sc.TopK(density=0.1, index="zstd"),
])
def test_conformance(codec):
    check_codec(codec, max_examples=25)


def test_k_rules():
    assert sc.TopK(density=0.0125).k_for(1000) == 12          # half to even
    assert sc.TopK(density=0.0125, k_rule="ceil").k_for(1000) == 13
    # FLARE CNN, R = 0.001 %: a 3x3x32x64 kernel keeps round(0.18432)+1 = 1, the 1024x... etc.
    assert sc.TopK.flare(R=0.001).k_for(18432) == 1
    assert sc.TopK.flare(R=0.001).k_for(150000) == 3            # round(1.5) = 2 (half to even) + 1
    assert sc.TopK.flare(R=0.001).k_for(250000) == 3            # round(2.5) = 2 + 1
    assert sc.TopK.flare(R=50).k_for(1) == 1                    # capped at numel


def test_nnz_codes_sparse_tensor_exactly():
    rng = np.random.default_rng(1)
    x = np.where(rng.random((64, 33)) < 0.07, rng.standard_normal((64, 33)), 0).astype(np.float32)
    frame = sc.TopK(k="nnz").encode(x)
    assert np.array_equal(sc.decode(bytes(frame)), x)
    assert frame.meta["k"] == np.count_nonzero(x)


def test_fp16_bf16_reconstruction_matches_decode():
    x = np.random.default_rng(2).standard_normal(1000).astype(np.float32)
    for values in ("fp16", "bf16"):
        codec = sc.TopK(k=100, values=values)
        frame, x_hat = codec.encode_and_reconstruct(x)
        assert np.array_equal(codec.decode(bytes(frame)), x_hat)
        assert frame.sections["values"] == 16 * 100


def test_misuse_raises_config_error_with_fix():
    x = np.ones(10, np.float32)
    with pytest.raises(sc.ConfigError, match="exceeds the tensor size"):
        sc.TopK(k=11).encode(x)
    with pytest.raises(sc.ConfigError):
        sc.TopK(k=-1)
    with pytest.raises(sc.ConfigError, match="exactly one"):
        sc.TopK(k=3, density=0.1)
    with pytest.raises(sc.ConfigError, match="astype"):
        sc.TopK(k=1).encode(np.ones(3, np.int32))
    with pytest.raises(sc.ConfigError):
        sc.TopK(k=1).encode(np.array([1.0, np.nan], np.float32))
    with pytest.raises(sc.ConfigError):
        sc.TopK(k=1).encode(np.array([1.0, np.inf]))
    with pytest.raises(sc.ConfigError, match="fp16"):
        sc.TopK(k=1, values="fp16").encode(np.array([1e6], np.float32))
    with pytest.raises(sc.ConfigError):
        sc.TopK(k=1, index="huffman")
    with pytest.raises(sc.ConfigError):
        sc.get_codec({"id": "topk", "k": 1, "bogus": 2})


def test_allow_nonfinite_flag_round_trips():
    x = np.array([1.0, np.inf, -2.0, np.nan], np.float32)
    codec = sc.TopK(k=2, allow_nonfinite=True)
    y = codec.decode(bytes(codec.encode(x)))
    assert np.isnan(y[3]) and y[1] == np.inf and y[0] == 0


def test_wrong_codec_decoder_is_a_frame_error():
    data = bytes(sc.Dense().encode(np.ones(3, np.float32)))
    with pytest.raises(sc.FrameError, match="sparsecodec.decode"):
        sc.TopK(k=1).decode(data)


def test_config_round_trip_and_equality():
    c = sc.TopK(density=1e-3, values="bf16", index="golomb", checksum=True)
    assert sc.get_codec(c.get_config()) == c
    assert c != sc.TopK(density=1e-3)
