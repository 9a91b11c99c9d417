"""Error feedback: residual memory that re-injects what compression dropped.

``ErrorFeedback`` keeps one residual ``e`` per stable tensor name. :meth:`ErrorFeedback.step`
computes ``a = x + e``, encodes ``a`` with the given codec, and keeps ``e = a - x_hat``, where
``x_hat`` is the codec's typed reconstruction (:mod:`sparsecodec.reconstruction`, returned by
its body writer while encoding): no codec is special-cased, and nothing is decoded (but the
frame of a codec whose body writer returns ``None``, decoded once by the base class). The
invariant, exact in floating point for value formats marked "EF exact" in
:mod:`sparsecodec.values` (and for lossless codecs)::

    x_hat + e_new == x + e_old

holds because the reconstruction of each kept value is 0 or within a factor 2 of it, so
``a - x_hat`` is computed exactly (Sterbenz); ``values="sign"`` documents its bound instead.

Memory and failures: ``a`` is accumulated into a fresh buffer (one extra tensor-sized array
per tensor while a step runs; for :meth:`~ErrorFeedback.step_bundle`, the whole update) and
copied into the stored residual, in place, only once encoding succeeded: one more memory pass
over the tensor than accumulating in place, plus the new buffer's page faults. A step that raises
(a value out of its format's range, an encoding error, a tensor that changed shape) leaves
every residual exactly as it was, bit for bit: restored, not recomputed as ``(e + x) - x``,
which is not ``e`` in floating point.

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
from .reconstruction import Reconstruction

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

    def _accumulated(self, name: str, x) -> np.ndarray:
        """A new C-contiguous array ``a = e + x`` (``x`` itself on first use); ``e`` untouched."""
        x = as_numpy(x, what=f"tensor {name!r}")
        if x.dtype not in (np.float32, np.float64):
            raise ConfigError(f"error feedback needs float32/float64 tensors, got {x.dtype} for {name!r}")
        from .selection import check_finite

        check_finite(x.reshape(-1))  # a NaN must not poison the residual
        e = self._residuals.get(name)
        if e is None:
            return np.array(x, dtype=x.dtype, copy=True, order="C")
        if e.shape != x.shape or e.dtype != x.dtype:
            raise ConfigError(
                f"tensor {name!r} changed from {e.dtype}{e.shape} to {x.dtype}{x.shape}; "
                "use a new name or call reset(name)")
        return np.add(e, x, out=np.empty(e.shape, e.dtype))   # out=: an array even for 0-d

    def _commit(self, name: str, a: np.ndarray) -> None:
        """Store the new residual ``a``: into the existing buffer (it stays the same object)."""
        e = self._residuals.get(name)
        if e is None:
            self._residuals[name] = a
        else:
            np.copyto(e, a)

    # -- one tensor ------------------------------------------------------------------------
    def step(self, name: str, x, codec: Codec) -> Frame:
        """Encode ``x + e`` with ``codec``; keep what was not sent. Returns the frame.

        If encoding raises, the residual is left exactly as it was (see the module docstring).
        """
        a = self._accumulated(name, x)
        frame, recon = codec.encode_with_reconstruction(a)
        recon.apply_residual(a)          # a - x_hat: what the receiver did not get
        self._commit(name, a)
        return frame

    # -- a whole model update --------------------------------------------------------------
    def step_bundle(self, tensors: Mapping[str, Any], codec: Codec | Mapping[str, Codec], *,
                    scope: str = "tensor", checksum: bool = True, schema=None, spec=None) -> Frame:
        """Error feedback over a whole update sent as one bundle (``scope="global"`` allowed).

        With ``spec`` (a :class:`~sparsecodec.MessageSpec` both ends hold) the message is a
        compact one (:func:`~sparsecodec.encode_packed`); ``codec`` and ``scope`` must then
        be the spec's. Each tensor's residual is updated from the reconstruction its codec
        reported while encoding (``on_encoded``); the message is not decoded. If anything
        raises, no residual changes.
        """
        from .bundle import encode_bundle

        if spec is not None and (schema is not None or spec.scope != scope
                                 or _configs(spec, tensors) != _configs(codec, tensors)):
            raise ConfigError("step_bundle(spec=...): codec and scope must be the spec's, and no schema=")
        acc = {name: self._accumulated(name, x) for name, x in tensors.items()}
        sent: dict[str, Reconstruction] = {}
        if spec is not None:
            from .packed import encode_packed

            frame = encode_packed(acc, spec, checksum=checksum, on_encoded=sent.__setitem__)
        else:
            frame = encode_bundle(acc, codec, scope=scope, checksum=checksum, schema=schema,
                                  on_encoded=sent.__setitem__)
        for name, a in acc.items():
            sent[name].apply_residual(a)
        for name, a in acc.items():
            self._commit(name, a)
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
