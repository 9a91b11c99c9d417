"""SparseUpdateStrategy + sparse_update_mod (issue 17, item 3): stock Flower strategies
(FedAvg, FedAdam) aggregate decoded updates of a real BatchNorm CNN on Flower's simulation
engine; 0-d tensors (``num_batches_tracked``) survive every round; a round in which every
client failed raises instead of ending the run with a stale model."""

from __future__ import annotations

import math

import numpy as np
import pytest

flwr = pytest.importorskip("flwr", reason="Flower is not installed (pip install -e '.[flower]')")
torch = pytest.importorskip("torch", reason="torch is in the [fl] extra: pip install torch==2.13.0, then -e '.[fl]'")

import sparsecodec as sc  # noqa: E402
from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, Metadata,  # noqa: E402
                      MetricRecord, RecordDict)
from flwr.serverapp.strategy import FedAdam, FedAvg, Strategy  # noqa: E402

from fl.flower import SparseUpdateStrategy, sparse_update_mod  # noqa: E402

BATCHES = 2          # minibatches per client per round: num_batches_tracked grows by this


def _cnn() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                               torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(),
                               torch.nn.Linear(16, 3))


def _train(msg: Message, context: Context) -> Message:
    """A user's ordinary train function: load the state dict, a few SGD steps, send it back."""
    if msg.content["config"].get("fail", False):
        raise RuntimeError("this client always fails")
    model = _cnn()
    model.load_state_dict(msg.content["arrays"].to_torch_state_dict())
    pid = int(context.node_config.get("partition-id", 0))
    gen = torch.Generator().manual_seed(100 + pid)
    x, y = torch.randn(16 * BATCHES, 1, 8, 8, generator=gen), torch.randint(0, 3, (16 * BATCHES,), generator=gen)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for b in range(BATCHES):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x[16 * b:16 * (b + 1)]), y[16 * b:16 * (b + 1)]).backward()
        opt.step()
    return Message(RecordDict({"arrays": ArrayRecord(model.state_dict()),
                               "metrics": MetricRecord({"num-examples": 16 * BATCHES})}), reply_to=msg)


