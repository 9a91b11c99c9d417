"""FedPM / regularized FedPM (fl.algorithms.fedpm, fl.masked): aggregation, regularizer,
STE, really coded masks, engine integration (docs/fedpm.md, including "Bit accounting")."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import sparsecodec as sc
from fl.algorithms import fedpm as fedpm_mod
from fl.algorithms import get_algorithm
from fl.algorithms.base import ClientData, Update
from fl.algorithms.fedpm import FedPM, aggregate_masks, ideal_bpp_code, regularizer, smoothed
from fl import masked
from fl.channel import Channel
from fl.config import resolve_config
from fl.masked import (bernoulli_ste, frozen_weights, keep_probabilities, masked_forward,
                       threshold_forward)
from fl.models import build_model
from fl.simulation import METRICS, MODEL, SUMMARY, Simulation, run_simulation
from sparsecodec.errors import ConfigError

# a masked MLP 12-600-300-3 on 240 synthetic samples: a FedPM round in well under a second
TINY = ["dataset=synthetic-logistic", "data.n_train=240", "data.n_test=60", "data.dim=12",
        "data.num_classes=3", "model=fedpm-mlp", "model_options.in_features=12",
        "model_options.num_classes=3", "rounds=3", "sim.clients=4", "sim.clients_per_round=3",
        "sim.checkpoint_every=1", "algo.epochs=1", "algo.batch_size=32"]


def tiny(*extra):
    return resolve_config(algorithm="fedpm", setting="defaults", sets=TINY + list(extra))


def random_masks(rng, k, shapes, p=0.4):
    return [{name: rng.random(shape) < p for name, shape in shapes.items()} for _ in range(k)]


# -- aggregation --------------------------------------------------------------------------------
def test_aggregation_is_the_mean_of_the_smoothed_masks_and_the_beta_mode():
    rng = np.random.default_rng(0)
    masks = random_masks(rng, 7, {"w": (5, 4), "b": (4,)})
    eps = 0.01
    theta = aggregate_masks(masks, eps)
    for name in ("w", "b"):
        mean = np.mean([np.where(m[name], 1 - eps, eps) for m in masks], axis=0)
        np.testing.assert_allclose(theta[name], mean, rtol=0, atol=1e-15)
        # the Beta-mode formula with the prior reset to Beta(1, 1), written out independently
        ones = sum(np.where(m[name], 1 - eps, eps) for m in masks)
        alpha, beta = 1 + ones, 1 + (len(masks) - ones)
        np.testing.assert_allclose(theta[name], (alpha - 1) / (alpha + beta - 2), rtol=0, atol=1e-15)
        assert theta[name].min() >= eps and theta[name].max() <= 1 - eps
    # a stronger prior pulls towards 1/2: mode of Beta(l0 + ones, l0 + k - ones)
    lam0 = 3.0
    strong = aggregate_masks(masks, eps, prior=lam0)
    ones = sum(smoothed(m["w"], eps) for m in masks)
    np.testing.assert_allclose(strong["w"], (lam0 - 1 + ones) / (2 * lam0 - 2 + len(masks)), atol=1e-15)
    # weighted (the Flower port): weights rescaled to sum to k, i.e. the weighted mean
    w = [1, 2, 3, 4, 5, 6, 7]
    weighted = aggregate_masks(masks, eps, weights=w)
    expect = sum(wi * smoothed(m["b"], eps) for wi, m in zip(w, masks)) / sum(w)
    np.testing.assert_allclose(weighted["b"], expect, atol=1e-15)


def test_server_update_broadcasts_the_logit_of_the_aggregate():
    algo = FedPM()
    cfg = algo.make_config()
    rng = np.random.default_rng(1)
    shapes = {"fc.weight": (6, 3), "fc.bias": (6,)}
    state = algo.init_server({k: np.zeros(s, np.float32) for k, s in shapes.items()}, cfg, 3)
    masks = random_masks(rng, 3, shapes, p=0.5)
    result = algo.server_update(state, [Update(i, m, 10) for i, m in enumerate(masks)], cfg)
    theta = aggregate_masks(masks, cfg.epsilon)
    for name in shapes:
        s = result.state.params[name]
        assert s.dtype == np.float32
        np.testing.assert_allclose(1 / (1 + np.exp(-s.astype(np.float64))), theta[name], rtol=1e-6)
    assert result.state.round == 1
    m = result.metrics
    d = 24
    fracs = [np.mean(np.concatenate([mk[k].ravel() for k in shapes])) for mk in masks]
    assert m["density"] == pytest.approx(np.mean(fracs))
    assert m["ideal_bpp"] == pytest.approx(np.mean([sc.bounds.binary_entropy(f) + math.log2(d) / d
                                                    for f in fracs]))
    assert m["theta_below_half"] == pytest.approx(np.mean(np.concatenate(
        [theta[k].ravel() for k in shapes]) < 0.5))


def test_ideal_bpp_code_uses_the_smoothed_frequency():
    d, eps = 1000, 0.01
    assert ideal_bpp_code(0.2, d, eps) == pytest.approx(
        sc.bounds.binary_entropy(0.01 + 0.98 * 0.2) + math.log2(d) / d)
    # the smoothed frequency is nearer 1/2, so the official figure is never below the binary one
    mask = np.zeros(d, bool)
    mask[:200] = True
    assert ideal_bpp_code(0.2, d, eps) > sc.bounds.fedpm_ideal_bpp(mask)


# -- regularizer and straight-through estimators --------------------------------------------------
def test_regularizer_gradient_matches_its_closed_form():
    g = torch.Generator().manual_seed(0)
    scores = {"a": (3 * torch.randn(7, 5, generator=g, dtype=torch.float64)).requires_grad_(),
              "b": (3 * torch.randn(11, generator=g, dtype=torch.float64)).requires_grad_()}
    lam, n = 2.5, 7 * 5 + 11
    reg = regularizer(scores, lam)
    reg.backward()
    for s in scores.values():
        sig = torch.sigmoid(s.detach())
        torch.testing.assert_close(s.grad, lam / n * sig * (1 - sig), rtol=1e-12, atol=0)
    with torch.no_grad():
        value = lam / n * sum(torch.sigmoid(s).sum() for s in scores.values())
    assert float(reg.detach()) == pytest.approx(float(value), rel=1e-12)


@pytest.mark.parametrize("ste", ["official", "plain"])
def test_straight_through_gradient(ste):
    theta = torch.rand(1000, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    theta.requires_grad_()
    coef = torch.linspace(-1, 1, 1000, dtype=torch.float64)
    m = bernoulli_ste(theta, torch.Generator().manual_seed(2), ste)
    assert set(m.detach().unique().tolist()) <= {0.0, 1.0}
    (coef * m).sum().backward()
    expect = theta.detach() * coef if ste == "official" else coef   # official: theta * dL/dm
    torch.testing.assert_close(theta.grad, expect)


def test_bernoulli_sample_follows_theta():
    theta = torch.full((200_000,), 0.3)
    m = bernoulli_ste(theta, torch.Generator().manual_seed(3))
    assert abs(float(m.mean()) - 0.3) < 5 * math.sqrt(0.3 * 0.7 / 200_000)


def test_masked_forward_uses_frozen_weights_and_fresh_masks():
    model = build_model("fedpm-mlp", seed=0, in_features=12, num_classes=3)
    weights = frozen_weights(model)
    for name, w in weights.items():            # signed constant +-e/sqrt(fan_in), biases too
        fan_in = model.get_parameter(name.replace("bias", "weight")).shape[1]
        assert torch.allclose(w.abs(), torch.full_like(w, math.e / math.sqrt(fan_in)))
    scores = {k: torch.zeros_like(v, requires_grad=True) for k, v in weights.items()}
    x = torch.randn(4, 12, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(5)
    a, b = masked_forward(model, weights, scores, x, g), masked_forward(model, weights, scores, x, g)
    assert not torch.equal(a, b)               # a new mask every forward pass
    a.sum().backward()
    assert all(s.grad is not None for s in scores.values())
    assert all(p.grad is None for p in model.parameters())   # W is never trained
    big = {k: torch.full_like(v, 20.0) for k, v in weights.items()}   # theta ~ 1: the plain net
    torch.testing.assert_close(threshold_forward(model, weights, big, x), model(x))


def test_conv4_masked_forward():
    model = build_model("fedpm-conv4", seed=0)
    weights = frozen_weights(model)
    scores = {k: torch.zeros_like(v, requires_grad=True) for k, v in weights.items()}
    out = masked_forward(model, weights, scores, torch.randn(2, 1, 28, 28), torch.Generator().manual_seed(0))
    assert out.shape == (2, 10)
    out.sum().backward()
    assert scores["conv1.weight"].grad.shape == (64, 1, 3, 3)


def test_keep_probabilities_is_a_stable_sigmoid():
    s = {"x": np.array([-800.0, -4.6, 0.0, 4.6, 800.0], np.float32)}
    p = keep_probabilities(s)["x"]
    assert p.dtype == np.float64 and np.all(np.isfinite(p))
    np.testing.assert_allclose(p[1:4], 1 / (1 + np.exp(-s["x"][1:4].astype(np.float64))), rtol=1e-15)


# -- one client, really coded ------------------------------------------------------------------------
def _client(seed=0, n=64, dim=12):
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(n, dim, generator=g), torch.randint(0, 3, (n,), generator=g)
    model = build_model("fedpm-mlp", seed=seed, in_features=dim, num_classes=3)
    return ClientData(0, x, y, model, torch.Generator().manual_seed(seed + 1))


@pytest.mark.parametrize("uplink_model", ["global", "adaptive"])
def test_coded_mask_decodes_to_the_sampled_mask(monkeypatch, uplink_model):
    sampled = []

    def recording(scores, generator):      # the client's upload sample, as drawn
        out = masked.sample_masks(scores, generator)
        sampled.append(out)
        return out

    monkeypatch.setattr(fedpm_mod, "sample_masks", recording)
    algo = FedPM()
    cfg = algo.make_config(epochs=1, batch_size=16, uplink_model=uplink_model)
    data = _client()
    server = algo.init_server({k: v.numpy() for k, v in frozen_weights(data.model).items()}, cfg, 1)
    channel = Channel()
    down = channel.deliver(algo.broadcast(server, cfg, channel.link(round=1, client=-1, direction="down")), 0)
    result = algo.client_update(algo.init_client(0, cfg), down, data, cfg,
                                channel.link(round=1, client=0, direction="up"))
    side = algo.uplink_side(server, cfg)
    decoded = channel.deliver(result.message, side=side)
    (mask,) = sampled
    assert list(decoded) == list(mask)
    for name in mask:
        assert decoded[name].dtype == np.bool_ and np.array_equal(decoded[name], mask[name])
    algo.check_update(server, decoded, cfg)
    d = sum(m.size for m in mask.values())
    assert channel.ledger.total_bits(direction="up") == result.message.nbits
    key = "coded_bpp_global" if uplink_model == "global" else "coded_bpp_adaptive"
    assert result.metrics[key] == result.message.nbits / d
    if uplink_model == "global":
        assert side is not None
        with pytest.raises(ConfigError):           # p is side information: not in the frame
            channel.decode(result.message)
        # the coded size follows the cross-entropy under the global theta (MaskCodec's bound)
        flat = np.concatenate([m.ravel() for m in mask.values()])
        p = np.concatenate([v["p"].ravel() for v in side.values()])
        assert result.message.sections["mask"] <= 1.001 * sc.bounds.mask_bits(flat, p) + 64 * len(mask)
    else:
        assert side is None


def test_persistent_and_fresh_optimizer_state():
    algo = FedPM()
    for persistent in (True, False):
        cfg = algo.make_config(epochs=1, batch_size=16, persistent_optimizer=persistent)
        data = _client()
        server = algo.init_server({k: v.numpy() for k, v in frozen_weights(data.model).items()}, cfg, 1)
        result = algo.client_update(algo.init_client(0, cfg), server.params, data, cfg,
                                    Channel().link(round=1, client=0, direction="up"))
        if persistent:
            steps = [int(v["step"]) for v in result.state.optimizer["state"].values()]
            assert steps == [4] * len(server.params)        # 64 samples / 16 per batch
            again = algo.client_update(result.state, server.params, data, cfg,
                                       Channel().link(round=2, client=0, direction="up"))
            assert {int(v["step"]) for v in again.state.optimizer["state"].values()} == {8}
        else:
            assert result.state.optimizer is None


def test_config_validation():
    algo = get_algorithm("fedpm")
    for bad in ({"ste": "nope"}, {"epsilon": 0.5}, {"epsilon": 0.0}, {"prior": 0.5}, {"lambda_reg": -1.0},
                {"score_init": "uniform"}, {"uplink_model": "best"}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            algo.make_config(**bad)
    assert algo.make_config(lambda_reg=1).lambda_reg == 1.0


# -- through the engine -----------------------------------------------------------------------------
def test_engine_run_reports_real_and_ideal_bpp(tmp_path):
    config = tiny()
    result = run_simulation(config, tmp_path / "run")
    lines = result.metrics
    assert len(lines) == 3 and all(m["updates"] == 3 for m in lines)
    for m in lines:
        d = m["server_numel"]
        assert d == 12 * 600 + 600 + 600 * 300 + 300 + 300 * 3 + 3
        # the clients' own frame sizes add up to the ledger's uplink bits of the round
        assert m["server_coded_bpp_global"] * d * m["updates"] == pytest.approx(m["uplink_bits"], rel=1e-12)
        assert 0 < m["server_density"] < 1 and 0 <= m["server_theta_below_half"] <= 1
        assert m["accuracy"] is not None and m["accuracy_threshold"] is not None
        # the coder lands on its model's cross-entropy: within 0.1 % plus the per-frame constants
        assert m["server_coded_bpp_global"] <= 1.001 * m["server_xent_global_bpp"] + 2000 / d
    s = result.summary
    assert s["uplink_bpp"] == pytest.approx(np.mean([m["uplink_bits"] / (3 * m["server_numel"]) for m in lines]))
    assert s["uplink_bpp_ideal"] == pytest.approx(np.mean([m["server_ideal_bpp"] for m in lines]))
    for key in ("uplink_bpp_adaptive", "uplink_bpp_ideal_code", "final_density", "final_theta_below_half",
                "rounds_coded_above_ideal"):
        assert key in s
    # round 1: the initial scores both ends built from the seed (an empty patch); then most
    # scores move: the patch or the dense fp32 bundle, whichever is smaller (sim.downlink)
    downs = result.ledger.records(direction="down")
    assert {r.kind for r in downs if r.round == 1} == {"patch"}
    later = [r for r in downs if r.round > 1]
    assert later and all(r.kind in ("bundle", "patch") and 0 < r.nbits / r.numel <= 32.01 for r in later)
    assert (tmp_path / "run" / SUMMARY).is_file()


def test_engine_resume_is_bit_identical_and_weights_stay_frozen(tmp_path):
    config = tiny()
    full = run_simulation(config, tmp_path / "full")
    run_simulation(config, tmp_path / "cut", stop_after=1)
    resumed = run_simulation(config, tmp_path / "cut", resume=True)
    for name in (MODEL, METRICS):
        assert (tmp_path / "full" / name).read_bytes() == (tmp_path / "cut" / name).read_bytes(), name
    assert resumed.metrics == full.metrics
    sim = Simulation(config)
    before = {k: v.clone() for k, v in frozen_weights(sim.model).items()}
    sim.step()
    sim.step()
    assert all(torch.equal(before[k], v) for k, v in frozen_weights(sim.model).items())


def test_regularizer_makes_masks_sparser():
    # same seeds, only lambda differs: a strong penalty lowers theta (few steps, tiny data)
    base = Simulation(tiny("rounds=2", "algo.epochs=2"))
    reg = Simulation(tiny("rounds=2", "algo.epochs=2", "algo.lambda_reg=2000.0"))
    for _ in range(2):
        a, b = base.step(), reg.step()
    assert b["server_theta_mean"] < a["server_theta_mean"]
    assert b["server_density"] < a["server_density"]
    assert b["server_reg_loss"] > 0 and a["server_reg_loss"] == 0
