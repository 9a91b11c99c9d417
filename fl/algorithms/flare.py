"""FLARE: top-k error correction plus an L1 pull of the stale coordinates (docs/flare.md, "Algorithm").

Greidi & Cohen, *Sparse Training for Federated Learning with Regularized Error Correction*,
arXiv 2312.13795; ported from the official TF/TFF code
(``src/FLARE_utils.py:client_update_my_algo``, ``src/FLARE_regulerizer.py``,
``src/general_utils.py:sparsify_layer``). Client ``i`` in round ``k = 0, 1, ...``::

    tau_k  = TAU / c**(k+1)                       # one global schedule: decays every round,
                                                  # whether or not client i is sampled
    M_l    = |A_l| > percentile_t(|A_l|)          # per tensor l, from the *previous* round's
                                                  # accumulator A (t = 50: above the median)
    target = w_k + A                              # frozen for the whole round
    x = w_k;  opt = SGD(lr, momentum)             # fresh optimizer every round
    for step j over E epochs of minibatches (j counts across epochs):
        if j <  p: loss = CE(x) + tau_k * sum_l sum(M_l * |x_l - target_l|)
        if j == p: opt = SGD(lr, momentum)        # momentum restarts after the p pulled steps
        if j >= p: loss = CE(x)
        x <- opt.step(loss)
    a = (x - w_k) + A;  s = TopK(a);  A <- a - s  # exactly EC (sparsecodec.ErrorFeedback)
    send s                                        # real TopK.flare(R) frames through the Channel
    server: w_{k+1} = w_k + mean_{i in S_k} s_i   # unweighted

With E = 1 and one full-batch step the pulled step starts at ``x = w_k``, where the pull's
gradient is ``-tau_k M * sign(A)``, so FLARE reduces to
``delta = -lr * grad CE(w_k) + lr * tau_k * M * sign(A)`` followed by EC (tests check this).

Faithful to the code: the pull is L1 and masked, on every Linear/Conv weight **and** bias
(Keras ``kernel_regularizer`` and ``bias_regularizer``); its gradient is
``tau * M * sign(x - (A + w_k))`` with ``A + w_k`` rounded to float32 first, as the code
computes it (``abs`` has gradient 0 at 0 in TF and torch); the percentile is
``tfp.stats.percentile(|A|, q=t)`` with its default "nearest" interpolation: the entry of
rank ``round_half_even((n - 1) * t / 100)`` of the sorted ``|A|``, and the mask is strict
``>``; top-k keeps ``round(size * R / 100) + 1`` entries per tensor; the mean is unweighted;
a client that is not sampled keeps its accumulator; ``tau_k`` uses the engine's round
counter (``Link.round``), so it decays every round for everybody.

Deviations (named on purpose; collected with the others in docs/flare.md, "Deviations"):

* Top-k ties (inherited from :class:`sparsecodec.TopK`, see :mod:`fl.algorithms.ec`): the
  code keeps ``|a| > kth`` and so keeps fewer than ``round(k)+1`` entries on exact ties at
  the threshold; we always keep exactly ``round(k)+1``, the lower index winning.
* ``reg_steps = 0``: the code would train its second Keras model from that model's random
  initialisation (a latent bug, no paper config uses p = 0); here p = 0 is plain EC local
  training from ``w_k``.
* The pull is skipped (not computed) when its gradient is exactly zero: an empty mask
  (round 0, ``A = 0``) or ``tau_k = 0``. The momentum still restarts after step p, as in the
  code, so the result is unchanged.
* Minibatches are drawn from the client's generator in a fresh permutation each epoch (as
  every algorithm of this package); the code batches its 600-sample shard in file order
  without shuffling. With the paper's batch = shard size the two are the same batch.
* Only ``nn.Module`` parameters are pulled (the code's models have no float buffers).

Diagnostics in the client's metrics: ``train_loss`` is the mean minibatch cross-entropy
(without the pull term, as for the other algorithms), ``tau`` is ``tau_k`` and ``pulled`` the
number of masked coordinates.

    >>> cfg = FLARE().make_config()
    >>> cfg.tau, cfg.decay, cfg.percentile, cfg.reg_steps, cfg.R, cfg.lr
    (0.05, 1.1, 50.0, 1, 0.001, 0.215)
    >>> round(cfg.tau_at(0), 6), cfg.codec() == sc.TopK.flare(R=0.001)
    (0.045455, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch

import sparsecodec as sc

from ..channel import Link
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, Tensors,
                   Update, _check, _loss, average, check_finite_tensors, load_tensors,
                   model_device, model_tensors, subtract)
from .ec import ECClientState, SparsifierConfig

__all__ = ["FLARE", "FLAREConfig", "FLAREClientState", "stale_mask", "percentile_nearest",
           "flare_local_sgd"]


@dataclass(frozen=True)
class FLAREConfig(SparsifierConfig):
    """FLARE options; defaults are the official MNIST-CNN config (docs/flare.md, "Hyperparameters").

    ``tau`` is TAU, ``decay`` is c (``tau_k = tau / decay**(k+1)``), ``percentile`` is t
    (the mask keeps ``|A|`` strictly above the t-th percentile per tensor), ``reg_steps`` is
    p (pulled minibatch steps per round, counted across epochs). The MNIST-FC setting is
    ``lr=0.001, tau=0.5, decay=1.05`` (``benchmarks/configs/flare/fc.toml``). Local training
    and the message format are those of :class:`fl.algorithms.ec.SparsifierConfig`.
    """

    tau: float = 0.05
    decay: float = 1.1
    percentile: float = 50.0
    reg_steps: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(self.tau >= 0 and math.isfinite(self.tau), f"tau must be a finite float >= 0, got {self.tau}")
        # c < 1 would make tau grow without bound; c = 1 is a constant pull (allowed)
        _check(self.decay >= 1.0 and math.isfinite(self.decay), f"decay must be >= 1, got {self.decay}")
        _check(0.0 <= self.percentile <= 100.0, f"percentile is in [0, 100], got {self.percentile}")
        _check(self.reg_steps >= 0, f"reg_steps must be >= 0, got {self.reg_steps}")

    def tau_at(self, k: int) -> float:
        """``tau_k = tau / decay**(k+1)`` for round ``k`` counted from 0 (the code's schedule)."""
        return float(self.tau) / float(self.decay) ** (int(k) + 1)


class FLAREClientState(ECClientState):
    """The client's accumulator ``A_i``: the residual of its :class:`sparsecodec.ErrorFeedback`."""


# -- the pull ----------------------------------------------------------------------------------
def percentile_nearest(x: np.ndarray, q: float) -> float:
    """``tfp.stats.percentile(x, q)`` with the default interpolation "nearest": the entry of
    rank ``round_half_even((n - 1) * q / 100)`` of ``sorted(x)`` (rank clipped to [0, n-1]).

    >>> percentile_nearest(np.arange(10, dtype=np.float32), 50)   # (10-1)*0.5 = 4.5 -> 4
    4.0
    >>> percentile_nearest(np.arange(32, dtype=np.float32), 50)   # 15.5 -> 16
    16.0
    """
    flat = np.asarray(x).reshape(-1)
    if flat.size == 0:
        raise ValueError("percentile of an empty tensor")
    rank = int(np.clip(np.rint((flat.size - 1) * (float(q) / 100.0)), 0, flat.size - 1))
    return float(np.partition(flat, rank)[rank])


def stale_mask(accumulator: np.ndarray, t: float) -> np.ndarray:
    """FLARE's regularization mask of one tensor: ``|A| > percentile_t(|A|)`` (strict)."""
    mag = np.abs(accumulator)
    return mag > np.asarray(percentile_nearest(mag, t), dtype=mag.dtype)


@dataclass
class _Pull:
    """The masked L1 term of one parameter, ``sum(mask * |x - target|)``, and its gradient."""

    mask: torch.Tensor        # float32 0/1, the parameter's shape
    target: torch.Tensor      # float32 w_k + A, rounded to float32 as the code computes it

    def add_gradient(self, x: torch.Tensor, tau: float) -> None:
        """``x.grad += tau * mask * sign(x - target)``: what autograd gives for
        ``tau * sum(mask * |x - target|)`` (``abs'(0) = 0``), bit for bit (mask and sign are
        0/+-1, so no product rounds), without autograd's five model-sized temporaries."""
        pull = torch.sign(x.detach() - self.target).mul_(self.mask)
        if x.grad is None:          # a parameter the loss does not use: only the pull
            x.grad = pull.mul_(tau)
        else:
            x.grad.add_(pull, alpha=tau)

    def penalty(self, x: torch.Tensor) -> torch.Tensor:
        return (self.mask * (x - self.target).abs()).sum()


def _pulls(feedback: sc.ErrorFeedback, global_params: Mapping[str, np.ndarray], names: Sequence[str],
           t: float, device: torch.device | None = None) -> tuple[dict[str, _Pull], int]:
    """The frozen per-round pull of every parameter whose mask is non-empty, and the mask size."""
    pulls, pulled = {}, 0
    for name in names:
        acc = feedback.residual(name)
        if acc is None:          # round 0 for this client: A = 0, the mask is empty
            continue
        mask = stale_mask(acc, t)
        count = int(np.count_nonzero(mask))
        if count == 0:
            continue
        pulled += count
        target = np.add(acc, global_params[name], dtype=np.float32)   # A + w_server, as the code
        pulls[name] = _Pull(torch.from_numpy(mask.astype(np.float32)).to(device),
                            torch.from_numpy(target).to(device))
    return pulls, pulled


def flare_local_sgd(data: ClientData, params: Mapping[str, np.ndarray], cfg: FLAREConfig,
                    tau: float, pulls: Mapping[str, _Pull]) -> tuple[Tensors, dict]:
    """FLARE's local training: the first ``cfg.reg_steps`` minibatch steps (counted across
    epochs) add ``tau * sum(M * |x - target|)``; then a fresh optimizer (momentum restarts).

    Minibatch order as :func:`fl.algorithms.base.local_sgd` (one permutation per epoch from
    ``data.generator``), so with ``tau = 0`` and no momentum restart both give the same bits.
    """
    model = data.model
    load_tensors(model, params)
    model.train()
    named = [(n, p) for n, p in model.named_parameters() if n in pulls]

    def optimizer():
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay)

    opt = optimizer()
    n = data.num_samples
    batch = min(cfg.batch_size, n)
    losses, step = [], 0
    for _ in range(cfg.epochs):
        order = torch.randperm(n, generator=data.generator)
        for start in range(0, n, batch):
            if step == cfg.reg_steps and step > 0:
                # the code switches to a second Keras model whose momentum slots are new
                opt = optimizer()
            idx = order[start:start + batch]
            loss = _loss(model(data.x[idx]), data.y[idx], data.task)
            losses.append(float(loss.detach()))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if step < cfg.reg_steps and tau > 0:
                for name, p in named:       # the gradient of + tau * sum(M * |x - target|)
                    pulls[name].add_gradient(p, tau)
            opt.step()
            step += 1
            if not math.isfinite(losses[-1]):
                break
        if losses and not math.isfinite(losses[-1]):
            break
    stats = {"train_loss": float(np.mean(losses)) if losses else float("nan"), "steps": step}
    return model_tensors(model), stats


