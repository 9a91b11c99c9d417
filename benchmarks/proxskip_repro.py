"""Sparse-ProxSkip reproductions T4 (FEMNIST logistic regression) and T5 (BlogFeedback least squares).

    python -m benchmarks.proxskip_repro lipschitz t4                  # gamma = 1/L of a task
    python -m benchmarks.proxskip_repro run t4 sparse-proxskip --sparsity 0.99
    python -m benchmarks.proxskip_repro run t5 fedavg-topk --sparsity 0.9 --rounds 300
    python -m benchmarks.proxskip_repro table                         # README.md + plots
    python -m benchmarks.proxskip_repro grid --rounds 100             # issue 19: the readings, MNIST 99 %
    python -m benchmarks.proxskip_repro grid-table                    # mnist_grid/TABLE.md + plots

The ``grid`` commands live in ``benchmarks/proxskip_grid.py`` (its docstring says what they run
and measure). The configs pin ``algo.sparse-proxskip.variant = "reset"``, the reading the rows
of ``run`` were made with (docs/sparse_proxskip.md); the grid names each reading itself.

Methods: ``proxskip`` (dense), ``sparse-proxskip`` (client TopK + STE), ``sparse-proxskip-local``
(the same with ``local = true``), ``sparse-proxskip-server`` (server TopK, the failing
variant), ``fedavg-topk`` (top-k of the delta, no error feedback) and ``ec`` (with error
feedback), and the ablation ``sparse-proxskip-noh`` (``control_variates = false``: h_i = 0,
i.e. FedAvg with client-side TopK of the local model). ``run`` is exactly ``python -m fl run
--algorithm ALGO --config benchmarks/configs/proxskip/TASK.toml --set ...`` (the same
:class:`fl.simulation.Simulation`, so the same numbers bit for bit; the row's ``equivalent_cli``
spells it out), writing the engine's run directory to ``benchmarks/results/tmp/proxskip/ROW``
(not committed). At every
evaluated round the runner *also* measures, without touching the run:

* ``pruned_accuracy`` / ``pruned_test_loss``: the global model cut to its k largest entries
  (k = round((1 - s) d), the sparsity of the row), so dense-model baselines can be compared
  as k-sparse models too;
* ``train_full_loss``: the loss of the delivered global model (what ``evaluate`` tests) on
  the whole training set;
* ``client_sum_h_rel``: ``|sum_i h_i| / sum_i |h_i|`` recomputed from the clients' own states
  (for the ProxSkip family), a cross-check of the server's ``server_sum_h_rel``.

Per row it writes ``benchmarks/results/proxskip/ROW.metrics.jsonl`` (engine lines plus those
measurements) and ``ROW.json`` (summary, command, wall time, machine). ``table`` renders
``benchmarks/results/proxskip/README.md`` and the plots from the finished rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs" / "proxskip"
RESULTS = ROOT / "benchmarks" / "results" / "proxskip"
SCRATCH = ROOT / "benchmarks" / "results" / "tmp" / "proxskip"

TASKS = {
    "t4": {"file": "t4_femnist.toml", "title": "T4: FEMNIST multinomial logistic regression "
           "(207 writers, d = 48,670)", "sparsities": (0.9, 0.99)},
    "t5": {"file": "t5_blogfeedback.toml", "title": "T5: BlogFeedback least squares "
           "(10 contiguous clients, d = 281, target log1p)", "sparsities": (0.9,)},
    "mnist": {"file": "mnist_logistic.toml", "title": "MNIST logistic regression, fast case "
              "(10 clients, 3 classes each, d = 7,850)", "sparsities": (0.9, 0.99)},
}
METHODS = ("proxskip", "sparse-proxskip", "sparse-proxskip-local", "sparse-proxskip-server",
           "fedavg-topk", "ec", "sparse-proxskip-noh")
LABELS = {"proxskip": "ProxSkip (dense)", "sparse-proxskip": "Sparse-ProxSkip (reset)",
          "sparse-proxskip-local": "Sparse-ProxSkip-Local",
          "sparse-proxskip-noh": "ablation: Sparse-ProxSkip with h = 0 (FedAvg + client model TopK)",
          "sparse-proxskip-server": "ProxSkip + server TopK", "fedavg-topk": "FedAvg + TopK",
          "ec": "FedAvg + TopK + EF (EC)"}
#: [paper, unverified] (Meinhardt et al., arXiv 2405.20623; the method: docs/sparse_proxskip.md,
#: the target: T4 in docs/reproductions.md): FEMNIST, 100 clients, 99 % sparsity.
PAPER = {"t4": {0.99: {"sparse-proxskip": 0.728, "best baseline": 0.255}}}


def algorithm_and_sets(method: str, sparsity: float | None) -> tuple[str, list[str]]:
    """The registry algorithm of a method and the ``--set`` overrides for its sparsity."""
    if method not in METHODS:
        raise SystemExit(f"unknown method {method!r}; valid: {', '.join(METHODS)}")
    if method == "proxskip":
        return "proxskip", []
    if sparsity is None:
        raise SystemExit(f"{method} needs --sparsity")
    s = round(float(sparsity), 10)
    if method in ("fedavg-topk", "ec"):
        return method, [f"algo.{method}.density={round(1.0 - s, 10)!r}"]
    algo = "sparse-proxskip" if method in ("sparse-proxskip-local", "sparse-proxskip-noh") else method
    sets = [f"algo.{algo}.sparsity={s!r}"]
    if method == "sparse-proxskip-local":
        sets.append("algo.sparse-proxskip.local=true")
    if method == "sparse-proxskip-noh":
        sets.append("algo.sparse-proxskip.control_variates=false")
    return algo, sets


def row_name(task: str, method: str, sparsity: float | None, tag: str = "") -> str:
    return (f"{task}_{method}" + ("" if method == "proxskip" else f"_s{round(100 * sparsity):d}")
            + (f"_{tag}" if tag else ""))


def label(d: dict) -> str:
    """A row's label: the method's, plus its tag (a variant run with extra ``--set`` options).

    A tag naming a Sparse-ProxSkip reading replaces the configs' pinned ``(reset)``.
    """
    base = LABELS[d["method"]]
    tag = d.get("tag")
    reading, _, rest = (tag or "").partition("-")
    if reading in ("latent", "randprox") and base.endswith("(reset)"):
        return base.replace("(reset)", f"({reading})") + (f" [{rest}]" if rest else "")
    return base + (f" [{tag}]" if tag else "")


# -- measurements made alongside a run ---------------------------------------------------------
class Probe:
    """Extra measurements at the engine's evaluation rounds (read-only on the simulation)."""

    def __init__(self, sim, sparsity: float | None) -> None:
        import torch

        self.sim = sim
        ds = sim.dataset
        self.x_train, self.y_train = torch.from_numpy(ds.x_train), torch.from_numpy(ds.y_train)
        self.sparsity = sparsity
        self.lines: dict[int, dict] = {}

    def __call__(self, line: dict) -> None:
        if line.get("test_loss") is None:
            return
        import numpy as np

        from fl.algorithms import proxskip as ps
        from fl.algorithms.base import evaluate

        sim, extra = self.sim, {}
        task = sim.dataset.task
        bs = sim.config.sim.eval_batch_size
        train = sim.algorithm.evaluate(sim.server, sim.cfg, sim.model, self.x_train, self.y_train, task, bs)
        extra["train_full_loss"] = train["test_loss"]
        if "accuracy" in train:
            extra["train_full_accuracy"] = train["accuracy"]
        if self.sparsity is not None:
            w = ps.flatten(sim.server.params)
            k = round(float(np.rint(w.size * (1.0 - self.sparsity))))
            pruned = ps.unflatten(ps.topk_vector(w, k), sim.server.params)
            res = evaluate(sim.model, pruned, sim.x_test, sim.y_test, task, bs)
            extra.update({f"pruned_{key}": v for key, v in res.items()})
        if isinstance(sim.algorithm, ps.ProxSkip) and getattr(sim.cfg, "control_variates", True):
            # the h_i the clients will hold (their pending update applied), from their own states
            xbar = ps.flatten(sim.server.params)
            ratio = np.float32(sim.cfg.p / sim.cfg.lr)
            states = [sim.client_states[c] for c in sorted(sim.client_states)]
            res = ps.sum_h_metrics([st.sent for st in states if st.sent is not None], xbar, ratio)
            extra.update({f"client_{k}": v for k, v in res.items() if k.startswith("sum_h")})
        self.lines[line["round"]] = extra


