"""The in-process round loop: sampling, client and server halves, evaluation, checkpoints.

One round (``t`` counts from 0; metrics and the ledger say ``round = t + 1``)::

    S_t = m of n clients, sorted          (np.random.Generator, seeded, checkpointed)
    msg = algorithm.broadcast(server)     (encoded by the channel, once)
    for i in S_t:
        w = channel.deliver(msg, i)       (downlink bits counted per receiving client)
        result = algorithm.client_update(copy of state_i, w, data_i, cfg, uplink link)
        update = channel.deliver(result.message, side=algorithm.uplink_side(server))
                                          (uplink bits counted; decoded from bytes)
        a client that raises, sends a corrupt frame, or whose decoded update is not finite or
        fails algorithm.check_update (names, shapes) is dropped from the round (logged with its
        reason) and keeps its previous state
    server = algorithm.server_update(server, surviving updates, cfg)
    evaluate (algorithm.evaluate) every sim.eval_every rounds and after the last; checkpoint every
    sim.checkpoint_every; summary.json gains algorithm.summarize(metrics)

Reproducibility: every random stream is explicit. ``SeedSequence(seed)`` spawns the partition
generator, the client-sampling generator, the model-init ``torch.Generator`` and one
``torch.Generator`` per client for its minibatch order; ``torch.set_num_threads`` is fixed by
the config. ``sim.device`` (``--device``) puts the model and the clients' and test tensors on
that torch device; the generators stay on the CPU and the codecs get CPU numpy copies, so a
``cpu`` run is the run it always was (a GPU run is not bit-identical to it: other kernels). A checkpoint holds the server and client states, the sampling generator's
``bit_generator.state``, every client generator's ``get_state()``, the ledger and the metrics,
so ``resume`` continues to a bit-identical model, metrics and ledger. Checkpoints are data, not
code (:mod:`fl.checkpoint`: no pickle, a SHA-256 digest); they also hold the patch downlink's
bookkeeping and every client's model replica (:mod:`fl.downlink`). The run driver (``run()``,
its output files, progress bar and ``summary()``) is :mod:`fl.runner`'s.

    >>> from fl.config import resolve_config
    >>> cfg = resolve_config(algorithm="fedavg", sets=["rounds=1", "sim.clients=2",
    ...     "sim.clients_per_round=0", "data.scale='unit'", "model='logistic-regression'"])
    >>> result = run_simulation(cfg)
    >>> result.metrics[-1]["round"], result.ledger.total_bits(direction="up") > 0
    (1, True)
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
from typing import Any

import numpy as np
import torch

import sparsecodec as sc
from sparsecodec.errors import ConfigError, FrameError

from . import partition as part
from .algorithms import get_algorithm
from .algorithms.base import (Algorithm, ClientData, ClientResult, Update, check_finite_tensors,
                              model_tensors, run_device)
from .channel import SERVER, Channel, Ledger, Message
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig, build_config
from .data import Dataset, load_dataset
from .downlink import DownlinkServer, Replica, ReplicaMismatchError
from .models import build_model, count_parameters
from .runner import (CHECKPOINT, LEDGER, METRICS, MODEL, SUMMARY,  # re-exported (__all__)
                     RunDriver, RunResult, load_model_bytes)
from .runner import _bound, _fmt, _median_bits, _progress  # noqa: F401 - were importable from here

__all__ = ["Simulation", "RunResult", "run_simulation", "CHECKPOINT", "METRICS", "SUMMARY",
           "LEDGER", "MODEL", "load_model_bytes"]

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
# settings that may change between a checkpoint and its resume without changing the result
_RESUMABLE_CHANGES = {("rounds",), ("sim", "checkpoint_every")}


def _seed_of(ss: np.random.SeedSequence) -> int:
    return int(ss.generate_state(1, np.uint64)[0])


def _partition(config: RunConfig, ds: Dataset, rng: np.random.Generator) -> list[np.ndarray]:
    p, n = config.partition, config.sim.clients
    kind = p["kind"]
    if kind == "iid":
        return part.iid(len(ds.y_train), n, rng)
    if kind == "contiguous":
        return part.contiguous_shards(len(ds.y_train), n, p["shard_size"] or None)
    if kind == "dirichlet":
        return part.dirichlet_equal_size(ds.y_train, n, p["alpha"], rng)
    if kind == "classes":
        return part.classes_per_client(ds.y_train, n, p["c"], rng)
    if ds.writer_train is None:
        raise ConfigError(f"partition 'writers' needs a dataset with writers; {ds.name!r} has none")
    writers = part.natural_writers(ds.writer_train)
    if n > len(writers):
        raise ConfigError(f"sim.clients={n} but {ds.name!r} has only {len(writers)} writers")
    return writers[:n] if n else writers


class Simulation(RunDriver):
    """One configured run, steppable round by round (``run()`` does the whole loop: it, the
    output files and ``summary()`` come from :class:`fl.runner.RunDriver`).

    ``algorithm`` overrides the registry's object (tests inject failing clients this way);
    ``channel`` overrides the default :class:`~fl.channel.Channel` (e.g. with a ``tap``).
    """

    def __init__(self, config: RunConfig, *, data_dir: str | os.PathLike | None = None,
                 algorithm: Algorithm | None = None, channel: Channel | None = None,
                 dataset: Dataset | None = None) -> None:
        self.config = config
        self.algorithm = algorithm if algorithm is not None else get_algorithm(config.algorithm)
        self.cfg = config.algo
        torch.set_num_threads(config.sim.threads)
        self.device = run_device(config.sim.device, self.algorithm)
        self.dataset = dataset if dataset is not None else load_dataset(config.dataset, data_dir, **config.data)
        streams = np.random.SeedSequence(config.seed).spawn(4)
        parts = _partition(config, self.dataset, np.random.default_rng(streams[0]))
        self.sample_rng = np.random.default_rng(streams[1])
        options = {k: v for k, v in config.model_options.items() if k != "init"}
        init = config.model_options.get("init")
        self._model_seed, self._model_options = _seed_of(streams[2]), options
        # initialised on the CPU from the CPU generator, then moved: the same weights everywhere
        self.model = build_model(config.model, generator=torch.Generator().manual_seed(self._model_seed),
                                 init=init, device=self.device, **options)
        self.num_params = count_parameters(self.model)
        task = self.dataset.task
        x, y = self.dataset.x_train, self.dataset.y_train

        def on_device(a: np.ndarray) -> torch.Tensor:     # on the CPU: the array itself, no copy
            return torch.from_numpy(np.ascontiguousarray(a)).to(self.device)

        self.clients = [
            ClientData(i, on_device(x[idx]), on_device(y[idx]),
                       self.model, torch.Generator().manual_seed(_seed_of(s)), task)
            for i, (idx, s) in enumerate(zip(parts, streams[3].spawn(len(parts))))]
        self.x_test, self.y_test = on_device(self.dataset.x_test), on_device(self.dataset.y_test)
        self.channel = channel if channel is not None else Channel()
        self.server = self.algorithm.init_server(model_tensors(self.model), self.cfg, len(self.clients))
        self.client_states = {c.client_id: self.algorithm.init_client(c.client_id, self.cfg)
                              for c in self.clients}
        self.metrics: list[dict[str, Any]] = []
        self.rounds_done = 0
        sim = config.sim
        # the server's patch bookkeeping and each client's model replica (client-side state)
        self.downlink = DownlinkServer(sim.downlink_history) if sim.downlink == "patch" else None
        self.replicas: dict[int, Replica] = {}
        if self.downlink is not None:
            _check_replica_memory(self.num_params, len(self.clients))
            # version 0: the initial global model, which each client builds from the seed too
            self.downlink.publish(0, self.initial_model())
            self.downlink.known = {c.client_id: 0 for c in self.clients}
        self._round_spec: sc.MessageSpec | None = None   # the server's spec for this round's uplink
        self.strict = bool(sim.strict)

    @property
    def ledger(self) -> Ledger:
        return self.channel.ledger

    @property
    def params(self) -> dict[str, np.ndarray]:
        return self.server.params

    # -- one round ---------------------------------------------------------------------------
    def sample(self) -> list[int]:
        n, m = len(self.clients), self.config.sim.clients_per_round
        if m == 0 or m >= n:
            return list(range(n))
        return sorted(int(i) for i in self.sample_rng.choice(n, size=m, replace=False))

    def _client_round(self, t: int, cid: int, down: Message,
                      side=None) -> tuple[Update | None, str | None]:
        """Run one client; returns (decoded update, None) or (None, reason it was dropped).

        ``side`` is the server's side information for decoding the uplink
        (:meth:`Algorithm.uplink_side`)."""
        global_params = self._download(cid, down)
        state = copy.deepcopy(self.client_states[cid])   # the old state survives a failure
        try:
            # the client derives the uplink's spec from the model it holds, as the server does
            link = self.channel.link(round=t + 1, client=cid, direction="up",
                                     spec=self.uplink_spec(global_params))
            result = self.algorithm.client_update(state, global_params, self.clients[cid], self.cfg, link)
        except Exception as exc:   # any client failure drops that client, never the run
            self._forget_version(cid)
            return None, f"client_update raised {type(exc).__name__}: {exc}"
        if not isinstance(result, ClientResult) or not isinstance(result.message, Message):
            self._forget_version(cid)
            return None, f"client_update returned {type(result).__name__}, not a ClientResult with a Message"
        update, reason = self._receive(t, cid, result.message, side, int(result.num_samples),
                                       dict(result.metrics))
        if update is not None:
            self.client_states[cid] = result.state
        return update, reason

    def uplink_spec(self, global_params) -> sc.MessageSpec | None:
        """This round's uplink :class:`~sparsecodec.MessageSpec` (``sim.wire = "compact"``),
        derived from the global model by both ends; None: self-describing bundles."""
        if self.config.sim.wire != "compact":
            return None
        spec = self.algorithm.uplink_spec(global_params, self.cfg)
        values_scope = self.config.sim.values_scope
        if spec is not None and values_scope != spec.values_scope:
            # the one place both engines (in-process and Flower, client and server) get the spec
            spec = dataclasses.replace(spec, values_scope=values_scope)
        return spec

    def initial_model(self) -> dict[str, np.ndarray]:
        """Version 0 of the global model: what ``init_server`` makes of the seeded model (every
        party can build it; :mod:`fl.downlink` checks it by digest, never trusts it)."""
        if getattr(self, "_initial", None) is None:
            model = build_model(self.config.model, generator=torch.Generator().manual_seed(self._model_seed),
                                init=self.config.model_options.get("init"), **self._model_options)
            state = self.algorithm.init_server(model_tensors(model), self.cfg, len(self.clients))
            self._initial = {n: np.array(a) for n, a in state.params.items()}
        return self._initial

    def _forget_version(self, cid: int) -> None:
        """A client that sent no update: the server cannot know which version it holds (on
        Flower it learns it from the reply), so its next download is dense, in both engines."""
        if self.downlink is not None:
            self.downlink.delivered(cid, None)

    def _layout(self) -> sc.Schema:
        if getattr(self, "_schema", None) is None:
            self._schema = sc.Schema.from_tensors(self.initial_model())
        return self._schema

    def _download(self, cid: int, down: Message) -> dict[str, np.ndarray]:
        """Client ``cid``'s download this round: a patch to its replica where that is smaller,
        else the dense message; a replica the patch does not fit gets the dense one at once."""
        if self.downlink is None:
            return self.channel.deliver(down, cid)
        replica = self.replicas.get(cid)
        if replica is None:     # the client's first download: it holds the model it built
            replica = self.replicas[cid] = Replica(0, self.initial_model())
        msg = self.downlink.message_for(cid, down, self.channel)
        try:
            # the client reads a patch against its own model layout (it built the model)
            got = self.channel.deliver(msg, cid, schema=self._layout())
            params = replica.receive(got, msg.round)
        except ReplicaMismatchError as exc:
            log.warning("round %d: client %d: %s; sending the dense model", down.round, cid, exc)
            params = replica.receive(self.channel.deliver(down, cid), down.round)
        self.downlink.delivered(cid, replica.version)
        return params

    def _receive(self, t: int, cid: int, msg: Message, side, num_samples: int,
                 metrics: dict[str, Any]) -> tuple[Update | None, str | None]:
        """The server's half of one uplink: check who sent it, count its bits, decode it from
        the bytes and validate it (finite, :meth:`Algorithm.check_update`). Shared with
        :mod:`fl.flower`, whose uplink arrives over Flower."""
        if (msg.direction, msg.client, msg.round) != ("up", cid, t + 1):
            return None, (f"message is {msg.direction} from client {msg.client} in round {msg.round}, "
                          f"expected up from client {cid} in round {t + 1}")
        try:
            tensors = self.channel.deliver(msg, side=side, spec=self._round_spec)
            check_finite_tensors(tensors, "decoded update")
            self.algorithm.check_update(self.server, tensors, self.cfg)
        except (FrameError, ValueError) as exc:
            return None, f"update rejected by the server: {type(exc).__name__}: {exc}"
        except Exception as exc:   # noqa: BLE001 - a client's bytes: whatever they raise, drop it
            if self.strict:   # developers: an unforeseen error may be our own bug
                raise
            return None, f"update rejected by the server (unforeseen): {type(exc).__name__}: {exc}"
        return Update(cid, tensors, num_samples, metrics), None

    def step(self) -> dict[str, Any]:
        """Run the next round; returns its metrics line (also appended to ``self.metrics``)."""
        t = self.rounds_done
        sampled = self.sample()
        down = self.algorithm.broadcast(self.server, self.cfg,
                                        self.channel.link(round=t + 1, client=SERVER, direction="down"))
        side = self.algorithm.uplink_side(self.server, self.cfg)
        if self.downlink is not None or self.config.sim.wire == "compact":
            model = self.channel.decode(down)      # what every client holds after its download
            if self.downlink is not None:
                self.downlink.publish(t + 1, model)
            self._round_spec = self.uplink_spec(model)
        updates, dropped = self._run_clients(t, sampled, down, side)
        server_metrics: dict[str, Any] = {}
        if updates:
            result = self.algorithm.server_update(self.server, updates, self.cfg)
            self.server, server_metrics = result.state, dict(result.metrics)
        else:
            log.warning("round %d: every sampled client was dropped; the model is unchanged", t + 1)
        self.rounds_done = t + 1
        line = self._metrics_line(sampled, updates, dropped, server_metrics)
        self.metrics.append(line)
        return line

    def _run_clients(self, t: int, sampled: list[int], down: Message,
                     side) -> tuple[list[Update], list[dict[str, Any]]]:
        """Run the sampled clients in order: (accepted updates, dropped clients with reasons).
        The hook another engine replaces (:mod:`fl.flower` sends the round over Flower)."""
        updates, dropped = [], []
        for cid in sampled:
            update, reason = self._client_round(t, cid, down, side)
            if update is None:
                log.warning("round %d: client %d dropped: %s", t + 1, cid, reason)
                dropped.append({"client": cid, "reason": reason})
            else:
                updates.append(update)
        return updates, dropped

    def _metrics_line(self, sampled, updates, dropped, server_metrics) -> dict[str, Any]:
        r = self.rounds_done
        losses = [u.metrics["train_loss"] for u in updates if "train_loss" in u.metrics]
        prev = self.metrics[-1] if self.metrics else {"cum_uplink_bits": 0, "cum_downlink_bits": 0}
        up, down = self.ledger.total_bits(round=r, direction="up"), self.ledger.total_bits(round=r, direction="down")
        line: dict[str, Any] = {
            "round": r, "clients": sampled, "updates": len(updates), "dropped": dropped,
            "train_loss": float(np.mean(losses)) if losses else None,
            "uplink_bits": up, "downlink_bits": down,
            "cum_uplink_bits": prev["cum_uplink_bits"] + up,
            "cum_downlink_bits": prev["cum_downlink_bits"] + down,
            "accuracy": None, "test_loss": None}
        if r % self.config.sim.eval_every == 0 or r == self.config.rounds:
            line.update(self.evaluate())
        line.update({f"server_{k}": v for k, v in server_metrics.items()})
        return line

    def evaluate(self) -> dict[str, float]:
        return self.algorithm.evaluate(self.server, self.cfg, self.model, self.x_test, self.y_test,
                                       self.dataset.task, self.config.sim.eval_batch_size)

    # -- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                "rounds_done": self.rounds_done, "server": self.server,
                "client_states": self.client_states,
                "sample_rng": self.sample_rng.bit_generator.state,
                "client_generators": [c.generator.get_state().numpy().tobytes() for c in self.clients],
                "ledger": self.ledger.state_dict(), "metrics": self.metrics,
                "downlink": None if self.downlink is None else self.downlink.state_dict(),
                "replicas": {str(c): r.state_dict() for c, r in self.replicas.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ConfigError(f"checkpoint format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        saved = copy.deepcopy(state["config"])
        if isinstance(saved.get("sim"), dict):      # written before sim.device: on the cpu
            saved["sim"].setdefault("device", "cpu")
        _check_resumable(saved, self.config.to_dict())
        if len(state["client_generators"]) != len(self.clients):
            raise ConfigError("checkpoint has a different number of clients")
        self.rounds_done = int(state["rounds_done"])
        self.server, self.client_states = state["server"], state["client_states"]
        self.sample_rng.bit_generator.state = state["sample_rng"]
        for c, g in zip(self.clients, state["client_generators"]):
            c.generator.set_state(torch.from_numpy(np.frombuffer(g, np.uint8).copy()))
        self.ledger.load_state_dict(state["ledger"])
        self.metrics = list(state["metrics"])
        if self.downlink is not None and state.get("downlink") is not None:
            self.downlink.load_state_dict(state["downlink"])
        self.replicas = {int(c): Replica.from_state_dict(r) for c, r in (state.get("replicas") or {}).items()}

    def save_checkpoint(self, path: str | os.PathLike) -> None:
        """Write atomically, without pickle and with a SHA-256 digest (:mod:`fl.checkpoint`)."""
        save_checkpoint(path, self.state_dict(), classes=self._state_classes())

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Load a checkpoint: a corrupt or foreign file is a CheckpointError naming it."""
        self.load_state_dict(load_checkpoint(path, classes=self._state_classes()))

    def _state_classes(self) -> tuple[type, ...]:
        """Classes a checkpoint of this run may hold beyond fl.flower.state's registry: the
        algorithm's own state types (an injected test algorithm may define more)."""
        return ()


