"""sparsecodec in your own Flower app: a client Mod that encodes the model update, and the
server-side decoding it pairs with (:class:`fl.flower.SparseUpdateStrategy` around any stock
strategy; :class:`DecodingGrid` / :func:`decode_replies` for hand-written server loops).

Client: :func:`sparse_update_mod` wraps your ``@app.train()`` function. It remembers the
model it received (the message's ``ArrayRecord``), lets your function train, then replaces
the reply's ``ArrayRecord`` of trained weights by one ``ConfigRecord`` (key ``"sparsecodec"``)
holding the bytes of one sparsecodec bundle: the **update** ``trained - received`` encoded
with your codec, plus the error-feedback residual (an :class:`sparsecodec.ErrorFeedback` kept
in the node's ``Context.state``, as bytes). Non-floating arrays (e.g. BatchNorm counters)
travel losslessly in a second, lossless bundle.

Server: :class:`fl.flower.strategy.SparseUpdateStrategy` wraps your strategy (the usual
way, see the README); :class:`DecodingGrid` wraps the ``Grid`` instead, for server loops that
call ``grid.send_and_receive`` themselves. Both decode every train reply carrying
``"sparsecodec"`` from its bytes as hostile input (a corrupt, malformed or mismatched reply is
dropped with a warning, whatever the exception), count them in a :class:`fl.channel.Ledger`
and put back an ``ArrayRecord`` of weights ``received + update`` (non-floating arrays as
sent, 0-d ones 0-d). :func:`decode_update` does the same for one reply.

Runnable example with the Grid wrapper (Flower's simulation engine)::

    import numpy as np, sparsecodec as sc
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
    from flwr.serverapp.strategy import FedAvg
    from flwr.simulation import run_simulation
    from fl.flower import DecodingGrid, sparse_update_mod

    client = ClientApp(mods=[sparse_update_mod(sc.TopK(density=0.1))])

    @client.train()
    def train(msg: Message, context: Context) -> Message:
        w = msg.content["arrays"].to_numpy_ndarrays()
        w = [x - 0.1 * np.sign(x) for x in w]                    # your local training
        return Message(RecordDict({"arrays": ArrayRecord(w),
                                   "metrics": MetricRecord({"num-examples": 10})}), reply_to=msg)

    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        grid = DecodingGrid(grid)
        start = ArrayRecord([np.ones((20, 5), np.float32), np.zeros(5, np.float32)])
        result = FedAvg(fraction_evaluate=0.0).start(grid=grid, initial_arrays=start, num_rounds=2)
        print(grid.ledger.total_bits(direction="up"), "uplink bits")

    run_simulation(server, client, num_supernodes=2)

The doctest below calls the Mod directly (no engine):

    >>> import pytest; _ = pytest.importorskip("flwr")
    >>> import numpy as np, sparsecodec as sc
    >>> from flwr.app import (Array, ArrayRecord, ConfigRecord, Context, Message, Metadata,
    ...                       RecordDict)
    >>> sent = ArrayRecord({"w": Array(np.zeros(8, np.float32))})
    >>> incoming = Metadata(run_id=1, message_id="m1", src_node_id=1, dst_node_id=7,
    ...                     reply_to_message_id="", group_id="1", created_at=0.0, ttl=3600.0,
    ...                     message_type="train")   # what the SuperNode hands the ClientApp
    >>> msg = Message(metadata=incoming, content=RecordDict({"arrays": sent,
    ...                                          "config": ConfigRecord({"server-round": 1})}))
    >>> def train(msg, context):             # "training" adds 0..7 to the weights
    ...     w = msg.content["arrays"]["w"].numpy() + np.arange(8, dtype=np.float32)
    ...     return Message(RecordDict({"arrays": ArrayRecord({"w": Array(w)})}), reply_to=msg)
    >>> context = Context(run_id=1, node_id=7, node_config={}, state=RecordDict(), run_config={})
    >>> mod = sparse_update_mod(sc.TopK(k=2))
    >>> reply = mod(msg, context, train)
    >>> sorted(reply.content.keys())            # the weights left as bytes
    ['sparsecodec']
    >>> decode_update(reply, sent)["w"].numpy().tolist()       # received + top-2 of the update
    [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 6.0, 7.0]
    >>> reply = mod(msg, context, train)        # round 2: top-2 of update + residual [0 2 4 6 8 10 6 7]
    >>> decode_update(reply, sent)["w"].numpy().tolist()
    [0.0, 0.0, 0.0, 0.0, 8.0, 10.0, 0.0, 0.0]
"""

