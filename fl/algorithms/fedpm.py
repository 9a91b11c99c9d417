"""FedPM (Isik et al., ICLR 2023) and regularized FedPM (Mestoukirdi et al., 2024), with the
uploaded masks really entropy-coded (docs/fedpm.md: the algorithms, their bit accounting and
this implementation).

The weights ``W`` (and biases) of the network are random and **frozen**: the work model's
seeded initialisation (``fedpm-mlp`` / ``fedpm-conv4``: signed constant ``+-e/sqrt(fan_in)``),
which every party rebuilds from the shared seed, so they are never sent. What is learned is a
real score ``s`` per weight and per bias, ``theta = sigmoid(s)``. One round::

    server:  broadcast s_t (fp32, Dense, through the channel)
    client k:
        s <- s_t;  Adam(lr 0.1) on s, state kept per client across rounds (official code)
        E = 3 epochs of minibatches (128):
            m ~ Bernoulli(sigmoid(s))            fresh sample every forward pass, every tensor
            loss = CE(f(x; W * m), y) + (lambda_reg / n) * sum_j sigmoid(s_j)   [regularized; 0 = FedPM]
            STE: dL/dtheta := theta * dL/dm      (official ``Bern``; ``ste="plain"``: dL/dm)
        upload m_k ~ Bernoulli(sigmoid(s_k)), binary, MaskCodec under the global
            theta_t = sigmoid(s_t) as per-entry side information (both ends hold s_t)
    server ("Bayesian aggregation", prior reset every round, lambda0 = 1):
        m~_k = eps + (1 - 2 eps) m_k                                    (eps = 0.01)
        alpha = lambda0 + sum_k m~_k,  beta = lambda0 + sum_k (1 - m~_k)
        theta_{t+1} = (alpha - 1) / (alpha + beta - 2)  (= mean_k m~_k for lambda0 = 1)
        s_{t+1} = log(theta / (1 - theta))
    test: the global model with a freshly sampled mask, one sample per test batch

``n`` counts every score of the model (weights and biases, all layers). The uplink is coded
for real: the ledger counts the mask frames the clients send. For comparison each client also
encodes its mask under the adaptive model (count of ones + enumerative code, no side
information) and reports that frame's size; that message is built by the channel but never
delivered or counted. The papers' figure, which runs no coder, is the ideal rate
``H_b(f) + log2(d)/d`` (docs/fedpm.md, "Bit accounting"), reported twice: ``ideal_bpp`` with f
the fraction of ones of the binary mask (:func:`sparsecodec.bounds.fedpm_ideal_bpp`), and
``ideal_bpp_code`` with f taken from the eps-smoothed mask as the official ``find_bitrate``
does (f = eps + (1 - 2 eps) f_true: nearer 1/2, slightly larger).

Side information: ``theta`` is recomputed on each end from the same fp32 scores by
:func:`fl.masked.keep_probabilities` (float64), so the coder's 20-bit probabilities agree
exactly. Under Flower the two ends must also share numpy's ``exp`` to the last ulp; a
disagreement could only flip a quantization boundary (probability ~1e-10 per entry).

Deviations from the official code (each also stated where results are reported):

* Evaluation draws one mask per test batch of ``sim.eval_batch_size`` (1,000) from a
  generator seeded by ``(cfg.seed, round)``, so it is reproducible; the official code samples
  from the global RNG per batch of its test loader. ``accuracy_threshold`` (mask
  ``theta > 0.5``, the official ``ths`` mode) is reported beside it.
* Scores start from ``N(0, 1)`` drawn from ``torch.Generator(cfg.seed)`` at the server
  (official: ``randn`` from the global RNG); ``score_init="zeros"`` gives the regularized
  paper's ``theta_0 = 0.5``.
* The minibatch order and every Bernoulli sample come from the client's own seeded
  generator (the engine checkpoints it), not from the global RNG; samples are drawn as
  ``1[u < theta]`` (the law of ``torch.bernoulli``, ~3x faster on CPU).
* A client stops its local training at the first non-finite loss (the official code trains
  on): its mask is still binary and is uploaded as usual, and its loss is logged as NaN.
* Options beyond the official behaviour: ``ste="plain"``, ``persistent_optimizer=False``
  (the Flower port's fresh Adam every round), ``weighted=True`` (Flower's sample-weighted
  mean), ``uplink_model="adaptive"`` (send the adaptive-model frame instead).

    >>> cfg = FedPM().make_config(lambda_reg=0.5)
    >>> cfg.lr, cfg.epochs, cfg.batch_size, cfg.epsilon, cfg.ste, cfg.persistent_optimizer
    (0.1, 3, 128, 0.01, 'official', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

import sparsecodec as sc
from sparsecodec.bounds import binary_entropy, fedpm_ideal_bpp, mask_bits
from sparsecodec.errors import ConfigError

from ..channel import Link
from ..masked import (STE_MODES, frozen_weights, keep_probabilities, masked_forward, sample_masks,
                      threshold_forward)
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, Update,
                   _check, _check_fields)

__all__ = ["FedPM", "FedPMConfig", "FedPMClientState", "FedPMServerState", "regularizer",
           "smoothed", "aggregate_masks", "ideal_bpp_code"]

SCORE_INITS = ("normal", "zeros")
UPLINK_MODELS = ("global", "adaptive")


@dataclass(frozen=True)
class FedPMConfig:
    """FedPM's hyperparameters: the official code's values (docs/fedpm.md, "Hyperparameters").

    ``lambda_reg``: weight of the regularizer ``(lambda/n) sum sigmoid(s)`` (regularized FedPM;
    0 = FedPM). ``prior``: lambda0 of the Beta prior, reset every round. ``seed``: score
    initialisation and evaluation masks (the data order and training masks come from the
    engine's per-client generators).
    """

    lr: float = 0.1
    epochs: int = 3
    batch_size: int = 128
    epsilon: float = 0.01
    prior: float = 1.0
    lambda_reg: float = 0.0
    ste: str = "official"
    persistent_optimizer: bool = True
    score_init: str = "normal"
    uplink_model: str = "global"
    weighted: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        _check_fields(self)
        _check(self.lr > 0 and math.isfinite(self.lr), f"lr must be a positive finite float, got {self.lr}")
        _check(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        # eps > 0 keeps theta inside (0, 1), so the broadcast scores logit(theta) stay finite
        _check(0.0 < self.epsilon < 0.5, f"epsilon must be in (0, 0.5), got {self.epsilon}")
        # lambda0 >= 1 keeps the Beta mode inside [0, 1] (lambda0 < 1 has no interior mode)
        _check(self.prior >= 1.0 and math.isfinite(self.prior), f"prior (lambda0) must be >= 1, got {self.prior}")
        _check(self.lambda_reg >= 0 and math.isfinite(self.lambda_reg),
               f"lambda_reg must be a finite float >= 0, got {self.lambda_reg}")
        _check(self.ste in STE_MODES, f"ste must be one of {STE_MODES}, got {self.ste!r}")
        _check(self.score_init in SCORE_INITS, f"score_init must be one of {SCORE_INITS}, got {self.score_init!r}")
        _check(self.uplink_model in UPLINK_MODELS,
               f"uplink_model must be one of {UPLINK_MODELS}, got {self.uplink_model!r}")
        _check(self.seed >= 0, f"seed must be >= 0, got {self.seed}")


@dataclass
class FedPMClientState:
    """Adam's ``state_dict`` over the scores (None: fresh), kept across rounds as the
    official code does (one optimizer per client for the whole run)."""

    optimizer: dict | None = None


@dataclass
class FedPMServerState(ServerState):
    """``params`` are the global scores ``s`` (what is broadcast); ``round`` counts
    aggregations (it seeds the evaluation masks)."""

    round: int = 0
    seed: int = 0


# -- the pieces the tests pin down -------------------------------------------------------------
def regularizer(scores: Mapping[str, torch.Tensor], lam: float) -> torch.Tensor:
    """``(lam / n) * sum_j sigmoid(s_j)`` over every score of the model (docs/fedpm.md, "The regularizer").

    Its gradient is ``(lam / n) * sigmoid(s) * (1 - sigmoid(s))``.
    """
    n = sum(s.numel() for s in scores.values())
    return (lam / n) * sum(torch.sigmoid(s).sum() for s in scores.values())


def smoothed(mask: np.ndarray, epsilon: float) -> np.ndarray:
    """The eps-smoothed mask of the official ``upload_mask``: 0 -> eps, 1 -> 1 - eps (float64)."""
    return np.where(np.asarray(mask, dtype=bool), 1.0 - epsilon, epsilon)


def aggregate_masks(masks: Sequence[Mapping[str, np.ndarray]], epsilon: float, prior: float = 1.0,
                    weights: Sequence[float] | None = None) -> dict[str, np.ndarray]:
    """Bayesian aggregation: the mode of Beta(alpha, beta) per entry, prior reset (float64).

    ``alpha = prior + sum_k w_k m~_k``, ``beta = prior + sum_k w_k (1 - m~_k)`` with the weights
    rescaled to sum to the number of clients (all 1 unless ``weights`` are given); the mode
    ``(alpha - 1) / (alpha + beta - 2)`` is the (weighted) mean of the smoothed masks when
    ``prior = 1``.
    """
    k = len(masks)
    if k == 0:
        raise ConfigError("aggregate_masks needs at least one mask")
    w = np.ones(k) if weights is None else np.asarray(weights, dtype=np.float64) * (k / float(np.sum(weights)))
    out = {}
    for name in masks[0]:
        ones = np.zeros(np.shape(masks[0][name]), dtype=np.float64)
        for wk, m in zip(w, masks):
            ones += wk * smoothed(m[name], epsilon)
        alpha, beta = prior + ones, prior + (k - ones)
        out[name] = (alpha - 1.0) / (alpha + beta - 2.0)
    return out


def ideal_bpp_code(mask_fraction: float, numel: int, epsilon: float) -> float:
    """The official ``find_bitrate``: ``H_b(f) + log2(d)/d`` with f the frequency of ones of
    the eps-smoothed mask, ``eps + (1 - 2 eps) * (fraction of ones)`` (docs/fedpm.md,
    "Bit accounting")."""
    f = epsilon + (1.0 - 2.0 * epsilon) * mask_fraction
    return binary_entropy(f) + math.log2(numel) / numel


def _scores_from_theta(theta: np.ndarray) -> np.ndarray:
    return np.log(theta / (1.0 - theta)).astype(np.float32)


def _flat(tensors: Mapping[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([np.asarray(t).reshape(-1) for t in tensors.values()])


def _eval_generator(seed: int, round_: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, round_]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


# -- the algorithm -----------------------------------------------------------------------------
class FedPM(Algorithm):
    name = "fedpm"
    description = ("FedPM: Bernoulli masks over frozen random weights, masks coded under the global "
                   "theta; lambda_reg > 0: regularized FedPM")
    Config = FedPMConfig

    def init_server(self, params: Mapping[str, np.ndarray], cfg: FedPMConfig, n_clients: int) -> FedPMServerState:
        # params are the frozen weights (the engine's seeded model); the scores mirror their shapes
        g = torch.Generator().manual_seed(cfg.seed)
        scores = {}
        for name, w in params.items():
            if cfg.score_init == "normal":
                scores[name] = torch.randn(tuple(np.shape(w)), generator=g).numpy().astype(np.float32)
            else:
                scores[name] = np.zeros(np.shape(w), np.float32)
        return FedPMServerState(scores, round=0, seed=cfg.seed)

    def init_client(self, client_id: int, cfg: FedPMConfig) -> FedPMClientState:
        return FedPMClientState()

    def uplink_side(self, state: FedPMServerState, cfg: FedPMConfig) -> dict[str, dict[str, Any]] | None:
        if cfg.uplink_model != "global":
            return None
        return {k: {"p": p} for k, p in keep_probabilities(state.params).items()}

    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg: FedPMConfig) -> sc.MessageSpec:
        """One bool mask per score tensor (MaskCodec; the keep-probabilities are side info)."""
        schema = sc.Schema(tuple((n, "bool", tuple(int(d) for d in a.shape)) for n, a in global_params.items()))
        return sc.MessageSpec(schema, sc.MaskCodec())

    def client_update(self, state: FedPMClientState, global_params: Mapping[str, np.ndarray],
                      data: ClientData, cfg: FedPMConfig, channel: Link) -> ClientResult:
        weights = frozen_weights(data.model)
        if list(weights) != list(global_params):
            raise ConfigError(f"scores {list(global_params)} do not match the model's parameters {list(weights)}")
        scores = {k: torch.tensor(np.asarray(global_params[k], np.float32)).requires_grad_(True)
                  for k in weights}
        opt = torch.optim.Adam(list(scores.values()), lr=cfg.lr)
        if cfg.persistent_optimizer and state.optimizer is not None:
            opt.load_state_dict(state.optimizer)
        losses, reg_losses = self._train(data, weights, scores, opt, cfg)

        masks = sample_masks(scores, data.generator)
        theta_global = keep_probabilities(global_params)      # what the server holds too
        side = {k: {"p": p} for k, p in theta_global.items()}
        codec = sc.MaskCodec()
        if cfg.uplink_model == "global":
            message = channel.send(masks, codec, side=side)
            other = channel.send(masks, codec)                 # built for comparison, never delivered
            bits_global, bits_adaptive = message.nbits, other.nbits
        else:
            message = channel.send(masks, codec)
            other = channel.send(masks, codec, side=side)
            bits_global, bits_adaptive = other.nbits, message.nbits
        d = sum(m.size for m in masks.values())
        with torch.no_grad():
            local_theta = torch.cat([torch.sigmoid(s).reshape(-1) for s in scores.values()])
        metrics = {
            "train_loss": float(np.mean(losses)) if losses else float("nan"),
            "reg_loss": float(np.mean(reg_losses)) if reg_losses else 0.0,
            "steps": len(losses),
            "coded_bpp_global": bits_global / d,
            "coded_bpp_adaptive": bits_adaptive / d,
            "local_theta_below_half": float((local_theta < 0.5).double().mean()),
        }
        new_state = FedPMClientState(opt.state_dict() if cfg.persistent_optimizer else None)
        return ClientResult(new_state, message, data.num_samples, metrics)

    @staticmethod
    def _train(data: ClientData, weights, scores, opt, cfg: FedPMConfig) -> tuple[list[float], list[float]]:
        n = data.num_samples
        batch = min(cfg.batch_size, n)
        losses: list[float] = []
        reg_losses: list[float] = []
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=data.generator)
            for start in range(0, n, batch):
                idx = order[start:start + batch]
                out = masked_forward(data.model, weights, scores, data.x[idx], data.generator, cfg.ste)
                loss = F.cross_entropy(out, data.y[idx])
                total = loss
                if cfg.lambda_reg > 0:
                    reg = regularizer(scores, cfg.lambda_reg)
                    total = loss + reg
                    reg_losses.append(float(reg.detach()))
                opt.zero_grad(set_to_none=True)
                total.backward()
                opt.step()
                losses.append(float(loss.detach()))
                if not math.isfinite(losses[-1]):
                    return losses, reg_losses   # the uploaded mask is still binary; logged as NaN loss
        return losses, reg_losses

    def check_update(self, state: FedPMServerState, tensors: Mapping[str, np.ndarray], cfg: FedPMConfig) -> None:
        super().check_update(state, tensors, cfg)
        for name, m in tensors.items():
            if m.dtype != np.bool_ and not (m.dtype == np.uint8 and int(m.max(initial=0)) <= 1):
                raise ValueError(f"update tensor {name!r} is not a binary mask (dtype {m.dtype})")

    def server_update(self, state: FedPMServerState, updates: Sequence[Update],
                      cfg: FedPMConfig) -> ServerResult:
        masks = [u.tensors for u in updates]
        weights = [u.num_samples for u in updates] if cfg.weighted else None
        theta = aggregate_masks(masks, cfg.epsilon, cfg.prior, weights)
        scores = {k: _scores_from_theta(v) for k, v in theta.items()}

        # diagnostics from what the server decoded (the coded sizes come from the clients'
        # frames, the real total is the ledger's uplink_bits)
        theta_side = keep_probabilities(state.params)
        flat_side = _flat(theta_side)
        d = flat_side.size
        fracs, ideal, ideal_code, xent = [], [], [], []
        for m in masks:
            flat = _flat(m).astype(bool)
            fracs.append(float(np.count_nonzero(flat)) / d)
            ideal.append(fedpm_ideal_bpp(flat))
            ideal_code.append(ideal_bpp_code(fracs[-1], d, cfg.epsilon))
            xent.append(mask_bits(flat, flat_side) / d)
        new_theta = _flat(keep_probabilities(scores))

        def client_mean(key: str) -> float | None:
            vals = [u.metrics[key] for u in updates if key in u.metrics]
            return float(np.mean(vals)) if vals else None

        metrics = {
            "numel": d,
            "density": float(np.mean(fracs)),
            "ideal_bpp": float(np.mean(ideal)),
            "ideal_bpp_code": float(np.mean(ideal_code)),
            "xent_global_bpp": float(np.mean(xent)),
            "coded_bpp_global": client_mean("coded_bpp_global"),
            "coded_bpp_adaptive": client_mean("coded_bpp_adaptive"),
            "reg_loss": client_mean("reg_loss"),
            "local_theta_below_half": client_mean("local_theta_below_half"),
            "theta_below_half": float(np.mean(new_theta < 0.5)),
            "theta_mean": float(np.mean(new_theta)),
        }
        return ServerResult(FedPMServerState(scores, round=state.round + 1, seed=state.seed), metrics)

    def evaluate(self, state: FedPMServerState, cfg: FedPMConfig, model, x, y,
                 task: str = "classification", batch_size: int = 1000) -> dict[str, float]:
        """Accuracy of the global model with a fresh mask per test batch (official), seeded
        by ``(seed, round)``, and with the deterministic mask ``theta > 0.5``."""
        if task != "classification":
            raise ConfigError("FedPM is evaluated on classification tasks only")
        weights = frozen_weights(model)
        scores = {k: torch.from_numpy(np.asarray(state.params[k], np.float32)) for k in weights}
        gen = _eval_generator(state.seed, state.round)
        n = int(x.shape[0])
        loss_sum, correct, correct_ths = 0.0, 0, 0
        with torch.no_grad():
            for start in range(0, n, batch_size):
                xb, yb = x[start:start + batch_size], y[start:start + batch_size]
                out = masked_forward(model, weights, scores, xb, gen, cfg.ste)
                loss_sum += float(F.cross_entropy(out, yb, reduction="sum"))
                correct += int((out.argmax(dim=1) == yb).sum())
                out_t = threshold_forward(model, weights, scores, xb, 0.5)
                correct_ths += int((out_t.argmax(dim=1) == yb).sum())
        return {"test_loss": loss_sum / n, "accuracy": correct / n, "accuracy_threshold": correct_ths / n}

    def summarize(self, metrics: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        """Per-run FedPM figures for ``summary.json`` (means over rounds of the per-client
        means; ``uplink_bpp`` itself, the real coded figure, is the engine's, from the ledger)."""
        rows = [m for m in metrics if m.get("server_numel")]
        if not rows:
            return {}
        sent = [m["uplink_bits"] / (m["updates"] * m["server_numel"]) for m in rows]
        ideal = [m["server_ideal_bpp"] for m in rows]

        def mean(key: str) -> float | None:
            vals = [m[key] for m in rows if m.get(key) is not None]
            return float(np.mean(vals)) if vals else None

        last = rows[-1]
        return {
            "uplink_bpp_ideal": float(np.mean(ideal)),
            "uplink_bpp_ideal_code": mean("server_ideal_bpp_code"),
            "uplink_bpp_global": mean("server_coded_bpp_global"),
            "uplink_bpp_adaptive": mean("server_coded_bpp_adaptive"),
            "uplink_bpp_xent_global": mean("server_xent_global_bpp"),
            "uplink_bpp_last": sent[-1],
            "uplink_bpp_ideal_last": ideal[-1],
            "rounds_coded_above_ideal": [m["round"] for m, s, i in zip(rows, sent, ideal) if s > i],
            "final_density": last["server_density"],
            "final_theta_below_half": last["server_theta_below_half"],
            "final_accuracy_threshold": next((m["accuracy_threshold"] for m in reversed(metrics)
                                              if m.get("accuracy_threshold") is not None), None),
        }
