"""Committed frames must keep decoding to the committed arrays (never regenerated here).

To change the format on purpose: bump FORMAT_VERSION, keep a reader for the old version,
and add new golden frames with tests/golden/make_core_golden.py.
"""

from pathlib import Path

import numpy as np
import pytest

import sparsecodec as sc

CORE = Path(__file__).resolve().parent / "golden" / "core"
FRAMES = sorted(p for p in CORE.glob("*.bin") if not p.name.startswith(("bundle", "compact")))


def test_golden_frames_exist():
    assert len(FRAMES) >= 15, f"golden frames missing under {CORE}"


@pytest.mark.parametrize("path", FRAMES, ids=lambda p: p.stem)
def test_golden_frame_decodes(path):
    expected = np.load(path.with_suffix(".npy"))
    got = sc.decode(path.read_bytes())
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert got.tobytes() == expected.tobytes()


def test_golden_bundle_decodes():
    expected = np.load(CORE / "bundle_global.npz")
    got = sc.decode_bundle((CORE / "bundle_global.bin").read_bytes())
    assert sorted(got) == sorted(expected.files)
    for name in expected.files:
        assert got[name].tobytes() == expected[name].tobytes()


def test_golden_schema_bundle_decodes():
    import json

    entries = json.loads((CORE / "bundle_schema.json").read_text())
    schema = sc.Schema(tuple((n, d, tuple(shape)) for n, d, shape in entries))
    expected = np.load(CORE / "bundle_schema.npz")
    got = sc.decode_bundle((CORE / "bundle_schema.bin").read_bytes(), schema=schema)
    assert sorted(got) == sorted(expected.files)
    for name in expected.files:
        assert got[name].tobytes() == expected[name].tobytes()


def test_golden_compact_message_decodes_against_its_committed_spec():
    """The committed MessageSpec JSON still loads to the same spec (its fingerprint seeds the
    message's CRC) and the message still decodes to the committed arrays."""
    spec = sc.MessageSpec.from_json((CORE / "compact_message.spec.json").read_text())
    expected = np.load(CORE / "compact_message.npz")
    got = sc.decode_packed((CORE / "compact_message.bin").read_bytes(), spec)
    assert sorted(got) == sorted(expected.files)
    for name in expected.files:
        assert got[name].tobytes() == expected[name].tobytes()
