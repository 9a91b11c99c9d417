"""FLARE (fl.algorithms.flare) against the official code's rules, written out by hand.

The client half runs with a bare Channel and ClientData, as Flower would run it; the last
tests go through the engine (partial participation, checkpoints).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sparsecodec as sc
from fl.algorithms import get_algorithm
from fl.algorithms.base import ClientData, load_tensors, local_sgd, model_tensors, subtract
from fl.algorithms.ec import EC
from fl.algorithms.flare import FLARE, percentile_nearest, stale_mask
from fl.channel import Channel
from fl.config import resolve_config
from fl.models import build_model
from fl.simulation import Simulation
from sparsecodec.errors import ConfigError

FEATURES, CLASSES = 12, 3


def client(seed=0, n=40, cid=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.standard_normal((n, FEATURES)).astype(np.float32))
    y = torch.from_numpy(rng.integers(0, CLASSES, n))
    model = build_model("logistic-regression", seed=0, in_features=FEATURES, num_classes=CLASSES,
                        init="torch_default")
    return ClientData(cid, x, y, model, torch.Generator().manual_seed(seed))


def initial_params(seed=1):
    return model_tensors(build_model("logistic-regression", seed=seed, in_features=FEATURES,
                                     num_classes=CLASSES, init="torch_default"))


def residuals(state, params):
    """A_i as a dict (zeros before the client's first round)."""
    out = {}
    for k, v in params.items():
        r = state.feedback.residual(k)
        out[k] = np.zeros_like(v) if r is None else r.copy()
    return out


def sgd_delta(data, params, cfg):
    """Plain local SGD from ``params`` with a copy of the client's batch-order generator."""
    gen = torch.Generator()
    gen.set_state(data.generator.get_state())
    trained, _ = local_sgd(dataclasses.replace(data, generator=gen), params, cfg)
    return subtract(trained, params)


# -- the mask -----------------------------------------------------------------------------------
def tfp_percentile_nearest(x, q):
    """tfp.stats.percentile(x, q, interpolation='nearest'), literally: sort ascending, take the
    entry at index tf.round((n - 1) * q / 100) (half to even; Python's round is too)."""
    s = sorted(float(v) for v in np.asarray(x).reshape(-1))
    return s[min(max(round((len(s) - 1) * q / 100.0), 0), len(s) - 1)]


@pytest.mark.parametrize("n", [1, 2, 5, 10, 32, 33, 800, 1001])
@pytest.mark.parametrize("q", [0.0, 25.0, 50.0, 90.0, 100.0])
def test_percentile_is_tfp_nearest(n, q):
    rng = np.random.default_rng(n)
    x = np.abs(rng.standard_normal(n)).astype(np.float32)
    assert percentile_nearest(x, q) == tfp_percentile_nearest(x, q)


def test_mask_is_strictly_above_the_median_per_tensor():
    a = np.array([0.0, -1.0, 2.0, -2.0, 3.0, 0.5, 2.0, -4.0, 1.0, 2.0], np.float32)
    # |a| sorted: 0 .5 1 1 2 2 2 2 3 4; rank round(9 * .5) = round(4.5) = 4 -> 2.0; keep |a| > 2
    assert stale_mask(a, 50).tolist() == [abs(v) > 2.0 for v in a]
    assert not stale_mask(np.zeros((3, 4), np.float32), 50).any()        # round 0: A = 0
    assert not stale_mask(a, 100).any() and stale_mask(a, 0).sum() == 9  # > max, > min


# -- the E = 1 closed form and EC equivalences ------------------------------------------------
def test_one_full_batch_step_is_sgd_plus_the_signed_push():
    """docs/flare.md ("One full-batch step: a closed form"): with E = 1 and batch = local data,
    FLARE's delta equals -lr grad CE(w_k) + lr tau_k M * sign(A), followed by EC, on weights
    and biases."""
    algo, channel = FLARE(), Channel()
    cfg = algo.make_config(lr=0.3, momentum=0.99, batch_size=600, R=10.0, tau=0.5, decay=1.1)
    data, params = client(seed=2), initial_params()
    state = algo.init_client(0, cfg)
    pushed = {k: 0 for k in params}
    for rnd in range(1, 6):
        A = residuals(state, params)
        sgd = sgd_delta(data, params, cfg)
        res = algo.client_update(state, params, data, cfg, channel.link(round=rnd, client=0, direction="up"))
        sent, state = channel.deliver(res.message), res.state
        tau = 0.5 / 1.1 ** rnd
        assert res.metrics["tau"] == pytest.approx(tau, rel=1e-15)
        assert res.metrics["steps"] == 1
        for k in params:
            M = stale_mask(A[k], 50)
            expected = sgd[k] + np.float32(cfg.lr * tau) * M * np.sign(A[k])
            delta = sent[k] + state.feedback.residual(k) - A[k]   # s + A_new = delta + A_old
            np.testing.assert_allclose(delta, expected, rtol=1e-5, atol=1e-6)
            pushed[k] += int(M.sum())
        params = {k: v + sent[k] for k, v in params.items()}
    assert all(pushed.values()), pushed          # both the weight and the bias were pulled


def test_round_zero_is_ec_exactly():
    """In round 0 A = 0, the mask is empty: the same bytes and residual as EC."""
    flare, ec = FLARE(), EC()
    fcfg = flare.make_config(R=5.0)                 # official CNN config otherwise
    shared = {f.name: getattr(fcfg, f.name) for f in dataclasses.fields(EC.Config)}
    ecfg = ec.make_config(**shared)
    params = initial_params()
    a, b = client(seed=3), client(seed=3)
    ra = flare.client_update(flare.init_client(0, fcfg), params, a, fcfg,
                             Channel().link(round=1, client=0, direction="up"))
    rb = ec.client_update(ec.init_client(0, ecfg), params, b, ecfg,
                          Channel().link(round=1, client=0, direction="up"))
    assert ra.message.data == rb.message.data
    assert ra.metrics["pulled"] == 0
    for k in params:
        assert ra.state.feedback.residual(k).tobytes() == rb.state.feedback.residual(k).tobytes()


def _run(algorithm, rounds, sets):
    config = resolve_config(setting="defaults", algorithm=algorithm, sets=[
        "dataset=synthetic-logistic", "data.n_train=200", "data.n_test=50", f"data.dim={FEATURES}",
        f"data.num_classes={CLASSES}", "model=logistic-regression",
        f"model_options.in_features={FEATURES}", f"model_options.num_classes={CLASSES}",
        "model_options.init=torch_default", f"rounds={rounds}", "sim.clients=5",
        "sim.clients_per_round=3", "algo.lr=0.3", "algo.momentum=0.99", *sets])
    sim = Simulation(config)
    for _ in range(rounds):
        sim.step()
    return sim


@pytest.mark.parametrize("extra", [
    ["algo.batch_size=600"],                                           # the paper's E = 1, full batch
    ["algo.batch_size=15", "algo.epochs=2", "algo.momentum=0.0"],     # many steps, no momentum
])
def test_tau_zero_is_ec_every_round(extra):
    """TAU = 0: the pull vanishes and FLARE is EC, bit for bit, over rounds with partial
    participation (with momentum only at one step per round: FLARE restarts it after step p)."""
    flare = _run("flare", 6, [*extra, "algo.flare.R=10.0", "algo.flare.tau=0.0"])
    ec = _run("ec", 6, [*extra, "algo.ec.R=10.0"])
    assert flare.ledger.to_jsonl() == ec.ledger.to_jsonl()
    for k in ec.params:
        assert flare.params[k].tobytes() == ec.params[k].tobytes()
    assert [m["accuracy"] for m in flare.metrics] == [m["accuracy"] for m in ec.metrics]


def test_pull_changes_the_run_when_tau_is_positive():
    """The same setting with TAU > 0 departs from EC after round 1 (the test above can fail)."""
    flare = _run("flare", 3, ["algo.batch_size=600", "algo.flare.R=10.0", "algo.flare.tau=0.5"])
    ec = _run("ec", 3, ["algo.batch_size=600", "algo.ec.R=10.0"])
    assert any(flare.params[k].tobytes() != ec.params[k].tobytes() for k in ec.params)


# -- several local steps: the literal loss, counted across epochs, momentum restart ------------
def reference_flare_training(data, params, A, tau, cfg):
    """The code's client_update_my_algo, literally: loss + tau * sum(M * |w - (A + w_server)|)
    for the first p minibatch steps counted across epochs (autograd through abs), Keras-style
    SGD momentum whose buffers restart at zero at step p, then plain CE."""
    model = build_model("logistic-regression", seed=0, in_features=FEATURES, num_classes=CLASSES)
    load_tensors(model, params)
    masks = {k: torch.from_numpy(stale_mask(A[k], cfg.percentile).astype(np.float32)) for k in A}
    targets = {k: torch.from_numpy(np.add(A[k], params[k], dtype=np.float32)) for k in A}
    gen = torch.Generator()
    gen.set_state(data.generator.get_state())
    velocity = {k: None for k in params}
    step, n = 0, data.num_samples
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=gen)
        for s in range(0, n, cfg.batch_size):
            if step == cfg.reg_steps:
                velocity = {k: None for k in params}          # model_1's fresh momentum slots
            idx = order[s:s + cfg.batch_size]
            loss = F.cross_entropy(model(data.x[idx]), data.y[idx])
            if step < cfg.reg_steps:
                for k, p in model.named_parameters():
                    loss = loss + tau * (masks[k] * (p - targets[k]).abs()).sum()
            model.zero_grad()
            loss.backward()
            with torch.no_grad():
                for k, p in model.named_parameters():      # Keras: v = mu v - lr g; w += v
                    v = velocity[k]
                    velocity[k] = -cfg.lr * p.grad if v is None else cfg.momentum * v - cfg.lr * p.grad
                    p += velocity[k]
            step += 1
    return subtract(model_tensors(model), params), step


