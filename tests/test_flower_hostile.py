"""A hostile Flower node cannot stop the server (issue 16): crafted replies (wrong types,
missing keys, huge numbers, garbage bytes) drop that client with a reason; only ``strict``
re-raises what the checks did not foresee. The end-to-end run (FedPM and FLARE on Flower with
one node sending hostile bytes every round) is :func:`test_fedpm_and_flare_on_flower_survive_a_hostile_node`;
``python tests/test_flower_hostile.py OUT_DIR`` runs it and writes its outputs and a report.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

import sparsecodec as sc  # noqa: E402
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, Metadata, RecordDict  # noqa: E402

from fl.channel import SERVER  # noqa: E402
from fl.config import resolve_config  # noqa: E402
from fl.flower.client import ERROR, UP, up_fields  # noqa: E402
from fl.flower.engine import FlowerServer  # noqa: E402
from fl.flower.mod import decode_replies, decode_update, sparse_update_mod  # noqa: E402
from fl.simulation import Simulation, run_simulation  # noqa: E402

COMMON = ["dataset=mnist-embedded", "rounds=3", "sim.clients=3", "sim.clients_per_round=0",
          "partition.kind='contiguous'", "partition.shard_size=150", "sim.eval_every=3"]
FEDPM = COMMON + ["model=fedpm-mlp", "algo.epochs=1", "algo.batch_size=50"]
FLARE = COMMON + ["model=small-cnn", "algo.batch_size=50", "algo.lr=0.05", "algo.R=1.0"]
HOSTILE = 1          # the partition-id (= client id) of the hostile node


class FakeReply:
    """What ``FlowerServer._accept`` reads of a Flower reply, holding anything at all (a real
    ConfigRecord admits fewer types; the server must not rely on that)."""

    def __init__(self, records=None, error=None):
        self.content = SimpleNamespace(config_records=records if records is not None else {})
        self.error = error

    def has_error(self):
        return self.error is not None


@pytest.fixture(scope="module")
def fedpm():
    """A FlowerServer (no grid: only its reply checks run) and client 0's honest round-1 fields."""
    server = FlowerServer(resolve_config(algorithm="fedpm", setting="defaults", sets=FEDPM), grid=None)
    down = server.algorithm.broadcast(server.server, server.cfg,
                                      server.channel.link(round=1, client=SERVER, direction="down"))
    side = server.algorithm.uplink_side(server.server, server.cfg)
    result = server.algorithm.client_update(
        server.client_states[0], sc.decode_bundle(down.data), server.clients[0], server.cfg,
        server.channel.link(round=1, client=0, direction="up"))
    return server, side, up_fields(result)


def _with(fields, **changes):
    out = dict(fields)
    for k, v in changes.items():
        if v is KeyError:
            out.pop(k)
        else:
            out[k] = v
    return out


