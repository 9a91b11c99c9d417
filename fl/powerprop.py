"""Powerpropagation layers with SparsyFed's activation pruning (docs/sparsyfed.md, "The algorithm").

**Powerprop.** A :class:`PowerpropLinear` / :class:`PowerpropConv2d` keeps a *latent* weight
``v`` in ``self.weight`` (same parameter names and shapes as ``nn.Linear`` / ``nn.Conv2d``, so a
state_dict moves between the plain and the Powerprop model unchanged) and computes with::

    w = sign(v) * |v| ** alpha        (alpha > 1; alpha = 1 gives w = v exactly)

so autograd gives ``dL/dv = alpha |v|^(alpha-1) dL/dw``: an exactly-zero latent weight gets an
exactly-zero gradient (and zero weight decay) and stays zero during local training. Biases and
BatchNorm are untouched.

**Activation pruning** (``prune_activations=True``, training mode only). The forward output is
computed with the *full* input; only the copy of the input saved for the weight gradient is
sparsified, to the layer's current weight density ``1 - s_l`` (``s_l`` = fraction of exact zeros
of ``w``, recomputed at every forward pass), inside a custom :class:`torch.autograd.Function`::

    grad_input  = f(w, grad_out)              exact
    grad_weight = f(pruned input, grad_out)   approximate

Linear layers keep the ``k = ceil((1 - s_l) * numel)`` largest ``|x|`` of the whole
``(batch x features)`` input (``|x| >= k-th largest``) at every call (official ``matrix_drop``).
Conv layers compute that threshold on their **first training call with a sparse weight** and then
reuse the stored value (official ``drop_threshold`` quirk, ``in_threshold = -1`` until then); while
the weight is dense (round 1) no threshold is stored and every batch is kept whole, as the official
code, which updates ``in_threshold`` only when the sparsity is non-zero. A module is rebuilt every
round per client (:func:`powerprop_model`), which resets it.

**Init** (official ``models.py:init_weights``): truncated normal ``std = sqrt(1/fan_in)/0.8796...``
cut at +-2 std (``fl.models`` ``"lecun_normal"``), biases 0, then ``v = sign(u)|u|^(1/alpha)`` so
that the effective weight is ``u`` (:func:`init_weights`, :func:`to_latent`).

Deviations from the official modules (``sparsyfed_modules.py``), named on purpose:

* The pruned saved input is stored as a dense tensor with zeros (no memory is actually saved;
  the weight gradient is what the method changes, and that is exact here).
* With ``alpha == 1`` the weight is used as is (no ``sign * pow`` round trip), so that
  ``alpha = 1`` without activation pruning is bit-identical to the plain layers.
* ``padding="same"`` convs are supported for odd kernels only (the official code has none).

    >>> lin = PowerpropLinear(4, 3, alpha=2.0)
    >>> with torch.no_grad():
    ...     _ = lin.weight.copy_(torch.tensor([[0.0, -2.0, 1.0, 3.0]] * 3))
    >>> effective_weight(lin.weight, 2.0)[0].tolist()
    [0.0, -4.0, 1.0, 9.0]
    >>> lin(torch.ones(2, 4)).sum().backward()
    >>> lin.weight.grad[0].tolist()      # dL/dv = 2|v| dL/dw: the zero latent weight gets 0
    [0.0, 8.0, 4.0, 12.0]
"""

from __future__ import annotations

import copy
import math
from typing import Iterable, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sparsecodec.errors import ConfigError

from .models import _lecun_normal

__all__ = ["PowerpropLinear", "PowerpropConv2d", "effective_weight", "to_latent", "to_effective",
           "powerprop_model", "init_weights", "prunable_modules", "layer_sparsity",
           "keep_threshold", "ActPrunedLinear", "ActPrunedConv2d"]


# -- the re-parameterisation ---------------------------------------------------------------------
def effective_weight(v: torch.Tensor, alpha: float) -> torch.Tensor:
    """``sign(v) |v|^alpha`` (differentiable; ``v`` itself when ``alpha == 1``)."""
    if alpha == 1.0:
        return v
    return torch.sign(v) * torch.pow(torch.abs(v), alpha)


def _np_power(x: np.ndarray, p: float) -> np.ndarray:
    x32 = np.asarray(x, np.float32)
    if p == 1.0:
        return x32.copy()
    return (np.sign(x32) * np.power(np.abs(x32), np.float32(p))).astype(np.float32)