@pytest.mark.parametrize("p", [0, 1, 3, 5])
def test_local_training_matches_the_literal_code(p):
    """batch 15 of 40 samples, 2 epochs = 6 steps: p = 3 crosses the epoch boundary."""
    algo, channel = FLARE(), Channel()
    cfg = algo.make_config(lr=0.2, momentum=0.9, batch_size=15, epochs=2, R=10.0, tau=0.3,
                           decay=1.05, reg_steps=p)
    data, params = client(seed=4), initial_params()
    state = algo.init_client(0, cfg)
    for rnd in range(1, 4):
        A = residuals(state, params)
        ref, steps = reference_flare_training(data, params, A, cfg.tau_at(rnd - 1), cfg)
        res = algo.client_update(state, params, data, cfg, channel.link(round=rnd, client=0, direction="up"))
        sent, state = channel.deliver(res.message), res.state
        assert res.metrics["steps"] == steps == 6
        for k in params:
            delta = sent[k] + state.feedback.residual(k) - A[k]
            np.testing.assert_allclose(delta, ref[k], rtol=1e-4, atol=1e-6)
        params = {k: v + sent[k] for k, v in params.items()}


def test_add_gradient_is_autograd_of_the_l1_term_bit_for_bit():
    from fl.algorithms.flare import _Pull

    rng = np.random.default_rng(7)
    x = torch.from_numpy(rng.standard_normal(1000).astype(np.float32)).requires_grad_()
    target = x.detach().clone()
    target[:300] += torch.from_numpy(rng.standard_normal(300).astype(np.float32))  # 700 exact zeros
    pull = _Pull(torch.from_numpy((rng.random(1000) < 0.5).astype(np.float32)), target)
    base = torch.from_numpy(rng.standard_normal(1000).astype(np.float32))
    (x * base).sum().backward()
    pull.add_gradient(x, 0.37)
    direct = x.grad.clone()
    x.grad = None
    ((x * base).sum() + 0.37 * pull.penalty(x)).backward()
    assert torch.equal(direct, x.grad)


