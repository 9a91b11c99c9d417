"""Enumerative models on the binary range coder: counted masks, index sets, gaps.

Same stream format and acceptance rule as :mod:`sparsecodec._kernels.rangecoder` (whose coder
steps these kernels reuse); only the probabilities differ:

* ``encode_enumerative(mask, ones, out)`` / ``decode_enumerative(payload, ones, out)``: a
  mask with a known number of ones, P(1) = ones left / positions left (integer-only q);
  positions whose bit is determined are not coded;
* ``encode_enumerative_indices(idx, numel, out)`` / ``decode_enumerative_indices(payload,
  numel, out)``: the same stream, read from / written to a sorted index array;
* ``encode_gaps(idx, numel, out)`` / ``decode_gaps(payload, numel, out)``: an index set
  coded gap by gap through the binary digits of a geometric model, O(k log(numel/k)).
"""

from __future__ import annotations

import numpy as np

from . import ERR_CORRUPT, ERR_ORDER, ERR_RANGE, OK, jit
from .rangecoder import (_FULL, _ONE, _SHIFT, _TOP, _W, _ZERO, _HALF_SHIFT, _QMAX, _QMIN, _U,
                         _check_end, _decode_step, _emit_word, _encode_step, _finish,
                         _initial_code, _propagate_carry, _pull_word, _renorm_status)

__all__ = ["enumerative_q", "encode_enumerative", "decode_enumerative",
           "encode_enumerative_indices", "decode_enumerative_indices", "encode_gaps",
           "decode_gaps"]


@jit
def enumerative_q(ones_left, positions_left):
    """P(1) = ones/positions, rounded to nearest: ``(ones*2**20 + positions//2) // positions``.

    Integer only (bit-reproducible); clipped to [1, 2**20 - 1]. Needs 0 < ones < positions
    < 2**43 (the caller skips the positions whose bit is determined).
    """
    q = ((ones_left << _SHIFT) + (positions_left >> _HALF_SHIFT)) // positions_left
    if q < _QMIN:
        q = _QMIN
    if q > _QMAX:
        q = _QMAX
    return q


@jit
def encode_enumerative(mask, ones, out):
    """Code a uint8 0/1 mask holding exactly ``ones`` ones: P(1) = ones left / positions left.

    Bits whose value is already determined (no ones left, or only ones left) cost nothing
    and are not coded. Returns the payload size, ERR_RANGE (a byte > 1), ERR_CORRUPT (the mask
    does not hold ``ones`` ones) or ERR_OVERFLOW.
    """
    n = mask.size
    low = _ZERO
    rng = _FULL
    nbytes = 0
    left = _U(ones)
    for i in range(n):
        b = mask[i]
        if b > 1:
            return ERR_RANGE
        positions = _U(n - i)
        if left == _ZERO or left == positions:
            # determined: check it instead of coding it
            if (b != 0) != (left != _ZERO):
                return ERR_CORRUPT
            left -= _U(b)
            continue
        q = enumerative_q(left, positions)
        new_low, rng = _encode_step(b != 0, q, low, rng)
        if new_low < low:
            status = _propagate_carry(out, nbytes)
            if status != OK:
                return status
        low = new_low
        left -= _U(b)
        if rng < _TOP:
            nbytes = _emit_word(out, nbytes, low)
            if nbytes < 0:
                return nbytes
            low <<= _W
            rng <<= _W
    if left != _ZERO:
        return ERR_CORRUPT
    return _finish(out, nbytes, low, rng)


