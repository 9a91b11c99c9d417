"""Inspecting what only the two ends can read: compact messages (with their MessageSpec) and
model patches (with their Schema), through ``inspect_message`` and the command line."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import sparsecodec as sc
from sparsecodec.errors import ChecksumError, ConfigError, FrameError
from sparsecodec.packed import message_bound_bits
from sparsecodec.patch import changed_positions, encode_patch

REPO = Path(__file__).resolve().parents[1]


def _model(rng):
    return {"conv.w": rng.standard_normal((8, 3, 3, 3)).astype(np.float32),
            "conv.b": rng.standard_normal(8).astype(np.float32),
            "fc.w": rng.standard_normal((10, 300)).astype(np.float32),
            "bn": rng.standard_normal(10).astype(np.float64)}


def _spec(update, **kw):
    codecs = {n: sc.TopK.flare(R=2.0, values="q8b") for n in ("conv.w", "conv.b", "fc.w")}
    codecs["bn"] = sc.Dense()
    return sc.MessageSpec.from_tensors(update, codecs, **kw)


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "sparsecodec", "inspect", *map(str, args)],
                          capture_output=True, text=True, cwd=REPO)


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_compact_message_report_is_the_decoders_count(scope):
    update = _model(np.random.default_rng(1))
    spec = _spec(update, scope=scope)
    data = bytes(sc.encode_packed(update, spec))
    rep = sc.inspect_message(data, spec=spec)
    sections, info = {}, {}
    sc.decode_packed(data, spec, sections=sections, info=info)
    assert rep.kind == "compact message" and rep.nbits == 8 * len(data) and rep.has_checksum
    # (a tensor the global top-k gave no entry has no bits: an empty row, absent there)
    assert {n: v for n, v in rep.tensor_sections().items() if v} == sections
    assert sum(rep.sections.values()) == 8 * len(data)
    assert [t.name for t in rep.tensors] == ["conv.w", "conv.b", "fc.w", "bn"]
    assert {t.name: t.k for t in rep.tensors if t.k is not None} == info["k"]
    assert rep.tensor("bn").codec == "dense" and rep.tensor("fc.w").value_coder == "q8b"
    if scope == "tensor":    # the per-tensor bounds add up to the message's
        assert rep.bound_bits == pytest.approx(info["bound_bits"])
    else:
        assert rep.bound_bits is None and "global top-k" in rep.notes[0]
    # without the spec: what to pass, not a CRC error; with another spec: the seeded CRC says so
    with pytest.raises(ConfigError, match="MessageSpec both ends hold"):
        sc.inspect_message(data)
    other = _spec(update, scope="global" if scope == "tensor" else "tensor")
    with pytest.raises(ChecksumError):
        sc.inspect_message(data, spec=other)
    for cut in (0, 3, 5, len(data) // 2, len(data) - 1):    # hostile: truncated
        with pytest.raises(FrameError):
            sc.inspect_message(data[:cut], spec=spec)


def test_message_spec_json_round_trip_and_errors():
    update = _model(np.random.default_rng(2))
    for spec in (_spec(update), _spec(update, scope="global"),
                 sc.MessageSpec.from_tensors(update, sc.TopK(density=0.1, values="q8b"),
                                             values_scope="message")):
        back = sc.MessageSpec.from_json(spec.to_json())
        assert back == spec and back.fingerprint == spec.fingerprint
    for text, match in (("{not json", "cannot read a MessageSpec"),
                        (json.dumps({"schema": []}), "format"),
                        (json.dumps({"format": "sparsecodec.MessageSpec/1", "schema": [["w", "float32", [2]]],
                                     "codec": {"id": "nope"}}), "unknown codec")):
        with pytest.raises(ConfigError, match=match):
            sc.MessageSpec.from_json(text)


def test_patch_report_with_its_schema():
    rng = np.random.default_rng(3)
    old = _model(rng)
    new = {n: a.copy() for n, a in old.items()}
    new["fc.w"][0, :7] += 1.0
    new["bn"][3] = 0.5
    schema = sc.Schema.from_tensors(old)
    supports = {n: changed_positions(old[n], new[n]) for n in old}
    frame = encode_patch(new, supports, schema, base=4, version=5)
    rep = sc.inspect_message(bytes(frame), schema=schema)
    assert rep.kind == "model patch" and rep.nbits == frame.nbits
    assert rep.tensor_sections() == frame.meta["tensors"]
    assert {t.name: t.k for t in rep.tensors} == {"conv.w": 0, "conv.b": 0, "fc.w": 7, "bn": 1}
    assert rep.bound_bits == pytest.approx(frame.meta["bound_bits"])
    assert "base version 4 -> version 5" in rep.notes[0]
    with pytest.raises(ConfigError, match="Schema both ends hold"):
        sc.inspect_message(bytes(frame))


def test_cli_reads_compact_messages_with_spec_and_patches_with_schema(tmp_path):
    update = _model(np.random.default_rng(4))
    spec = _spec(update)
    msg = tmp_path / "uplink.sc"
    msg.write_bytes(bytes(sc.encode_packed(update, spec)))
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(spec.to_json())
    res = _cli(msg, "--spec", spec_file, "--json")
    assert res.returncode == 0, res.stderr
    rep = json.loads(res.stdout)
    assert rep["kind"] == "compact message" and rep["nbits"] == 8 * msg.stat().st_size
    res = _cli(msg, "--spec", spec_file)
    assert res.returncode == 0 and res.stdout.startswith("compact message (wire id 0x7D)")
    res = _cli(msg)                                  # without the spec: a usage error, with the fix
    assert res.returncode == 2 and "--spec SPEC.json" in res.stderr
    spec_file.write_text("[1, 2]")
    res = _cli(msg, "--spec", spec_file)
    assert res.returncode == 2 and "MessageSpec" in res.stderr
    spec_file.write_text(_spec(update, scope="global").to_json())
    res = _cli(msg, "--spec", spec_file)             # another spec: the seeded CRC fails
    assert res.returncode == 1 and "not a valid sparsecodec message" in res.stderr

    schema = sc.Schema.from_tensors(update)
    patch = tmp_path / "down.sc"
    patch.write_bytes(bytes(encode_patch(update, {"bn": np.array([2])}, schema, base=0, version=1)))
    schema_file = tmp_path / "schema.json"
    schema_file.write_text(json.dumps([list(e) for e in schema.entries]))
    res = _cli(patch, "--schema", schema_file, "--json")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["kind"] == "model patch"


def test_readme_shows_what_the_command_prints_on_the_golden_compact_message():
    golden = REPO / "tests" / "golden" / "core"
    res = _cli(golden / "compact_message.bin", "--spec", golden / "compact_message.spec.json")
    assert res.returncode == 0, res.stderr
    readme = (REPO / "README.md").read_text()
    assert res.stdout.strip() in readme, "README's compact-message inspect output is stale"


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_compact_messages_and_patches_give_frame_errors_or_a_consistent_report(data):
    """Hostile bytes: whatever is flipped, cut or appended, inspecting raises a FrameError or
    reports exactly what decoding reads (never another exception, never a wrong total)."""
    update = _model(np.random.default_rng(5))
    spec = _spec(update)
    good = bytearray(bytes(sc.encode_packed(update, spec, checksum=data.draw(st.booleans()))))
    schema = spec.schema
    patch = bytearray(bytes(encode_patch(update, {"fc.w": np.arange(0, 3000, 7)}, schema, base=1,
                                         version=2, checksum=data.draw(st.booleans()))))
    for msg, kw in ((good, {"spec": spec}), (patch, {"schema": schema})):
        buf = bytearray(msg)
        for _ in range(data.draw(st.integers(1, 4))):
            op = data.draw(st.sampled_from(["flip", "cut", "append", "byte"]))
            if op == "flip" and buf:
                i = data.draw(st.integers(0, len(buf) - 1))
                buf[i] ^= 1 << data.draw(st.integers(0, 7))
            elif op == "cut" and buf:
                del buf[data.draw(st.integers(0, len(buf) - 1)):]
            elif op == "append":
                buf += bytes(data.draw(st.lists(st.integers(0, 255), max_size=5)))
            elif buf:
                buf[data.draw(st.integers(0, len(buf) - 1))] = data.draw(st.integers(0, 255))
        try:
            rep = sc.inspect_message(bytes(buf), **kw)
        except FrameError:
            continue
        except ConfigError as exc:      # only when the wire id byte itself was changed
            assert bytes(buf[:2]) == b"SC" and buf[4] != msg[4], exc
            continue
        assert rep.nbits == 8 * len(buf) and sum(rep.sections.values()) == rep.nbits
