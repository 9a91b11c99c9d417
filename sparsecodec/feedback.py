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

Failures and memory: a step that raises (a value out of its format's range, an encoding
error, a tensor that changed shape) leaves every residual exactly as it was, bit for bit:
restored, not recomputed as ``(e + x) - x``, which is not ``e`` in floating point. That takes
a copy of the old residual: :meth:`~ErrorFeedback.step` saves ``e`` into a spare buffer, then
accumulates ``a = e + x`` in place and copies ``e`` back only if encoding fails (one more
memory pass than accumulating in place). The spare is kept for the next step, one for the
whole object, as large as the largest tensor it has stepped (a DDP bucket), because faulting
in a fresh buffer each step costs more than the copy; it is not part of the state
(:meth:`state_dict`, pickles, deep copies). :meth:`~ErrorFeedback.step_bundle` accumulates
each tensor into a fresh buffer and copies it into the residual once the whole message is
written (one extra update-sized allocation while it runs).

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
        self._spare: dict[str, np.ndarray] = {}   # "buf": raw bytes step() accumulates into

    def __getstate__(self) -> dict[str, Any]:
        # the spare buffer is scratch memory, not state: pickles and deep copies go without it
        return {k: v for k, v in self.__dict__.items() if k != "_spare"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._spare = {}

    # -- residual access -------------------------------------------------------------------
    def residual(self, name: str) -> np.ndarray | None:
        """The current residual of ``name`` (a live view: do not modify), or ``None``."""
        return self._residuals.get(name)

    def names(self) -> list[str]:
        return list(self._residuals)

    def _checked(self, name: str, x) -> tuple[np.ndarray, np.ndarray | None]:
        """``(x, e)``: ``x`` as a float numpy array of ``e``'s dtype and shape (``e`` is ``None``
        on first use), checked before anything is touched."""
        x = as_numpy(x, what=f"tensor {name!r}")
        if x.dtype not in (np.float32, np.float64):
            raise ConfigError(f"error feedback needs float32/float64 tensors, got {x.dtype} for {name!r}")
        from .selection import check_finite

        check_finite(x.reshape(-1))  # a NaN must not poison the residual
        e = self._residuals.get(name)
        if e is not None and (e.shape != x.shape or e.dtype != x.dtype):
            raise ConfigError(
                f"tensor {name!r} changed from {e.dtype}{e.shape} to {x.dtype}{x.shape}; "
                "use a new name or call reset(name)")
        return x, e

    def _accumulated(self, name: str, x) -> np.ndarray:
        """A new C-contiguous array ``a = e + x`` (a copy of ``x`` on first use); ``e`` untouched."""
        x, e = self._checked(name, x)
        if e is None:
            return np.array(x, dtype=x.dtype, copy=True, order="C")
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
        x, e = self._checked(name, x)
        if e is None:          # a first step: the copy becomes the residual only on success
            a = np.array(x, dtype=x.dtype, copy=True, order="C")
            frame, recon = codec.encode_with_reconstruction(a)
            recon.apply_residual(a)
            self._residuals[name] = a
            return frame
        spare = self._spare.pop("buf", None)    # pop: atomic, so two threads never share it
        if spare is None or spare.nbytes < e.nbytes:
            spare = np.empty(e.nbytes, np.uint8)
        saved = spare[:e.nbytes].view(e.dtype).reshape(e.shape)
        np.copyto(saved, e)
        try:
            np.add(e, x, out=e)                  # a = e + x, in place
            frame, recon = codec.encode_with_reconstruction(e)
            recon.apply_residual(e)              # a - x_hat: what the receiver did not get
        except BaseException:
            np.copyto(e, saved)                  # restored bit for bit, not (e + x) - x
            raise
        finally:
            current = self._spare.get("buf")
            if current is None or current.nbytes < spare.nbytes:
                self._spare["buf"] = spare
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
            self._spare.clear()
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
