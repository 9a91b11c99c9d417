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
from fl.algorithms.proxskip import (VARIANTS, ProxSkipClientState, control_variate, flatten, pending_h,
                                    smoothness_constant, ste_local_steps, sum_h_metrics, topk_vector, unflatten)
from fl.flower.state import decode_state, encode_state
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
    return [pending_h(sim.client_states[cid], xbar, sim.cfg) for cid in sorted(sim.client_states)]


# -- the zero-sum invariant ----------------------------------------------------------------------
@pytest.mark.parametrize("variant,local", [(v, False) for v in VARIANTS] + [("reset", True), ("randprox", True)])
def test_sum_of_control_variates_is_zero_after_every_communication(variant, local):
    sim = make_sim("sparse-proxskip", 6, "algo.sparsity=0.9", f"algo.local={str(local).lower()}",
                   f"algo.variant='{variant}'")
    previous_sum, previous_h = None, None
    ratio = np.float32(sim.cfg.p / sim.cfg.lr)
    for r in range(6):
        line = sim.step()
        states = [sim.client_states[c] for c in sorted(sim.client_states)]
        if previous_sum is not None:
            # the clients have now applied last round's h-update themselves: their real state
            held = np.sum([st.h.astype(np.float64) for st in states], axis=0)
            assert np.array_equal(held, previous_sum)
        hs = client_h(sim)
        total = np.sum([h.astype(np.float64) for h in hs], axis=0)
        scale = float(ratio) * np.linalg.norm(np.sum([st.sent.astype(np.float64) for st in states], axis=0))
        h_norms = sum(np.linalg.norm(h) for h in hs)
        assert h_norms > 1.0, "the control variates are not trivially zero"
        # float32 rounding only (measured: <= 8e-8 relative over these 6 rounds, every variant)
        assert np.linalg.norm(total) <= 1e-6 * scale
        assert np.linalg.norm(total) <= 1e-6 * h_norms
        # the server's diagnostic: sum_i (p/gamma)(xbar - sent_i), computed from what it received;
        # that is sum_i h_i itself for reset/latent, and randprox's increment of it
        xbar = flatten(sim.server.params)
        increments = np.sum([control_variate(None, st.sent, xbar, ratio).astype(np.float64) for st in states], axis=0)
        assert line["server_sum_h_norm"] == pytest.approx(np.linalg.norm(increments), rel=1e-9, abs=1e-12)
        assert line["server_sum_h_rel"] <= 1e-6
        if variant == "randprox" and previous_h is not None:
            # h accumulates: the new h_i is the old one plus (p/gamma)(xbar - z_i), not a reset
            for h_new, h_old, st in zip(hs, previous_h, states):
                np.testing.assert_array_equal(h_new, h_old + ratio * (xbar - st.sent))
                assert np.linalg.norm(h_old) > 0.1 * np.linalg.norm(h_new)
        previous_sum, previous_h = total, hs


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
@pytest.mark.parametrize("variant", ["reset", "latent"])
def test_sparsity_zero_is_exactly_proxskip(variant):
    dense = make_sim("proxskip", 4)
    sparse = make_sim("sparse-proxskip", 4, "algo.sparsity=0.0", f"algo.variant='{variant}'")
    for _ in range(4):
        a, b = dense.step(), sparse.step()
        assert a["train_loss"] == b["train_loss"]
        assert all(np.array_equal(dense.server.params[n], sparse.server.params[n]) for n in dense.server.params)
    for cid in dense.client_states:
        x, y = dense.client_states[cid], sparse.client_states[cid]
        assert np.array_equal(x.h, y.h) and np.array_equal(x.sent, y.sent)
        # latent: nothing was pruned, so the kept residual is exactly 0
        assert y.residual is None if variant == "reset" else not np.any(y.residual)
    # ...while the messages differed: TopK frames (global, k = d) up, TopK(k="nnz") down
    assert dense.ledger.total_bits(direction="up") != sparse.ledger.total_bits(direction="up")


def test_randprox_at_sparsity_zero_is_proxskip_up_to_rounding():
    # randprox sends x_K, not x_K - (gamma/p) h_i, and adds to h: the same iterates as ProxSkip
    # in exact arithmetic (mean_i x_K,i = mean_i u_i because sum_i h_i = 0), not the same floats
    dense = make_sim("proxskip", 5)
    sparse = make_sim("sparse-proxskip", 5, "algo.sparsity=0.0", "algo.variant='randprox'")
    pruned = make_sim("sparse-proxskip", 5, "algo.sparsity=0.5", "algo.variant='randprox'")
    for _ in range(5):
        dense.step(), sparse.step(), pruned.step()
        a, b = flatten(dense.server.params), flatten(sparse.server.params)
        # measured: <= 1.7e-7 relative after 5 rounds (float32 rounding of two summation orders)
        assert np.linalg.norm(a - b) <= 1e-5 * np.linalg.norm(a)
        # the tolerance tells the reading apart from one that prunes at all
        assert np.linalg.norm(a - flatten(pruned.server.params)) > 1e-2 * np.linalg.norm(a)
    xbar = flatten(dense.server.params)
    for cid in dense.client_states:
        hd, hs = pending_h(dense.client_states[cid], xbar, dense.cfg), pending_h(sparse.client_states[cid], xbar, sparse.cfg)
        assert np.linalg.norm(hd) > 1.0
        assert np.linalg.norm(hd - hs) <= 1e-5 * np.linalg.norm(hd)        # measured: <= 6.4e-7


