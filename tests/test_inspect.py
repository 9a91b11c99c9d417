"""sparsecodec.inspect and ``python -m sparsecodec inspect``: figures read from the bytes alone.

Every report is checked against what the encoder counted (``frame.sections``,
``frame.meta["tensors"]``), against ``8 * len(data)`` and against :mod:`sparsecodec.bounds`;
the CLI runs as a user runs it, on committed golden files.
"""

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

import sparsecodec as sc
from sparsecodec.errors import ConfigError, FrameError
from sparsecodec.inspect import inspect_bundle, inspect_frame, inspect_message
from sparsecodec.models import PROB_ONE, quantize_probability
from sparsecodec.values import VALUE_BYTES

REPO = Path(__file__).resolve().parents[1]
GOLDEN = REPO / "tests" / "golden"


def _x(seed=0, n=3000):
    return (np.random.default_rng(seed).standard_t(3, n) * 0.01).astype(np.float32)


def _frames():
    x, rng = _x(), np.random.default_rng(1)
    mask = rng.random(5000) < 0.07
    for index in ("raw", "golomb", "eliasfano", "bitmap", "zstd", "gaps"):
        yield f"topk-{index}", sc.TopK(density=0.02, index=index).encode(x)
    for values in ("fp16", "bf16", "fp64"):
        yield f"topk-{values}", sc.TopK(k=40, values=values, checksum=True).encode(x)
    yield "topk-k0", sc.TopK(k=0).encode(x)
    yield "topk-all", sc.TopK(k=x.size).encode(x)
    yield "topk-nnz", sc.TopK(k="nnz").encode(np.where(np.abs(x) > 0.02, x, 0).astype(np.float32))
    yield "dense", sc.Dense().encode(x.reshape(60, 50))
    yield "dense-zstd", sc.Dense(compression="zstd", checksum=True).encode(x.astype(np.float64))
    yield "dense-bool", sc.Dense().encode(mask)
    yield "mask-adaptive", sc.MaskCodec().encode(mask)
    yield "mask-fixed", sc.MaskCodec(checksum=True).encode(mask, p=0.07)
    yield "mask-fixed-2lanes", sc.MaskCodec(lanes=2).encode(mask.astype(np.uint8), p=0.07)


@pytest.mark.parametrize("label,frame", list(_frames()), ids=lambda v: v if isinstance(v, str) else "")
def test_frame_sections_are_the_encoders_and_add_up(label, frame):
    data = bytes(frame)
    rep = inspect_frame(data)
    (t,) = rep.tensors
    assert rep.kind == "frame" and t.name is None and rep.overhead == {}
    assert dict(t.sections) == dict(frame.sections)
    assert rep.nbits == t.bits == sum(rep.sections.values()) == 8 * len(data)
    assert t.numel == frame.numel and t.codec == frame.codec_id
    assert rep.has_checksum == ("checksum" in frame.sections)
    assert t.verified


def test_topk_fields_and_bound():
    x = _x().reshape(50, 60)
    frame = sc.TopK(k=45, values="bf16", index="eliasfano").encode(x)
    t = inspect_frame(frame).tensors[0]
    assert (t.codec, t.dtype, t.shape, t.numel, t.k) == ("topk", "float32", (50, 60), 3000, 45)
    assert (t.index_coder, t.value_coder) == ("eliasfano", "bf16")
    assert t.sections["values"] == 8 * VALUE_BYTES["bf16"] * 45
    assert t.bound_bits == pytest.approx(sc.bounds.topk_index_bits(3000, 45) + 16 * 45)
    assert "iid" in t.bound and t.notes == ()          # an iid-like support does not beat it
    assert t.payload_bits > t.bound_bits
    assert t.bpp == pytest.approx(8 * len(bytes(frame)) / 3000)


def test_structured_support_beats_the_iid_bound_and_is_noted():
    x = np.zeros(100_000, np.float32)
    x[::100] = 1.0
    t = inspect_frame(sc.TopK(k=1000, index="zstd").encode(x)).tensors[0]
    assert t.sections["index"] < sc.bounds.topk_index_bits(100_000, 1000)
    assert len(t.notes) == 1 and "structured support" in t.notes[0]


