"""EF21 (Richtárik et al., NeurIPS 2021) on model deltas (docs/baselines.md; the FLARE code's
``src/EF21_utils.py``)::

    c_i = TopK(delta_i - g_i);   g_i <- g_i + c_i;   w <- w + mean_{i in S} g_i

``g_i`` starts at 0. The FLARE code uploads ``g_i`` itself ("cheet"); here the client sends
only ``c_i`` (the bits counted) and the server keeps a mirror of every client's ``g_i``,
updated from the decoded ``c_i``. Both ends add the same decoded values in the same order,
so client and server copies of ``g_i`` are bit-identical, and the step uses the *updated*
``g`` of the participating clients, exactly as the code does (also under partial
participation). Message format and k as in :mod:`fl.algorithms.ec`.

    >>> EF21().make_config(R=0.01).kept_fraction
    0.0001
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

import sparsecodec as sc

from ..channel import Link
from .base import (Algorithm, ClientData, ClientResult, ServerResult, ServerState, Tensors,
                   Update, average, check_finite_tensors, local_sgd, subtract)
from .ec import SparsifierConfig

__all__ = ["EF21", "EF21Config", "EF21ClientState", "EF21ServerState"]


@dataclass(frozen=True)
class EF21Config(SparsifierConfig):
    """EF21 options: see :class:`fl.algorithms.ec.SparsifierConfig`."""


@dataclass
class EF21ClientState:
    g: Tensors | None = None          # None until the first round: g_i = 0


@dataclass
class EF21ServerState(ServerState):
    g: dict[int, Tensors] = field(default_factory=dict)   # mirror of every client's g_i


class EF21(Algorithm):
    name = "ef21"
    description = "EF21: top-k of (delta - g_i), g_i += c_i on both ends, step = mean of g_i"
    Config = EF21Config
    devices = ("cpu", "cuda")      # local_sgd only: its tensors follow the model

    def init_server(self, params, cfg, n_clients):
        return EF21ServerState({k: np.array(v, np.float32) for k, v in params.items()})

    def init_client(self, client_id: int, cfg: EF21Config) -> EF21ClientState:
        return EF21ClientState()


    def uplink_spec(self, global_params: Mapping[str, np.ndarray], cfg) -> sc.MessageSpec:
        """The update's tensors are the model's, each coded as in :meth:`client_update`."""
        return sc.MessageSpec.from_tensors(global_params, cfg.codec(), cfg.scope)

    def client_update(self, state: EF21ClientState, global_params: Mapping[str, np.ndarray],
                      data: ClientData, cfg: EF21Config, channel: Link) -> ClientResult:
        trained, stats = local_sgd(data, global_params, cfg)
        delta = subtract(trained, global_params)
        check_finite_tensors(delta)
        g = state.g if state.g is not None else {k: np.zeros_like(v) for k, v in delta.items()}
        message = channel.send(subtract(delta, g), cfg.codec(), scope=cfg.scope)
        c = channel.decode_own(message)          # exactly what the server will add
        return ClientResult(EF21ClientState({k: g[k] + c[k] for k in g}), message,
                            data.num_samples, stats)

    def server_update(self, state: EF21ServerState, updates: Sequence[Update],
                      cfg: EF21Config) -> ServerResult:
        mirror = dict(state.g)
        refreshed = []
        for u in updates:
            old = mirror.get(u.client)
            if old is None:   # g_i = 0 + c_i, computed as on the client (so -0.0 stays +0.0)
                old = {k: np.zeros_like(c, dtype=np.float32) for k, c in u.tensors.items()}
            g = {k: old[k] + u.tensors[k] for k in old}
            mirror[u.client] = g
            refreshed.append(Update(u.client, g, u.num_samples))
        step = average(refreshed, cfg.weighted)
        params = {k: v + step[k] for k, v in state.params.items()}
        return ServerResult(EF21ServerState(params, mirror))
