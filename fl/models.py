"""Models of the reproduced papers (torch), built by name with a seeded initialisation.

Output contract (what the engine may rely on): every classifier returns a ``(N, classes)``
tensor that ``torch.nn.functional.cross_entropy(output, y)`` takes as logits, and whose
argmax is the prediction; ``linear-regression`` returns ``(N,)`` predictions for an MSE loss.
Inputs are batches shaped like :class:`fl.data.Dataset` samples: ``(N, 1, 28, 28)`` images
(the fully connected models flatten any trailing shape), ``(N, 3, 32, 32)`` CIFAR images
(``resnet18-cifar``) or ``(N, features)``.

========================  ============================================  ==========  ==============
name                      layers                                        params      default init
========================  ============================================  ==========  ==============
flare-fc                  784-W-W-W-10, **no** hidden activation        36,356,525  glorot_normal
flare-cnn                 c32(5)-pool-c64(5)-pool-512-10 (+softmax)     582,026     glorot_normal
small-cnn                 LeNet: c6(5)-pool-c16(5)-pool-120-84-10       44,426      torch_default
logistic-regression       784-10 (one Linear)                           7,850       zeros
linear-regression         280-1 (one Linear)                            281         zeros
fedpm-mlp                 784-600-300-10, ReLU                          654,310     signed_constant
fedpm-conv4               c64-c64-pool-c128-c128-pool-256-256-10        1,933,258   signed_constant
resnet18-cifar            c64(3)-BN, 4 stages x 2 BasicBlocks, GAP-10   11,173,962  torch_default
========================  ============================================  ==========  ==============

(params at the default options, W = 4069.) BatchNorm layers are always initialised as torch
does (weight 1, bias 0, running mean 0 / variance 1), whatever the ``init`` scheme; their
running statistics are floating buffers, so they travel with the parameters in
``fl.algorithms.base.model_tensors`` (``num_batches_tracked``, an integer, does not). Initialisation never touches torch's global RNG:
modules are created on the ``meta`` device, materialised with ``to_empty`` and filled from
the ``torch.Generator`` given (or one seeded with ``seed``).

    >>> model = build_model("flare-cnn", seed=0)
    >>> sum(p.numel() for p in model.parameters())
    582026
    >>> model(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from sparsecodec.errors import ConfigError

__all__ = ["MODELS", "ModelSpec", "build_model", "init_parameters", "count_parameters",
           "INIT_SCHEMES", "FlareFC", "FlareCNN", "SmallCNN", "LogisticRegression",
           "LinearRegression", "FedPMMLP", "FedPMConv4", "ResNet18CIFAR", "BasicBlock"]

# Keras' truncated normal divides the target std by the std of a unit normal truncated
# to [-2, 2], so that the truncated samples have the requested std.
TRUNCATED_NORMAL_STD_CORRECTION = 0.87962566103423978


class FlareFC(nn.Module):
    """FLARE's fully connected MNIST model (``toy_FC_demo/models/model_creators_fns.py``).

    ``Input(784) -> Dense(W) -> Dense(W) -> Dense(W) -> Dense(10) -> Softmax`` with **no**
    hidden activations: a deep *linear* model. The width really is 4069 (not 4096):
    36,356,525 parameters. The final Softmax is left to the cross-entropy (single softmax).
    """

    def __init__(self, width: int = 4069, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, width)
        self.fc2 = nn.Linear(width, width)
        self.fc3 = nn.Linear(width, width)
        self.fc4 = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc4(self.fc3(self.fc2(self.fc1(x))))


class FlareCNN(nn.Module):
    """FLARE's MNIST CNN: ``Conv(32,5x5,valid,ReLU) -> MaxPool2 -> Conv(64,5x5,valid,ReLU) ->
    MaxPool2 -> Flatten(1024) -> Dense(512,ReLU) -> Dense(10, softmax) -> Softmax``.

    ``double_softmax=True`` (default, as the official code) returns ``softmax(z)`` so that
    ``cross_entropy(output, y) = -log softmax(softmax(z))[y]``: the Keras model's two
    softmaxes followed by ``SparseCategoricalCrossentropy``. Its loss cannot go below
    ``log((e + 9) / e) ~= 1.4612`` and its gradients are damped (hence the paper's lr 0.215).
    ``double_softmax=False`` returns the logits ``z`` (one softmax; retune the lr).
    Flatten order is torch's (C, H, W), not Keras' (H, W, C): this matters only for
    porting Keras weights, not for training.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10, double_softmax: bool = True):
        super().__init__()
        self.double_softmax = bool(double_softmax)
        self.conv1 = nn.Conv2d(in_channels, 32, kernel_size=5)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=5)
        self.fc1 = nn.Linear(64 * 4 * 4, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)   # 28 -> 24 -> 12
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)   # 12 -> 8 -> 4
        z = self.fc2(F.relu(self.fc1(x.flatten(1))))
        return torch.softmax(z, dim=1) if self.double_softmax else z