def machine() -> dict:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "load_average_at_end": list(os.getloadavg()), "finished": time.strftime("%Y-%m-%d %H:%M:%S")}


def cmd_run(args) -> None:
    from fl.config import resolve_config
    from fl.simulation import Simulation

    task = TASKS[args.task]
    if args.method == "proxskip":
        args.sparsity = None          # the dense row is shared by every sparsity's table
    algo, sets = algorithm_and_sets(args.method, args.sparsity)
    sets += list(args.sets)
    config = resolve_config(file=CONFIGS / task["file"], algorithm=algo, rounds=args.rounds, sets=sets)
    if args.tag and not args.sets:
        raise SystemExit("--tag names a variant run: give the --set options that make it one")
    if args.sets and not args.tag:
        raise SystemExit("a run with --set options needs a --tag (its row name), or it would "
                         "overwrite the default row")
    name = row_name(args.task, args.method, args.sparsity, args.tag)
    sim = Simulation(config)
    probe = Probe(sim, args.sparsity)
    start = time.perf_counter()
    result = sim.run(SCRATCH / name, resume=args.resume, on_round=probe)
    wall = time.perf_counter() - start
    RESULTS.mkdir(parents=True, exist_ok=True)
    metrics_path = RESULTS / f"{name}.metrics.jsonl"
    old = {}
    if args.resume and metrics_path.is_file():   # keep the probe's lines of the earlier part
        old = {m["round"]: m for m in map(json.loads, metrics_path.read_text().splitlines()) if m}
    lines = []
    for m in result.metrics:
        extra = probe.lines.get(m["round"]) or {k: v for k, v in old.get(m["round"], {}).items() if k not in m}
        lines.append({**m, **extra})
    metrics_path.write_text("".join(json.dumps(m) + "\n" for m in lines))
    summary = dict(result.summary)
    previous_wall = 0.0
    if args.resume and (RESULTS / f"{name}.json").is_file():
        previous_wall = float(json.loads((RESULTS / f"{name}.json").read_text())["wall_seconds"])
    digest = {
        "row": name, "task": args.task, "method": args.method, "algorithm": algo, "tag": args.tag,
        "sparsity": args.sparsity,
        "command": "python -m benchmarks.proxskip_repro " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "equivalent_cli": (f"python -m fl run --algorithm {algo} --config benchmarks/configs/proxskip/{task['file']}"
                           + (f" --rounds {args.rounds}" if args.rounds else "")
                           + "".join(f" --set {shlex.quote(s)}" for s in sets)),
        "wall_seconds": wall + previous_wall,
        "wall_note": "resumed: the sum of the parts' wall times" if args.resume else "",
        "machine": machine(), "summary": summary,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(digest, indent=2) + "\n")
    last = lines[-1]
    print(f"{name}: round {last['round']} accuracy {last.get('accuracy')} test_loss {last.get('test_loss')}"
          f" sum_h_rel {last.get('server_sum_h_rel')}; {wall:.0f} s")