def test_mask_bounds():
    mask = np.random.default_rng(2).random(4000) < 0.1
    ones = int(mask.sum())
    t = inspect_frame(sc.MaskCodec().encode(mask)).tensors[0]
    assert (t.model, t.k) == ("adaptive", ones)
    assert t.bound_bits == pytest.approx(sc.bounds.topk_index_bits(4000, ones))
    t = inspect_frame(sc.MaskCodec().encode(mask, p=0.1)).tensors[0]
    assert (t.model, t.k) == ("fixed", ones)
    q = quantize_probability(0.1) / PROB_ONE
    assert t.bound_bits == pytest.approx(sc.bounds.mask_bits(mask, q))


def test_per_entry_mask_needs_p_to_be_verified_and_bounded():
    rng = np.random.default_rng(3)
    p = rng.random(2000) * 0.3
    mask = rng.random(2000) < p
    data = bytes(sc.MaskCodec().encode(mask, p=p))
    t = inspect_frame(data).tensors[0]
    assert (t.model, t.verified, t.bound_bits, t.k) == ("per-entry", False, None, None)
    assert t.bits == 8 * len(data) and "side information" in t.notes[0]
    t = inspect_frame(data, p=p).tensors[0]
    assert t.verified and t.k == int(mask.sum())
    assert t.bound_bits == pytest.approx(sc.bounds.mask_bits(mask, p))
    with pytest.raises(FrameError):   # side information offered to a codec that takes none
        inspect_frame(bytes(sc.Dense().encode(mask)), p=p)


def _update():
    rng = np.random.default_rng(4)
    return {"conv.weight": rng.standard_normal((8, 3, 5, 5)).astype(np.float32),
            "conv.bias": rng.standard_normal(8).astype(np.float32),
            "mask": rng.random(700) < 0.2,
            "bn.count": np.array(7, np.uint8).reshape(()),
            "fc": rng.standard_normal((40, 30))}


def _codecs():
    return {"conv.weight": sc.TopK(density=0.05), "conv.bias": sc.TopK(k=2, index="raw"),
            "mask": sc.MaskCodec(), "bn.count": sc.Dense(), "fc": sc.Dense(compression="zstd")}


@pytest.mark.parametrize("kind", ["plain", "no-crc", "schema", "global"])
def test_bundle_matches_encoder_and_ledger(kind):
    update = _update()
    schema = sc.Schema.from_tensors(update) if kind == "schema" else None
    if kind == "global":
        update = {k: v for k, v in update.items() if k.startswith("conv")}
        frame = sc.encode_bundle(update, sc.TopK(density=0.05), scope="global")
    else:
        frame = sc.encode_bundle(update, _codecs(), schema=schema, checksum=kind != "no-crc")
    data = bytes(frame)
    rep = inspect_bundle(data, schema)
    assert rep.kind == ("schema bundle" if schema else "bundle")
    assert [t.name for t in rep.tensors] == list(update)
    for t in rep.tensors:
        assert dict(t.sections) == dict(frame.meta["tensors"][t.name]), t.name
        assert t.shape == update[t.name].shape and t.dtype == update[t.name].dtype.name
    assert rep.sections == dict(frame.sections)
    assert rep.nbits == 8 * len(data) == sum(sum(s.values()) for s in rep.tensor_sections().values())
    expected = {n: dict(v) for n, v in frame.meta["tensors"].items()}   # the encoder's own count
    overhead = {k: v - sum(t.get(k, 0) for t in expected.values()) for k, v in frame.sections.items()}
    expected["_bundle"] = {k: v for k, v in overhead.items() if v}
    assert rep.tensor_sections() == expected                 # a ledger row, from the bytes
    assert rep.numel == frame.numel
    if kind == "global":
        assert "scope='global'" in rep.notes[0]
    else:
        assert rep.tensor("bn.count").shape == () and rep.tensor("bn.count").numel == 1
        assert rep.tensor("mask").k == int(update["mask"].sum())


