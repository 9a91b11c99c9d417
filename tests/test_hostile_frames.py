"""A short seeded fuzz of every decoder entry point (issue 16): hostile bytes may only raise
sparsecodec's documented exceptions, and may not make the decoder allocate beyond what the
caller's ``max_numel`` allows.

Inputs are valid frames and bundles of every built-in codec, mutated: truncated, bit-flipped
(with the CRC-32 recomputed half the time, so the checks behind it are reached), bytes
overwritten, inserted or deleted, two messages spliced, and crafted headers (shapes numpy
cannot hold, zstd content-size and window bombs). Each decode runs under
``np.errstate(all="raise")`` and ``tracemalloc`` (which sees Python and numpy allocations;
zstd's own window is bounded by the declared content size, see ``sparsecodec/dense.py``).
The long fuzz that counts crashes and hangs in child processes is a separate runner.
"""

from __future__ import annotations

import tracemalloc
import zlib

import numpy as np
import pytest

import sparsecodec as sc
from sparsecodec.frame import BUNDLE_WIRE_ID, FrameWriter, crc8

MAX_NUMEL = 1 << 16


def _budget(data: bytes) -> int:
    """Bytes a decode may allocate: twice the largest tensor the caller allows (8-byte
    items), plus what is proportional to the input (a top-k frame's int64 index and value
    per kept entry: each entry takes at least 2 input bytes), plus 64 KiB of slack."""
    return 2 * 8 * MAX_NUMEL + 8 * len(data) + (1 << 16)


SEED = 16
ROUNDS = 900          # mutated inputs per run; a few seconds in all


def _corpus(rng: np.random.Generator):
    """(label, bytes, decode) for valid messages of every codec and bundle kind."""
    x = rng.standard_normal((12, 9)).astype(np.float32)
    x64 = rng.standard_normal(40)
    mask = rng.random((8, 16)) < 0.2
    probs = np.clip(rng.random(mask.size), 0.01, 0.99)
    out = []

    def add(label, frame, decode):
        out.append((label, bytes(frame), decode))

    generic = lambda d: sc.decode(d, max_numel=MAX_NUMEL)          # noqa: E731
    for index in ("auto", "raw", "bitmap", "eliasfano", "golomb", "zstd", "gaps", "entropy"):
        try:
            codec = sc.TopK(k=17, index=index)
        except sc.ConfigError:     # an index coder this version does not have
            continue
        add(f"topk-{index}", codec.encode(x), generic)
    for values in ("fp16", "bf16", "fp64"):
        add(f"topk-{values}", sc.TopK(k=9, values=values, checksum=True).encode(x64), generic)
    for values in ("q8", "q8b", "sign", "signb"):   # no checksum: mutations reach the scale and the packed values
        add(f"topk-{values}", sc.TopK(k=13, values=values).encode(x), generic)
    add("topk-nonfinite", sc.TopK(k=3, values="bf16", allow_nonfinite=True).encode(
        np.array([np.nan, 1.0, -np.inf, 0.0], np.float32)), generic)
    for y in (x, x64, x.astype(np.float16), mask, (np.abs(x) * 9).astype(np.uint8)):
        add(f"dense-{y.dtype}", sc.Dense().encode(y), generic)
        add(f"dense-zstd-{y.dtype}", sc.Dense(compression="zstd", checksum=True).encode(y), generic)
    add("mask-adaptive", sc.MaskCodec().encode(mask), lambda d: sc.MaskCodec().decode(d, max_numel=MAX_NUMEL))
    add("mask-fixed", sc.MaskCodec().encode(mask, p=0.2), generic)
    add("mask-per-entry", sc.MaskCodec(lanes=2).encode(mask, p=probs),
        lambda d: sc.decode(d, max_numel=MAX_NUMEL, p=probs))        # FedPM passes p always
    update = {"conv.w": x, "fc.b": x64[:7].astype(np.float32), "mask": mask}
    codecs = {"conv.w": sc.TopK(k=5), "fc.b": sc.Dense(compression="zstd"), "mask": sc.MaskCodec()}
    side = {"mask": {"p": probs}}
    per_entry = {"conv.w": sc.TopK(k=5), "fc.b": sc.Dense(), "mask": sc.MaskCodec()}
    schema = sc.Schema.from_tensors(update)
    for checksum in (True, False):
        add(f"bundle-crc{checksum}", sc.encode_bundle(update, codecs, checksum=checksum),
            lambda d: sc.decode_bundle(d, max_numel=MAX_NUMEL))
        add(f"bundle-side-crc{checksum}",
            sc.encode_bundle(update, per_entry, checksum=checksum, side={"mask": {"p": probs}}),
            lambda d: sc.decode_bundle(d, max_numel=MAX_NUMEL, side=side))
        add(f"bundle-schema-crc{checksum}",
            sc.encode_bundle(update, codecs, checksum=checksum, schema=schema),
            lambda d: sc.decode(d, max_numel=MAX_NUMEL, schema=schema))
    # a compact message with one message-scoped q8b value block (issue 18); no CRC, so the
    # mutations reach the block's scale and values
    mspec = sc.MessageSpec(sc.Schema.from_tensors({"a": x, "b": x64}),
                           sc.TopK(k=4, values="q8b"), values_scope="message")
    add("packed-values-message", sc.encode_packed({"a": x, "b": x64.astype(np.float32).astype(np.float64)},
                                                  mspec, checksum=False),
        lambda d: sc.decode_packed(d, mspec, max_numel=MAX_NUMEL))
    add("bundle-global", sc.encode_bundle({"a": x, "b": x64}, sc.TopK(k=20), scope="global"),
        lambda d: sc.decode_bundle(d, max_numel=MAX_NUMEL))
    return out


