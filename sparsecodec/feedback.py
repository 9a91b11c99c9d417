"""Error feedback: residual memory that re-injects what compression dropped.

``ErrorFeedback`` keeps one residual ``e`` per stable tensor name. :meth:`ErrorFeedback.step`
computes ``a = x + e``, encodes ``a`` with the given codec, and stores ``e = a - x_hat`` *in
place* (no second input-sized buffer). The invariant, exact in floating point::

    x_hat + e_new == x + e_old

holds because the codec's reconstruction of each kept value is within a factor 2 of it
(see :mod:`sparsecodec.values`), so ``a - x_hat`` is computed exactly.

A client that skips a round simply does not call ``step``: its residual is kept. The state
is checkpointable with :meth:`state_dict` / :meth:`load_state_dict` (plain numpy arrays,
pickle- and ``np.savez``-friendly), in the spirit of PyTorch's PowerSGD hook state.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> ef = sc.ErrorFeedback()
    >>> x = np.array([1.0, -3.0, 0.5, 2.0], np.float32)
    >>> frame = ef.step("w", x, sc.TopK(k=1))
    >>> sc.decode(bytes(frame)).tolist(), ef.residual("w").tolist()
    ([0.0, -3.0, 0.0, 0.0], [1.0, 0.0, 0.5, 2.0])
    >>> frame = ef.step("w", x, sc.TopK(k=1))       # a = x + e = [2, -3, 1, 4]
    >>> sc.decode(bytes(frame)).tolist()
    [0.0, 0.0, 0.0, 4.0]
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ._arrays import as_numpy
from .abc import Codec
from .errors import ConfigError
from .frame import Frame

__all__ = ["ErrorFeedback"]


class ErrorFeedback:
    """Per-tensor residual memory for error-feedback compression (EF / EC)."""

    def __init__(self) -> None:
        self._residuals: dict[str, np.ndarray] = {}

    # -- residual access -------------------------------------------------------------------
    def residual(self, name: str) -> np.ndarray | None:
        """The current residual of ``name`` (a live view: do not modify), or ``None``."""
        return self._residuals.get(name)

    def names(self) -> list[str]:
        return list(self._residuals)

    def _accumulate(self, name: str, x) -> np.ndarray:
        """``e += x`` in place (creating ``e = x`` on first use); returns ``e`` (now ``a``)."""
        x = as_numpy(x, what=f"tensor {name!r}")
        if x.dtype not in (np.float32, np.float64):
            raise ConfigError(f"error feedback needs float32/float64 tensors, got {x.dtype} for {name!r}")
        from .selection import check_finite

        check_finite(x.reshape(-1))  # before touching the state: a NaN must not poison the residual
        e = self._residuals.get(name)
        if e is None:
            e = np.array(x, dtype=x.dtype, copy=True, order="C")
            self._residuals[name] = e
            return e
        if e.shape != x.shape or e.dtype != x.dtype:
            raise ConfigError(
                f"tensor {name!r} changed from {e.dtype}{e.shape} to {x.dtype}{x.shape}; "
                "use a new name or call reset(name)")
        np.add(e, x, out=e)
        return e

    @staticmethod
    def _subtract_sent(e: np.ndarray, result: Any, codec: Codec, frame: Frame | None) -> None:
        """``e -= x_hat`` in place, using the sparse reconstruction when the codec gives one."""
        if isinstance(result, tuple) and len(result) == 2:          # TopK: (idx, v_hat)
            idx, vhat = result
            flat = e.reshape(-1)
            flat[idx] -= vhat
        else:
            if frame is None:
                raise RuntimeError("sparsecodec bug: a dense reconstruction needs the frame")
            np.subtract(e, codec.decode(bytes(frame)), out=e)

    # -- one tensor ------------------------------------------------------------------------
    def step(self, name: str, x, codec: Codec) -> Frame:
        """Encode ``x + e`` with ``codec``; keep what was not sent. Returns the frame."""
        x = as_numpy(x, what=f"tensor {name!r}")
        e = self._accumulate(name, x)
        try:
            if hasattr(codec, "encode_sparse"):
                frame, idx, vhat = codec.encode_sparse(e)
                result: Any = (idx, vhat)
            else:
                frame, x_hat = codec.encode_and_reconstruct(e)
                result = None
                np.subtract(e, x_hat, out=e)
                return frame
        except Exception:
            np.subtract(e, x, out=e)   # undo the accumulation (exact unless it overflowed)
            raise
        self._subtract_sent(e, result, codec, frame)
        return frame

    # -- a whole model update --------------------------------------------------------------
    def step_bundle(self, tensors: Mapping[str, Any], codec: Codec | Mapping[str, Codec], *,
                    scope: str = "tensor", checksum: bool = True, schema=None, spec=None) -> Frame:
        """Error feedback over a whole update sent as one bundle (``scope="global"`` allowed).

        With ``spec`` (a :class:`~sparsecodec.MessageSpec` both ends hold) the message is a
        compact one (:func:`~sparsecodec.encode_packed`); ``codec`` and ``scope`` must then
        be the spec's.
        """
        from .bundle import encode_bundle

        if spec is not None and (schema is not None or spec.scope != scope
                                 or _configs(spec, tensors) != _configs(codec, tensors)):
            raise ConfigError("step_bundle(spec=...): codec and scope must be the spec's, and no schema=")
        tensors = {n: as_numpy(x, what=f"tensor {n!r}") for n, x in tensors.items()}
        acc = {name: self._accumulate(name, x) for name, x in tensors.items()}
        sent: dict[str, Any] = {}
        try:
            if spec is not None:
                from .packed import encode_packed

                frame = encode_packed(acc, spec, checksum=checksum,
                                      on_encoded=lambda n, r: sent.__setitem__(n, r))
            else:
                frame = encode_bundle(acc, codec, scope=scope, checksum=checksum, schema=schema,
                                      on_encoded=lambda n, r: sent.__setitem__(n, r))
        except Exception:
            for name, x in tensors.items():
                np.subtract(acc[name], x, out=acc[name])
            raise
        decoded = None
        for name, e in acc.items():
            result = sent[name]
            if isinstance(result, tuple):        # (idx, v_hat): no codec or frame needed
                idx, vhat = result
                e.reshape(-1)[idx] -= vhat
            else:   # a codec without a sparse reconstruction: use what the receiver will see
                if decoded is None:
                    from .bundle import decode_bundle
                    from .packed import decode_packed

                    decoded = (decode_packed(bytes(frame), spec) if spec is not None
                               else decode_bundle(bytes(frame), schema=schema))
                np.subtract(e, decoded[name], out=e)
        return frame

    # -- checkpointing ---------------------------------------------------------------------
    def reset(self, name: str | None = None) -> None:
        """Forget one residual (or all)."""
        if name is None:
            self._residuals.clear()
        else:
            self._residuals.pop(name, None)

    def state_dict(self) -> dict[str, Any]:
        """A deep copy of the state: ``{"residuals": {name: ndarray}}``."""
        return {"residuals": {k: v.copy() for k, v in self._residuals.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        try:
            residuals = state["residuals"]
        except (KeyError, TypeError):
            raise ConfigError("state must be the dict returned by ErrorFeedback.state_dict()") from None
        self._residuals = {str(k): np.array(v, copy=True, order="C") for k, v in residuals.items()}


def _configs(codec, names) -> dict:
    """Each tensor's codec config (a spec, one codec, or a mapping name -> codec)."""
    from .bundle import _codec_for
    from .packed import MessageSpec

    if isinstance(codec, MessageSpec):
        codec = codec.codec
    return {n: _codec_for(codec, n).get_config() for n in names}