# -- schedule, message, server, configs ---------------------------------------------------------
def test_tau_decays_every_round_even_for_unsampled_clients():
    algo, channel = FLARE(), Channel()
    cfg = algo.make_config(R=10.0, batch_size=600)
    params, data = initial_params(), client(seed=5)
    state = algo.init_client(0, cfg)
    res = algo.client_update(state, params, data, cfg, channel.link(round=4, client=0, direction="up"))
    assert res.metrics["tau"] == pytest.approx(0.05 / 1.1 ** 4, rel=1e-15)   # first seen in round 4
    assert res.metrics["pulled"] == 0                                          # its A was still 0
    res = algo.client_update(res.state, params, data, cfg, channel.link(round=9, client=0, direction="up"))
    assert res.metrics["tau"] == pytest.approx(0.05 / 1.1 ** 9, rel=1e-15)
    assert res.metrics["pulled"] > 0


def test_uplink_is_flare_topk_frames_and_server_takes_the_unweighted_mean():
    algo, channel = FLARE(), Channel()
    cfg = algo.make_config(R=10.0, batch_size=600)
    params = initial_params()
    updates = []
    from fl.algorithms.base import Update

    for cid, n in enumerate((20, 40, 60)):
        res = algo.client_update(algo.init_client(cid, cfg), params, client(seed=cid, n=n, cid=cid), cfg,
                                 channel.link(round=1, client=cid, direction="up"))
        got = channel.deliver(res.message)
        for k, v in got.items():           # round(size * R / 100) + 1 kept per tensor
            assert np.count_nonzero(v) == sc.TopK.flare(10.0).k_for(v.size) == round(v.size * 0.1) + 1
        assert channel.ledger.total_bits(client=cid, direction="up") == 8 * len(res.message.data)
        updates.append(Update(cid, got, res.num_samples))
    new = algo.server_update(algo.init_server(params, cfg, 3), updates, cfg).state.params
    for k in params:
        np.testing.assert_allclose(new[k], params[k] + sum(u.tensors[k] for u in updates) / 3,
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("setting, lr, tau, decay, model", [
    ("cnn", 0.215, 0.05, 1.1, "flare-cnn"), ("fc", 0.001, 0.5, 1.05, "flare-fc")])
def test_benchmark_configs_are_the_official_settings(setting, lr, tau, decay, model):
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "flare" / f"{setting}.toml"
    cfg = resolve_config(file=path)
    a = cfg.algo
    assert (cfg.algorithm, cfg.model, cfg.dataset) == ("flare", model, "mnist")
    assert (a.lr, a.momentum, a.epochs, a.batch_size, a.R, a.tau, a.decay, a.percentile, a.reg_steps,
            a.weighted) == (lr, 0.99, 1, 600, 0.001, tau, decay, 50.0, 1, False)
    assert a.codec() == sc.TopK.flare(R=0.001)
    assert cfg.partition == {"kind": "contiguous", "shard_size": 600}
    assert (cfg.sim.clients, cfg.sim.clients_per_round, cfg.sim.eval_every) == (10, 7, 10)
    for other in ("ec", "ef21", "fedavg"):     # the baselines run from the same file
        b = resolve_config(file=path, algorithm=other).algo
        assert (b.lr, b.momentum, b.batch_size) == (lr, 0.99, 600)
        assert other == "fedavg" or b.R == 0.001


def test_config_validation():
    algo = get_algorithm("flare")
    for bad in ({"tau": -1.0}, {"decay": 0.9}, {"percentile": 101.0}, {"reg_steps": -1}, {"nope": 1}):
        with pytest.raises(ConfigError):
            algo.make_config(**bad)
    assert algo.make_config(tau=0.5).tau_at(2) == pytest.approx(0.5 / 1.1 ** 3)


def test_checkpoint_resume_is_bit_identical(tmp_path):
    sets = ["algo.batch_size=600", "algo.flare.R=10.0", "algo.flare.tau=0.5"]
    straight = _run("flare", 4, sets)
    config = straight.config
    first = Simulation(config)
    first.run(tmp_path, stop_after=2)
    second = Simulation(config)
    second.run(tmp_path, resume=True)
    for k in straight.params:
        assert second.params[k].tobytes() == straight.params[k].tobytes()
    assert second.ledger.to_jsonl() == straight.ledger.to_jsonl()
    assert math.isfinite(second.metrics[-1]["accuracy"])
