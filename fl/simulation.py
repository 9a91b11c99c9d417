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
bookkeeping and every client's model replica (:mod:`fl.downlink`).

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
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

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

__all__ = ["Simulation", "RunResult", "run_simulation", "CHECKPOINT", "METRICS", "SUMMARY",
           "LEDGER", "MODEL", "load_model_bytes"]

log = logging.getLogger(__name__)

CHECKPOINT, METRICS, SUMMARY, LEDGER, MODEL = (
    "checkpoint.ckpt", "metrics.jsonl", "summary.json", "ledger.jsonl", "model.sc")
CHECKPOINT_FORMAT = 1
# settings that may change between a checkpoint and its resume without changing the result
_RESUMABLE_CHANGES = {("rounds",), ("sim", "checkpoint_every")}


@dataclass
class RunResult:
    params: dict[str, np.ndarray]
    metrics: list[dict[str, Any]]
    ledger: Ledger
    summary: dict[str, Any]
    out_dir: Path | None = None


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


def load_model_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Decode a saved ``model.sc`` (a Dense bundle) into ``{name: array}``."""
    return sc.decode_bundle(data)


class Simulation:
    """One configured run, steppable round by round (``run()`` does the whole loop).

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

    # -- the loop ----------------------------------------------------------------------------
    def run(self, out_dir: str | os.PathLike | None = None, *, resume: bool = False,
            stop_after: int | None = None, progress: bool = False,
            on_round: Callable[[dict], None] | None = None) -> RunResult:
        """Run to ``config.rounds`` (or stop after round ``stop_after``, as an interruption).

        With ``out_dir``: ``metrics.jsonl`` grows by one line per round, ``checkpoint.ckpt``
        every ``sim.checkpoint_every`` rounds and at the end; at the end ``summary.json``,
        ``ledger.jsonl`` and ``model.sc`` (the global model as a lossless Dense bundle).
        ``resume=True`` continues from ``out_dir/checkpoint.ckpt``.
        """
        out = Path(out_dir) if out_dir is not None else None
        if resume:
            if out is None or not (out / CHECKPOINT).is_file():
                raise ConfigError(f"--resume needs {CHECKPOINT} in the output directory {out}")
            self.load_checkpoint(out / CHECKPOINT)
            log.info("resumed %s after round %d", out, self.rounds_done)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / METRICS).write_text("".join(json.dumps(m) + "\n" for m in self.metrics))
        start = time.perf_counter()
        last = self.config.rounds if stop_after is None else min(stop_after, self.config.rounds)
        bar = _progress(progress, self.config.rounds, self.rounds_done, self.config.algorithm)
        every = self.config.sim.checkpoint_every
        try:
            while self.rounds_done < last:
                line = self.step()
                if out is not None:
                    with open(out / METRICS, "a") as f:
                        f.write(json.dumps(line) + "\n")
                    if (every and self.rounds_done % every == 0) or self.rounds_done == last:
                        self.save_checkpoint(out / CHECKPOINT)
                if bar is not None:
                    bar.set_postfix(acc=_fmt(self.last_accuracy()),
                                    up_bits=f"{line['cum_uplink_bits']:.3g}",
                                    down_bits=f"{line['cum_downlink_bits']:.3g}", refresh=False)
                    bar.update(1)
                if on_round is not None:
                    on_round(line)
        finally:
            if bar is not None:
                bar.close()
        summary = self.summary(wall_seconds=time.perf_counter() - start)
        if out is not None:
            (out / SUMMARY).write_text(json.dumps(summary, indent=2) + "\n")
            (out / LEDGER).write_text(self.ledger.to_jsonl())
            (out / MODEL).write_bytes(self.model_bytes())
        return RunResult(self.params, self.metrics, self.ledger, summary, out)

    def model_bytes(self) -> bytes:
        """The global model as a lossless Dense bundle (stable bytes: resume tests compare them)."""
        return bytes(sc.encode_bundle(self.params, sc.Dense()))

    def last_accuracy(self) -> float | None:
        for m in reversed(self.metrics):
            if m.get("accuracy") is not None:
                return m["accuracy"]
        return None

    def summary(self, wall_seconds: float | None = None) -> dict[str, Any]:
        led = self.ledger
        up, down = led.total_bits(direction="up"), led.total_bits(direction="down")
        n_up = len(led.records(direction="up"))
        evaluated = [m for m in self.metrics if m.get("test_loss") is not None]
        accs = [m["accuracy"] for m in evaluated if m.get("accuracy") is not None]
        client_rounds = len({(r.round, r.client) for r in led})
        summary = {
            "algorithm": self.config.algorithm, "dataset": self.config.dataset,
            "model": self.config.model, "rounds": self.rounds_done, "num_params": self.num_params,
            "clients": len(self.clients), "clients_per_round": self.config.sim.clients_per_round or len(self.clients),
            "final_accuracy": accs[-1] if accs else None,
            "best_accuracy": max(accs) if accs else None,
            "final_test_loss": evaluated[-1]["test_loss"] if evaluated else None,
            "uplink_bits": up, "downlink_bits": down,
            "uplink_messages": n_up,
            "uplink_bits_per_client_round": up / n_up if n_up else None,
            "uplink_bpp": up / led.total_numel(direction="up") if n_up else None,
            "downlink_bpp": down / led.total_numel(direction="down") if down else None,
            "uplink_sections": led.by_section(direction="up"),
            "downlink_sections": led.by_section(direction="down"),
            # per client-round: a sampled client's download(s) and upload in one round
            "client_rounds": client_rounds,
            "downlink_bits_per_client_round": down / client_rounds if client_rounds else None,
            "total_bits_per_client_round": (up + down) / client_rounds if client_rounds else None,
            "uplink_bound_bits_per_client_round": _bound(led, "up") / client_rounds if client_rounds else None,
            "downlink_bound_bits_per_client_round": _bound(led, "down") / client_rounds if client_rounds else None,
            "uplink_median_bits": _median_bits(led, "up"),
            "downlink_median_bits": _median_bits(led, "down"),
            "downlink_median_bits_from_round_3": _median_bits(led, "down", first_round=3),
            "wire": self.config.sim.wire, "downlink": self.config.sim.downlink,
            "dropped_updates": sum(len(m["dropped"]) for m in self.metrics),
            "wall_seconds": wall_seconds,
            "config": self.config.to_dict(),
        }
        extra = self.algorithm.summarize(self.metrics)
        clash = sorted(set(extra) & set(summary))
        if clash:
            raise ValueError(f"{type(self.algorithm).__name__}.summarize() may not overwrite {clash}")
        summary.update(extra)
        return summary


