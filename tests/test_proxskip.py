"""ProxSkip, Sparse-ProxSkip (client pruning, STE, Local variant), server pruning, FedAvg + TopK.

Small heterogeneous problems (the seeded ``synthetic-logistic`` set, 10 groups = 10 clients,
d = 610) run through the real engine and channel: every message is encoded and decoded.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsecodec as sc
from fl.algorithms import get_algorithm
from fl.algorithms.base import ClientData
from fl.algorithms.proxskip import (ProxSkipClientState, control_variate, flatten, smoothness_constant,
                                    ste_local_steps, sum_h_metrics, topk_vector, unflatten)
from fl.channel import SERVER, Channel
from fl.config import resolve_config
from fl.models import build_model
from fl.simulation import Simulation
from sparsecodec.errors import ConfigError

BASE = ["dataset='synthetic-logistic'", "data.n_train=600", "data.n_test=200", "data.heterogeneity=1.5",
        "model='logistic-regression'", "model_options.in_features=60", "model_options.init='torch_default'",
        "partition.kind='writers'", "sim.clients=10", "sim.clients_per_round=0", "sim.eval_every=2",
        "algo.lr=0.05"]


def make_sim(algorithm: str, rounds: int, *sets: str, channel: Channel | None = None) -> Simulation:
    extra = ["algo.p=0.25"] if "proxskip" in algorithm else []      # K = 4 local steps
    cfg = resolve_config(algorithm=algorithm, setting="defaults", sets=BASE + extra + [f"rounds={rounds}", *sets])
    return Simulation(cfg, channel=channel)


def client_h(sim: Simulation) -> list[np.ndarray]:
    """The h_i each client will hold after the last communication (its pending update applied
    exactly as its next client_update does)."""
    xbar = flatten(sim.server.params)
    ratio = np.float32(sim.cfg.p / sim.cfg.lr)
    out = []
    for cid in sorted(sim.client_states):
        st = sim.client_states[cid]
        out.append(control_variate(st.h if st.h is not None else np.zeros_like(xbar), st.sent, xbar, ratio))
    return out


# -- the zero-sum invariant ----------------------------------------------------------------------
@pytest.mark.parametrize("local", [False, True])
def test_sum_of_control_variates_is_zero_after_every_communication(local):
    sim = make_sim("sparse-proxskip", 6, "algo.sparsity=0.9", f"algo.local={str(local).lower()}")
    previous_sum = None
    for r in range(6):
        line = sim.step()
        if previous_sum is not None:
            # the clients have now applied last round's h-update themselves: their real state
            held = np.sum([sim.client_states[c].h.astype(np.float64) for c in sorted(sim.client_states)], axis=0)
            assert np.array_equal(held, previous_sum)
        hs = client_h(sim)
        total = np.sum([h.astype(np.float64) for h in hs], axis=0)
        scale = float(np.float32(sim.cfg.p / sim.cfg.lr)) * np.linalg.norm(
            np.sum([sim.client_states[c].sent.astype(np.float64) for c in sorted(sim.client_states)], axis=0))
        h_norms = sum(np.linalg.norm(h) for h in hs)
        assert h_norms > 1.0, "the control variates are not trivially zero"
        assert np.linalg.norm(total) <= 1e-6 * scale
        assert np.linalg.norm(total) <= 1e-6 * h_norms
        # the server's diagnostic is the same sum, computed from what it received
        assert line["server_sum_h_norm"] == pytest.approx(np.linalg.norm(total), rel=1e-9, abs=1e-12)
        assert line["server_sum_h_rel"] <= 1e-6
        previous_sum = total


def test_server_pruning_breaks_the_invariant():
    sim = make_sim("sparse-proxskip-server", 5, "algo.sparsity=0.9")
    assert all(st.sent is None for st in sim.client_states.values())     # sum h = 0 before any round
    k = sc.k_for(610, density=0.1)
    for r in range(5):
        line = sim.step()
        xbar = flatten(sim.server.params)
        assert np.count_nonzero(xbar) <= k
        total = np.sum([h.astype(np.float64) for h in client_h(sim)], axis=0)
        sent = np.sum([sim.client_states[c].sent.astype(np.float64) for c in sorted(sim.client_states)], axis=0)
        ubar = (sent / 10).astype(np.float32)
        # sum_i h_i = (p/gamma) n (TopK(ubar) - ubar): the pruned tail, not rounding noise
        expected = float(np.float32(sim.cfg.p / sim.cfg.lr)) * 10 * (topk_vector(ubar, k) - ubar.astype(np.float64))
        assert np.linalg.norm(total - expected) <= 1e-4 * np.linalg.norm(expected)
        assert line["server_sum_h_rel"] > 1e-2
        assert line["server_sum_h_norm"] > 1e3 * 1e-6 * np.linalg.norm(sent)


# -- reduction to ProxSkip -----------------------------------------------------------------------
def test_sparsity_zero_is_exactly_proxskip():
    dense, sparse = make_sim("proxskip", 4), make_sim("sparse-proxskip", 4, "algo.sparsity=0.0")
    for _ in range(4):
        a, b = dense.step(), sparse.step()
        assert a["train_loss"] == b["train_loss"]
        assert all(np.array_equal(dense.server.params[n], sparse.server.params[n]) for n in dense.server.params)
    for cid in dense.client_states:
        x, y = dense.client_states[cid], sparse.client_states[cid]
        assert np.array_equal(x.h, y.h) and np.array_equal(x.sent, y.sent)
    # ...while the messages differed: TopK frames (global, k = d) up, TopK(k="nnz") down
    assert dense.ledger.total_bits(direction="up") != sparse.ledger.total_bits(direction="up")


def test_sparse_proxskip_differs_from_proxskip_when_pruning():
    dense, sparse = make_sim("proxskip", 2), make_sim("sparse-proxskip", 2, "algo.sparsity=0.5")
    dense.run(), sparse.run()
    assert not np.array_equal(flatten(dense.server.params), flatten(sparse.server.params))


# -- the Straight-Through Estimator --------------------------------------------------------------
def _logistic_data(seed=0, n=30, dim=8, classes=3):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, dim)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, classes, n))
    model = build_model("logistic-regression", seed=0, in_features=dim, num_classes=classes)
    like = {"linear.weight": np.zeros((classes, dim), np.float32), "linear.bias": np.zeros(classes, np.float32)}
    return ClientData(0, x, y, model, torch.Generator().manual_seed(seed)), like


def _grad_at(vector: np.ndarray, data: ClientData, like) -> np.ndarray:
    """Cross-entropy gradient at ``vector``, by hand in float64 (softmax(XW^T + b) - onehot)."""
    t = unflatten(vector, like)
    w, b = t["linear.weight"].astype(np.float64), t["linear.bias"].astype(np.float64)
    x, y = data.x.numpy().astype(np.float64), data.y.numpy()
    logits = x @ w.T + b
    s = np.exp(logits - logits.max(1, keepdims=True))
    s /= s.sum(1, keepdims=True)
    s[np.arange(len(y)), y] -= 1.0
    s /= len(y)
    return np.concatenate([(s.T @ x).ravel(), s.sum(0)])


def test_ste_gradient_is_taken_at_the_pruned_model():
    data, like = _logistic_data()
    rng = np.random.default_rng(1)
    x0 = rng.standard_normal(27).astype(np.float32)
    h = (0.1 * rng.standard_normal(27)).astype(np.float32)
    k, lr = 5, 0.3
    x1, losses = ste_local_steps(x0, h, data, like, lr=lr, steps=1, k=k)
    g_pruned, g_dense = _grad_at(topk_vector(x0, k), data, like), _grad_at(x0, data, like)
    np.testing.assert_allclose(x1, x0 - lr * (g_pruned - h), rtol=0, atol=1e-6)
    # the two candidate gradients are far apart, so the check above tells them apart
    assert np.abs(g_pruned - g_dense).max() > 100 * 1e-6 / lr
    # the update is applied to the dense latent: pruned-away coordinates still move
    off = np.setdiff1d(np.arange(27), sc.topk_indices(x0, k))
    assert np.all(x1[off] != x0[off])
    # the reported loss is the loss at TopK(x0)
    tp = unflatten(topk_vector(x0, k), like)
    ref = F.cross_entropy(data.x @ torch.from_numpy(tp["linear.weight"]).T + torch.from_numpy(tp["linear.bias"]), data.y)
    assert losses[0] == pytest.approx(float(ref), rel=1e-6)


def test_the_uplink_point_does_not_depend_on_h_beyond_the_trajectory():
    # With K = 1/p steps, x_K - (gamma/p) h = xbar - gamma sum_t g_t exactly (in real
    # arithmetic): the shift by h cancels, and h_i reaches the uplink TopK only through the
    # points TopK(x_t) where the gradients g_t are taken (the diagnosis in the T4 results)
    data, like = _logistic_data()
    rng = np.random.default_rng(3)
    x0 = rng.standard_normal(27).astype(np.float32)
    h = rng.standard_normal(27).astype(np.float32)
    k, lr, p = 6, 0.2, 0.25
    xk, _ = ste_local_steps(x0, h, data, like, lr=lr, steps=4, k=k)
    xt, summed = x0.astype(np.float64), np.zeros(27)
    for _ in range(4):
        g = _grad_at(topk_vector(xt.astype(np.float32), k), data, like)
        summed += g
        xt = xt - lr * (g - h)
    np.testing.assert_allclose(xk - (lr / p) * h.astype(np.float64), x0 - lr * summed, rtol=0, atol=1e-5)
    assert np.linalg.norm((lr / p) * h) > 1.0          # the shift that cancelled is not small


def test_control_variates_off_is_fedavg_with_client_model_pruning():
    off = make_sim("sparse-proxskip", 3, "algo.sparsity=0.9", "algo.control_variates=false")
    on = make_sim("sparse-proxskip", 3, "algo.sparsity=0.9")
    line, _ = off.step(), on.step()
    assert "server_sum_h_norm" not in line                  # no h, no invariant to report
    for _ in range(2):
        xbar = flatten(off.server.params)                   # the model the clients receive
        off.step(), on.step()
    k = sc.k_for(xbar.size, density=0.1, k_rule="round")
    cid = sorted(off.client_states)[0]
    st = off.client_states[cid]
    assert not np.any(st.h)                                 # h_i stays exactly 0
    # the uplink is TopK of K plain STE steps from the received model
    x, _ = ste_local_steps(xbar, np.zeros_like(xbar), off.clients[cid], off.server.params, lr=off.cfg.lr,
                           steps=off.cfg.local_steps, k=k)
    np.testing.assert_array_equal(st.sent, topk_vector(x, k))
    assert any(np.any(on.client_states[c].h) for c in on.client_states)
    # same rounds, same data: only the control variates differ
    assert not np.array_equal(flatten(off.server.params), flatten(on.server.params))


def test_local_variant_keeps_the_iterate_k_sparse_and_clipping_bounds_the_step():
    data, like = _logistic_data()
    x0 = np.random.default_rng(2).standard_normal(27).astype(np.float32)
    h = np.zeros(27, np.float32)
    x, _ = ste_local_steps(x0, h, data, like, lr=0.5, steps=3, k=4, local=True)
    assert np.count_nonzero(x) <= 4
    x1, _ = ste_local_steps(x0, h, data, like, lr=1.0, steps=1, clip_norm=1e-3)
    g = _grad_at(x0, data, like)
    np.testing.assert_allclose(x1, x0 - 1e-3 * g / np.linalg.norm(g), rtol=0, atol=1e-6)


# -- messages ------------------------------------------------------------------------------------
def test_uplink_is_k_sparse_topk_frames_and_the_downlink_is_counted():
    seen = []
    channel = Channel(tap=lambda msg, client: seen.append((msg, client)))
    # the self-describing wire: this test reads the bundles' own structure
    sim = make_sim("sparse-proxskip", 2, "algo.sparsity=0.95", "sim.wire='bundle'", "sim.downlink='dense'",
                   channel=channel)
    sim.run()
    k = sc.k_for(610, density=0.05)
    ups = [m for m, _ in seen if m.direction == "up" and m.round == 2]
    downs = [(m, c) for m, c in seen if m.direction == "down" and m.round == 2]
    assert len(ups) == 10 and len(downs) == 10
    for m in ups:
        decoded = sc.decode_bundle(m.data)
        assert sum(int(np.count_nonzero(v)) for v in decoded.values()) == k
        assert m.sections.get("index", 0) > 0 and m.sections["values"] == 32 * k
    # the downlink carries the average of the 10 k-sparse messages: more than k, at most 10 k
    xbar_round1 = sc.decode_bundle(downs[0][0].data)
    nnz = sum(int(np.count_nonzero(v)) for v in xbar_round1.values())
    assert k < nnz <= 10 * k
    assert sim.ledger.total_bits(round=2, direction="down") == sum(m.nbits for m, _ in downs)
    assert sorted(c for _, c in downs) == list(range(10)) and all(c != SERVER for _, c in downs)
    # the server's model is what every client decodes, exactly
    final = sc.decode_bundle(bytes(sc.encode_bundle(sim.server.params, sc.TopK(k="nnz"))))
    assert all(np.array_equal(final[n], sim.server.params[n]) for n in final)


def test_evaluation_reports_the_pruned_and_the_dense_global_model():
    sim = make_sim("sparse-proxskip", 2, "algo.sparsity=0.9")
    line = sim.run().metrics[-1]
    assert {"accuracy", "test_loss", "dense_accuracy", "dense_test_loss"} <= set(line)
    assert line["accuracy"] != line["dense_accuracy"] or line["test_loss"] != line["dense_test_loss"]


def test_fedavg_topk_sends_topk_of_the_delta_without_residual():
    ec, plain = make_sim("ec", 2, "algo.density=0.05", "algo.scope='global'", "algo.momentum=0.0"), \
        make_sim("fedavg-topk", 2, "algo.density=0.05", "algo.scope='global'", "algo.momentum=0.0")
    ec.step(), plain.step()
    # round 1: the residual is 0, so both send the same frames and reach the same model
    assert all(np.array_equal(ec.server.params[n], plain.server.params[n]) for n in ec.server.params)
    assert ec.ledger.total_bits(direction="up") == plain.ledger.total_bits(direction="up")
    assert all(s is None for s in plain.client_states.values())
    ec.step(), plain.step()
    assert not all(np.array_equal(ec.server.params[n], plain.server.params[n]) for n in ec.server.params)


# -- engine integration ----------------------------------------------------------------------------
def test_a_client_that_missed_a_round_is_refused():
    algo = get_algorithm("sparse-proxskip")
    cfg = algo.make_config(sparsity=0.5, lr=0.1, p=0.5)
    data, like = _logistic_data()
    channel = Channel()
    state = ProxSkipClientState(np.zeros(27, np.float32), np.zeros(27, np.float32), round=1)
    with pytest.raises(ValueError, match="full participation"):
        algo.client_update(state, like, data, cfg, channel.link(round=3, client=0, direction="up"))


def test_checkpoint_resume_is_bit_identical(tmp_path):
    full = make_sim("sparse-proxskip", 4, "algo.sparsity=0.9", "sim.checkpoint_every=2").run(tmp_path / "a")
    make_sim("sparse-proxskip", 4, "algo.sparsity=0.9", "sim.checkpoint_every=2").run(tmp_path / "b", stop_after=2)
    resumed = make_sim("sparse-proxskip", 4, "algo.sparsity=0.9", "sim.checkpoint_every=2").run(
        tmp_path / "b", resume=True)
    assert all(np.array_equal(full.params[n], resumed.params[n]) for n in full.params)
    assert full.metrics == resumed.metrics


def test_config_validation_and_helpers():
    algo = get_algorithm("sparse-proxskip")
    assert algo.make_config(p=0.2).local_steps == 5
    for bad in ({"p": 0.3}, {"p": 0.0}, {"sparsity": 1.0}, {"lr": -1.0}, {"clip_norm": 0.0}, {"batch_size": -1}):
        with pytest.raises(ConfigError):
            algo.make_config(**bad)
    with pytest.raises(ConfigError, match="unknown option"):
        get_algorithm("proxskip").make_config(sparsity=0.9)
    # L of a least-squares problem with the engine's mean-of-squares loss: 2 lambda_max
    x = np.diag([3.0, 1.0]).astype(np.float32)
    xa = np.hstack([x, np.ones((2, 1))])
    assert smoothness_constant([x], "regression") == pytest.approx(2 * np.linalg.eigvalsh(xa.T @ xa / 2)[-1])
    assert smoothness_constant([x], "classification") == pytest.approx(np.linalg.eigvalsh(xa.T @ xa / 2)[-1] / 2)
    m = sum_h_metrics([np.array([1.0, 0.0], np.float32), np.array([0.0, 1.0], np.float32)],
                      np.array([0.5, 0.5], np.float32), np.float32(2.0))
    assert m["sum_h_norm"] == 0.0 and m["h_norm_mean"] == pytest.approx(np.sqrt(2.0))
