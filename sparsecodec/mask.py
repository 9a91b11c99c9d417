"""``MaskCodec``: binary masks (FedPM, SparsyFed supports) entropy-coded with exact bits.

Three probability models (:mod:`sparsecodec.models`), one binary range coder:

* ``codec.encode(mask)``: adaptive, no side information. Count-then-enumerative: the frame
  holds the number of ones k, then the mask costs ``log2 C(n, k)`` plus a few bits, which is
  within about ``log2 n`` bits of the ideal ``n * H_b(k/n)`` the FedPM papers report.
* ``codec.encode(mask, p=0.05)``: fixed Bernoulli(p); the 20-bit quantized p is in the frame.
* ``codec.encode(mask, p=probs)``: per-entry probabilities, side information that both ends
  hold (FedPM's global keep-probabilities); never written, so decoding needs the same ``p``.

Frame body::

    header  dtype (bool or uint8), ndim, dims              (tensor header)
    header  model byte: bits 0-1 model id (0 adaptive, 1 fixed, 2 per-entry),
            bit 2 = two lanes (fixed / per-entry only), bit 3 zero,
            bits 4-7 = CRC-4 (x^4 + x + 1) of the low nibble
    model   adaptive: varint k (ones); fixed: varint q (P(1) = q / 2**20, 1 <= q < 2**20)
    mask    [two lanes: varint byte length of lane 0] lane 0 payload, lane 1 payload

Lane 0 codes the first ceil(n/2) entries and lane 1 the rest; each lane is the exact output
of the range coder (:mod:`sparsecodec._kernels.rangecoder`), so a payload that is not what
the encoder would write (trailing bytes, a truncated or altered flush) is rejected.

Why the CRC-4: a flipped bit in the model id could otherwise turn a frame into another
*valid* one (a per-entry frame read as adaptive, which then looks like misuse of ``p``).
It costs no bits (the nibble was free) and detects every single-bit error in the byte; the
tensor header protects dtype and shape itself (:meth:`FrameWriter.tensor_header`).

Example:
    >>> import numpy as np, sparsecodec as sc
    >>> mask = np.random.default_rng(0).random(100_000) < 0.1
    >>> codec = sc.MaskCodec()
    >>> frame = codec.encode(mask)
    >>> bool(np.array_equal(codec.decode(bytes(frame)), mask))
    True
    >>> frame.sections["mask"] <= sc.bounds.mask_bits(mask) + 16
    True
    >>> probs = np.full(mask.shape, 0.1)
    >>> frame = codec.encode(mask, p=probs)
    >>> bool(np.array_equal(codec.decode(bytes(frame), p=probs), mask))
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ._arrays import as_numpy
from .abc import Codec
from .errors import ConfigError, CorruptFrameError, SideInfoMismatchError
from .frame import Frame, FrameReader, FrameWriter
from .reconstruction import IdentityRecon
from .models import (MODEL_ADAPTIVE, MODEL_FIXED, MODEL_NAMES, MODEL_PER_ENTRY, PROB_ONE,
                     as_probability_vector, choose_lanes, decode_adaptive,
                     decode_bernoulli_lanes, encode_adaptive, encode_bernoulli_lanes,
                     quantize_probability)
from .registry import register_codec

__all__ = ["MaskCodec"]

_MASK_DTYPES = (np.dtype(np.bool_), np.dtype(np.uint8))
_TWO_LANES = 0x04
_MODEL_BITS = 0x03
_CRC4_POLY = 0x3            # x^4 + x + 1 (CRC-4-ITU): catches every single-bit error


def _crc4(data: bytes) -> int:
    """CRC-4 (x^4 + x + 1, zero init, MSB first) of a few header bytes."""
    crc = 0
    for byte in data:
        for bit in range(7, -1, -1):
            top = ((crc >> 3) & 1) ^ ((byte >> bit) & 1)
            crc = ((crc << 1) & 0xF) ^ (_CRC4_POLY if top else 0)
    return crc


def _model_byte(model: int, lanes: int) -> int:
    low = model | (_TWO_LANES if lanes == 2 else 0)
    return low | (_crc4(bytes([low])) << 4)


def _flat_mask(x) -> tuple[np.ndarray, np.ndarray]:
    """(the array, its flat uint8 view); bool and uint8 only (0/1 checked while coding)."""
    mask = as_numpy(x, what="the mask")
    if mask.dtype not in _MASK_DTYPES:
        raise ConfigError(f"MaskCodec codes bool or uint8 (0/1) masks, got dtype {mask.dtype}; "
                          "convert with mask.astype(bool)")
    return mask, np.ascontiguousarray(mask).reshape(-1).view(np.uint8)


@register_codec
@dataclass(frozen=True)
class MaskCodec(Codec):
    """Lossless binary-mask codec: adaptive, fixed-p or per-entry-p model (see module doc).

    ``lanes``: 0 chooses automatically (two lanes for at least 2**20 entries or an expected
    payload of at least 2**16 bits, :func:`sparsecodec.models.choose_lanes`), 1 or 2 forces
    the count for the fixed and per-entry models (the adaptive model is always one lane).
    """

    checksum: bool = False
    lanes: int = 0

    codec_id: ClassVar[str] = "mask"
    wire_id: ClassVar[int] = 3
    #: side information the decoder takes (read by ``sparsecodec.decode`` and bundles)
    side_keys: ClassVar[tuple[str, ...]] = ("p",)

    def __post_init__(self) -> None:
        if self.lanes not in (0, 1, 2):
            raise ConfigError(f"lanes must be 0 (automatic), 1 or 2, got {self.lanes!r}")

    def encode(self, x, **side: Any) -> Frame:
        return super().encode(as_numpy(x, what="the mask"), **side)

    def _write_body(self, x, w: FrameWriter, *, p=None) -> IdentityRecon:
        # lossless under every model (a value other than 0/1 is refused while coding)
        p = _as_p(p)
        mask, flat = _flat_mask(x)
        n = flat.size
        w.tensor_header(mask.dtype, mask.shape)
        if p is None:
            ones = int(np.count_nonzero(flat))
            payload = encode_adaptive(flat, ones)
            w.u8(_model_byte(MODEL_ADAPTIVE, 1), "header")
            w.varint(ones, "model")
            w.raw(payload, "mask")
            return IdentityRecon(mask)
        src: int | np.ndarray   # the fixed model's quantized p, or the per-entry vector
        if np.ndim(p) == 0:
            model, src = MODEL_FIXED, quantize_probability(p)
        else:
            model, src = MODEL_PER_ENTRY, as_probability_vector(p, n)
        lanes = self.lanes or choose_lanes(n, src)
        payloads = encode_bernoulli_lanes(flat, src, lanes)
        w.u8(_model_byte(model, lanes), "header")
        if model == MODEL_FIXED:
            w.varint(int(src), "model")   # an int here (mypy cannot see it)
        if lanes == 2:
            w.varint(len(payloads[0]), "mask")
        for payload in payloads:
            w.raw(payload, "mask")
        return IdentityRecon(mask)

    @classmethod
    def _read_body(cls, r: FrameReader, out: np.ndarray | None = None, *, p=None) -> np.ndarray:
        p = _as_p(p)
        dtype, shape, numel = r.tensor_header()
        byte = r.u8("mask model byte")
        if _crc4(bytes([byte & 0x0F])) != byte >> 4:
            raise CorruptFrameError(f"mask model byte 0x{byte:02x} fails its CRC-4 (corrupted)")
        if dtype not in _MASK_DTYPES:
            raise CorruptFrameError(f"mask frames hold bool or uint8 tensors, this one says {dtype}")
        model = byte & _MODEL_BITS
        if byte & 0x08 or model not in MODEL_NAMES:
            raise CorruptFrameError(f"unknown mask model byte 0x{byte:02x}")
        lanes = 2 if byte & _TWO_LANES else 1
        if lanes == 2 and model == MODEL_ADAPTIVE:
            raise CorruptFrameError("the adaptive mask model is coded in one lane, frame says two")
        src: int | np.ndarray = 0   # the fixed model's quantized p, or the per-entry vector
        if model == MODEL_PER_ENTRY:
            if p is None or np.ndim(p) == 0:
                # a FrameError too: one flipped model byte lands here (tools/fuzz_long.py)
                raise SideInfoMismatchError("this mask was coded with per-entry probabilities (side "
                                            "information, not in the frame): pass the same vector, "
                                            "decode(data, p=probs) (or the frame is corrupt)")
            if p.size != numel:   # the caller's p is its model's: the frame names another size
                raise SideInfoMismatchError(
                    f"this mask frame has {numel} entries but the per-entry p passed has "
                    f"{p.size}: pass the probability vector of this exact tensor")
            src = as_probability_vector(p, numel)
        elif model == MODEL_ADAPTIVE and p is not None:
            # the caller's p fits its protocol; it is the frame that is of another kind
            raise SideInfoMismatchError("this mask frame uses the adaptive model, which takes "
                                        "no p, but p= was passed: do not pass p for it")
        elif model == MODEL_FIXED and p is not None and np.ndim(p) != 0:
            raise SideInfoMismatchError("this mask frame uses one fixed p (in the frame), but a "
                                        "per-entry vector p= was passed")
        if model == MODEL_ADAPTIVE:
            ones = r.varint("count of ones", numel)
        elif model == MODEL_FIXED:
            src = r.varint("quantized p", PROB_ONE - 1)
            if src == 0:
                raise CorruptFrameError("quantized p is 0; the coder's probabilities are >= 1")
            if p is not None and quantize_probability(p) != src:
                # the frame is authoritative for a fixed p; a mismatch means it was altered
                # (or p is not the encoder's): either way these bytes cannot be trusted
                raise CorruptFrameError(
                    f"the frame's quantized p is {src} (p={src / PROB_ONE}) but the p passed, "
                    f"{p}, quantizes to {quantize_probability(p)}: corrupted frame or wrong p")
        payloads = []
        if lanes == 2:
            len0 = r.varint("lane 0 length", r.remaining)
            payloads.append(np.frombuffer(r.take(len0, "lane 0 payload"), np.uint8))
        payloads.append(np.frombuffer(r.take_rest(), np.uint8))
        target = _output(out, dtype, shape)
        flat = target.reshape(-1).view(np.uint8)
        if model == MODEL_ADAPTIVE:
            decode_adaptive(payloads[0], ones, flat)
        else:
            decode_bernoulli_lanes(payloads, src, flat)
        if out is not None and target is not out:
            out[...] = target
            return out
        return target


def _as_p(p):
    """``p`` as None or a numpy array (torch tensors and array-likes too, bf16 widened).

    It must be a real number or a real array: a string such as ``"0.2"`` is misuse, not a
    number to parse.
    """
    if p is None:
        return None
    arr = None if isinstance(p, (str, bytes, bytearray)) else as_numpy(p, what="p")
    if arr is None or arr.dtype.kind not in "fiub":
        raise ConfigError(f"p must be a number in [0, 1] or a per-entry array of them, got "
                          f"{type(p).__name__} {p!r:.40}")
    return arr


def _output(out: np.ndarray | None, dtype: np.dtype, shape: tuple[int, ...]) -> np.ndarray:
    """The array to decode into: ``out`` itself when it is a contiguous match, else a new one."""
    if out is not None:
        if not isinstance(out, np.ndarray) or out.shape != tuple(shape) or out.dtype != dtype:
            raise ConfigError(f"out must be a {dtype} array of shape {tuple(shape)}")
        if not out.flags.writeable:
            raise ConfigError("out must be writable")
        if out.flags.c_contiguous:
            return out
    return np.empty(shape, dtype)
