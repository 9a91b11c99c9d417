"""T8 reproduction, scaled down: SparsyFed vs Top-K pruning vs dense FedAvg (docs/sparsyfed.md, T8).

    python -m benchmarks.sparsyfed_repro run --setup mnist_lda0.1 --method sparsyfed
    python -m benchmarks.sparsyfed_repro run --setup mnist_lda0.1 --method topk-prune
    python -m benchmarks.sparsyfed_repro run --setup mnist_lda0.1 --method dense
    python -m benchmarks.sparsyfed_repro report

Setups are the TOML files in ``benchmarks/configs/sparsyfed`` (``mnist_lda0.1``,
``mnist_lda1.0``, ``femnist_writers``, and ``mnist_lda0.1_flarecnn``: LDA 0.1 with the larger
FLARE CNN), and the paper's own scale, ResNet-18 on CIFAR (:data:`CIFAR_SETUPS`:
``cifar10_lda0.1``, ``cifar10_lda1.0``, ``cifar100_lda0.1``, ``cifar100_lda1.0``; official
hyperparameters, 700 rounds), which need the CIFAR python-pickle files (``--data-dir DIR``:
``DIR/cifar-10-batches-py/``, ``DIR/cifar-100-python/``; nothing is downloaded) and a GPU to
finish (``--device cuda``)::

    python -m benchmarks.sparsyfed_repro run --setup cifar10_lda0.1 --method sparsyfed \
        --device cuda --data-dir DIR [--rounds N]
 Methods: ``sparsyfed`` and ``topk-prune`` (S = 0.95 from the config), ``dense`` =
``topk-prune`` with ``algo.sparsity = 0`` (the same training code without pruning, Dense
messages: the code base's dense FedAvg baseline, docs/sparsyfed.md); the ablation
``sparsyfed-noact`` = ``sparsyfed`` with ``algo.prune_activations = false``; the sensitivity runs
``sparsyfed-lrX`` / ``topk-prune-lrX`` (X in ``LR_SWEEP``) = the method with start lr
``algo.lr = X`` instead of the configs' 0.1.

``run`` is ``python -m fl run --config <setup>.toml --algorithm <alg> [--set ...] --out
benchmarks/results/sparsyfed/<setup>_<method>`` (``--device``, ``--data-dir`` and ``--set``
are passed on; ``--out`` writes elsewhere) plus bookkeeping: the exact commands and the
wall time go to ``command.json``; once the run is complete the checkpoint, ``model.sc`` and
``ledger.jsonl`` are deleted (not results; the ledger's totals are in ``summary.json`` and its
per-round sums in ``metrics.jsonl``). ``report`` reads every run directory and writes
``README.md``, ``results.json`` and PNG plots (density, regrowth, accuracy vs uplink bits).
Every number there is read from the runs' own files.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from benchmarks._runner import load_run, run_recorded
from benchmarks.sparsyfed_timing import cifar_section

ROOT = Path(__file__).resolve().parent.parent
CONFIGS = Path("benchmarks/configs/sparsyfed")
RESULTS = Path("benchmarks/results/sparsyfed")
CIFAR_SETUPS = ("cifar10_lda0.1", "cifar10_lda1.0", "cifar100_lda0.1", "cifar100_lda1.0")
SETUPS = ("mnist_lda0.1", "mnist_lda1.0", "femnist_writers", "mnist_lda0.1_flarecnn") + CIFAR_SETUPS
METHODS = {"sparsyfed": ("sparsyfed", []), "topk-prune": ("topk-prune", []),
           "dense": ("topk-prune", ["algo.sparsity=0.0"]),
           # ablation (not part of T8): Powerprop and pruning, no activation pruning
           "sparsyfed-noact": ("sparsyfed", ["algo.prune_activations=false"]),
}
LABELS = {"sparsyfed": "SparsyFed", "topk-prune": "Top-K", "dense": "dense FedAvg",
          "sparsyfed-noact": "SparsyFed w/o act. pruning (ablation)"}
# start-lr sweep (the configs use 0.1; the official 0.5 diverges on the small net): each of
# SparsyFed and Top-K at these start lrs, so that the accuracy comparison can also be read
# "best start lr per method" (Powerprop rescales the gradient by alpha |v|^(alpha - 1) < 1
# for |v| < 0.4, so SparsyFed's effective step on w is smaller at the same lr)
LR_SWEEP = (0.15, 0.2, 0.3, 0.4)
for _base, _label in (("sparsyfed", "SparsyFed"), ("topk-prune", "Top-K")):
    for _lr in LR_SWEEP:
        METHODS[f"{_base}-lr{_lr}"] = (_base, [f"algo.lr={_lr}"])
        LABELS[f"{_base}-lr{_lr}"] = f"{_label}, start lr {_lr} (sweep)"
BASE_LR = 0.1     # the configs' start lr (algo.lr)
AFTER = 10        # "after round 10": rounds 11.. for the density figures
LAST = 5          # final accuracy = mean of the last LAST evaluated rounds (and the last one)


def run_dir(setup: str, method: str, seed: int | None = None) -> Path:
    """``<setup>_<method>`` for the configs' seed; ``<setup>_<method>_seed<N>`` for a repeat."""
    return RESULTS / (f"{setup}_{method}" if seed is None else f"{setup}_{method}_seed{seed}")


