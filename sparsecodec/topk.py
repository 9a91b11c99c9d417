"""The ``TopK`` codec: send the k largest-magnitude entries (positions + values).

Frame body (after the 5-byte preamble, see :mod:`sparsecodec.frame`)::

    header   dtype, ndim, dims                      (tensor header)
    header   config byte: bits 0-3 index coder id, bits 4-6 value coder id (7: the id
             follows as a varint of id - 7), bit 7 = non-finite values allowed
    index    varint k, then the index coder's payload (parameters derived from numel, k)
    values   k values in the value format (a size fixed by k, so the index payload length is
             implied; see :mod:`sparsecodec.values`)

How k is chosen (``k_rule``, applied per tensor, or once over a whole bundle with
``scope="global"``):

* ``k=<int>``: exactly that many; a tensor with fewer than k entries is a ``ConfigError``
  (in a bundle it names the tensor): use ``density=...`` when a model has small tensors;
* ``k="nnz"``: all non-zeros of an already-sparse tensor (exact, lossless for fp32);
* ``density=<fraction>`` with ``k_rule="round"`` (round-half-even of numel*density),
  ``"ceil"``, or ``"flare"``: ``round_half_even(numel*density) + 1`` capped at numel, the
  FLARE code's per-tensor rule with ``density = R/100`` (docs/conventions.md, "Top-k
  conventions differ between papers"; see :meth:`TopK.flare`).

Selection is exact, ties broken towards the lower index (:func:`sparsecodec.topk_indices`).
Deviation from the FLARE code, named here on purpose: FLARE keeps ``|x| > kth`` (strict), so
on exact ties at the threshold it keeps *fewer* than k entries; we always keep exactly k.
The two agree whenever the (k+1) largest magnitudes are distinct.

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> x = np.arange(-5, 5, dtype=np.float32)
    >>> codec = sc.TopK(k=3)
    >>> codec.decode(bytes(codec.encode(x))).tolist()
    [-5.0, -4.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 4.0]
    >>> sc.TopK.flare(R=0.001).k_for(582_026)   # FLARE CNN tensor at R = 0.001 %
    7
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._arrays import as_numpy
from .abc import Codec
from .errors import ConfigError, CorruptFrameError
from .frame import Frame, FrameReader, FrameWriter
from .indices import INDEX_CODERS, decode_indices, encode_indices, encode_indices_auto
from .reconstruction import Reconstruction, SparseRecon
from .registry import register_codec
from .selection import check_finite, topk_indices, topk_select
from .values import (MAX_VALUE_WIRE_ID, VALUE_CODERS, VALUE_ID_ESCAPE, decode_values, encode_values,
                     value_coder_name, value_payload_bytes)

__all__ = ["TopK", "k_for", "K_RULES"]

K_RULES = ("round", "ceil", "flare")


def index_coder_names() -> dict[int, str]:
    """Wire id -> index coder name, from the live table (a coder registered later decodes)."""
    return {v: k for k, v in INDEX_CODERS.items()}


_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def read_value_coder(r: FrameReader, config: int) -> str:
    """The value coder a TopK body names: bits 4-6 of its config byte, or, when they hold the
    escape (7), the varint after it (section ``header``); CorruptFrameError if unknown."""
    value_id = (config >> 4) & 0x07
    if value_id == VALUE_ID_ESCAPE:
        value_id += r.varint("extended value coder id", MAX_VALUE_WIRE_ID - VALUE_ID_ESCAPE)
    return value_coder_name(value_id)


def k_for(numel: int, *, k: int | None = None, density: float | None = None,
          k_rule: str = "round") -> int:
    """The number of entries kept for a tensor of ``numel`` elements.

    >>> k_for(1000, density=0.0125), k_for(1000, density=0.0125, k_rule="ceil")
    (12, 13)
    >>> k_for(10, density=0.001, k_rule="flare")   # FLARE: always at least one per tensor
    1
    """
    numel = int(numel)
    if k is not None:
        if k > numel:
            raise ConfigError(f"k={k} exceeds the tensor size {numel}; use density=..., or a smaller k")
        return int(k)
    if density is None:
        raise ConfigError("give k=<count> or density=<fraction>")
    exact = numel * float(density)
    if k_rule == "round":
        return min(numel, int(np.rint(exact)))            # np.rint rounds half to even, like TF
    if k_rule == "ceil":
        return min(numel, int(np.ceil(exact - 1e-9 * max(1.0, exact))))
    if k_rule == "flare":
        return min(numel, int(np.rint(exact)) + 1)
    raise ConfigError(f"k_rule must be one of {K_RULES}, got {k_rule!r}")


@register_codec
@dataclass(frozen=True)
class TopK(Codec):
    """Top-k sparsification with near-bound index coding. See the module docstring."""

    k: int | str | None = None
    density: float | None = None
    values: str = "fp32"
    index: str = "auto"
    k_rule: str = "round"
    allow_nonfinite: bool = False
    checksum: bool = False

    codec_id: ClassVar[str] = "topk"
    wire_id: ClassVar[int] = 1

    def __post_init__(self) -> None:
        if (self.k is None) == (self.density is None):
            raise ConfigError("TopK needs exactly one of k=<count>|'nnz' or density=<fraction>")
        if self.k is not None and self.k != "nnz":
            if isinstance(self.k, bool) or not isinstance(self.k, (int, np.integer)) or self.k < 0:
                raise ConfigError(f"k must be a non-negative int or 'nnz', got {self.k!r}")
        if self.density is not None and not 0.0 <= float(self.density) <= 1.0:
            raise ConfigError(f"density must be in [0, 1], got {self.density}")
        if self.values not in VALUE_CODERS:
            raise ConfigError(f"values must be one of {sorted(VALUE_CODERS)}, got {self.values!r}")
        if self.index != "auto" and self.index not in INDEX_CODERS:
            raise ConfigError(f"index must be 'auto' or one of {sorted(INDEX_CODERS)}, got {self.index!r}")
        if self.k_rule not in K_RULES:
            raise ConfigError(f"k_rule must be one of {K_RULES}, got {self.k_rule!r}")

    @classmethod
    def flare(cls, R: float, **kwargs: Any) -> "TopK":
        """FLARE's per-tensor rule: keep ``round(size*R/100)+1`` entries; ``R`` is a percent."""
        return cls(density=float(R) / 100.0, k_rule="flare", **kwargs)

    def k_for(self, numel: int) -> int:
        """k for one tensor of ``numel`` elements (not defined for ``k='nnz'``)."""
        if self.k == "nnz":
            raise ConfigError("k='nnz' depends on the tensor's content, not its size")
        return k_for(numel, k=None if self.k is None else int(self.k), density=self.density,
                     k_rule=self.k_rule)

    # -- encoding --------------------------------------------------------------------------
    def prepare_input(self, x: Any) -> np.ndarray:
        """``x`` as the numpy array this codec encodes: float32 or float64 (ConfigError else).

        Bundles and compact messages call it before a global or per-tensor selection.

        >>> import numpy as np, sparsecodec as sc
        >>> sc.TopK(k=1).prepare_input([1.0, 2.0]).dtype
        dtype('float64')
        """
        x = as_numpy(x)
        if x.dtype not in _FLOATS:
            raise ConfigError(f"TopK encodes float32/float64 arrays, got {x.dtype}; convert with x.astype(np.float32)")
        return x

    def select(self, flat: np.ndarray) -> np.ndarray:
        """The positions this codec keeps for a flat array (sorted, int64)."""
        if self.k == "nnz":
            if not self.allow_nonfinite:
                check_finite(flat)
            return np.flatnonzero(flat).astype(np.int64, copy=False)
        return topk_indices(flat, self.k_for(flat.size), allow_nonfinite=self.allow_nonfinite)

    def _write_body(self, x, w: FrameWriter, *, indices: np.ndarray | None = None) -> SparseRecon:
        x = self.prepare_input(x)
        flat = x.reshape(-1)
        if indices is None and self.k != "nnz":
            # the selection gathers the values on its way (one read of x saved)
            idx, vals = topk_select(flat, self.k_for(flat.size), allow_nonfinite=self.allow_nonfinite)
        elif indices is None:
            idx = self.select(flat)
            vals = flat[idx]
        else:  # positions chosen by the caller (a bundle's global top-k): validated by encode_indices
            idx = np.ascontiguousarray(indices, dtype=np.int64)
            if not self.allow_nonfinite:
                check_finite(flat)
            vals = flat[idx]
        return self._write_selected(w, x.dtype, x.shape, idx, vals)

    def _write_selected(self, w: FrameWriter, dtype, shape, idx: np.ndarray, vals: np.ndarray) -> SparseRecon:
        """Write a selection; its reconstruction: ``idx`` (validated by ``encode_indices``,
        strictly increasing) and the decoded values, bit-identical to the decoder's."""
        numel = int(np.prod(shape, dtype=np.int64))
        if self.index == "auto":   # one validation pass chooses and encodes
            coder, payload = encode_indices_auto(idx, numel)
        else:
            coder, payload = self.index, encode_indices(idx, numel, self.index)
        # vals is always a new array here (a gather), so the coder may keep it as v_hat
        vbytes, vhat = encode_values(vals, self.values, allow_nonfinite=self.allow_nonfinite, owned=True)
        vid = VALUE_CODERS[self.values]
        config = (INDEX_CODERS[coder] | (min(vid, VALUE_ID_ESCAPE) << 4)
                  | (0x80 if self.allow_nonfinite else 0))
        w.tensor_header(dtype, shape)
        w.u8(config, "header")
        if vid >= VALUE_ID_ESCAPE:          # an id past the config byte's 3 bits follows it
            w.varint(vid - VALUE_ID_ESCAPE, "header")
        w.varint(idx.size, "index")
        w.raw(payload, "index")
        w.raw_view(vbytes, "values")   # vhat (which it may view) is not written before finish()
        return SparseRecon(idx, vhat, tuple(shape), dtype)

    def _frame_meta(self, recon: Reconstruction | None) -> dict[str, Any] | None:
        return {"k": recon.k} if isinstance(recon, SparseRecon) else None

    def encode_sparse(self, x, *, indices: np.ndarray | None = None) -> tuple[Frame, np.ndarray, np.ndarray]:
        """Encode and return ``(frame, idx, v_hat)``: what the decoder will put where.

        The arrays of :meth:`encode_with_reconstruction`'s :class:`~sparsecodec.SparseRecon`.

        >>> import numpy as np, sparsecodec as sc
        >>> frame, idx, v_hat = sc.TopK(k=1, values="bf16").encode_sparse(np.array([0.1, -3.3], np.float32))
        >>> idx.tolist(), v_hat.tolist()
        ([1], [-3.296875])
        """
        frame, recon = self.encode_with_reconstruction(x, indices=indices)
        assert isinstance(recon, SparseRecon)   # _write_body's return type
        return frame, recon.idx, recon.values

    def encode_given(self, indices, values, numel: int | None = None, *,
                     shape: tuple[int, ...] | None = None, dtype="float32") -> Frame:
        """Encode a selection made elsewhere (e.g. ``torch.topk`` on a GPU, moved to the CPU).

        ``indices`` are flat positions (any order, no repeats) into a tensor of ``numel``
        entries (or of ``shape``); ``values[i]`` is the entry at ``indices[i]``; ``dtype``
        (float32 or float64) is the dtype the decoder returns. This codec's ``k`` rule is not
        applied: ``len(indices)`` entries are sent. Index and value coders are this codec's.

        >>> import numpy as np, sparsecodec as sc
        >>> f = sc.TopK(k=2).encode_given([7, 1], np.array([3.0, -1.0], np.float32), numel=8)
        >>> sc.decode(bytes(f)).tolist()
        [0.0, -1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 3.0]
        """
        dt = np.dtype(str(dtype).replace("torch.", ""))
        if dt not in _FLOATS:
            raise ConfigError(f"dtype must be float32 or float64, got {dt}")
        if shape is None:
            if numel is None:
                raise ConfigError("give numel=<size of the flat tensor> or shape=<its shape>")
            shape = (int(numel),)
        shape = tuple(int(d) for d in shape)
        if numel is not None and int(numel) != int(np.prod(shape, dtype=np.int64)):
            raise ConfigError(f"numel={numel} does not match shape {shape}")
        idx = as_numpy(indices, what="indices").reshape(-1)
        vals = as_numpy(values, what="values").reshape(-1)
        if idx.dtype.kind not in "iu":
            raise ConfigError(f"indices must be integers, got {idx.dtype}")
        if vals.dtype.kind != "f":
            raise ConfigError(f"values must be floats, got {vals.dtype}")
        if idx.size != vals.size:
            raise ConfigError(f"{idx.size} indices but {vals.size} values; give one value per index")
        order = np.argsort(idx, kind="stable")
        idx = np.ascontiguousarray(idx[order], dtype=np.int64)
        vals = vals[order].astype(dt, copy=False)
        if not self.allow_nonfinite:
            check_finite(vals, name="values")
        w = FrameWriter(self.wire_id, checksum=self.checksum)
        recon = self._write_selected(w, dt, shape, idx, vals)
        return w.finish(numel=int(np.prod(shape, dtype=np.int64)), codec_id=self.codec_id,
                        meta=self._frame_meta(recon))

    # -- decoding --------------------------------------------------------------------------
    @classmethod
    def _read_body(cls, r: FrameReader, out: np.ndarray | None = None) -> np.ndarray:
        dtype, shape, numel = r.tensor_header()
        if dtype not in _FLOATS:
            raise CorruptFrameError(f"a topk frame must hold float32/float64, header says {dtype}")
        config = r.u8("config byte")
        index_id, nonfinite = config & 0x0F, bool(config & 0x80)
        names = index_coder_names()
        if index_id not in names:
            raise CorruptFrameError(f"unknown index coder id {index_id}")
        vcoder = read_value_coder(r, config)
        k = r.varint("k", numel)
        values_len = value_payload_bytes(vcoder, k)
        if values_len > r.remaining:
            raise CorruptFrameError(
                f"k={k} {vcoder} values need {values_len} bytes but only {r.remaining} remain: "
                "truncated or corrupt frame")
        payload = r.take(r.remaining - values_len, "index payload")
        idx = decode_indices(payload, numel, k, names[index_id])
        vals = decode_values(r.take(values_len, "values"), k, vcoder, dtype, allow_nonfinite=nonfinite)
        if out is None:
            out = np.zeros(shape, dtype)
        else:
            if out.shape != tuple(shape) or out.dtype != dtype or not out.flags.c_contiguous:
                raise ConfigError(f"out must be a C-contiguous {dtype} array of shape {tuple(shape)}")
            out.fill(0)
        out.reshape(-1)[idx] = vals
        return out