def to_latent(params: Mapping[str, np.ndarray], alpha: float, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Effective weights -> latent ``v = sign(w)|w|^(1/alpha)`` for ``names``; others copied.

    >>> to_latent({"w": np.array([4.0, -9.0], np.float32), "b": np.ones(1, np.float32)}, 2.0, ["w"])["w"].tolist()
    [2.0, -3.0]
    """
    names = set(names)
    return {k: _np_power(v, 1.0 / alpha) if k in names else np.array(v, np.float32)
            for k, v in params.items()}


def to_effective(params: Mapping[str, np.ndarray], alpha: float, names: Iterable[str]) -> dict[str, np.ndarray]:
    """Latent ``v`` -> effective ``w = sign(v)|v|^alpha`` for ``names`` (float32, like torch)."""
    names = set(names)
    out = {}
    for k, v in params.items():
        if k in names and alpha != 1.0:
            out[k] = effective_weight(torch.from_numpy(np.array(v, np.float32)), alpha).numpy()
        else:
            out[k] = np.array(v, np.float32)
    return out


def layer_sparsity(w: torch.Tensor) -> float:
    """``s_l = 1 - nnz(w) / numel(w)`` (official ``get_tensor_sparsity``)."""
    n = w.numel()
    return 1.0 - int(torch.count_nonzero(w)) / n if n else 0.0


def keep_threshold(x: torch.Tensor, density: float) -> float:
    """The magnitude threshold keeping the ``k = ceil(density * numel)`` largest ``|x|``
    (``|x| >= threshold``; ties at the threshold are all kept, as ``matrix_drop``).

    >>> keep_threshold(torch.tensor([0.1, -3.0, 2.0, 0.5]), 0.5)
    2.0
    """
    n = x.numel()
    k = min(n, int(math.ceil(density * n)))
    if k <= 0:
        return math.inf
    flat = x.detach().reshape(-1).abs()
    return float(torch.kthvalue(flat, n - k + 1).values)


def _prune_saved(x: torch.Tensor, threshold: float) -> torch.Tensor:
    if threshold == math.inf:
        return torch.zeros_like(x)
    return torch.where(x.abs() >= threshold, x, torch.zeros_like(x))


# -- the autograd functions ------------------------------------------------------------------------
class ActPrunedLinear(torch.autograd.Function):
    """``F.linear(x, w, b)`` whose weight gradient uses the pruned input ``x_s`` (``|x| >= thr``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, threshold: float):
        saved = _prune_saved(x, threshold)
        ctx.save_for_backward(saved, weight)
        ctx.has_bias = bias is not None
        return F.linear(x, weight, bias)

    @staticmethod
    def backward(ctx, grad_out):
        saved, weight = ctx.saved_tensors
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = grad_out.matmul(weight)
        if ctx.needs_input_grad[1]:
            go = grad_out.reshape(-1, grad_out.shape[-1])
            grad_w = go.t().matmul(saved.reshape(-1, saved.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.reshape(-1, grad_out.shape[-1]).sum(0)
        return grad_x, grad_w, grad_b, None


class ActPrunedConv2d(torch.autograd.Function):
    """``F.conv2d`` whose weight gradient uses the pruned input (``|x| >= thr``)."""

    @staticmethod
    def forward(ctx, x, weight, bias, threshold: float, stride, padding, dilation, groups):
        saved = _prune_saved(x, threshold)
        ctx.save_for_backward(saved, weight)
        ctx.conf = (stride, padding, dilation, groups)
        ctx.x_shape = x.shape
        ctx.has_bias = bias is not None
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def backward(ctx, grad_out):
        saved, weight = ctx.saved_tensors
        stride, padding, dilation, groups = ctx.conf
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.x_shape, weight, grad_out, stride, padding, dilation, groups)
        if ctx.needs_input_grad[1]:
            grad_w = torch.nn.grad.conv2d_weight(saved, weight.shape, grad_out, stride, padding, dilation, groups)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad_out.sum((0, 2, 3))
        return grad_x, grad_w, grad_b, None, None, None, None, None


# -- the modules -------------------------------------------------------------------------------------
class _PowerpropMixin:
    alpha: float
    prune_activations: bool

    def _setup(self, alpha: float, prune_activations: bool) -> None:
        if not (alpha >= 1.0 and math.isfinite(alpha)):
            raise ConfigError(f"Powerprop alpha must be a finite float >= 1, got {alpha}")
        self.alpha = float(alpha)
        self.prune_activations = bool(prune_activations)
        self.reset_activation_stats()

    def reset_activation_stats(self) -> None:
        self.saved_density_sum, self.saved_density_count = 0.0, 0
        self.last_saved_density: float | None = None

    def _record(self, x: torch.Tensor, threshold: float) -> None:
        if threshold == math.inf:
            d = 0.0
        else:
            d = float((x.detach().abs() >= threshold).sum()) / max(1, x.numel())
        self.last_saved_density = d
        self.saved_density_sum += d
        self.saved_density_count += 1

    def effective(self) -> torch.Tensor:
        return effective_weight(self.weight, self.alpha)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, prune_activations={self.prune_activations}"


class PowerpropLinear(_PowerpropMixin, nn.Linear):
    """``nn.Linear`` with a latent weight (``w = sign(v)|v|^alpha``) and activation pruning."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 alpha: float = 1.25, prune_activations: bool = True, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, device=device, dtype=dtype)
        self._setup(alpha, prune_activations)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective()
        if not (self.training and self.prune_activations and torch.is_grad_enabled()):
            return F.linear(x, w, self.bias)
        thr = keep_threshold(x, 1.0 - layer_sparsity(w))      # recomputed every call
        self._record(x, thr)
        return ActPrunedLinear.apply(x, w, self.bias, thr)


class PowerpropConv2d(_PowerpropMixin, nn.Conv2d):
    """``nn.Conv2d`` with a latent weight and activation pruning whose threshold is fixed by the
    first training batch with a sparse weight (``in_threshold`` = -1 until then)."""

    def __init__(self, *args, alpha: float = 1.25, prune_activations: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self._setup(alpha, prune_activations)
        self.in_threshold = -1.0

    def _padding(self):
        if not isinstance(self.padding, str):
            return self.padding
        if self.padding == "valid":
            return (0, 0)
        if any(k % 2 == 0 for k in self.kernel_size) or any(s != 1 for s in self.stride):
            raise ConfigError("activation pruning supports padding='same' only for odd kernels and stride 1")
        return tuple(d * (k - 1) // 2 for d, k in zip(self.dilation, self.kernel_size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.effective()
        if self.padding_mode != "zeros":
            raise ConfigError("PowerpropConv2d supports padding_mode='zeros' only")
        if not (self.training and self.prune_activations and torch.is_grad_enabled()):
            return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        density = 1.0 - layer_sparsity(w)
        if density >= 1.0:
            # a dense layer stores no threshold (official: in_threshold is updated only when the
            # sparsity is non-zero), so every batch keeps its whole input until the layer is sparse
            thr = 0.0
        else:
            if self.in_threshold < 0:                            # first sparse training call only
                self.in_threshold = keep_threshold(x, density)
            thr = self.in_threshold
        self._record(x, thr)
        return ActPrunedConv2d.apply(x, w, self.bias, thr, self.stride, self._padding(),
                                     self.dilation, self.groups)


# -- whole models ------------------------------------------------------------------------------------
def prunable_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``{name: module}`` of every Linear / Conv2d (the layers Powerprop and pruning touch)."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))}


def _convert(m: nn.Module, alpha: float, prune_activations: bool) -> nn.Module:
    if isinstance(m, nn.Conv2d):
        if type(m) is not nn.Conv2d and not isinstance(m, PowerpropConv2d):
            raise ConfigError(f"cannot convert {type(m).__name__} to Powerprop")
        new = PowerpropConv2d(m.in_channels, m.out_channels, m.kernel_size, stride=m.stride,
                              padding=m.padding, dilation=m.dilation, groups=m.groups,
                              bias=m.bias is not None, padding_mode=m.padding_mode,
                              alpha=alpha, prune_activations=prune_activations, device="meta")
    elif isinstance(m, nn.Linear):
        if type(m) is not nn.Linear and not isinstance(m, PowerpropLinear):
            raise ConfigError(f"cannot convert {type(m).__name__} to Powerprop")
        new = PowerpropLinear(m.in_features, m.out_features, m.bias is not None, alpha=alpha,
                              prune_activations=prune_activations, device="meta")
    else:
        return m
    new.weight = nn.Parameter(m.weight.detach().clone())
    if m.bias is not None:
        new.bias = nn.Parameter(m.bias.detach().clone())
    new.train(m.training)
    return new


def powerprop_model(model: nn.Module, alpha: float = 1.25, prune_activations: bool = True) -> nn.Module:
    """A fresh copy of ``model`` with every Linear / Conv2d replaced by its Powerprop version
    (same state_dict names; the parameters are copied and read as the *latent* ``v``).

    >>> from fl.models import build_model
    >>> net = powerprop_model(build_model("small-cnn", seed=0))
    >>> type(net.conv1).__name__, list(net.state_dict())[:2]
    ('PowerpropConv2d', ['conv1.weight', 'conv1.bias'])
    """
    new = copy.deepcopy(model)
    for name, m in list(new.named_modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, (nn.Linear, nn.Conv2d)):
                setattr(m, child_name, _convert(child, alpha, prune_activations))
    return new


def init_weights(model: nn.Module, alpha: float, generator: torch.Generator) -> nn.Module:
    """The official init in place: truncated normal ``std = sqrt(1/fan_in)/0.8796...`` at +-2 std
    and zero biases on every Linear / Conv2d, then ``v = sign(u)|u|^(1/alpha)`` (effective ``w = u``).
    The engine gets the same result from ``model_options.init = "lecun_normal"`` plus the
    algorithm's :func:`to_latent` in ``init_server``."""
    with torch.no_grad():
        for m in prunable_modules(model).values():
            _lecun_normal(m.weight, m.bias, generator)
            if alpha != 1.0:
                m.weight.copy_(torch.sign(m.weight) * torch.pow(m.weight.abs(), 1.0 / alpha))
    return model
