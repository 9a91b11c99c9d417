"""How long a round of SparsyFed at the paper's scale takes (ResNet-18 on CIFAR, issue 19).

Timing only: the images are random, so the accuracy means nothing; what is measured is the
work of a round of the real setting (the config's model, 100 LDA clients of 500 images, 10
per round, 1 epoch of batch 16, pruning to S = 0.95, the real uplink and downlink encoding).

    python -m benchmarks.sparsyfed_timing synth --out /tmp/cifar-synth            # 50,000 + 10,000
    python -m benchmarks.sparsyfed_timing time --setup cifar10_lda0.1 --data-dir /tmp/cifar-synth \\
        --device cpu --rounds 1 [--clients-per-round 1] [--json FILE]

``synth`` writes random images in the official python-pickle layout (``cifar-10-batches-py/``:
five 10,000-image training batches, ``test_batch``, ``batches.meta``; ``cifar-100-python/`` with
``--dataset cifar100``), so the loader, the partition and the model see what the real files give.
``time`` builds the run from ``benchmarks/configs/sparsyfed/<setup>.toml`` and times, separately:
the setup (loading, partition, model), each round's clients one by one (download, local
training, pruning, encoding the uplink, the server decoding it) and the server's aggregation,
and one evaluation of the global model on the 10,000 test images (the configs evaluate every
5th round). ``--clients-per-round`` measures a fraction of a round where a whole one is too
slow; the JSON then says what it extrapolates. Nothing here is a result of the algorithm.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = ROOT / "benchmarks/configs/sparsyfed"


def write_synthetic(root: Path, dataset: str = "cifar10", *, n_train: int = 50_000,
                    n_test: int = 10_000, seed: int = 0) -> Path:
    """Random uint8 images and uniform labels in the official layout under ``root``."""
    rng = np.random.default_rng(seed)
    classes = {"cifar10": 10, "cifar100": 100}[dataset]

    def dump(path: Path, obj) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)          # as the official (Python 2) files

    def batch(n: int, label_key: bytes) -> dict:
        return {b"batch_label": b"synthetic", label_key: rng.integers(0, classes, n).tolist(),
                b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                b"filenames": [b"synthetic.png"] * n}

    if dataset == "cifar10":
        d = root / "cifar-10-batches-py"
        if n_train % 5:
            raise ValueError("cifar10 has five training batches: n_train must be a multiple of 5")
        for i in range(5):
            dump(d / f"data_batch_{i + 1}", batch(n_train // 5, b"labels"))
        dump(d / "test_batch", batch(n_test, b"labels"))
        dump(d / "batches.meta", {b"num_cases_per_batch": n_train // 5, b"num_vis": 3072,
                                  b"label_names": [f"class{c}".encode() for c in range(10)]})
    else:
        d = root / "cifar-100-python"
        for name, n in (("train", n_train), ("test", n_test)):
            dump(d / name, {**batch(n, b"fine_labels"), b"coarse_labels": [0] * n})
        dump(d / "meta", {b"fine_label_names": [f"c{c}".encode() for c in range(100)],
                          b"coarse_label_names": [f"s{c}".encode() for c in range(20)]})
    return d


def time_rounds(setup: str, method: str, data_dir: str, device: str, rounds: int,
                clients_per_round: int | None, sets: list[str]) -> dict:
    """Build the run and time setup, each client, aggregation and one evaluation."""
    from benchmarks.sparsyfed_repro import METHODS
    from fl.config import resolve_config
    from fl.simulation import Simulation

    alg, method_sets = METHODS[method]
    extra = [f"sim.device={json.dumps(device)}"]
    if clients_per_round is not None:
        extra.append(f"sim.clients_per_round={clients_per_round}")
    config = resolve_config(file=CONFIGS / f"{setup}.toml", algorithm=alg,
                            sets=[*method_sets, *extra, *sets])
    # wall time, and this process's CPU time: on a shared machine the wall time includes the
    # waits for a core, the CPU time (one torch thread) is what the work costs uncontended
    start, cpu = time.perf_counter(), time.process_time()
    sim = Simulation(config, data_dir=data_dir)
    setup_seconds, setup_cpu = time.perf_counter() - start, time.process_time() - cpu
    per_client: list[dict] = []
    real_client_round = sim._client_round

    def timed_client_round(t, cid, down, side=None):
        t0, c0 = time.perf_counter(), time.process_time()
        out = real_client_round(t, cid, down, side)
        per_client.append({"round": t + 1, "client": cid, "seconds": time.perf_counter() - t0,
                           "cpu_seconds": time.process_time() - c0, "dropped": out[0] is None,
                           "samples": sim.clients[cid].num_samples})
        return out

    sim._client_round = timed_client_round          # type: ignore[method-assign]
    rows = []
    for _ in range(rounds):
        if sim.rounds_done + 1 == config.rounds or (sim.rounds_done + 1) % config.sim.eval_every == 0:
            raise SystemExit("this round would evaluate inside step(); time fewer rounds")
        t0, c0 = time.perf_counter(), time.process_time()
        line = sim.step()
        rows.append({"round": line["round"], "seconds": time.perf_counter() - t0,
                     "cpu_seconds": time.process_time() - c0,
                     "clients": len(line["clients"]), "dropped": len(line["dropped"]),
                     "uplink_bits": line["uplink_bits"], "downlink_bits": line["downlink_bits"],
                     "server_density": line.get("server_density")})
    t0, c0 = time.perf_counter(), time.process_time()
    sim.evaluate()
    eval_seconds, eval_cpu = time.perf_counter() - t0, time.process_time() - c0

    def server(key: str) -> list[float]:
        return [r[key] - sum(c[key] for c in per_client if c["round"] == r["round"]) for r in rows]
    full = config.sim.clients_per_round or len(sim.clients)
    return {
        "what": "timing only, random synthetic CIFAR-shaped images (accuracy meaningless)",
        "setup": setup, "method": method, "device": device, "rounds_timed": rounds,
        "num_params": sim.num_params, "clients": len(sim.clients),
        "clients_per_round_timed": rows[0]["clients"],
        "clients_per_round_config": resolve_config(file=CONFIGS / f"{setup}.toml", algorithm=alg,
                                                   sets=[*method_sets, *sets]).sim.clients_per_round,
        "images_per_client": sorted({c.num_samples for c in sim.clients}),
        "setup_seconds": setup_seconds, "setup_cpu_seconds": setup_cpu, "rounds": rows,
        "client_seconds": per_client,
        "mean_client_seconds": float(np.mean([c["seconds"] for c in per_client])),
        "mean_client_cpu_seconds": float(np.mean([c["cpu_seconds"] for c in per_client])),
        "server_seconds_per_round": server("seconds"), "server_cpu_seconds_per_round": server("cpu_seconds"),
        "eval_seconds": eval_seconds, "eval_cpu_seconds": eval_cpu,
        "torch_threads": config.sim.threads, "eval_every": config.sim.eval_every, "full_round_clients": full,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
    }


def extrapolate(record: dict, cpu: bool = False) -> dict:
    """Seconds per round of the config (its clients per round, plus the evaluation every
    ``eval_every`` rounds), from the measured mean client and server time (wall, or with
    ``cpu`` this process's CPU time)."""
    key = "cpu_seconds" if cpu else "seconds"
    n = record["clients_per_round_config"]
    server = float(np.mean(record[f"server_{key}_per_round"]))
    train = n * record[f"mean_client_{key}"] + server
    per_round = train + record[f"eval_{key}"] / record["eval_every"]
    return {"round_seconds_without_eval": train, "round_seconds_with_eval_share": per_round,
            "extrapolated_from_clients": record["clients_per_round_timed"] != n,
            "hours_for_700_rounds": 700 * per_round / 3600}


#: where the timing records are committed (the report reads every JSON file there)
TIMING = ROOT / "benchmarks/results/sparsyfed/cifar_timing"


def cifar_section() -> list[str]:
    """How to run the paper's setting, and the measured time per round (from ``TIMING``)."""
    out = ["", "## CIFAR at the paper's scale", "",
           "The paper's setting, ResNet-18 (CIFAR variant: 3x3 stem, no max-pool, BatchNorm; 11,173,962",
           "parameters, 11,220,132 with 100 classes) with Powerprop on all 21 conv/linear layers, 100 clients",
           "with equal-size LDA shards (500 images each), 10 per round, S = 0.95, the official lr 0.5 -> 0.01",
           "over 700 rounds, batch 16, 1 epoch: `benchmarks/configs/sparsyfed/{cifar10,cifar100}_lda{0.1,1.0}.toml`",
           "(deviations named in their comments). **Not run here**: this machine has neither the CIFAR files",
           "(nothing is downloaded) nor a GPU. What it needs:", "",
           "* the official python-version files, unpacked, under one directory `DIR`: `DIR/cifar-10-batches-py/`",
           "  (`data_batch_1` .. `data_batch_5`, `test_batch`, `batches.meta`) for CIFAR-10,",
           "  `DIR/cifar-100-python/` (`train`, `test`, `meta`) for CIFAR-100; they are read by a restricted",
           "  unpickler that runs no code (`fl/cifar_pickle.py`);",
           "* a CUDA GPU and a CUDA build of torch (`--device cuda`; the CPU figures below say why); the clients'",
           "  images (0.6 GB as float32) and the test set (0.1 GB) live on it beside the model (estimated,",
           "  not measured: under 2 GB in all);",
           "* per setup, the three rows of the comparison:", "",
           "```",
           "python -m benchmarks.sparsyfed_repro run --setup cifar10_lda0.1 --method sparsyfed  --device cuda --data-dir DIR",
           "python -m benchmarks.sparsyfed_repro run --setup cifar10_lda0.1 --method topk-prune --device cuda --data-dir DIR",
           "python -m benchmarks.sparsyfed_repro run --setup cifar10_lda0.1 --method dense      --device cuda --data-dir DIR",
           "python -m benchmarks.sparsyfed_repro report",
           "```", "",
           "(`--rounds N` for a shorter run, `--resume` after an interruption; checkpoints every 10 rounds).",
           "`tests/test_sparsyfed_cifar.py` runs the first command with `--rounds 1` on a tiny synthetic",
           "directory in the official format, on the CPU, and at full width on a GPU where there is one.", ""]
    records = [json.loads(p.read_text()) for p in sorted(TIMING.glob("*.json"))]
    records.sort(key=lambda r: r["rounds_timed"])          # the longest measurement last
    if not records:
        return out + ["No round has been timed yet (`python -m benchmarks.sparsyfed_timing`)."]
    out += ["### Time per round, measured on random CIFAR-shaped data",
            "",
            "`python -m benchmarks.sparsyfed_timing synth` writes 50,000 + 10,000 random 32x32x3 images in the",
            "official layout; `... time` runs rounds of the real setting on them (accuracy meaningless) and",
            "times each client (download, 1 epoch on its 500 images, pruning, encoding; the server decoding",
            "its uplink), the server's aggregation and one evaluation on the 10,000 test images (every 5th",
            "round). Wall time is on a 2-core machine shared with other jobs (`uptime` showed a load average",
            "of about 10 while these ran), so it is mostly waiting; CPU time (one torch thread) is what the",
            "work costs uncontended.", "",
            "| setup | device | clients timed | per client, wall / CPU | server per round | evaluation (10k) "
            "| round of 10 clients + 1/5 eval, wall / CPU | 700 rounds (CPU time) |",
            "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        w, c = r["estimate_wall"], r["estimate_cpu"]
        timed = f"{r['clients_per_round_timed']} per round, {r['rounds_timed']} round(s)"
        out.append(f"| {r['setup']} ({r['method']}) | {r['device']} | {timed} | {r['mean_client_seconds']:.0f} s / "
                   f"{r['mean_client_cpu_seconds']:.0f} s | {float(np.mean(r['server_seconds_per_round'])):.1f} s / "
                   f"{float(np.mean(r['server_cpu_seconds_per_round'])):.1f} s | "
                   f"{r['eval_seconds']:.0f} s / {r['eval_cpu_seconds']:.0f} s | "
                   f"{w['round_seconds_with_eval_share'] / 60:.1f} / {c['round_seconds_with_eval_share'] / 60:.1f} min"
                   f"{' (extrapolated)' if c['extrapolated_from_clients'] else ''} | "
                   f"{c['hours_for_700_rounds']:.0f} h |")
    last = records[-1]
    c, w = last["estimate_cpu"], last["estimate_wall"]
    out += ["", f"So one round of the real setting costs about {c['round_seconds_with_eval_share'] / 60:.1f} minutes "
            f"of one CPU core here ({w['round_seconds_with_eval_share'] / 60:.0f} min wall on this shared machine)"
            + (f", extrapolated from {last['clients_per_round_timed']} timed client(s) per round to "
               f"{last['clients_per_round_config']}" if c["extrapolated_from_clients"] else "")
            + f"; a 700-round run about {c['hours_for_700_rounds']:.0f} CPU-hours, and a setup needs three runs",
            "(SparsyFed, Top-K, dense). Hence the GPU. A GPU round has not been measured: no GPU was lent to this task.",
            "", "Commands: `python -m benchmarks.sparsyfed_timing synth --out /tmp/cifar-synth`, then "
            + "; ".join(f"`{r['command']}`" for r in records) + " (the records: `cifar_timing/*.json`)."]
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sparsyfed_timing", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    s = sub.add_parser("synth", help="write random CIFAR-shaped data in the official layout")
    s.add_argument("--out", required=True)
    s.add_argument("--dataset", choices=("cifar10", "cifar100"), default="cifar10")
    s.add_argument("--n-train", type=int, default=50_000)
    s.add_argument("--n-test", type=int, default=10_000)
    t = sub.add_parser("time", help="time rounds of a CIFAR setup")
    t.add_argument("--setup", required=True)
    t.add_argument("--method", default="sparsyfed")
    t.add_argument("--data-dir", required=True)
    t.add_argument("--device", default="cpu")
    t.add_argument("--rounds", type=int, default=1)
    t.add_argument("--clients-per-round", type=int, help="time a fraction of a round (extrapolated)")
    t.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    t.add_argument("--json", help="write the record here too")
    args = p.parse_args(argv)
    if args.command == "synth":
        print(write_synthetic(Path(args.out), args.dataset, n_train=args.n_train, n_test=args.n_test))
        return 0
    record = time_rounds(args.setup, args.method, args.data_dir, args.device, args.rounds,
                         args.clients_per_round, args.sets)
    record["estimate_wall"] = extrapolate(record)
    record["estimate_cpu"] = extrapolate(record, cpu=True)
    record["command"] = "python -m benchmarks.sparsyfed_timing " + " ".join(argv if argv is not None else sys.argv[1:])
    text = json.dumps(record, indent=2) + "\n"
    if args.json:
        Path(args.json).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
