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
GRID = {   # in the order the grid runs them within a seed: the acceptance's three first
    "sparse-proxskip-randprox": ("sparse-proxskip", ["algo.sparse-proxskip.sparsity=0.99",
                                                     "algo.sparse-proxskip.variant='randprox'"]),
    "server-pruning": ("sparse-proxskip-server", ["algo.sparse-proxskip-server.sparsity=0.99"]),
    "fedavg-topk": ("fedavg-topk", ["algo.fedavg-topk.density=0.01"]),
    "sparse-proxskip-latent": ("sparse-proxskip", ["algo.sparse-proxskip.sparsity=0.99",
                                                   "algo.sparse-proxskip.variant='latent'"]),
    "sparse-proxskip-reset": ("sparse-proxskip", ["algo.sparse-proxskip.sparsity=0.99",
                                                  "algo.sparse-proxskip.variant='reset'"]),
    "ec": ("ec", ["algo.ec.density=0.01"]),
    "proxskip": ("proxskip", []),
}
LABELS = {"sparse-proxskip-randprox": "Sparse-ProxSkip (c) randprox",
          "sparse-proxskip-latent": "Sparse-ProxSkip (b) latent [default]",
          "sparse-proxskip-reset": "Sparse-ProxSkip (a) reset",
          "server-pruning": "ProxSkip + server TopK", "fedavg-topk": "FedAvg + TopK (delta)",
          "ec": "EC (TopK of delta + error feedback)", "proxskip": "ProxSkip (dense)"}


def out_option(out: Path) -> str:
    """`` --out DIR`` for a command line, or nothing for the default directory."""
    if out.resolve() == OUT.resolve():
        return ""
    try:
        return f" --out {out.resolve().relative_to(ROOT)}"
    except ValueError:
        return f" --out {out}"


def resolve_out(arg: str | None) -> Path:
    """``--out``: a directory, relative to the repository root; default ``mnist_grid``."""
    if not arg:
        return OUT
    path = Path(arg)
    return path if path.is_absolute() else ROOT / path


def row_name(method: str, seed: int) -> str:
    return f"{method}_seed{seed}"


def sets_for(method: str, seed: int, rounds: int) -> tuple[str, list[str]]:
    algo, sets = GRID[method]
    return algo, [*WIRE, *sets, f"seed={seed}", f"rounds={rounds}"]


def _quote(arg: str) -> str:
    """A shell word for ``arg``: TOML strings inside double quotes read better than shlex's."""
    if "'" in arg and not any(c in arg for c in '"$`\\!'):
        return f'"{arg}"'
    return shlex.quote(arg)


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


