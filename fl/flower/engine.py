"""Any ``fl`` algorithm as a Flower ServerApp + ClientApp (Flower's Message API).

The server half is :class:`FlowerServer`, a :class:`fl.simulation.Simulation` whose clients
are Flower nodes: sampling, the broadcast, the uplink checks, ``server_update``, evaluation,
metrics, the ledger and the output files are the in-process engine's own code; only
"run the sampled clients" (:meth:`Simulation._run_clients`) goes over Flower. One round::

    server  S_t = sample();  down = algorithm.broadcast(...)   (one bundle, bytes)
            -> Message("train") to the node of every i in S_t:
               ConfigRecord "fl.down" {data: bytes, round, client: i, ack, ...}, where data is
               the bundle, or (sim.downlink = "patch") a patch from the version i holds
    client  global = decode_bundle(data), or the patch applied to the replica in its
            Context.state (a replica the patch does not fit replies "fl.resync" and is sent
            the bundle at once, as in-process)
            state  = decode_state(Context.state["fl.client.<run>"])   (residuals, optimizer ...)
            result = algorithm.client_update(state, global, data_i, cfg, link)
            -> reply ConfigRecord "fl.up" {data: uplink bundle bytes, round, client,
               sections, numel, num_samples, metrics}
    server  for i in S_t (in order): ledger += down (to i); ledger += up; decode the up bytes
            (with algorithm.uplink_side), check finite + algorithm.check_update, or drop i
            server_update(accepted updates)

Client ``i`` rebuilds its data and work model from the run config and seed exactly as the
in-process engine does (same partition, same seeded generators), so a Flower run gives the
in-process engine's model and ledger bit for bit. Its own state lives in Flower's per-node
``Context.state`` (bytes from :func:`fl.flower.state.encode_state`, never pickle): the
algorithm state, its minibatch generator and a *pending* state. As in the in-process engine,
a client's new state only counts once the server has accepted its update: the next train
message carries ``ack`` (the last round whose update the server accepted) and the client
commits or discards its pending state accordingly.

``<run>`` is a digest of the resolved config, so several runs can share the nodes
(:func:`make_server_app` and :func:`make_client_app` accept a list of configs). Nodes map to
clients by their ``partition-id`` node config (Flower's convention; the simulation engine sets
it), else by sorted node id. Deployment (SuperLink + SuperNodes): ``make_server_app()`` /
``make_client_app()`` without a config read the run config key ``fl-config`` (a resolved
config as JSON); :func:`fl.flower.deploy.write_flower_app` writes such an app for ``flwr run``.

Not supported under Flower: ``resume`` (client state lives in the nodes' contexts, which a
new run does not get back), so no ``checkpoint.ckpt`` is written.
"""

from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Callable, Mapping

from sparsecodec.errors import ConfigError

from ..algorithms.base import Update
from ..channel import Channel, Message
from ..config import RunConfig, build_config
from ..simulation import RunResult, Simulation
from .mod import MalformedReply, _clip, _int, _json, message_fields
from .client import (CLIENT_STATE, DOWN, ERROR, RESYNC, RUN_CONFIG_KEYS, UP, _config_from_context,
                     _config_json, _configs, _count, _digest, _run_config_value, make_client_app)

__all__ = ["FlowerServer", "make_server_app", "make_client_app", "run_flower", "parse_reply",
           "MalformedReply", "DOWN", "UP",
           "CLIENT_STATE", "RUN_CONFIG_KEYS"]

log = logging.getLogger(__name__)


# -- a reply, as hostile input -----------------------------------------------------------------
def parse_reply(records, max_numel: int) -> tuple[Message, int, dict[str, Any]]:
    """The uplink :class:`~fl.channel.Message`, ``num_samples`` and ``metrics`` of a train
    reply's ``fl.up`` record, every field type- and range-checked (a hostile node may send
    anything): raises :class:`MalformedReply` naming the field.

    >>> parse_reply({UP: {"direction": "up", "data": b"", "round": "1"}}, 10)
    Traceback (most recent call last):
    ...
    fl.flower.mod.MalformedReply: 'round' must be an int in [0, 9223372036854775807], got '1'
    """
    if UP not in records:
        raise MalformedReply(f"no {UP!r} record (got {_clip(repr(sorted(records)), 200)})")
    up = records[UP]
    direction = up["direction"] if "direction" in up else None
    if direction != "up":
        raise MalformedReply(f"'direction' must be 'up', got {_clip(repr(direction), 40)}")
    msg = message_fields(up, max_numel=max_numel)
    num_samples = _int(up, "num_samples")
    metrics = _json(up, "metrics")
    if not isinstance(metrics, dict) or not all(
            v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)) for v in metrics.values()):
        raise MalformedReply("metrics must be a JSON object of numbers (or null)")
    return msg, num_samples, metrics