def test_bundle_errors_are_frame_errors_or_say_what_to_pass():
    update = _update()
    schema = sc.Schema.from_tensors(update)
    data = bytes(sc.encode_bundle(update, _codecs(), schema=schema))
    with pytest.raises(ConfigError, match="schema"):
        inspect_bundle(data)
    other = sc.Schema.from_tensors({**update, "extra": np.zeros(3, np.float32)})
    with pytest.raises(FrameError, match="fingerprint"):
        inspect_bundle(data, other)
    with pytest.raises(FrameError, match="inspect_frame"):
        inspect_bundle(bytes(sc.Dense().encode(np.zeros(3, np.float32))))
    with pytest.raises(FrameError, match="inspect_bundle"):
        inspect_frame(data)
    with pytest.raises(FrameError, match="takes no side"):
        inspect_bundle(bytes(sc.encode_bundle(update, _codecs())), side={"fc": {"p": 0.5}})


@sc.register_codec
@dataclass(frozen=True)
class _Negate(sc.Codec):
    """A third-party codec whose layout inspect does not know: reported as one 'body'."""

    codec_id: ClassVar[str] = "test-inspect-negate"
    wire_id: ClassVar[int] = 118       # not 101: docs/codec_authors.md uses that one

    def _write_body(self, x, w, **side):
        x = np.asarray(x, np.float32)
        w.tensor_header(x.dtype, x.shape)
        w.raw((-x).astype("<f4").tobytes(), "payload")

    @classmethod
    def _read_body(cls, r, out=None, **side):
        dtype, shape, numel = r.tensor_header()
        return -np.frombuffer(r.take(4 * numel, "payload"), "<f4").reshape(shape)


def test_unlisted_codec_is_decoded_and_reported_as_one_body():
    frame = _Negate().encode(np.arange(6, dtype=np.float32).reshape(2, 3))
    t = inspect_frame(bytes(frame)).tensors[0]
    assert (t.codec, t.shape, t.dtype, t.numel, t.verified) == ("test-inspect-negate", (2, 3), "float32", 6, True)
    assert t.sections == {"header": 40, "body": 8 * len(bytes(frame)) - 40}


def _targets():
    update = _update()
    schema = sc.Schema.from_tensors(update)
    yield bytes(sc.encode_bundle(update, _codecs())), None
    yield bytes(sc.encode_bundle(update, _codecs(), checksum=False)), None
    yield bytes(sc.encode_bundle(update, _codecs(), schema=schema, checksum=False)), schema
    for _, frame in list(_frames())[:: 3]:
        yield bytes(frame), None


def test_hostile_bytes_give_frame_errors_exactly_when_decode_does():
    """Seeded mutations: inspect accepts exactly what decode accepts, and raises only
    FrameError; every accepted message's sections add up to its bytes."""
    rng = np.random.default_rng(20261203)
    tried = accepted = 0
    for data, schema in _targets():
        for trial in range(120):
            buf = bytearray(data)
            op = trial % 4
            if op == 0:
                buf = buf[: rng.integers(0, len(buf))]
            elif op == 1:
                pos = rng.integers(0, len(buf))
                buf[pos] ^= 1 << int(rng.integers(0, 8))
            elif op == 2:
                pos = rng.integers(5, len(buf))
                buf[pos] = int(rng.integers(0, 256))
            else:
                pos = rng.integers(5, len(buf))
                buf[pos:pos] = rng.bytes(int(rng.integers(1, 4)))
            kw = {"schema": schema} if schema is not None else {}
            try:
                sc.decode(bytes(buf), max_numel=1 << 20, **kw)
                ok = True
            except FrameError:
                ok = False
            tried += 1
            try:
                rep = inspect_message(bytes(buf), max_numel=1 << 20, **kw)
            except FrameError:
                assert not ok, f"inspect rejected what decode accepts (trial {trial})"
                continue
            assert ok, f"inspect accepted what decode rejects (trial {trial})"
            accepted += 1
            assert sum(rep.sections.values()) == 8 * len(buf)
            quick = inspect_message(bytes(buf), max_numel=1 << 20, verify=False, **kw)
            assert quick.tensor_sections() == rep.tensor_sections()
    assert tried == 120 * len(list(_targets())) and accepted < tried


