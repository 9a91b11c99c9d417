"""The lossless sparse downlink: each client gets the smaller of a patch and the dense model.

The server publishes every round's global model as a *version* (version ``t`` is the model
broadcast in round ``t``, decoded from the broadcast's bytes, so it is exactly what a dense
download would give). It remembers, for a bounded number of versions
(``sim.downlink_history``), which positions changed from one version to the next, and which
version each client last received. A client at version ``v`` then gets a
:mod:`sparsecodec.patch` with the positions changed since ``v`` and their new values, applied
by assignment, so its replica is bit-identical to the server's model; the patch carries the
digest of the resulting model, so a replica that is not at ``v`` (a client that lost its
state) is detected, never silently diverged. A client the server knows nothing about (new,
too old for the history, or just found out of sync) gets the dense message, and so does
everyone whenever the dense message is smaller (FedAvg, FedPM's θ: the whole model changes).

Named choice: **version 0 is the initial model both ends build from the run's seed** (the
server's ``init_server`` on the seeded model; in-process and on Flower every ClientApp builds
the same one), so even a client's first download is a patch. Nothing is trusted: if a
client's own build differs (another torch version, another init), the patch's digest says so
and that client gets the dense model, as does any client the server knows nothing about.

    >>> import numpy as np, sparsecodec as sc
    >>> from fl.channel import Channel
    >>> server, channel = DownlinkServer(history=4), Channel()
    >>> model = {"w": np.zeros(1000, np.float32)}
    >>> layout = sc.Schema.from_tensors(model)          # the client knows its architecture
    >>> dense = channel.link(round=1, client=-1, direction="down").send(model, sc.Dense())
    >>> server.publish(1, model)
    >>> replica = Replica()
    >>> replica.receive(channel.deliver(server.message_for(0, dense, channel), 0), dense.round)["w"].size
    1000
    >>> server.delivered(0, replica.version)
    >>> model["w"][7] = 1.5
    >>> dense = channel.link(round=2, client=-1, direction="down").send(model, sc.Dense())
    >>> server.publish(2, model)
    >>> msg = server.message_for(0, dense, channel)
    >>> msg.nbits < 200 < dense.nbits
    True
    >>> float(replica.receive(channel.deliver(msg, 0, schema=layout), msg.round)["w"][7]), replica.version
    (1.5, 2)
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Mapping

import numpy as np

import sparsecodec as sc
from sparsecodec.errors import ConfigError
from sparsecodec.patch import (Patch, ReplicaMismatchError, apply_patch, changed_positions,
                               encode_patch, model_digest)

from .channel import Channel, Message

__all__ = ["DownlinkServer", "Replica", "ReplicaMismatchError"]


class DownlinkServer:
    """The server's bookkeeping for patches (see the module docstring). Checkpointable."""

    def __init__(self, history: int = 8) -> None:
        if isinstance(history, bool) or not isinstance(history, int) or history < 0:
            raise ConfigError(f"downlink history must be an int >= 0, got {history!r}")
        self.history = history
        self.version: int | None = None
        self.schema: sc.Schema | None = None
        self.current: dict[str, np.ndarray] = {}
        self.digest = 0
        # version v -> positions (int64, per tensor) that changed from v - 1 to v
        self.changes: OrderedDict[int, dict[str, np.ndarray]] = OrderedDict()
        self.known: dict[int, int] = {}         # client -> the version it holds
        self._patches: dict[int, sc.Frame] = {}  # base -> patch to self.version (this round)

    def publish(self, version: int, tensors: Mapping[str, np.ndarray]) -> None:
        """The model every client must hold after this round's download (decoded bytes)."""
        tensors = {n: np.ascontiguousarray(a) for n, a in tensors.items()}
        schema = sc.Schema.from_tensors(tensors)
        if self.version is not None and version <= self.version:
            raise ConfigError(f"versions must increase: {version} after {self.version}")
        if self.schema is not None and schema == self.schema and self.version == version - 1:
            delta = {n: changed_positions(self.current[n], a) for n, a in tensors.items()}
            self.changes[version] = delta
        else:            # a new layout or a gap: nothing older can be patched
            self.changes.clear()
        while len(self.changes) > self.history:
            self.changes.popitem(last=False)
        self.schema, self.version = schema, int(version)
        self.current = {n: a.copy() for n, a in tensors.items()}
        self.digest = model_digest(self.current, schema)
        self._patches.clear()

    def _reachable(self, base: int) -> bool:
        if self.version is None or base > self.version:
            return False
        return all(v in self.changes for v in range(base + 1, self.version + 1))

    def message_for(self, client: int, dense: Message, channel: Channel) -> Message:
        """What ``client`` downloads this round: a patch from its version, or ``dense``."""
        base = self.known.get(int(client))
        if base is None or not self._reachable(base) or self.schema is None:
            return dense
        frame = self._patches.get(base)
        if frame is None:
            steps = [self.changes[v] for v in range(base + 1, self.version + 1)]
            supports = {n: (np.unique(np.concatenate([s[n] for s in steps])) if steps
                            else np.empty(0, np.int64)) for n in self.current}
            frame = encode_patch(self.current, supports, self.schema, base=base, version=self.version,
                                 digest=self.digest, checksum=channel.checksum)
            self._patches[base] = frame
        if frame.nbits >= dense.nbits:
            return dense
        return channel.message(frame, round=dense.round, client=int(client), direction="down")

    def delivered(self, client: int, version: int | None) -> None:
        """Record the version ``client`` now holds (``None``: unknown, next time dense)."""
        if version is None:
            self.known.pop(int(client), None)
        else:
            self.known[int(client)] = int(version)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "version": self.version, "current": dict(self.current),
                "changes": [[v, dict(c)] for v, c in self.changes.items()],
                "known": {str(c): v for c, v in self.known.items()}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.version = None if state["version"] is None else int(state["version"])
        self.current = {str(n): np.array(a) for n, a in state["current"].items()}
        self.schema = sc.Schema.from_tensors(self.current) if self.current else None
        self.digest = model_digest(self.current, self.schema) if self.schema is not None else 0
        self.changes = OrderedDict((int(v), {str(n): np.asarray(i, np.int64) for n, i in c.items()})
                                   for v, c in state["changes"])
        self.known = {int(c): int(v) for c, v in state["known"].items()}
        self._patches.clear()