# -- the algorithm -----------------------------------------------------------------------------
class FLARE(Algorithm):
    name = "flare"
    description = ("FLARE: EC top-k per tensor plus a masked L1 pull towards w + A for the "
                   "first p local steps, tau_k = TAU / c^(k+1)")
    Config = FLAREConfig
    devices = ("cpu", "cuda")      # the pulls are made on the model's device

    def init_client(self, client_id: int, cfg: FLAREConfig) -> FLAREClientState:
        return FLAREClientState()


    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The update's tensors are the model's, each coded as in :meth:`client_update`."""
        return sc.MessageSpec.from_tensors(global_params, cfg.codec(), cfg.scope)

    def client_update(self, state: FLAREClientState, global_params: Mapping[str, np.ndarray],
                      data: ClientData, cfg: FLAREConfig, channel: Link) -> ClientResult:
        k = channel.round - 1                      # the engine's rounds count from 1
        tau = cfg.tau_at(k)
        pulls, pulled = {}, 0
        if tau > 0 and cfg.reg_steps > 0:          # otherwise the pull's gradient is exactly 0
            names = [n for n, _ in data.model.named_parameters()]
            pulls, pulled = _pulls(state.feedback, global_params, names, cfg.percentile,
                                   model_device(data.model))
        trained, stats = flare_local_sgd(data, global_params, cfg, tau, pulls)
        delta = subtract(trained, global_params)
        check_finite_tensors(delta)
        # a = delta + A; s = TopK.flare(R)(a) per tensor; A <- a - s, inside the channel
        message = channel.send(delta, cfg.codec(), scope=cfg.scope, feedback=state.feedback)
        stats.update(tau=tau, pulled=pulled)
        return ClientResult(state, message, data.num_samples, stats)

    def server_update(self, state: ServerState, updates: Sequence[Update],
                      cfg: FLAREConfig) -> ServerResult:
        step = average(updates, cfg.weighted)
        return ServerResult(ServerState({k: v + step[k] for k, v in state.params.items()}))
