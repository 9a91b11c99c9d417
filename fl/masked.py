"""Masked networks over frozen random weights (FedPM, Isik et al., ICLR 2023; docs/fedpm.md).

A masked network is an ordinary architecture of :mod:`fl.models` (``fedpm-mlp``,
``fedpm-conv4``, or any Linear/Conv2d model) evaluated with parameters ``W * m``: ``W`` are
the frozen weights *and biases* (the model's seeded initialisation, signed constant
``+-e/sqrt(fan_in)`` for the FedPM models) and ``m`` a binary mask. What is trained is one
real score ``s`` per weight and per bias; the keep-probability is ``theta = sigmoid(s)``.
During training every forward pass draws a **fresh** mask ``m ~ Bernoulli(theta)`` for every
tensor, and gradients reach ``s`` through a straight-through estimator:

* ``ste="official"`` (the official code's ``Bern.backward``): ``dL/dtheta := theta * dL/dm``,
  so ``dL/ds = theta * theta (1 - theta) * dL/dm``;
* ``ste="plain"``: ``dL/dtheta := dL/dm`` (a third-party port's ``m.detach() + theta - theta.detach()``).

Instead of a parallel family of ``MaskedLinear``/``MaskedConv2d`` classes, the architecture
is run through :func:`torch.func.functional_call` with the masked tensors substituted for
its parameters: the model object is never written to, so its parameters stay the frozen
``W`` that every party rebuilds from the shared seed.

    >>> import torch
    >>> from fl.models import build_model
    >>> model = build_model("fedpm-mlp", seed=0)
    >>> weights = frozen_weights(model)
    >>> scores = {k: torch.zeros_like(v, requires_grad=True) for k, v in weights.items()}
    >>> out = masked_forward(model, weights, scores, torch.zeros(2, 1, 28, 28),
    ...                      torch.Generator().manual_seed(0))
    >>> out.shape
    torch.Size([2, 10])
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from sparsecodec.errors import ConfigError

__all__ = ["STE_MODES", "bernoulli", "bernoulli_ste", "sample_masks", "frozen_weights", "masked_forward",
           "threshold_forward", "keep_probabilities"]

STE_MODES = ("official", "plain")


def bernoulli(theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``1[u < theta]``, ``u ~ U[0, 1)``: a Bernoulli(theta) sample as 0/1 floats.

    Same law as ``torch.bernoulli`` (which the official code calls) but about 3x faster on CPU,
    and sampling is most of a FedPM step's non-matmul time.
    """
    u = torch.rand(theta.shape, generator=generator, dtype=theta.dtype)
    return (u < theta).to(theta.dtype)


class _BernoulliOfficial(torch.autograd.Function):
    """``m ~ Bernoulli(theta)`` forward; ``theta * grad`` backward (official ``Bern``)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        ctx.save_for_backward(theta)
        return bernoulli(theta, generator)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (theta,) = ctx.saved_tensors
        return theta * grad, None


class _BernoulliPlain(torch.autograd.Function):
    """``m ~ Bernoulli(theta)`` forward; identity backward. The same gradient as the
    third-party ``m.detach() + theta - theta.detach()``, but the forward value is exactly 0/1
    (that sum is not, in floating point)."""

    @staticmethod
    def forward(ctx, theta: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        return bernoulli(theta, generator)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def bernoulli_ste(theta: torch.Tensor, generator: torch.Generator, ste: str = "official") -> torch.Tensor:
    """A fresh ``Bernoulli(theta)`` sample (float 0/1) whose gradient follows ``ste``."""
    if ste == "official":
        return _BernoulliOfficial.apply(theta, generator)
    if ste == "plain":
        return _BernoulliPlain.apply(theta, generator)
    raise ConfigError(f"ste must be one of {STE_MODES}, got {ste!r}")


def keep_probabilities(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``theta = sigmoid(s)`` in float64 from float32 scores, as both ends compute it.

    This is the side information of the uplink mask coder: the server and every client
    evaluate it with this one function on the same fp32 scores (the lossless downlink), so
    they hold the same vector and the coder's 20-bit quantization agrees on every entry.
    """
    out = {}
    for name, s in scores.items():
        s64 = np.asarray(s, dtype=np.float64)
        # the two branches never overflow exp(); same formula on both ends
        e = np.exp(-np.abs(s64))
        out[name] = np.where(s64 >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out


def sample_masks(scores: Mapping[str, torch.Tensor], generator: torch.Generator) -> dict[str, np.ndarray]:
    """One ``Bernoulli(sigmoid(s))`` sample per tensor, as numpy bool arrays (the upload)."""
    with torch.no_grad():
        return {k: bernoulli(torch.sigmoid(s), generator).numpy().astype(bool)
                for k, s in scores.items()}


def frozen_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's parameters as detached copies: the frozen ``W`` (weights and biases)."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def masked_forward(model: nn.Module, weights: Mapping[str, torch.Tensor],
                   scores: Mapping[str, torch.Tensor], x: torch.Tensor,
                   generator: torch.Generator, ste: str = "official") -> torch.Tensor:
    """``model(x)`` with every parameter replaced by ``W * m``, ``m ~ Bernoulli(sigmoid(s))``.

    One fresh mask per tensor per call (the official layers sample in every forward pass).
    """
    params = {k: weights[k] * bernoulli_ste(torch.sigmoid(scores[k]), generator, ste)
              for k in weights}
    return functional_call(model, params, (x,))


def threshold_forward(model: nn.Module, weights: Mapping[str, torch.Tensor],
                      scores: Mapping[str, torch.Tensor], x: torch.Tensor,
                      ths: float = 0.5) -> torch.Tensor:
    """Deterministic evaluation (the official ``ths`` mode): mask ``theta > ths``."""
    params = {k: weights[k] * (torch.sigmoid(scores[k]) > ths).to(weights[k].dtype) for k in weights}
    return functional_call(model, params, (x,))