@jit
def decode_enumerative(payload, ones, out):
    """Decode a mask with ``ones`` ones (``out``: uint8, every entry written). OK or a status."""
    n = out.size
    code = _initial_code(payload)
    rng = _FULL
    pos = 8
    left = _U(ones)
    q = _QMIN
    if _ZERO < left < _U(n):
        q = enumerative_q(left, _U(n))
    for i in range(n):
        positions = _U(n - i)
        if left == _ZERO:
            out[i] = 0
            continue
        if left == positions:
            out[i] = 1
            left -= _ONE
            continue
        # both candidates for the next position, computed while this bit decodes: the
        # divisions leave the decoder's dependency chain (positions >= 2 here, so no /0)
        q_if_zero = enumerative_q(left, positions - _ONE)
        q_if_one = enumerative_q(left - _ONE, positions - _ONE)
        bit, code, rng = _decode_step(q, code, rng)
        out[i] = bit
        if bit:
            left -= _ONE
            q = q_if_one
        else:
            q = q_if_zero
        if rng < _TOP:
            status = _renorm_status(payload, pos, code, rng)
            if status != OK:
                return status
            code = (code << _W) | _pull_word(payload, pos)
            rng <<= _W
            pos += 4
    return _check_end(payload, pos, code, rng)


@jit
def encode_enumerative_indices(idx, numel, out):
    """The :func:`encode_enumerative` stream of the mask whose ones are at ``idx``.

    ``idx`` must be strictly increasing in [0, numel): ERR_ORDER / ERR_RANGE otherwise
    (checked first, in one pass). Returns the payload size or a status.
    """
    k = idx.size
    for j in range(k):
        if idx[j] < 0 or idx[j] >= numel:
            return ERR_RANGE
        if j > 0 and idx[j] <= idx[j - 1]:
            return ERR_ORDER
    low = _ZERO
    rng = _FULL
    nbytes = 0
    j = 0                               # next index to meet
    for pos in range(numel):
        left = _U(k - j)
        positions = _U(numel - pos)
        if left == _ZERO or left == positions:
            break                       # the rest is determined (all zeros / all ones)
        bit = idx[j] == pos             # j < k because left >= 1; no branch on the data
        new_low, rng = _encode_step(bit, enumerative_q(left, positions), low, rng)
        if new_low < low:
            status = _propagate_carry(out, nbytes)
            if status != OK:
                return status
        low = new_low
        j += bit
        if rng < _TOP:
            nbytes = _emit_word(out, nbytes, low)
            if nbytes < 0:
                return nbytes
            low <<= _W
            rng <<= _W
    return _finish(out, nbytes, low, rng)


@jit
def decode_enumerative_indices(payload, numel, out):
    """Decode the positions of the ``out.size`` ones of a ``numel``-bit enumerative stream."""
    k = out.size
    code = _initial_code(payload)
    rng = _FULL
    pos = 8
    j = 0
    left = _U(k)
    q = _QMIN
    if _ZERO < left < _U(numel):
        q = enumerative_q(left, _U(numel))
    for i in range(numel):
        positions = _U(numel - i)
        if left == _ZERO:
            break
        if left == positions:
            for jj in range(j, k):      # only ones left: they fill the tail
                out[jj] = numel - (k - jj)
            j = k
            break
        # both candidates for the next position (see decode_enumerative)
        q_if_zero = enumerative_q(left, positions - _ONE)
        q_if_one = enumerative_q(left - _ONE, positions - _ONE)
        bit, code, rng = _decode_step(q, code, rng)
        if bit:
            out[j] = i
            j += 1
            left -= _ONE
            q = q_if_one
        else:
            q = q_if_zero
        if rng < _TOP:
            status = _renorm_status(payload, pos, code, rng)
            if status != OK:
                return status
            code = (code << _W) | _pull_word(payload, pos)
            rng <<= _W
            pos += 4
    return _check_end(payload, pos, code, rng)


# --------------------------------------------------------------------------- gaps
# A gap g (zeros before the next one, at most ``bound`` = positions left - ones left) is coded
# through its binary digits under a geometric model: if G ~ Geometric(p) on {0, 1, ...} the
# digits of G are independent, digit i being one with probability s / (1 + s), s = (1-p)**(2**i).
# p = (ones + 1) / (positions + 1) matches the mean of the exact gap distribution. Digits are
# coded from the most significant down; a digit that would push the gap past ``bound`` is
# known to be zero and is not coded, so every decoded gap is valid. Cost O(k log(numel / k)).
_Q32 = _U(1 << 32)
_HALF32 = _U(1 << 31)
_MAX_DIGITS = 33                     # numel <= 2**32: a gap has at most 33 binary digits