from __future__ import annotations

import json
import logging
import math
from typing import Any, Callable, Iterable, Mapping

import numpy as np

import sparsecodec as sc

from ..channel import Channel, Message
from .state import decode_state, encode_state

__all__ = ["sparse_update_mod", "decode_update", "decode_replies", "DecodingGrid", "MalformedReply",
           "message_fields", "KEY"]

log = logging.getLogger(__name__)

KEY = "sparsecodec"


def _pack(m: Message, prefix: str = "") -> dict[str, Any]:
    return {prefix + "data": m.data, prefix + "round": m.round, prefix + "client": m.client,
            prefix + "numel": m.numel, prefix + "sections": json.dumps(dict(m.sections)),
            prefix + "tensor_sections": json.dumps({t: dict(s) for t, s in m.tensor_sections.items()})}


def _unpack(rec: Mapping[str, Any], prefix: str = "") -> Message:
    return message_fields(rec, prefix)


class MalformedReply(ValueError):
    """A client's reply does not hold what the protocol says (its client is dropped)."""


_MAX_JSON = 1 << 20      # characters of one JSON field; an honest one is a few hundred


def _clip(text: str, n: int = 500) -> str:
    return text if len(text) <= n else text[:n] + f"... ({len(text)} characters)"


def _int(rec, key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    v = rec[key] if key in rec else None
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise MalformedReply(f"{key!r} must be an int in [{lo}, {hi}], got {_clip(repr(v), 80)}")
    return v


def _json(rec, key: str):
    v = rec[key] if key in rec else None
    if not isinstance(v, str) or len(v) > _MAX_JSON:
        raise MalformedReply(f"{key!r} must be a JSON string of at most {_MAX_JSON} characters")
    try:
        return json.loads(v)
    except (ValueError, RecursionError) as exc:
        raise MalformedReply(f"{key!r} is not JSON: {_clip(str(exc), 120)}") from None


def _bits(obj, what: str, nbits: int) -> dict[str, int]:
    """``{section: bits}`` with non-negative int bits (never more than the message has)."""
    if not isinstance(obj, dict):
        raise MalformedReply(f"{what} must be a JSON object, got {type(obj).__name__}")
    for k, v in obj.items():
        if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= nbits:
            raise MalformedReply(f"{what}[{_clip(repr(k), 40)}] must be an int in [0, {nbits}]")
    return obj


def message_fields(rec: Mapping[str, Any], prefix: str = "", *, direction: str = "up",
                   max_numel: int = sc.DEFAULT_MAX_NUMEL) -> Message:
    """The :class:`~fl.channel.Message` a reply's ConfigRecord carries under ``prefix``, every
    field type- and range-checked (bits that sum to the bytes' bits): raises
    :class:`MalformedReply` naming the field."""
    data = rec[prefix + "data"] if prefix + "data" in rec else None
    if not isinstance(data, bytes):
        raise MalformedReply(f"{prefix + 'data'!r} must be bytes, got {type(data).__name__}")
    nbits = 8 * len(data)
    rnd, client = _int(rec, prefix + "round"), _int(rec, prefix + "client")
    numel = _int(rec, prefix + "numel", 0, max_numel)
    sections = _bits(_json(rec, prefix + "sections"), "sections", nbits)
    tensors = _json(rec, prefix + "tensor_sections")
    if not isinstance(tensors, dict):
        raise MalformedReply(f"tensor_sections must be a JSON object, got {type(tensors).__name__}")
    tensor_sections = {k: _bits(v, f"tensor_sections[{_clip(repr(k), 40)}]", nbits)
                       for k, v in tensors.items()}
    for what, total in (("sections", sum(sections.values())),
                        ("tensor_sections", sum(sum(s.values()) for s in tensor_sections.values()))):
        if total != nbits:
            raise MalformedReply(f"{what} sum to {total} bits, the bytes are {nbits}")
    return Message(data, rnd, client, direction, sections, tensor_sections, numel)


def _array_record(content, name: str | None):
    records = content.array_records
    if name is not None:
        return name, records.get(name)
    if len(records) == 1:
        return next(iter(records.items()))
    return None, None


def _round_of(msg) -> int:
    for rec in msg.content.config_records.values():
        if "server-round" in rec:
            return int(rec["server-round"])
    try:
        return int(msg.metadata.group_id)
    except (TypeError, ValueError):
        return 0


def sparse_update_mod(codec: sc.Codec | None = None, *, feedback: bool = True, scope: str = "tensor",
                      record: str | None = None, key: str = KEY, checksum: bool = True) -> Callable:
    """A Flower client Mod ``(msg, context, call_next) -> Message`` sending ``trained -
    received`` as sparsecodec bytes (default codec ``TopK(density=0.01)``).

    ``record``: the ArrayRecord's name (default: the message's only ArrayRecord).
    ``feedback``: keep the error-feedback residual in ``context.state[key + ".ef"]``.
    Messages other than train messages pass through untouched.
    """
    codec = codec if codec is not None else sc.TopK(density=0.01)

    def mod(msg, context, call_next):
        from flwr.app import ConfigRecord, RecordDict

        if msg.metadata.message_type.split(".")[0] != "train":
            return call_next(msg, context)
        name, received = _array_record(msg.content, record)
        if received is None:
            return call_next(msg, context)
        ref = {k: a.numpy() for k, a in received.items()}
        reply = call_next(msg, context)
        if reply.has_error():
            return reply
        out_name, trained = _array_record(reply.content, name)
        if trained is None:
            return reply
        new = {k: a.numpy() for k, a in trained.items()}
        if list(new) != list(ref):
            raise ValueError(f"the trained ArrayRecord holds {list(new)[:20]}, the received one {list(ref)[:20]}")
        for k in ref:
            if new[k].shape != ref[k].shape:
                raise ValueError(f"trained {k!r} has shape {new[k].shape}, received {ref[k].shape}")
        floats = {k: np.subtract(new[k], ref[k], dtype=new[k].dtype) for k in new if new[k].dtype.kind == "f"}
        others = {k: new[k] for k in new if new[k].dtype.kind != "f"}
        client = int(dict(context.node_config).get("partition-id", context.node_id))
        link = Channel(checksum=checksum).link(round=_round_of(msg), client=client, direction="up")
        ef = None
        if feedback:
            saved = context.state.config_records.get(key + ".ef")
            ef = decode_state(saved["state"]) if saved is not None else sc.ErrorFeedback()
            _follow_dtypes(ef, floats)
        fields = {"record": out_name, "names": json.dumps(list(new))}
        if floats:
            fields.update(_pack(link.send(floats, codec, scope=scope, feedback=ef)))
        if others:       # lossless; dtypes Dense does not code (int64 ...) travel as their bytes
            raw, kinds = {}, {}
            for k, v in others.items():
                if v.dtype.name in ("bool", "uint8"):
                    raw[k] = v
                else:
                    le = v.astype(v.dtype.newbyteorder("<"), copy=True)
                    raw[k], kinds[k] = le.reshape(-1).view(np.uint8), [le.dtype.str, list(v.shape)]
            fields.update(_pack(link.send(raw, sc.Dense()), "dense."))
            fields["dense.kinds"] = json.dumps(kinds)
        if ef is not None:
            context.state[key + ".ef"] = ConfigRecord({"state": encode_state(ef)})
        content = RecordDict({k: v for k, v in reply.content.items() if k != out_name})
        content[key] = ConfigRecord(fields)
        reply.content = content
        return reply

    return mod


def _follow_dtypes(ef: sc.ErrorFeedback, floats: Mapping[str, np.ndarray]) -> None:
    """Carry a residual over when its tensor changed dtype (``FedAdam`` sends float64 weights
    after a float32 start), and forget it when the shape changed (a new model)."""
    state, changed = ef.state_dict(), False
    for k, v in floats.items():
        r = state["residuals"].get(k)
        if r is not None and (r.dtype != v.dtype or r.shape != v.shape):
            if r.shape == v.shape:
                state["residuals"][k] = r.astype(v.dtype)
            else:
                log.warning("tensor %r changed shape %s -> %s: its residual is dropped", k, r.shape, v.shape)
                del state["residuals"][k]
            changed = True
    if changed:
        ef.load_state_dict(state)


def _messages(rec: Mapping[str, Any]) -> list[Message]:
    out = [_unpack(rec)] if "data" in rec else []
    if "dense.data" in rec:
        out.append(_unpack(rec, "dense."))
    return out


#: dtypes a lossless side array may be viewed as (never object, void, string or datetime)
_RAW_KINDS = "biuf"


def _contiguous(v: np.ndarray) -> np.ndarray:
    # np.ascontiguousarray makes a 0-d array 1-d (BatchNorm's num_batches_tracked came back
    # with shape (1,) and broke every client from round 2 on)
    return v if v.flags.c_contiguous else v.copy(order="C")


def _json_field(rec: Mapping[str, Any], key: str, default: str | None = None):
    v = rec[key] if key in rec else default
    if not isinstance(v, str):
        raise ValueError(f"reply field {key!r} must be a JSON string, got {type(v).__name__}")
    return json.loads(v)


def _raw_kinds(rec: Mapping[str, Any]) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """``dense.kinds``: ``{name: [dtype str, shape]}`` from a (hostile) reply, checked."""
    kinds = _json_field(rec, "dense.kinds", "{}")
    if not isinstance(kinds, dict):
        raise ValueError("'dense.kinds' must be a JSON object")
    out = {}
    for k, v in kinds.items():
        if not (isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], list)
                and all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 2**62 for d in v[1])):
            raise ValueError(f"'dense.kinds' of {k!r} must be [dtype, shape], got {str(v)[:80]}")
        dt = np.dtype(v[0])
        if dt.kind not in _RAW_KINDS or dt.itemsize > 16:
            raise ValueError(f"'dense.kinds' of {k!r}: dtype {dt} is not a number type")
        out[k] = dt, tuple(v[1])
    return out


