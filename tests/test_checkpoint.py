"""fl.checkpoint: a Simulation's state without pickle, digest-checked, atomic, bounded."""

from __future__ import annotations

import json
import os
import pickle
import struct
import tracemalloc

import numpy as np
import pytest

import sparsecodec as sc
from fl.checkpoint import MAGIC, CheckpointError, load_checkpoint, save_checkpoint
from fl.config import resolve_config
from fl.simulation import Simulation

TINY = ["dataset=synthetic-logistic", "data.n_train=120", "data.n_test=30", "data.dim=6",
        "data.num_classes=3", "model=logistic-regression", "model_options.in_features=6",
        "model_options.num_classes=3", "model_options.init=torch_default", "rounds=4",
        "sim.clients=4", "sim.clients_per_round=2", "sim.eval_every=2", "sim.checkpoint_every=0",
        "algo.lr=0.2", "algo.momentum=0.5", "algo.batch_size=8", "algo.ec.density=0.3"]


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray):
        return (isinstance(b, np.ndarray) and a.dtype == b.dtype and a.shape == b.shape
                and a.tobytes() == b.tobytes())
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, sc.ErrorFeedback):
        return _same(a.state_dict(), b.state_dict())
    if hasattr(a, "__dataclass_fields__"):
        return type(a) is type(b) and all(_same(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__)
    if isinstance(a, float) and a != a:
        return isinstance(b, float) and b != b
    return type(a) is type(b) and a == b


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    config = resolve_config(algorithm="ec", sets=TINY)
    sim = Simulation(config)
    sim.run(stop_after=2)
    path = tmp_path_factory.mktemp("ckpt") / "checkpoint.ckpt"
    save_checkpoint(path, sim.state_dict())
    return config, sim, path


def test_a_simulation_state_round_trips_and_resumes_bit_identically(saved):
    config, sim, path = saved
    state = load_checkpoint(path)
    assert _same(sim.state_dict(), state) and state["rounds_done"] == 2
    assert sum(bool(s.feedback.state_dict()["residuals"]) for s in state["client_states"].values()) >= 2
    resumed = Simulation(config)
    resumed.load_state_dict(state)
    straight = Simulation(config)
    a, b = resumed.run(), straight.run()
    assert a.metrics == b.metrics and a.ledger.rows() == b.ledger.rows()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in b.params)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]   # nothing left over


def test_every_flipped_bit_of_the_header_and_sampled_payload_bits_are_caught(saved, tmp_path):
    _, _, path = saved
    data = path.read_bytes()
    head = len(MAGIC) + 6 + struct.unpack_from("<I", data, len(MAGIC) + 2)[0]
    rng = np.random.default_rng(0)
    bits = list(range(head * 8)) + sorted(rng.choice(np.arange(head * 8, len(data) * 8), 300, replace=False))
    bad = tmp_path / "bad.ckpt"
    for bit in bits:
        b = bytearray(data)
        b[bit // 8] ^= 1 << (bit % 8)
        bad.write_bytes(b)
        with pytest.raises(CheckpointError, match="bad.ckpt"):
            load_checkpoint(bad)


def test_truncated_pickled_and_foreign_files_are_errors_naming_the_file(saved, tmp_path):
    _, sim, path = saved
    data = path.read_bytes()
    bad = tmp_path / "x.ckpt"
    for cut in (0, 3, len(MAGIC), len(MAGIC) + 5, 40, len(data) // 2, len(data) - 1):
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="x.ckpt.*(truncated|not an fl checkpoint|header)"):
            load_checkpoint(bad)
    bad.write_bytes(data + b"\x00")
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_checkpoint(bad)

    class Boom:           # what a crafted pickle does: run code while loading
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))
    for obj in (sim.state_dict(), Boom()):
        bad.write_bytes(pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))
        with pytest.raises(CheckpointError, match="x.ckpt: not an fl checkpoint.*a pickle"):
            load_checkpoint(bad)
    assert not (tmp_path / "pwned").exists()
    for foreign in (b"PK\x03\x04" + bytes(60), b"\x93NUMPY" + bytes(60), b"FLST2" + bytes(60),
                    MAGIC.replace(b"\r\n", b"\n") + bytes(60)):
        bad.write_bytes(foreign)
        with pytest.raises(CheckpointError, match="not an fl checkpoint"):
            load_checkpoint(bad)


def _with_header(header: dict, payload: bytes, version: int = 1) -> bytes:
    raw = json.dumps(header).encode()
    return MAGIC + struct.pack("<HI", version, len(raw)) + raw + payload


def test_declared_sizes_over_the_limits_are_errors_without_allocating(saved, tmp_path):
    _, _, path = saved
    bad = tmp_path / "big.ckpt"
    h = {"format": "fl.checkpoint", "version": 1, "encoding": "FLST2", "sha256": "0" * 64}
    tracemalloc.start()
    with pytest.raises(CheckpointError, match="max_bytes=1000"):
        load_checkpoint(path, max_bytes=1000)                       # before reading the file
    for content, match in [(_with_header(dict(h, payload_bytes=1 << 40), b"x"), "1099511627776-byte"),
                           (MAGIC + struct.pack("<HI", 1, 0xFFFFFFFF) + b"{}", "header length"),
                           (_with_header(dict(h, payload_bytes=1), b"x", version=9), "version 9"),
                           (_with_header(dict(h, payload_bytes="1"), b"x"), "payload"),
                           (_with_header(dict(h, payload_bytes=1, format="x"), b"x"), "unsupported")]:
        bad.write_bytes(content)
        with pytest.raises(CheckpointError, match=match):
            load_checkpoint(bad)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 1 << 20
    with pytest.raises(CheckpointError, match="max_numel=10"):      # the payload's own bounds
        load_checkpoint(path, max_numel=10)
    with pytest.raises(CheckpointError, match="max_skeleton_bytes=100"):
        load_checkpoint(path, max_skeleton_bytes=100)


def test_save_is_atomic_and_refuses_what_it_cannot_store(tmp_path):
    path = tmp_path / "c.ckpt"
    save_checkpoint(path, {"a": 1})
    with pytest.raises(sc.ConfigError, match="without pickle"):
        save_checkpoint(path, {"a": object()})
    assert load_checkpoint(path) == {"a": 1}                        # the old file survives
    assert [p.name for p in tmp_path.iterdir()] == ["c.ckpt"]
    save_checkpoint(path, [1, 2])
    with pytest.raises(CheckpointError, match="holds a dict"):
        load_checkpoint(path)
