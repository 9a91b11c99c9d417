"""Tests of fl.models: documented parameter counts (docs/flare.md, docs/reproductions.md), layer
shapes, forward shapes, seeded initialisation (and no use of torch's global RNG), init laws,
double softmax."""

from __future__ import annotations

import doctest
import math

import pytest
import torch
import torch.nn.functional as F

import fl.models as models
from fl.models import MODELS, build_model, count_parameters, init_parameters
from sparsecodec.errors import ConfigError

# (name, options, documented parameter count)
DOCUMENTED_COUNTS = [
    ("flare-fc", {}, 36_356_525),                               # FLARE FC, docs/flare.md "Models"
    ("flare-cnn", {}, 582_026),                                 # 832 + 51,264 + 524,800 + 5,130
    ("small-cnn", {}, 156 + 2_416 + 30_840 + 10_164 + 850),     # LeNet on 28x28, 10 classes
    ("logistic-regression", {}, 7_850),                         # T4 MNIST smoke: d = 7,850
    ("logistic-regression", {"num_classes": 62}, 48_670),      # T4 FEMNIST: d = 48,670
    ("linear-regression", {}, 281),                             # T5 BlogFeedback: d = 281
    ("fedpm-mlp", {}, 784 * 600 + 600 + 600 * 300 + 300 + 300 * 10 + 10),
    ("fedpm-conv4", {}, 640 + 36_928 + 73_856 + 147_584 + 6272 * 256 + 256 + 256 * 256 + 256 + 2_570),
    ("resnet18-cifar", {}, 11_173_962),                         # the CIFAR ResNet-18's count
    ("resnet18-cifar", {"num_classes": 100}, 11_173_962 + 90 * 513),
]


@pytest.mark.parametrize("name, opts, expected", DOCUMENTED_COUNTS)
def test_parameter_counts(name, opts, expected):
    assert count_parameters(build_model(name, device="meta", **opts)) == expected


@pytest.mark.parametrize("width", [1, 16, 4069])
def test_flare_fc_count_formula(width):
    expected = (784 * width + width) + 2 * (width * width + width) + (10 * width + 10)
    assert count_parameters(build_model("flare-fc", device="meta", width=width)) == expected


def test_flare_cnn_layer_shapes():
    shapes = [tuple(p.shape) for p in build_model("flare-cnn", device="meta").parameters()]
    assert shapes == [(32, 1, 5, 5), (32,), (64, 32, 5, 5), (64,), (512, 1024), (512,), (10, 512), (10,)]


def test_flare_fc_is_linear():
    """No hidden activation: the model is affine in its input."""
    model = build_model("flare-fc", seed=0, width=8)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 784, generator=g), torch.randn(4, 784, generator=g)
    zero = model(torch.zeros(1, 784))
    torch.testing.assert_close(model(x + y) - zero, (model(x) - zero) + (model(y) - zero))


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def tiny_input(name, batch=3):
    if name == "linear-regression":
        return torch.randn(batch, 280, generator=gen())
    if name == "resnet18-cifar":
        return torch.rand(batch, 3, 32, 32, generator=gen())
    return torch.rand(batch, 1, 28, 28, generator=gen())