class SmallCNN(nn.Module):
    """LeNet-style ``Net`` of the Flower/SparsyFed examples, sized for 28x28 inputs:
    ``c6(5x5) -> ReLU -> MaxPool2 -> c16(5x5) -> ReLU -> MaxPool2 -> 256 -> 120 -> 84 -> classes``
    (ReLU between the linear layers). The CIFAR original flattens 16*5*5 = 400; on 28x28
    it is 16*4*4 = 256. Used by the demo and by the scaled-down SparsyFed runs (T8).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.fc1 = nn.Linear(16 * 4 * 4, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class LogisticRegression(nn.Module):
    """Multinomial logistic regression: one Linear on the flattened input, logits out
    (784 x 62 + 62 = 48,670 parameters on FEMNIST, 7,850 on MNIST)."""

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.linear = nn.Linear(in_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))


class LinearRegression(nn.Module):
    """Least-squares model ``x . w + b``; returns shape ``(N,)`` (BlogFeedback: d = 281)."""

    def __init__(self, in_features: int = 280):
        super().__init__()
        self.linear = nn.Linear(in_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1)).squeeze(-1)


class FedPMMLP(nn.Module):
    """The architecture of FedPM's masked MLP (Flower's ``MaskANN``): 784-600-300-10 with
    ReLU, biases everywhere. Plain layers only: the score/mask machinery (frozen weights,
    Bernoulli masks) belongs to the FedPM algorithm, which wraps these layers."""

    def __init__(self, in_features: int = 784, num_classes: int = 10):
        super().__init__()
        self.fc1 = nn.Linear(in_features, 600)
        self.fc2 = nn.Linear(600, 300)
        self.fc3 = nn.Linear(300, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class FedPMConv4(nn.Module):
    """The architecture of FedPM's Conv4 (``Mask4CNN``, MNIST): 3x3 "same" convs 64, 64,
    pool, 128, 128, pool, then 6272 -> 256 -> 256 -> classes, ReLU, biases everywhere.
    Plain layers only (see :class:`FedPMMLP`)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 3, padding="same")
        self.conv2 = nn.Conv2d(64, 64, 3, padding="same")
        self.conv3 = nn.Conv2d(64, 128, 3, padding="same")
        self.conv4 = nn.Conv2d(128, 128, 3, padding="same")
        self.fc1 = nn.Linear(128 * 7 * 7, 256)
        self.fc2 = nn.Linear(256, 256)
        self.fc3 = nn.Linear(256, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv2(F.relu(self.conv1(x)))), 2)
        x = F.max_pool2d(F.relu(self.conv4(F.relu(self.conv3(x)))), 2)
        x = F.relu(self.fc1(x.flatten(1)))
        return self.fc3(F.relu(self.fc2(x)))