def cmd_lipschitz(args) -> None:
    import numpy as np

    from fl.algorithms.proxskip import smoothness_constant
    from fl.config import resolve_config
    from fl.simulation import Simulation

    config = resolve_config(file=CONFIGS / TASKS[args.task]["file"], algorithm="proxskip", rounds=1)
    sim = Simulation(config)
    L = smoothness_constant([c.x.numpy() for c in sim.clients], sim.dataset.task)
    rows = max(float(np.sum(c.x.numpy().reshape(len(c.x), -1).astype(np.float64) ** 2, axis=1).max())
               for c in sim.clients) + 1.0
    print(f"{args.task}: {len(sim.clients)} clients, L = {L:.6g}, gamma = 1/L = {1 / L:.6g}; "
          f"max row norm^2 (with bias) = {rows:.6g}")


# -- the table ---------------------------------------------------------------------------------
def load_rows() -> list[dict]:
    rows = []
    for path in sorted(RESULTS.glob("*.json")):
        d = json.loads(path.read_text())
        d["metrics"] = [json.loads(x) for x in (RESULTS / f"{d['row']}.metrics.jsonl").read_text().splitlines() if x]
        rows.append(d)
    return rows


def evaluated(d: dict) -> list[dict]:
    return [m for m in d["metrics"] if m.get("test_loss") is not None]


