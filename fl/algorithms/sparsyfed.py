"""SparsyFed (Guastella et al., ICLR 2025) and its Top-K pruning baseline (docs/sparsyfed.md; issue 7).

Client round of ``sparsyfed`` (official ``client.fit`` -> ``get_train_and_prune``)::

    v = received global latent weights (conv/linear), BN params and biases
    net = fresh Powerprop copy of the model (w = sign(v)|v|^alpha, activation pruning on)
    lr_t = lr * (lr_final / lr) ** ((t - 1) / lr_decay_rounds)       t = 1, 2, ... the round
    SGD(lr_t, momentum 0, weight decay 1e-3), fresh; 1 epoch of batch 16
    global unstructured magnitude pruning of all conv/linear latent weights to sparsity S:
        keep the N - round(S * N) largest |v| over all those layers jointly
    uplink: the pruned local model, conv/linear weights as ``TopK(k="nnz")`` frames (positions +
            fp32 values), biases / BN as ``Dense``, one bundle

Server: FedAvg of the decoded local models weighted by ``num_samples`` (server lr 1), **not**
re-pruned, so the global support is the union of the client masks. Downlink (``broadcast``):
the global model with the same per-tensor codecs (``TopK(k="nnz")`` for conv/linear weights:
sparse where it is). The evaluated model is the aggregate, with activation pruning off.

``topk-prune`` (the "Top-K" baseline, docs/sparsyfed.md, "Baselines in the same code base"): the
same client round on the *plain* model (alpha = 1, no Powerprop, no activation pruning), the same
pruning, messages and server. With ``sparsity = 0`` it is the dense FedAvg baseline of the same
code base (no pruning, ``Dense`` uplink and downlink).

Per-round server metrics (``server_*`` in ``metrics.jsonl``), over the conv/linear weights:
``density`` (non-zeros of the new global model / N), ``regrowth`` (entries zero in the previous
global model and non-zero now / N), ``regrowth_of_zeros`` (the same / previous zeros),
``mask_iou`` (|M_prev & M_new| / |M_prev | M_new|), ``local_density`` and ``act_density``
(client means; ``act_density`` = mean density of the saved activations). Accuracy and bits come
from the engine.

A consequence worth knowing: with Powerprop (alpha > 1) a zero latent weight gets an exactly-zero
gradient and zero weight decay, so every client's pruned model is supported inside the global
support it received, and so is their weighted mean. SparsyFed's regrowth under FedAvg is
therefore **exactly zero** after round 1 (global density can only fall towards 1 - S); the
paper's "200x smaller" (non-zero) figure must come from something docs/sparsyfed.md does not
describe (e.g. an adaptive server optimizer). Top-K regrows because zero weights get gradients.

Deviations from the official code as docs/sparsyfed.md describes it, named on purpose:

* The lr schedule uses ``t - 1`` (round 1 trains with ``lr``); the official code passes Flower's
  1-based server round. The decay horizon ``lr_decay_rounds`` stays 700 by default even when a
  run is shorter (as the code's fixed 700).
* Top-k ties in the pruning are broken towards the lower index in the order of the state_dict
  (``sparsecodec.topk_indices_global``), not by ``torch.topk``; the number kept is torch's
  ``N - round(S * N)`` (Python round).
* No 10 % per-client validation split (the engine evaluates the global model on the test set).
* Client sampling and minibatch order come from the engine's seeded generators (not seed 9421).
* Prunable tensors are identified as the >= 2-D floating entries of the state_dict (checked on
  the client against the model's Linear / Conv2d layers).
* The hyperparameter-free alpha (``alpha < 0`` in the code) is not implemented.

    >>> cfg = SparsyFed().make_config()
    >>> cfg.alpha, cfg.sparsity, cfg.batch_size, cfg.momentum, round(cfg.lr_at(701), 6)
    (1.25, 0.95, 16, 0.0, 0.01)
    >>> keep_count(44_000, 0.95)
    2200
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

import sparsecodec as sc

from ..channel import Link, Message
from ..powerprop import powerprop_model, prunable_modules, to_effective, to_latent
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, TrainConfig,
                   Update, _check, average, check_finite_tensors, evaluate, local_sgd)

__all__ = ["SparsyFed", "TopKPrune", "SparsyFedConfig", "TopKPruneConfig", "prunable_names",
           "keep_count", "prune_global", "mask_metrics", "message_codecs"]

Tensors = dict[str, np.ndarray]


@dataclass(frozen=True)
class TopKPruneConfig(TrainConfig):
    """Options shared by both algorithms (official ``cifar_resnet18.yaml`` defaults,
    docs/sparsyfed.md, "Hyperparameters").

    ``lr`` -> ``lr_final`` exponentially over ``lr_decay_rounds``; SGD without momentum, weight
    decay 1e-3; batch 16, 1 epoch; sample-weighted FedAvg; target sparsity ``sparsity``.
    """

    lr: float = 0.5
    lr_final: float = 0.01
    lr_decay_rounds: int = 700
    momentum: float = 0.0
    epochs: int = 1
    batch_size: int = 16
    weight_decay: float = 1e-3
    weighted: bool = True
    sparsity: float = 0.95

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.lr_final > 0, f"lr_final must be > 0, got {self.lr_final}")
        _check(self.lr_decay_rounds >= 1, f"lr_decay_rounds must be >= 1, got {self.lr_decay_rounds}")
        _check(0.0 <= self.sparsity < 1.0, f"sparsity must be in [0, 1), got {self.sparsity}")

    def lr_at(self, round: int) -> float:
        """``lr * (lr_final / lr) ** ((round - 1) / lr_decay_rounds)`` (round counts from 1)."""
        return float(self.lr * (self.lr_final / self.lr) ** ((round - 1) / self.lr_decay_rounds))

    def train_config(self, round: int) -> TrainConfig:
        return TrainConfig(lr=self.lr_at(round), momentum=self.momentum, epochs=self.epochs,
                           batch_size=self.batch_size, weight_decay=self.weight_decay,
                           weighted=self.weighted)


@dataclass(frozen=True)
class SparsyFedConfig(TopKPruneConfig):
    """SparsyFed: ``alpha`` (Powerprop exponent, 1.25) and ``prune_activations`` on top of
    :class:`TopKPruneConfig`."""

    alpha: float = 1.25
    prune_activations: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.alpha >= 1.0 and np.isfinite(self.alpha), f"alpha must be >= 1, got {self.alpha}")


# -- helpers ---------------------------------------------------------------------------------------
def prunable_names(params: Mapping[str, np.ndarray]) -> list[str]:
    """The conv/linear weights: the >= 2-D entries (biases and BatchNorm tensors are 1-D)."""
    return [k for k, v in params.items() if np.ndim(v) >= 2]


def keep_count(n: int, sparsity: float) -> int:
    """How many of ``n`` weights survive pruning: ``n - round(sparsity * n)`` as torch's
    ``prune.global_unstructured(amount=sparsity)``."""
    return int(n) - int(round(float(sparsity) * int(n)))


def prune_global(params: Mapping[str, np.ndarray], names: Sequence[str], sparsity: float) -> Tensors:
    """Global unstructured magnitude pruning: keep the ``keep_count(N, sparsity)`` largest
    ``|v|`` over ``names`` jointly (ties: earlier tensor, then lower index), zero the rest;
    other tensors are copied unchanged.

    >>> p = {"a": np.array([[0.1, -5.0]], np.float32), "b": np.array([[2.0, 0.3]], np.float32),
    ...      "bias": np.ones(2, np.float32)}
    >>> out = prune_global(p, ["a", "b"], 0.5)
    >>> out["a"].tolist(), out["b"].tolist(), out["bias"].tolist()
    ([[0.0, -5.0]], [[2.0, 0.0]], [1.0, 1.0])
    """
    out = {k: np.array(v, np.float32) for k, v in params.items()}
    if sparsity <= 0.0:
        return out
    flats = [out[k].reshape(-1) for k in names]
    k = keep_count(sum(f.size for f in flats), sparsity)
    kept = sc.topk_indices_global(flats, k)
    for name, flat, idx in zip(names, flats, kept):
        pruned = np.zeros_like(flat)
        pruned[idx] = flat[idx]
        out[name] = pruned.reshape(out[name].shape)
    return out


def mask_metrics(prev: Mapping[str, np.ndarray], new: Mapping[str, np.ndarray],
                 names: Sequence[str]) -> dict[str, float]:
    """Density, regrowth and mask IoU of ``new`` against ``prev`` over ``names``.

    >>> prev = {"w": np.array([[1.0, 0.0, 0.0, 2.0]])}
    >>> new = {"w": np.array([[1.0, 3.0, 0.0, 0.0]])}
    >>> m = mask_metrics(prev, new, ["w"])
    >>> m["density"], m["regrowth"], m["regrowth_of_zeros"], round(m["mask_iou"], 4)
    (0.5, 0.25, 0.5, 0.3333)
    """
    n = nnz = grown = zeros_before = inter = union = 0
    for k in names:
        a, b = np.asarray(prev[k]) != 0, np.asarray(new[k]) != 0
        n += a.size
        nnz += int(b.sum())
        zeros_before += int((~a).sum())
        grown += int((~a & b).sum())
        inter += int((a & b).sum())
        union += int((a | b).sum())
    return {"density": nnz / n if n else 0.0, "regrowth": grown / n if n else 0.0,
            "regrowth_of_zeros": grown / zeros_before if zeros_before else 0.0,
            "mask_iou": inter / union if union else 1.0}


def message_codecs(params: Mapping[str, np.ndarray], sparse: bool) -> dict[str, sc.Codec]:
    """Per-tensor codecs: ``TopK(k="nnz")`` (positions + fp32 values) for the conv/linear weights
    when ``sparse``, ``Dense`` (fp32) for everything else."""
    names = set(prunable_names(params)) if sparse else set()
    return {k: sc.TopK(k="nnz") if k in names else sc.Dense() for k in params}


# -- the algorithms ----------------------------------------------------------------------------------
class TopKPrune(Algorithm):
    """The Top-K baseline: plain layers, global magnitude pruning of the local model."""

    name = "topk-prune"
    description = "Top-K pruning (SparsyFed's baseline): plain SGD, global magnitude pruning of the local model to S"
    Config = TopKPruneConfig
    devices = ("cpu", "cuda")      # local_sgd on (a Powerprop copy of) the model, numpy pruning

    # what separates SparsyFed from its baseline
    def _alpha(self, cfg) -> float:
        return 1.0

    def _train(self, data: ClientData, params: Mapping[str, np.ndarray], cfg, round: int):
        trained, stats = local_sgd(data, params, cfg.train_config(round))
        return trained, stats

    # -- server -----------------------------------------------------------------------------
    def init_server(self, params: Mapping[str, np.ndarray], cfg, n_clients: int) -> ServerState:
        """The model's initial weights ``u`` become latent ``v = sign(u)|u|^(1/alpha)``
        (the official init with ``model_options.init = "lecun_normal"``)."""
        return ServerState(to_latent(params, self._alpha(cfg), prunable_names(params)))

    def broadcast(self, state: ServerState, cfg, channel: Link) -> Message:
        return channel.send(state.params, message_codecs(state.params, cfg.sparsity > 0))

    def check_update(self, state: ServerState, tensors: Mapping[str, np.ndarray], cfg) -> None:
        super().check_update(state, tensors, cfg)
        names = prunable_names(state.params)
        nnz = sum(int(np.count_nonzero(tensors[k])) for k in names)
        allowed = keep_count(sum(state.params[k].size for k in names), cfg.sparsity)
        if nnz > allowed:
            raise ValueError(f"update has {nnz} non-zero conv/linear weights, at most {allowed} allowed")

    def server_update(self, state: ServerState, updates: Sequence[Update], cfg) -> ServerResult:
        params = average(updates, cfg.weighted)
        names = prunable_names(state.params)
        metrics: dict[str, Any] = mask_metrics(state.params, params, names)
        for key in ("local_density", "act_density"):
            vals = [u.metrics[key] for u in updates if u.metrics.get(key) is not None]
            metrics[key] = float(np.mean(vals)) if vals else None
        metrics["lr"] = updates[0].metrics.get("lr") if updates else None
        return ServerResult(ServerState(params), metrics)

    # -- client -----------------------------------------------------------------------------
    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The model's tensors with :func:`message_codecs` (k = nnz is sent: it is the data)."""
        return sc.MessageSpec.from_tensors(global_params, message_codecs(global_params, cfg.sparsity > 0))

    def client_update(self, state, global_params: Mapping[str, np.ndarray], data: ClientData,
                      cfg, channel: Link) -> ClientResult:
        names = prunable_names(global_params)
        expected = [f"{m}.weight" for m in prunable_modules(data.model)]
        if sorted(names) != sorted(expected):
            raise ValueError(f"the >= 2-D tensors {names} are not the model's conv/linear weights {expected}")
        trained, stats = self._train(data, global_params, cfg, channel.round)
        check_finite_tensors(trained, "trained model")
        pruned = prune_global(trained, names, cfg.sparsity)
        n = sum(pruned[k].size for k in names)
        stats["local_density"] = sum(int(np.count_nonzero(pruned[k])) for k in names) / n
        stats["lr"] = cfg.lr_at(channel.round)
        message = channel.send(pruned, message_codecs(pruned, cfg.sparsity > 0))
        return ClientResult(state, message, data.num_samples, stats)

    def evaluate(self, state: ServerState, cfg, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 task: str = "classification", batch_size: int = 1000) -> dict[str, float]:
        """The aggregate (not re-pruned), effective weights ``sign(v)|v|^alpha``, no activation pruning."""
        params = to_effective(state.params, self._alpha(cfg), prunable_names(state.params))
        return evaluate(model, params, x, y, task, batch_size)

    def summarize(self, metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        def mean(key: str, first: int) -> float | None:
            vals = [m[key] for m in metrics if m["round"] >= first and m.get(key) is not None]
            return float(np.mean(vals)) if vals else None
        return {"mean_density_after_round_10": mean("server_density", 11),
                "mean_regrowth": mean("server_regrowth", 2),
                "mean_regrowth_after_round_10": mean("server_regrowth", 11),
                "mean_mask_iou": mean("server_mask_iou", 2),
                "final_density": metrics[-1].get("server_density") if metrics else None}


class SparsyFed(TopKPrune):
    """SparsyFed: Powerprop + activation pruning in local training, then the same pruning."""

    name = "sparsyfed"
    description = "SparsyFed: Powerprop (alpha) + activation pruning, global magnitude pruning to S, FedAvg"
    Config = SparsyFedConfig

    def _alpha(self, cfg: SparsyFedConfig) -> float:
        return float(cfg.alpha)

    def _train(self, data: ClientData, params: Mapping[str, np.ndarray], cfg: SparsyFedConfig, round: int):
        net = powerprop_model(data.model, cfg.alpha, cfg.prune_activations)   # fresh every round
        trained, stats = local_sgd(dataclasses.replace(data, model=net), params, cfg.train_config(round))
        layers = [m for m in prunable_modules(net).values() if m.saved_density_count]
        stats["act_density"] = (float(np.mean([m.saved_density_sum / m.saved_density_count for m in layers]))
                                if layers else None)
        return trained, stats