def test_fedavg_and_fedadam_aggregate_a_batchnorm_cnn_through_the_wrapper():
    from flwr.clientapp import ClientApp
    from flwr.serverapp import ServerApp
    from flwr.simulation import run_simulation

    client = ClientApp(mods=[sparse_update_mod(sc.TopK(density=0.2))])
    client.train()(_train)
    server = ServerApp()
    start = ArrayRecord(_cnn().state_dict())
    out = {}

    @server.main()
    def main(grid, context) -> None:
        for name, inner in (("fedavg", FedAvg(fraction_evaluate=0.0)),
                            ("fedadam", FedAdam(fraction_evaluate=0.0, eta=0.01))):
            strategy = SparseUpdateStrategy(inner)
            out[name] = strategy, strategy.start(grid=grid, initial_arrays=start, num_rounds=3)
        # every client fails: the wrapper stops the run (Flower's own strategies would go on)
        SparseUpdateStrategy(FedAvg(fraction_evaluate=0.0)).start(
            grid=grid, initial_arrays=start, num_rounds=1, train_config=ConfigRecord({"fail": True}))

    with pytest.raises(RuntimeError, match="round 1: every client failed"):
        run_simulation(server, client, num_supernodes=2,
                       backend_config={"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    assert set(out) == {"fedavg", "fedadam"}
    for name, (strategy, result) in out.items():
        assert strategy.dropped == {1: [], 2: [], 3: []}, name
        assert sorted(result.train_metrics_clientapp) == [1, 2, 3], name
        # 2 clients x 3 rounds x (float update + lossless counters), counted from the bytes
        assert len(strategy.ledger.records(direction="up")) == 12, name
        final = result.arrays.to_numpy_ndarrays()
        assert all(a.shape == b.shape for a, b in zip(final, start.to_numpy_ndarrays())), name
        assert not np.array_equal(final[0], start.to_numpy_ndarrays()[0]), name
        nbt = result.arrays["1.num_batches_tracked"].numpy()
        assert nbt.shape == (), name
    # FedAvg averages the counters each client sent back: every round adds BATCHES
    assert float(out["fedavg"][1].arrays["1.num_batches_tracked"].numpy()) == 3 * BATCHES
    # the final model loads into the CNN as it is
    _cnn().load_state_dict(out["fedavg"][1].arrays.to_torch_state_dict())


# -- the wrapper's reply checks, without an engine ------------------------------------------------
def _meta(node: int) -> Metadata:
    return Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=node,
                    reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0,
                    message_type="train")


def _encoded(node: int, w0: dict, metrics: dict, step: float = 1.0) -> Message:
    """Node ``node``'s reply as the Mod sends it (trained = received + step)."""
    msg = Message(metadata=_meta(node), content=RecordDict({
        "arrays": ArrayRecord({k: Array(v) for k, v in w0.items()}),
        "config": ConfigRecord({"server-round": 1})}))

    def train(msg, context):
        new = {k: a.numpy() + step for k, a in msg.content["arrays"].items()}
        return Message(RecordDict({"arrays": ArrayRecord({k: Array(v) for k, v in new.items()}),
                                   "metrics": MetricRecord(metrics)}), reply_to=msg)

    context = Context(run_id=1, node_id=node, node_config={}, state=RecordDict(), run_config={})
    return sparse_update_mod(sc.TopK(density=1.0))(msg, context, train)


def test_the_wrapper_drops_replies_that_would_abort_fedavg():
    w0 = {"w": np.zeros((2, 3), np.float32)}
    strategy = SparseUpdateStrategy(FedAvg(fraction_evaluate=0.0))
    assert isinstance(strategy, Strategy) and isinstance(strategy, SparseUpdateStrategy)
    honest = [_encoded(1, w0, {"num-examples": 10}, 1.0), _encoded(2, w0, {"num-examples": 30}, 3.0)]
    bad = [_encoded(3, w0, {"num-examples": float("nan")}), _encoded(4, w0, {"num-examples": -5}),
           _encoded(5, w0, {"num-examples": 10, "extra": 1.0}), _encoded(6, w0, {"other": 1})]
    corrupt = _encoded(7, w0, {"num-examples": 10})
    corrupt.content["sparsecodec"]["data"] = b"SC" + bytes(40)
    plain = Message(metadata=_meta(8), content=RecordDict({          # not encoded by the Mod
        "arrays": ArrayRecord({"w": Array(np.full((9, 9), 1e30, np.float32))}),
        "metrics": MetricRecord({"num-examples": 10})}))
    stranger = _encoded(9, w0, {"num-examples": 10})                  # to no message sent
    strategy._sent[1] = {n: ArrayRecord({k: Array(v) for k, v in w0.items()}) for n in range(1, 9)}
    arrays, metrics = strategy.aggregate_train(1, honest + bad + [corrupt, plain, stranger])
    assert np.allclose(arrays["w"].numpy(), (10 * 1.0 + 30 * 3.0) / 40)     # the honest two only
    assert sorted(n for n, _ in strategy.dropped[1]) == [3, 4, 5, 6, 7, 8, 9]
    assert metrics is not None
    # nothing usable at all: a clear error, not a silently unchanged model
    strategy._sent[2] = {3: ArrayRecord({k: Array(v) for k, v in w0.items()})}
    with pytest.raises(RuntimeError, match="round 2: every client failed .*node 3"):
        strategy.aggregate_train(2, bad[:1])
    lenient = SparseUpdateStrategy(FedAvg(), allow_empty_rounds=True)
    lenient._sent[1] = {3: ArrayRecord({k: Array(v) for k, v in w0.items()})}
    assert lenient.aggregate_train(1, bad[:1]) == (None, None)
    assert math.isfinite(strategy.ledger.total_bits(direction="up"))


def test_the_mod_follows_a_strategy_that_changes_the_dtype():
    """FedAdam returns float64 weights after a float32 start: the residual follows the dtype."""
    mod = sparse_update_mod(sc.TopK(k=2))
    context = Context(run_id=1, node_id=4, node_config={}, state=RecordDict(), run_config={})

    def train(msg, context):
        w = msg.content["arrays"]["w"].numpy()
        return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w + np.arange(6, dtype=w.dtype))}),
                                   "metrics": MetricRecord({"num-examples": 1})}), reply_to=msg)

    from fl.flower import decode_state, decode_update

    for rnd, dtype in ((1, np.float32), (2, np.float64)):
        sent = ArrayRecord({"w": Array(np.zeros(6, dtype))})
        msg = Message(metadata=_meta(4), content=RecordDict({"arrays": sent,
                                                             "config": ConfigRecord({"server-round": rnd})}))
        got = decode_update(mod(msg, context, train), sent)["w"].numpy()
        assert got.dtype == dtype
    # round 2 sends top-2 of update + residual = [0 2 4 6 4 5] (round 1 sent the 4 and the 5)
    assert got.tolist() == [0, 0, 0, 6, 0, 5]
    residual = decode_state(context.state["sparsecodec.ef"]["state"]).residual("w")
    assert residual.dtype == np.float64 and np.array_equal(got + residual, 2 * np.arange(6) - [0, 0, 0, 0, 4, 5])