def decode_update(reply, reference, *, key: str = KEY, channel: Channel | None = None):
    """The ``ArrayRecord`` of weights ``reference + update`` from a reply the Mod encoded.

    ``reference``: the ArrayRecord (or ``{name: ndarray}``) sent to that client. With a
    ``channel`` its ledger counts the bytes. A reply is hostile input: corrupt bytes raise
    ``sparsecodec.FrameError``, malformed fields and an update that does not match the
    reference ``ValueError`` (the reply's own key and types are checked before use).
    """
    from flwr.app import Array, ArrayRecord

    if key not in reply.content.config_records:
        raise ValueError(f"the reply has no {key!r} ConfigRecord")
    rec = reply.content.config_records[key]
    for field in ("data", "dense.data"):
        if field in rec and not isinstance(rec[field], bytes):
            raise ValueError(f"reply field {field!r} must be bytes")
    ref = {k: (v.numpy() if hasattr(v, "numpy") else np.asarray(v)) for k, v in reference.items()}
    channel = channel if channel is not None else Channel()
    kinds = _raw_kinds(rec)
    names = _json_field(rec, "names")
    if names != list(ref):      # also rejects a non-list: compared before anything is decoded
        raise ValueError(f"update names {str(names)[:200]}, the reference has {list(ref)}")
    deltas: dict[str, np.ndarray] = {}     # floating arrays: trained - received
    absolute: dict[str, np.ndarray] = {}   # the others, as trained (lossless)
    if "data" in rec:
        deltas = channel.deliver(_unpack(rec))
    if "dense.data" in rec:
        absolute = channel.deliver(_unpack(rec, "dense."))
    for k, (dt, shape) in kinds.items():
        raw = absolute.get(k)
        if raw is None or raw.dtype != np.uint8 or raw.size != dt.itemsize * math.prod(shape):
            raise ValueError(f"update {k!r} does not hold {dt}{shape}")
        absolute[k] = raw.view(dt).reshape(shape).astype(dt.newbyteorder("="))
    if set(deltas) & set(absolute) or sorted({**deltas, **absolute}) != sorted(ref):
        raise ValueError(f"update carries {sorted(deltas)[:20]} and {sorted(absolute)[:20]}, "
                         f"the reference has {list(ref)}")
    out = {}
    for k in names:
        r = ref[k]
        d = deltas[k] if k in deltas else absolute[k]
        if d.shape != r.shape:
            raise ValueError(f"update {k!r} has shape {d.shape}, the reference {r.shape}")
        if k in deltas:
            if d.dtype.kind != "f" or not np.isfinite(d).all():
                raise ValueError(f"update {k!r} is {d.dtype}, not finite floats")
            out[k] = np.add(r, d, dtype=d.dtype)     # in the trained dtype, as the Mod subtracted
        else:
            out[k] = d
    return ArrayRecord({k: Array(_contiguous(v)) for k, v in out.items()})


