"""What every FL algorithm shares: the client/server contract, config conventions, local SGD.

An algorithm is a stateless object with a frozen config dataclass (``Config``, the paper's
defaults) and two halves that run on different machines::

    client_update(state, global_params, data, cfg, channel) -> ClientResult
    server_update(state, updates, cfg)                     -> ServerResult
    broadcast(state, cfg, channel)                         -> Message   (the downlink)

State is passed in and returned, never kept in the algorithm object or in module globals.
``global_params`` and ``updates[i].tensors`` are what the channel decoded **from bytes**; the
only way out of a client is :meth:`fl.channel.Link.send`. Nothing here knows about rounds
loops, sampling or checkpoints, so the same object runs in ``fl.simulation`` and under Flower.

Tensors are ``dict[str, np.ndarray]`` (float32) keyed by the model's ``state_dict`` names
(floating entries only: parameters and float buffers).

Devices: the engine puts the work model and the clients' data on one torch device
(``sim.device``, :func:`resolve_device`); :func:`model_tensors` returns CPU numpy copies, so
what reaches a codec is always on the CPU, and :func:`load_tensors` copies numpy onto the
model's device. An algorithm whose own torch tensors follow the model's device lists
``"cuda"`` in :attr:`Algorithm.devices`; the engine refuses the others on a GPU.

    >>> cfg = TrainConfig(lr=0.1)
    >>> cfg.lr, cfg.momentum, cfg.batch_size
    (0.1, 0.99, 600)
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import sparsecodec as sc
from sparsecodec.errors import ConfigError

from ..channel import Link, Message

__all__ = ["Algorithm", "TrainConfig", "ClientData", "ClientResult", "ServerResult", "Update",
           "ServerState", "NonFiniteUpdateError", "model_tensors", "load_tensors", "local_sgd",
           "evaluate", "check_finite_tensors", "subtract", "average", "make_config",
           "check_device_name", "resolve_device", "run_device", "model_device"]

Tensors = dict[str, np.ndarray]


class NonFiniteUpdateError(ValueError):
    """A client produced NaN/Inf (diverged training); the engine drops it from the round."""


# -- config conventions ----------------------------------------------------------------------
def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


@dataclass(frozen=True)
class TrainConfig:
    """Local training shared by the baselines: plain SGD(momentum), fresh every round.

    Defaults are the FLARE code's MNIST-CNN setting (docs/flare.md, "Hyperparameters"): lr 0.215,
    momentum 0.99 (Keras SGD, reset every round), batch 600 = the whole 600-image shard, one
    epoch, so one SGD step per round. ``weighted=False`` averages clients unweighted, as the
    FLARE code does (its clients hold equal data); ``True`` weights by sample count.
    """

    lr: float = 0.215
    momentum: float = 0.99
    epochs: int = 1
    batch_size: int = 600
    weight_decay: float = 0.0
    weighted: bool = False

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive finite float, got {self.lr}")
        _check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_fields(cfg) -> None:
    """Type-check a config dataclass from its annotations (``int``, ``float | None`` ...)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = typing.get_args(hints[f.name]) or (hints[f.name],)
        if value is None and type(None) in allowed:
            continue
        ok = any((t is float and isinstance(value, (int, float)) and not isinstance(value, bool))
                 or (t is int and isinstance(value, int) and not isinstance(value, bool))
                 or (t in (bool, str) and isinstance(value, t))
                 for t in allowed)
        _check(ok, f"{type(cfg).__name__}.{f.name} must be {hints[f.name]}, got {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and float in allowed and int not in allowed:
            object.__setattr__(cfg, f.name, float(value))   # TOML 1 -> 1.0 for float fields


def make_config(config_cls: type, overrides: Mapping[str, Any], owner: str) -> Any:
    """``config_cls(**overrides)``; an unknown key raises ConfigError listing the valid ones."""
    valid = [f.name for f in dataclasses.fields(config_cls)]
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ConfigError(f"unknown option(s) {unknown} for {owner}; valid options: "
                          + ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(config_cls)))
    return config_cls(**overrides)