def _records(reply):
    try:
        return None if reply is None or reply.has_error() else reply.content.config_records
    except Exception:          # a node's reply, not our code
        return None


def _is_resync(reply) -> bool:
    records = _records(reply)
    return records is not None and RESYNC in records


def _resync_reason(reply) -> str:
    try:
        return _clip(str(_records(reply)[RESYNC].get("reason")), 500)
    except Exception:
        return "(no reason given)"


def _has_update(reply) -> bool:
    records = _records(reply)
    return records is not None and UP in records


def _partition_id(reply) -> int | None:
    """A roll-call reply's ``partition-id`` (``None`` for an error or a malformed reply)."""
    try:
        if reply.has_error():
            return None
        pid = reply.content.config_records["fl.node"]["partition-id"]
    except Exception:          # a node's reply, not our code: that node is mapped by its id
        return None
    return pid if isinstance(pid, int) and not isinstance(pid, bool) else None


# -- server side -----------------------------------------------------------------------------
class FlowerServer(Simulation):
    """The in-process engine with its clients on Flower nodes reached through ``grid``.

    Every reply is hostile input: a missing, malformed or undecodable one (any exception,
    ``MemoryError`` included) drops that client for the round with the reason logged and kept
    in the metrics line's ``dropped``; the round goes on with the others. ``strict=True`` (for
    developers) re-raises exceptions that the reply checks (:func:`parse_reply`, FrameError,
    ValueError) did not foresee, to find bugs in our own code. A run in which no update was
    ever accepted raises ``RuntimeError`` instead of ending with the initial model.
    """

    def __init__(self, config: RunConfig, grid, *, data_dir=None, channel: Channel | None = None,
                 wait_s: float = 120.0, round_timeout: float | None = None,
                 poll_s: float = 0.1, strict: bool | None = None) -> None:
        super().__init__(config, data_dir=data_dir, channel=channel)
        self.poll_s = float(poll_s)
        # developers' switch: an exception the reply checks did not foresee is re-raised (a bug in
        # our code), instead of dropping that client; ``sim.strict`` if the config has it
        strict = getattr(config.sim, "strict", False) if strict is None else strict
        self.strict = strict.strip().lower() == "true" if isinstance(strict, str) else bool(strict)
        self.run_digest = _digest(_config_json(config))
        self.grid, self.wait_s, self.round_timeout = grid, float(wait_s), round_timeout
        self.nodes: dict[int, int] | None = None          # client id -> Flower node id
        self.accepted: dict[int, int] = {}                 # client id -> last accepted round

    def send_and_receive(self, messages: list, timeout: float | None) -> list:
        """``grid.push_messages`` then pull every ``poll_s`` until all replies are in (or
        ``timeout``): Flower's own ``send_and_receive`` sleeps 3 s between pulls on a
        deployment, which would add up to 3 s to every round."""
        ids = set(self.grid.push_messages(messages))
        deadline = None if timeout is None else time.monotonic() + timeout
        replies: list = []
        while ids:
            got = list(self.grid.pull_messages(ids))
            replies += got
            ids -= {r.metadata.reply_to_message_id for r in got}
            if not ids or (deadline is not None and time.monotonic() > deadline):
                break
            time.sleep(self.poll_s)
        return replies

    def connect(self) -> dict[int, int]:
        """Wait for enough nodes, ask their ``partition-id`` and map clients to nodes."""
        from flwr.app import Message as FMessage, RecordDict

        n = len(self.clients)
        deadline = time.monotonic() + self.wait_s
        while len(ids := sorted(self.grid.get_node_ids())) < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(ids)} Flower node(s) connected after {self.wait_s:.0f} s; "
                                   f"the run needs {n} (one per client)")
            time.sleep(0.2)
        msgs = [FMessage(RecordDict(), dst_node_id=i, message_type="query", group_id="0") for i in ids]
        pids = {}
        for r in self.send_and_receive(msgs, timeout=self.wait_s):
            pid = _partition_id(r)
            if pid is not None:
                pids[r.metadata.src_node_id] = pid
        by_pid = {p: node for node, p in pids.items() if 0 <= p < n}
        if len(by_pid) == n:
            self.nodes = dict(sorted(by_pid.items()))
        else:
            log.info("nodes have no distinct partition-ids 0..%d; mapping clients by sorted node id", n - 1)
            self.nodes = dict(enumerate(ids[:n]))
        return self.nodes

    def _run_clients(self, t, sampled, down, side):
        from flwr.app import ConfigRecord, Message as FMessage, RecordDict

        if self.nodes is None:
            self.connect()
        def train(cid: int, data: bytes):
            rec = {"run": self.run_digest, "data": data, "round": t + 1, "client": cid, "ack": self.accepted.get(cid, 0),
                   "checksum": self.channel.checksum, "max_numel": self.channel.max_numel}
            return FMessage(RecordDict({DOWN: ConfigRecord(rec)}), dst_node_id=self.nodes[cid],
                            message_type="train", group_id=str(t + 1))

        # each client's download: a patch from the version it holds where that is smaller
        downs = {cid: (self.downlink.message_for(cid, down, self.channel) if self.downlink is not None
                       else down) for cid in sampled}
        timeout = self.round_timeout or None
        replies = {r.metadata.src_node_id: r for r in
                   self.send_and_receive([train(cid, downs[cid].data) for cid in sampled], timeout)}
        # a node whose replica the patch did not fit asks again: it gets the dense model now
        resync = [cid for cid in sampled if downs[cid] is not down and _is_resync(replies.get(self.nodes[cid]))]
        for cid in resync:
            log.warning("round %d: client %d: %s; sending the dense model", t + 1, cid,
                        _resync_reason(replies[self.nodes[cid]]))
        if resync:
            again = {r.metadata.src_node_id: r for r in
                     self.send_and_receive([train(cid, down.data) for cid in resync], timeout)}
            replies.update({self.nodes[cid]: again.get(self.nodes[cid]) for cid in resync})
        updates, dropped = [], []
        layout = self._layout() if self.downlink is not None else None
        for cid in sampled:          # in order, as the in-process engine: same ledger rows
            _count(self.channel, downs[cid], cid, layout)
            if cid in resync:
                _count(self.channel, down, cid, layout)
            reply = replies.get(self.nodes[cid])
            if self.downlink is not None:    # what the node holds now, as far as we can know
                ok = reply is not None and _has_update(reply)
                self.downlink.delivered(cid, self.downlink.version if ok else None)
            update, reason = self._accept(t, cid, reply, side)
            if update is None:
                log.warning("round %d: client %d dropped: %s", t + 1, cid, reason)
                dropped.append({"client": cid, "reason": reason})
            else:
                self.accepted[cid] = t + 1
                updates.append(update)
        return updates, dropped

    def _accept(self, t: int, cid: int, reply, side) -> tuple[Update | None, str | None]:
        """One reply, as hostile input: any malformed field drops the client with its reason."""
        if reply is None:
            return None, "no reply from its Flower node (timeout or node lost)"
        try:
            if reply.has_error():
                return None, _clip(f"Flower error {reply.error.code}: {reply.error.reason}")
            records = reply.content.config_records
            if ERROR in records:
                # as the in-process engine words it (the client wrote it: clipped, if long)
                return None, _clip(str(records[ERROR].get("reason")), 4000)
            msg, num_samples, metrics = parse_reply(records, self.channel.max_numel)
        except MalformedReply as exc:
            return None, f"malformed reply: {exc}"
        except Exception as exc:   # what parse_reply did not foresee: still the client's bytes
            if self.strict:
                raise
            return None, _clip(f"malformed reply: {type(exc).__name__}: {exc}")
        expected = self.clients[cid].num_samples     # the server builds the same partition
        if num_samples != expected:
            return None, f"malformed reply: num_samples {num_samples}, client {cid} holds {expected}"
        return self._receive(t, cid, msg, side, num_samples, metrics)

    def _receive(self, t, cid, msg, side, num_samples, metrics):
        """:meth:`Simulation._receive` (decode, check), with every exception a dropped client:
        the bytes came from a node, not from our code (``strict`` re-raises the unforeseen)."""
        try:
            return super()._receive(t, cid, msg, side, num_samples, metrics)
        except Exception as exc:
            if self.strict:
                raise
            return None, _clip(f"update rejected by the server: {type(exc).__name__}: {exc}")

    def run(self, out_dir=None, **kwargs) -> RunResult:
        """:meth:`Simulation.run`; a run in which no client's update was ever accepted raises
        (a stale model must not look like a finished run)."""
        result = super().run(out_dir, **kwargs)
        if self.metrics and not any(m["updates"] for m in self.metrics):
            reasons = sorted({d["reason"] for m in self.metrics for d in m["dropped"]})
            raise RuntimeError(f"every client failed in every round ({len(self.metrics)} rounds); "
                               f"the model was never updated. Reasons: {'; '.join(reasons)[:2000]}")
        return result

    def save_checkpoint(self, path) -> None:     # client state lives on the nodes: nothing to resume
        return None

    def load_checkpoint(self, path) -> None:
        raise ConfigError("resume is not supported with the Flower engine (client state lives in "
                          "the Flower nodes' contexts)")

    def summary(self, wall_seconds: float | None = None) -> dict[str, Any]:
        import flwr

        out = super().summary(wall_seconds)
        out.update(engine="flower", flwr_version=flwr.__version__)
        return out