#: in-process patch downlinks keep one model replica per client (client-side state)
REPLICA_MEMORY_LIMIT = 8 << 30


def _check_replica_memory(num_params: int, clients: int) -> None:
    need = 4 * num_params * clients
    if need > REPLICA_MEMORY_LIMIT:
        raise ConfigError(f"sim.downlink='patch' keeps a model replica per client in this process: "
                          f"{clients} clients x {num_params} parameters = {need / 2**30:.1f} GiB; "
                          "use sim.downlink='dense' (or fewer clients) for this run")


def _check_resumable(saved: dict[str, Any], current: dict[str, Any]) -> None:
    diffs = []

    def walk(a, b, path=()):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), path + (k,))
        elif a != b and path not in _RESUMABLE_CHANGES:
            diffs.append(f"{'.'.join(path)}: checkpoint {a!r} vs now {b!r}")

    walk(saved, current)
    if diffs:
        raise ConfigError("cannot resume: the config differs from the checkpoint's in " + "; ".join(diffs))


def run_simulation(config: RunConfig | dict, out_dir: str | os.PathLike | None = None, *,
                   resume: bool = False, stop_after: int | None = None, progress: bool = False,
                   data_dir: str | os.PathLike | None = None, algorithm: Algorithm | None = None,
                   channel: Channel | None = None) -> RunResult:
    """Build a :class:`Simulation` from ``config`` (a RunConfig or a resolved dict) and run it."""
    if not isinstance(config, RunConfig):
        config = build_config(config)
    sim = Simulation(config, data_dir=data_dir, algorithm=algorithm, channel=channel)
    return sim.run(out_dir, resume=resume, stop_after=stop_after, progress=progress)