def fl_argv(setup: str, method: str, rounds: int | None, resume: bool, seed: int | None = None, *,
            device: str | None = None, data_dir: str | None = None, sets: tuple[str, ...] = (),
            out: Path | None = None) -> list[str]:
    """The ``python -m fl`` arguments of one row; ``sets`` come after the method's own."""
    alg, method_sets = METHODS[method]
    argv = ["run", "--config", str(CONFIGS / f"{setup}.toml"), "--algorithm", alg]
    for s in (*method_sets, *sets):
        argv += ["--set", s]
    argv += ["--out", str(out if out is not None else run_dir(setup, method, seed)), "--no-progress"]
    if device is not None:
        argv += ["--device", device]
    if data_dir is not None:
        argv += ["--data-dir", str(data_dir)]
    if rounds is not None:
        argv += ["--rounds", str(rounds)]
    if seed is not None:
        argv += ["--seed", str(seed)]
    if resume:
        argv.append("--resume")
    return argv


def cmd_run(args) -> int:
    # paths the user typed are relative to where they typed them; the runner works from the root
    data_dir = None if args.data_dir is None else str(Path(args.data_dir).expanduser().resolve())
    out = None if args.out is None else Path(args.out).expanduser().resolve()
    os.chdir(ROOT)
    argv = fl_argv(args.setup, args.method, args.rounds, args.resume, args.seed, device=args.device,
                   data_dir=data_dir, sets=tuple(args.sets), out=out)
    return run_recorded(argv, out if out is not None else run_dir(args.setup, args.method, args.seed),
                        "python -m benchmarks.sparsyfed_repro " + " ".join(_argv(args)), resume=args.resume,
                        not_results=("checkpoint.ckpt", "model.sc", "ledger.jsonl"))


def _argv(args) -> list[str]:
    out = ["run", "--setup", args.setup, "--method", args.method]
    if args.device is not None:
        out += ["--device", args.device]
    if args.rounds is not None:
        out += ["--rounds", str(args.rounds)]
    if args.seed is not None:
        out += ["--seed", str(args.seed)]
    if args.data_dir is not None:
        out += ["--data-dir", args.data_dir]
    for s in args.sets:
        out += ["--set", s]
    if args.out is not None:
        out += ["--out", args.out]
    if args.resume:
        out.append("--resume")
    return out


# -- report -------------------------------------------------------------------------------------
def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def seed_runs(setup: str, method: str) -> dict[int, dict]:
    """The finished runs of one row by seed: the configs' seed 0 and every ``_seed<N>`` repeat."""
    out = {}
    if (run := load_run(run_dir(setup, method))) is not None:
        out[run["summary"]["config"]["seed"]] = run
    for path in sorted(RESULTS.glob(f"{setup}_{method}_seed*")):
        seed = path.name.rsplit("_seed", 1)[1]
        if path.is_dir() and seed.isdigit() and (run := load_run(path)) is not None:
            out[int(seed)] = run
    return dict(sorted(out.items()))