def _recrc(data: bytearray) -> bytearray:
    """Recompute the CRC-32 trailer of a frame that has one (so mutations reach the body)."""
    if len(data) >= 9 and data[:2] == b"SC" and data[3] & 0x03 == 0x03:
        data[-4:] = (zlib.crc32(bytes(data[:-4])) & 0xFFFFFFFF).to_bytes(4, "little")
    return data


def _zstd_header(content_size: int | None, window: int = 0x58) -> bytes:
    if content_size is None:
        return b"\x28\xb5\x2f\xfd" + bytes([0x00, window])
    return b"\x28\xb5\x2f\xfd\xe0" + content_size.to_bytes(8, "little")


def _pick(rng: np.random.Generator, options: list):
    return options[int(rng.integers(len(options)))]   # rng.choice would turn 2**64 - 1 into a float


def _crafted(rng: np.random.Generator) -> bytes:
    """A frame with a hostile but well-formed header (valid CRC-8s): big, odd or zero shapes,
    zstd content-size / window / block bombs, for every codec, alone or in a bundle."""
    dims = [0, 1, 3, MAX_NUMEL, MAX_NUMEL + 1, 2**31, 2**32 - 1, 2**40, 2**62, 2**63, 2**64 - 1]
    ndim = int(rng.integers(0, 4))
    shape = tuple(_pick(rng, dims) for _ in range(ndim))
    dtype = np.dtype(_pick(rng, ["float32", "float64", "float16", "bool", "uint8"]))
    wire = _pick(rng, [1, 2, 3])
    w = FrameWriter(wire_id=wire, body_only=True)
    w.tensor_header(dtype, shape)
    kind = int(rng.integers(0, 4))
    if wire == 2 and kind < 3:                     # Dense + zstd with a hostile zstd header
        w.u8(1, "header")
        size = _pick(rng, [0, 4, 2**20, 2**31, 2**50, 2**64 - 3])
        blocks = _pick(rng, [b"\x01\x00\x00", b"\x03\x00\x10\x00", b"\x05\x10\x00" + b"\x00" * 4, b""])
        w.raw(_zstd_header(size if kind else None, int(rng.integers(0, 256))) + blocks, "values")
    else:
        w.raw(rng.bytes(int(rng.integers(0, 24))), "values")
    body = w.body()[0]
    if rng.random() < 0.5:
        return b"SC\x01\x00" + body
    name = b"w"
    return (b"SC\x01\x00" + bytes([BUNDLE_WIRE_ID]) + b"\x01" + bytes([len(name)]) + name
            + sc.frame.encode_varint(len(body)) + body)