def make_server_app(config=None, *, out_dir=None, data_dir: str | None = None,
                    progress: bool = False,
                    on_result: Callable[[RunResult, FlowerServer], None] | None = None,
                    wait_s: float | None = None, round_timeout: float | None = None,
                    strict: bool | None = None):
    """A ``flwr.serverapp.ServerApp`` that runs ``config`` (a list: each in turn, on the same
    nodes; ``None``: the ``fl-*`` run config keys, see :data:`RUN_CONFIG_KEYS`) and writes the
    usual outputs into ``out_dir`` (a list for a list of configs).
    ``on_result(result, server)`` receives each :class:`~fl.simulation.RunResult`.
    ``strict`` (default: run config ``fl-strict``, else ``sim.strict``): see :class:`FlowerServer`."""
    from flwr.serverapp import ServerApp

    configs = _configs(config)
    app = ServerApp()

    @app.main()
    def main(grid, context) -> None:
        jsons = list(configs.values()) if configs is not None else [_config_from_context(context)]
        outs = out_dir if isinstance(out_dir, (list, tuple)) else [out_dir] * len(jsons)
        for cfg_json, out in zip(jsons, outs):
            cfg = build_config(json.loads(cfg_json))
            out = out if out is not None else _run_config_value(context, "fl-out")
            server = FlowerServer(
                cfg, grid, data_dir=data_dir or _run_config_value(context, "fl-data-dir"),
                wait_s=wait_s if wait_s is not None else float(_run_config_value(context, "fl-wait-s", 120)),
                round_timeout=(round_timeout if round_timeout is not None
                               else float(_run_config_value(context, "fl-round-timeout", 0)) or None),
                strict=strict if strict is not None else _run_config_value(context, "fl-strict"))
            server.connect()
            result = server.run(out, progress=progress)
            if on_result is not None:
                on_result(result, server)

    return app


