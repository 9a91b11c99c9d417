"""The client half of :mod:`fl.flower.engine` (imports torch only when a client trains, so a
ClientApp process answering the server's roll call starts fast)."""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from typing import Any, Mapping

import numpy as np

import sparsecodec as sc
from sparsecodec.errors import ConfigError

from ..channel import Channel, LedgerRecord, Message
from .state import DEFAULT_ALLOWED_MODULES, decode_state, encode_state

__all__ = ["make_client_app", "client_train", "client_query", "up_fields", "DOWN", "UP", "ERROR", "CLIENT_STATE",
           "RUN_CONFIG_KEYS"]

log = logging.getLogger(__name__)

DOWN, UP, ERROR, CLIENT_STATE = "fl.down", "fl.up", "fl.error", "fl.client"
#: a train reply saying "my model replica does not fit the patch: send the dense model"
RESYNC = "fl.resync"
#: run-config keys the deployment apps read (``flwr run --run-config 'fl-out="/abs/dir"'``)
RUN_CONFIG_KEYS = {"fl-config": "resolved run config as JSON (required)",
                   "fl-out": "absolute output directory on the ServerApp's machine ('' = none)",
                   "fl-data-dir": "dataset directory on the nodes ('' = $FL_DATA_DIR)",
                   "fl-wait-s": "seconds the server waits for enough SuperNodes (default 120)",
                   "fl-round-timeout": "seconds to wait for a round's replies (0 = no limit)",
                   "fl-strict": "true: re-raise an unforeseen exception on a reply instead of "
                                "dropping its client (for developers; default false)"}


def _config_json(config) -> str:
    from ..config import RunConfig, build_config

    if not isinstance(config, RunConfig):
        config = build_config(config)
    return json.dumps(config.to_dict(), sort_keys=True)


def _digest(config_json: str) -> str:
    """Names a run on the wire and in ``Context.state`` (several runs may share the nodes)."""
    return hashlib.sha256(config_json.encode()).hexdigest()[:16]


def _configs(config) -> dict[str, str] | None:
    """``{digest: config JSON}`` for one config or a list of them (``None``: from the run config)."""
    if config is None:
        return None
    many = config if isinstance(config, (list, tuple)) else [config]
    return {_digest(j): j for j in map(_config_json, many)}


def _run_config_value(context, key: str, default: Any = None) -> Any:
    value = dict(context.run_config).get(key, default)
    return default if value == "" else value


def _config_from_context(context) -> str:
    raw = _run_config_value(context, "fl-config")
    if raw is None:
        raise ConfigError("the Flower run config has no 'fl-config' (a resolved fl config as JSON); "
                          "write the app with fl.flower.write_flower_app or pass --run-config")
    return _config_json(json.loads(raw))


def _count(channel: Channel, message: Message, client: int, schema: sc.Schema | None = None) -> None:
    """Record one delivery of ``message`` to ``client``, its rows read off the bytes as the
    in-process engine does (the server parses what it sends; the client decodes it again)."""
    channel.deliver(message, client, schema=schema)


def _download(sim, saved: dict, data: bytes, rnd: int, max_numel: int) -> dict[str, np.ndarray]:
    """The node's half of :meth:`fl.simulation.Simulation._download`: apply a patch to the
    replica kept in ``Context.state`` (version 0: the model this node built from the seed),
    or take the dense model. A replica the patch does not fit raises ReplicaMismatchError."""
    from sparsecodec.patch import PATCH_WIRE_ID, decode_patch

    from ..downlink import Replica

    if sim.downlink is None:
        return sc.decode_bundle(data, max_numel=max_numel)
    if "replica" in saved:
        replica = Replica(saved.get("replica_version"), decode_state(saved["replica"], max_numel=max_numel))
    else:
        replica = Replica(0, sim.initial_model())
    saved.pop("replica", None)
    saved.pop("replica_version", None)       # kept below only once the download fits
    if len(data) > 4 and data[4] == PATCH_WIRE_ID:
        params = replica.receive(decode_patch(data, sim._layout(), max_numel=max_numel), rnd)
    else:
        params = replica.receive(sc.decode_bundle(data, max_numel=max_numel), rnd)
    saved["replica"], saved["replica_version"] = encode_state(replica.tensors), int(replica.version)
    return params


# -- client side -----------------------------------------------------------------------------
class _ClientEnv:
    """Everything a node rebuilds from the config: data, work model, initial generators."""

    def __init__(self, config_json: str, data_dir: str | None) -> None:
        from ..config import build_config
        from ..simulation import Simulation

        self.sim = Simulation(build_config(json.loads(config_json)), data_dir=data_dir)
        self.initial_generators = [c.generator.get_state().numpy().tobytes() for c in self.sim.clients]


@functools.lru_cache(maxsize=4)
def _client_env(config_json: str, data_dir: str | None) -> _ClientEnv:
    return _ClientEnv(config_json, data_dir)


def _set_generator(gen, state: bytes) -> None:
    import torch

    gen.set_state(torch.from_numpy(np.frombuffer(state, np.uint8).copy()))


