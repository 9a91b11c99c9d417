"""SparsyFed and Top-K pruning (fl.powerprop, fl.algorithms.sparsyfed; docs/sparsyfed.md, and the
T8 unit checks of docs/reproductions.md): Powerprop gradients, activation pruning, pruning,
metrics, real messages."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fl.algorithms import get_algorithm
from fl.algorithms.base import ClientData, Update, local_sgd
from fl.algorithms.sparsyfed import (SparsyFed, TopKPrune, keep_count, mask_metrics,
                                     prunable_names, prune_global)
from fl.channel import Channel
from fl.config import resolve_config
from fl.models import build_model
from fl.powerprop import (PowerpropConv2d, PowerpropLinear, effective_weight, init_weights,
                          powerprop_model, to_effective, to_latent)
from fl.simulation import Simulation
from sparsecodec.errors import ConfigError

# small-cnn on the embedded MNIST subset, 40 LDA clients of 250 images, 2 per round
TINY = ["dataset=mnist-embedded", "model=small-cnn", "model_options.init='lecun_normal'",
        "data.scale='symmetric'", "partition.kind='dirichlet'", "partition.alpha=0.5",
        "sim.clients=40", "sim.clients_per_round=2", "sim.eval_batch_size=2000",
        "algo.lr=0.05", "algo.sparsity=0.9", "rounds=2"]


def tiny(algorithm, *extra):
    return resolve_config(algorithm=algorithm, setting="defaults", sets=TINY + list(extra))


def _sparsify_(p: torch.Tensor, frac: float, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(p.shape, generator=g) < frac
    with torch.no_grad():
        p[mask] = 0.0
    return mask


# -- Powerprop ----------------------------------------------------------------------------------
@pytest.mark.parametrize("prune", [False, True])
@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_zero_latent_weight_gets_exactly_zero_gradient(kind, prune):
    torch.manual_seed(0)
    if kind == "linear":
        layer, x = PowerpropLinear(20, 7, alpha=1.25, prune_activations=prune), torch.randn(8, 20)
    else:
        layer, x = PowerpropConv2d(3, 4, 3, alpha=1.25, prune_activations=prune), torch.randn(5, 3, 9, 9)
    zero = _sparsify_(layer.weight, 0.5)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1, weight_decay=1e-3)
    for _ in range(3):
        opt.zero_grad()
        (layer(x) ** 2).sum().backward()
        g = layer.weight.grad
        assert torch.all(g[zero] == 0.0)          # exactly zero, not small
        assert torch.count_nonzero(g[~zero]) > 0.9 * int((~zero).sum())
        opt.step()
        assert torch.all(layer.weight[zero] == 0.0)  # weight decay included: zeros stay zero
    # control: with alpha = 1 the same zero weights do get a gradient
    plain = PowerpropLinear(20, 7, alpha=1.0, prune_activations=False)
    zero = _sparsify_(plain.weight, 0.5)
    (plain(torch.randn(8, 20)) ** 2).sum().backward()
    assert torch.count_nonzero(plain.weight.grad[zero]) > 0


def test_effective_weight_gradient_is_the_chain_rule():
    v = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.5], dtype=torch.float64, requires_grad=True)
    w = effective_weight(v, 1.25)
    torch.testing.assert_close(w, torch.sign(v) * v.abs() ** 1.25)
    w.sum().backward()
    torch.testing.assert_close(v.grad, 1.25 * v.detach().abs() ** 0.25)
    lat = to_latent({"w": np.array([[0.7, -2.0, 0.0]], np.float32)}, 1.25, ["w"])
    back = to_effective(lat, 1.25, ["w"])
    np.testing.assert_allclose(back["w"], [[0.7, -2.0, 0.0]], rtol=1e-6)


def test_official_init_is_truncated_lecun_in_effective_weights():
    model = powerprop_model(build_model("small-cnn", seed=0), alpha=1.25)
    init_weights(model, 1.25, torch.Generator().manual_seed(1))
    w = effective_weight(model.fc1.weight.detach(), 1.25)
    std = math.sqrt(1 / 256) / 0.87962566103423978
    assert float(w.abs().max()) <= 2 * std * (1 + 1e-5)
    assert abs(float(w.std()) / math.sqrt(1 / 256) - 1) < 0.05
    assert torch.all(model.fc1.bias == 0)


def _saved_inputs(layer, x):
    """Run forward+backward, capturing what autograd saved (the tensors shaped like x)."""
    saved = []

    def pack(t):
        if t.shape == x.shape:
            saved.append(t.detach().clone())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = layer(x)
    out.pow(2).sum().backward()
    return saved


@pytest.mark.parametrize("s", [0.5, 0.8, 0.95])
def test_saved_activation_density_is_one_minus_layer_sparsity(s):
    torch.manual_seed(1)
    lin = PowerpropLinear(100, 30, alpha=1.25)
    zero = _sparsify_(lin.weight, s, seed=2)
    s_l = float(zero.float().mean())
    x = torch.randn(32, 100)
    saved = _saved_inputs(lin, x)
    assert len(saved) == 1
    density = float((saved[0] != 0).float().mean())
    assert abs(density - (1 - s_l)) <= 1.0 / x.numel() + 1e-12
    kept = saved[0] != 0
    assert torch.equal(saved[0][kept], x[kept])                 # kept entries are untouched
    assert float(x[kept].abs().min()) >= float(x[~kept].abs().max())   # the largest |x|

    conv = PowerpropConv2d(4, 6, 3, alpha=1.25)
    zero = _sparsify_(conv.weight, s, seed=3)
    s_c = float(zero.float().mean())
    x1, x2 = torch.randn(8, 4, 10, 10), 2 * torch.randn(8, 4, 10, 10)
    d1 = float((_saved_inputs(conv, x1)[0] != 0).float().mean())
    assert abs(d1 - (1 - s_c)) <= 1.0 / x1.numel() + 1e-12
    thr = conv.in_threshold
    assert thr > 0
    # later batches reuse the first batch's threshold (official quirk), not a fresh top-k
    d2 = float((_saved_inputs(conv, x2)[0] != 0).float().mean())
    assert conv.in_threshold == thr
    assert d2 == pytest.approx(float((x2.abs() >= thr).float().mean()), abs=0)
    assert d2 > (1 - s_c) + 0.05                               # x2 is larger: more survive
    # eval mode: no activation pruning, output unchanged
    conv.eval()
    assert _saved_inputs(conv, x1) == [] or all(torch.equal(t, x1) for t in _saved_inputs(conv, x1))


def test_dense_conv_keeps_every_batch_whole_and_stores_no_threshold():
    # official: in_threshold is only updated when the weight sparsity is non-zero, so in round 1
    # (dense model) a later batch with smaller |x| than the first batch's minimum loses nothing
    torch.manual_seed(4)
    conv = PowerpropConv2d(3, 4, 3, alpha=1.25)
    assert int(torch.count_nonzero(conv.weight)) == conv.weight.numel()
    x1, x2 = torch.randn(4, 3, 8, 8), 1e-6 * torch.randn(4, 3, 8, 8)
    assert bool((x2.abs() < x1.abs().min()).all())     # a stored min|x1| would drop all of x2
    for x in (x1, x2):
        (saved,) = _saved_inputs(conv, x)
        assert torch.equal(saved, x)
        assert conv.in_threshold == -1.0
    # once the layer is sparse, the first sparse batch fixes the threshold
    _sparsify_(conv.weight, 0.5, seed=5)
    _saved_inputs(conv, x1)
    assert conv.in_threshold > 0


def test_custom_backward_input_grad_exact_weight_grad_from_pruned_input():
    torch.manual_seed(3)
    for make, x in ((lambda: PowerpropConv2d(3, 5, 3, padding=1, alpha=1.25), torch.randn(4, 3, 7, 7)),
                    (lambda: PowerpropLinear(12, 6, alpha=1.25), torch.randn(9, 12))):
        layer = make()
        _sparsify_(layer.weight, 0.7)
        xa = x.clone().requires_grad_(True)
        layer(xa).pow(2).sum().backward()
        thr = layer.in_threshold if isinstance(layer, PowerpropConv2d) else None
        # reference by plain autograd: full input for the output, pruned input for the weight grad
        w = effective_weight(layer.weight.detach(), 1.25).requires_grad_(True)
        xb = x.clone().requires_grad_(True)
        fn = (lambda inp, ww: F.conv2d(inp, ww, layer.bias, padding=1)) if thr is not None else \
             (lambda inp, ww: F.linear(inp, ww, layer.bias))
        fn(xb, w.detach()).pow(2).sum().backward()
        torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-5, atol=1e-5)
        if thr is None:
            s_l = 1.0 - int(torch.count_nonzero(layer.weight)) / layer.weight.numel()
            k = math.ceil((1.0 - s_l) * x.numel())
            thr = float(x.abs().flatten().sort(descending=True).values[k - 1])
        xp = torch.where(x.abs() >= thr, x, torch.zeros_like(x))
        out_full = fn(x, w.detach())
        go = 2 * out_full
        gw = torch.autograd.grad(fn(xp, w), w, go)[0]
        gw_v = gw * 1.25 * layer.weight.detach().abs() ** 0.25
        torch.testing.assert_close(layer.weight.grad, gw_v, rtol=1e-4, atol=1e-5)


# -- pruning and metrics ------------------------------------------------------------------------
def test_global_pruning_keeps_exactly_the_largest_and_density_is_one_minus_s():
    rng = np.random.default_rng(0)
    params = {"a.weight": rng.standard_normal((30, 40)).astype(np.float32),
              "a.bias": rng.standard_normal(30).astype(np.float32),
              "b.weight": 3 * rng.standard_normal((10, 30, 2, 2)).astype(np.float32)}
    names = prunable_names(params)
    assert names == ["a.weight", "b.weight"]
    for s in (0.5, 0.9, 0.95, 0.99):
        out = prune_global(params, names, s)
        n = 1200 + 1200
        nnz = sum(int(np.count_nonzero(out[k])) for k in names)
        assert nnz == keep_count(n, s) == n - round(s * n)
        assert abs(nnz / n - (1 - s)) <= 1 / n
        np.testing.assert_array_equal(out["a.bias"], params["a.bias"])
        allv = np.concatenate([params[k].ravel() for k in names])
        kept = np.concatenate([out[k].ravel() for k in names])
        thr = np.sort(np.abs(allv))[::-1][nnz - 1]
        assert np.all(np.abs(kept[kept != 0]) >= thr) and np.all(np.abs(allv[kept == 0]) <= thr)
        np.testing.assert_array_equal(kept[kept != 0], allv[kept != 0])


def test_mask_metrics_on_hand_made_masks():
    prev = {"w": np.array([[1, 0, 0, 0], [2, 2, 0, 0]], np.float32), "v": np.array([[0, 5]], np.float32)}
    new = {"w": np.array([[1, 3, 0, 0], [0, 2, 0, 4]], np.float32), "v": np.array([[0, 5]], np.float32)}
    m = mask_metrics(prev, new, ["w", "v"])
    # 10 entries; new non-zeros: 1,3,2,4,5 -> 5; zeros before: 6, grown: (0,1) and (1,3) -> 2
    # intersection: (0,0), (1,1), v[1] -> 3; union: 4 + 2 grown -> 6
    assert m == {"density": 0.5, "regrowth": 0.2, "regrowth_of_zeros": 2 / 6, "mask_iou": 0.5}
    same = mask_metrics(new, new, ["w"])
    assert same["regrowth"] == 0.0 and same["mask_iou"] == 1.0


def test_server_is_weighted_fedavg_with_union_support_and_reports_regrowth():
    algo, cfg = TopKPrune(), TopKPrune().make_config(sparsity=0.5)
    global_ = {"l.weight": np.array([[1.0, 2.0, 0.0, 0.0]], np.float32), "l.bias": np.zeros(1, np.float32)}
    state = algo.init_server(global_, cfg, 2)
    u1 = {"l.weight": np.array([[1.0, 0.0, 3.0, 0.0]], np.float32), "l.bias": np.ones(1, np.float32)}
    u2 = {"l.weight": np.array([[4.0, 0.0, 0.0, 0.0]], np.float32), "l.bias": np.zeros(1, np.float32)}
    res = algo.server_update(state, [Update(0, u1, 30), Update(1, u2, 10)], cfg)
    np.testing.assert_allclose(res.state.params["l.weight"], [[1.75, 0.0, 2.25, 0.0]])
    np.testing.assert_allclose(res.state.params["l.bias"], [0.75])
    m = res.metrics
    assert m["density"] == 0.5 and m["regrowth"] == 0.25 and m["mask_iou"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="non-zero"):
        algo.check_update(state, {"l.weight": np.ones((1, 4), np.float32), "l.bias": np.zeros(1, np.float32)}, cfg)


# -- real messages --------------------------------------------------------------------------------
def _client(seed=0):
    model = build_model("small-cnn", seed=seed, init="lecun_normal")
    g = torch.Generator().manual_seed(5)
    x = torch.randn(64, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (64,), generator=g)
    return model, ClientData(3, x, y, model, torch.Generator().manual_seed(7))


def test_uplink_is_topk_frames_that_decode_to_the_pruned_local_model_exactly():
    model, data = _client()
    algo = TopKPrune()
    cfg = algo.make_config(lr=0.05, sparsity=0.95)
    state = algo.init_server({k: v.detach().numpy().copy() for k, v in model.state_dict().items()}, cfg, 1)
    gen_state = data.generator.get_state()
    channel = Channel()
    result = algo.client_update(None, state.params, data, cfg, channel.link(round=3, client=3, direction="up"))
    decoded = channel.deliver(result.message)
    # independent reference: the same local SGD, then the pruning
    data.generator.set_state(gen_state)
    trained, _ = local_sgd(data, state.params, cfg.train_config(3))
    expected = prune_global(trained, prunable_names(trained), 0.95)
    assert list(decoded) == list(expected)
    for k in expected:
        np.testing.assert_array_equal(decoded[k], expected[k])
    names = prunable_names(expected)
    n = sum(expected[k].size for k in names)
    assert sum(int(np.count_nonzero(decoded[k])) for k in names) == keep_count(n, 0.95)
    sections = result.message.tensor_sections
    for k in expected:   # weights: positions + values; biases: dense values only
        assert ("index" in sections[k]) == (k in names)
    nnz = sum(int(np.count_nonzero(expected[k])) for k in names)
    assert result.message.nbits < 32 * (nnz + sum(v.size for k, v in expected.items() if k not in names)) + 16 * nnz
    algo.check_update(state, decoded, cfg)


def test_sparsyfed_with_alpha_one_and_no_activation_pruning_equals_topk_prune():
    runs = {}
    for name, extra in (("topk-prune", []), ("sparsyfed", ["algo.alpha=1.0", "algo.prune_activations=false"]),
                        ("sparsyfed", [])):
        sim = Simulation(tiny(name, *extra))
        sim.step()
        sim.step()
        runs[(name, bool(extra))] = sim
    a, b, c = runs[("topk-prune", False)], runs[("sparsyfed", True)], runs[("sparsyfed", False)]
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    assert a.ledger.rows() == b.ledger.rows()
    for ma, mb in zip(a.metrics, b.metrics):
        assert ma["accuracy"] == mb["accuracy"] and ma["server_regrowth"] == mb["server_regrowth"]
    # the real SparsyFed is a different run (the comparison above can fail)
    assert any(not np.array_equal(a.params[k], c.params[k]) for k in a.params)
    # and its zeros stay zero on the clients: round 2 regrows nothing when the aggregate of
    # round 1 already is the support every client trains in
    m = c.metrics
    assert m[1]["server_regrowth"] == 0.0
    assert 0 < m[1]["server_act_density"] < 1.0
    assert m[0]["server_local_density"] == pytest.approx(0.1, abs=1e-4)
    # the downlink of round 2 is the sparse global model: far below 32 bits per parameter
    assert m[1]["downlink_bits"] / 2 < 0.5 * 32 * a.num_params
    summary = c.summary()
    assert summary["mean_regrowth"] == 0.0 and summary["final_density"] == m[1]["server_density"]


def test_dense_baseline_and_config_validation():
    sim = Simulation(tiny("topk-prune", "algo.sparsity=0.0", "rounds=1"))
    line = sim.step()
    assert line["server_local_density"] > 0.99 and line["server_density"] > 0.99
    assert sim.ledger.by_section(direction="up").get("index", 0) == 0      # Dense messages
    with pytest.raises(ConfigError):
        tiny("topk-prune", "algo.alpha=1.25")               # no Powerprop in the baseline
    with pytest.raises(ConfigError):
        tiny("sparsyfed", "algo.sparsity=1.0")
    with pytest.raises(ConfigError):
        tiny("sparsyfed", "algo.alpha=0.5")
    cfg = get_algorithm("sparsyfed").make_config()
    assert cfg.lr_at(1) == 0.5 and cfg.lr_at(701) == pytest.approx(0.01)
    assert cfg.lr_at(351) == pytest.approx(math.sqrt(0.5 * 0.01))
    assert isinstance(get_algorithm("topk-prune"), TopKPrune) and isinstance(get_algorithm("sparsyfed"), SparsyFed)


def test_powerprop_model_keeps_state_dict_names_and_is_plain_at_alpha_one():
    model = build_model("small-cnn", seed=0)
    net = powerprop_model(model, alpha=1.0, prune_activations=False)
    assert list(net.state_dict()) == list(model.state_dict())
    assert all(isinstance(m, (PowerpropConv2d, PowerpropLinear)) for m in net.modules()
               if isinstance(m, (nn.Conv2d, nn.Linear)))
    x = torch.randn(4, 1, 28, 28)
    assert torch.equal(net(x), model(x))
    assert net.conv1.weight is not model.conv1.weight
