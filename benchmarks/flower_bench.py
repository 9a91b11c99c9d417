"""Client updates per second: Flower's simulation engine against the in-process engine.

The same config runs twice in this process: ``fl.simulation.run_simulation`` (in-process) and
``fl.flower.run_flower`` (Flower's ``run_simulation``, Ray backend, one SuperNode per
client, one CPU per ClientApp actor). Both must give the same model and the same ledger
(checked and recorded: ``same_model``, ``same_ledger``). Two rates per engine:

* ``rounds``: client updates / the seconds of the rounds loop (``summary.wall_seconds``:
  sampling, broadcast, every client update, decoding, aggregation, the final evaluation);
  under Flower it includes the messaging and the ClientApp actors building their data on
  first use, but not Ray's start and stop;
* ``end_to_end``: client updates / the seconds of the whole call (data loading, model
  building; under Flower also starting and stopping Ray and its actors).

Setting (default): FLARE and FedPM on the embedded MNIST subset, 4 clients holding 600
images each (contiguous shards), all 4 every round, 5 rounds, evaluation after the last;
FLARE with the small CNN (one full-batch SGD step per round, the paper's batch = shard),
FedPM with its masked MLP (1 epoch of batch 128). ``sim.threads = 1`` everywhere.

    python -m benchmarks.flower_bench [--rounds 5] [--algorithms flare,fedpm] [--out DIR]

Writes ``flower.json`` and ``flower.md`` into ``benchmarks/results/``. Timings are wall
clock on whatever else the machine is running: the load average at the start is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"

SETTINGS = {
    "flare": ["model=small-cnn"],
    "fedpm": ["model=fedpm-mlp", "algo.epochs=1"],
}


def config_for(algorithm: str, rounds: int, clients: int):
    from fl.config import resolve_config

    sets = ["dataset=mnist-embedded", f"rounds={rounds}", f"sim.clients={clients}",
            "sim.clients_per_round=0", "partition.kind='contiguous'", "partition.shard_size=600",
            f"sim.eval_every={rounds}", "sim.threads=1"] + SETTINGS[algorithm]
    return resolve_config(algorithm=algorithm, setting="defaults", sets=sets)


def _measure(fn, config) -> tuple[object, float]:
    t = time.perf_counter()
    result = fn(config)
    return result, time.perf_counter() - t


def bench(algorithm: str, rounds: int, clients: int) -> list[dict]:
    from fl.flower import run_flower
    from fl.simulation import run_simulation

    config = config_for(algorithm, rounds, clients)
    ref, ref_s = _measure(run_simulation, config)
    got, got_s = _measure(run_flower, config)
    same_model = all(np.array_equal(ref.params[k], got.params[k]) for k in ref.params)
    same_ledger = ref.ledger.to_jsonl() == got.ledger.to_jsonl()
    rows = []
    for engine, result, total in (("in-process", ref, ref_s), ("flower", got, got_s)):
        updates = sum(m["updates"] for m in result.metrics)
        loop = result.summary["wall_seconds"]
        rows.append({
            "algorithm": algorithm, "engine": engine, "model": config.model,
            "clients": clients, "rounds": rounds, "client_updates": updates,
            "rounds_seconds": round(loop, 3), "end_to_end_seconds": round(total, 3),
            "updates_per_s_rounds": round(updates / loop, 3),
            "updates_per_s_end_to_end": round(updates / total, 3),
            "uplink_bits": result.ledger.total_bits(direction="up"),
            "same_model_as_in_process": same_model, "same_ledger_as_in_process": same_ledger,
        })
    return rows


def to_markdown(meta: dict, rows: list[dict]) -> str:
    cols = ["algorithm", "engine", "client_updates", "rounds_seconds", "updates_per_s_rounds",
            "end_to_end_seconds", "updates_per_s_end_to_end", "same_model_as_in_process",
            "same_ledger_as_in_process"]
    lines = ["# Flower vs in-process engine: client updates per second", "",
             f"Command: `{meta['command']}`  ", f"Machine: {meta['machine']}  ",
             f"Versions: flwr {meta['flwr']}, ray {meta['ray']}, torch {meta['torch']}  ",
             f"Load average at start: {meta['loadavg']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(str(r[c]) for c in cols) + " |" for r in rows]
    lines += ["", "`rounds`: the rounds loop (summary wall_seconds); `end_to_end`: the whole call "
              "(Flower: with Ray start/stop). See benchmarks/flower_bench.py."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--algorithms", default="flare,fedpm")
    p.add_argument("--out", default=str(RESULTS))
    argv = list(sys.argv[1:] if argv is None else argv)
    args = p.parse_args(argv)
    import flwr
    import ray
    import torch

    meta = {"command": " ".join(["python -m benchmarks.flower_bench", *argv]),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.python_version()}",
            "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()),
            "flwr": flwr.__version__, "ray": ray.__version__, "torch": torch.__version__}
    rows = []
    for name in [a.strip() for a in args.algorithms.split(",") if a.strip()]:
        rows += bench(name, args.rounds, args.clients)
        for r in rows[-2:]:
            print(json.dumps(r))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "flower.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    (out / "flower.md").write_text(to_markdown(meta, rows))
    print(to_markdown(meta, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