# -- devices ---------------------------------------------------------------------------------
def check_device_name(name: Any) -> str:
    """``"cpu"``, ``"cuda"`` or ``"cuda:N"`` (the spellings ``sim.device`` accepts).

    >>> check_device_name("cuda:1")
    'cuda:1'
    >>> check_device_name("tpu")
    Traceback (most recent call last):
    ...
    sparsecodec.errors.ConfigError: sim.device must be 'cpu', 'cuda' or 'cuda:N' (python -m fl run --device cpu|cuda), got 'tpu'
    """
    if not isinstance(name, str) or not re.fullmatch(r"cpu|cuda(:[0-9]+)?", name):
        raise ConfigError("sim.device must be 'cpu', 'cuda' or 'cuda:N' (python -m fl run --device "
                          f"cpu|cuda), got {name!r}")
    return name


def resolve_device(name: str) -> torch.device:
    """The torch device ``sim.device = name`` means on this machine; a GPU this machine does
    not have is a ConfigError saying what to do instead.

    >>> resolve_device("cpu")
    device(type='cpu')
    """
    device = torch.device(check_device_name(name))
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = (f"built for CUDA {torch.version.cuda}" if torch.version.cuda
                     else "a CPU-only build")
            raise ConfigError(f"sim.device={name!r}, but torch sees no CUDA GPU on this machine (torch "
                              f"{torch.__version__}, {build}); run with --device cpu (sim.device='cpu'), "
                              "or on a machine with an NVIDIA GPU and a CUDA build of torch")
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise ConfigError(f"sim.device={name!r}, but this machine has {count} CUDA device(s): "
                              f"use cuda:0 .. cuda:{count - 1}")
    return device


def run_device(name: str, algorithm: "Algorithm") -> torch.device:
    """:func:`resolve_device` for a run of ``algorithm``: refused where the algorithm does not
    run (:attr:`Algorithm.devices`). On a GPU it turns cuDNN's autotuner off and its
    deterministic kernels on, so that a seeded run repeats there."""
    device = resolve_device(name)
    if device.type not in algorithm.devices:
        raise ConfigError(f"algorithm {algorithm.name!r} runs on {' / '.join(algorithm.devices)} only "
                          f"(its own tensors do not follow the model to {device.type} yet); use --device cpu")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    return device


def model_device(model: nn.Module) -> torch.device:
    """Where ``model``'s parameters (else buffers) live; CPU for a model without any."""
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


# -- the contract ----------------------------------------------------------------------------
@dataclass(eq=False)
class ClientData:
    """One client's local data and the work model it trains (shared, overwritten each call).

    ``generator`` orders minibatches; the engine keeps one per client across rounds and
    checkpoints its state. It is a CPU generator whatever the device (the same minibatch order
    on every device; the CPU index tensor it draws indexes ``x`` / ``y`` where they are).
    ``x``, ``y`` and ``model`` are on the run's device (``sim.device``). ``task`` is
    ``"classification"`` or ``"regression"``.
    """

    client_id: int
    x: torch.Tensor
    y: torch.Tensor
    model: nn.Module
    generator: torch.Generator
    task: str = "classification"

    @property
    def num_samples(self) -> int:
        return int(self.x.shape[0])


@dataclass
class ClientResult:
    """What a client half returns: its new state, the one uplink message, and diagnostics."""

    state: Any
    message: Message
    num_samples: int
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Update:
    """A client's update as the server sees it: decoded from the uplink bytes."""

    client: int
    tensors: Mapping[str, np.ndarray]
    num_samples: int
    metrics: Mapping[str, float] = field(default_factory=dict)


@dataclass
class ServerState:
    """The server's state; algorithms extend it. ``params`` is the global model."""

    params: Tensors


@dataclass
class ServerResult:
    state: Any
    metrics: dict[str, float] = field(default_factory=dict)


