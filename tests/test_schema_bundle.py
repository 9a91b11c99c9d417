"""Bundles encoded against a Schema: positions instead of names, no per-tensor headers."""

import numpy as np
import pytest
import torch

import sparsecodec as sc


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {"conv1.weight": rng.standard_normal((32, 1, 5, 5)).astype(np.float32),
            "conv1.bias": rng.standard_normal(32).astype(np.float32),
            "fc.weight": rng.standard_normal((10, 512)).astype(np.float32),
            "fc.bias": rng.standard_normal(10).astype(np.float32)}


def test_schema_round_trip_is_identical_and_smaller():
    update, schema = _model(), sc.Schema.from_tensors(_model(1))
    for codec, scope in ((sc.TopK(k=3), "tensor"), (sc.TopK(density=0.01), "global"), (sc.Dense(), "tensor")):
        plain = sc.encode_bundle(update, codec, scope=scope)
        compact = sc.encode_bundle(update, codec, scope=scope, schema=schema)
        a = sc.decode_bundle(bytes(plain))
        b = sc.decode_bundle(bytes(compact), schema=schema)
        assert list(a) == list(b) and all(a[n].tobytes() == b[n].tobytes() for n in a)
        assert compact.nbits < plain.nbits
        assert compact.sections["header"] < plain.sections["header"]
        assert compact.nbits == 8 * len(bytes(compact)) == sum(compact.sections.values())
        assert set(sc.decode(bytes(compact), schema=schema)) == set(update)


def test_schema_from_torch_tensors_matches_numpy():
    model = _model()
    tmodel = {k: torch.from_numpy(v) for k, v in model.items()}
    assert sc.Schema.from_tensors(tmodel) == sc.Schema.from_tensors(model)


def test_schema_misuse_and_mismatch():
    update, schema = _model(), sc.Schema.from_tensors(_model())
    data = bytes(sc.encode_bundle(update, sc.TopK(k=2), schema=schema))
    with pytest.raises(sc.ConfigError, match="schema="):
        sc.decode_bundle(data)
    other = sc.Schema.from_tensors({**_model(), "extra": np.zeros(3, np.float32)})
    with pytest.raises(sc.CorruptFrameError, match="fingerprint"):
        sc.decode_bundle(data, schema=other)
    with pytest.raises(sc.ConfigError, match="not in the schema"):
        sc.encode_bundle({"nope": np.zeros(3, np.float32)}, sc.TopK(k=1), schema=schema)
    with pytest.raises(sc.ConfigError, match="schema says"):
        sc.encode_bundle({"fc.bias": np.zeros(11, np.float32)}, sc.TopK(k=1), schema=schema)
    with pytest.raises(sc.ConfigError, match="unique"):
        sc.Schema((("a", "float32", (1,)), ("a", "float32", (2,))))
    # a subset of the schema's tensors is fine (e.g. only the layers a client trained)
    part = sc.decode_bundle(bytes(sc.encode_bundle({"fc.bias": update["fc.bias"]}, sc.Dense(), schema=schema)),
                            schema=schema)
    assert np.array_equal(part["fc.bias"], update["fc.bias"])


@pytest.mark.parametrize("checksum", [True, False])
def test_schema_bundle_hostile_bytes(checksum):
    update, schema = _model(), sc.Schema.from_tensors(_model())
    data = bytes(sc.encode_bundle(update, sc.TopK(k=4), schema=schema, checksum=checksum))
    shapes = {n: (v.shape, v.dtype) for n, v in update.items()}
    for cut in range(len(data)):
        with pytest.raises(sc.FrameError):
            sc.decode_bundle(data[:cut], schema=schema)
    with pytest.raises(sc.FrameError):
        sc.decode_bundle(data + b"\0", schema=schema)
    rng = np.random.default_rng(0)
    for bit in rng.choice(8 * len(data), size=300, replace=False):
        bad = bytearray(data)
        bad[bit // 8] ^= 1 << (bit % 8)
        try:
            parts = sc.decode_bundle(bytes(bad), schema=schema)
        except sc.FrameError:
            continue
        assert not checksum, f"checksum on, flip of bit {bit} undetected"
        for n, v in parts.items():   # never another shape or dtype than the schema's
            assert (v.shape, v.dtype) == shapes[n]


def test_error_feedback_with_schema_keeps_the_invariant():
    update, schema = _model(), sc.Schema.from_tensors(_model())
    ef = sc.ErrorFeedback()
    for _ in range(3):
        olds = {n: (ef.residual(n).copy() if ef.residual(n) is not None else np.zeros_like(v))
                for n, v in update.items()}
        frame = ef.step_bundle(update, sc.TopK(density=0.02), scope="global", schema=schema)
        parts = sc.decode_bundle(bytes(frame), schema=schema)
        for n, v in update.items():
            assert np.array_equal(parts[n] + ef.residual(n), v + olds[n])