@pytest.mark.parametrize("variant", VARIANTS)
def test_sparse_proxskip_differs_from_proxskip_when_pruning(variant):
    dense = make_sim("proxskip", 2)
    sparse = make_sim("sparse-proxskip", 2, "algo.sparsity=0.5", f"algo.variant='{variant}'")
    dense.run(), sparse.run()
    assert not np.array_equal(flatten(dense.server.params), flatten(sparse.server.params))


def test_the_default_reading_is_latent():
    # docs/sparse_proxskip.md: chosen on the MNIST 99 % grid (benchmarks/proxskip_grid.py)
    assert get_algorithm("sparse-proxskip").make_config().variant == "latent"


def test_the_variants_are_three_different_algorithms():
    finals = [flatten(make_sim("sparse-proxskip", 3, "algo.sparsity=0.9", f"algo.variant='{v}'").run().params)
              for v in VARIANTS]
    for i in range(len(finals)):
        for j in range(i):
            assert np.linalg.norm(finals[i] - finals[j]) > 1e-3 * np.linalg.norm(finals[i])
    with pytest.raises(ConfigError, match="variant must be one of"):
        get_algorithm("sparse-proxskip").make_config(variant="a")


def test_latent_and_randprox_messages_follow_their_equations():
    # replay one client's round 3 from its state after round 2 and the model it received
    for variant in ("latent", "randprox"):
        sim = make_sim("sparse-proxskip", 3, "algo.sparsity=0.9", f"algo.variant='{variant}'")
        sim.step(), sim.step()
        xbar = flatten(sim.server.params)
        cid = sorted(sim.client_states)[3]
        before = sim.client_states[cid]
        sim.step()
        after = sim.client_states[cid]
        k = sc.k_for(xbar.size, density=0.1, k_rule="round")
        h = pending_h(before, xbar, sim.cfg)
        np.testing.assert_array_equal(after.h, h)
        x0 = xbar + before.residual if variant == "latent" else xbar
        x, _ = ste_local_steps(x0, h, sim.clients[cid], sim.server.params, lr=sim.cfg.lr,
                               steps=sim.cfg.local_steps, k=k)
        if variant == "latent":
            # the residual is what TopK dropped from u = x_K - (gamma/p) h: zero on the message's
            # support, u elsewhere, and it is not small (else the reading would be "reset")
            u = x - np.float32(sim.cfg.lr / sim.cfg.p) * h
            np.testing.assert_array_equal(after.sent, topk_vector(u, k))
            np.testing.assert_array_equal(after.residual, u - after.sent)
            assert np.linalg.norm(before.residual) > 0.1 * np.linalg.norm(xbar)
        else:
            np.testing.assert_array_equal(after.sent, topk_vector(x, k))      # TopK(x_K), no shift
            assert after.residual is None


@pytest.mark.parametrize("variant", ["latent", "randprox"])
def test_variant_state_survives_checkpoints_and_the_node_state_codec(tmp_path, variant):
    opts = ["algo.sparsity=0.9", "sim.checkpoint_every=2", f"algo.variant='{variant}'"]
    full = make_sim("sparse-proxskip", 4, *opts).run(tmp_path / "a")
    make_sim("sparse-proxskip", 4, *opts).run(tmp_path / "b", stop_after=2)
    resumed = make_sim("sparse-proxskip", 4, *opts).run(tmp_path / "b", resume=True)
    assert all(np.array_equal(full.params[n], resumed.params[n]) for n in full.params)
    assert full.metrics == resumed.metrics
    sim = make_sim("sparse-proxskip", 1, *opts)
    sim.step()
    st = sim.client_states[0]
    back = decode_state(encode_state(st))
    assert type(back) is ProxSkipClientState and back.round == st.round
    for f in ("h", "sent", "residual"):
        a, b = getattr(st, f), getattr(back, f)
        assert (a is None and b is None) or np.array_equal(a, b)
    assert (st.residual is not None) == (variant == "latent")


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
    # reset (= randprox without h): each round starts from the received model, no residual
    off = make_sim("sparse-proxskip", 3, "algo.sparsity=0.9", "algo.control_variates=false", "algo.variant='reset'")
    on = make_sim("sparse-proxskip", 3, "algo.sparsity=0.9", "algo.variant='reset'")
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