class Algorithm:
    """Base class: subclasses set ``name``, ``Config``, ``description`` and the two halves."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    Config: ClassVar[type] = TrainConfig
    #: device types (``torch.device.type``) this algorithm runs on: an algorithm lists "cuda"
    #: once every torch tensor it makes itself follows ``data.model``'s device (the base
    #: helpers do); the engine refuses the others with a ConfigError
    devices: ClassVar[tuple[str, ...]] = ("cpu",)

    def make_config(self, **overrides: Any):
        return make_config(self.Config, overrides, f"algorithm {self.name!r}")

    def init_server(self, params: Mapping[str, np.ndarray], cfg, n_clients: int) -> ServerState:
        return ServerState({k: np.array(v, np.float32) for k, v in params.items()})

    def init_client(self, client_id: int, cfg) -> Any:
        return None

    def broadcast(self, state: ServerState, cfg, channel: Link) -> Message:
        """The downlink: the dense global model, lossless fp32 (every baseline here)."""
        return channel.send(state.params, sc.Dense())

    def client_update(self, state, global_params: Mapping[str, np.ndarray], data: ClientData,
                      cfg, channel: Link) -> ClientResult:
        raise NotImplementedError

    def check_update(self, state: ServerState, tensors: Mapping[str, np.ndarray], cfg) -> None:
        """Server-side validation of a decoded uplink before aggregation (raise ValueError to
        drop the client). Default: the same tensor names and shapes as the global model;
        algorithms whose uplink is shaped otherwise override this."""
        names, expected = list(tensors), list(state.params)
        if names != expected:
            raise ValueError(f"update carries tensors {names}, expected {expected}")
        for k, v in tensors.items():
            if v.shape != state.params[k].shape:
                raise ValueError(f"update tensor {k!r} has shape {v.shape}, expected {state.params[k].shape}")

    def server_update(self, state, updates: Sequence[Update], cfg) -> ServerResult:
        raise NotImplementedError

    # -- optional hooks (defaults keep the behaviour of the dense-model baselines) -----------
    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec | None:
        """What both ends know about a client's uplink message, derived from the global model
        the client received (and the server holds) and the config: the tensors' names, dtypes
        and shapes and their codecs (:class:`sparsecodec.MessageSpec`). With
        ``sim.wire = "compact"`` the channel then sends only what the receiver cannot derive.
        Must match what :meth:`client_update` passes to ``send`` (the link checks).
        Default: None, self-describing bundles."""
        return None

    def uplink_side(self, state, cfg) -> Mapping[str, Mapping[str, Any]] | None:
        """Side information the server holds for decoding this round's uplink, per tensor
        (``{name: {"p": probs}}``, e.g. FedPM's global keep-probabilities for MaskCodec);
        never in the bytes. Default: none, the frames say everything."""
        return None

    def evaluate(self, state, cfg, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 task: str = "classification", batch_size: int = 1000) -> dict[str, float]:
        """Test metrics of the global model. Default: load ``state.params`` into ``model``
        and run it; algorithms whose global state is not a set of weights override this."""
        return evaluate(model, state.params, x, y, task, batch_size)

    def summarize(self, metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Extra ``summary.json`` entries computed from the per-round metrics lines (new keys
        only; the engine refuses to overwrite its own). Default: none."""
        return {}


# -- tensors ---------------------------------------------------------------------------------
def model_tensors(model: nn.Module) -> Tensors:
    """The floating entries of ``model.state_dict()`` as float32 numpy copies on the CPU, in
    order (the send boundary: codecs and the wire only ever see these)."""
    return {k: v.detach().cpu().numpy().astype(np.float32, copy=True)
            for k, v in model.state_dict().items() if v.is_floating_point()}


def load_tensors(model: nn.Module, tensors: Mapping[str, np.ndarray]) -> None:
    """Copy ``tensors`` into the model's floating state (every such entry must be present),
    onto whatever device the model is on."""
    state = model.state_dict()
    wanted = [k for k, v in state.items() if v.is_floating_point()]
    missing, extra = sorted(set(wanted) - set(tensors)), sorted(set(tensors) - set(wanted))
    if missing or extra:
        raise ConfigError(f"tensors do not match the model: missing {missing}, unexpected {extra}")
    with torch.no_grad():
        for k in wanted:
            src = torch.from_numpy(np.ascontiguousarray(tensors[k]))
            if tuple(src.shape) != tuple(state[k].shape):
                raise ConfigError(f"tensor {k!r} has shape {tuple(src.shape)}, model needs {tuple(state[k].shape)}")
            state[k].copy_(src)


def check_finite_tensors(tensors: Mapping[str, np.ndarray], what: str = "update") -> None:
    """Raise :class:`NonFiniteUpdateError` naming the first tensor holding NaN/Inf."""
    for name, t in tensors.items():
        if not np.isfinite(t).all():
            bad = int(np.size(t) - np.count_nonzero(np.isfinite(t)))
            raise NonFiniteUpdateError(f"{what} tensor {name!r} has {bad} non-finite value(s)")


def subtract(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> Tensors:
    """``a - b`` per tensor (float32)."""
    return {k: np.subtract(a[k], b[k], dtype=np.float32) for k in a}


def average(updates: Sequence[Update], weighted: bool) -> Tensors:
    """Mean of the updates' tensors, in the order given (so the float32 sums are reproducible).

    Unweighted: ``sum / n``; weighted: ``sum(n_i * t_i) / sum(n_i)``.
    """
    if not updates:
        raise ConfigError("average() needs at least one update")
    weights = [float(u.num_samples) if weighted else 1.0 for u in updates]
    total = float(sum(weights))
    out: Tensors = {}
    for name in updates[0].tensors:
        acc = np.zeros_like(updates[0].tensors[name], dtype=np.float32)
        for u, w in zip(updates, weights):
            if w == 1.0:
                acc += u.tensors[name]
            else:
                acc += np.float32(w) * u.tensors[name]
        out[name] = acc / np.float32(total)
    return out


# -- local training and evaluation -----------------------------------------------------------
def _loss(output: torch.Tensor, y: torch.Tensor, task: str) -> torch.Tensor:
    return F.mse_loss(output, y) if task == "regression" else F.cross_entropy(output, y)


def local_sgd(data: ClientData, params: Mapping[str, np.ndarray], cfg: TrainConfig) -> tuple[Tensors, dict]:
    """``cfg.epochs`` epochs of minibatch SGD(momentum) from ``params`` on ``data``.

    A fresh optimizer every call (the FLARE code's Keras SGD is rebuilt every round). Each
    epoch visits a permutation drawn from ``data.generator``; the last batch may be short.
    Returns the trained tensors and ``{"train_loss": mean minibatch loss, "steps": n}``.
    A non-finite loss stops training early; the caller's finiteness check then drops it.
    """
    model = data.model
    load_tensors(model, params)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                          weight_decay=cfg.weight_decay)
    n = data.num_samples
    batch = min(cfg.batch_size, n)
    losses: list[float] = []
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=data.generator)
        for start in range(0, n, batch):
            idx = order[start:start + batch]
            loss = _loss(model(data.x[idx]), data.y[idx], data.task)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if not math.isfinite(losses[-1]):
                break
        if losses and not math.isfinite(losses[-1]):
            break
    return model_tensors(model), {"train_loss": float(np.mean(losses)) if losses else float("nan"),
                                  "steps": len(losses)}


def evaluate(model: nn.Module, params: Mapping[str, np.ndarray], x: torch.Tensor, y: torch.Tensor,
             task: str = "classification", batch_size: int = 1000) -> dict[str, float]:
    """Test loss (mean over samples) and, for classification, accuracy of ``params``."""
    load_tensors(model, params)
    model.eval()
    total_loss, correct, n = 0.0, 0, int(x.shape[0])
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out = model(x[start:start + batch_size])
            yb = y[start:start + batch_size]
            total_loss += float(_loss(out, yb, task)) * int(yb.shape[0])
            if task != "regression":
                correct += int((out.argmax(dim=1) == yb).sum())
    result = {"test_loss": total_loss / n}
    if task != "regression":
        result["accuracy"] = correct / n
    return result