@jit
def _bit_length(value):
    nbits = 0
    while value > 0:
        value >>= 1
        nbits += 1
    return nbits


@jit
def _digit_qs(ones_left, positions_left, ndigits, qs):
    """qs[i] = the coder's q for digit i of the next gap (integer fixed point, 32-bit s)."""
    stay = ((positions_left - ones_left) << _U(32)) // (positions_left + _ONE)  # (1-p) * 2**32
    for i in range(ndigits):
        denom = _Q32 + stay
        q = ((stay << _SHIFT) + (denom >> _ONE)) // denom
        if q < _QMIN:
            q = _QMIN
        if q > _QMAX:
            q = _QMAX
        qs[i] = q
        stay = (stay * stay + _HALF32) >> _U(32)                # s**2, rounded


@jit
def encode_gaps(idx, numel, out):
    """Code a strictly increasing index set in [0, numel <= 2**32) gap by gap (see above).

    Returns the payload size, ERR_ORDER / ERR_RANGE for a bad index set, or ERR_OVERFLOW.
    """
    k = idx.size
    qs = np.empty(_MAX_DIGITS, np.uint64)
    low = _ZERO
    rng = _FULL
    nbytes = 0
    pos = 0
    for j in range(k):
        if idx[j] < pos:
            return ERR_ORDER
        if idx[j] >= numel:
            return ERR_RANGE
        gap = _U(idx[j] - pos)
        positions = _U(numel - pos)
        ones = _U(k - j)
        bound = positions - ones
        if gap > bound:
            return ERR_RANGE                # idx[j] leaves too few positions for the rest
        ndigits = _bit_length(bound)
        _digit_qs(ones, positions, ndigits, qs)
        prefix = _ZERO
        for i in range(ndigits - 1, -1, -1):
            step = _ONE << _U(i)
            if prefix + step > bound:
                continue                    # this digit is known to be zero
            bit = (gap >> _U(i)) & _ONE
            new_low, rng = _encode_step(bit != _ZERO, qs[i], low, rng)
            if new_low < low:
                status = _propagate_carry(out, nbytes)
                if status != OK:
                    return status
            low = new_low
            prefix += bit << _U(i)
            if rng < _TOP:
                nbytes = _emit_word(out, nbytes, low)
                if nbytes < 0:
                    return nbytes
                low <<= _W
                rng <<= _W
        pos = idx[j] + 1
    return _finish(out, nbytes, low, rng)


@jit
def decode_gaps(payload, numel, out):
    """Decode ``out.size`` indices in [0, numel) from an :func:`encode_gaps` stream."""
    k = out.size
    qs = np.empty(_MAX_DIGITS, np.uint64)
    code = _initial_code(payload)
    rng = _FULL
    pos_bytes = 8
    pos = 0
    for j in range(k):
        positions = _U(numel - pos)
        ones = _U(k - j)
        bound = positions - ones
        ndigits = _bit_length(bound)
        _digit_qs(ones, positions, ndigits, qs)
        gap = _ZERO
        for i in range(ndigits - 1, -1, -1):
            step = _ONE << _U(i)
            if gap + step > bound:
                continue
            bit, code, rng = _decode_step(qs[i], code, rng)
            if bit:
                gap += step
            if rng < _TOP:
                status = _renorm_status(payload, pos_bytes, code, rng)
                if status != OK:
                    return status
                code = (code << _W) | _pull_word(payload, pos_bytes)
                rng <<= _W
                pos_bytes += 4
        out[j] = pos + np.int64(gap)
        pos = out[j] + 1
    return _check_end(payload, pos_bytes, code, rng)
