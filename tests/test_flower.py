"""fl on Flower (fl.flower): same model and ledger as the in-process engine, a real deployment.

Needs the ``flower`` extra (``pip install -e '.[flower]'``); without it every test here skips.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")

import sparsecodec as sc  # noqa: E402
from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, Metadata,  # noqa: E402
                      RecordDict)

from fl.config import resolve_config  # noqa: E402
from fl.flower import (DecodingGrid, decode_state, encode_state, make_client_app,  # noqa: E402
                       make_server_app, sparse_update_mod, write_flower_app)
from fl.flower.deploy import LocalFederation, free_port  # noqa: E402
from fl.simulation import METRICS, MODEL, SUMMARY, run_simulation  # noqa: E402

# the embedded MNIST subset, 4 contiguous 150-image shards, 3 of 4 clients per round: clients
# come back with their residuals / Adam state, and each round samples a different subset
COMMON = ["dataset=mnist-embedded", "rounds=3", "sim.clients=4", "sim.clients_per_round=3",
          "partition.kind='contiguous'", "partition.shard_size=150", "sim.eval_every=3"]
FLARE = COMMON + ["model=small-cnn", "algo.batch_size=50", "algo.lr=0.05", "algo.R=1.0"]
FEDPM = COMMON + ["model=fedpm-mlp", "algo.epochs=1", "algo.batch_size=50"]
EC = COMMON + ["model=small-cnn", "algo.batch_size=50", "algo.lr=0.05", "algo.density=0.01"]
SPARSYFED = COMMON + ["model=small-cnn", "algo.batch_size=50", "algo.lr=0.05"]
DENSE_WIRE = ["sim.wire='bundle'", "sim.downlink='dense'"]


def _same_run(a, b) -> None:
    assert list(a.params) == list(b.params)
    for k in a.params:
        assert a.params[k].dtype == b.params[k].dtype
        assert np.array_equal(a.params[k], b.params[k]), f"tensor {k} differs"
    assert a.ledger.total_bits(direction="up") == b.ledger.total_bits(direction="up")
    assert a.ledger.total_bits(direction="down") == b.ledger.total_bits(direction="down")
    assert a.ledger.to_jsonl() == b.ledger.to_jsonl()        # every message, section and tensor
    keys = ("round", "clients", "updates", "dropped", "train_loss", "uplink_bits", "accuracy")
    assert [[m[k] for k in keys] for m in a.metrics] == [[m[k] for k in keys] for m in b.metrics]


def test_algorithms_on_flower_equal_the_in_process_engine_and_the_dense_downlink(tmp_path):
    from flwr.simulation import run_simulation as flwr_run_simulation

    runs = [("flare", FLARE), ("fedpm", FEDPM), ("ec", EC), ("sparsyfed", SPARSYFED)]
    configs = [resolve_config(algorithm=a, setting="defaults", sets=s) for a, s in runs]
    expected = [run_simulation(c) for c in configs]
    # the patch downlink is lossless: the same models and metrics as the dense downlink
    dense = [run_simulation(resolve_config(algorithm=a, setting="defaults", sets=s + DENSE_WIRE))
             for a, s in runs]
    got = []
    outs = [tmp_path / a for a, _ in runs]
    # one Flower federation of 4 SuperNodes runs every config, one after the other
    flwr_run_simulation(
        server_app=make_server_app(configs, out_dir=outs, on_result=lambda r, s: got.append(r)),
        client_app=make_client_app(configs), num_supernodes=4,
        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert len(got) == len(runs)
    for config, a, b, out, d in zip(configs, expected, got, outs, dense):
        _same_run(a, b)
        assert all(d.params[k].tobytes() == b.params[k].tobytes() for k in d.params)
        assert [m["accuracy"] for m in d.metrics] == [m["accuracy"] for m in b.metrics]
        assert b.metrics[-1]["updates"] == 3 and not any(m["dropped"] for m in b.metrics)
        # issue 15's wire on Flower too: compact uplinks, patches to the nodes' replicas
        assert {"compact", "patch"} <= {r.kind for r in b.ledger}
        summary = json.loads((out / SUMMARY).read_text())
        assert summary["engine"] == "flower" and summary["algorithm"] == config.algorithm
        assert summary["uplink_bits"] == a.ledger.total_bits(direction="up")
        assert not (out / "checkpoint.ckpt").exists()      # nothing to resume under Flower


def test_deployment_superlink_and_two_supernodes_complete_two_rounds(tmp_path):
    config = resolve_config(algorithm="flare", setting="defaults", sets=FLARE + [
        "rounds=2", "sim.clients=2", "sim.clients_per_round=0", "sim.eval_every=1"])
    out = tmp_path / "run"
    app = write_flower_app(tmp_path / "app", config, out_dir=out, wait_s=60, round_timeout=120)
    try:
        free_port()
    except OSError as exc:   # the only reason to skip: no loopback networking at all
        pytest.skip(f"Flower's deployment engine cannot start here (no loopback TCP): {exc}")
    fed = LocalFederation(2, workdir=tmp_path / "fed")
    try:
        with fed:
            done = fed.run(app, done=out / MODEL, timeout=150)   # the last file written
    except (RuntimeError, TimeoutError) as exc:
        pytest.fail(f"{exc}\n{fed.logs()}")
    assert (out / SUMMARY).exists(), f"the run did not finish:\n{done.stdout}\n{fed.logs()}"
    lines = [json.loads(x) for x in (out / METRICS).read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2] and all(m["updates"] == 2 for m in lines)
    summary = json.loads((out / SUMMARY).read_text())
    assert summary["engine"] == "flower" and summary["rounds"] == 2
    # the real network gives the in-process engine's bits and model, too
    ref = run_simulation(config)
    assert summary["uplink_bits"] == ref.ledger.total_bits(direction="up")
    assert summary["downlink_bits"] == ref.ledger.total_bits(direction="down")
    assert (out / MODEL).read_bytes() == bytes(sc.encode_bundle(ref.params, sc.Dense()))


# -- the pieces, without an engine ---------------------------------------------------------------
def test_client_state_round_trips_without_pickle_bit_for_bit():
    import torch

    from fl.algorithms.fedpm import FedPMClientState

    w = torch.nn.Parameter(torch.randn(5, 3))
    opt = torch.optim.Adam([w], lr=0.1)
    w.grad = torch.randn(5, 3)
    opt.step()
    state = FedPMClientState(opt.state_dict())
    back = decode_state(encode_state(state))
    assert type(back) is FedPMClientState
    sd, bd = state.optimizer, back.optimizer
    assert bd["param_groups"] == sd["param_groups"] and list(bd["state"]) == [0]
    for k, v in sd["state"][0].items():
        assert torch.equal(bd["state"][0][k], v) and bd["state"][0][k].dtype == v.dtype
    opt2 = torch.optim.Adam([torch.nn.Parameter(torch.zeros(5, 3))], lr=0.1)
    opt2.load_state_dict(back.optimizer)            # usable as is
    with pytest.raises(sc.FrameError, match="not a registered state class"):     # exact names only
        decode_state(encode_state(state).replace(b"fl.algorithms.fedpm", b"os.algorithms.fedpm"))
    with pytest.raises(sc.ConfigError, match="without pickle"):
        encode_state(object())


def _train_message(arrays: dict, node: int = 7, rnd: int = 1) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}-{rnd}", src_node_id=1, dst_node_id=node,
                    reply_to_message_id="", group_id=str(rnd), created_at=0.0, ttl=3600.0,
                    message_type="train")
    return Message(metadata=meta, content=RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in arrays.items()}),
        "config": ConfigRecord({"server-round": rnd})}))


def test_mod_sends_topk_with_error_feedback_and_the_grid_restores_weights():
    rng = np.random.default_rng(0)
    w0 = {"w": rng.standard_normal((6, 5)).astype(np.float32), "n": np.array([3], np.int64)}
    step = {"w": rng.standard_normal((6, 5)).astype(np.float32)}

    def train(msg, context):
        got = {k: a.numpy() for k, a in msg.content["arrays"].items()}
        new = {"w": got["w"] + step["w"], "n": got["n"] + 1}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()})}),
                       reply_to=msg)

    context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    mod = sparse_update_mod(sc.TopK(k=4))
    ef = sc.ErrorFeedback()

    class FakeGrid:      # hands the Mod's replies back, as a Grid would
        def send_and_receive(self, messages, *, timeout=None):
            return [mod(m, context, train) for m in messages]

    grid = DecodingGrid(FakeGrid())
    for rnd in (1, 2):
        msg = _train_message(w0, rnd=rnd)
        (reply,) = grid.send_and_receive([msg])
        delta = np.subtract(w0["w"] + step["w"], w0["w"])      # what the Mod sees as the update
        expected = sc.decode_bundle(bytes(ef.step_bundle({"w": delta}, sc.TopK(k=4))))["w"]
        assert np.array_equal(reply.content["arrays"]["w"].numpy(), w0["w"] + expected)
        assert reply.content["arrays"]["n"].numpy().tolist() == [4]      # lossless, not a delta
        assert np.count_nonzero(expected) == 4
    assert np.array_equal(decode_state(context.state["sparsecodec.ef"]["state"]).residual("w"),
                          ef.residual("w"))
    assert len(grid.ledger.records(direction="up")) == 4     # (update + dense) x 2 rounds
    # a corrupted reply is dropped, not aggregated
    bad = mod(_train_message(w0, rnd=3), context, train)
    data = bytearray(bad.content["sparsecodec"]["data"])
    data[len(data) // 2] ^= 0xFF
    bad.content["sparsecodec"]["data"] = bytes(data)
    assert grid._decode([bad], lambda r: ArrayRecord({k: Array(v) for k, v in w0.items()})) == []


def test_a_node_whose_replica_does_not_fit_gets_the_dense_model_and_the_run_is_unchanged():
    """Issue 15: a node whose Context.state replica is not the version the server believes
    answers the patch with fl.resync and gets the dense model in the same round."""
    from flwr.clientapp import ClientApp
    from flwr.simulation import run_simulation as flwr_run_simulation

    from fl.flower.client import CLIENT_STATE, _configs, client_query, client_train

    config = resolve_config(algorithm="ec", setting="defaults", sets=EC)
    reference = run_simulation(config)
    sampled = [m["clients"] for m in reference.metrics]
    victim = next(c for c in sampled[2] if c in sampled[0] + sampled[1])   # holds a replica
    digests = _configs(config)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        down = msg.content.config_records["fl.down"]
        if int(down["client"]) == victim and int(down["round"]) == 3:
            key = f"{CLIENT_STATE}.{down['run']}"
            saved = dict(context.state.config_records[key])
            saved["replica_version"] = 0          # not the version the server sends a patch from
            context.state[key] = ConfigRecord(saved)
        return client_train(msg, context, digests)

    @app.query()
    def query(msg, context):
        return client_query(msg, context)

    got = []
    flwr_run_simulation(server_app=make_server_app(config, on_result=lambda r, s: got.append(r)),
                        client_app=app, num_supernodes=4,
                        backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    flower = got[0]
    assert all(reference.params[k].tobytes() == flower.params[k].tobytes() for k in reference.params)
    assert [m["accuracy"] for m in reference.metrics] == [m["accuracy"] for m in flower.metrics]
    rows = [r.kind for r in flower.ledger.records(round=3, client=victim, direction="down")]
    assert rows == ["patch", "bundle"]                  # the patch, then the dense model at once
    assert [r.kind for r in reference.ledger.records(round=3, client=victim, direction="down")] == ["patch"]