def row(setup: str, method: str, run: dict) -> dict:
    m, s = run["metrics"], run["summary"]
    accs = [x["accuracy"] for x in m if x.get("accuracy") is not None]
    after = [x for x in m if x["round"] > AFTER]
    return {
        "setup": setup, "method": method, "seed": s["config"]["seed"], "rounds": s["rounds"],
        "final_accuracy": s["final_accuracy"], "best_accuracy": s["best_accuracy"],
        f"accuracy_last{LAST}": _mean(accs[-LAST:]),
        f"accuracy_last{LAST}_range": (max(accs[-LAST:]) - min(accs[-LAST:])) if accs else None,
        "density_after_round_10": _mean([x.get("server_density") for x in after]),
        "density_round_11": after[0].get("server_density") if after else None,
        "density_final": m[-1].get("server_density"),
        "density_max_after_round_10": max((x["server_density"] for x in after), default=None),
        "regrowth_mean": _mean([x.get("server_regrowth") for x in m if x["round"] >= 2]),
        "regrowth_mean_after_round_10": _mean([x.get("server_regrowth") for x in after]),
        "mask_iou_mean": _mean([x.get("server_mask_iou") for x in m if x["round"] >= 2]),
        "act_density_mean": _mean([x.get("server_act_density") for x in m if x["round"] >= 2]),
        "uplink_bits_per_client_round": s["uplink_bits_per_client_round"],
        "downlink_bits_per_client_round": s["downlink_bits"] / max(1, s["uplink_messages"]),
        "uplink_bpp": s["uplink_bpp"], "num_params": s["num_params"],
        "dropped_updates": s["dropped_updates"],
        "wall_seconds": run["command"].get("wall_seconds", s["wall_seconds"]),
        "command": run["command"].get("command"), "fl_command": run["command"].get("fl_command"),
    }