class Replica:
    """A client's copy of the global model and its version (lives in the client's state)."""

    def __init__(self, version: int | None = None, tensors: Mapping[str, np.ndarray] | None = None) -> None:
        self.version = version
        self.tensors = {n: np.array(a, copy=True, order="C") for n, a in (tensors or {}).items()}

    def receive(self, delivered: Mapping[str, np.ndarray] | Patch, version: int) -> dict[str, np.ndarray]:
        """Apply a download (decoded tensors or a patch); returns a copy of the new model.

        A patch that does not fit raises :class:`ReplicaMismatchError` and leaves the replica
        empty (version ``None``): the next download must be dense.
        """
        if isinstance(delivered, Patch):
            try:
                self.version = apply_patch(self.tensors, self.version, delivered, self._schema())
            except ReplicaMismatchError:
                self.version, self.tensors = None, {}
                raise
        else:
            self.tensors = {n: np.array(a, copy=True, order="C") for n, a in delivered.items()}
            self.version = int(version)
        return {n: a.copy() for n, a in self.tensors.items()}

    def _schema(self) -> sc.Schema | None:
        return sc.Schema.from_tensors(self.tensors) if self.tensors else None

    def state_dict(self) -> dict[str, Any]:
        return {"version": self.version, "tensors": dict(self.tensors)}

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any] | None) -> "Replica":
        if state is None:
            return cls()
        return cls(state["version"], state["tensors"])
