"""MaskCodec and its range coder: reference agreement, round trips, bounds, bad input, goldens.

The kernel must write the same bytes as tests/reference_rangecoder.py (exact big-integer
arithmetic) and accept exactly the payloads the reference accepts. A subset reruns with
NUMBA_DISABLE_JIT=1 (test_subset_without_jit).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import reference_rangecoder as ref
import sparsecodec as sc
from sparsecodec import bounds
from sparsecodec._kernels import enumerative as en
from sparsecodec._kernels import rangecoder as rc
from sparsecodec.errors import (ConfigError, CorruptFrameError, FrameError, LimitExceededError,
                                SideInfoMismatchError, TruncatedFrameError)
from sparsecodec.frame import FrameWriter, encode_varint
from sparsecodec.mask import MaskCodec, _crc4, _model_byte
from sparsecodec.models import (LANE_SPLIT_MIN_BITS, PROB_ONE, choose_lanes,
                                quantize_probability)
from sparsecodec.testing.masks import check_mask_codec, masks, masks_with_probabilities

NOJIT = os.environ.get("NUMBA_DISABLE_JIT") == "1"
GOLDEN = Path(__file__).resolve().parent / "golden"
EMPTY = np.zeros(0, np.uint8)


# -- helpers -------------------------------------------------------------------------------
def kernel_bernoulli(bits: np.ndarray, src) -> bytes:
    out = np.empty(rc.max_payload_bytes(bits.size), np.uint8)
    nbytes = rc.encode_bernoulli(bits, src, out)
    assert nbytes >= 0, nbytes
    return out[:nbytes].tobytes()


def kernel_decode_one_lane(payload: bytes, src, n: int) -> tuple[int, np.ndarray]:
    out = np.zeros(n, np.uint8)
    src_b = src if np.ndim(src) == 0 else src[:0]
    status = rc.decode_bernoulli(np.frombuffer(payload, np.uint8), EMPTY, src, src_b, out,
                                 out[:0])
    return status, out


def kernel_enumerative(bits: np.ndarray) -> bytes:
    out = np.empty(rc.max_payload_bytes(bits.size), np.uint8)
    nbytes = en.encode_enumerative(bits, int(bits.sum()), out)
    assert nbytes >= 0, nbytes
    return out[:nbytes].tobytes()


def mutations(payload: bytes, rng: np.random.Generator, count: int):
    """Bit flips, truncations, appended bytes and random payloads."""
    yield b""
    for _ in range(count):
        pay = bytearray(payload)
        op = int(rng.integers(0, 4))
        if op == 0 and pay:
            pay[int(rng.integers(len(pay)))] ^= 1 << int(rng.integers(8))
        elif op == 1 and pay:
            pay = pay[:int(rng.integers(len(pay)))]
        elif op == 2:
            pay += bytes(rng.integers(0, 256, int(rng.integers(1, 3)), dtype=np.uint8))
        else:
            pay = bytearray(rng.integers(0, 256, int(rng.integers(0, 24)), dtype=np.uint8))
        yield bytes(pay)


# -- the kernel against the reference ------------------------------------------------------
def test_quantization_matches_reference_small():
    rng = np.random.default_rng(0)
    probs = np.concatenate([rng.random(500), [0.0, 1.0, 0.5, 2.0 ** -21, 2.0 ** -20,
                                              1.5 * 2.0 ** -20, 1.0 - 2.0 ** -21, 1e-300]])
    for p in list(probs) + list(probs.astype(np.float32)):
        assert int(rc.quantize_probability(p)) == ref.quantize(p) == quantize_probability(p)


@settings(max_examples=60, deadline=None)
@given(masks_with_probabilities(max_size=400))
def test_kernel_matches_reference_small_per_entry(mask_p):
    mask, p = mask_p
    bits = mask.reshape(-1).astype(np.uint8)
    flat_p = p.reshape(-1)
    expected = ref.encode_qs(bits, [ref.quantize(x) for x in flat_p])
    payload = kernel_bernoulli(bits, flat_p)
    assert payload == expected
    status, out = kernel_decode_one_lane(payload, flat_p, bits.size)
    assert status == 0 and np.array_equal(out, bits)


@settings(max_examples=60, deadline=None)
@given(masks(max_size=400), st.integers(1, PROB_ONE - 1))
def test_kernel_matches_reference_small_fixed_and_enumerative(mask, q):
    bits = mask.reshape(-1).astype(np.uint8)
    assert kernel_bernoulli(bits, np.uint64(q)) == ref.encode_qs(bits, [q] * bits.size)
    payload = kernel_enumerative(bits)
    assert payload == ref.encode_enumerative(bits)
    out = np.empty(bits.size, np.uint8)
    assert en.decode_enumerative(np.frombuffer(payload, np.uint8), int(bits.sum()), out) == 0
    assert np.array_equal(out, bits)


@settings(max_examples=40, deadline=None)
@given(masks(max_size=200), st.integers(1, PROB_ONE - 1), st.integers(0, 2**32 - 1))
def test_kernel_accepts_exactly_what_reference_accepts_small(mask, q, seed):
    """Decoding untrusted payloads: same verdict as the reference's re-encode check."""
    bits = mask.reshape(-1).astype(np.uint8)
    n, ones = bits.size, int(bits.sum())
    rng = np.random.default_rng(seed)
    for payload in mutations(kernel_bernoulli(bits, np.uint64(q)), rng, 12):
        try:
            expected = ref.decode_qs(payload, [q] * n)
        except ref.Reject:
            expected = None
        status, out = kernel_decode_one_lane(payload, np.uint64(q), n)
        assert (status == 0) == (expected is not None), (payload.hex(), status)
        if expected is not None:
            assert out.tolist() == expected
    for payload in mutations(kernel_enumerative(bits), rng, 12):
        try:
            expected = ref.decode_enumerative(payload, n, ones)
        except ref.Reject:
            expected = None
        out = np.zeros(n, np.uint8)
        status = en.decode_enumerative(np.frombuffer(payload, np.uint8), ones, out)
        assert (status == 0) == (expected is not None), (payload.hex(), status)
        if expected is not None:
            assert out.tolist() == expected


