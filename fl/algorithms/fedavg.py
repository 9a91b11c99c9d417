"""FedAvg (McMahan et al., AISTATS 2017; docs/baselines.md) with a dense, losslessly coded uplink.

Client: ``E`` epochs of SGD(momentum) from the global model ``w``; send ``delta = x - w``
through :class:`sparsecodec.Dense` (fp32, counted like every other message).
Server: ``w <- w + mean_i delta_i`` (unweighted, as the FLARE code's baseline; ``weighted=True``
gives the sample-weighted mean of McMahan et al.). Sending the delta rather than the model
is the same message size and the same average up to float32 rounding of ``w + (x - w)``.

    >>> FedAvg().make_config(lr=0.05).lr
    0.05
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

import sparsecodec as sc

from ..channel import Link
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, TrainConfig,
                   Update, average, check_finite_tensors, local_sgd, subtract)

__all__ = ["FedAvg", "FedAvgConfig"]


@dataclass(frozen=True)
class FedAvgConfig(TrainConfig):
    """FedAvg: only local training options (FLARE MNIST-CNN defaults, see TrainConfig)."""


class FedAvg(Algorithm):
    name = "fedavg"
    description = "FedAvg: local SGD, dense fp32 uplink of the model delta, mean on the server"
    Config = FedAvgConfig
    devices = ("cpu", "cuda")      # local_sgd only: its tensors follow the model


    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The update's tensors are the model's, each coded as in :meth:`client_update`."""
        return sc.MessageSpec.from_tensors(global_params, sc.Dense())

    def client_update(self, state, global_params: Mapping[str, np.ndarray], data: ClientData,
                      cfg: FedAvgConfig, channel: Link) -> ClientResult:
        trained, stats = local_sgd(data, global_params, cfg)
        delta = subtract(trained, global_params)
        check_finite_tensors(delta)
        message = channel.send(delta, sc.Dense())
        return ClientResult(state, message, data.num_samples, stats)

    def server_update(self, state: ServerState, updates: Sequence[Update],
                      cfg: FedAvgConfig) -> ServerResult:
        step = average(updates, cfg.weighted)
        params = {k: v + step[k] for k, v in state.params.items()}
        return ServerResult(ServerState(params))
