"""ProxSkip / Scaffnew and Sparse-ProxSkip, with the zero-sum invariant (docs/sparse_proxskip.md).

Three algorithms share one module (one state machine, three pruning modes):

* ``proxskip`` (Mishchenko et al., ICML 2022; the dense baseline). Client ``i`` keeps a control variate ``h_i``
  (dense, ``sum_i h_i = 0``, start 0). From the received global model ``x = xbar``::

      K = 1/p times:   x <- x - gamma (g_i(x) - h_i)           g_i: minibatch gradient
      u_i = x - (gamma/p) h_i                                    uplink, dense fp32
      server:  xbar = (1/n) sum_j u_j                            downlink, dense fp32
      client, on receiving xbar:  h_i <- (p/gamma)(xbar - u_i)

  The last line is ProxSkip's ``h_i <- h_i + (p/gamma)(xbar - x_i)`` rewritten with ``u_i`` (the
  same value in exact arithmetic); it is written this way so that the sparse variant below
  runs the *same float operations* and reduces to this one bit for bit at sparsity 0.

* ``sparse-proxskip`` (client pruning, STE; the paper's equations are not public, so this is a
  reading; ``algo.variant`` picks one of three, derived in docs/sparse_proxskip.md).
  ``k = round((1 - sparsity) d)``, ``TopK`` global over the whole model vector::

      K = 1/p times:   g = grad f_i(TopK(x))                     Straight-Through Estimator:
                       (optional: g <- g min(1, clip/|g|))       gradient at the pruned model,
                       x <- x - gamma (g - h_i)                  step on the dense latent
                       (local=True: x <- TopK(x))                Sparse-ProxSkip-Local
      server:  xbar = (1/n) sum_j z_j                            downlink: up to n k non-zeros,
                                                                 TopK(k="nnz"), exact
      "latent" (default):    z_i = TopK(x - (gamma/p) h_i)       h_i <- (p/gamma)(xbar - z_i)
                             next round from xbar + e_i, e_i = (x - (gamma/p) h_i) - z_i
                             (what the client pruned stays in its dense latent)
      "reset":               as "latent", next round from xbar (e_i dropped)
      "randprox":            z_i = TopK(x)                       h_i <- h_i + (p/gamma)(xbar - z_i)
                             next round from xbar
      (local=True: the start point is pruned too; h always uses the un-pruned xbar)

  Each keeps ``sum_i h_i = 0``: ``sum_i (xbar - z_i) = 0`` because xbar is the mean of the
  z_i, so the reset sum is 0 every round and the randprox sum never changes from its start
  at 0. Each is ProxSkip at sparsity 0: reset and latent bit for bit (e_i = 0), randprox in
  exact arithmetic (``mean x = mean u`` since ``sum h = 0``), to float32 rounding here.
  **Default ``"latent"``**: the Straight-Through Estimator's dense latent is kept across rounds
  (model-level error feedback), its h-update is ProxSkip's own at the client's real new
  iterate ``xbar + e_i``, and it is the only reading whose delivered k-sparse model beats
  server pruning and FedAvg + TopK cut to k by more than the 3-seed spread on MNIST at 99 %
  (benchmarks/results/proxskip/mnist_grid/TABLE.md); its support keeps moving (about 40 % of
  it per round there). ``"reset"`` is the first reconstruction: it rebuilds h from one round,
  h vanishes off the support and the support freezes at 99 %.

* ``sparse-proxskip-server`` (the failing variant the Sparse-ProxSkip paper warns about):
  clients run dense ProxSkip and send ``u_i`` dense; the server prunes, ``xbar = TopK((1/n) sum_j u_j)``, and the clients apply
  ProxSkip's ``h_i <- (p/gamma)(xbar - u_i)``. Then ``sum_i h_i = (p/gamma) n (TopK(ubar) - ubar)``,
  non-zero after every communication.

The h-update needs ``xbar``, which a client only learns from the next downlink, so it is
applied lazily at the start of the next ``client_update`` from the uplink vector the client
kept (``sent``, decoded from its own frame: exactly what the server averaged). The server
holds ``xbar`` and every decoded ``u_i`` / ``z_i``, so it computes every client's new ``h_i``
with the same float32 operations and reports ``sum_h_norm = |sum_i (p/gamma)(xbar - z_i)|``
and its relative sizes (:func:`sum_h_metrics`) as server metrics each round: ``sum_i h_i``
itself for ``reset`` / ``latent`` / server pruning, its round increment for ``randprox``
(whose h accumulates); :func:`pending_h` gives each client's actual ``h_i``.

Evaluation (``evaluate``): the global model the method *delivers*: ``TopK(xbar)`` under
client pruning (``xbar`` itself has up to n k non-zeros), ``xbar`` for the others
(already k-sparse under server pruning); ``dense_accuracy`` / ``dense_test_loss`` are ``xbar``.

Deviations and choices (named here and in the results):

* deterministic ``K = 1/p`` local steps (as the Sparse-ProxSkip paper), not ProxSkip's random coin;
* the h-update forms above (readings; the must-have is the zero-sum invariant);
* full participation only (as the paper): a client that missed a round cannot know the ``xbar`` its
  pending h-update needs, so it raises and is dropped (the invariant then no longer holds);
* ``batch_size = 0`` means full-batch local gradients (deterministic GD steps), minibatches
  are drawn without replacement from the client's torch generator otherwise;
* the STE assumes every floating entry of the model is a parameter (true for the convex
  models here: logistic and linear regression);
* server metrics are computed by the server from what it received, not read from clients.

    >>> cfg = SparseProxSkip().make_config(sparsity=0.99, lr=0.05, p=0.1)
    >>> cfg.local_steps, cfg.codec().k_for(48_670)
    (10, 487)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

import sparsecodec as sc
from sparsecodec.errors import ConfigError

from ..channel import Link, Message
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, Tensors, Update,
                   _check, _check_fields, _loss, evaluate)

__all__ = ["ProxSkip", "SparseProxSkip", "SparseProxSkipServer", "ProxSkipConfig",
           "SparseProxSkipConfig", "ServerPruningConfig", "ProxSkipClientState",
           "ste_local_steps", "flatten", "unflatten", "topk_vector", "control_variate", "pending_h", "VARIANTS",
           "sum_h_metrics", "smoothness_constant"]


#: The readings of Sparse-ProxSkip (docs/sparse_proxskip.md): what the client sends, where its
#: next round starts and how h_i is updated. Each keeps sum_i h_i = 0 and is ProxSkip at density 1.
#: The default is "latent" (SparseProxSkipConfig.variant).
VARIANTS = ("reset", "latent", "randprox")


# -- configs -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class ProxSkipConfig:
    """ProxSkip hyperparameters.

    ``lr`` is the client step gamma: theory takes ``1/L``, which depends on the data (the
    benchmark configs give the value and how it was computed); the default is that of T4
    (FEMNIST logistic regression, L = 0.5 max_i lambda_max(X_i^T X_i / n_i) = 13.53).
    ``p`` is the communication probability; ``K = 1/p`` local steps (so ``1/p`` must be an
    integer). ``batch_size = 0``: full local batch. ``clip_norm``: clip each local gradient
    to this Euclidean norm (the paper's deep nets need it; off for the convex problems).
    ``values`` / ``index``: the uplink TopK frame's value and index coders.
    """

    lr: float = 0.0739
    p: float = 0.1
    batch_size: int = 0
    clip_norm: float | None = None
    values: str = "fp32"
    index: str = "auto"

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive finite float, got {self.lr}")
        _check(0.0 < self.p <= 1.0, f"p must be in (0, 1], got {self.p}")
        _check(abs(1.0 / self.p - round(1.0 / self.p)) < 1e-9,
               f"1/p must be an integer (K = 1/p deterministic local steps), got p={self.p}")
        _check(self.batch_size >= 0, f"batch_size must be >= 0 (0 = full batch), got {self.batch_size}")
        _check(self.clip_norm is None or self.clip_norm > 0, f"clip_norm must be > 0, got {self.clip_norm}")

    @property
    def local_steps(self) -> int:
        return int(round(1.0 / self.p))


@dataclass(frozen=True)
class SparseProxSkipConfig(ProxSkipConfig):
    """Sparse-ProxSkip: ``sparsity`` s keeps ``k = round((1 - s) d)`` entries of the whole
    model (99 % is the paper's FEMNIST setting); ``local=True`` is Sparse-ProxSkip-Local
    (the local iterate is pruned after every step; a reading).
    ``variant``: ``"latent"`` (default), ``"reset"`` or ``"randprox"`` (module docstring,
    docs/sparse_proxskip.md).

    ``control_variates=False`` is an ablation, not Sparse-ProxSkip: ``h_i`` stays 0, so each
    round is K = 1/p STE gradient steps from ``xbar`` and the uplink ``TopK(x_K)``, i.e.
    FedAvg with client-side pruning of the local *model* (the "FedAvg-style sparse training"
    the paper's reviewers name as a baseline; ``reset`` and ``randprox`` then coincide). It
    isolates what the control variates add: with them (``reset``, ``latent``), ``x_K - (gamma/p) h_i = xbar - gamma sum_t g_t`` exactly when K = 1/p, so h_i
    enters the uplink only through the points ``TopK(x_t)`` where the gradients are taken."""

    sparsity: float = 0.99
    local: bool = False
    control_variates: bool = True
    variant: str = "latent"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.sparsity < 1.0, f"sparsity must be in [0, 1), got {self.sparsity}")
        _check(self.variant in VARIANTS, f"variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        self.codec()

    @property
    def kept_fraction(self) -> float:
        # rounded so that sparsity 0.95 keeps density 0.05 exactly as a TopK(density=0.05)
        # would (1 - 0.95 = 0.050000000000000044 would round 30.5 entries up, not half-even)
        return round(1.0 - self.sparsity, 12)

    def codec(self) -> sc.TopK:
        """The uplink codec, applied with ``scope="global"`` (one top-k over all tensors)."""
        return sc.TopK(density=self.kept_fraction, k_rule="round", values=self.values, index=self.index)


@dataclass(frozen=True)
class ServerPruningConfig(ProxSkipConfig):
    """ProxSkip with the server pruning the average to ``k = round((1 - s) d)`` entries."""

    sparsity: float = 0.99

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.sparsity < 1.0, f"sparsity must be in [0, 1), got {self.sparsity}")

    @property
    def kept_fraction(self) -> float:
        # rounded so that sparsity 0.95 keeps density 0.05 exactly as a TopK(density=0.05)
        # would (1 - 0.95 = 0.050000000000000044 would round 30.5 entries up, not half-even)
        return round(1.0 - self.sparsity, 12)

    def k_for(self, d: int) -> int:
        return sc.k_for(d, density=self.kept_fraction, k_rule="round")


# -- flat vectors ------------------------------------------------------------------------------
def flatten(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    """The tensors, in order, as one float32 vector (the model vector TopK acts on)."""
    return np.concatenate([np.asarray(t, np.float32).reshape(-1) for t in tensors.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> Tensors:
    """Inverse of :func:`flatten` with the names and shapes of ``like`` (copies)."""
    out, offset = {}, 0
    for name, t in like.items():
        n = int(np.size(t))
        out[name] = np.array(vector[offset:offset + n], np.float32).reshape(np.shape(t))
        offset += n
    if offset != vector.size:
        raise ValueError(f"vector has {vector.size} entries, the tensors {offset}")
    return out


def topk_vector(x: np.ndarray, k: int) -> np.ndarray:
    """``TopK`` on R^d: keep the k largest |x_j| (ties: lower index, as sparsecodec), zero the rest."""
    x = np.asarray(x, np.float32)
    if k >= x.size:
        return x.copy()
    out = np.zeros_like(x)
    idx = sc.topk_indices(x, k)
    out[idx] = x[idx]
    return out


def control_variate(h: np.ndarray, sent: np.ndarray | None, xbar: np.ndarray, ratio: np.float32,
                    variant: str = "reset") -> np.ndarray:
    """The h-update after a communication (``h`` if nothing was sent).

    ``"reset"`` / ``"latent"`` (and the dense modes): ``(p/gamma)(xbar - sent)``, ``sent`` being
    ``u_i`` (dense) or ``z_i = TopK(u_i)``; ``"randprox"``: ``h + (p/gamma)(xbar - sent)`` with
    ``sent = TopK(x_K)`` (docs/sparse_proxskip.md). The clients (lazily) and the server (for
    its diagnostics) both call this, so they agree bit for bit.
    """
    if sent is None:
        return h
    if variant == "randprox":
        return h + ratio * (xbar - sent)
    return ratio * (xbar - sent)


def pending_h(state: "ProxSkipClientState", xbar: np.ndarray, cfg) -> np.ndarray:
    """The h_i a client holds once it has received ``xbar`` (its pending update applied exactly
    as its next ``client_update`` does); 0 with ``control_variates = False``."""
    if not getattr(cfg, "control_variates", True):
        return np.zeros(xbar.size, np.float32)
    h = state.h if state.h is not None else np.zeros(xbar.size, np.float32)
    return control_variate(h, state.sent, xbar, np.float32(cfg.p / cfg.lr), getattr(cfg, "variant", "reset"))


def _norm(v: np.ndarray) -> float:
    # not np.linalg.norm: its BLAS call may start a thread pool, and the runs are pinned to one core
    return math.sqrt(float(np.sum(v * v)))


def sum_h_metrics(sent: Sequence[np.ndarray], xbar: np.ndarray, ratio: np.float32) -> dict[str, float]:
    """The zero-sum diagnostics of the control variates after one communication.

    Every ``(p/gamma)(xbar - sent_i)`` as the clients compute it (float32), summed in float64:
    the clients' new ``h_i`` under ``reset`` / ``latent`` / server pruning, the increment of
    their ``h_i`` under ``randprox`` (so these sums are of the increments there). ``sum_h_rel = |sum_i h_i| / (ratio |sum_i sent_i|)``: relative to the
    terms that cancel (``ratio n xbar`` against ``ratio sum_i sent_i``), so that float32
    rounding of the mean ``xbar`` bounds it by about 2^-24 whatever the iterates do; under
    server pruning it is ``|TopK(ubar) - ubar| / |ubar|``. ``sum_h_rel_h = |sum_i h_i| /
    sum_i |h_i|`` is also reported; it is not scale-free: once the clients' messages agree
    to a few percent, the same rounding makes it larger than 1e-6.
    """
    total, total_sent, norms = np.zeros(xbar.size, np.float64), np.zeros(xbar.size, np.float64), 0.0
    for v in sent:
        h = control_variate(None, v, xbar, ratio).astype(np.float64)
        total += h
        total_sent += v
        norms += _norm(h)
    s, scale = _norm(total), float(ratio) * _norm(total_sent)
    return {"sum_h_norm": s, "sum_h_rel": s / scale if scale > 0 else 0.0,
            "sum_h_rel_h": s / norms if norms > 0 else 0.0, "h_norm_mean": norms / max(len(sent), 1)}


def _mean(vectors: Sequence[np.ndarray]) -> np.ndarray:
    """``(1/n) sum_j v_j`` (unweighted, as ProxSkip), summed in float64 and rounded once to
    float32: sum_i h_i = (p/gamma)(n xbar - sum_j z_j) is then only the rounding of one mean
    (half an ulp of xbar per entry), not n float32 additions (base.average's)."""
    total = np.zeros(vectors[0].size, np.float64)
    for v in vectors:
        total += v
    return (total / len(vectors)).astype(np.float32)


# -- local training ----------------------------------------------------------------------------
def _parameter_layout(model: nn.Module, like: Mapping[str, np.ndarray]) -> list[tuple[str, int, tuple]]:
    names = [n for n, _ in model.named_parameters()]
    if names != list(like):
        raise ConfigError(f"ProxSkip needs a model whose floating state is exactly its parameters; "
                          f"parameters {names}, state {list(like)}")
    return [(n, int(np.size(t)), tuple(np.shape(t))) for n, t in like.items()]


def ste_local_steps(x0: np.ndarray, h: np.ndarray, data: ClientData, like: Mapping[str, np.ndarray],
                    *, lr: float, steps: int, batch_size: int = 0, k: int | None = None,
                    local: bool = False, clip_norm: float | None = None) -> tuple[np.ndarray, list[float]]:
    """``steps`` ProxSkip local steps ``x <- x - lr (g - h)`` from ``x0`` (flat float32).

    With ``k``: ``g = grad f(TopK_k(x))`` (Straight-Through Estimator: the forward pass and
    the gradient at the pruned model, the step on the dense latent ``x``), and with ``local``
    the iterate is pruned after every step. Returns ``x_K`` and the minibatch losses (at the
    point where the gradient was taken). ``like`` gives the parameter names and shapes.
    """
    model, layout = data.model, _parameter_layout(data.model, like)
    x = torch.from_numpy(np.array(x0, np.float32))
    hv = torch.from_numpy(np.asarray(h, np.float32))
    n = data.num_samples
    batch = n if batch_size == 0 else min(batch_size, n)
    losses: list[float] = []
    for _ in range(steps):
        point = torch.from_numpy(topk_vector(x.numpy(), k)) if k is not None else x.clone()
        point.requires_grad_(True)
        params, offset = {}, 0
        for name, size, shape in layout:
            params[name] = point[offset:offset + size].view(shape)
            offset += size
        if batch == n:
            xb, yb = data.x, data.y
        else:
            idx = torch.randperm(n, generator=data.generator)[:batch]
            xb, yb = data.x[idx], data.y[idx]
        loss = _loss(torch.func.functional_call(model, params, (xb,)), yb, data.task)
        (g,) = torch.autograd.grad(loss, point)
        losses.append(float(loss.detach()))
        if not math.isfinite(losses[-1]):
            break
        if clip_norm is not None:
            norm = float(torch.linalg.vector_norm(g))
            if norm > clip_norm:
                g = g * (clip_norm / norm)
        x = x - lr * (g - hv)
        if local:
            x = torch.from_numpy(topk_vector(x.numpy(), k))
    return x.numpy(), losses


# -- state ---------------------------------------------------------------------------------------
@dataclass
class ProxSkipClientState:
    """``h``: the control variate (flat float32, ``None`` = 0 before any communication);
    ``sent``: the last uplink vector as decoded (``u_i`` or ``z_i``), pending its h-update;
    ``round``: the round it was sent in; ``residual``: variant ``"latent"`` only, what the
    client pruned from its last message, ``e_i = u_i - z_i``: its next round starts from
    ``xbar + e_i`` (the dense latent kept across rounds)."""

    h: np.ndarray | None = None
    sent: np.ndarray | None = None
    round: int | None = None
    residual: np.ndarray | None = None


# -- the algorithms ------------------------------------------------------------------------------
class ProxSkip(Algorithm):
    name = "proxskip"
    description = "ProxSkip/Scaffnew: K=1/p local steps with control variates h_i, dense uplink"
    Config = ProxSkipConfig
    mode = "none"      # "none" | "client" | "server": where TopK acts

    def init_client(self, client_id: int, cfg) -> ProxSkipClientState:
        return ProxSkipClientState()

    def _k(self, cfg, d: int) -> int | None:
        return cfg.codec().k_for(d) if self.mode == "client" else None

    def broadcast(self, state: ServerState, cfg, channel: Link) -> Message:
        if self.mode == "none":
            return channel.send(state.params, sc.Dense())
        # xbar has up to n k non-zeros: send exactly those (lossless for fp32)
        return channel.send(state.params, sc.TopK(k="nnz", index=cfg.index))

    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The model's tensors: one global top-k (client pruning) or dense, as sent below."""
        if self.mode == "client":
            return sc.MessageSpec.from_tensors(global_params, cfg.codec(), "global")
        return sc.MessageSpec.from_tensors(global_params, sc.Dense())

    def client_update(self, state: ProxSkipClientState, global_params: Mapping[str, np.ndarray],
                      data: ClientData, cfg, channel: Link) -> ClientResult:
        xbar = flatten(global_params)
        d = xbar.size
        if state.sent is not None and state.round != channel.round - 1:
            raise ValueError(f"client {data.client_id} sent last in round {state.round}, not "
                             f"{channel.round - 1}: ProxSkip needs full participation")
        variant = getattr(cfg, "variant", "reset")
        h = pending_h(state, xbar, cfg)    # control_variates=False: h_i = 0 (FedAvg + client TopK)
        k = self._k(cfg, d)
        local = bool(getattr(cfg, "local", False))
        x0 = xbar
        if variant == "latent" and state.residual is not None:
            x0 = xbar + state.residual      # the pruned part stays local (model error feedback)
        if local:
            x0 = topk_vector(x0, k)
        x, losses = ste_local_steps(x0, h, data, global_params, lr=cfg.lr, steps=cfg.local_steps,
                                    batch_size=cfg.batch_size, k=k, local=local, clip_norm=cfg.clip_norm)
        # randprox sends (TopK of) the iterate itself; the others ProxSkip's x_K - (gamma/p) h_i
        u = x if variant == "randprox" else x - np.float32(cfg.lr / cfg.p) * h
        if self.mode == "client":
            message = channel.send(unflatten(u, global_params), cfg.codec(), scope="global")
        else:
            message = channel.send(unflatten(u, global_params), sc.Dense())
        sent = flatten(channel.decode_own(message))   # exactly what the server will average
        residual = u - sent if variant == "latent" else None
        metrics = {"train_loss": float(np.mean(losses)) if losses else float("nan"),
                   "steps": len(losses)}
        return ClientResult(ProxSkipClientState(h, sent, channel.round, residual), message,
                            data.num_samples, metrics)

    def server_update(self, state: ServerState, updates: Sequence[Update], cfg) -> ServerResult:
        sent = [flatten(u.tensors) for u in updates]
        mean = _mean(sent)
        if self.mode == "server":
            mean = topk_vector(mean, cfg.k_for(mean.size))
        params = unflatten(mean, state.params)
        # every client's next h_i, as the clients will compute it (float32), summed in float64
        metrics = (sum_h_metrics(sent, mean, np.float32(cfg.p / cfg.lr))
                   if getattr(cfg, "control_variates", True) else {})
        metrics.update({"participants": len(updates), "global_nnz": int(np.count_nonzero(mean))})
        return ServerResult(ServerState(params), metrics)

    def evaluate(self, state, cfg, model, x, y, task="classification", batch_size=1000):
        result = evaluate(model, state.params, x, y, task, batch_size)
        if self.mode != "client":
            return result
        dense = {f"dense_{k}": v for k, v in result.items()}
        vector = flatten(state.params)
        pruned = unflatten(topk_vector(vector, cfg.codec().k_for(vector.size)), state.params)
        return {**evaluate(model, pruned, x, y, task, batch_size), **dense}


class SparseProxSkip(ProxSkip):
    name = "sparse-proxskip"
    description = ("Sparse-ProxSkip: client-side global TopK with STE, k-sparse uplink, "
                   "sum h_i = 0 kept exactly; local=true prunes every local step")
    Config = SparseProxSkipConfig
    mode = "client"


class SparseProxSkipServer(ProxSkip):
    name = "sparse-proxskip-server"
    description = "ProxSkip + server TopK of the average (the failing variant: sum h_i != 0)"
    Config = ServerPruningConfig
    mode = "server"


# -- step size -----------------------------------------------------------------------------------
def smoothness_constant(parts: Sequence[np.ndarray], task: str) -> float:
    """``L = max_i L_i`` for the engine's losses on the convex models (ProxSkip's gamma = 1/L).

    ``parts[i]`` is client i's feature matrix (``(n_i, ...)``, flattened here) and a
    constant 1 column is appended for the bias. With ``lam_i = lambda_max(X_i^T X_i / n_i)``:
    mean cross-entropy of a multinomial logistic model has ``L_i <= lam_i / 2`` (the softmax
    Hessian ``diag(s) - s s^T`` has eigenvalues <= 1/2); ``F.mse_loss`` (a mean of squares,
    no 1/2) has ``L_i = 2 lam_i``. This bound is tighter than T4's ``0.5 max row-norm^2``
    (which bounds ``lam_i`` by the largest row norm) and is still a valid smoothness constant
    for every ``f_i``.
    """
    lam = 0.0
    for x in parts:
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        xa = np.hstack([x, np.ones((len(x), 1))])
        lam = max(lam, float(np.linalg.eigvalsh(xa.T @ xa / len(xa))[-1]))
    return lam / 2 if task == "classification" else 2 * lam