def _flip(data: bytes) -> bytes:
    b = bytearray(data)
    b[len(b) // 2] ^= 0x5A
    return bytes(b)


def _variants(up):
    """(name, reply) pairs, each malformed in one way a hostile node could choose."""
    nbits = 8 * len(up["data"])
    garbage = bytes(np.random.default_rng(0).integers(0, 256, len(up["data"]), dtype=np.uint8))
    one = json.dumps({"w": {"payload": nbits}})
    dense = bytes(sc.encode_bundle({k: np.zeros(3, np.float32) for k in json.loads(up["tensor_sections"])
                                    if k != "_bundle"}, sc.Dense()))
    dn = 8 * len(dense)
    cases = {
        "no fl.up record": {},
        "fl.up is a list": {UP: [1, 2, 3]},
        "missing data": {UP: _with(up, data=KeyError)},
        "data is a str": {UP: _with(up, data="abc")},
        "data is an int": {UP: _with(up, data=7)},
        "round is a str": {UP: _with(up, round="1")},
        "round is a bool": {UP: _with(up, round=True)},
        "round is huge": {UP: _with(up, round=2**70)},
        "client is negative": {UP: _with(up, client=-1)},
        "direction is down": {UP: _with(up, direction="down")},
        "numel is huge": {UP: _with(up, numel=10**30)},
        "numel is a float": {UP: _with(up, numel=1e3)},
        "sections not JSON": {UP: _with(up, sections="{not json")},
        "sections a JSON list": {UP: _with(up, sections="[1, 2]")},
        "sections hold a str": {UP: _with(up, sections=json.dumps({"payload": "x"}))},
        "sections hold a huge int": {UP: _with(up, sections=json.dumps({"payload": 10**40}))},
        "sections hold infinity": {UP: _with(up, sections='{"payload": 1e999}')},
        "sections deeply nested": {UP: _with(up, sections="[" * 100000 + "]" * 100000)},
        "sections too long": {UP: _with(up, sections=" " * (2 << 20) + "{}")},
        "tensor_sections hold an int": {UP: _with(up, tensor_sections=json.dumps({"w": 5}))},
        "tensor_sections a list": {UP: _with(up, tensor_sections="[]")},
        "sections do not sum to the bytes": {UP: _with(up, sections=json.dumps({"payload": nbits - 8}))},
        "metrics a list": {UP: _with(up, metrics="[1]")},
        "metrics hold a str": {UP: _with(up, metrics=json.dumps({"train_loss": "low"}))},
        "metrics hold an object": {UP: _with(up, metrics=json.dumps({"train_loss": {"a": 1}}))},
        "num_samples a lie": {UP: _with(up, num_samples=10**9)},
        "num_samples missing": {UP: _with(up, num_samples=KeyError)},
        "garbage bytes": {UP: _with(up, data=garbage, sections=one, tensor_sections=one)},
        "one flipped byte": {UP: _with(up, data=_flip(up["data"]))},
        "truncated bytes": {UP: _with(up, data=up["data"][:-5], sections=json.dumps({"payload": nbits - 40}),
                                      tensor_sections=json.dumps({"w": {"payload": nbits - 40}}))},
        "empty bytes": {UP: _with(up, data=b"", sections="{}", tensor_sections="{}")},
        # a valid Dense bundle with the right names: FedPM's mask side information does not fit it
        "valid bundle, wrong codec and shapes": {UP: _with(up, data=dense,
                                                           sections=json.dumps({"payload": dn}),
                                                           tensor_sections=json.dumps({"w": {"payload": dn}}))},
        "client error with a non-str reason": {ERROR: {"reason": [1, 2]}},
    }
    return [(name, FakeReply(records)) for name, records in cases.items()] + [
        ("Flower error", FakeReply(error=SimpleNamespace(code=0, reason="x" * 10**6))),
        ("content is not a RecordDict", SimpleNamespace(has_error=lambda: False, content=None))]


def test_every_crafted_reply_drops_the_client_with_a_reason(fedpm):
    server, side, up = fedpm
    update, reason = server._accept(0, 0, FakeReply({UP: up}), side)
    assert update is not None and reason is None                 # the honest reply is taken
    for name, reply in _variants(up):
        before = len(server.ledger)
        update, reason = server._accept(0, 0, reply, side)       # never raises
        assert update is None, name
        assert isinstance(reason, str) and 0 < len(reason) < 5000, name
        assert len(server.ledger) - before <= 1, name
    server.ledger.to_jsonl()          # what was counted stays a well-formed ledger


def test_a_real_flower_reply_of_wrong_types_is_dropped(fedpm):
    server, side, up = fedpm
    meta = Metadata(run_id=1, message_id="r", src_node_id=3, dst_node_id=1, reply_to_message_id="m",
                    group_id="1", created_at=0.0, ttl=3600.0, message_type="train")
    for bad in ({"data": [1, 2]}, {"round": 1.5}, {"sections": b"{}"}, {"metrics": ["a"]}):
        reply = Message(metadata=meta, content=RecordDict({UP: ConfigRecord(_with(up, **bad))}))
        update, reason = server._accept(0, 0, reply, side)
        assert update is None and reason.startswith("malformed reply"), bad


def test_unforeseen_exceptions_drop_the_client_unless_strict(fedpm, monkeypatch):
    server, side, up = fedpm
    for exc in (MemoryError(), TypeError("codec takes no p"), AttributeError("x"), RecursionError()):
        def boom(*a, exc=exc, **k):
            raise exc
        monkeypatch.setattr(server.algorithm, "check_update", boom)   # runs on the decoded update
        update, reason = server._accept(0, 0, FakeReply({UP: up}), side)
        assert update is None and type(exc).__name__ in reason
        server.strict = True
        try:
            with pytest.raises(type(exc)):
                server._accept(0, 0, FakeReply({UP: up}), side)
            # strict still drops what the reply checks foresee
            update, reason = server._accept(0, 0, FakeReply({UP: _with(up, round="1")}), side)
            assert update is None and "round" in reason
        finally:
            server.strict = False


def test_roll_call_replies_of_any_shape_never_raise():
    from fl.flower.engine import _partition_id

    assert _partition_id(FakeReply({"fl.node": {"partition-id": 2}})) == 2
    for reply in (FakeReply({"fl.node": {"partition-id": "2"}}), FakeReply({"fl.node": {"partition-id": True}}),
                  FakeReply({"fl.node": {}}), FakeReply({}), FakeReply({"fl.node": 5}),
                  FakeReply(error=SimpleNamespace(code=1, reason="x")), SimpleNamespace()):
        assert _partition_id(reply) is None


def test_a_run_in_which_every_client_failed_raises(monkeypatch):
    config = resolve_config(algorithm="fedavg", setting="defaults", sets=COMMON + ["rounds=2", "model=logistic-regression"])
    server = FlowerServer(config, grid=None)
    monkeypatch.setattr(server, "_run_clients", lambda t, sampled, down, side: (
        [], [{"client": c, "reason": "no reply from its Flower node"} for c in sampled]))
    with pytest.raises(RuntimeError, match="every client failed in every round .*no reply from its Flower node"):
        server.run()


# -- the Mod's server half (decode_update / decode_replies, used by the Grid and the Strategy) ------
def _mod_reply():
    w0 = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "n": np.array(5, np.int64)}
    meta = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=7, reply_to_message_id="",
                    group_id="1", created_at=0.0, ttl=3600.0, message_type="train")
    msg = Message(metadata=meta, content=RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in w0.items()}),
        "config": ConfigRecord({"server-round": 1})}))

    def train(msg, context):
        got = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        new = {"w": got["w"] + 1, "n": np.asarray(got["n"] + 3)}     # numpy makes 0-d + 3 a scalar
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()})}),
                       reply_to=msg)

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    return w0, sparse_update_mod(sc.TopK(k=12))(msg, context, train)


