"""Binary range coder: the entropy-coding core of masks and coded bitmaps.

Everything here is integer arithmetic on ``uint64``, so the bitstream is bit-for-bit the
same on every machine (``tests/reference_rangecoder.py`` is a slow big-integer twin that
must produce identical bytes).

The coder (one *lane*)::

    state   low (64-bit window of the code value), rng in [2**32, 2**64), both uint64;
            start: low = 0, rng = 2**64 - 1
    bit     q = P(bit = 1) * 2**PROB_BITS, an integer in [1, 2**PROB_BITS - 1]
            bound = (rng >> PROB_BITS) * q
            one  -> rng = bound                      (the lower sub-interval)
            zero -> low += bound, rng -= bound       (a carry ripples into bytes already out)
    renorm  when rng < 2**32: write the top 32 bits of low (big-endian), shift low and rng
            left by 32 (a coded bit leaves rng >= 2**12, so one shift restores rng >= 2**32)
    flush   the fewest bytes t (1..5) such that, for the smallest multiple v >= low of
            g = 2**(64 - 8t), all of [v, v + g) lies in [low, low + rng): every continuation
            of the t bytes decodes the same, so payloads are prefix-free (a truncated payload
            never decodes as another mask). A lane that coded no bit writes nothing.

The decoder reads the payload as if followed by zero bytes. A payload is accepted only if it
is exactly what the encoder writes for the decoded bits (same words, minimal flush), so every
mask has one encoding and trailing, missing or altered flush bytes are all detected.

Cost: the truncation ``rng >> PROB_BITS`` changes a probability by at most 2**(PROB_BITS-32)
(relative), and the flush wastes at most 9 bits (8t <= 65 - log2(rng) + 8), so a lane costs
the cross-entropy under the quantized model plus <= 9 bits plus a negligible term.

Probabilities (one convention for the whole package, mirrored in :mod:`sparsecodec.models`):
``q = clip(floor(p * 2**20 + 0.5), 1, 2**20 - 1)`` computed in float64 (exact for float32 and
float64 inputs), so p = 0 and p = 1 still code the contrary bit (at 20 bits).

Kernels (outputs preallocated by the caller, results are byte counts or status codes):

* ``encode_bernoulli(mask, src, out)``: ``src`` is a uint64 ``q`` (fixed model) or a float
  array of per-entry probabilities; ``decode_bernoulli(pay_a, pay_b, src_a, src_b, out_a,
  out_b)`` decodes two independent lanes in one loop (two dependency chains: ~1.4x faster
  than one lane). Per-entry probabilities are checked and quantized a block of 1024 at a
  time (a vectorized loop), which keeps the coding loop short;
* the enumerative models (counted masks, index sets, gaps) are in
  :mod:`sparsecodec._kernels.enumerative`, built from this module's coder steps.
"""

from __future__ import annotations

import numpy as np
from numba import types
from numba.extending import overload

from . import (ERR_CORRUPT, ERR_NONFINITE, ERR_OVERFLOW, ERR_PADDING, ERR_RANGE, ERR_TRUNCATED,
               OK, jit)

__all__ = ["PROB_BITS", "quantize_probability", "encode_bernoulli", "decode_bernoulli",
           "max_payload_bytes"]

PROB_BITS = 20

_U = np.uint64
_SHIFT = _U(PROB_BITS)
_QMAX = _U((1 << PROB_BITS) - 1)
_QMIN = _U(1)
_SCALE = float(1 << PROB_BITS)
_QMAX_F = float((1 << PROB_BITS) - 1)
_TOP = _U(1 << 32)
_FULL = _U(0xFFFF_FFFF_FFFF_FFFF)
_W = _U(32)
_ZERO = _U(0)
_ONE = _U(1)
_HALF_SHIFT = _U(1)
_BLOCK = 1024          # probabilities are quantized a block at a time (vectorized)


