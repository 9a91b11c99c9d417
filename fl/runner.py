"""The run driver: the round loop with its output files, progress bar and summary.

:class:`RunDriver` is the half of :class:`fl.simulation.Simulation` that turns rounds into a
finished run: ``run()`` steps to ``config.rounds`` (or resumes, or stops early), writes
``metrics.jsonl``, ``checkpoint.ckpt``, ``summary.json``, ``ledger.jsonl`` and ``model.sc``, and
``summary()`` reduces the ledger and the metrics to the numbers a table reports. It is
separate from :mod:`fl.simulation` because none of it is the protocol of a round (sampling,
client and server halves, decoding, checkpoint state): it only calls the host's ``step()``,
``save_checkpoint()`` / ``load_checkpoint()`` and reads its ledger and metrics, so an engine
that runs its rounds elsewhere (:class:`fl.flower.engine.FlowerServer`) reuses it unchanged.
Everything here is importable from :mod:`fl.simulation` as before.

    >>> import tempfile
    >>> from fl.config import resolve_config
    >>> from fl.simulation import Simulation
    >>> cfg = resolve_config(algorithm="fedavg", sets=["rounds=1", "sim.clients=2",
    ...     "sim.clients_per_round=0", "data.scale='unit'", "model='logistic-regression'"])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     result = Simulation(cfg).run(d)
    ...     sorted(p.name for p in Path(d).iterdir())
    ['checkpoint.ckpt', 'ledger.jsonl', 'metrics.jsonl', 'model.sc', 'summary.json']
    >>> result.summary["rounds"], result.summary["uplink_bits"] == result.ledger.total_bits(direction="up")
    (1, True)
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

import sparsecodec as sc
from sparsecodec.errors import ConfigError

from .channel import Ledger

if TYPE_CHECKING:
    from .algorithms.base import Algorithm
    from .config import RunConfig

__all__ = ["RunDriver", "RunResult", "CHECKPOINT", "METRICS", "SUMMARY", "LEDGER", "MODEL",
           "load_model_bytes"]

# the run's log lines keep the logger they always had (the one users and tests configure)
log = logging.getLogger("fl.simulation")

CHECKPOINT, METRICS, SUMMARY, LEDGER, MODEL = (
    "checkpoint.ckpt", "metrics.jsonl", "summary.json", "ledger.jsonl", "model.sc")


@dataclass
class RunResult:
    params: dict[str, np.ndarray]
    metrics: list[dict[str, Any]]
    ledger: Ledger
    summary: dict[str, Any]
    out_dir: Path | None = None


def load_model_bytes(data: bytes) -> dict[str, np.ndarray]:
    """Decode a saved ``model.sc`` (a Dense bundle) into ``{name: array}``."""
    return sc.decode_bundle(data)


class RunDriver:
    """A run's loop, outputs and ``summary()``, mixed into :class:`~fl.simulation.Simulation`.

    The host provides ``step()`` (one round, returning its metrics line),
    ``save_checkpoint(path)`` / ``load_checkpoint(path)``, the properties ``ledger`` and
    ``params``, and the attributes annotated below; subclasses override any of these (the
    Flower engine overrides ``run``, ``summary`` and the checkpoint pair) and are still driven
    by this loop.
    """

    config: RunConfig
    algorithm: Algorithm
    metrics: list[dict[str, Any]]
    rounds_done: int
    num_params: int
    clients: list

    if TYPE_CHECKING:   # the host's, for type checkers only: a runtime stub would hide a missing one
        @property
        def ledger(self) -> Ledger: ...
        @property
        def params(self) -> dict[str, np.ndarray]: ...
        def step(self) -> dict[str, Any]: ...
        def save_checkpoint(self, path: str | os.PathLike) -> None: ...
        def load_checkpoint(self, path: str | os.PathLike) -> None: ...

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


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _progress(enabled: bool, total: int, initial: int, name: str):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc=name, unit="round", dynamic_ncols=True)
