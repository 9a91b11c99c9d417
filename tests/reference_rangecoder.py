"""A slow, obvious twin of ``sparsecodec._kernels.rangecoder`` in exact integer arithmetic.

No windows, no carries, no early exits: ``low`` is one Python integer holding the whole code
value so far (64 + 32 * words bits), so carries happen by themselves. The decoder decodes with
the same exact arithmetic, then *re-encodes* what it decoded and accepts the payload only if
that gives back the very same bytes: the definition of "the encoder's output" that the
kernel's checks implement. The kernel must agree with this module byte for byte and
accept / reject exactly the same payloads.
"""

from __future__ import annotations

import math

PROB_BITS = 20
ONE = 1 << PROB_BITS
TOP = 1 << 32
FULL = (1 << 64) - 1


class Reject(ValueError):
    """The payload is not what the reference encoder writes for any mask."""


def quantize(p: float) -> int:
    """clip(floor(p * 2**20 + 0.5), 1, 2**20 - 1); p in [0, 1] (float64 arithmetic)."""
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"bad probability {p}")
    return min(max(math.floor(p * float(ONE) + 0.5), 1), ONE - 1)


def enumerative_q(ones_left: int, positions_left: int) -> int:
    return min(max((ones_left * ONE + positions_left // 2) // positions_left, 1), ONE - 1)


class Encoder:
    def __init__(self) -> None:
        self.low = 0
        self.rng = FULL
        self.words = 0
        self.coded = 0

    def bit(self, bit: int, q: int) -> None:
        self.coded += 1
        bound = (self.rng >> PROB_BITS) * q
        if bit:
            self.rng = bound
        else:
            self.low += bound
            self.rng -= bound
        if self.rng < TOP:
            self.low <<= 32
            self.rng <<= 32
            self.words += 1

    def finish(self) -> bytes:
        """The shortest t-byte flush whose every continuation stays in [low, low + rng)."""
        if not self.coded:
            return b""
        for t in range(1, 6):
            grain = 1 << (64 - 8 * t)
            v = -(-self.low // grain) * grain
            if v + grain <= self.low + self.rng:
                return (v >> (64 - 8 * t)).to_bytes(4 * self.words + t, "big")
        raise AssertionError("unreachable: t = 5 always fits because rng >= 2**32")


class Decoder:
    def __init__(self, payload: bytes) -> None:
        self.payload = bytes(payload)
        self.low = 0
        self.rng = FULL
        self.pulled = 8
        self.value = self._window(8)
        self.coded: list[tuple[int, int]] = []

    def _window(self, nbytes: int) -> int:
        """The first ``nbytes`` bytes of the payload followed by zeros, as an integer."""
        head = self.payload[:nbytes]
        return int.from_bytes(head + bytes(nbytes - len(head)), "big")

    def bit(self, q: int) -> int:
        bound = (self.rng >> PROB_BITS) * q
        bit = int(self.value - self.low < bound)
        self.coded.append((bit, q))
        if bit:
            self.rng = bound
        else:
            self.low += bound
            self.rng -= bound
        if self.rng < TOP:
            self.low <<= 32
            self.rng <<= 32
            self.pulled += 4
            self.value = self._window(self.pulled)
        return bit

    def check(self) -> None:
        enc = Encoder()
        for bit, q in self.coded:
            enc.bit(bit, q)
        if enc.finish() != self.payload:
            raise Reject("payload is not the encoder's output for the decoded bits")


# --------------------------------------------------------------------------- the three models
def encode_qs(bits, qs) -> bytes:
    enc = Encoder()
    for bit, q in zip(bits, qs):
        enc.bit(int(bit), int(q))
    return enc.finish()


def decode_qs(payload: bytes, qs) -> list[int]:
    dec = Decoder(payload)
    bits = [dec.bit(int(q)) for q in qs]
    dec.check()
    return bits


def encode_enumerative(bits) -> bytes:
    bits = [int(b) for b in bits]
    n, left = len(bits), sum(bits)
    enc = Encoder()
    for i, bit in enumerate(bits):
        positions = n - i
        if 0 < left < positions:
            enc.bit(bit, enumerative_q(left, positions))
        left -= bit
    return enc.finish()


def decode_enumerative(payload: bytes, n: int, ones: int) -> list[int]:
    dec = Decoder(payload)
    bits, left = [], ones
    for i in range(n):
        positions = n - i
        if left == 0:
            bit = 0
        elif left == positions:
            bit = 1
        else:
            bit = dec.bit(enumerative_q(left, positions))
        bits.append(bit)
        left -= bit
    dec.check()
    return bits


def lanes_split(n: int, lanes: int) -> int:
    return n if lanes == 1 else (n + 1) // 2


def varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def mask_section(bits, qs, lanes: int) -> bytes:
    """The ``mask`` section of a fixed / per-entry MaskCodec frame."""
    h = lanes_split(len(bits), lanes)
    first = encode_qs(bits[:h], qs[:h])
    if lanes == 1:
        return first
    return varint(len(first)) + first + encode_qs(bits[h:], qs[h:])


# --------------------------------------------------------------------------- gaps
def _digit_qs(ones: int, positions: int, ndigits: int) -> list[int]:
    """q of each binary digit of the next gap under the geometric model (32-bit fixed point)."""
    stay = ((positions - ones) << 32) // (positions + 1)
    qs = []
    for _ in range(ndigits):
        denom = (1 << 32) + stay
        qs.append(min(max(((stay << PROB_BITS) + denom // 2) // denom, 1), ONE - 1))
        stay = (stay * stay + (1 << 31)) >> 32
    return qs


def _gap_digits(ones: int, positions: int):
    """(digit, q) slots of one gap, most significant first, skipping digits forced to zero."""
    bound = positions - ones
    ndigits = bound.bit_length()
    return bound, list(enumerate(_digit_qs(ones, positions, ndigits)))[::-1]


def encode_gaps(idx, numel: int) -> bytes:
    enc, pos, k = Encoder(), 0, len(idx)
    for j, index in enumerate(int(i) for i in idx):
        gap = index - pos
        bound, digits = _gap_digits(k - j, numel - pos)
        prefix = 0
        for i, q in digits:
            if prefix + (1 << i) <= bound:
                bit = (gap >> i) & 1
                enc.bit(bit, q)
                prefix += bit << i
        assert prefix == gap
        pos = index + 1
    return enc.finish()


def decode_gaps(payload: bytes, numel: int, k: int) -> list[int]:
    dec, pos, out = Decoder(payload), 0, []
    for j in range(k):
        bound, digits = _gap_digits(k - j, numel - pos)
        gap = 0
        for i, q in digits:
            if gap + (1 << i) <= bound:
                gap += dec.bit(q) << i
        out.append(pos + gap)
        pos += gap + 1
    dec.check()
    return out