def max_payload_bytes(nsymbols: int) -> int:
    """An upper bound on one lane's payload for ``nsymbols`` coded bits.

    A coded bit shrinks ``rng`` by at most a factor ``2**PROB_BITS * (1 + 2**-12)`` (q >= 1
    and ``rng >= 2**32``), i.e. costs < PROB_BITS + 1 bits; plus the <= 5-byte flush.
    """
    return 4 * (((PROB_BITS + 1) * int(nsymbols)) // 32 + 2) + 5


# --------------------------------------------------------------------------- probabilities
@jit
def quantize_probability(p):
    """``clip(floor(p * 2**20 + 0.5), 1, 2**20 - 1)`` as uint64 (p already checked in [0, 1])."""
    x = p * _SCALE + 0.5
    x = min(max(x, 1.0), _QMAX_F)
    return _U(np.int64(x))


def _fill_q(src, start, count, qbuf):
    """Quantize ``src[start:start+count]`` into ``qbuf[:count]``; False if one is not in [0, 1].

    ``src`` is a per-entry probability array or one fixed q. Quantizing a block ahead of
    coding it runs vectorized and keeps the checks out of the coding loop.
    """
    if isinstance(src, np.ndarray):
        for j in range(count):
            p = float(src[start + j])
            if not (p >= 0.0 and p <= 1.0):
                return False
            qbuf[j] = quantize_probability(p)
        return True
    qbuf[:count] = src
    return True


@overload(_fill_q, jit_options=dict(nogil=True, fastmath=False, error_model="numpy"))
def _fill_q_jit(src, start, count, qbuf):
    if isinstance(src, types.Array):
        def per_entry(src, start, count, qbuf):
            block = src[start:start + count]
            good = 0
            for j in range(count):
                p = block[j]
                good += (p >= 0.0) & (p <= 1.0)          # NaN fails both comparisons
                x = min(max(p * _SCALE + 0.5, 1.0), _QMAX_F)
                qbuf[j] = np.uint32(np.int32(x))          # garbage for a bad p: rejected below
            return good == count
        return per_entry

    def fixed(src, start, count, qbuf):
        for j in range(count):
            qbuf[j] = np.uint32(src)
        return True
    return fixed


# --------------------------------------------------------------------------- encoder parts
@jit
def _encode_step(bit, q, low, rng):
    """Code one bit: the new (low, rng). A new low smaller than the old one means a carry."""
    bound = (rng >> _SHIFT) * q
    if bit:
        return low, bound
    return low + bound, rng - bound


@jit
def _propagate_carry(out, nbytes):
    """Add one to the bytes already written (the carry out of ``low``)."""
    j = nbytes - 1
    while j >= 0 and out[j] == 0xFF:
        out[j] = 0
        j -= 1
    if j < 0:       # impossible for a correct coder (the code value stays < 1): report, never write
        return ERR_OVERFLOW
    out[j] += 1
    return OK


@jit
def _emit_word(out, nbytes, low):
    """Write the top 32 bits of ``low`` big-endian; the new byte count or ERR_OVERFLOW."""
    if nbytes + 4 > out.size:
        return ERR_OVERFLOW
    word = low >> _W
    out[nbytes] = np.uint8((word >> _U(24)) & _U(0xFF))
    out[nbytes + 1] = np.uint8((word >> _U(16)) & _U(0xFF))
    out[nbytes + 2] = np.uint8((word >> _U(8)) & _U(0xFF))
    out[nbytes + 3] = np.uint8(word & _U(0xFF))
    return nbytes + 4


@jit
def _flush_choice(low, rng):
    """(t, delta): the flush length in bytes and the offset ``v - low`` of the value written.

    ``v`` is the smallest multiple of ``g = 2**(64 - 8t)`` that is >= low, for the fewest t
    such that *every* continuation of those t bytes stays in the interval
    (``v + g <= low + rng``). That makes the payloads prefix-free: a truncated payload is
    never the encoding of another mask. t <= 5 because rng >= 2**32 > 2 * 2**24. A lane that
    coded nothing (state untouched) flushes nothing.
    """
    if low == _ZERO and rng == _FULL:
        return 0, _ZERO
    for t in range(1, 6):
        grain = _ONE << _U(64 - 8 * t)
        delta = (_ZERO - low) & (grain - _ONE)
        if rng >= grain and delta <= rng - grain:
            return t, delta
    return 5, (_ZERO - low) & _U(0xFF_FFFF)      # unreachable (see above)


@jit
def _finish(out, nbytes, low, rng):
    """Write the flush bytes; the final payload size or a status."""
    t, delta = _flush_choice(low, rng)
    value = low + delta
    if value < low:
        status = _propagate_carry(out, nbytes)
        if status != OK:
            return status
    if nbytes + t > out.size:
        return ERR_OVERFLOW
    for j in range(t):
        out[nbytes + j] = np.uint8((value >> _U(56 - 8 * j)) & _U(0xFF))
    return nbytes + t


# --------------------------------------------------------------------------- decoder parts
@jit
def _pull_word(pay, pos):
    """The 32-bit big-endian word at byte ``pos`` of ``pay``, reading zeros past its end."""
    n = pay.size
    if pos + 4 <= n:
        return ((_U(pay[pos]) << _U(24)) | (_U(pay[pos + 1]) << _U(16))
                | (_U(pay[pos + 2]) << _U(8)) | _U(pay[pos + 3]))
    word = _ZERO
    for j in range(4):
        word <<= _U(8)
        if pos + j < n:
            word |= _U(pay[pos + j])
    return word


@jit
def _initial_code(pay):
    return (_pull_word(pay, 0) << _W) | _pull_word(pay, 4)


@jit
def _decode_step(q, code, rng):
    """(bit, code, rng) after decoding one bit; ``code`` is value - low within the window."""
    bound = (rng >> _SHIFT) * q
    if code < bound:
        return True, code, bound
    return False, code - bound, rng - bound


@jit
def _renorm_status(pay, pos, code, rng):
    """Checks made when a lane pulls its next word (rare: once per ~32 coded bits).

    ``code >= rng`` means the value left the interval: no encoder writes that. Once the
    words pulled exceed the payload the stream is truncated (stop early, no more work).
    """
    if code >= rng:
        return ERR_CORRUPT
    if pos + 4 - 8 > pay.size:
        return ERR_TRUNCATED
    return OK


@jit
def _check_end(pay, pos, code, rng):
    """Accept only the exact encoder output: the words pulled plus the minimal flush."""
    if code >= rng:
        return ERR_CORRUPT
    extra = pay.size - (pos - 8)         # bytes after the last full word the decoder pulled
    if extra < 0:
        return ERR_TRUNCATED
    if extra > 5:
        return ERR_PADDING
    window = (_pull_word(pay, pos - 8) << _W) | _pull_word(pay, pos - 4)
    low = window - code                  # the encoder's low register (mod 2**64)
    t, delta = _flush_choice(low, rng)
    if extra > t:
        return ERR_PADDING
    if extra < t:
        return ERR_TRUNCATED
    if delta != code:
        return ERR_CORRUPT
    return OK


# --------------------------------------------------------------------------- Bernoulli models
@jit
def encode_bernoulli(mask, src, out):
    """Code ``mask`` (uint8 0/1) under a fixed q (uint64 ``src``) or per-entry probabilities.

    Returns the payload size in bytes, or ERR_NONFINITE (a probability is NaN or outside
    [0, 1]), ERR_RANGE (a mask byte is not 0/1), ERR_OVERFLOW (``out`` too small; size it with
    :func:`max_payload_bytes`).
    """
    low = _ZERO
    rng = _FULL
    nbytes = 0
    seen = np.uint8(0)
    qbuf = np.empty(_BLOCK, np.uint32)
    n = mask.size
    for start in range(0, n, _BLOCK):
        count = min(_BLOCK, n - start)
        if not _fill_q(src, start, count, qbuf):
            return ERR_NONFINITE
        bits = mask[start:start + count]
        for j in range(count):
            b = bits[j]
            seen |= b
            new_low, rng = _encode_step(b != 0, _U(qbuf[j]), low, rng)
            if new_low < low:
                status = _propagate_carry(out, nbytes)
                if status != OK:
                    return status
            low = new_low
            if rng < _TOP:
                nbytes = _emit_word(out, nbytes, low)
                if nbytes < 0:
                    return nbytes
                low <<= _W
                rng <<= _W
    if seen > 1:
        return ERR_RANGE
    return _finish(out, nbytes, low, rng)


@jit
def _decode_lane(pay, src, out, lo, hi, qbuf, pos, code, rng):
    """Decode ``out[lo:hi]`` of one lane from state (pos, code, rng); (status, pos, code, rng)."""
    for start in range(lo, hi, _BLOCK):
        count = min(_BLOCK, hi - start)
        if not _fill_q(src, start, count, qbuf):
            return ERR_NONFINITE, pos, code, rng
        dst = out[start:start + count]
        for j in range(count):
            bit, code, rng = _decode_step(_U(qbuf[j]), code, rng)
            dst[j] = bit
            if rng < _TOP:
                status = _renorm_status(pay, pos, code, rng)
                if status != OK:
                    return status, pos, code, rng
                code = (code << _W) | _pull_word(pay, pos)
                rng <<= _W
                pos += 4
    return OK, pos, code, rng


@jit
def decode_bernoulli(pay_a, pay_b, src_a, src_b, out_a, out_b):
    """Decode two independent lanes (``out_a`` from ``pay_a``, ``out_b`` from ``pay_b``).

    Interleaving the lanes in one loop gives the CPU two independent dependency chains. A
    single lane is decoded with empty ``pay_b``/``out_b``. Returns OK or a status code:
    ERR_NONFINITE (bad probability: the caller's fault), ERR_TRUNCATED, ERR_CORRUPT,
    ERR_PADDING (the payload is not the encoder's output).
    """
    code_a = _initial_code(pay_a)
    code_b = _initial_code(pay_b)
    rng_a = _FULL
    rng_b = _FULL
    pos_a = 8
    pos_b = 8
    qbuf_a = np.empty(_BLOCK, np.uint32)
    qbuf_b = np.empty(_BLOCK, np.uint32)
    both = min(out_a.size, out_b.size)
    for start in range(0, both, _BLOCK):
        count = min(_BLOCK, both - start)
        if not (_fill_q(src_a, start, count, qbuf_a) and _fill_q(src_b, start, count, qbuf_b)):
            return ERR_NONFINITE
        dst_a = out_a[start:start + count]
        dst_b = out_b[start:start + count]
        for j in range(count):
            bit, code_a, rng_a = _decode_step(_U(qbuf_a[j]), code_a, rng_a)
            dst_a[j] = bit
            if rng_a < _TOP:
                status = _renorm_status(pay_a, pos_a, code_a, rng_a)
                if status != OK:
                    return status
                code_a = (code_a << _W) | _pull_word(pay_a, pos_a)
                rng_a <<= _W
                pos_a += 4
            bit, code_b, rng_b = _decode_step(_U(qbuf_b[j]), code_b, rng_b)
            dst_b[j] = bit
            if rng_b < _TOP:
                status = _renorm_status(pay_b, pos_b, code_b, rng_b)
                if status != OK:
                    return status
                code_b = (code_b << _W) | _pull_word(pay_b, pos_b)
                rng_b <<= _W
                pos_b += 4
    # the longer lane's tail (lane 0 holds at most one more entry with the standard split)
    status, pos_a, code_a, rng_a = _decode_lane(pay_a, src_a, out_a, both, out_a.size, qbuf_a,
                                                pos_a, code_a, rng_a)
    if status != OK:
        return status
    status, pos_b, code_b, rng_b = _decode_lane(pay_b, src_b, out_b, both, out_b.size, qbuf_b,
                                                pos_b, code_b, rng_b)
    if status != OK:
        return status
    status = _check_end(pay_a, pos_a, code_a, rng_a)
    if status != OK:
        return status
    return _check_end(pay_b, pos_b, code_b, rng_b)