def decode_replies(replies: Iterable, reference: Callable[[Any], Any], *, key: str = KEY,
                   channel: Channel | None = None, strict: bool = False,
                   require: bool = False) -> tuple[list, list[tuple[Any, str]]]:
    """Decode every train reply the Mod encoded: ``(replies, dropped)``.

    ``reference(reply)`` gives the ArrayRecord sent to that reply's node. Error replies pass
    through untouched; so do replies without ``key`` or without a reference, unless
    ``require`` (then they are dropped: every reply must be one the Mod encoded, to a message
    this server sent). A reply that fails to decode, *for any reason* (hostile bytes or
    fields, ``MemoryError``), is left out and listed in ``dropped`` as ``(reply, reason)``,
    logged. ``strict=True`` re-raises exceptions other than ``FrameError`` / ``ValueError``
    (for developers).
    """
    out, dropped = [], []
    for r in replies:
        try:
            if r.has_error():
                out.append(r)
                continue
            ref = reference(r)
            if ref is None or key not in r.content.config_records:
                if require:
                    raise ValueError(f"no {key!r} record (not encoded by sparse_update_mod)" if ref is not None
                                     else "a reply to no message of this round")
                out.append(r)
                continue
            name = r.content.config_records[key].get("record")
            if not isinstance(name, str):
                raise ValueError(f"reply field 'record' must be a str, got {type(name).__name__}")
            arrays = decode_update(r, ref, key=key, channel=channel)
        except Exception as exc:    # a reply from a node: never a reason to stop the server
            if strict and not isinstance(exc, (sc.FrameError, ValueError)):
                raise
            reason = f"{type(exc).__name__}: {str(exc)[:500]}"
            log.warning("dropping the reply of node %s: %s", _node_of(r), reason)
            dropped.append((r, reason))
            continue
        content = type(r.content)({k: v for k, v in r.content.items() if k != key})
        content[name] = arrays
        r.content = content
        out.append(r)
    return out, dropped