def test_the_mod_keeps_a_0d_int_tensor_0d():
    w0, reply = _mod_reply()
    out = decode_update(reply, w0)
    assert out["n"].numpy().shape == () and out["n"].numpy() == 8            # absolute, not a delta
    assert np.array_equal(out["w"].numpy(), w0["w"] + 1)


def test_crafted_mod_replies_are_dropped_never_raised():
    w0, honest = _mod_reply()
    rec = dict(honest.content.config_records["sparsecodec"])
    kinds = json.loads(rec["dense.kinds"])
    crafted = {"record not a str": {"record": 5}, "names a dict": {"names": '{"w": 1}'},
               "names not JSON": {"names": "[w"}, "data a str": {"data": "abc"},
               "kinds an object dtype": {"dense.kinds": json.dumps({"n": ["|O", []]})},
               "kinds a void dtype": {"dense.kinds": json.dumps({"n": ["|V8", []]})},
               "kinds a huge shape": {"dense.kinds": json.dumps({"n": [kinds["n"][0], [2**40, 2**40]]})},
               "kinds a negative shape": {"dense.kinds": json.dumps({"n": [kinds["n"][0], [-8]]})},
               "kinds a list": {"dense.kinds": "[]"},
               "sections hold an int": {"tensor_sections": json.dumps({"w": 5})},
               "garbage bytes": {"data": bytes(range(200)) * 3},
               "dense data flipped": {"dense.data": _flip(rec["dense.data"])}}
    replies = []
    for name, change in crafted.items():
        r = Message(metadata=honest.metadata, content=RecordDict(
            {"sparsecodec": ConfigRecord(_with(rec, **change))}))
        replies.append(r)
    ok, dropped = decode_replies(replies + [honest], lambda r: ArrayRecord({k: Array(v) for k, v in w0.items()}))
    assert len(ok) == 1 and len(dropped) == len(crafted)
    assert np.array_equal(ok[0].content["arrays"]["w"].numpy(), w0["w"] + 1)
    for r in replies[1:]:         # the public decoder: ValueError or FrameError, nothing else
        with pytest.raises((ValueError, sc.FrameError)):
            decode_update(r, w0)


