"""The Sparse-ProxSkip discrimination grid (issue 19): every reading beside the baselines.

    python -m benchmarks.proxskip_repro grid                 # run what is missing (2 at a time), then
    python -m benchmarks.proxskip_repro grid-table           # the table (markdown + json) and plots

MNIST multinomial logistic regression (``benchmarks/configs/proxskip/mnist_logistic.toml``:
10 clients with 3 classes each, gamma = 1/L, K = 1/p = 10 full-batch local steps), 99 %
sparsity (k = round(0.01 d) = 79 of d = 7,850), 200 rounds, seeds 0, 1, 2 (the seed draws the
partition: client sizes and classes), on the issue-15 wire (``sim.wire = "compact"``,
``sim.downlink = "patch"``: each client downloads the smaller of a patch and the dense model).
Methods: the three readings of Sparse-ProxSkip (``reset``, ``latent``, ``randprox``;
docs/sparse_proxskip.md), ProxSkip with server pruning, FedAvg + TopK and EC (TopK of the
model delta, the same k, global scope, 10 full-batch GD steps at the same gamma) and dense
ProxSkip. Each run is ``python -m fl run`` with the ``--set`` options its row records.

Measured alongside each run, read-only (:class:`GridProbe`):

* every round: the k-support of ``TopK_k(global)`` and ``support_change``, the fraction of it
  that is new since the previous round; ``global_nnz``; for the ProxSkip family the actual
  ``sum_i h_i`` of the clients' states (:func:`fl.algorithms.proxskip.pending_h`), as
  ``client_sum_h_norm`` and ``client_sum_h_rel = |sum_i h_i| / sum_i |h_i|``;
* at every evaluation: ``sparse_model_accuracy``, the accuracy of the global model cut to its
  k largest magnitudes (the delivered k-sparse model; for the client-pruning readings this is
  the engine's own ``accuracy``), and ``global_accuracy``, that of the global model as is.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "benchmarks" / "configs" / "proxskip" / "mnist_logistic.toml"
OUT = ROOT / "benchmarks" / "results" / "proxskip" / "mnist_grid"
LOGS = ROOT / "benchmarks" / "results" / "tmp" / "proxskip" / "grid_logs"     # not committed
SPARSITY = 0.99
ROUNDS = 200
SEEDS = (0, 1, 2)
WIRE = ["sim.wire='compact'", "sim.downlink='patch'", "sim.checkpoint_every=0", "sim.eval_every=5"]
#: method -> (registry algorithm, --set options), at SPARSITY
GRID = {
    "sparse-proxskip-randprox": ("sparse-proxskip", ["algo.sparse-proxskip.sparsity=0.99",
                                                     "algo.sparse-proxskip.variant='randprox'"]),
    "sparse-proxskip-latent": ("sparse-proxskip", ["algo.sparse-proxskip.sparsity=0.99",
                                                   "algo.sparse-proxskip.variant='latent'"]),
    "sparse-proxskip-reset": ("sparse-proxskip", ["algo.sparse-proxskip.sparsity=0.99",
                                                  "algo.sparse-proxskip.variant='reset'"]),
    "server-pruning": ("sparse-proxskip-server", ["algo.sparse-proxskip-server.sparsity=0.99"]),
    "fedavg-topk": ("fedavg-topk", ["algo.fedavg-topk.density=0.01"]),
    "ec": ("ec", ["algo.ec.density=0.01"]),
    "proxskip": ("proxskip", []),
}
LABELS = {"sparse-proxskip-randprox": "Sparse-ProxSkip (c) randprox [default]",
          "sparse-proxskip-latent": "Sparse-ProxSkip (b) latent",
          "sparse-proxskip-reset": "Sparse-ProxSkip (a) reset",
          "server-pruning": "ProxSkip + server TopK", "fedavg-topk": "FedAvg + TopK (delta)",
          "ec": "EC (TopK of delta + error feedback)", "proxskip": "ProxSkip (dense)"}


def row_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def sets_for(method: str, seed: int, rounds: int) -> tuple[str, list[str]]:
    algo, sets = GRID[method]
    return algo, [*WIRE, *sets, f"seed={seed}", f"rounds={rounds}"]


class GridProbe:
    """Per-round measurements of a running simulation (reads its state, changes nothing)."""

    def __init__(self, sim, sparsity: float) -> None:
        self.sim, self.sparsity = sim, sparsity
        self.previous = None
        self.lines: dict[int, dict] = {}

    def __call__(self, line: dict) -> None:
        import numpy as np

        import sparsecodec as sc
        from fl.algorithms import proxskip as ps
        from fl.algorithms.base import evaluate

        sim, extra = self.sim, {}
        w = ps.flatten(sim.server.params)
        k = sc.k_for(w.size, density=round(1.0 - self.sparsity, 12), k_rule="round")
        support = np.sort(sc.topk_indices(w, k))
        extra["global_nnz"] = int(np.count_nonzero(w))
        if self.previous is not None:
            extra["support_change"] = float(np.setdiff1d(support, self.previous).size / k)
        self.previous = support
        if isinstance(sim.algorithm, ps.ProxSkip) and getattr(sim.cfg, "control_variates", True):
            hs = [ps.pending_h(sim.client_states[c], w, sim.cfg) for c in sorted(sim.client_states)]
            total = np.sum([h.astype(np.float64) for h in hs], axis=0)
            norms = sum(float(np.sqrt(np.sum(h.astype(np.float64) ** 2))) for h in hs)
            s = float(np.sqrt(np.sum(total ** 2)))
            extra.update({"client_sum_h_norm": s, "client_sum_h_rel": s / norms if norms > 0 else 0.0,
                          "client_h_norm_mean": norms / len(hs)})
        if line.get("test_loss") is not None:
            bs = sim.config.sim.eval_batch_size
            pruned = ps.unflatten(ps.topk_vector(w, k), sim.server.params)
            extra["sparse_model_accuracy"] = evaluate(sim.model, pruned, sim.x_test, sim.y_test,
                                                      sim.dataset.task, bs)["accuracy"]
            extra["global_accuracy"] = evaluate(sim.model, sim.server.params, sim.x_test, sim.y_test,
                                                sim.dataset.task, bs)["accuracy"]
        self.lines[line["round"]] = extra


def cmd_grid_run(method: str, seed: int, rounds: int) -> None:
    """One grid cell, in this process; writes ROW.json and ROW.metrics.jsonl."""
    from fl.config import resolve_config
    from fl.simulation import Simulation

    from .proxskip_repro import machine

    algo, sets = sets_for(method, seed, rounds)
    config = resolve_config(file=CONFIG, algorithm=algo, sets=sets)
    sim = Simulation(config)
    probe = GridProbe(sim, SPARSITY)
    start = time.perf_counter()
    result = sim.run(None, on_round=probe)
    wall = time.perf_counter() - start
    lines = [{**m, **probe.lines.get(m["round"], {})} for m in result.metrics]
    OUT.mkdir(parents=True, exist_ok=True)
    name = row_name(method, seed)
    (OUT / f"{name}.metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    last_eval = [m for m in lines if m.get("sparse_model_accuracy") is not None][-1]
    summary = {**result.summary, "sparse_model_accuracy": last_eval["sparse_model_accuracy"],
               "global_accuracy": last_eval["global_accuracy"]}
    digest = {"row": name, "method": method, "algorithm": algo, "seed": seed, "sparsity": SPARSITY,
              "command": f"python -m benchmarks.proxskip_repro grid-run {method} --seed {seed} --rounds {rounds}",
              "equivalent_cli": (f"python -m fl run --algorithm {algo} --config "
                                 f"benchmarks/configs/proxskip/{CONFIG.name}"
                                 + "".join(f" --set {shlex.quote(s)}" for s in sets)),
              "wall_seconds": wall, "machine": machine(), "summary": summary}
    (OUT / f"{name}.json").write_text(json.dumps(digest, indent=2) + "\n")
    print(f"{name}: sparse-model accuracy {summary['sparse_model_accuracy']:.4f}, "
          f"global {summary['global_accuracy']:.4f}; {wall:.0f} s", flush=True)


def cmd_grid(methods: list[str], seeds: list[int], rounds: int, jobs: int) -> None:
    """Run every missing cell, ``jobs`` processes at a time (``nice -n 5``), seed-major so
    that an interrupted grid still has whole seeds."""
    todo = [(m, s) for s in seeds for m in methods if not (OUT / f"{row_name(m, s)}.json").is_file()]
    running: list[tuple[subprocess.Popen, str]] = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    OUT.mkdir(parents=True, exist_ok=True)
    while todo or running:
        while todo and len(running) < jobs:
            m, s = todo.pop(0)
            LOGS.mkdir(parents=True, exist_ok=True)
            log = open(LOGS / f"{row_name(m, s)}.log", "w")
            cmd = ["nice", "-n", "5", sys.executable, "-m", "benchmarks.proxskip_repro", "grid-run", m,
                   "--seed", str(s), "--rounds", str(rounds)]
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                            row_name(m, s)))
            print(f"{time.strftime('%H:%M:%S')} started {row_name(m, s)}", flush=True)
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"{time.strftime('%H:%M:%S')} {name} exited {proc.returncode}", flush=True)
