"""fl.algorithms: FedAvg, EC and EF21 against slow references, config conventions, registry.

The client and server halves are exercised with a bare Channel and ClientData (no engine),
as Flower will run them.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import sparsecodec as sc
from fl.algorithms import available_algorithms, get_algorithm, register_algorithm
from fl.algorithms.base import (ClientData, TrainConfig, Update, average, evaluate,
                                load_tensors, local_sgd, model_tensors, subtract)
from fl.algorithms.ec import EC
from fl.algorithms.ef21 import EF21
from fl.algorithms.fedavg import FedAvg
from fl.channel import SERVER, Channel
from fl.config import resolve_config
from fl.models import build_model
from fl.simulation import Simulation
from sparsecodec.errors import ConfigError


# -- slow references -----------------------------------------------------------------------------
def flare_sparsify(x: np.ndarray, R: float) -> np.ndarray:
    """FLARE's general_utils.sparsify_layer, literally: the round(k)+2 largest |x|, kth = their
    minimum, keep |x| > kth (k = size * R / 100, TF round = half to even)."""
    flat = x.reshape(-1)
    take = int(np.rint(flat.size * R / 100.0)) + 2
    kth = np.sort(np.abs(flat))[::-1][:take].min()
    return np.where(np.abs(x) > kth, x, np.float32(0)).astype(x.dtype)


def reference_sgd_delta(data: ClientData, params, cfg: TrainConfig, gen_state) -> dict:
    """Plain-torch minibatch SGD(momentum) with the same batch order, written out by hand."""
    model = build_model("logistic-regression", seed=0, in_features=12, num_classes=3)
    load_tensors(model, params)
    g = torch.Generator()
    g.set_state(gen_state)
    bufs = {n: None for n, _ in model.named_parameters()}
    n = data.num_samples
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=g)
        for s in range(0, n, min(cfg.batch_size, n)):
            idx = order[s:s + cfg.batch_size]
            model.zero_grad()
            F.cross_entropy(model(data.x[idx]), data.y[idx]).backward()
            with torch.no_grad():
                for name, p in model.named_parameters():
                    bufs[name] = p.grad.clone() if bufs[name] is None else bufs[name] * cfg.momentum + p.grad
                    p -= cfg.lr * bufs[name]
    return subtract(model_tensors(model), params)


def client(seed=0, n=40, cid=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, 12)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, 3, n))
    model = build_model("logistic-regression", seed=0, in_features=12, num_classes=3, init="torch_default")
    return ClientData(cid, x, y, model, torch.Generator().manual_seed(seed))


def initial_params(seed=1):
    return model_tensors(build_model("logistic-regression", seed=seed, in_features=12, num_classes=3,
                                     init="torch_default"))


# -- local training ------------------------------------------------------------------------------
def test_local_sgd_matches_a_hand_written_sgd():
    data, params = client(), initial_params()
    cfg = TrainConfig(lr=0.1, momentum=0.9, epochs=2, batch_size=16)
    ref = reference_sgd_delta(data, params, cfg, data.generator.get_state())
    trained, stats = local_sgd(data, params, cfg)
    assert stats["steps"] == 2 * math.ceil(40 / 16)
    for k in ref:
        np.testing.assert_allclose(subtract(trained, params)[k], ref[k], rtol=1e-5, atol=1e-7)


def test_fedavg_client_sends_the_dense_delta_and_server_averages():
    algo, channel = FedAvg(), Channel()
    cfg = algo.make_config(lr=0.5, momentum=0.99, batch_size=600)   # one full-batch step
    params = initial_params()
    datas = [client(seed=s, n=20 + 10 * s, cid=s) for s in range(3)]
    updates = []
    for data in datas:
        ref = reference_sgd_delta(data, params, cfg, data.generator.get_state())
        res = algo.client_update(None, params, data, cfg, channel.link(round=1, client=data.client_id, direction="up"))
        got = channel.deliver(res.message)
        assert res.message.sections["values"] == 32 * sum(v.size for v in params.values())
        for k in ref:
            np.testing.assert_allclose(got[k], ref[k], rtol=1e-5, atol=1e-7)
        updates.append(Update(data.client_id, got, res.num_samples))
    for weighted in (False, True):
        new = algo.server_update(algo.init_server(params, cfg, 3), updates,
                                 dataclasses.replace(cfg, weighted=weighted)).state.params
        w = np.array([u.num_samples if weighted else 1.0 for u in updates])
        for k in params:
            mean = sum(wi * u.tensors[k].astype(np.float64) for wi, u in zip(w, updates)) / w.sum()
            np.testing.assert_allclose(new[k], params[k] + mean, rtol=1e-6, atol=1e-7)


@settings(max_examples=50, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), weighted=st.booleans())
def test_average_matches_float64_mean(seed, n, weighted):
    rng = np.random.default_rng(seed)
    ups = [Update(i, {"w": rng.standard_normal(7).astype(np.float32)}, int(rng.integers(1, 100)))
           for i in range(n)]
    w = np.array([u.num_samples if weighted else 1 for u in ups], np.float64)
    ref = sum(wi * u.tensors["w"].astype(np.float64) for wi, u in zip(w, ups)) / w.sum()
    got = average(ups, weighted)["w"]
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)


# -- EC ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("R", [1.0, 10.0, 40.0])
def test_ec_matches_the_flare_code_over_rounds(R):
    """a = delta + e; s = FLARE top-k(a) per tensor; e = a - s; against a NumPy reference."""
    algo, channel = EC(), Channel()
    cfg = algo.make_config(lr=0.3, momentum=0.5, batch_size=8, R=R)
    data, params = client(seed=3), initial_params()
    state, e_ref = algo.init_client(0, cfg), {k: np.zeros_like(v) for k, v in params.items()}
    for rnd in range(1, 4):
        delta = reference_sgd_delta(data, params, cfg, data.generator.get_state())
        res = algo.client_update(state, params, data, cfg, channel.link(round=rnd, client=0, direction="up"))
        sent = channel.deliver(res.message)
        state = res.state
        for k in params:
            a = delta[k] + e_ref[k]
            s_ref = flare_sparsify(a, R)
            np.testing.assert_array_equal(sent[k] != 0, s_ref != 0)      # same positions
            e_ref[k] = a - s_ref
            # values agree to rounding (the reference SGD sums in another order); the exact
            # invariant on the algorithm's own numbers is the next test
            np.testing.assert_allclose(sent[k], s_ref, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(state.feedback.residual(k), e_ref[k], rtol=1e-4, atol=1e-6)
        params = {k: v + sent[k] for k, v in params.items()}


def test_ec_invariant_is_exact_and_config_picks_the_codec():
    algo, channel = EC(), Channel()
    cfg = algo.make_config(lr=0.3, batch_size=8, density=0.1, scope="global", k_rule="round")
    assert cfg.codec() == sc.TopK(density=0.1, k_rule="round") and cfg.kept_fraction == 0.1
    assert algo.make_config().codec() == sc.TopK.flare(R=0.001)
    data, params, state = client(seed=4), initial_params(), algo.init_client(0, cfg)
    for rnd in (1, 2):
        old = {k: (state.feedback.residual(k).copy() if state.feedback.residual(k) is not None
                   else np.zeros_like(v)) for k, v in params.items()}
        gen = torch.Generator()
        gen.set_state(data.generator.get_state())
        trained, _ = local_sgd(dataclasses.replace(data, generator=gen), params, cfg)
        delta = subtract(trained, params)
        res = algo.client_update(state, params, data, cfg, channel.link(round=rnd, client=0, direction="up"))
        sent, state = channel.deliver(res.message), res.state
        assert sum(int(np.count_nonzero(v)) for v in sent.values()) == round(0.1 * 39)
        for k in params:
            assert np.array_equal(sent[k] + state.feedback.residual(k), delta[k] + old[k])


# -- EF21 --------------------------------------------------------------------------------------
def test_ef21_server_mirror_equals_client_g_and_step_uses_the_updated_g():
    """T9: sending c_i with a server-side mirror gives the w of the FLARE code (which sends g_i)."""
    config = resolve_config(algorithm="ef21", sets=[
        "dataset=synthetic-logistic", "data.n_train=240", "data.n_test=60", "data.dim=12",
        "data.num_classes=3", "model=logistic-regression", "model_options.in_features=12",
        "model_options.num_classes=3", "model_options.init=torch_default", "rounds=4",
        "sim.clients=5", "sim.clients_per_round=3", "algo.lr=0.2", "algo.batch_size=8",
        "algo.ef21.density=0.3"])
    sim = Simulation(config)
    for _ in range(4):
        before = {k: v.copy() for k, v in sim.params.items()}
        line = sim.step()
        g = [sim.client_states[c].g for c in line["clients"]]            # what the code sends
        for k in before:
            step = sum(gi[k] for gi in g) / np.float32(len(g))
            np.testing.assert_allclose(sim.params[k], before[k] + step, rtol=1e-6, atol=1e-7)
    assert set(sim.server.g) == {c for c, s in sim.client_states.items() if s.g is not None}
    for c, mirror in sim.server.g.items():
        for k, v in mirror.items():                                       # bit-identical copies
            assert v.tobytes() == sim.client_states[c].g[k].tobytes()
    up = sim.ledger.records(direction="up")
    assert all(r.tensor_sections["linear.weight"].get("index", 0) > 0 for r in up)   # c_i is sparse


def test_ef21_first_message_is_topk_of_delta():
    algo, channel = EF21(), Channel()
    cfg = algo.make_config(lr=0.3, batch_size=8, R=20.0)
    data, params = client(seed=5), initial_params()
    delta = reference_sgd_delta(data, params, cfg, data.generator.get_state())
    res = algo.client_update(algo.init_client(0, cfg), params, data, cfg,
                             channel.link(round=1, client=0, direction="up"))
    sent = channel.deliver(res.message)
    for k in params:
        np.testing.assert_array_equal(sent[k] != 0, flare_sparsify(delta[k], 20.0) != 0)
        assert res.state.g[k].tobytes() == sent[k].tobytes()


# -- downlink, configs, registry -------------------------------------------------------------
def test_broadcast_is_the_dense_lossless_model():
    algo, channel = FedAvg(), Channel()
    params = initial_params()
    state = algo.init_server(params, algo.make_config(), 2)
    msg = algo.broadcast(state, algo.make_config(), channel.link(round=1, client=SERVER, direction="down"))
    got = channel.deliver(msg, 0)
    assert all(got[k].tobytes() == params[k].tobytes() for k in params)


def test_config_dataclasses_validate_and_list_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['densty'\].*valid options: lr=0.215"):
        EC().make_config(densty=0.1)
    with pytest.raises(ConfigError, match="lr must be"):
        FedAvg().make_config(lr="fast")
    with pytest.raises(ConfigError, match="epochs must be"):
        FedAvg().make_config(epochs=True)
    with pytest.raises(ConfigError, match="k_rule"):
        EC().make_config(k_rule="floor")
    with pytest.raises(ConfigError, match="scope"):
        EF21().make_config(scope="layer")
    with pytest.raises(ConfigError, match="percent"):
        EC().make_config(R=150.0)
    cfg = FedAvg().make_config(lr=1)
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)       # TOML integers become floats
    assert EC.Config().to_dict()["R"] == 0.001                 # FLARE's paper default


def test_registry(monkeypatch):
    import fl.algorithms

    monkeypatch.setattr(fl.algorithms, "_REGISTERED", {})   # keep the registry clean for others
    assert {"fedavg", "ec", "ef21"} <= set(available_algorithms())
    with pytest.raises(ConfigError, match="valid algorithms: ec, ef21, fedavg"):
        get_algorithm("scaffold")

    @register_algorithm
    class Echo(FedAvg):
        name = "echo-test"

    assert isinstance(get_algorithm("echo-test"), Echo)
    with pytest.raises(ConfigError):
        register_algorithm(int)


def test_evaluate_counts_accuracy_and_loss():
    model = build_model("logistic-regression", seed=0, in_features=2, num_classes=2)
    params = {"linear.weight": np.array([[1, 0], [0, 1]], np.float32), "linear.bias": np.zeros(2, np.float32)}
    x = torch.tensor([[2.0, 0.0], [0.0, 3.0], [1.0, 0.0], [5.0, 0.0]])
    y = torch.tensor([0, 1, 1, 0])
    out = evaluate(model, params, x, y, batch_size=3)
    assert out["accuracy"] == 0.75
    ref = float(F.cross_entropy(x @ torch.eye(2), y))
    assert abs(out["test_loss"] - ref) < 1e-6
