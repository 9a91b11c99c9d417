"""EC: top-k with error feedback on the model delta (docs/baselines.md, the FLARE code's
``client_update``)::

    a_i = delta_i + e_i;   s_i = TopK(a_i);   e_i <- a_i - s_i;   w <- w + mean_i s_i

``e_i`` starts at 0 and lives in the client's :class:`sparsecodec.ErrorFeedback`; a client
that is not sampled keeps it. Top-k is **per tensor** with FLARE's rule by default: keep
``round(size * R / 100) + 1`` entries of every tensor (``R`` is a *percent*; R = 0.001 keeps
0.001 %). ``density`` (a fraction) replaces ``R / 100`` when given; ``k_rule`` and ``scope``
("tensor" or "global": one top-k over the whole model) select other conventions.

Deviation from the FLARE code, inherited from :class:`sparsecodec.TopK`: on exact ties at
the threshold FLARE's strict ``>`` keeps fewer entries; we keep exactly k (lower index wins).

    >>> cfg = EC().make_config(density=1e-3)
    >>> cfg.codec().k_for(30_720)     # small-cnn fc1.weight: round(30.72) + 1
    32
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

import sparsecodec as sc

from ..channel import Link
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, TrainConfig,
                   Update, _check, average, check_finite_tensors, local_sgd, subtract)

__all__ = ["EC", "ECConfig", "ECClientState", "SparsifierConfig"]


@dataclass(frozen=True)
class SparsifierConfig(TrainConfig):
    """Local training plus the top-k message format (shared by EC and EF21).

    ``R = 0.001`` (percent) is the FLARE papers' setting for every baseline (docs/flare.md,
    "Hyperparameters").
    """

    R: float = 0.001
    density: float | None = None
    k_rule: str = "flare"
    scope: str = "tensor"
    values: str = "fp32"
    index: str = "auto"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(0.0 <= self.R <= 100.0, f"R is a percent in [0, 100], got {self.R}")
        _check(self.density is None or 0.0 <= self.density <= 1.0,
               f"density is a fraction in [0, 1], got {self.density}")
        _check(self.scope in ("tensor", "global"), f"scope must be 'tensor' or 'global', got {self.scope!r}")
        self.codec()   # validates k_rule, values and index now rather than in round 1

    @property
    def kept_fraction(self) -> float:
        return float(self.density) if self.density is not None else self.R / 100.0

    def codec(self) -> sc.TopK:
        return sc.TopK(density=self.kept_fraction, k_rule=self.k_rule, values=self.values,
                       index=self.index)


@dataclass(frozen=True)
class ECConfig(SparsifierConfig):
    """EC options: see :class:`SparsifierConfig`."""


@dataclass
class ECClientState:
    """The client's residual memory (checkpointed through ``ErrorFeedback.state_dict``)."""

    feedback: sc.ErrorFeedback = field(default_factory=sc.ErrorFeedback)

    def __getstate__(self):
        return {"feedback": self.feedback.state_dict()}

    def __setstate__(self, state):
        self.feedback = sc.ErrorFeedback()
        self.feedback.load_state_dict(state["feedback"])


class EC(Algorithm):
    name = "ec"
    description = "EC: top-k of (delta + residual) per tensor, error feedback on the client"
    Config = ECConfig
    devices = ("cpu", "cuda")      # local_sgd only: its tensors follow the model

    def init_client(self, client_id: int, cfg: ECConfig) -> ECClientState:
        return ECClientState()


    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The update's tensors are the model's, each coded as in :meth:`client_update`."""
        return sc.MessageSpec.from_tensors(global_params, cfg.codec(), cfg.scope)

    def client_update(self, state: ECClientState, global_params: Mapping[str, np.ndarray],
                      data: ClientData, cfg: ECConfig, channel: Link) -> ClientResult:
        trained, stats = local_sgd(data, global_params, cfg)
        delta = subtract(trained, global_params)
        check_finite_tensors(delta)
        message = channel.send(delta, cfg.codec(), scope=cfg.scope, feedback=state.feedback)
        return ClientResult(state, message, data.num_samples, stats)

    def server_update(self, state: ServerState, updates: Sequence[Update], cfg: ECConfig) -> ServerResult:
        step = average(updates, cfg.weighted)
        return ServerResult(ServerState({k: v + step[k] for k, v in state.params.items()}))
