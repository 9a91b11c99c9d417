"""The codec-author API as a third-party author uses it (issue 17, item 4).

The README's codec example and docs/codec_authors.md run as written; ``check_codec`` catches
a decoder that returns wrong values (it no longer compares the decoder with itself), checks
unregistered codecs or says why not; reserved wire ids are refused.
"""

from __future__ import annotations

import dataclasses
import doctest
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import strategies as st

import sparsecodec as sc
from sparsecodec import registry
from sparsecodec.testing import check_codec, is_registered

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def clean_registry():
    """Registrations made by a test are undone after it (the registry is process-global)."""
    registry._import_builtins()   # registered before the snapshot: a module imports only once
    by_name, by_wire = dict(registry._BY_NAME), dict(registry._BY_WIRE)
    yield
    registry._BY_NAME.clear()
    registry._BY_NAME.update(by_name)
    registry._BY_WIRE.clear()
    registry._BY_WIRE.update(by_wire)


@dataclasses.dataclass(frozen=True)
class Raw(sc.Codec):
    """Lossless: the values in their own dtype. Keeps the default encode_and_reconstruct."""

    checksum: bool = False
    codec_id = "test.raw"
    wire_id = 90

    def write_body(self, x, w, **side):
        w.tensor_header(x.dtype, x.shape)
        w.raw(np.ascontiguousarray(x, x.dtype.newbyteorder("<")).tobytes(), "values")

    @classmethod
    def read_body(cls, r, out=None, **side):
        dtype, shape, numel = r.tensor_header()
        if dtype.kind != "f" or r.remaining != numel * dtype.itemsize:
            raise sc.CorruptFrameError("raw: bad dtype or payload length")
        y = np.frombuffer(r.take(r.remaining, "values"), dtype.newbyteorder("<"))
        return cls._fix(y.astype(dtype)).reshape(shape)

    @staticmethod
    def _fix(flat):
        return flat


@dataclasses.dataclass(frozen=True)
class OffByOneRaw(Raw):
    """Reads every value one position late: the classic off-by-one decoder."""

    codec_id = "test.raw_off_by_one"
    wire_id = 91

    @staticmethod
    def _fix(flat):
        return np.roll(flat, 1)


@dataclasses.dataclass(frozen=True)
class Half(sc.Codec):
    """Lossy: float16 values (rounding error <= 2**-11 relative, in the normal range)."""

    codec_id = "test.half"
    wire_id = 92

    def write_body(self, x, w, **side):
        w.tensor_header(x.dtype, x.shape)
        w.raw(x.astype("<f2").tobytes(), "values")

    @classmethod
    def read_body(cls, r, out=None, **side):
        dtype, shape, numel = r.tensor_header()
        if dtype.kind != "f" or r.remaining != 2 * numel:
            raise sc.CorruptFrameError("half: bad dtype or payload length")
        return np.frombuffer(r.take(2 * numel, "values"), "<f2").astype(dtype).reshape(shape)


def gaussian_arrays(max_size: int = 300):
    """float32 N(0, 1) vectors: inside float16's range, so Half's error bound holds."""
    return st.builds(lambda n, seed: np.random.default_rng(seed).standard_normal(n).astype(np.float32),
                     st.integers(0, max_size), st.integers(0, 2**32 - 1))


# -- the documentation runs as written ------------------------------------------------------

def _readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- codec-author-example -->\s*```python\n(.*?)```", text, re.S)
    assert m, "README.md lost its <!-- codec-author-example --> python block"
    return m.group(1)


def test_readme_codec_example_runs_as_written(clean_registry):
    code = _readme_example()
    assert "class FixedPoint(sc.Codec)" in code and "check_codec(" in code
    namespace: dict = {"__name__": "readme_example"}
    # dont_inherit: the README block runs without this module's __future__ imports, as users run it
    exec(compile(code, "README.md:codec-author-example", "exec", dont_inherit=True), namespace)
    codec = namespace["FixedPoint"]()
    assert registry.codec_class("example.fixedpoint") is namespace["FixedPoint"]
    assert is_registered(codec)


