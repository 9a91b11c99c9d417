"""One place where encode entry points turn their input into a numpy array.

Accepted: numpy arrays, anything with ``__array__`` / the buffer protocol (lists too), and CPU
torch tensors, which are viewed without a copy (``requires_grad`` ones are detached first;
the view shares memory with the tensor). torch is never imported here: a tensor is
recognised by its type's module, so ``import sparsecodec`` does not pull in torch.

bfloat16 has no numpy dtype. A bf16 tensor is widened to float32 **exactly** (its 16 bits
are the top half of a float32, so ``bits << 16`` reproduces every value, NaN/Inf included);
this is a copy, and the codecs then see a float32 tensor. Pair it with ``values="bf16"`` in
:class:`~sparsecodec.TopK` to send 16-bit values with no further rounding.

    >>> import numpy as np
    >>> from sparsecodec._arrays import as_numpy
    >>> as_numpy([1.0, 2.0]).dtype.name
    'float64'
    >>> x = np.zeros(3, np.float32)
    >>> as_numpy(x) is x
    True
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import ConfigError

__all__ = ["as_numpy", "is_torch_tensor", "to_torch"]


def is_torch_tensor(x: Any) -> bool:
    """Whether ``x`` is a torch tensor (without importing torch)."""
    mod = type(x).__module__ or ""
    return (mod == "torch" or mod.startswith("torch.")) and hasattr(x, "device") and hasattr(x, "dtype")


def _torch_to_numpy(x: Any, what: str) -> np.ndarray:
    dev = x.device.type
    if dev != "cpu":
        raise ConfigError(
            f"{what} is a torch tensor on device {dev!r}; sparsecodec encodes CPU memory: move it "
            "with x.detach().cpu() (or, for top-k computed on the device, send "
            "TopK.encode_given(indices.cpu(), values.cpu(), numel))")
    if x.requires_grad:
        x = x.detach()
    name = str(x.dtype).replace("torch.", "")
    if name == "bfloat16":
        import torch   # already imported: x is a tensor

        bits = x.contiguous().view(torch.int16).numpy().view(np.uint16)
        return (bits.astype(np.uint32) << 16).view(np.float32)
    if getattr(x, "is_conj", lambda: False)() or getattr(x, "is_neg", lambda: False)():
        x = x.resolve_conj().resolve_neg()
    try:
        return x.numpy()          # shares memory with the tensor (strided views included)
    except (TypeError, RuntimeError) as exc:
        raise ConfigError(
            f"{what} has torch dtype {name}, which numpy cannot hold: convert it with "
            f"x.float() ({exc})") from None


def as_numpy(x: Any, *, what: str = "x") -> np.ndarray:
    """``x`` as a numpy array, without a copy where the memory allows. See the module docstring.

    ``what`` names the input in error messages (e.g. ``"tensor 'fc.weight'"``).
    """
    if isinstance(x, np.ndarray):
        return x
    if is_torch_tensor(x):
        return _torch_to_numpy(x, what)
    try:
        arr = np.asarray(x)
    except Exception as exc:   # noqa: BLE001 - array-likes raise anything
        raise ConfigError(f"{what} cannot be read as an array ({type(x).__name__}: {exc}); "
                          "pass a numpy array or a CPU torch tensor") from None
    if arr.dtype == object:
        raise ConfigError(f"{what} is not a numeric array (got {type(x).__name__} of objects); "
                          "pass a numpy array or a CPU torch tensor")
    return arr


def to_torch(a: np.ndarray) -> Any:
    """A torch tensor sharing memory with ``a`` (torch must be installed)."""
    try:
        import torch
    except ImportError:
        raise ConfigError("as_torch=True needs torch installed (pip install torch)") from None
    if not a.flags.writeable:
        a = a.copy()
    return torch.from_numpy(np.ascontiguousarray(a))