def test_decode_replies_drops_any_exception_unless_strict(monkeypatch):
    import fl.flower.mod as mod

    w0, honest = _mod_reply()
    ref = ArrayRecord({k: Array(v) for k, v in w0.items()})

    def boom(*a, **k):
        raise MemoryError("the decoder ran out of memory")

    monkeypatch.setattr(mod, "decode_update", boom)
    ok, dropped = decode_replies([honest], lambda r: ref)
    assert ok == [] and "MemoryError" in dropped[0][1]
    with pytest.raises(MemoryError):
        decode_replies([honest], lambda r: ref, strict=True)


# -- end to end: FedPM and FLARE on Flower, one node hostile every round ----------------------------
def _hostile_up(down_round: int, cid: int, num_samples: int) -> dict:
    """Round 1: garbage bytes with consistent claims; round 2: malformed JSON fields;
    round 3 and on: wrong types and a huge number."""
    garbage = bytes(np.random.default_rng(down_round).integers(0, 256, 4000, dtype=np.uint8))
    sec = json.dumps({"payload": 8 * len(garbage)})
    base = {"data": garbage, "round": down_round, "client": cid, "direction": "up", "numel": 100,
            "sections": sec, "tensor_sections": json.dumps({"w": {"payload": 8 * len(garbage)}}),
            "num_samples": num_samples, "metrics": "{}"}
    if down_round == 2:
        base.update(tensor_sections=json.dumps({"w": 5}), metrics="[1]")
    elif down_round >= 3:
        base.update(data="not bytes", round=2**62, numel=-1)
    return base


def _hostile_client_app(configs):
    from flwr.clientapp import ClientApp

    from fl.flower.client import _configs, _reply, client_query, client_train

    digests = _configs(configs)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        if int(context.node_config["partition-id"]) != HOSTILE:
            return client_train(msg, context, digests)
        down = msg.content.config_records["fl.down"]
        return _reply(msg, {UP: _hostile_up(int(down["round"]), HOSTILE, 150)})

    @app.query()
    def query(msg, context):
        return client_query(msg, context)

    return app


class _DropsHostile(Simulation):
    """The in-process engine with client ``HOSTILE`` dropped every round (the reference)."""

    def _client_round(self, t, cid, down, side=None):
        if cid == HOSTILE:
            return None, "hostile"
        return super()._client_round(t, cid, down, side)