def test_carry_chains_match_reference_small():
    """Zeros under P(1) ~ 1 push the code value to ...FFFF: long carry chains, then a one."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        n = int(rng.integers(1, 400))
        bits = np.zeros(n, np.uint8)
        bits[rng.integers(0, n, size=int(rng.integers(0, 4)))] = 1
        q = PROB_ONE - 1 - int(rng.integers(0, 3))
        assert kernel_bernoulli(bits, np.uint64(q)) == ref.encode_qs(bits, [q] * n)
        probs = rng.choice(np.array([0.0, 1.0, 0.5]), n)
        mask = (rng.random(n) < 0.5).astype(np.uint8)
        assert kernel_bernoulli(mask, probs) == ref.encode_qs(mask, [ref.quantize(x) for x in probs])


@settings(max_examples=30, deadline=None)
@given(masks_with_probabilities(min_size=1, max_size=400), st.sampled_from([1, 2]))
def test_frame_mask_section_matches_reference_small(mask_p, lanes):
    mask, p = mask_p
    frame = MaskCodec(lanes=lanes).encode(mask, p=p)
    bits = mask.reshape(-1).astype(np.uint8)
    section = ref.mask_section(bits, [ref.quantize(x) for x in p.reshape(-1)], lanes)
    assert bytes(frame).endswith(section)
    assert frame.sections["mask"] == 8 * len(section)


# -- round trips ---------------------------------------------------------------------------
EDGE_MASKS = [np.zeros(0, bool), np.array([True]), np.array([False]), np.zeros(300, bool),
              np.ones(300, bool), np.ones((4, 5), np.uint8), np.zeros((0, 7), np.uint8),
              np.array(True)]


@pytest.mark.parametrize("mask", EDGE_MASKS, ids=lambda m: f"{m.dtype}{m.shape}")
@pytest.mark.parametrize("lanes", [1, 2])
def test_edge_masks_round_trip_under_every_model(mask, lanes):
    codec = MaskCodec(lanes=lanes)
    n = mask.size
    for side in ({}, {"p": 0.0}, {"p": 1.0}, {"p": 0.3}, {"p": np.zeros(mask.shape)},
                 {"p": np.ones(n)}, {"p": np.full(mask.shape, 0.5, np.float32)}):
        frame = codec.encode(mask, **side)
        got = codec.decode(bytes(frame), **side)
        assert got.dtype == mask.dtype and got.shape == mask.shape
        assert np.array_equal(got, mask), side
        assert frame.nbits == 8 * len(bytes(frame)) == sum(frame.sections.values())


def test_contrary_bits_at_the_clip_limits_cost_20_bits():
    """p = 0 with ones (and p = 1 with zeros) still codes, at -log2(2**-20) bits each."""
    mask = np.zeros(1000, bool)
    mask[::100] = True                                    # 10 "impossible" ones
    frame = MaskCodec().encode(mask, p=0.0)
    assert np.array_equal(MaskCodec().decode(bytes(frame)), mask)
    assert 10 * 20 <= frame.sections["mask"] <= 10 * 20 + 8 + 16
    frame = MaskCodec().encode(~mask, p=np.ones(1000))
    assert np.array_equal(MaskCodec().decode(bytes(frame), p=np.ones(1000)), ~mask)


def test_out_argument_and_dtypes():
    mask = (np.random.default_rng(1).random((6, 7)) < 0.3).astype(np.uint8)
    data = bytes(MaskCodec().encode(mask))
    out = np.empty((6, 7), np.uint8)
    assert MaskCodec().decode(data, out=out) is out and np.array_equal(out, mask)
    strided = np.empty((6, 14), np.uint8)[:, ::2]
    assert np.array_equal(MaskCodec().decode(data, out=strided), mask)
    with pytest.raises(ConfigError):
        MaskCodec().decode(data, out=np.empty((6, 7), bool))


def test_the_codec_suite():
    check_mask_codec(MaskCodec(), max_examples=40)
    check_mask_codec(MaskCodec(lanes=2, checksum=True), max_examples=20)


# -- bits against the bounds at n >= 1e5 ---------------------------------------------------
@pytest.mark.parametrize("profile", ["p0.5", "p0.1", "p0.01", "p1e-4", "beta_half", "beta_five",
                                     "near_det"])
def test_bits_within_target_of_cross_entropy(profile):
    rng = np.random.default_rng(11)
    n = 100_000
    if profile.startswith("p"):
        p = float(profile[1:])
    elif profile == "beta_half":
        p = rng.beta(0.5, 0.5, n)
    elif profile == "beta_five":
        p = rng.beta(5.0, 5.0, n)
    else:
        p = rng.choice(np.array([0.01, 0.99]), n)
    mask = rng.random(n) < p
    frame = MaskCodec().encode(mask, p=p)
    coded = frame.sections.get("model", 0) + frame.sections["mask"]
    assert coded <= 1.001 * bounds.mask_bits(mask, p) + 64, (coded, bounds.mask_bits(mask, p))


@pytest.mark.parametrize("density", [0.0, 1e-4, 0.01, 0.1, 0.5, 0.9, 1.0])
def test_adaptive_within_target_of_n_hb(density):
    mask = np.random.default_rng(3).random(100_000) < density
    frame = MaskCodec().encode(mask)
    coded = frame.sections["model"] + frame.sections["mask"]
    assert coded <= 1.001 * bounds.mask_bits(mask) + 64
    # and the payload alone is within the flush of log2 C(n, k)
    ones = int(mask.sum())
    assert frame.sections["mask"] <= bounds.topk_index_bits(mask.size, ones) + 16


def test_two_lanes_for_large_masks_or_payloads():
    assert choose_lanes(10**6, quantize_probability(1e-4)) == 1     # ~1.5e3 bits expected
    assert choose_lanes(10**6, quantize_probability(0.1)) == 2
    assert choose_lanes(1 << 20, quantize_probability(1e-6)) == 2
    assert choose_lanes(1000, np.full(1000, 0.5)) == 1
    p = np.random.default_rng(0).beta(5, 5, 10**5)
    assert choose_lanes(p.size, p) == 2 and LANE_SPLIT_MIN_BITS == 1 << 16


def test_two_lanes_at_low_entropy_stay_within_target():
    rng = np.random.default_rng(4)
    n = 1 << 20
    for p in (1e-4, 1e-5):
        mask = rng.random(n) < p
        for side_p in (p, np.full(n, p)):
            frame = MaskCodec().encode(mask, p=side_p)
            coded = frame.sections.get("model", 0) + frame.sections["mask"]
            assert coded <= 1.001 * bounds.mask_bits(mask, side_p) + 64


# -- misuse --------------------------------------------------------------------------------
def test_misuse_raises_config_error_naming_the_fix():
    rng = np.random.default_rng(0)
    mask = rng.random(100) < 0.3
    probs = rng.random(100)
    data = bytes(MaskCodec().encode(mask, p=probs))
    with pytest.raises(ConfigError, match="decode\\(data, p=probs\\)"):
        MaskCodec().decode(data)
    with pytest.raises(SideInfoMismatchError, match="100"):   # the frame's size decides
        MaskCodec().decode(data, p=probs[:99])
    with pytest.raises(ConfigError, match="100"):
        MaskCodec().encode(mask, p=probs[:99])
    for bad in (np.nan, -0.1, 1.5):
        with pytest.raises(ConfigError):
            MaskCodec().encode(mask, p=bad)
        bad_probs = probs.copy()
        bad_probs[57] = bad
        with pytest.raises(ConfigError, match="NaN or a value outside"):
            MaskCodec().encode(mask, p=bad_probs)
        with pytest.raises(ConfigError, match="NaN or a value outside"):
            MaskCodec().decode(data, p=bad_probs)
    with pytest.raises(ConfigError, match="only 0 and 1"):
        MaskCodec().encode(np.array([0, 1, 2], np.uint8))
    with pytest.raises(ConfigError, match="only 0 and 1"):
        MaskCodec().encode(np.array([0, 1, 2], np.uint8), p=0.5)
    with pytest.raises(ConfigError, match="bool or uint8"):
        MaskCodec().encode(np.zeros(3, np.float32))
    with pytest.raises(ConfigError):
        MaskCodec(lanes=3)
    for bad in ("0.2", b"0.2", ["0.2"] * 100):   # a string is not parsed as a number
        with pytest.raises(ConfigError, match="p must be a number"):
            MaskCodec().encode(mask, p=bad)
        with pytest.raises(ConfigError, match="p must be a number"):
            MaskCodec().decode(data, p=bad)


def test_side_information_the_frame_does_not_take_is_a_frame_error():
    # the frame picks the model: a caller passing FedPM's p gets a FrameError naming the
    # mismatch when a (hostile) client sent another kind of mask frame
    rng = np.random.default_rng(0)
    mask = rng.random(100) < 0.3
    probs = rng.random(100)
    adaptive = bytes(MaskCodec().encode(mask))
    with pytest.raises(SideInfoMismatchError, match="do not pass p"):
        MaskCodec().decode(adaptive, p=0.3)
    with pytest.raises(SideInfoMismatchError, match="adaptive"):
        sc.decode(adaptive, p=probs)
    with pytest.raises(SideInfoMismatchError, match="vector"):
        MaskCodec().decode(bytes(MaskCodec().encode(mask, p=0.3)), p=probs)


# -- bad input -----------------------------------------------------------------------------
def _body(dtype, shape, model_byte: int, model=b"", payload=b"") -> bytes:
    """A hand-made mask frame: a valid tensor header, then the given model byte and bytes."""
    w = FrameWriter(wire_id=MaskCodec.wire_id)
    w.tensor_header(np.dtype(dtype), shape)
    w.u8(model_byte, "header")
    w.raw(model + payload, "mask")
    return bytes(w.finish(numel=0, codec_id="mask"))


def test_crafted_frames_raise_frame_errors():
    crafted = {
        "float dtype": _body(np.float32, (10,), _model_byte(0, 1), b"\x00"),
        "bad crc": _body(bool, (10,), _model_byte(0, 1) ^ 0x10, b"\x00"),
        "model 3": _body(bool, (10,), 3 | (_crc4(b"\x03") << 4)),
        "reserved bit": _body(bool, (10,), 8 | (_crc4(b"\x08") << 4), b"\x00"),
        "adaptive two lanes": _body(bool, (10,), _model_byte(0, 2), b"\x00"),
        "ones > numel": _body(bool, (10,), _model_byte(0, 1), b"\x0b"),
        "q = 0": _body(bool, (10,), _model_byte(1, 1), b"\x00", b"\x00"),
        "q too big": _body(bool, (10,), _model_byte(1, 1), encode_varint(PROB_ONE)),
        "lane 0 longer than the rest": _body(bool, (10,), _model_byte(1, 2), encode_varint(5),
                                             b"\x12\x34"),
        "empty payload for coded bits": _body(bool, (10,), _model_byte(1, 1),
                                              encode_varint(1000)),
        "garbage payload": _body(bool, (10,), _model_byte(0, 1), b"\x03", bytes(range(200, 230))),
    }
    for name, data in crafted.items():
        with pytest.raises(FrameError):
            MaskCodec().decode(data)
            pytest.fail(name)


def test_huge_declared_numel_is_refused_before_allocating():
    data = _body(bool, (1 << 20, 1 << 12), _model_byte(0, 1), b"\x00")
    with pytest.raises(LimitExceededError):
        MaskCodec().decode(data)
    with pytest.raises(LimitExceededError):
        MaskCodec().decode(bytes(MaskCodec().encode(np.zeros((10, 100), bool))), max_numel=999)


@pytest.mark.parametrize("side", [{}, {"p": 0.2}, {"p": "vector"}], ids=["adaptive", "fixed", "per-entry"])
def test_every_truncation_and_random_bytes_raise_frame_errors(side):
    rng = np.random.default_rng(5)
    n = 3000
    p = rng.random(n) if side.get("p") == "vector" else side.get("p")
    kw = {} if p is None else {"p": p}
    mask = rng.random(n) < (p if p is not None else 0.2)
    for lanes in (1, 2):
        data = bytes(MaskCodec(lanes=lanes).encode(mask, **kw))
        for cut in range(len(data)):
            with pytest.raises(FrameError):
                MaskCodec().decode(data[:cut], **kw)
        with pytest.raises(CorruptFrameError):
            MaskCodec().decode(data + b"\x00", **kw)
        for _ in range(30):
            junk = data[:12] + bytes(rng.integers(0, 256, int(rng.integers(0, 400)), dtype=np.uint8))
            try:
                got = MaskCodec().decode(junk, **kw)
            except FrameError:
                continue
            assert got.shape == mask.shape and got.dtype == mask.dtype


def test_truncated_payload_is_a_truncation_error():
    mask = np.random.default_rng(2).random(5000) < 0.5
    data = bytes(MaskCodec().encode(mask, p=0.5))
    with pytest.raises(TruncatedFrameError):
        MaskCodec().decode(data[:-40])


# -- golden frames (written once by tests/golden/make_mask_golden.py) ----------------------
GOLDEN_FRAMES = sorted(GOLDEN.glob("mask_*.bin"))


def test_golden_mask_frames_exist():
    assert len(GOLDEN_FRAMES) >= 8


@pytest.mark.parametrize("path", GOLDEN_FRAMES, ids=lambda p: p.stem)
def test_golden_mask_frame_decodes(path):
    expected = np.load(path.with_suffix(".npy"))
    p_path = path.with_suffix(".p.npy")
    side = {"p": np.load(p_path)} if p_path.exists() else {}
    got = MaskCodec().decode(path.read_bytes(), **side)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


# -- the same subset in pure Python --------------------------------------------------------
@pytest.mark.skipif(NOJIT, reason="NUMBA_DISABLE_JIT=1 is set: this test is the one that starts the pure-Python rerun, so it does not nest one (unset it to run it)")
def test_subset_without_jit():
    """Kernels and the reference agree when the kernels run as plain Python too."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    # uint64 arithmetic wraps on purpose; as numpy scalars (no JIT) it warns about it
    proc = subprocess.run([sys.executable, "-m", "pytest", __file__, "-x", "-k", "small",
                           "-p", "no:cacheprovider", "--hypothesis-seed=0",
                           "-W", "ignore::RuntimeWarning"], env=env,
                          capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout


def test_p_may_be_a_torch_tensor():
    # side information arrives as the model's tensors: float32, bf16, requires_grad, 0-d
    torch = pytest.importorskip("torch", reason="torch is in the [fl] extra: pip install torch==2.13.0, then -e '.[fl]'")
    mask = torch.rand(64, generator=torch.Generator().manual_seed(0)) < 0.3
    for p in (torch.full((64,), 0.3), torch.full((64,), 0.3, dtype=torch.bfloat16),
              torch.full((64,), 0.3, requires_grad=True), torch.tensor(0.3)):
        frame = MaskCodec().encode(mask, p=p)
        assert np.array_equal(sc.decode(bytes(frame), p=p), mask.numpy())
    with pytest.raises(ConfigError, match="device"):
        MaskCodec().encode(mask, p=torch.full((64,), 0.3, device="meta"))
