"""The server half of :func:`~fl.flower.mod.sparse_update_mod` as a Flower Strategy wrapper.

Flower pairs its client-side differential-privacy mods with strategy wrappers
(``DifferentialPrivacyClientSideFixedClipping(FedAvg(...), ...)`` + ``fixedclipping_mod``);
:class:`SparseUpdateStrategy` does the same for sparsecodec: wrap any stock strategy
(``FedAvg``, ``FedAdam``, ``FedProx``, ...) and it aggregates decoded weights, with no change
to the strategy nor to the ``Grid``::

    from flwr.serverapp.strategy import FedAdam
    from fl.flower import SparseUpdateStrategy, sparse_update_mod

    client = ClientApp(mods=[sparse_update_mod(sc.TopK(density=0.1))])      # client side
    strategy = SparseUpdateStrategy(FedAdam(fraction_evaluate=0.0))       # server side
    strategy.start(grid=grid, initial_arrays=start, num_rounds=3)
    strategy.ledger.total_bits(direction="up")                            # exact uplink bits

Each round, :meth:`SparseUpdateStrategy.configure_train` remembers the ``ArrayRecord`` sent
to every node; :meth:`~SparseUpdateStrategy.aggregate_train` decodes each reply's bytes into
``received + update`` (:func:`~fl.flower.mod.decode_replies`) and hands the inner strategy
ordinary replies. A reply is hostile input: one that does not decode, or whose records would
make the inner strategy's consistency checks abort the round (no ``sparsecodec`` record, not
one ``MetricRecord``, a weight that is not a positive finite number, other metric keys than
the others'), is dropped with its reason logged and kept in :attr:`dropped`; the round goes on
with the others. A round in which *every* client failed raises ``RuntimeError`` (Flower's
strategies would keep the old model and end the run as if it had trained) unless
``allow_empty_rounds=True``. The runnable version is in the README ("the Strategy wrapper")
and ``tests/test_flower_strategy.py``.

    >>> import pytest; _ = pytest.importorskip("flwr")
    >>> from flwr.serverapp.strategy import FedAvg
    >>> s = SparseUpdateStrategy(FedAvg(fraction_evaluate=0.0))
    >>> s.strategy.weighted_by_key, s.ledger.total_bits()
    ('num-examples', 0)
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from typing import Any, Iterable

from ..channel import Channel
from .mod import KEY, _array_record, _clip, decode_replies

__all__ = ["SparseUpdateStrategy"]

log = logging.getLogger(__name__)


def _strategy_base():
    from flwr.serverapp.strategy import Strategy

    return Strategy


class SparseUpdateStrategy:
    """Wraps a Flower ``Strategy``: train replies encoded by :func:`sparse_update_mod` are
    decoded before ``strategy.aggregate_train`` sees them.

    ``key``: the Mod's record name. ``channel``: its :class:`fl.channel.Channel` (``ledger``
    counts every decoded uplink). ``strict=True`` re-raises exceptions other than
    ``FrameError`` / ``ValueError`` while decoding (for developers). ``dropped[round]`` lists
    ``(node id, reason)`` of the replies left out.
    """

    def __new__(cls, strategy, **kwargs):
        # an instance of a subclass of this and flwr's Strategy (built on first use, so this
        # module imports without flwr); Python then calls __init__ on it
        return object.__new__(_strategy_class())

    def __init__(self, strategy, *, key: str = KEY, channel: Channel | None = None,
                 strict: bool = False, allow_empty_rounds: bool = False) -> None:
        self.strategy, self.key, self.strict = strategy, key, bool(strict)
        self.allow_empty_rounds = bool(allow_empty_rounds)
        self.channel = channel if channel is not None else Channel()
        self.dropped: dict[int, list[tuple[Any, str]]] = {}
        self._sent: dict[int, dict[int, Any]] = {}       # round -> {node id: ArrayRecord sent}

    @property
    def ledger(self):
        return self.channel.ledger

    def __getattr__(self, name: str):
        # the inner strategy's own attributes (weighted_by_key, fraction_train, ...); only
        # called for names this wrapper does not have
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    # -- training: remember what was sent, decode what comes back ------------------------------
    def configure_train(self, server_round: int, arrays, config, grid) -> Iterable:
        messages = list(self.strategy.configure_train(server_round, arrays, config, grid))
        self._sent[server_round] = {m.metadata.dst_node_id: _array_record(m.content, None)[1]
                                    for m in messages}
        return messages

    def aggregate_train(self, server_round: int, replies: Iterable):
        sent = self._sent.pop(server_round, {})
        replies = list(replies)
        decoded, dropped = decode_replies(
            replies, lambda r: sent.get(r.metadata.src_node_id), key=self.key,
            channel=self.channel, strict=self.strict, require=True)
        dropped = [(r.metadata.src_node_id, reason) for r, reason in dropped]
        decoded, more = self._consistent(decoded)
        dropped += more
        for node, reason in more:
            log.warning("round %d: dropping the reply of node %s: %s", server_round, node, reason)
        self.dropped[server_round] = dropped
        ok = [r for r in decoded if not r.has_error()]
        if sent and not ok and not self.allow_empty_rounds:
            errors = [f"node {r.metadata.src_node_id}: {_clip(str(r.error.reason), 300)}"
                      for r in decoded if r.has_error()]
            reasons = [f"node {n}: {why}" for n, why in dropped] + errors
            raise RuntimeError(
                f"round {server_round}: every client failed ({len(sent)} sampled, {len(replies)} "
                f"replied, 0 usable); the model would stay as it was. "
                f"Reasons: {'; '.join(reasons)[:2000] or 'no replies (timeout?)'}")
        return self.strategy.aggregate_train(server_round, decoded)

    def _consistent(self, replies: list) -> tuple[list, list[tuple[Any, str]]]:
        """Leave out the replies that would make a stock strategy's reply checks raise for the
        whole round (``validate_message_reply_consistency``): one ArrayRecord, one MetricRecord
        holding the weight key as a positive finite number, the same metric keys as most."""
        weight_key = getattr(self.strategy, "weighted_by_key", None)
        good, bad = [], []
        for r in replies:
            if r.has_error():
                good.append(r)
                continue
            c = r.content
            if len(c.array_records) != 1 or len(c.metric_records) != 1:
                bad.append((r.metadata.src_node_id, f"{len(c.array_records)} ArrayRecords and "
                            f"{len(c.metric_records)} MetricRecords, expected one each"))
                continue
            metrics = next(iter(c.metric_records.values()))
            w = metrics.get(weight_key) if weight_key is not None else 1
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not (math.isfinite(w) and w > 0):
                bad.append((r.metadata.src_node_id, f"weight {weight_key!r} = {str(w)[:40]} is not a "
                            "positive finite number"))
                continue
            good.append(r)
        keys = [frozenset(next(iter(r.content.metric_records.values())).keys())
                for r in good if not r.has_error()]
        if keys:
            common = Counter(keys).most_common(1)[0][0]
            kept = []
            for r in good:
                if r.has_error() or frozenset(next(iter(r.content.metric_records.values())).keys()) == common:
                    kept.append(r)
                else:
                    bad.append((r.metadata.src_node_id, "its metric keys differ from the other replies'"))
            good = kept
        return good, bad

    # -- the rest is the inner strategy's -------------------------------------------------------
    def configure_evaluate(self, server_round: int, arrays, config, grid) -> Iterable:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(self, server_round: int, replies: Iterable):
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        log.info("SparseUpdateStrategy (sparsecodec uplink, record %r) wrapping:", self.key)
        self.strategy.summary()


_CLASS: list[type] = []


def _strategy_class() -> type:
    if not _CLASS:
        # (SparseUpdateStrategy, Strategy): isinstance works for both, and these methods come
        # before Strategy's abstract ones
        _CLASS.append(type("SparseUpdateStrategy", (SparseUpdateStrategy, _strategy_base()),
                           {"__module__": __name__, "__doc__": SparseUpdateStrategy.__doc__}))
    return _CLASS[0]
