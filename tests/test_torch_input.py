"""Encode entry points take CPU torch tensors and array-likes (issue 17 items 1 and 8)."""

import numpy as np
import pytest

import sparsecodec as sc

torch = pytest.importorskip("torch", reason="torch is in the [fl] extra: pip install torch==2.13.0, then -e '.[fl]'")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_topk_encodes_torch_tensor_like_numpy(dtype):
    g = torch.Generator().manual_seed(0)
    t = torch.randn(1000, generator=g, dtype=dtype, requires_grad=True)
    frame = sc.TopK(k=10).encode(t)
    ref = sc.TopK(k=10).encode(t.detach().numpy())
    assert bytes(frame) == bytes(ref)


def test_bf16_widens_exactly_and_fp16_is_dense_lossless():
    t = torch.randn(257, generator=torch.Generator().manual_seed(1)).bfloat16()
    x_hat = sc.decode(bytes(sc.TopK(k=257, values="bf16").encode(t)))
    assert x_hat.dtype == np.float32
    assert np.array_equal(x_hat, t.float().numpy())
    h = torch.randn(64, generator=torch.Generator().manual_seed(2)).half()
    assert np.array_equal(sc.decode(bytes(sc.Dense().encode(h))), h.numpy())


def test_mask_list_and_feedback_schema_selection_accept_tensors():
    m = torch.rand(300, generator=torch.Generator().manual_seed(3)) > 0.7
    assert np.array_equal(sc.decode(bytes(sc.MaskCodec().encode(m))), m.numpy())
    assert sc.decode(bytes(sc.Dense().encode([1.0, 2.0]))).tolist() == [1.0, 2.0]
    t = torch.arange(10, dtype=torch.float32)
    assert sc.topk_indices(t, 2).tolist() == [8, 9]
    ef = sc.ErrorFeedback()
    ef.step("w", t, sc.TopK(k=2))
    assert ef.residual("w")[9] == 0 and ef.residual("w")[7] == 7
    tensors = {"a": t.reshape(2, 5).requires_grad_(), "b": torch.ones(3, dtype=torch.bfloat16)}
    schema = sc.Schema.from_tensors(tensors)
    f = sc.encode_bundle(tensors, sc.Dense(), schema=schema)
    out = sc.decode_bundle(bytes(f), schema=schema)
    assert out["b"].dtype == np.float32 and out["a"].shape == (2, 5)
    ef.step_bundle(tensors, sc.TopK(density=0.5))


def test_torch_input_is_a_view_not_a_copy():
    from sparsecodec._arrays import as_numpy

    t = torch.zeros(5)
    a = as_numpy(t)
    t[2] = 4.0
    assert a[2] == 4.0


@pytest.mark.parametrize("bad", ["meta", "complex"])
def test_unusable_tensor_is_config_error_that_says_what_to_do(bad):
    t = torch.zeros(4, device="meta") if bad == "meta" else torch.zeros(4, dtype=torch.complex64)
    with pytest.raises(sc.ConfigError, match="cpu|float"):
        sc.TopK(k=1).encode(t)


def test_encode_given_matches_encode_with_torch_topk():
    x = torch.randn(500, generator=torch.Generator().manual_seed(4))
    vals, idx = torch.topk(x.abs(), 20)
    f = sc.TopK(k=20).encode_given(idx, x[idx], numel=500)
    assert bytes(f) == bytes(sc.TopK(k=20).encode(x))
    with pytest.raises(sc.ConfigError):
        sc.TopK(k=2).encode_given([1, 2], [1.0], numel=5)
    with pytest.raises(sc.SparseCodecError):
        sc.TopK(k=2).encode_given([1, 9], [1.0, 2.0], numel=5)


def test_bundle_errors_name_the_tensor():
    good, nan = np.ones(4, np.float32), np.array([1.0, np.nan], np.float32)
    with pytest.raises(sc.ConfigError, match="'bad'"):
        sc.encode_bundle({"ok": good, "bad": nan}, sc.TopK(k=1))
    with pytest.raises(sc.ConfigError, match="'ints'"):
        sc.encode_bundle({"ints": np.arange(3)}, sc.TopK(k=1))
    with pytest.raises(sc.ConfigError, match="'small'"):
        sc.encode_bundle({"small": good}, sc.TopK(k=10, ), )


def test_topk_k_larger_than_tensor_is_config_error():
    """Documented behaviour: TopK(k=int) on a smaller tensor raises (use density= instead)."""
    with pytest.raises(sc.ConfigError, match="exceeds the tensor size 4"):
        sc.TopK(k=10).encode(np.ones(4, np.float32))


def test_readme_torch_example_runs_as_written():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    m = re.search(r"<!-- torch-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its <!-- torch-example --> python block"
    exec(compile(m.group(1), "README.md:torch-example", "exec", dont_inherit=True), {})


def test_decode_as_torch_shares_memory_and_keeps_dtype():
    x = np.arange(6, dtype=np.float64).reshape(2, 3)
    t = sc.decode(sc.Dense().encode(x), as_torch=True)
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (2, 3)
    parts = sc.decode_bundle(sc.encode_bundle({"a": x}, sc.Dense()), as_torch=True)
    assert torch.equal(parts["a"], torch.from_numpy(x))
