"""FedAvg + TopK: top-k of the model delta with **no** error feedback (the "EC without
feedback" baseline of the Sparse-ProxSkip comparisons: docs/sparse_proxskip.md, and T4 / T5 in
docs/reproductions.md)::

    s_i = TopK(delta_i);   w <- w + mean_i s_i

Everything else (local SGD, message format, k rule, ``scope``) is :mod:`fl.algorithms.ec`'s;
the only difference is that what TopK drops is lost instead of carried to the next round.
The Sparse-ProxSkip benchmarks run it with ``scope = "global"`` (one top-k over the whole
model, as Sparse-ProxSkip's), ``k_rule = "round"`` and momentum 0.

    >>> FedAvgTopK().make_config(density=0.01, scope="global").codec().k_for(48_670)
    488
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

import sparsecodec as sc

from ..channel import Link
from .base import ClientData, ClientResult, check_finite_tensors, local_sgd, subtract
from .ec import EC, ECConfig

__all__ = ["FedAvgTopK"]


class FedAvgTopK(EC):
    name = "fedavg-topk"
    description = "FedAvg + TopK: top-k of the model delta, no error feedback (what TopK drops is lost)"
    Config = ECConfig

    def init_client(self, client_id: int, cfg: ECConfig) -> None:
        return None


    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The update's tensors are the model's, each coded as in :meth:`client_update`."""
        return sc.MessageSpec.from_tensors(global_params, cfg.codec(), cfg.scope)

    def client_update(self, state, global_params: Mapping[str, np.ndarray], data: ClientData,
                      cfg: ECConfig, channel: Link) -> ClientResult:
        trained, stats = local_sgd(data, global_params, cfg)
        delta = subtract(trained, global_params)
        check_finite_tensors(delta)
        message = channel.send(delta, cfg.codec(), scope=cfg.scope)
        return ClientResult(state, message, data.num_samples, stats)
