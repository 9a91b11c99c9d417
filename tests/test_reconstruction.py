"""The typed reconstruction contract (issue 18 item 2).

Every codec's body writer says what the decoder will return (``sparsecodec.reconstruction``);
it must be that, bit for bit. Error feedback and bundles use it and decode nothing, and a
step that fails leaves the residual exactly as it was.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle

import numpy as np
import pytest

import sparsecodec as sc
from sparsecodec import bundle as sc_bundle
from sparsecodec import generic as sc_generic
from sparsecodec import packed as sc_packed
from sparsecodec import registry
from sparsecodec.reconstruction import DenseRecon, IdentityRecon, Reconstruction, SparseRecon
from sparsecodec.values import VALUE_CODERS

VALUES = sorted(VALUE_CODERS)
EF_EXACT = [v for v in VALUES if sc.values.value_coder(v).ef_exact]


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes())


def update(rng, dtype=np.float32) -> dict[str, np.ndarray]:
    return {"w": (rng.standard_normal((30, 20)) * 3).astype(dtype),
            "b": (rng.standard_normal(17) * 3).astype(dtype)}


@pytest.fixture(autouse=True)
def halves_registered():
    """Halves (below) registered for each test only, so bundles can decode it."""
    registry._import_builtins()          # before the snapshot: the built-ins register lazily
    by_name, by_wire = dict(registry._BY_NAME), dict(registry._BY_WIRE)
    registry.register_codec(Halves)
    yield
    registry._BY_NAME.clear()
    registry._BY_NAME.update(by_name)
    registry._BY_WIRE.clear()
    registry._BY_WIRE.update(by_wire)


@dataclasses.dataclass(frozen=True)
class Halves(sc.Codec):
    """A user codec whose write_body returns None (float16 values): the base class decodes."""

    fail: bool = False
    codec_id = "test.recon_halves"
    wire_id = 97

    def write_body(self, x, w, **side):
        if self.fail:
            raise sc.ConfigError("Halves(fail=True) refuses every input")
        w.tensor_header(x.dtype, x.shape)
        w.raw(np.ascontiguousarray(x, "<f2"), "values")

    @classmethod
    def read_body(cls, r, out=None, **side):
        dtype, shape, numel = r.tensor_header()
        if dtype.kind != "f" or r.remaining != 2 * numel:
            raise sc.CorruptFrameError("halves: bad dtype or payload length")
        return np.frombuffer(r.take(2 * numel, "values"), "<f2").astype(dtype).reshape(shape)


# -- every codec's reconstruction is what the decoder returns ---------------------------------

@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_topk_reconstruction_is_the_decode(values, dtype):
    rng = np.random.default_rng(1)
    x = (rng.standard_normal((40, 25)) * 5).astype(dtype)
    x[0, :3] = [-0.0, 1e-30, 0.0]
    for codec in (sc.TopK(k=0, values=values), sc.TopK(k=37, values=values),
                  sc.TopK(density=1.0, values=values), sc.TopK(k="nnz", values=values),
                  sc.TopK(k=5, values=values, index="raw")):
        frame, recon = codec.encode_with_reconstruction(x)
        assert isinstance(recon, SparseRecon) and recon.shape == x.shape and recon.dtype == x.dtype
        assert recon.idx.dtype == np.int64 and np.all(np.diff(recon.idx) > 0)
        decoded = sc.decode(bytes(frame))
        assert same_bits(recon.to_dense(), decoded), (codec, "reconstruction != decode")
        assert same_bits(codec.encode_and_reconstruct(x)[1], decoded)
        f2, idx, v_hat = codec.encode_sparse(x)               # the public tuple API stays
        assert bytes(f2) == bytes(frame) == bytes(codec.encode(x))
        assert np.array_equal(idx, recon.idx) and same_bits(v_hat, recon.values)
        assert frame.meta["k"] == recon.k


@pytest.mark.parametrize("values", VALUES)
def test_topk_encode_given_and_global_selection_reconstruct_exactly(values):
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(500) * 2).astype(np.float32)
    idx = np.array([400, 3, 77, 9])
    codec = sc.TopK(k=4, values=values)
    frame, recon = codec.encode_with_reconstruction(x, indices=np.sort(idx))
    assert same_bits(recon.to_dense(), sc.decode(bytes(frame)))
    given = codec.encode_given(idx, x[idx], numel=500)
    assert bytes(given) == bytes(frame)


@pytest.mark.parametrize("compression", [None, "zstd"])
@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bool", "uint8", ">f4"])
def test_dense_is_an_identity_reconstruction(compression, dtype):
    rng = np.random.default_rng(3)
    raw = rng.standard_normal((9, 7)) * 100
    x = (raw > 0) if dtype == "bool" else np.abs(raw).astype(dtype) if dtype == "uint8" else raw.astype(dtype)
    if x.dtype.kind == "f":
        x.reshape(-1)[:2] = [-0.0, np.finfo(x.dtype).tiny / 4]    # the sign of zero, a denormal
    codec = sc.Dense(compression=compression)
    frame, recon = codec.encode_with_reconstruction(x[:, ::2])     # a non-contiguous view too
    assert isinstance(recon, IdentityRecon)
    decoded = sc.decode(bytes(frame))
    assert same_bits(recon.to_dense(), decoded)
    assert recon.dtype == decoded.dtype and recon.dtype.isnative


def test_dense_nonfinite_is_still_the_identity():
    x = np.array([np.nan, -np.inf, 1.0, np.float32(np.nan) * -1], np.float32)
    frame, recon = sc.Dense(allow_nonfinite=True).encode_with_reconstruction(x)
    assert same_bits(recon.to_dense(), sc.decode(bytes(frame)))


@pytest.mark.parametrize("dtype", [np.bool_, np.uint8])
@pytest.mark.parametrize("lanes", [1, 2])
def test_mask_codec_reconstructs_the_mask_under_every_model(dtype, lanes):
    rng = np.random.default_rng(4)
    mask = (rng.random(3000) < 0.1).astype(dtype)
    probs = rng.uniform(0.01, 0.5, mask.size)
    codec = sc.MaskCodec(lanes=lanes)
    for side in ({}, {"p": 0.1}, {"p": probs}):
        frame, recon = codec.encode_with_reconstruction(mask, **side)
        assert isinstance(recon, IdentityRecon)
        assert same_bits(recon.to_dense(), codec.decode(bytes(frame), **side))


def test_a_user_codec_returning_none_is_decoded_once(monkeypatch):
    calls = []
    real = Halves.read_body.__func__

    def counting(cls, r, out=None, **side):
        calls.append(1)
        return real(cls, r, out, **side)

    for hook in ("read_body", "_read_body"):
        monkeypatch.setattr(Halves, hook, classmethod(counting))
    x = np.random.default_rng(5).standard_normal(50).astype(np.float32)
    frame, recon = Halves().encode_with_reconstruction(x)
    assert isinstance(recon, DenseRecon) and recon.decoded and len(calls) == 1
    assert same_bits(recon.to_dense(), Halves().decode(bytes(frame)))
    calls.clear()
    assert bytes(Halves().encode(x)) == bytes(frame) and not calls    # encode alone decodes nothing


def test_a_body_writer_returning_something_else_is_a_type_error():
    @dataclasses.dataclass(frozen=True)
    class Hint(Halves):
        codec_id = "test.recon_hint"
        wire_id = 96

        def write_body(self, x, w, **side):
            super().write_body(x, w, **side)
            return (np.arange(2), x[:2])             # the old free-form hint

    x = np.ones(3, np.float32)
    for encode in (lambda: Hint().encode(x), lambda: Hint().encode_with_reconstruction(x),
                   lambda: sc.encode_bundle({"t": x}, Hint()),
                   lambda: sc.encode_packed({"t": x}, sc.MessageSpec.from_tensors({"t": x}, Hint()))):
        with pytest.raises(TypeError, match="Hint.write_body returned tuple; it must return a"):
            encode()


def test_apply_residual_refuses_a_target_it_cannot_update_in_place():
    recon = SparseRecon(np.array([0, 2]), np.array([1.0, 2.0], np.float32), (4,), np.float32)
    e = np.ones(8, np.float32)
    with pytest.raises(sc.ConfigError, match="C-contiguous"):
        recon.apply_residual(e[::2])                  # reshape(-1) would be a copy
    with pytest.raises(sc.ConfigError):
        recon.apply_residual(np.ones(4, np.float64))
    target = np.ones(4, np.float32)
    recon.apply_residual(target)
    assert target.tolist() == [0.0, 1.0, -1.0, 1.0]
    with pytest.raises(sc.ConfigError, match="one per index"):
        SparseRecon(np.array([0, 2]), np.array([1.0], np.float32), (4,), np.float32)


# -- bundles and compact messages report each tensor's reconstruction -------------------------

def bundle_cases(rng):
    u = update(rng)
    mask = rng.random(40) < 0.2
    mixed_u = {**u, "m": mask, "h": u["b"] * 2}
    mixed = {"w": sc.TopK(density=0.05, values="q8"), "b": sc.Dense(), "m": sc.MaskCodec(),
             "h": Halves()}
    schema = sc.Schema.from_tensors(u)
    spec = sc.MessageSpec(sc.Schema.from_tensors(mixed_u), mixed)
    gspec = sc.MessageSpec(schema, sc.TopK(density=0.05, values="sign"), scope="global")
    return [
        ("bundle", mixed_u, lambda t, cb: sc.encode_bundle(t, mixed, on_encoded=cb),
         lambda d: sc.decode_bundle(d)),
        ("schema", u, lambda t, cb: sc.encode_bundle(t, sc.TopK(k=9, values="bf16"), schema=schema,
                                                     on_encoded=cb),
         lambda d: sc.decode_bundle(d, schema=schema)),
        ("global", u, lambda t, cb: sc.encode_bundle(t, sc.TopK(density=0.03), scope="global",
                                                     checksum=False, on_encoded=cb),
         lambda d: sc.decode_bundle(d)),
        ("packed", mixed_u, lambda t, cb: sc.encode_packed(t, spec, on_encoded=cb),
         lambda d: sc.decode_packed(d, spec)),
        ("packed-global", u, lambda t, cb: sc.encode_packed(t, gspec, on_encoded=cb),
         lambda d: sc.decode_packed(d, gspec)),
    ]


@pytest.mark.parametrize("case", range(5))
def test_on_encoded_gets_each_tensors_exact_reconstruction(case):
    label, tensors, encode, decode = bundle_cases(np.random.default_rng(6))[case]
    got: dict[str, Reconstruction] = {}
    frame = encode(tensors, got.__setitem__)
    parts = decode(bytes(frame))
    assert sorted(got) == sorted(tensors), label
    for name, recon in got.items():
        assert isinstance(recon, Reconstruction)
        assert same_bits(recon.to_dense(), parts[name]), (label, name)


# -- error feedback decodes nothing and keeps the invariant -----------------------------------

def forbid_decoding(m: pytest.MonkeyPatch) -> None:
    """Make every decoding entry point raise (the codecs' body readers included)."""
    def boom(*args, **kwargs):
        raise AssertionError("error feedback decoded a message")

    for module, name in ((sc_bundle, "decode_bundle"), (sc_packed, "decode_packed"),
                         (sc_generic, "decode"), (sc_bundle, "_read_entries")):
        m.setattr(module, name, boom)
    m.setattr(sc.Codec, "decode", boom)
    for cls in (sc.TopK, sc.Dense, sc.MaskCodec):
        m.setattr(cls, "_read_body", classmethod(boom))
        m.setattr(cls, "read_body", classmethod(boom))


def check_step(x, e_old, e_new, x_hat, exact: bool) -> None:
    # e_new is fl(fl(e_old + x) - x_hat) bit for bit, for every codec ...
    assert same_bits(e_new, (e_old + x) - x_hat)
    if exact:   # ... and with an EF-exact value format nothing is lost at all
        assert np.array_equal(x_hat + e_new, x + e_old)


@pytest.mark.parametrize("values", VALUES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_decodes_nothing_and_keeps_what_was_not_sent(values, dtype, monkeypatch):
    rng = np.random.default_rng(7)
    codecs = [sc.TopK(k=60, values=values), sc.TopK(density=0.3, values=values, k_rule="flare")]
    if values == "fp32":        # the value format is TopK's: the lossless codecs once
        codecs += [sc.Dense(), sc.Dense(compression="zstd")]
    for codec in codecs:
        ef = sc.ErrorFeedback()
        for _ in range(3):
            x = (rng.standard_normal((20, 30)) * 4).astype(dtype)
            e_old = ef.residual("t")
            e_old = np.zeros_like(x) if e_old is None else e_old.copy()
            with monkeypatch.context() as m:
                forbid_decoding(m)
                frame = ef.step("t", x, codec)
            check_step(x, e_old, ef.residual("t"), sc.decode(bytes(frame)),
                       exact=values in EF_EXACT or isinstance(codec, sc.Dense))


@pytest.mark.parametrize("case", ["bundle", "schema", "global", "packed", "packed-global"])
def test_step_bundle_decodes_nothing_and_keeps_what_was_not_sent(case, monkeypatch):
    rng = np.random.default_rng(8)
    model = update(rng)
    schema = sc.Schema.from_tensors(model)
    mixed = {"w": sc.TopK(density=0.05, values="q8"), "b": sc.Dense()}
    spec = sc.MessageSpec(schema, mixed)
    gspec = sc.MessageSpec(schema, sc.TopK(density=0.04, values="fp16"), scope="global")
    run, dec = {
        "bundle": (lambda ef, u: ef.step_bundle(u, mixed), sc.decode_bundle),
        "schema": (lambda ef, u: ef.step_bundle(u, sc.TopK(k=11, values="bf16"), schema=schema),
                   lambda d: sc.decode_bundle(d, schema=schema)),
        "global": (lambda ef, u: ef.step_bundle(u, sc.TopK(density=0.03, values="q8"), scope="global"),
                   sc.decode_bundle),
        "packed": (lambda ef, u: ef.step_bundle(u, mixed, spec=spec), lambda d: sc.decode_packed(d, spec)),
        "packed-global": (lambda ef, u: ef.step_bundle(u, gspec.codec, scope="global", spec=gspec),
                          lambda d: sc.decode_packed(d, gspec)),
    }[case]
    ef = sc.ErrorFeedback()
    for _ in range(3):
        u = update(rng)
        olds = {n: np.zeros_like(v) if ef.residual(n) is None else ef.residual(n).copy() for n, v in u.items()}
        with monkeypatch.context() as m:
            forbid_decoding(m)
            frame = run(ef, u)
        parts = dec(bytes(frame))
        for n in u:
            check_step(u[n], olds[n], ef.residual(n), parts[n], exact=True)


def test_zero_dimensional_and_empty_tensors_step():
    for x in (np.array(1.5, np.float32), np.zeros((0, 3), np.float64)):
        ef = sc.ErrorFeedback()
        for codec in (sc.TopK(k=0), sc.TopK(density=1.0), sc.Dense()):
            e_old = np.zeros_like(x) if ef.residual("t") is None else ef.residual("t").copy()
            frame = ef.step("t", x, codec)
            check_step(x, e_old, ef.residual("t"), sc.decode(bytes(frame)), exact=True)
            assert isinstance(ef.residual("t"), np.ndarray) and ef.residual("t").shape == x.shape


def test_step_bundle_with_a_user_codec_decodes_only_its_body(monkeypatch):
    rng = np.random.default_rng(9)
    u = update(rng)
    ef = sc.ErrorFeedback()
    with monkeypatch.context() as m:
        for module, name in ((sc_bundle, "decode_bundle"), (sc_bundle, "_read_entries")):
            m.setattr(module, name, lambda *a, **k: pytest.fail("the bundle was decoded"))
        frame = ef.step_bundle(u, {"w": sc.TopK(k=10), "b": Halves()})
    parts = sc.decode_bundle(bytes(frame))
    for n in u:
        check_step(u[n], np.zeros_like(u[n]), ef.residual(n), parts[n], exact=True)


# -- a failed step restores the residual exactly ----------------------------------------------

def inexact_residual() -> tuple[np.ndarray, np.ndarray]:
    """(e, x) with (e + x) - x != e in float32, and x holding a value fp16 cannot code."""
    e = np.array([1e-8, 3.0e-9, 0.5, -7e-9], np.float32)
    x = np.array([1.0, 70000.0, 0.25, -1.0], np.float32)
    assert not np.array_equal((e + x) - x, e)      # subtracting x again would not restore e
    return e, x


@pytest.mark.parametrize("failing", ["fp16-overflow", "raising-codec"])
def test_a_failed_step_restores_the_residual_bit_for_bit(failing):
    e, x = inexact_residual()
    codec = sc.TopK(k=4, values="fp16") if failing == "fp16-overflow" else Halves(fail=True)
    ef = sc.ErrorFeedback()
    ef.load_state_dict({"residuals": {"w": e}})
    buf = ef.residual("w")
    with pytest.raises(sc.ConfigError):
        ef.step("w", x, codec)
    assert ef.residual("w") is buf and same_bits(buf, e)
    with pytest.raises(sc.ConfigError):
        ef.step("new", x, codec)
    assert ef.residual("new") is None                  # a first step that fails leaves nothing
    ef.step("w", x, sc.TopK(k=2))                      # and the state still works
    assert ef.residual("w") is buf


def test_a_failed_step_bundle_restores_every_residual():
    e, x = inexact_residual()
    ef = sc.ErrorFeedback()
    ef.load_state_dict({"residuals": {"a": e, "b": e}})
    before = ef.state_dict()["residuals"]
    # "a" encodes (and (e + x_a) - x_a != e there), then "b" fails: 70000 is outside fp16
    tensors = {"a": np.array([1.0, 2.0, 0.25, -1.0], np.float32), "b": x}
    codecs = {"a": sc.TopK(k=4, values="fp16"), "b": sc.TopK(k=4, values="fp16")}
    spec = sc.MessageSpec.from_tensors(tensors, codecs)
    for step in (lambda: ef.step_bundle(tensors, codecs),
                 lambda: ef.step_bundle(tensors, codecs, spec=spec),
                 lambda: ef.step_bundle({"a": x, "b": np.ones(3, np.float32)}, sc.TopK(k=1))):
        with pytest.raises(sc.ConfigError):
            step()
        for n in before:
            assert same_bits(ef.residual(n), before[n]), n


def test_ddp_style_failure_keeps_the_residual_and_a_later_step_matches_a_fresh_one():
    e, x = inexact_residual()
    ef, twin = sc.ErrorFeedback(), sc.ErrorFeedback()
    for s in (ef, twin):
        s.load_state_dict({"residuals": {"0": e}})
    with pytest.raises(sc.ConfigError):
        ef.step("0", x, sc.TopK(k=4, values="fp16"))
    small = np.array([0.1, -0.2, 0.3, 0.4], np.float32)
    assert bytes(ef.step("0", small, sc.TopK(k=2))) == bytes(twin.step("0", small, sc.TopK(k=2)))
    assert same_bits(ef.residual("0"), twin.residual("0"))


def test_the_spare_buffer_serves_tensors_of_any_size_and_dtype_and_is_not_state():
    rng = np.random.default_rng(10)
    ef = sc.ErrorFeedback()
    shapes = [((50, 4), np.float64), ((7,), np.float32), ((300,), np.float32), ((), np.float64),
              ((3, 3), np.float32)]
    for rnd in range(3):            # round 0 creates the residuals; later rounds use the spare
        for i, (shape, dtype) in enumerate(shapes):
            name = f"t{i}"
            x = (rng.standard_normal(shape) * 5).astype(dtype)
            e_old = np.zeros(shape, dtype) if ef.residual(name) is None else ef.residual(name).copy()
            frame = ef.step(name, x, sc.TopK(k=0 if x.size < 2 else 2, values="q8"))
            check_step(x, e_old, ef.residual(name), sc.decode(bytes(frame)), exact=True)
    assert ef._spare["buf"].nbytes == 50 * 4 * 8     # the largest tensor stepped (float64)
    before = ef.state_dict()["residuals"]
    with pytest.raises(sc.ConfigError):             # a failure with the spare in use restores too
        ef.step("t2", np.full(300, 7e4, np.float32), sc.TopK(k=3, values="fp16"))
    assert all(same_bits(ef.residual(n), before[n]) for n in before)
    for clone in (pickle.loads(pickle.dumps(ef)), copy.deepcopy(ef)):
        assert "buf" not in clone._spare and sorted(clone.names()) == sorted(ef.names())
        assert all(same_bits(clone.residual(n), before[n]) for n in before)
        clone.step("t2", np.ones(300, np.float32), sc.TopK(k=1))