def cmd_grid_run(method: str, seed: int, rounds: int, out: Path = OUT) -> None:
    """One grid cell, in this process; writes ROW.json and ROW.metrics.jsonl into ``out``."""
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
    out.mkdir(parents=True, exist_ok=True)
    name = row_name(method, seed)
    (out / f"{name}.metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in lines))
    last_eval = [m for m in lines if m.get("sparse_model_accuracy") is not None][-1]
    summary = {**result.summary, "sparse_model_accuracy": last_eval["sparse_model_accuracy"],
               "global_accuracy": last_eval["global_accuracy"]}
    digest = {"row": name, "method": method, "algorithm": algo, "seed": seed, "sparsity": SPARSITY,
              "command": (f"python -m benchmarks.proxskip_repro grid-run {method} --seed {seed} --rounds {rounds}"
                          + out_option(out)),
              "equivalent_cli": (f"python -m fl run --algorithm {algo} --config "
                                 f"benchmarks/configs/proxskip/{CONFIG.name}"
                                 + "".join(f" --set {_quote(s)}" for s in sets)),
              "wall_seconds": wall, "machine": machine(), "summary": summary}
    (out / f"{name}.json").write_text(json.dumps(digest, indent=2) + "\n")
    print(f"{name}: sparse-model accuracy {summary['sparse_model_accuracy']:.4f}, "
          f"global {summary['global_accuracy']:.4f}; {wall:.0f} s", flush=True)


def cmd_grid(methods: list[str], seeds: list[int], rounds: int, jobs: int,
             cells: list[str] | None = None, after: list[int] = (), out: Path = OUT) -> None:
    """Run every missing cell, ``jobs`` processes at a time (``nice -n 5``), seed-major so
    that an interrupted grid still has whole seeds; ``cells`` (``METHOD:SEED``) gives the
    cells and their order instead, and ``after`` process ids that hold a slot until they exit
    (cells of an earlier driver still running). Rows go to ``out``."""
    if cells:
        pairs = [(c.rsplit(":", 1)[0], int(c.rsplit(":", 1)[1])) for c in cells]
        bad = [m for m, _ in pairs if m not in GRID]
        if bad:
            raise SystemExit(f"unknown method(s) {bad}; valid: {', '.join(GRID)}")
    else:
        pairs = [(m, s) for s in seeds for m in methods]
    todo = [(m, s) for m, s in pairs if not (out / f"{row_name(m, s)}.json").is_file()]
    running: list[tuple[subprocess.Popen, str]] = []
    external = list(after)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out.mkdir(parents=True, exist_ok=True)
    while todo or running:
        external = [pid for pid in external if _alive(pid)]
        while todo and len(running) + len(external) < jobs:
            m, s = todo.pop(0)
            LOGS.mkdir(parents=True, exist_ok=True)
            log = open(LOGS / f"{row_name(m, s)}.log", "w")
            cmd = ["nice", "-n", "5", sys.executable, "-m", "benchmarks.proxskip_repro", "grid-run", m,
                   "--seed", str(s), "--rounds", str(rounds), "--out", str(out)]
            running.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                            row_name(m, s)))
            print(f"{time.strftime('%H:%M:%S')} started {row_name(m, s)}", flush=True)
        time.sleep(2)
        for proc, name in list(running):
            if proc.poll() is not None:
                running.remove((proc, name))
                print(f"{time.strftime('%H:%M:%S')} {name} exited {proc.returncode}", flush=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:        # an exited child of a dead driver is a zombie until reaped: not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


# -- the table -----------------------------------------------------------------------------------
ORDER = ("sparse-proxskip-latent", "sparse-proxskip-randprox", "sparse-proxskip-reset", "server-pruning",
         "fedavg-topk", "ec", "proxskip")       # the table's and the plots' order
SPARSE_UPLINK = ("sparse-proxskip-randprox", "sparse-proxskip-latent", "sparse-proxskip-reset", "fedavg-topk", "ec")
DEFAULT = "sparse-proxskip-latent"         # the default reading (SparseProxSkipConfig.variant)


def load_grid(folder: Path = OUT) -> dict[str, dict[int, dict]]:
    """``{method: {seed: row}}`` with each row's metrics lines."""
    out: dict[str, dict[int, dict]] = {}
    for path in sorted(folder.glob("*.json")):
        if path.name == "table.json":
            continue
        d = json.loads(path.read_text())
        d["metrics"] = [json.loads(x) for x in (folder / f"{d['row']}.metrics.jsonl").read_text().splitlines() if x]
        out.setdefault(d["method"], {})[d["seed"]] = d
    return out


def _at_bits(d: dict, budget: float) -> float | None:
    """The delivered k-sparse model's accuracy at the last evaluation within ``budget`` uplink bits."""
    best = None
    for m in d["metrics"]:
        if m.get("sparse_model_accuracy") is not None and m["cum_uplink_bits"] <= budget:
            best = m["sparse_model_accuracy"]
    return best


def _stats(values: list) -> dict | None:
    import numpy as np

    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0,
            "min": float(min(v)), "max": float(max(v)), "n": len(v), "values": v}


def _cell(st: dict | None, spec: str = ".4f") -> str:
    if st is None:
        return "-"
    if st["n"] == 1:
        return format(st["mean"], spec)
    return f"{st['mean']:{spec}} ± {st['std']:{spec}} ({st['min']:{spec}}–{st['max']:{spec}})"