def test_codec_authors_guide_doctests(clean_registry):
    result = doctest.testfile(str(ROOT / "docs" / "codec_authors.md"), module_relative=False,
                              optionflags=doctest.ELLIPSIS, raise_on_error=False, verbose=False)
    assert result.attempted >= 20
    assert result.failed == 0, f"{result.failed} doctest(s) in docs/codec_authors.md failed"


# -- check_codec catches wrong values -------------------------------------------------------

def test_lossless_codec_passes_and_off_by_one_decoder_fails():
    check_codec(Raw(), lossless=True, max_examples=15, hostile=False)
    with pytest.raises(AssertionError, match="differs from the input"):
        check_codec(OffByOneRaw(), lossless=True, max_examples=15, hostile=False)


def test_without_an_independent_expectation_check_codec_refuses():
    # the default encode_and_reconstruct decodes the frame: comparing with it cannot fail
    for codec in (Raw(), OffByOneRaw()):
        with pytest.raises(sc.ConfigError, match="compare the decoder with itself"):
            check_codec(codec, max_examples=2)


def test_an_overridden_encode_and_reconstruct_catches_the_off_by_one_decoder(clean_registry):
    # Dense's encode_and_reconstruct returns the input without decoding, so it is independent
    @dataclasses.dataclass(frozen=True)
    class OffByOneDense(sc.Dense):
        codec_id = "test.dense_off_by_one"
        wire_id = 93

        @classmethod
        def _read_body(cls, r, out=None):
            y = super()._read_body(r)
            return np.roll(y.reshape(-1), 1).reshape(y.shape)

    check_codec(sc.Dense(), max_examples=10, hostile=False)
    with pytest.raises(AssertionError, match="encode_and_reconstruct"):
        check_codec(OffByOneDense(), max_examples=10, hostile=False)


def test_reference_reconstruction_catches_a_wrong_decoder():
    half_ref = lambda x: x.astype(np.float16).astype(x.dtype)   # noqa: E731
    check_codec(Half(), reference=half_ref, inputs=gaussian_arrays(), max_examples=15)
    with pytest.raises(AssertionError, match=r"differs from reference\(x\)"):
        check_codec(Raw(), reference=half_ref, inputs=gaussian_arrays(), max_examples=15,
                    hostile=False)


def test_tolerance_accepts_the_codec_error_and_no_more():
    check_codec(Half(), rtol=1e-3, atol=1e-7, inputs=gaussian_arrays(), max_examples=15)
    with pytest.raises(AssertionError, match="not within atol"):
        check_codec(Half(), rtol=1e-5, atol=0.0, inputs=gaussian_arrays(), max_examples=15,
                    hostile=False)


def test_contradictory_options_are_config_errors():
    with pytest.raises(sc.ConfigError, match="do not combine"):
        check_codec(Raw(), lossless=True, atol=1e-3)
    with pytest.raises(sc.ConfigError, match=">= 0"):
        check_codec(Raw(), atol=-1.0)
    with pytest.raises(sc.ConfigError, match="function"):
        check_codec(Raw(), reference=np.zeros(3))


# -- registered or not ---------------------------------------------------------------------

def test_an_unregistered_codec_is_checked_without_the_registry_properties():
    codec = Half()
    assert not is_registered(codec)
    check_codec(codec, rtol=1e-3, atol=1e-7, inputs=gaussian_arrays(), max_examples=10)
    # why the registry properties are skipped: the generic decoder cannot find it
    with pytest.raises(sc.CorruptFrameError, match="no registered codec"):
        sc.decode(bytes(codec.encode(np.ones(3, np.float32))))


def test_a_registered_codec_also_round_trips_through_sc_decode_and_bundles(clean_registry):
    sc.register_codec(Raw)
    assert is_registered(Raw())
    check_codec(Raw(), lossless=True, max_examples=10)
    x = np.arange(5, dtype=np.float64)
    assert np.array_equal(sc.decode_bundle(bytes(sc.encode_bundle({"t": x}, Raw())))["t"], x)


