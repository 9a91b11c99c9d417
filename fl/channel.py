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
from sparsecodec.packed import PACKED_WIRE_ID
from sparsecodec.patch import PATCH_WIRE_ID, Patch, decode_patch, patch_bound_bits

__all__ = ["Channel", "Link", "Message", "Ledger", "LedgerRecord", "DIRECTIONS",
           "BUNDLE_OVERHEAD", "SERVER"]

DIRECTIONS = ("up", "down")
#: Tensor name under which a bundle's own bytes (preamble, names, lengths, CRC) are recorded.
BUNDLE_OVERHEAD = "_bundle"
#: The client id used for the server side of a message (ledger rows name the client end).
SERVER = -1
_KINDS = {0x7F: "bundle", 0x7E: "schema-bundle", PACKED_WIRE_ID: "compact", PATCH_WIRE_ID: "patch"}


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
    #: the :class:`sparsecodec.MessageSpec` a compact message was encoded against: knowledge
    #: both ends hold, never on the wire (the receiver passes its own to :meth:`Channel.deliver`)
    spec: Any = None

    @property
    def nbits(self) -> int:
        return 8 * len(self.data)

    @property
    def wire_id(self) -> int:
        return self.data[4] if len(self.data) > 4 else -1


@dataclass(frozen=True)
class LedgerRecord:
    """One delivered message, as the ledger keeps it (JSON-safe via :meth:`to_dict`)."""

    round: int
    client: int
    direction: str
    nbits: int
    numel: int
    tensor_sections: Mapping[str, Mapping[str, int]]
    #: what the message's information requires (see :func:`message_bound_bits`); None: not known
    bound_bits: float | None = None
    #: what crossed: "bundle", "schema-bundle", "compact", "patch" or another codec's id
    kind: str | None = None

    def to_dict(self) -> dict[str, Any]:
        d = {"round": self.round, "client": self.client, "direction": self.direction,
             "nbits": self.nbits, "numel": self.numel,
             "tensors": {t: dict(s) for t, s in self.tensor_sections.items()}}
        if self.bound_bits is not None:
            d["bound_bits"] = round(float(self.bound_bits), 3)
        if self.kind is not None:
            d["kind"] = self.kind
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "LedgerRecord":
        bound = d.get("bound_bits")
        return cls(int(d["round"]), int(d["client"]), str(d["direction"]), int(d["nbits"]),
                   int(d["numel"]), {str(t): {str(k): int(v) for k, v in s.items()}
                                     for t, s in d["tensors"].items()},
                   None if bound is None else float(bound),
                   None if d.get("kind") is None else str(d["kind"]))


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
    if BUNDLE_OVERHEAD in per_tensor:        # compact messages and patches attribute it already
        return per_tensor
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

    def __init__(self, channel: "Channel", round: int, client: int, direction: str,
                 spec: sc.MessageSpec | None = None) -> None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        self.channel, self.round, self.client, self.direction = channel, int(round), int(client), direction
        #: what both ends know about this link's message (compact wire format), or None
        self.spec = spec

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
        spec = self.spec
        if spec is not None and sc.MessageSpec(spec.schema, codec, scope, spec.values_scope).fingerprint != spec.fingerprint:
            raise ConfigError("send(): codec/scope differ from the link's MessageSpec (what the "
                              "receiver expects); fix Algorithm.uplink_spec or the send call")
        if feedback is not None:
            if side:
                raise ConfigError("side information with error feedback is not supported")
            frame = feedback.step_bundle(tensors, codec, scope=scope, checksum=checksum, spec=spec)
        elif spec is not None:
            frame = sc.encode_packed(tensors, spec, checksum=checksum, side=side)
        else:
            frame = sc.encode_bundle(tensors, codec, scope=scope, checksum=checksum, side=side)
        return self.channel.message(frame, round=self.round, client=self.client,
                                    direction=self.direction, spec=spec)

    def decode_own(self, message: Message, *,
                   side: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, np.ndarray]:
        """Decode a message this party sent, exactly as the receiver will (EF21 keeps ``g += c``)."""
        return self.channel.decode(message, side=side, spec=message.spec)


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

    def link(self, *, round: int, client: int, direction: str,
             spec: sc.MessageSpec | None = None) -> Link:
        """The sending end for ``client`` (or :data:`SERVER` for a broadcast) in ``round``;
        with ``spec``, its message is a compact one (see :mod:`sparsecodec.packed`)."""
        return Link(self, round, client, direction, spec)

    def message(self, frame: sc.Frame, *, round: int, client: int, direction: str,
                spec: sc.MessageSpec | None = None) -> Message:
        """Wrap an encoded frame (bundle, compact message or patch) as a :class:`Message`."""
        return Message(bytes(frame), int(round), int(client), direction, dict(frame.sections),
                       _tensor_sections(frame), int(frame.numel), spec)

    def decode(self, message: Message, *, side: Mapping[str, Mapping[str, Any]] | None = None,
               spec: sc.MessageSpec | None = None) -> dict[str, np.ndarray]:
        """Decode the bytes of ``message`` (validated: corrupt bytes raise a FrameError)."""
        decoded, _, _, _ = self._parse(message.data, side, spec, None)
        if isinstance(decoded, Patch):
            raise ConfigError("a model patch is applied to a replica (fl.downlink.Replica), not decoded")
        return decoded

    def _parse(self, data: bytes, side, spec, schema) -> tuple[Any, dict, float | None, int]:
        """(decoded tensors or a Patch, per-tensor sections, bound, numel), all from the bytes
        and what the receiver holds (its spec or schema), never from the sender's claims."""
        wire_id = data[4] if len(data) > 4 else -1
        if wire_id == PACKED_WIRE_ID:
            if spec is None:
                raise sc.FrameError("a compact message arrived where the receiver holds no "
                                    "MessageSpec for it (it expects a self-describing bundle)")
            sections: dict = {}
            info: dict = {}
            tensors = sc.decode_packed(data, spec, max_numel=self.max_numel, side=side,
                                       sections=sections, info=info)
            return tensors, sections, info["bound_bits"], sum(int(a.size) for a in tensors.values())
        if wire_id == PATCH_WIRE_ID:
            if schema is None:
                raise sc.FrameError("a model patch arrived where the receiver holds no model")
            patch = decode_patch(data, schema, max_numel=self.max_numel)
            numel = sum(int(np.prod(shape, dtype=np.int64)) for _, _, shape in schema.entries)
            return (patch, patch.sections,
                    patch_bound_bits(schema, {n: s.size for n, s in patch.supports.items()}), numel)
        tensors = sc.decode_bundle(data, max_numel=self.max_numel, side=side)
        # the receiver's own reading of the bytes (issue 16: never the sender's claims)
        report = sc.inspect_bundle(data, side=side, max_numel=self.max_numel, verify=False)
        return tensors, report.tensor_sections(), None, sum(int(a.size) for a in tensors.values())

    def deliver(self, message: Message, client: int | None = None, *,
                side: Mapping[str, Mapping[str, Any]] | None = None,
                spec: sc.MessageSpec | None = None, schema: sc.Schema | None = None) -> Any:
        """Carry ``message`` across the network: record its bits, then decode it from bytes.

        For an uplink message the client is its sender; a downlink message needs the
        receiving ``client``. ``spec`` is the receiver's :class:`~sparsecodec.MessageSpec`
        (compact messages), ``schema`` the receiver's model layout (patches, which are
        returned as a :class:`sparsecodec.patch.Patch` for the receiver's replica). The
        ledger's rows are read off the bytes wherever the format allows (compact messages,
        patches); bits are recorded even when decoding fails: corrupt bytes were still sent.
        """
        if not isinstance(message, Message):
            raise ConfigError(f"deliver() takes a Message from Link.send, got {type(message).__name__}")
        if message.direction == "up":
            if client is not None and client != message.client:
                raise ConfigError(f"uplink message from client {message.client} delivered as {client}")
            client = message.client
        elif client is None or client == SERVER:
            raise ConfigError("a downlink message needs the receiving client id")
        if self.tap is not None:
            self.tap(message, int(client))
        try:
            decoded, sections, bound, numel = self._parse(message.data, side, spec, schema)
        except Exception:
            # still sent: the bytes count, as one row nobody can attribute
            self.ledger.add(LedgerRecord(message.round, int(client), message.direction, message.nbits,
                                         message.numel, {BUNDLE_OVERHEAD: {"rejected": message.nbits}},
                                         None, "rejected"))
            raise
        self.ledger.add(LedgerRecord(message.round, int(client), message.direction, message.nbits,
                                     numel, sections, bound, _KINDS.get(message.wire_id)))
        return decoded