# -- the CLI, as a user runs it ---------------------------------------------------------------------
def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sparsecodec", "inspect", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_on_golden_schema_bundle_json():
    path = GOLDEN / "core" / "bundle_schema.bin"
    data = path.read_bytes()
    res = _cli(path, "--schema", GOLDEN / "core" / "bundle_schema.json", "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["kind"] == "schema bundle" and rep["nbits"] == 8 * len(data)
    assert sum(rep["sections"].values()) == 8 * len(data)
    total = sum(rep["overhead"].values())
    for t in rep["tensors"]:
        assert sum(t["sections"].values()) == t["bits"]
        total += t["bits"]
        bound = sc.bounds.topk_index_bits(t["numel"], t["k"]) + 32 * t["k"]
        assert t["bound_bits"] == pytest.approx(bound)
        assert t["bpp"] == pytest.approx(t["bits"] / t["numel"])
    assert total == 8 * len(data)
    assert [(t["name"], t["shape"], t["k"]) for t in rep["tensors"]] == [
        ("conv.weight", [8, 3, 3, 3], 5), ("conv.bias", [8], 5)]


def test_cli_table_on_golden_frame():
    path = GOLDEN / "core" / "topk_zstd_fp32.bin"
    data = path.read_bytes()
    res = _cli(path)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith(f"frame (wire id 0x01), {len(data):,} bytes = {8 * len(data):,} bits")
    row = next(line for line in lines if line.startswith("(frame)")).split()
    head = lines[1].split()
    cell = dict(zip(head, row))
    t = inspect_frame(data).tensors[0]
    assert (cell["codec"], cell["idx-coder"], cell["val-coder"]) == ("topk", "zstd", "fp32")
    assert int(cell["bits"].replace(",", "")) == 8 * len(data)
    assert cell["bound"] == f"{sc.bounds.topk_index_bits(t.numel, t.k) + 32 * t.k:,.1f}"
    assert sum(int(cell[s].replace(",", "")) for s in ("header", "index", "values")) == 8 * len(data)


def test_cli_errors(tmp_path):
    res = _cli(GOLDEN / "core" / "bundle_schema.bin")
    assert res.returncode == 2 and "--schema" in res.stderr
    res = _cli(REPO / "README.md")
    assert res.returncode == 1 and "not a valid sparsecodec message" in res.stderr
    bad = tmp_path / "schema.json"
    bad.write_text("{not json")
    res = _cli(GOLDEN / "core" / "bundle_schema.bin", "--schema", bad)
    assert res.returncode == 2 and "cannot read schema" in res.stderr


def test_hostile_per_entry_mask_without_p_only_frame_errors():
    """Without p the payload cannot be decoded; the structure is still read defensively."""
    rng = np.random.default_rng(5)
    p = rng.random(3000) * 0.2
    data = bytes(sc.MaskCodec(lanes=2).encode(rng.random(3000) < p, p=p))
    for trial in range(300):
        buf = bytearray(data)
        if trial % 2:
            buf = buf[: rng.integers(0, len(buf))]
        else:
            buf[rng.integers(0, len(buf))] ^= 1 << int(rng.integers(0, 8))
        try:
            rep = inspect_frame(bytes(buf))
        except FrameError:
            continue
        assert sum(rep.sections.values()) == 8 * len(buf)


def test_verify_false_reads_the_structure_only_and_raises_only_frame_errors():
    update = _update()
    data = bytes(sc.encode_bundle(update, _codecs(), checksum=False))
    full, quick = inspect_bundle(data), inspect_bundle(data, verify=False)
    assert quick.tensor_sections() == full.tensor_sections()
    assert not any(t.verified for t in quick.tensors) and all(t.verified for t in full.tensors)
    assert quick.tensor("conv.weight").bound_bits == full.tensor("conv.weight").bound_bits
    rng = np.random.default_rng(6)
    for trial in range(400):
        buf = bytearray(data)
        if trial % 2:
            buf = buf[: rng.integers(0, len(buf))]
        else:
            buf[rng.integers(0, len(buf))] = int(rng.integers(0, 256))
        try:
            rep = inspect_bundle(bytes(buf), verify=False)
        except FrameError:
            continue
        assert sum(rep.sections.values()) == 8 * len(buf)