def test_ids_owned_by_another_registered_class_are_refused_clearly():
    @dataclasses.dataclass(frozen=True)
    class MyTopK(sc.TopK):        # keeps TopK's codec_id and wire_id, not registered
        pass

    with pytest.raises(sc.ConfigError, match=r"codec_id 'topk' is registered by "
                                             r"sparsecodec\.topk\.TopK and wire id 1 is"):
        check_codec(MyTopK(k=3), max_examples=2)


def test_an_unregistered_codec_with_a_reserved_wire_id_is_refused():
    @dataclasses.dataclass(frozen=True)
    class Bad(Raw):
        codec_id = "test.bad"
        wire_id = 126

    with pytest.raises(sc.ConfigError, match="schema bundles"):
        check_codec(Bad(), lossless=True, max_examples=2)


# -- wire ids --------------------------------------------------------------------------------

@pytest.mark.parametrize("wire_id, why", [
    (0x7C, "downlink patches"), (0x7D, "compact messages"), (0x7E, "schema bundles"),
    (0x7F, "bundles"), (5, "built-in codecs"), (63, "built-in codecs"),
    (0, "not an assigned"), (128, "not an assigned"), (255, "not an assigned"),
    ("100", "needs an int"), (True, "needs an int"), (None, "needs an int"),
])
def test_register_codec_rejects_reserved_and_invalid_wire_ids(clean_registry, wire_id, why):
    cls = type("Clash", (Raw,), {"codec_id": "test.clash", "wire_id": wire_id})
    with pytest.raises(sc.ConfigError, match=why) as info:
        sc.register_codec(cls)
    assert "64..123" in str(info.value)
    assert "test.clash" not in registry._BY_NAME


@pytest.mark.parametrize("wire_id", [64, 100, 123])
def test_register_codec_accepts_the_user_range(clean_registry, wire_id):
    cls = type("Ok", (Raw,), {"codec_id": f"test.ok{wire_id}", "wire_id": wire_id})
    assert sc.register_codec(cls) is cls
    assert registry.codec_for_wire_id(wire_id) is cls
    assert list(registry.USER_WIRE_IDS) == list(range(64, 124))


def test_reserved_ids_are_the_message_kinds_wire_ids():
    from sparsecodec import frame, packed, patch

    assert set(registry.RESERVED_WIRE_IDS) == {
        frame.BUNDLE_WIRE_ID, frame.SCHEMA_BUNDLE_WIRE_ID, packed.PACKED_WIRE_ID,
        patch.PATCH_WIRE_ID}
    codec_ids = {c.wire_id for c in registry.registered_codecs().values()}
    assert codec_ids <= set(registry.BUILTIN_WIRE_IDS) | set(registry.USER_WIRE_IDS)


def test_a_taken_wire_id_is_refused(clean_registry):
    sc.register_codec(Raw)
    other = type("Other", (Raw,), {"codec_id": "test.other", "wire_id": Raw.wire_id})
    with pytest.raises(sc.ConfigError, match="wire id 90 is already registered by Raw"):
        sc.register_codec(other)


# -- the hooks -------------------------------------------------------------------------------

def test_public_and_legacy_hook_names_are_aliases():
    # built-ins define the legacy names; third-party codecs the public ones
    assert sc.TopK.write_body is sc.TopK._write_body
    assert sc.Dense.read_body.__func__ is sc.Dense._read_body.__func__
    assert Raw._write_body is Raw.write_body
    assert Raw._read_body.__func__ is Raw.read_body.__func__


def test_a_codec_without_hooks_cannot_be_instantiated():
    @dataclasses.dataclass(frozen=True)
    class Empty(sc.Codec):
        codec_id = "test.empty"
        wire_id = 94

    with pytest.raises(TypeError, match="does not implement write_body and read_body"):
        Empty()


def test_author_api_is_exported():
    for name in ("Codec", "FrameWriter", "FrameReader", "register_codec", "registry"):
        assert name in sc.__all__ and getattr(sc, name) is not None
    assert sc.Codec.__doc__ and "write_body" in sc.Codec.__doc__
    for method in ("tensor_header", "u8", "varint", "raw"):
        assert method in (ROOT / "docs" / "codec_authors.md").read_text()
        assert callable(getattr(sc.FrameWriter, method))