def _num_clients(config: RunConfig, data_dir) -> int:
    if config.sim.clients:
        return config.sim.clients
    from ..data import load_dataset
    from ..partition import natural_writers

    return len(natural_writers(load_dataset(config.dataset, data_dir, **config.data).writer_train))


def run_flower(config: RunConfig | dict, out_dir: str | os.PathLike | None = None, *,
               resume: bool = False, stop_after: int | None = None, progress: bool = False,
               data_dir: str | os.PathLike | None = None,
               backend_config: Mapping[str, Any] | None = None,
               verbose: bool = False, strict: bool | None = None) -> RunResult:
    """:func:`fl.simulation.run_simulation` on Flower's simulation engine
    (``flwr.simulation.run_simulation``, Ray backend): one SuperNode per client.

    ``backend_config`` is Flower's (default: one CPU per ClientApp actor, no GPU).
    ``strict``: re-raise what the reply checks did not foresee (see :class:`FlowerServer`).
    """
    try:
        from flwr.simulation import run_simulation as flwr_run_simulation
    except ImportError as exc:
        raise ConfigError(f"the Flower engine needs Flower ({exc}): pip install 'sparsecodec[flower]'") from None
    if not isinstance(config, RunConfig):
        config = build_config(config)
    if resume:
        raise ConfigError("--resume is not supported with --engine flower (client state lives in "
                          "the Flower nodes' contexts)")
    if stop_after is not None:
        config = config.replace(rounds=min(config.rounds, int(stop_after)))
    data_dir = None if data_dir is None else str(data_dir)
    results: list[RunResult] = []
    backend = dict(backend_config or {"client_resources": {"num_cpus": 1, "num_gpus": 0.0}})
    flwr_log = logging.getLogger("flwr")
    propagate = flwr_log.propagate
    flwr_log.propagate = verbose        # Flower prints through its own handler
    try:
        flwr_run_simulation(
            server_app=make_server_app(config, out_dir=out_dir, data_dir=data_dir, progress=progress,
                                       on_result=lambda r, s: results.append(r), strict=strict),
            client_app=make_client_app(config, data_dir=data_dir),
            num_supernodes=_num_clients(config, data_dir), backend_config=backend,
            verbose_logging=verbose)
    finally:
        flwr_log.propagate = propagate
    if not results:
        raise RuntimeError("the Flower ServerApp ended without a result (see Flower's log above)")
    return results[0]


def __getattr__(name: str):
    """``server_app`` / ``client_app``: the deployment apps (``fl-*`` run config keys)."""
    if name == "server_app":
        return make_server_app()
    if name == "client_app":
        return make_client_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