def hostile_runs(out_dirs=None):
    """Both configs on one Flower federation (3 SuperNodes, node ``HOSTILE`` hostile), and the
    in-process reference runs: ``[(config, flower result, reference result)]``."""
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fl.flower import make_server_app

    configs = [resolve_config(algorithm="fedpm", setting="defaults", sets=FEDPM),
               resolve_config(algorithm="flare", setting="defaults", sets=FLARE)]
    got = []
    flwr_run_simulation(
        server_app=make_server_app(configs, out_dir=out_dirs, on_result=lambda r, s: got.append(r)),
        client_app=_hostile_client_app(configs), num_supernodes=3,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert len(got) == 2, "the ServerApp did not finish both runs"
    return [(c, g, _DropsHostile(c).run()) for c, g in zip(configs, got)]


def _compare(config, flower, ref) -> dict:
    """What must be equal: the model bit for bit, each round's accepted updates, loss and
    accuracy, and the ledger of every other client; the hostile node dropped in every round."""
    for k in ref.params:
        assert np.array_equal(flower.params[k], ref.params[k]), f"{config.algorithm}: tensor {k} differs"
    keys = ("round", "clients", "updates", "train_loss", "accuracy", "test_loss")
    assert [[m[k] for k in keys] for m in flower.metrics] == [[m[k] for k in keys] for m in ref.metrics]
    for m in flower.metrics:
        assert [d["client"] for d in m["dropped"]] == [HOSTILE], m["dropped"]
    core = ("round", "client", "direction", "nbits", "numel", "tensors")
    others = [{k: r.to_dict()[k] for k in core} for r in flower.ledger if r.client != HOSTILE]
    assert others == [{k: r.to_dict()[k] for k in core} for r in ref.ledger if r.client != HOSTILE]
    return {"algorithm": config.algorithm, "rounds": len(flower.metrics),
            "updates_per_round": [m["updates"] for m in flower.metrics],
            "hostile_dropped": [[d["reason"][:160] for d in m["dropped"]] for m in flower.metrics],
            "accuracy": flower.metrics[-1]["accuracy"],
            "uplink_bits_other_clients": sum(r["nbits"] for r in others if r["direction"] == "up")}


@pytest.mark.slow
def test_fedpm_and_flare_on_flower_survive_a_hostile_node():
    for config, flower, ref in hostile_runs():
        _compare(config, flower, ref)


if __name__ == "__main__":        # python tests/test_flower_hostile.py benchmarks/results/flower_hostile
    import shutil
    import tempfile
    from pathlib import Path

    import flwr as _flwr

    out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/flower_hostile")
    with tempfile.TemporaryDirectory() as tmp:          # model.sc / ledger.jsonl stay out of git
        runs = hostile_runs([Path(tmp) / "fedpm", Path(tmp) / "flare"])
        rows = [_compare(*r) for r in runs]             # raises if anything differs
        for c, _, _ in runs:
            (out / c.algorithm).mkdir(parents=True, exist_ok=True)
            for name in ("metrics.jsonl", "summary.json"):
                shutil.copy(Path(tmp) / c.algorithm / name, out / c.algorithm / name)
    (out / "result.json").write_text(json.dumps({"flwr": _flwr.__version__, "hostile_client": HOSTILE,
                                                 "runs": rows}, indent=1) + "\n")
    lines = ["# FedPM and FLARE on Flower with one hostile node (issue 16)", "",
             "Command: `python tests/test_flower_hostile.py benchmarks/results/flower_hostile`",
             f"(flwr {_flwr.__version__}, Flower's simulation engine, 3 SuperNodes, 3 rounds).", "",
             f"Node {HOSTILE} answers every train message with a hostile `fl.up` record: round 1 "
             "garbage bytes with self-consistent bit claims, round 2 malformed JSON fields, round 3 "
             "wrong types and out-of-range numbers. In every round the server dropped that client "
             "with the reason below and went on; the final model is bit-identical to the in-process "
             "run in which that client is dropped every round, and so are each round's accepted "
             "updates, train loss, accuracy and the other clients' ledger rows: round, client, "
             "direction, bits, numel, per-tensor sections (checked by "
             "`_compare`, which raises otherwise).", "",
             "| algorithm | rounds | updates per round | accuracy | reasons the hostile client was dropped |",
             "|---|---|---|---|---|"]
    for r in rows:
        reasons = "<br>".join(f"r{i + 1}: {x[0]}" for i, x in enumerate(r["hostile_dropped"]))
        lines.append(f"| {r['algorithm']} | {r['rounds']} | {r['updates_per_round']} | "
                     f"{r['accuracy']:.4f} | {reasons.replace('|', '/')} |")
    (out / "README.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