def grid_numbers(grid: dict) -> dict:
    """Per method: the per-seed figures and their statistics (what the table and json show)."""
    import numpy as np

    seeds = sorted({s for rows in grid.values() for s in rows})
    budgets = {}
    for s in seeds:
        ups = [grid[m][s]["summary"]["uplink_bits"] for m in SPARSE_UPLINK if m in grid and s in grid[m]]
        if ups:
            budgets[s] = min(ups)
    out = {"budgets": budgets, "methods": {}}
    for m in ORDER:
        rows = grid.get(m, {})
        if not rows:
            continue
        per = {}
        for s, d in sorted(rows.items()):
            ms, sm = d["metrics"], d["summary"]
            client_rounds = sm["clients"] * sm["rounds"]
            late = [x["support_change"] for x in ms if x.get("support_change") is not None and x["round"] > sm["rounds"] / 2]
            rel = [x["client_sum_h_rel"] for x in ms if x.get("client_sum_h_rel") is not None]
            per[s] = {"rounds": sm["rounds"], "sparse_model_accuracy": sm["sparse_model_accuracy"],
                      "global_accuracy": sm["global_accuracy"],
                      "best_sparse_model_accuracy": max(x["sparse_model_accuracy"] for x in ms
                                                        if x.get("sparse_model_accuracy") is not None),
                      "last5_mean": float(np.mean([x["sparse_model_accuracy"] for x in ms
                                                   if x.get("sparse_model_accuracy") is not None][-5:])),
                      "at_equal_uplink_bits": _at_bits(d, budgets[s]) if s in budgets else None,
                      "uplink_bits_per_client_round": sm["uplink_bits"] / client_rounds,
                      "downlink_bits_per_client_round": sm["downlink_bits"] / client_rounds,
                      "total_uplink_bits": sm["uplink_bits"], "total_downlink_bits": sm["downlink_bits"],
                      "support_change_late": float(np.mean(late)) if late else None,
                      "final_global_nnz": ms[-1].get("global_nnz"),
                      "max_sum_h_rel": max(rel) if rel else None, "wall_seconds": d["wall_seconds"],
                      "command": d["command"], "equivalent_cli": d["equivalent_cli"]}
        keys = [k for k in next(iter(per.values())) if k not in ("command", "equivalent_cli", "rounds")]
        out["methods"][m] = {"seeds": per, **{k: _stats([p[k] for p in per.values()]) for k in keys}}
    return out


def acceptance_lines(num: dict) -> list[str]:
    """The issue's acceptance: the default's delivered k-sparse model against server pruning
    and FedAvg + TopK cut to k, beyond the 3-seed spread (the larger of the two ranges)."""
    out = []
    meth = num["methods"]
    a = meth.get(DEFAULT)
    if a is None:
        return out
    for base in ("server-pruning", "fedavg-topk", "ec", *(m for m in ORDER if m.startswith("sparse-") and m != DEFAULT)):
        b = meth.get(base)
        if b is None:
            continue
        for key, what in (("sparse_model_accuracy", "final"), ("last5_mean", "mean of the last 5 evaluations"),
                          ("at_equal_uplink_bits", "at equal uplink bits")):
            x, y = a[key], b[key]
            if x is None or y is None:
                continue
            diff = 100 * (x["mean"] - y["mean"])
            spread = 100 * max(x["max"] - x["min"], y["max"] - y["min"])
            verdict = "yes" if diff > spread and x["min"] > y["max"] else "no"
            out.append(f"* {LABELS[DEFAULT]} vs {LABELS[base]} ({what}, delivered k-sparse model): "
                       f"{x['mean']:.4f} vs {y['mean']:.4f} ({x['n']} vs {y['n']} seeds), {diff:+.1f} points; "
                       f"spread (the larger min-max range) {spread:.1f} points; beats it by more than the "
                       f"spread, every seed above every seed: **{verdict}**.")
    return out


