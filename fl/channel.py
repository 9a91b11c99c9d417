"""The network between clients and server: the only place messages are encoded and bits counted.

Every tensor that crosses the network, up or down, goes through a sparsecodec codec into one
bundle per message; the receiver decodes it **from those bytes**. The :class:`Ledger` records
what was delivered, read off the frames themselves: exact bits per round, client, direction
and tensor, split by section (``header``, ``index``, ``values``, ``mask``, ``checksum``, ...).
Algorithms never count bits; they call :meth:`Link.send` and receive decoded arrays.

Shape of one exchange::

    link = channel.link(round=3, client=7, direction="up")   # the engine binds the context
    msg = link.send({"w": delta}, sc.TopK(k=10), feedback=ef)  # client: encode (+ error feedback)
    tensors = channel.deliver(msg)                             # network: count bits, decode bytes

A broadcast is one message delivered to several clients; each delivery is counted (each
client downloads its own copy). The bits of a bundle that belong to no tensor (preamble,
entry count, names, lengths, checksum) are recorded under the tensor name
:data:`BUNDLE_OVERHEAD`, so the rows of one message always add up to ``8 * len(bytes)``.

    >>> import numpy as np, sparsecodec as sc
    >>> channel = Channel()
    >>> msg = channel.link(round=0, client=1, direction="up").send(
    ...     {"w": np.arange(8, dtype=np.float32)}, sc.TopK(k=2, index="raw"))
    >>> channel.deliver(msg)["w"].tolist()
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 7.0]
    >>> channel.ledger.total_bits() == 8 * len(msg.data)
    True
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping

import numpy as np

import sparsecodec as sc
from sparsecodec.errors import ConfigError

__all__ = ["Channel", "Link", "Message", "Ledger", "LedgerRecord", "DIRECTIONS",
           "BUNDLE_OVERHEAD", "SERVER"]

DIRECTIONS = ("up", "down")
#: Tensor name under which a bundle's own bytes (preamble, names, lengths, CRC) are recorded.
BUNDLE_OVERHEAD = "_bundle"
#: The client id used for the server side of a message (ledger rows name the client end).
SERVER = -1


@dataclass(frozen=True)
class Message:
    """One encoded message: the bytes that travel and their exact bit breakdown.

    ``data`` is all the receiver gets. ``sections`` (bits per section, whole message) and
    ``tensor_sections`` (bits per section per tensor, plus :data:`BUNDLE_OVERHEAD`) both sum
    to ``8 * len(data)``. ``numel`` counts the parameters carried (for bits per parameter).
    """

    data: bytes
    round: int
    client: int
    direction: str
    sections: Mapping[str, int]
    tensor_sections: Mapping[str, Mapping[str, int]]
    numel: int

    @property
    def nbits(self) -> int:
        return 8 * len(self.data)


@dataclass(frozen=True)
class LedgerRecord:
    """One delivered message, as the ledger keeps it (JSON-safe via :meth:`to_dict`)."""

    round: int
    client: int
    direction: str
    nbits: int
    numel: int
    tensor_sections: Mapping[str, Mapping[str, int]]

    def to_dict(self) -> dict[str, Any]:
        return {"round": self.round, "client": self.client, "direction": self.direction,
                "nbits": self.nbits, "numel": self.numel,
                "tensors": {t: dict(s) for t, s in self.tensor_sections.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LedgerRecord":
        return cls(int(d["round"]), int(d["client"]), str(d["direction"]), int(d["nbits"]),
                   int(d["numel"]), {str(t): {str(k): int(v) for k, v in s.items()}
                                     for t, s in d["tensors"].items()})


class Ledger:
    """Exact bits of every delivered message, queryable by round, client, direction, tensor, section.

    >>> ledger = Ledger()
    >>> ledger.add(LedgerRecord(0, 2, "up", 48, 10, {"w": {"header": 16, "values": 24},
    ...                                               "_bundle": {"header": 8}}))
    >>> ledger.total_bits(direction="up"), ledger.total_bits(section="values"), ledger.total_bits(tensor="w")
    (48, 24, 40)
    """

    def __init__(self) -> None:
        self._records: list[LedgerRecord] = []

    def add(self, record: LedgerRecord) -> None:
        total = sum(sum(s.values()) for s in record.tensor_sections.values())
        if record.direction not in DIRECTIONS or total != record.nbits:
            # a ledger that does not add up is a bug in the channel, never data to keep
            raise ValueError(f"inconsistent ledger record: direction {record.direction!r}, "
                             f"sections sum to {total} bits, message has {record.nbits}")
        self._records.append(record)

    def __len__(self) -> int:
        return len(self._records)

    def __iter__(self) -> Iterator[LedgerRecord]:
        return iter(self._records)

    def records(self, *, round: int | None = None, client: int | None = None,
                direction: str | None = None) -> list[LedgerRecord]:
        """The delivered messages matching every given filter."""
        if direction is not None and direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        return [r for r in self._records
                if (round is None or r.round == round) and (client is None or r.client == client)
                and (direction is None or r.direction == direction)]

    def total_bits(self, *, round: int | None = None, client: int | None = None,
                   direction: str | None = None, tensor: str | None = None,
                   section: str | None = None) -> int:
        """Sum of bits over the matching messages, restricted to one tensor and/or section."""
        total = 0
        for r in self.records(round=round, client=client, direction=direction):
            if tensor is None and section is None:
                total += r.nbits
                continue
            for name, sections in r.tensor_sections.items():
                if tensor is None or name == tensor:
                    total += sum(v for k, v in sections.items() if section is None or k == section)
        return total

    def total_numel(self, *, direction: str | None = None, round: int | None = None) -> int:
        """Parameters carried by the matching messages (the denominator of bits per parameter)."""
        return sum(r.numel for r in self.records(round=round, direction=direction))

    def by_section(self, *, direction: str | None = None, round: int | None = None) -> dict[str, int]:
        """``{section: bits}`` over the matching messages."""
        out: dict[str, int] = {}
        for r in self.records(round=round, direction=direction):
            for sections in r.tensor_sections.values():
                for k, v in sections.items():
                    out[k] = out.get(k, 0) + v
        return out

    def rows(self) -> list[tuple[int, int, str, str, str, int]]:
        """Flat ``(round, client, direction, tensor, section, bits)`` rows, in delivery order."""
        return [(r.round, r.client, r.direction, t, s, b)
                for r in self._records for t, secs in r.tensor_sections.items() for s, b in secs.items()]

    # -- persistence ------------------------------------------------------------------------
    def state_dict(self) -> list[dict[str, Any]]:
        return [r.to_dict() for r in self._records]

    def load_state_dict(self, state: list[Mapping[str, Any]]) -> None:
        self._records = []
        for d in state:
            self.add(LedgerRecord.from_dict(d))

    def to_jsonl(self) -> str:
        """One JSON object per delivered message (deterministic key order)."""
        return "".join(json.dumps(r.to_dict(), sort_keys=True) + "\n" for r in self._records)


def _tensor_sections(frame: sc.Frame) -> dict[str, dict[str, int]]:
    """Per-tensor bits from the bundle's meta, plus the bundle's own bytes as an entry."""
    per_tensor = {name: dict(s) for name, s in frame.meta["tensors"].items()}
    overhead = dict(frame.sections)
    for sections in per_tensor.values():
        for k, v in sections.items():
            overhead[k] -= v
    if any(v < 0 for v in overhead.values()):
        raise ValueError(f"bundle sections {frame.sections} smaller than its tensors' {per_tensor}")
    per_tensor[BUNDLE_OVERHEAD] = {k: v for k, v in overhead.items() if v}
    return per_tensor


class Link:
    """The sending end of the channel for one party in one round (bound by the engine).

    ``round`` and ``client`` are readable so an algorithm can use the round counter (FLARE's
    decay schedule) without knowing anything else about the engine.
    """

    def __init__(self, channel: "Channel", round: int, client: int, direction: str) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.channel, self.round, self.client, self.direction = channel, int(round), int(client), direction

    def send(self, tensors: Mapping[str, np.ndarray], codec: sc.Codec | Mapping[str, sc.Codec], *,
             scope: str = "tensor", feedback: sc.ErrorFeedback | None = None,
             side: Mapping[str, Mapping[str, Any]] | None = None) -> Message:
        """Encode ``tensors`` into one bundle message.

        With ``feedback`` (an :class:`sparsecodec.ErrorFeedback`), what is encoded is
        ``tensors + residual`` and the residual keeps what was not sent (EC / EF). ``side``
        is per-tensor side information both ends hold (never written into the bytes).
        """
        if not tensors:
            raise ConfigError("a message needs at least one tensor")
        checksum = self.channel.checksum
        if feedback is not None:
            if side:
                raise ConfigError("side information with error feedback is not supported")
            frame = feedback.step_bundle(tensors, codec, scope=scope, checksum=checksum)
        else:
            frame = sc.encode_bundle(tensors, codec, scope=scope, checksum=checksum, side=side)
        per_tensor = _tensor_sections(frame)
        return Message(bytes(frame), self.round, self.client, self.direction,
                       dict(frame.sections), per_tensor, int(frame.numel))

    def decode_own(self, message: Message, *,
                   side: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
        """Decode a message this party sent, exactly as the receiver will (EF21 keeps ``g += c``)."""
        return self.channel.decode(message, side=side)


class Channel:
    """Encodes, delivers (counts) and decodes messages; owns the :class:`Ledger`.

    ``checksum`` puts one CRC-32 on every bundle (counted, in the ``checksum`` section).
    ``max_numel`` bounds what a received message may make the decoder allocate. ``tap``, if
    given, is called as ``tap(message, client)`` on every delivery (tests use it to check
    that the ledger equals the bytes that really travelled).
    """

    def __init__(self, ledger: Ledger | None = None, *, checksum: bool = True,
                 max_numel: int = sc.DEFAULT_MAX_NUMEL,
                 tap: Callable[[Message, int], None] | None = None) -> None:
        self.ledger = Ledger() if ledger is None else ledger
        self.checksum = bool(checksum)
        self.max_numel = int(max_numel)
        self.tap = tap

    def link(self, *, round: int, client: int, direction: str) -> Link:
        """The sending end for ``client`` (or :data:`SERVER` for a broadcast) in ``round``."""
        return Link(self, round, client, direction)

    def decode(self, message: Message, *,
               side: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
        """Decode the bytes of ``message`` (validated: corrupt bytes raise a FrameError)."""
        return sc.decode_bundle(message.data, max_numel=self.max_numel, side=side)

    def deliver(self, message: Message, client: int | None = None, *,
                side: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
        """Carry ``message`` across the network: record its bits, then decode it from bytes.

        For an uplink message the client is its sender; a downlink message needs the
        receiving ``client``. Bits are recorded before decoding: corrupt bytes were still sent.
        """
        if not isinstance(message, Message):
            raise ConfigError(f"deliver() takes a Message from Link.send, got {type(message).__name__}")
        if message.direction == "up":
            if client is not None and client != message.client:
                raise ConfigError(f"uplink message from client {message.client} delivered as {client}")
            client = message.client
        elif client is None or client == SERVER:
            raise ConfigError("a downlink message needs the receiving client id")
        self.ledger.add(LedgerRecord(message.round, int(client), message.direction,
                                     message.nbits, message.numel, message.tensor_sections))
        if self.tap is not None:
            self.tap(message, int(client))
        return self.decode(message, side=side)