class BasicBlock(nn.Module):
    """ResNet basic block: ``conv3x3(stride)-BN-ReLU-conv3x3-BN`` plus a shortcut, then ReLU.
    The shortcut is the identity, or ``conv1x1(stride)-BN`` when the shape changes (the
    "option B" projection). Convs have no bias (BatchNorm follows each)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet18CIFAR(nn.Module):
    """ResNet-18, CIFAR variant (the SparsyFed paper's CIFAR-10/100 model): a 3x3 stride-1
    stem conv + BN + ReLU (no 7x7 conv, no max-pool, so 32x32 inputs keep their resolution),
    4 stages of 2 :class:`BasicBlock` with 64-128-256-512 channels (stride 1, 2, 2, 2),
    global average pooling and one Linear head. 11,173,962 parameters for 10 classes
    (11,220,132 for 100), the count of the common CIFAR ResNet-18.

    ``width`` multiplies every channel count (rounded, at least 1): ``width=1.0`` is the
    paper's net; a narrow one (e.g. ``0.125``: 8-16-32-64) keeps tests fast. Any spatial
    size works (the pooling is adaptive).

    >>> net = build_model("resnet18-cifar", seed=0, width=0.125, num_classes=100)
    >>> net(torch.zeros(2, 3, 32, 32)).shape
    torch.Size([2, 100])
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, width: float = 1.0):
        super().__init__()
        if (isinstance(width, bool) or not isinstance(width, (int, float))
                or not math.isfinite(width) or width <= 0):
            raise ConfigError(f"width must be a positive finite number, got {width!r}")
        _check_count(in_channels=in_channels, num_classes=num_classes)
        c = [max(1, int(round(base * width))) for base in (64, 128, 256, 512)]
        self.conv1 = nn.Conv2d(in_channels, c[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c[0])
        stages, cin = [], c[0]
        for cout, stride in zip(c, (1, 2, 2, 2)):
            stages.append(nn.Sequential(BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)))
            cin = cout
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.linear = nn.Linear(c[3], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.linear(F.adaptive_avg_pool2d(x, 1).flatten(1))


def _check_count(**values: Any) -> None:
    for key, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{key} must be a positive int, got {value!r}")


def _fans(weight: torch.Tensor) -> tuple[int, int]:
    """(fan_in, fan_out) as Keras and torch define them: in/out features x kernel area."""
    receptive = math.prod(weight.shape[2:])
    return weight.shape[1] * receptive, weight.shape[0] * receptive


def _truncated_normal_(t: torch.Tensor, std: float, g: torch.Generator) -> None:
    """N(0, std^2) restricted to [-2 std, 2 std] by redrawing the entries outside, as
    TensorFlow's truncated_normal does (torch's trunc_normal_ uses erfinv: ~20x slower,
    seconds for FLARE's 36M-parameter model)."""
    t.normal_(0.0, std, generator=g)
    outside = t.abs() > 2 * std
    while bool(outside.any()):
        t[outside] = torch.empty(int(outside.sum()), dtype=t.dtype).normal_(0.0, std, generator=g)
        outside = t.abs() > 2 * std


def _glorot_normal(w, b, g):
    fan_in, fan_out = _fans(w)
    _truncated_normal_(w, math.sqrt(2.0 / (fan_in + fan_out)) / TRUNCATED_NORMAL_STD_CORRECTION, g)
    if b is not None:
        nn.init.zeros_(b)


def _lecun_normal(w, b, g):
    _truncated_normal_(w, math.sqrt(1.0 / _fans(w)[0]) / TRUNCATED_NORMAL_STD_CORRECTION, g)
    if b is not None:
        nn.init.zeros_(b)


def _torch_default(w, b, g):
    # What nn.Linear / nn.Conv2d.reset_parameters do (kaiming_uniform a=sqrt(5) = U(+-1/sqrt(fan_in))).
    nn.init.kaiming_uniform_(w, a=math.sqrt(5), generator=g)
    if b is not None:
        bound = 1.0 / math.sqrt(_fans(w)[0])
        nn.init.uniform_(b, -bound, bound, generator=g)


def _signed_constant(w, b, g):
    # FedPM "ME_init": every weight and bias is +-c with probability 1/2, c = e / sqrt(fan_in).
    c = math.e * math.sqrt(1.0 / _fans(w)[0])
    for t in (w, b) if b is not None else (w,):
        sign = torch.randint(0, 2, t.shape, generator=g, dtype=torch.int64) * 2 - 1
        with torch.no_grad():
            t.copy_(sign.to(t.dtype) * c)


def _zeros(w, b, g):
    nn.init.zeros_(w)
    if b is not None:
        nn.init.zeros_(b)


INIT_SCHEMES: dict[str, Callable] = {
    "glorot_normal": _glorot_normal,     # Keras GlorotNormal (truncated), zero bias: FLARE
    "lecun_normal": _lecun_normal,       # truncated N(0, 1/fan_in), zero bias: SparsyFed init_weights
    "torch_default": _torch_default,     # torch's own reset_parameters law
    "signed_constant": _signed_constant, # FedPM ME_init (weights and biases)
    "zeros": _zeros,                     # convex models
}


def init_parameters(model: nn.Module, scheme: str, generator: torch.Generator) -> nn.Module:
    """Fill every Linear / Conv2d weight and bias of ``model`` in place, in module order,
    with ``scheme``; BatchNorm layers get torch's reset (weight 1, bias 0, running statistics
    0 / 1, no random draw) whatever the scheme.

    Raises ConfigError for an unknown scheme or for a parameter or buffer outside these
    layers (a model this function does not know how to initialise is not silently left
    random: after ``to_empty`` every tensor holds uninitialised memory).
    """
    if scheme not in INIT_SCHEMES:
        raise ConfigError(f"unknown init {scheme!r}; valid: {', '.join(sorted(INIT_SCHEMES))}")
    done = set()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                INIT_SCHEMES[scheme](module.weight, module.bias, generator)
                done.update(id(p) for p in (module.weight, module.bias) if p is not None)
            elif isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.reset_parameters()   # ones / zeros and reset_running_stats()
                done.update(id(t) for t in (*module.parameters(recurse=False),
                                            *module.buffers(recurse=False)))
    left = [name for name, t in (*model.named_parameters(), *model.named_buffers())
            if id(t) not in done]
    if left:
        raise ConfigError(f"init_parameters does not know how to initialise {left}")
    return model


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: its class, default init scheme and a one-line description."""

    name: str
    cls: type[nn.Module]
    init: str
    description: str

    def option_defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in inspect.signature(self.cls).parameters.values()}


MODELS: dict[str, ModelSpec] = {spec.name: spec for spec in (
    ModelSpec("flare-fc", FlareFC, "glorot_normal", "FLARE deep linear 784-W-W-W-10 (W=4069)"),
    ModelSpec("flare-cnn", FlareCNN, "glorot_normal", "FLARE MNIST CNN, 582k params, double softmax flag"),
    ModelSpec("small-cnn", SmallCNN, "torch_default", "LeNet-style CNN (6c5-16c5-120-84), 44k params"),
    ModelSpec("logistic-regression", LogisticRegression, "zeros", "multinomial logistic regression"),
    ModelSpec("linear-regression", LinearRegression, "zeros", "least-squares linear model, (N,) output"),
    ModelSpec("fedpm-mlp", FedPMMLP, "signed_constant", "FedPM MaskANN shape 784-600-300-10 (unmasked)"),
    ModelSpec("fedpm-conv4", FedPMConv4, "signed_constant", "FedPM Conv4 shape for MNIST (unmasked)"),
    ModelSpec("resnet18-cifar", ResNet18CIFAR, "torch_default",
              "ResNet-18, CIFAR variant (3x3 stem, no max-pool, BatchNorm), 11.2M params, width option"),
)}


def build_model(name: str, *, seed: int | None = None, generator: torch.Generator | None = None,
                init: str | None = None, device: str | torch.device = "cpu",
                **opts: Any) -> nn.Module:
    """Build model ``name`` (a key of :data:`MODELS`) with options ``opts``, seeded.

    Give ``seed`` or an explicit CPU ``generator`` (exactly one; the same seed gives the
    same parameters, bit for bit). ``init`` overrides the model's default scheme (a key of
    :data:`INIT_SCHEMES`). ``device="meta"`` returns an uninitialised shape-only model, for
    counting parameters of large models without allocating them (no seed needed).

    >>> a, b = build_model("small-cnn", seed=3), build_model("small-cnn", seed=3)
    >>> all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    True
    >>> count_parameters(build_model("flare-fc", device="meta"))
    36356525
    """
    spec = MODELS.get(name)
    if spec is None:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(sorted(MODELS))}")
    valid = spec.option_defaults()
    unknown = sorted(set(opts) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for model {name!r}; valid options: "
                          + ", ".join(f"{k}={v!r}" for k, v in valid.items()))
    with torch.device("meta"):
        model = spec.cls(**opts)
    if torch.device(device).type == "meta":
        return model
    if (seed is None) == (generator is None):
        raise ConfigError("build_model needs exactly one of seed= or generator= "
                          "(initialisation is always seeded explicitly)")
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    model = model.to_empty(device="cpu")
    init_parameters(model, spec.init if init is None else init, generator)
    return model.to(device)


def count_parameters(model: nn.Module) -> int:
    """Total number of parameter entries (works on ``meta`` models too)."""
    return sum(p.numel() for p in model.parameters())