def _reply(msg, records: Mapping[str, Any]):
    from flwr.app import ConfigRecord, Message as FMessage, RecordDict

    return FMessage(RecordDict({k: ConfigRecord(dict(v)) for k, v in records.items()}), reply_to=msg)


def up_fields(result) -> dict[str, Any]:
    """The ``fl.up`` record of a train reply: a :class:`~fl.algorithms.base.ClientResult`'s
    uplink message (bytes and bit breakdown), ``num_samples`` and ``metrics`` (JSON)."""
    m = result.message
    return {"data": m.data, "round": m.round, "client": m.client, "direction": m.direction,
            "numel": m.numel, "sections": json.dumps(dict(m.sections)),
            "tensor_sections": json.dumps({t: dict(s) for t, s in m.tensor_sections.items()}),
            "num_samples": int(result.num_samples), "metrics": json.dumps(dict(result.metrics))}


def client_train(msg, context, configs: Mapping[str, str] | None = None, data_dir: str | None = None):
    """The ClientApp's train handler: one ``client_update`` from the bytes of ``fl.down``.

    ``configs``: ``{digest: config JSON}`` this app runs (``None``: the run config's)."""
    from flwr.app import ConfigRecord

    down = msg.content.config_records[DOWN]
    run = str(down["run"])
    configs = configs if configs is not None else _configs(json.loads(_config_from_context(context)))
    if run not in configs:
        raise ConfigError(f"the server runs config {run}, this ClientApp knows {sorted(configs)}")
    config_json = configs[run]
    data_dir = data_dir or dict(context.node_config).get("data-dir") or _run_config_value(context, "fl-data-dir")
    cid, rnd, ack = int(down["client"]), int(down["round"]), int(down["ack"])
    env = _client_env(config_json, data_dir)
    sim = env.sim
    if not 0 <= cid < len(sim.clients):
        raise ConfigError(f"client id {cid} out of range (0..{len(sim.clients) - 1})")
    state_key = f"{CLIENT_STATE}.{run}"
    saved = context.state.config_records.get(state_key)
    saved = dict(saved) if saved is not None else {"client": cid}
    if int(saved["client"]) != cid:
        raise ConfigError(f"this node holds client {saved['client']}'s state, the server sent client {cid}")
    allowed = DEFAULT_ALLOWED_MODULES + (type(sim.algorithm).__module__,)
    if "pending" in saved:                       # commit only what the server accepted
        if int(saved.pop("pending_round")) == ack:
            saved["state"] = saved["pending"]
        del saved["pending"]
    state = (decode_state(saved["state"], allowed_modules=allowed) if "state" in saved
             else sim.algorithm.init_client(cid, sim.cfg))
    data = sim.clients[cid]
    _set_generator(data.generator, saved.get("generator", env.initial_generators[cid]))
    channel = Channel(checksum=bool(down["checksum"]), max_numel=int(down["max_numel"]))
    records: dict[str, dict[str, Any]]
    from sparsecodec.patch import ReplicaMismatchError

    try:
        global_params = _download(sim, saved, bytes(down["data"]), rnd, channel.max_numel)
    except ReplicaMismatchError as exc:
        context.state[state_key] = ConfigRecord(saved)
        return _reply(msg, {RESYNC: {"reason": str(exc)}})
    except Exception as exc:    # a download that does not decode: this round is lost for us
        context.state[state_key] = ConfigRecord(saved)
        return _reply(msg, {ERROR: {"reason": f"download rejected: {type(exc).__name__}: {exc}"}})
    try:
        link = channel.link(round=rnd, client=cid, direction="up", spec=sim.uplink_spec(global_params))
        from ..algorithms.base import ClientResult

        result = sim.algorithm.client_update(state, global_params, data, sim.cfg, link)
        if not isinstance(result, ClientResult) or not isinstance(result.message, Message):
            raise TypeError(f"client_update returned {type(result).__name__}, not a ClientResult with a Message")
        records = {UP: up_fields(result)}
        saved["pending"], saved["pending_round"] = encode_state(result.state), rnd
    except Exception as exc:   # any client failure drops that client, never the run
        records = {ERROR: {"reason": f"client_update raised {type(exc).__name__}: {exc}"}}
    saved["generator"] = data.generator.get_state().numpy().tobytes()
    context.state[state_key] = ConfigRecord(saved)
    return _reply(msg, records)


def client_query(msg, context):
    """Answers the server's roll call with this node's ``partition-id`` (-1 if none)."""
    pid = dict(context.node_config).get("partition-id", -1)
    return _reply(msg, {"fl.node": {"partition-id": int(pid)}})


def make_client_app(config=None, *, data_dir: str | None = None):
    """A ``flwr.clientapp.ClientApp`` running ``config``'s algorithm, or a list of configs
    (the server runs them one after the other on the same nodes); ``None``: read the
    ``fl-config`` run config key, as in a deployment."""
    from flwr.clientapp import ClientApp

    configs = _configs(config)
    app = ClientApp()

    @app.train()
    def train(msg, context):
        return client_train(msg, context, configs, data_dir)

    @app.query()
    def query(msg, context):
        return client_query(msg, context)

    return app