def _mutate(rng: np.random.Generator, corpus) -> tuple[str, bytes, object]:
    label, data, decode = corpus[int(rng.integers(len(corpus)))]
    buf = bytearray(data)
    op = int(rng.integers(0, 7))
    if op == 0:
        buf = buf[: int(rng.integers(0, len(buf)))]
    elif op == 1:
        for _ in range(int(rng.integers(1, 4))):
            bit = int(rng.integers(0, 8 * len(buf)))
            buf[bit // 8] ^= 1 << (bit % 8)
    elif op == 2:
        for _ in range(int(rng.integers(1, 4))):
            buf[int(rng.integers(0, len(buf)))] = int(rng.integers(0, 256))
    elif op == 3:
        at = int(rng.integers(0, len(buf) + 1))
        buf[at:at] = rng.bytes(int(rng.integers(1, 9)))
    elif op == 4:
        at = int(rng.integers(0, len(buf)))
        del buf[at:at + int(rng.integers(1, 9))]
    elif op == 5:
        other = corpus[int(rng.integers(len(corpus)))][1]
        buf = buf[: int(rng.integers(0, len(buf) + 1))] + other[int(rng.integers(0, len(other))):]
    else:
        return "crafted", _crafted(rng), decode
    if rng.random() < 0.5:
        buf = _recrc(buf)
    return f"{label}/op{op}", bytes(buf), decode


def _documented(exc: BaseException) -> bool:
    if isinstance(exc, sc.FrameError):
        return True
    # the one legitimate ConfigError on hostile bytes: a well-formed frame that says it needs
    # side information the caller did not pass (a schema bundle, a per-entry mask)
    return isinstance(exc, sc.ConfigError) and ("schema=" in str(exc) or "side information" in str(exc))


def _decode_under_watch(decode, data: bytes) -> tuple[BaseException | None, int]:
    """(the exception or None, peak traced bytes) of ``decode(data)``.

    It runs once untraced first, so that numba's one-time compilation of a kernel (cached
    on disk after the first run of the suite) is not counted as the decoder's allocation.
    """
    try:
        with np.errstate(all="raise"):
            decode(data)
    except Exception:   # noqa: BLE001 - the traced run below classifies it
        pass
    tracemalloc.start()
    try:
        with np.errstate(all="raise"):
            try:
                decode(data)
            except Exception as exc:   # noqa: BLE001 - classified by the caller
                return exc, tracemalloc.get_traced_memory()[1]
        return None, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_corpus_decodes_cleanly():
    corpus = _corpus(np.random.default_rng(SEED))
    assert len(corpus) >= 25
    for label, data, decode in corpus:
        exc, peak = _decode_under_watch(decode, data)
        assert exc is None, f"{label}: valid message raised {exc!r}"
        assert peak <= _budget(data), f"{label}: valid message peaked at {peak} bytes"


def test_mutated_messages_raise_only_documented_errors_within_budget():
    rng = np.random.default_rng(SEED)
    corpus = _corpus(rng)
    raised = 0
    for i in range(ROUNDS):
        label, data, decode = _mutate(rng, corpus)
        exc, peak = _decode_under_watch(decode, data)
        assert exc is None or _documented(exc), (
            f"input {i} ({label}, {data[:40].hex()}...) raised {type(exc).__name__}: {exc}")
        assert peak <= _budget(data), f"input {i} ({label}) allocated {peak} bytes"
        raised += exc is not None
    assert raised > ROUNDS // 2      # the mutations do reach the checks


@pytest.mark.parametrize("entry", ["decode", "decode_bundle", "codec.decode", "frame_info"])
def test_every_entry_point_on_crafted_headers(entry):
    rng = np.random.default_rng(SEED + 1)
    fns = {"decode": lambda d: sc.decode(d, max_numel=MAX_NUMEL),
           "decode_bundle": lambda d: sc.decode_bundle(d, max_numel=MAX_NUMEL),
           "codec.decode": lambda d: [c.decode(d, max_numel=MAX_NUMEL) for c in
                                      (sc.Dense(), sc.TopK(k=1), sc.MaskCodec())],
           "frame_info": sc.frame_info}
    for i in range(150):
        data = _crafted(rng)
        exc, peak = _decode_under_watch(fns[entry], data)
        assert exc is None or _documented(exc), f"{entry} on {data.hex()}: {exc!r}"
        assert peak <= _budget(data), f"{entry} on {data.hex()} allocated {peak} bytes"


def test_the_budget_admits_big_valid_frames_and_nothing_bigger():
    # tiny frames that legitimately decode to max_numel elements (k = 0, an all-zero mask)
    for frame in (sc.TopK(k=0).encode(np.zeros(MAX_NUMEL)),
                  sc.MaskCodec().encode(np.zeros(MAX_NUMEL, bool)),
                  sc.Dense(compression="zstd").encode(np.zeros(MAX_NUMEL))):
        exc, peak = _decode_under_watch(lambda d: sc.decode(d, max_numel=MAX_NUMEL), bytes(frame))
        assert exc is None and MAX_NUMEL <= peak <= _budget(bytes(frame)), (frame, peak)  # >= 1 B/entry
        exc, _ = _decode_under_watch(lambda d: sc.decode(d, max_numel=MAX_NUMEL - 1), bytes(frame))
        assert isinstance(exc, sc.LimitExceededError)


def test_side_information_routed_to_the_wrong_codec_is_a_frame_error():
    # issue 16: FedPM passes p for every tensor; a frame naming another codec raised TypeError
    rng = np.random.default_rng(SEED)
    x = rng.standard_normal(30).astype(np.float32)
    probs = np.full(30, 0.5)
    for frame in (sc.Dense().encode(x), sc.TopK(k=3).encode(x)):
        with pytest.raises(sc.SideInfoMismatchError, match="p="):
            sc.decode(frame, p=probs)
        with pytest.raises(sc.SideInfoMismatchError, match="schema="):
            sc.decode(frame, side={"w": {"p": probs}}, schema=sc.Schema((("w", "float32", (30,)),)))
    bundle = sc.encode_bundle({"w": x}, sc.TopK(k=3))
    with pytest.raises(sc.SideInfoMismatchError, match="entry 'w'.*'topk'"):
        sc.decode_bundle(bundle, side={"w": {"p": probs}})
    with pytest.raises(sc.SideInfoMismatchError, match="entry 'w'"):
        sc.decode(bundle, side={"w": {"p": probs}})
    with pytest.raises(sc.SideInfoMismatchError, match="bundle.*p="):
        sc.decode(bundle, p=probs)
    # the codec that takes p still gets it, in a frame and in a bundle
    mask = rng.random(30) < 0.5
    got = sc.decode_bundle(sc.encode_bundle({"w": mask}, sc.MaskCodec(), side={"w": {"p": probs}}),
                           side={"w": {"p": probs}})
    assert np.array_equal(got["w"], mask)
    assert crc8(b"") == 0


def test_generic_decode_still_takes_out():
    x = np.arange(6, dtype=np.float32)
    for codec in (sc.Dense(), sc.TopK(k=2)):
        out = np.empty_like(x)
        assert sc.decode(codec.encode(x), out=out) is out
    with pytest.raises(sc.ConfigError, match="bundle"):
        sc.decode(sc.encode_bundle({"w": x}, sc.Dense()), out=np.empty_like(x))


def test_bundle_arguments_of_the_wrong_type_are_config_errors():
    data = sc.encode_bundle({"w": np.zeros(3, np.float32)}, sc.Dense())
    for kwargs in ({"side": [("w", {})]}, {"side": {"w": 0.5}}, {"schema": ["w"]}):
        with pytest.raises(sc.ConfigError, match="side=|schema="):
            sc.decode_bundle(data, **kwargs)


def test_a_flipped_bundle_wire_id_is_a_frame_error():
    """Found by tools/fuzz_long.py (1M run): 0x7F -> 0x7E asked for a schema with a ConfigError."""
    with pytest.raises(sc.FrameError, match="Schema"):
        sc.decode_bundle(bytes.fromhex("5343010c7e01017713cd020101010361000000803f0000803f0000803f"))