def at_bits(d: dict, budget: float, key: str = "accuracy") -> float | None:
    """``key`` at the last evaluated round whose cumulative uplink bits are <= budget."""
    best = None
    for m in evaluated(d):
        if m["cum_uplink_bits"] <= budget and m.get(key) is not None:
            best = m[key]
    return best


def _f(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def _row_cells(d: dict, classification: bool) -> list[str]:
    ev = evaluated(d)
    last = ev[-1]
    s = d["summary"]
    n_rounds = s["rounds"]
    up = s["uplink_bits"] / (s["clients"] * n_rounds)
    down = s["downlink_bits"] / (s["clients"] * n_rounds)
    rel = last.get("server_sum_h_rel")
    cells = [label(d), str(n_rounds)]
    if classification:
        cells += [_f(last.get("accuracy")), _f(max(m["accuracy"] for m in ev)),
                  _f(last.get("dense_accuracy", last.get("accuracy"))), _f(last.get("pruned_accuracy"))]
    else:
        cells += [_f(last.get("train_full_loss")), _f(last.get("test_loss")),
                  _f(last.get("pruned_test_loss"))]
    cells += [f"{up:,.0f}", f"{down:,.0f}", f"{s['uplink_bits']:.3g}",
              "-" if rel is None else f"{rel:.2g}", f"{d['wall_seconds'] / 60:.1f} min"]
    return cells


def render(rows: list[dict]) -> list[str]:
    out = []
    for task, spec in TASKS.items():
        trows = [d for d in rows if d["task"] == task]
        if not trows:
            continue
        classification = "accuracy" in evaluated(trows[0])[-1] and evaluated(trows[0])[-1]["accuracy"] is not None
        out += [f"## {spec['title']}", ""]
        for s in spec["sparsities"]:
            srows = [d for d in trows if d["sparsity"] in (s, None)]
            srows.sort(key=lambda d: METHODS.index(d["method"]))
            if not any(d["sparsity"] == s for d in srows):      # only the shared dense row
                continue
            out += [f"### sparsity {100 * s:g} % (k = round({1 - s:.2g} d))", ""]
            head = ["method", "rounds"]
            head += (["accuracy (delivered model)", "best", "accuracy of the dense global model",
                      "accuracy of TopK_k(global)"] if classification else
                     ["train loss (full set)", "test MSE", "test MSE of TopK_k(global)"])
            head += ["uplink bits/client/round", "downlink bits/client/round", "total uplink bits",
                     "final sum-h rel", "wall"]
            out += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
            out += ["| " + " | ".join(_row_cells(d, classification)) + " |" for d in srows]
            out.append("")
            if classification:
                out += acceptance(task, s, srows)
        out += ["Commands (one per row; `=` the same run through `python -m fl run`):", ""]
        for d in sorted(trows, key=lambda d: (d["sparsity"] or 0, METHODS.index(d["method"]))):
            out.append(f"* `{d['row']}`: `{d['command']}`  \n  = `{d['equivalent_cli']}`")
        out.append("")
    return out


def acceptance(task: str, s: float, srows: list[dict]) -> list[str]:
    out = []
    for tag in sorted({d.get("tag", "") for d in srows}):
        by = {d["method"]: d for d in srows if d.get("tag", "") == tag}
        out += _comparisons(task, s, by, f"[{tag}] " if tag else "")
    return out + [""]


def _comparisons(task: str, s: float, by: dict, prefix: str) -> list[str]:
    sp = by.get("sparse-proxskip")
    out = []
    if sp is None:
        return out
    for base in ("fedavg-topk", "ec"):
        b = by.get(base)
        if b is None:
            continue
        budget = min(sp["summary"]["uplink_bits"], b["summary"]["uplink_bits"])
        a, c = at_bits(sp, budget), at_bits(b, budget)
        cp = at_bits(b, budget, "pruned_accuracy")
        diff = _f(None if a is None or c is None else 100 * (a - c), "+.1f")
        diff_p = _f(None if a is None or cp is None else 100 * (a - cp), "+.1f")
        out.append(f"* {prefix}At equal uplink bits ({budget:.4g}): Sparse-ProxSkip (k-sparse model) {_f(a)} vs "
                   f"{LABELS[base]} {_f(c)} with its dense global model ({diff} points), {_f(cp)} with "
                   f"its global model cut to k entries ({diff_p} points).")
    noh = by.get("sparse-proxskip-noh")
    if noh is not None:
        budget = min(sp["summary"]["uplink_bits"], noh["summary"]["uplink_bits"])
        a, c = at_bits(sp, budget), at_bits(noh, budget)
        diff = _f(None if a is None or c is None else 100 * (a - c), "+.1f")
        out.append(f"* {prefix}What the control variates add (ablation, equal uplink bits {budget:.4g}): "
                   f"Sparse-ProxSkip "
                   f"{_f(a)} vs the same with h = 0 {_f(c)} ({diff} points).")
    ref = PAPER.get(task, {}).get(s)
    if ref and not prefix:
        out.append(f"* Paper [unverified, 100 clients]: Sparse-ProxSkip {ref['sparse-proxskip']:.3f} vs "
                   f"best baseline {ref['best baseline']:.3f}.")
    return out


def plots(rows: list[dict]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    t4 = [d for d in rows if d["task"] == "t4"]
    if t4:
        sps = TASKS["t4"]["sparsities"]
        fig, axes = plt.subplots(1, len(sps), figsize=(6 * len(sps), 4.5), squeeze=False)
        for ax, s in zip(axes[0], sps):
            for d in sorted((d for d in t4 if d["sparsity"] in (s, None)), key=lambda d: METHODS.index(d["method"])):
                ev = evaluated(d)
                ax.plot([m["cum_uplink_bits"] for m in ev], [m["accuracy"] for m in ev], label=label(d))
            ax.set_xscale("log")
            ax.set_xlabel("cumulative uplink bits (all clients, ledger)")
            ax.set_ylabel("test accuracy (delivered model)")
            ax.set_title(f"T4 FEMNIST, sparsity {100 * s:g} %")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = RESULTS / "t4_accuracy_vs_uplink_bits.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for d in sorted(t4, key=lambda d: (METHODS.index(d["method"]), d["sparsity"] or 0)):
            ms = [m for m in d["metrics"] if m.get("server_sum_h_norm") is not None]
            if not ms:
                continue
            tag = "" if d["sparsity"] is None else f" s={100 * d['sparsity']:g}%"
            ax.plot([m["round"] for m in ms], [max(m["server_sum_h_norm"], 1e-12) for m in ms],
                    label=label(d) + tag)
        ax.set_yscale("log")
        ax.set_xlabel("round (after that round's communication)")
        ax.set_ylabel("||sum_i h_i||")
        ax.set_title("T4 FEMNIST: zero-sum invariant of the control variates")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = RESULTS / "t4_sum_h_vs_round.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    t5 = [d for d in rows if d["task"] == "t5"]
    if t5:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for d in sorted(t5, key=lambda d: METHODS.index(d["method"])):
            ev = evaluated(d)
            axes[0].plot([m["round"] for m in ev], [m["train_full_loss"] for m in ev], label=label(d))
            axes[1].plot([m["round"] for m in ev], [m["test_loss"] for m in ev], label=label(d))
        for ax, what in zip(axes, ("training loss (MSE, whole training set)", "test MSE (60 test files)")):
            ax.set_yscale("log")
            ax.set_xlabel("communication round")
            ax.set_ylabel(what)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
        axes[0].set_title("T5 BlogFeedback, sparsity 90 %: delivered model")
        fig.tight_layout()
        path = RESULTS / "t5_loss_vs_round.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def cmd_table(args) -> None:
    rows = load_rows()
    head = (RESULTS / "HEAD.md").read_text() if (RESULTS / "HEAD.md").is_file() else "# Sparse-ProxSkip reproductions\n"
    body = render(rows)
    paths = plots(rows)
    text = head.rstrip() + "\n\n" + "\n".join(body) + "\n" + "".join(f"![{p.stem}]({p.name})\n\n" for p in paths)
    (RESULTS / "README.md").write_text(text)
    print(f"wrote {RESULTS / 'README.md'} and {len(paths)} plot(s)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxskip_repro", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    run.add_argument("task", choices=sorted(TASKS))
    run.add_argument("method", choices=METHODS)
    run.add_argument("--sparsity", type=float)
    run.add_argument("--rounds", type=int)
    run.add_argument("--set", dest="sets", action="append", default=[],
                     help="extra config override (needs --tag), e.g. algo.lr=0.3")
    run.add_argument("--tag", default="", help="row-name suffix of a variant run made with --set")
    run.add_argument("--resume", action="store_true")
    lip = sub.add_parser("lipschitz")
    lip.add_argument("task", choices=sorted(TASKS))
    sub.add_parser("table")
    from . import proxskip_grid as grid      # the issue-19 grid: benchmarks/proxskip_grid.py

    g = sub.add_parser("grid", help="run the missing cells of the MNIST 99 %% grid")
    g.add_argument("--methods", nargs="+", default=list(grid.GRID), choices=list(grid.GRID))
    g.add_argument("--seeds", nargs="+", type=int, default=list(grid.SEEDS))
    g.add_argument("--rounds", type=int, default=grid.ROUNDS)
    g.add_argument("--jobs", type=int, default=2)
    g.add_argument("--cells", nargs="+", help="METHOD:SEED cells in the order to run them")
    g.add_argument("--after", nargs="+", type=int, default=[], help="pids holding a slot until they exit")
    out_help = "results directory, relative to the repository root (default: the committed 100-round grid)"
    g.add_argument("--out", help=out_help)
    gr = sub.add_parser("grid-run", help="one cell of the grid, in this process")
    gr.add_argument("method", choices=list(grid.GRID))
    gr.add_argument("--seed", type=int, default=0)
    gr.add_argument("--rounds", type=int, default=grid.ROUNDS)
    gr.add_argument("--out", help=out_help)
    gt = sub.add_parser("grid-table", help="the grid's table (markdown + json) and plots")
    gt.add_argument("--out", help=out_help)
    args = parser.parse_args(argv)
    if args.command == "grid":
        return grid.cmd_grid(args.methods, args.seeds, args.rounds, args.jobs, args.cells, args.after,
                             grid.resolve_out(args.out))
    if args.command == "grid-run":
        return grid.cmd_grid_run(args.method, args.seed, args.rounds, grid.resolve_out(args.out))
    if args.command == "grid-table":
        return grid.cmd_grid_table(grid.resolve_out(args.out))
    {"run": cmd_run, "lipschitz": cmd_lipschitz, "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
