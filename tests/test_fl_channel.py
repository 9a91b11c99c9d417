"""fl.channel: messages are real bytes, decoded from those bytes, and the ledger is exact."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import sparsecodec as sc
from fl.channel import BUNDLE_OVERHEAD, SERVER, Channel, Ledger, LedgerRecord, Message
from sparsecodec.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def update(rng, shapes=((20, 5), (5,), (3, 4, 2))):
    return {f"t{i}": rng.standard_normal(s).astype(np.float32) for i, s in enumerate(shapes)}


def brute_force_total(ledger: Ledger, **filters) -> int:
    """Slow reference for Ledger.total_bits: sum the flat rows that match every filter."""
    keys = ("round", "client", "direction", "tensor", "section")
    return sum(row[-1] for row in ledger.rows()
               if all(v is None or row[keys.index(k)] == v for k, v in filters.items()))


def test_ledger_equals_the_bytes_that_travelled():
    sent: list[bytes] = []
    channel = Channel(tap=lambda msg, client: sent.append(msg.data))
    rng = np.random.default_rng(0)
    ef = sc.ErrorFeedback()
    downs = []
    for rnd in (1, 2):
        down = channel.link(round=rnd, client=SERVER, direction="down").send(update(rng), sc.Dense())
        downs.append(down)
        for client in (0, 3):
            channel.deliver(down, client)
            link = channel.link(round=rnd, client=client, direction="up")
            channel.deliver(link.send(update(rng), sc.TopK.flare(R=5.0), feedback=ef))
        channel.deliver(channel.link(round=rnd, client=4, direction="up").send(update(rng), sc.TopK(k=3), scope="global"))
    assert len(sent) == len(channel.ledger) == 10
    assert channel.ledger.total_bits() == sum(8 * len(b) for b in sent)
    for record in channel.ledger:   # per tensor + bundle overhead = the whole message
        assert sum(sum(s.values()) for s in record.tensor_sections.values()) == record.nbits
    # a broadcast is counted once per receiving client
    assert channel.ledger.total_bits(direction="down") == sum(2 * 8 * len(d.data) for d in downs)
    assert [r.client for r in channel.ledger if r.direction == "down"] == [0, 3, 0, 3]


def test_message_breakdown_matches_the_frame():
    rng = np.random.default_rng(1)
    tensors = update(rng)
    frame = sc.encode_bundle(tensors, sc.TopK(k=4))
    msg = Channel().link(round=1, client=0, direction="up").send(tensors, sc.TopK(k=4))
    assert msg.data == bytes(frame) and msg.nbits == frame.nbits
    assert dict(msg.sections) == dict(frame.sections)
    for name, secs in frame.meta["tensors"].items():
        assert dict(msg.tensor_sections[name]) == dict(secs)
    overhead = msg.tensor_sections[BUNDLE_OVERHEAD]
    assert overhead["checksum"] == 32 and overhead["header"] > 0
    assert msg.numel == sum(t.size for t in tensors.values())


def test_receiver_decodes_the_bytes_not_the_sender_arrays():
    rng = np.random.default_rng(2)
    tensors = update(rng)
    channel = Channel()
    msg = channel.link(round=1, client=0, direction="up").send(tensors, sc.Dense())
    got = channel.deliver(msg)
    assert all(np.array_equal(got[k], tensors[k]) for k in tensors)
    assert all(not np.shares_memory(got[k], tensors[k]) for k in tensors)
    tensors["t0"][0, 0] = 123.0                      # changing the sender's array after sending ...
    assert channel.decode(msg)["t0"][0, 0] != 123.0   # ... changes nothing: only bytes travel
    bad = bytearray(msg.data)
    bad[len(bad) // 2] ^= 0x10
    with pytest.raises(sc.FrameError):                # a flipped bit is caught (CRC), and counted
        channel.deliver(dataclasses.replace(msg, data=bytes(bad)))
    assert len(channel.ledger) == 2


def test_sparse_message_decodes_to_the_flare_topk():
    x = {"w": np.array([0.5, -3.0, 2.0, 0.1, -0.2, 4.0, 0.0, 1.0], np.float32)}
    channel = Channel()
    msg = channel.link(round=1, client=0, direction="up").send(x, sc.TopK.flare(R=25.0))  # round(2)+1
    assert channel.deliver(msg)["w"].tolist() == [0, -3.0, 2.0, 0, 0, 4.0, 0, 0]
    assert msg.tensor_sections["w"]["index"] > 0 and msg.tensor_sections["w"]["values"] == 3 * 32


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), density=st.sampled_from([1e-3, 0.05, 0.3, 1.0]),
       scope=st.sampled_from(["tensor", "global"]))
def test_error_feedback_through_the_channel_is_exact(seed, density, scope):
    """sent + e_new == delta + e_old, element for element, over several rounds."""
    rng = np.random.default_rng(seed)
    ef, channel = sc.ErrorFeedback(), Channel()
    codec = sc.TopK(density=density, k_rule="flare" if scope == "tensor" else "round")
    for rnd in range(3):
        delta = update(rng, shapes=((7, 3), (4,)))
        old = {k: (ef.residual(k).copy() if ef.residual(k) is not None else np.zeros_like(v))
               for k, v in delta.items()}
        sent = channel.deliver(channel.link(round=rnd, client=0, direction="up")
                               .send(delta, codec, scope=scope, feedback=ef))
        for k in delta:
            assert np.array_equal(sent[k] + ef.residual(k), delta[k] + old[k])


def test_ledger_queries_match_a_brute_force_sum():
    rng = np.random.default_rng(3)
    channel = Channel()
    for rnd in (1, 2, 3):
        for client in (0, 1, 2):
            msg = channel.link(round=rnd, client=client, direction="up").send(
                update(rng), sc.TopK(k=int(rng.integers(0, 5))))
            channel.deliver(msg)
        channel.deliver(channel.link(round=rnd, client=SERVER, direction="down").send(update(rng), sc.Dense()), 1)
    led = channel.ledger
    for filters in ({}, {"round": 2}, {"client": 1}, {"direction": "up"}, {"tensor": "t1"},
                    {"section": "index"}, {"round": 3, "direction": "down", "section": "values"},
                    {"client": 2, "tensor": BUNDLE_OVERHEAD}):
        assert led.total_bits(**filters) == brute_force_total(led, **filters), filters
    assert sum(led.by_section().values()) == led.total_bits()
    assert led.total_numel(direction="up") == 9 * (100 + 5 + 24)


def test_ledger_persists_and_rejects_inconsistent_records():
    channel = Channel()
    rng = np.random.default_rng(4)
    channel.deliver(channel.link(round=1, client=5, direction="up").send(update(rng), sc.TopK(k=2)))
    copy = Ledger()
    copy.load_state_dict(json.loads(json.dumps(channel.ledger.state_dict())))
    assert copy.rows() == channel.ledger.rows() and copy.to_jsonl() == channel.ledger.to_jsonl()
    with pytest.raises(ValueError, match="inconsistent"):
        copy.add(LedgerRecord(1, 0, "up", 16, 1, {"w": {"values": 8}}))
    with pytest.raises(ValueError, match="inconsistent"):
        copy.add(LedgerRecord(1, 0, "sideways", 8, 1, {"w": {"values": 8}}))


def test_misuse_is_a_config_error():
    channel = Channel()
    rng = np.random.default_rng(5)
    up = channel.link(round=1, client=2, direction="up").send(update(rng), sc.Dense())
    down = channel.link(round=1, client=SERVER, direction="down").send(update(rng), sc.Dense())
    with pytest.raises(ConfigError, match="receiving client"):
        channel.deliver(down)
    with pytest.raises(ConfigError, match="delivered as"):
        channel.deliver(up, 3)
    with pytest.raises(ConfigError, match="direction"):
        channel.link(round=1, client=0, direction="left")
    with pytest.raises(ConfigError, match="at least one tensor"):
        channel.link(round=1, client=0, direction="up").send({}, sc.Dense())
    with pytest.raises(ConfigError, match="Message"):
        channel.deliver(bytes(up.data))
    assert isinstance(up, Message) and len(channel.ledger) == 0


def test_channel_tests_pass_without_jit():
    """The sparsecodec kernels under the channel also run as plain Python (NUMBA_DISABLE_JIT=1)."""
    env = dict(os.environ, NUMBA_DISABLE_JIT="1")
    tests = ["test_ledger_equals_the_bytes_that_travelled", "test_sparse_message_decodes_to_the_flare_topk",
             "test_receiver_decodes_the_bytes_not_the_sender_arrays"]
    proc = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                           str(Path(__file__))] + ["-k", " or ".join(tests)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "3 passed" in proc.stdout