def _plot(runs: dict, path_prefix: Path, repeats: dict) -> list[str]:
    try:
        import matplotlib
    except ImportError:
        return []
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    setups = [s for s in SETUPS if any(k[0] == s for k in runs)]
    for what, key, ylabel in (("density", "server_density", "global density after aggregation"),
                              ("regrowth", "server_regrowth", "regrowth (newly non-zero / N)")):
        fig, axes = plt.subplots(1, len(setups), figsize=(5 * len(setups), 4), squeeze=False)
        for ax, setup in zip(axes[0], setups):
            for i, method in enumerate(METHODS):
                if method not in ("sparsyfed", "topk-prune") or (setup, method) not in runs:
                    continue
                m = runs[(setup, method)]["metrics"]
                ax.plot([x["round"] for x in m], [x.get(key) for x in m], color=f"C{i}", label=LABELS[method])
            if what == "density":
                ax.axhline(0.05, color="gray", lw=0.8, ls="--", label="1 - S")
            ax.set(xlabel="round", ylabel=ylabel, title=setup)
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(f"{path_prefix}_{what}.png", dpi=110)
        plt.close(fig)
        written.append(f"{path_prefix.name}_{what}.png")
    fig, axes = plt.subplots(1, len(setups), figsize=(5 * len(setups), 4), squeeze=False)
    for ax, setup in zip(axes[0], setups):
        for i, method in enumerate(METHODS):
            if (setup, method) not in runs or "-lr" in method:    # the sweep has its own table
                continue
            m = [x for x in runs[(setup, method)]["metrics"] if x.get("accuracy") is not None]
            ax.plot([x["cum_uplink_bits"] / 8e6 for x in m], [x["accuracy"] for x in m], color=f"C{i}",
                    label=LABELS[method])
        ax.set(xlabel="cumulative uplink (MB, all clients)", ylabel="test accuracy", title=setup, xscale="log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(f"{path_prefix}_accuracy_vs_bits.png", dpi=110)
    plt.close(fig)
    written.append(f"{path_prefix.name}_accuracy_vs_bits.png")
    setups = [s for s in SETUPS if any(k[0] == s for k in repeats)]
    if setups:       # accuracy per round of every seed of the repeated rows
        fig, axes = plt.subplots(1, len(setups), figsize=(9 * len(setups), 4), squeeze=False)
        for ax, setup in zip(axes[0], setups):
            repeated = [m for m in METHODS if (setup, m) in repeats]
            late = []       # accuracies after the first fifth of the rounds set the y range
            for i, method in enumerate(repeated):
                for j, (seed, run) in enumerate(repeats[(setup, method)].items()):
                    m = [x for x in run["metrics"] if x.get("accuracy") is not None]
                    late += [x["accuracy"] for x in m if x["round"] > run["summary"]["rounds"] / 5]
                    ax.plot([x["round"] for x in m], [x["accuracy"] for x in m], color=f"C{i % 10}",
                            ls=("-", "--", ":", "-.")[j % 4], lw=1.2, label=f"{LABELS[method]}, seed {seed}")
            ax.set(xlabel="round", ylabel="test accuracy", title=f"{setup}: seed repeats",
                   ylim=(max(0.0, min(late, default=0.0) - 0.02), 1.0))
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        fig.tight_layout()
        fig.savefig(f"{path_prefix}_seeds.png", dpi=110)
        plt.close(fig)
        written.append(f"{path_prefix.name}_seeds.png")
    return written


def _f(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def acceptance(rows: dict) -> list[str]:
    out = []
    for setup in SETUPS:
        sf, tk = rows.get((setup, "sparsyfed")), rows.get((setup, "topk-prune"))
        if sf is None or tk is None:
            continue
        rs, rt = sf["regrowth_mean"], tk["regrowth_mean"]
        ok = rs is not None and rt is not None and (rt >= 10 * rs) and rt > 0
        ratio = "inf (SparsyFed's regrowth is 0)" if rs == 0 else f"{rt / rs:.1f}x"
        out.append(f"* {setup}: SparsyFed regrowth >= 10x lower than Top-K's: **{'met' if ok else 'NOT met'}** "
                   f"(mean per-round regrowth, rounds 2..: SparsyFed {rs:.2e}, Top-K {rt:.2e}; ratio {ratio}).")
        d = sf["density_after_round_10"]
        within = sf["density_max_after_round_10"] is not None and sf["density_max_after_round_10"] - 0.05 <= 0.02
        rises = tk["density_after_round_10"] is not None and tk["density_after_round_10"] > d
        tk_rise = tk["density_final"] - 0.05
        out.append(f"* {setup}: SparsyFed global density within 2 points of 1 - S = 0.05 after round 10: "
                   f"**{'met' if within else 'NOT met'}** (mean {d:.4f}, max {sf['density_max_after_round_10']:.4f}); "
                   f"Top-K's rises above SparsyFed's: **{'met' if rises else 'NOT met'}** (mean after round 10 "
                   f"{tk['density_after_round_10']:.4f}, final {tk['density_final']:.4f}, i.e. "
                   f"{100 * tk_rise:+.2f} points over 1 - S"
                   + ("; a small rise, not the 'marked' rise T8 expects" if tk_rise < 0.02 else "") + ").")
        if setup.startswith("mnist_lda0.1"):
            a, b = sf[f"accuracy_last{LAST}"], tk[f"accuracy_last{LAST}"]
            out.append(f"* {setup}: SparsyFed accuracy >= Top-K: **{'met' if a >= b else 'NOT met'}** "
                       f"(mean of the last {LAST} rounds: SparsyFed {a:.4f}, Top-K {b:.4f}; final "
                       f"{sf['final_accuracy']:.4f} vs {tk['final_accuracy']:.4f}).")
    return out


def _at_lr(base: str, lr: float) -> str:
    """The method name of ``base`` (``sparsyfed`` / ``topk-prune``) at start lr ``lr``."""
    return base if lr == BASE_LR else f"{base}-lr{lr}"


def _sweep(rows: dict, setup: str) -> tuple[dict, dict]:
    """``({method: {lr: accuracy}}, {(method, lr): spread})`` of one setup's start-lr sweep."""
    table: dict = {}
    spread: dict = {}
    for base in ("sparsyfed", "topk-prune"):
        for lr in (BASE_LR,) + LR_SWEEP:
            r = rows.get((setup, _at_lr(base, lr)))
            if r is not None:
                table.setdefault(base, {})[lr] = r[f"accuracy_last{LAST}"]
                spread[(base, lr)] = r[f"accuracy_last{LAST}_range"]
    return table, spread


def _best(table: dict) -> tuple[tuple[float, float], tuple[float, float]]:
    """``((lr, accuracy) of SparsyFed, (lr, accuracy) of Top-K)``, each at its best start lr."""
    s, t = (max(table[b].items(), key=lambda kv: kv[1]) for b in ("sparsyfed", "topk-prune"))
    return s, t


def lr_sweep(rows: dict, seeded: dict) -> list[str]:
    """The start-lr sweep as a table, and the accuracy criterion with each method at its best lr."""
    out = []
    for setup in SETUPS:
        table, spread = _sweep(rows, setup)
        if not any(len(v) > 1 for v in table.values()):
            continue
        lrs = sorted({lr for v in table.values() for lr in v})
        out += ["", f"### Start-lr sweep ({setup}; accuracy, mean of the last {LAST} rounds)", "",
                "| method | " + " | ".join(f"lr {lr}" for lr in lrs) + " |",
                "|---|" + "---:|" * len(lrs)]
        for base, accs in table.items():
            out.append(f"| {LABELS[base]} | " + " | ".join(_f(accs.get(lr)) for lr in lrs) + " |")
        if len(table) == 2:
            (lr_s, a_s), (lr_t, a_t) = _best(table)
            out += ["", f"* {setup}, each method at its best start lr of the sweep: SparsyFed accuracy >= Top-K: "
                        f"**{'met' if a_s >= a_t else 'NOT met'}** (SparsyFed {a_s:.4f} at lr {lr_s}, "
                        f"Top-K {a_t:.4f} at lr {lr_t}; margin {100 * (a_s - a_t):+.2f} points, against a spread "
                        f"of {100 * spread[('sparsyfed', lr_s)]:.2f} / {100 * spread[('topk-prune', lr_t)]:.2f} "
                        f"points between each run's last {LAST} evaluations; one seed)"
                        + (", superseded by the seed repeats below." if all(
                            (setup, _at_lr(b, lr)) in seeded
                            for b, lr in (("sparsyfed", lr_s), ("topk-prune", lr_t))) else ".")]
    return out


# two-sided 95 % Student-t quantiles t(0.975, df) for the interval of a mean paired difference over
# df + 1 seeds (standard table values)
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def _paired(seeded: dict, setup: str, a: str, b: str):
    """Rows ``a`` (SparsyFed) and ``b`` (Top-K) on their common seeds: ``(seeds, mean a, mean b,
    paired differences in points, their mean, the 95 % t-interval's half width)``, or None."""
    key = f"accuracy_last{LAST}"
    if (setup, a) not in seeded or (setup, b) not in seeded:
        return None
    common = sorted(set(seeded[(setup, a)]) & set(seeded[(setup, b)]))
    if len(common) < 2 or len(common) - 1 not in T975:
        return None
    mean_a = statistics.mean(seeded[(setup, a)][x][key] for x in common)
    mean_b = statistics.mean(seeded[(setup, b)][x][key] for x in common)
    diffs = [100 * (seeded[(setup, a)][x][key] - seeded[(setup, b)][x][key]) for x in common]
    mean_d = statistics.mean(diffs)
    half = T975[len(common) - 1] * statistics.stdev(diffs) / len(common) ** 0.5
    return common, mean_a, mean_b, diffs, mean_d, half


def finding(rows: dict, seeded: dict) -> list[str]:
    """The scaled-down result in two lines, from the same numbers as the sections below."""
    out = []
    big = [(m, p) for m in METHODS if METHODS[m][0] == "sparsyfed"
           if (p := _paired(seeded, "mnist_lda0.1_flarecnn", m, "topk-prune")) is not None]
    if big:
        m, (common, mean_a, mean_b, _, mean_d, half) = max(big, key=lambda mp: mp[1][1])
        lr = m.split("-lr")[1] if "-lr" in m else BASE_LR
        out.append(f"* FLARE CNN (582,026 parameters), MNIST LDA 0.1, over {len(common)} seeds: SparsyFed "
                   f"at start lr {lr} (its best) {mean_a:.4f} vs Top-K {mean_b:.4f}, **{mean_d:+.2f} points** "
                   f"(95 % t-interval [{mean_d - half:+.2f}, {mean_d + half:+.2f}]).")
    table, _ = _sweep(rows, "mnist_lda0.1")
    if len(table) == 2:
        (lr_s, a_s), (lr_t, a_t) = _best(table)
        out.append(f"* LeNet (44,426 parameters), MNIST LDA 0.1, each method at its best start lr, one seed: "
                   f"SparsyFed {a_s:.4f} (lr {lr_s}) vs Top-K {a_t:.4f} (lr {lr_t}), "
                   f"**{100 * (a_s - a_t):+.2f} points**.")
    if out:
        out.append("* So at this scale SparsyFed does not beat Top-K; the gap closes as the model grows. "
                   "Whether it turns at the paper's ResNet-18 / CIFAR is what the CIFAR setups below are for.")
    return out


def seed_repeats(seeded: dict) -> list[str]:
    """Rows repeated over seeds: a table per setup, and each SparsyFed row against each Top-K row on
    their common seeds as a paired comparison (a seed fixes partition, client sampling and init, so
    both methods see the same clients in the same order)."""
    key, out = f"accuracy_last{LAST}", []
    for setup in SETUPS:
        methods = [m for m in METHODS if len(seeded.get((setup, m), {})) > 1]
        if not methods:
            continue
        seeds = sorted({seed for m in methods for seed in seeded[(setup, m)]})
        out += ["", f"### Seed repeats ({setup}; accuracy, mean of the last {LAST} evaluations)", "",
                "| method | " + " | ".join(f"seed {seed}" for seed in seeds) + " | mean | sd |",
                "|---|" + "---:|" * (len(seeds) + 2)]
        for m in methods:
            accs = {seed: r[key] for seed, r in seeded[(setup, m)].items()}
            out.append(f"| {LABELS[m]} | " + " | ".join(_f(accs.get(seed)) for seed in seeds) +
                       f" | {statistics.mean(accs.values()):.4f} | {statistics.stdev(accs.values()):.4f} |")
        out.append("")
        for a in (m for m in methods if METHODS[m][0] == "sparsyfed"):
            for b in (m for m in methods if METHODS[m][0] == "topk-prune"):
                pair = _paired(seeded, setup, a, b)
                if pair is None:
                    continue
                common, mean_a, mean_b, diffs, mean_d, half = pair
                verdict = ("SparsyFed is higher (the interval lies above 0)" if mean_d - half > 0 else
                           "Top-K is higher (the interval lies below 0)" if mean_d + half < 0 else
                           "the two are not distinguishable at this number of seeds (the interval contains 0)")
                out.append(f"* {setup}, {LABELS[a]} vs {LABELS[b]} on seeds {', '.join(map(str, common))}: "
                           f"SparsyFed mean accuracy >= Top-K's: **{'met' if mean_a >= mean_b else 'NOT met'}** "
                           f"({mean_a:.4f} vs {mean_b:.4f}; paired differences "
                           f"{', '.join(f'{d:+.2f}' for d in diffs)} points, mean {mean_d:+.2f}, 95 % t-interval "
                           f"[{mean_d - half:+.2f}, {mean_d + half:+.2f}] points): {verdict}.")
    return out


def readme(runs: dict, rows: dict, plots: list[str], seeded: dict) -> str:
    lines = [
        "# SparsyFed vs Top-K pruning (T8, scaled down)",
        "",
        "Generated by `python -m benchmarks.sparsyfed_repro report` from the runs in this directory; every",
        "number is read from their `metrics.jsonl` / `summary.json`. Spec: `docs/sparsyfed.md` and T8 in",
        "`docs/reproductions.md`.",
        "Implementation: `fl/powerprop.py`, `fl/algorithms/sparsyfed.py` (deviations in their docstrings).",
        "",
        "**Scaled down** from the paper (ResNet-18 / CIFAR, 700 rounds): the LeNet-style `small-cnn` (44,426",
        "parameters on MNIST, 48,846 on FEMNIST), 100 rounds on MNIST and 200 on FEMNIST (see the table), CPU,",
        "seed 0; rows repeated on other seeds are under 'Seed repeats' below (a seed draws the partition,",
        "the client sample, the init and the batches). `mnist_lda0.1_flarecnn` repeats the LDA 0.1",
        "setting with T8's other named model, the FLARE CNN with one softmax (582,026 parameters, 13x the",
        "LeNet; evaluated every 5 rounds), as a step towards the paper's over-parameterised regime (its config",
        "file says why).",
        "",
        "## Finding (scaled down)",
        "",
        *finding(rows, seeded),
        "",
        "## Setting",
        "",
        "* MNIST (60k/10k, Normalize(0.5, 0.5)), 100 equal-size LDA clients (Dirichlet alpha 0.1 or 1.0), 10 per",
        "  round; FEMNIST: the 207 LEAF writers as clients, 10 per round, 62 classes.",
        "* Local: SGD, no momentum, weight decay 1e-3, batch 16, 1 epoch; lr 0.1 -> 0.01 exponential over 700",
        "  rounds (official start 0.5 retuned: it diverges on this net, see Notes), so over 100 rounds lr goes",
        "  0.1 -> 0.057 (0.1 -> 0.052 over FEMNIST's 200).",
        "* SparsyFed: Powerprop alpha = 1.25 on every conv/linear, activation pruning, official init.",
        "  Top-K: plain layers, same pruning. Both: global magnitude pruning of all conv/linear weights to",
        "  S = 0.95 after local training; server: sample-weighted FedAvg of the sparse local models, not re-pruned.",
        "  Dense FedAvg: `topk-prune` with S = 0 (the same training, no pruning).",
        "* Uplink: conv/linear weights as `sparsecodec.TopK(k=\"nnz\")` frames (positions + fp32 values),",
        "  biases dense fp32, one bundle with CRC; downlink: the global model coded the same way. Bits are the",
        "  channel ledger's (exact bytes).",
        "* Density / regrowth / IoU are over the conv/linear weights (N); regrowth = entries zero in the previous",
        "  global model and non-zero after aggregation, / N; means over rounds 2.. (round 1 starts dense).",
        "",
        "## Results",
        "",
        f"| setup | method | rounds | final acc | acc (mean last {LAST}) | density (mean after r10) | density final "
        "| regrowth (mean) | mask IoU (mean) | uplink bits/client/round | wall time |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for setup in SETUPS:
        for method in METHODS:
            r = rows.get((setup, method))
            if r is None:
                continue
            lines.append(f"| {setup} | {LABELS[method]} | {r['rounds']} | {_f(r['final_accuracy'])} | "
                         f"{_f(r[f'accuracy_last{LAST}'])} | {_f(r['density_after_round_10'])} | "
                         f"{_f(r['density_final'])} | {_f(r['regrowth_mean'], '.2e')} | {_f(r['mask_iou_mean'])} | "
                         f"{r['uplink_bits_per_client_round']:,.0f} | {r['wall_seconds'] / 60:.1f} min |")
    lines += ["", "## Acceptance (issue 7)", ""] + acceptance(rows)
    lines += ["", "## Notes", "",
              "* **SparsyFed's regrowth is exactly 0 by construction** (`docs/sparsyfed.md`; FedAvg, server lr 1): a zero",
              "  latent weight gets an exactly-zero gradient and zero weight decay, so every client's pruned model",
              "  lies inside the global support it received, and so does their mean. The global density therefore",
              "  only falls towards 1 - S and the mask freezes within a few rounds (IoU -> 1). The '>= 10x' criterion",
              "  is met trivially (0 vs > 0); the paper's non-zero '200x smaller' figure cannot be reproduced by",
              "  this construction.",
              "* Start lr: with the official 0.5 both methods diverged on this net in a 4-round probe (MNIST LDA 0.1:",
              "  a client with non-finite weights in round 1 for SparsyFed, a round-1 training loss of ~1e6 for",
              "  Top-K, test accuracy ~0.10 after 4 rounds for both). In an 8-round probe lr 0.1 beat 0.05 for both",
              "  (round-8 accuracy SparsyFed 0.24 vs 0.13, Top-K 0.44 vs 0.20), so the configs use 0.1; the",
              "  start-lr sweep below (0.1 to 0.4, one seed, 100 rounds) checks that the comparison does not hinge",
              "  on that choice.",
              "* All runs here except the FLARE-CNN SparsyFed start-lr 0.3 rows (seeds 0-2) predate commit 54d551e,",
              "  which fixed a round-1 deviation: while a conv layer was still dense, `fl/powerprop.py` stored the",
              "  first batch's min |x| as its activation threshold and later round-1 batches dropped the inputs",
              "  below it (the official code stores no threshold while the sparsity is 0). Round-1 saved-activation",
              "  densities of 0.99999 in `metrics.jsonl` show it; rounds 2.. are unaffected (every layer is sparse",
              "  after the round-1 pruning).",
              "* Global magnitude pruning on LeNet leaves fc1 (69 % of the weights, smallest init scale) at < 1 %",
              "  density; activation pruning then keeps < 1 % of fc1's saved inputs.",
              "* The `sparsyfed-noact` row (if present) is an ablation and the `*-lrX` rows a start-lr sweep, not",
              "  part of T8's fixed setting; only the 'best start lr' line and the seed repeats below use the sweep."]
    for setup in SETUPS:
        base, abl = rows.get((setup, "sparsyfed")), rows.get((setup, "sparsyfed-noact"))
        if base is not None and abl is not None:
            lines.append(f"* Ablation ({setup}): without activation pruning SparsyFed reaches "
                         f"{abl[f'accuracy_last{LAST}']:.4f} (mean of the last {LAST} rounds) against "
                         f"{base[f'accuracy_last{LAST}']:.4f} with it, at the same density and regrowth.")
    small, large = ([rows.get((setup, m)) for m in ("sparsyfed", "topk-prune")]
                    for setup in ("mnist_lda0.1", "mnist_lda0.1_flarecnn"))
    if None not in small + large:
        gap = [100 * (t[f"accuracy_last{LAST}"] - f[f"accuracy_last{LAST}"]) for f, t in (small, large)]
        lines += [f"* Model size (LDA 0.1, start lr 0.1): Top-K's lead over SparsyFed shrinks from {gap[0]:.1f} "
                  f"points with the LeNet ({small[0]['num_params']:,} parameters) to {gap[1]:.1f} points with the "
                  f"FLARE CNN ({large[0]['num_params']:,}), at the same S = 0.95, with SparsyFed's regrowth "
                  "exactly 0 in both setups. The paper's claim is for ResNet-18 (11M parameters) on CIFAR, "
                  "which needs the CIFAR files and a GPU this machine does not have: see 'CIFAR at the paper's "
                  "scale' below."]
    diverged = rows.get(("mnist_lda0.1_flarecnn", "topk-prune-lr0.2"))
    if diverged is not None:
        first = runs[("mnist_lda0.1_flarecnn", "topk-prune-lr0.2")]["metrics"][0]
        lines += [f"* Top-K at start lr 0.2 on the FLARE CNN diverges in round 1 (mean client training loss "
                  f"{first['train_loss']:.2g}) and ends at {diverged['final_accuracy']:.4f}; SparsyFed at the "
                  "same lr trains normally (Powerprop shrinks the step on small weights)."]
    lines += lr_sweep(rows, seeded)
    lines += seed_repeats(seeded)
    lines += cifar_section()
    lines += ["", "## Plots", ""] + [f"* `{p}`" for p in plots]
    lines += ["", "## Commands", "",
              "Run from the repository root, one run at a time, `nice -n 5`, one torch thread, on a 2-core machine",
              "shared with other benchmark jobs (wall times include that sharing).", "",
              "| setup | method | command | runs | wall time |", "|---|---|---|---|---:|"]
    for setup in SETUPS:
        for method in METHODS:
            r = rows.get((setup, method))
            if r is not None:
                lines.append(f"| {setup} | {method} | `{r['command']}` | `{r['fl_command']}` | "
                             f"{r['wall_seconds'] / 60:.1f} min |")
            for seed, r in seeded.get((setup, method), {}).items():
                if seed != 0:
                    lines.append(f"| {setup} | {method} (seed {seed}) | `{r['command']}` | `{r['fl_command']}` | "
                                 f"{r['wall_seconds'] / 60:.1f} min |")
    lines += ["", "then `python -m benchmarks.sparsyfed_repro report`.", ""]
    return "\n".join(lines)


def cmd_report(args) -> int:
    os.chdir(ROOT)
    runs = {(s, m): run for s in SETUPS for m in METHODS if (run := load_run(run_dir(s, m))) is not None}
    if not runs:
        print("no finished runs under", RESULTS, file=sys.stderr)
        return 1
    rows = {k: row(k[0], k[1], run) for k, run in runs.items()}
    repeated = {(s, m): by_seed for s in SETUPS for m in METHODS if len(by_seed := seed_runs(s, m)) > 1}
    seeded = {k: {seed: row(k[0], k[1], run) for seed, run in by_seed.items()} for k, by_seed in repeated.items()}
    repeats = [r for by_seed in seeded.values() for seed, r in by_seed.items() if seed != 0]
    (RESULTS / "results.json").write_text(json.dumps(list(rows.values()) + repeats, indent=2) + "\n")
    plots = _plot(runs, RESULTS / "t8", repeated)
    (RESULTS / "README.md").write_text(readme(runs, rows, plots, seeded))
    print((RESULTS / "README.md").read_text())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.sparsyfed_repro", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one (setup, method) row")
    r.add_argument("--setup", choices=SETUPS, required=True)
    r.add_argument("--method", choices=list(METHODS), required=True)
    r.add_argument("--rounds", type=int, help="override the config's rounds (100 on MNIST, 700 on CIFAR)")
    r.add_argument("--seed", type=int, help="repeat the row with this master seed (partition, client sampling, "
                   "init and batches); written to <setup>_<method>_seed<N>; default: the config's seed 0")
    r.add_argument("--device", help="torch device: cpu (the configs' default) or cuda / cuda:N")
    r.add_argument("--data-dir", help="the directory holding the datasets (the CIFAR setups: "
                   "DIR/cifar-10-batches-py/ or DIR/cifar-100-python/); else $FL_DATA_DIR")
    r.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="any config override, after the method's (python -m fl run --set)")
    r.add_argument("--out", help="run directory (default benchmarks/results/sparsyfed/<setup>_<method>)")
    r.add_argument("--resume", action="store_true")
    sub.add_parser("report", help="README.md, results.json and plots from the finished runs")
    args = p.parse_args(argv)
    if args.command == "run" and args.seed == 0:
        args.seed = None        # every setup's config has seed 0: that is the plain <setup>_<method> row
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