def _node_of(reply) -> Any:
    try:
        return reply.metadata.src_node_id
    except Exception:
        return "?"


def _grid_base():
    from flwr.serverapp import Grid

    return Grid


class DecodingGrid:
    """Wraps a Flower ``Grid``: train replies from :func:`sparse_update_mod` come back as
    ``ArrayRecord`` weights (decoded from their bytes). ``ledger`` counts the uplink bits."""

    def __new__(cls, grid, *, key: str = KEY, channel: Channel | None = None, strict: bool = False):
        # a real subclass of flwr's Grid (built on first use, so this module imports without flwr)
        obj = object.__new__(_decoding_grid_class())
        obj.__init__(grid, key=key, channel=channel, strict=strict)
        return obj

    def __init__(self, grid, *, key: str = KEY, channel: Channel | None = None,
                 strict: bool = False) -> None:
        self.inner, self.key, self.strict = grid, key, bool(strict)
        self.channel = channel if channel is not None else Channel()
        self._refs: dict[str, Any] = {}

    @property
    def ledger(self):
        return self.channel.ledger

    # -- delegation ---------------------------------------------------------------------------
    def set_run(self, run) -> None:
        self.inner.set_run(run)

    @property
    def run(self):
        return self.inner.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self.inner.get_node_ids()

    def get_nodes(self):
        return self.inner.get_nodes()

    # -- the decoding -------------------------------------------------------------------------
    def _decode(self, replies: Iterable, refs: Callable[[Any], Any]) -> list:
        return decode_replies(replies, refs, key=self.key, channel=self.channel, strict=self.strict)[0]

    @staticmethod
    def _reference(msg):
        return next(iter(msg.content.array_records.values()), None)

    def push_messages(self, messages):
        messages = list(messages)
        ids = list(self.inner.push_messages(messages))
        for mid, m in zip(ids, messages):
            self._refs[mid] = self._reference(m)
        return ids

    def pull_messages(self, message_ids):
        replies = list(self.inner.pull_messages(message_ids))
        return self._decode(replies, lambda r: self._refs.pop(r.metadata.reply_to_message_id, None))

    def send_and_receive(self, messages, *, timeout=None):
        messages = list(messages)
        by_node = {m.metadata.dst_node_id: self._reference(m) for m in messages}
        replies = self.inner.send_and_receive(messages, timeout=timeout)
        return self._decode(replies, lambda r: by_node.get(r.metadata.src_node_id))


_CLASS: list[type] = []


def _decoding_grid_class() -> type:
    if not _CLASS:
        members = {k: v for k, v in vars(DecodingGrid).items()
                   if k not in ("__new__", "__dict__", "__weakref__")}
        _CLASS.append(type("DecodingGrid", (_grid_base(),), members))
    return _CLASS[0]