def small_opts(name):
    """Options that keep the wide models CPU-fast in these tests."""
    return {"flare-fc": {"width": 16}, "resnet18-cifar": {"width": 0.125}}.get(name, {})


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forward_shapes(name):
    opts = small_opts(name)
    model = build_model(name, seed=0, **opts)
    out = model(tiny_input(name))
    assert out.shape == ((3,) if name == "linear-regression" else (3, 10))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_num_classes_and_flattening():
    assert build_model("small-cnn", seed=0, num_classes=62)(tiny_input("small-cnn", 2)).shape == (2, 62)
    # the FC models flatten images and flat vectors alike
    model = build_model("logistic-regression", seed=0, init="torch_default")
    x = torch.rand(2, 1, 28, 28, generator=gen())
    torch.testing.assert_close(model(x), model(x.reshape(2, 784)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_seeded_init_is_deterministic_and_leaves_global_rng_alone(name):
    opts = small_opts(name)
    init = "torch_default" if MODELS[name].init == "zeros" else None   # zeros: nothing to compare
    state = torch.random.get_rng_state()
    a = build_model(name, seed=7, init=init, **opts)
    b = build_model(name, generator=torch.Generator().manual_seed(7), init=init, **opts)
    c = build_model(name, seed=8, init=init, **opts)
    assert torch.equal(torch.random.get_rng_state(), state)
    pa, pb, pc = (list(m.state_dict().values()) for m in (a, b, c))
    assert all(torch.equal(x, y) for x, y in zip(pa, pb))
    assert not all(torch.equal(x, y) for x, y in zip(pa, pc))


def test_glorot_normal_law():
    """Keras GlorotNormal: truncated at 2 raw std, and the truncated std equals
    sqrt(2 / (fan_in + fan_out)) thanks to the 0.8796 correction; biases zero."""
    model = build_model("flare-cnn", seed=0)
    for layer, fan_in, fan_out in ((model.fc1, 1024, 512), (model.conv2, 32 * 25, 64 * 25)):
        w = layer.weight.detach().double()
        target = math.sqrt(2.0 / (fan_in + fan_out))
        assert abs(w.std().item() / target - 1) < 0.01
        assert abs(w.mean().item()) < 0.01 * target
        assert w.abs().max().item() <= 2 * target / models.TRUNCATED_NORMAL_STD_CORRECTION
        assert torch.count_nonzero(layer.bias) == 0


def test_lecun_normal_law():
    w = build_model("fedpm-mlp", seed=0, init="lecun_normal").fc1.weight.detach().double()
    assert abs(w.std().item() * math.sqrt(784) - 1) < 0.01


def test_signed_constant_law():
    """FedPM ME_init: every weight and bias is +-e/sqrt(fan_in), both signs about half."""
    model = build_model("fedpm-conv4", seed=0)
    for layer, fan_in in ((model.conv2, 64 * 9), (model.fc1, 6272)):
        c = math.e / math.sqrt(fan_in)
        for t in (layer.weight, layer.bias):
            assert torch.all(torch.isclose(t.abs(), torch.tensor(c), rtol=1e-6))
        assert abs((layer.weight > 0).double().mean().item() - 0.5) < 0.01


def test_torch_default_law_and_zeros():
    model = build_model("small-cnn", seed=0)
    for layer, fan_in in ((model.conv1, 25), (model.fc1, 256)):
        bound = 1 / math.sqrt(fan_in)
        assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
        assert layer.weight.abs().max() > 0.9 * bound   # uniform fills the interval
    lin = build_model("linear-regression", seed=0)
    assert all(torch.count_nonzero(p) == 0 for p in lin.parameters())


DOUBLE_SOFTMAX_MIN_LOSS = math.log((math.e + 9) / math.e)   # ~1.4612, docs/flare.md "Models"


def test_double_softmax_matches_keras_loss():
    single = build_model("flare-cnn", seed=0, double_softmax=False)
    double = build_model("flare-cnn", seed=0, double_softmax=True)
    x = torch.rand(5, 1, 28, 28, generator=gen(2))
    y = torch.tensor([0, 1, 2, 3, 9])
    z, p = single(x), double(x)
    torch.testing.assert_close(p, torch.softmax(z, 1))
    torch.testing.assert_close(p.sum(1), torch.ones(5))
    assert torch.equal(p.argmax(1), z.argmax(1))
    # Keras: Dense(10, softmax) -> Softmax -> SparseCategoricalCrossentropy(probabilities)
    keras_loss = -torch.log(torch.softmax(torch.softmax(z, 1), 1))[torch.arange(5), y].mean()
    torch.testing.assert_close(F.cross_entropy(p, y), keras_loss)
    assert F.cross_entropy(p, y, reduction="none").min() >= DOUBLE_SOFTMAX_MIN_LOSS - 1e-6


def test_double_softmax_loss_floor_is_reached_by_a_confident_model():
    model = build_model("flare-cnn", seed=0)
    with torch.no_grad():
        model.fc2.weight.zero_()
        model.fc2.bias.copy_(torch.tensor([50.0] + [0.0] * 9))
    x = tiny_input("flare-cnn", 2)
    loss = F.cross_entropy(model(x), torch.tensor([0, 0]))
    assert abs(loss.item() - DOUBLE_SOFTMAX_MIN_LOSS) < 1e-5
    # ... while the single-softmax model's loss goes to 0 for the same weights
    model.double_softmax = False
    assert F.cross_entropy(model(x), torch.tensor([0, 0])).item() < 1e-6


def test_errors_list_valid_choices():
    with pytest.raises(ConfigError, match="valid models: .*flare-cnn.*small-cnn"):
        build_model("resnet50", seed=0)
    with pytest.raises(ConfigError, match="valid options: .*double_softmax"):
        build_model("flare-cnn", seed=0, dropout=0.5)
    with pytest.raises(ConfigError, match="seed"):
        build_model("small-cnn")
    with pytest.raises(ConfigError, match="seed"):
        build_model("small-cnn", seed=0, generator=torch.Generator())
    with pytest.raises(ConfigError, match="valid: .*glorot_normal"):
        build_model("small-cnn", seed=0, init="he")


def test_init_parameters_refuses_unknown_parameters():
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.LayerNorm(2))
    with pytest.raises(ConfigError, match="1.weight"):
        init_parameters(model, "zeros", torch.Generator().manual_seed(0))


def test_doctests():
    assert doctest.testmod(models, raise_on_error=False).failed == 0