def _bound(ledger: Ledger, direction: str) -> float:
    """Sum of the messages' bounds (:attr:`LedgerRecord.bound_bits`); a message without one
    (a self-describing bundle) counts its payload bits, i.e. everything but its header and
    checksum sections."""
    total = 0.0
    for r in ledger.records(direction=direction):
        if r.bound_bits is not None:
            total += r.bound_bits
        else:
            total += sum(b for secs in r.tensor_sections.values() for k, b in secs.items()
                         if k not in ("header", "checksum", "rejected"))
    return total


def _median_bits(ledger: Ledger, direction: str, first_round: int = 1) -> float | None:
    bits = [r.nbits for r in ledger.records(direction=direction) if r.round >= first_round]
    return float(np.median(bits)) if bits else None


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


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _progress(enabled: bool, total: int, initial: int, name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="round", dynamic_ncols=True)


def run_simulation(config: RunConfig | dict, out_dir: str | os.PathLike | None = None, *,
                   resume: bool = False, stop_after: int | None = None, progress: bool = False,
                   data_dir: str | os.PathLike | None = None, algorithm: Algorithm | None = None,
                   channel: Channel | None = None) -> RunResult:
    """Build a :class:`Simulation` from ``config`` (a RunConfig or a resolved dict) and run it."""
    if not isinstance(config, RunConfig):
        config = build_config(config)
    sim = Simulation(config, data_dir=data_dir, algorithm=algorithm, channel=channel)
    return sim.run(out_dir, resume=resume, stop_after=stop_after, progress=progress)