def cmd_grid_table(out: Path = OUT) -> None:
    grid = load_grid(out)
    if not grid:
        raise SystemExit(f"no grid rows in {out}; run `python -m benchmarks.proxskip_repro grid` first")
    num = grid_numbers(grid)
    (out / "table.json").write_text(json.dumps(num, indent=2) + "\n")
    rounds = sorted({p["rounds"] for m in num["methods"].values() for p in m["seeds"].values()})
    head = ["method", "seeds", f"delivered k-sparse model accuracy, round {'/'.join(map(str, rounds))}",
            "mean of the last 5 evaluations", "same at equal uplink bits", "best (any eval round)", "global model as is",
            "uplink bits/client/round", "downlink bits/client/round", "support change (2nd half, mean)",
            "global nnz (final)", "max |Σh|/Σ|h|", "wall (mean)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m, st in num["methods"].items():
        lines.append("| " + " | ".join([
            LABELS[m], str(len(st["seeds"])), _cell(st["sparse_model_accuracy"]), _cell(st["last5_mean"]),
            _cell(st["at_equal_uplink_bits"]),
            _cell(st["best_sparse_model_accuracy"]), _cell(st["global_accuracy"]),
            f"{st['uplink_bits_per_client_round']['mean']:,.0f}", f"{st['downlink_bits_per_client_round']['mean']:,.0f}",
            _cell(st["support_change_late"], ".3f"), _cell(st["final_global_nnz"], ".0f"),
            "-" if st["max_sum_h_rel"] is None else f"{st['max_sum_h_rel']['max']:.1e}",
            f"{st['wall_seconds']['mean'] / 60:.1f} min"]) + " |")
    budget = ", ".join(f"seed {s}: {b:,.0f}" for s, b in num["budgets"].items())
    text = ["## MNIST logistic regression, 99 % sparsity (k = 78 of d = 7,850): the readings and the baselines",
            "", f"Generated by `python -m benchmarks.proxskip_repro grid-table{out_option(out)}` from `{out.name}/*.json`.",
            "Cells: mean ± sample std (min–max) over the seeds. *Delivered k-sparse model*: the global",
            "model cut to its k largest magnitudes (for the three readings that is what they deliver;",
            "the baselines are cut the same way). *Equal uplink bits*: the last evaluation within the",
            f"smallest total uplink of the k-sparse-uplink methods ({budget} bits, all clients);",
            "the dense-uplink methods (server pruning, ProxSkip) spend it before their first evaluation",
            "(round 5), hence '-'.",
            "*Support change*: the fraction of TopK_k(global)'s support that is new since the previous round.",
            "*max |Σh|/Σ|h|*: the clients' actual control variates, worst round of any seed.", "",
            *lines, "", "### Acceptance (issue 19, MNIST 99 %)", "", *acceptance_lines(num), "",
            "Commands (one per cell; `=` the same run through `python -m fl run`):", ""]
    for m, st in num["methods"].items():
        for s, p in st["seeds"].items():
            text.append(f"* `{p['command']}`  \n  = `{p['equivalent_cli']}`")
    paths = grid_plots(grid, out)
    text += ["", *(f"![{p.stem}]({out.name}/{p.name})" for p in paths), ""]
    (out / "TABLE.md").write_text("\n".join(text) + "\n")
    print(f"wrote {out / 'TABLE.md'}, {out / 'table.json'} and {len(paths)} plot(s)")


def grid_plots(grid: dict, out: Path = OUT) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in ORDER:
        rows = list(grid.get(m, {}).values())
        if not rows:
            continue
        ev = [[x for x in d["metrics"] if x.get("sparse_model_accuracy") is not None] for d in rows]
        n = min(len(e) for e in ev)
        bits = np.mean([[x["cum_uplink_bits"] for x in e[:n]] for e in ev], axis=0)
        acc = np.array([[x["sparse_model_accuracy"] for x in e[:n]] for e in ev])
        line, = ax.plot(bits, acc.mean(0), label=f"{LABELS[m]} ({len(rows)} seeds)")
        ax.fill_between(bits, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_xlabel("cumulative uplink bits (all clients, ledger)")
    ax.set_ylabel("accuracy of the delivered k-sparse model")
    ax.set_title("MNIST logistic regression, 99 % sparsity: mean and min-max over seeds")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "accuracy_vs_uplink_bits.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    fig, ax = plt.subplots(figsize=(8, 5))
    for m in ORDER:
        rows = list(grid.get(m, {}).values())
        if not rows:
            continue
        series = [[x["support_change"] for x in d["metrics"] if x.get("support_change") is not None] for d in rows]
        n = min(len(s) for s in series)
        mean = np.mean([s[:n] for s in series], axis=0)
        ax.plot(np.arange(2, n + 2), np.maximum(mean, 1e-3), label=LABELS[m], lw=1)
    ax.set_yscale("log")
    ax.set_xlabel("round")
    ax.set_ylabel("new fraction of the k-support (0 drawn at 1e-3)")
    ax.set_title("MNIST 99 %: support change of TopK_k(global) per round (mean over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    written.append(out / "support_change_per_round.png")
    fig.savefig(written[-1], dpi=110)
    plt.close(fig)
    return written
