"""The T8 report: tables, plots and ``README.md`` of ``benchmarks/results/sparsyfed`` from the runs.

``python -m benchmarks.sparsyfed_repro report`` loads the run directories and calls :func:`row`
(one run's figures), :func:`_plot` (the PNGs) and :func:`readme` (the text: finding, results,
acceptance, start-lr sweep, seed repeats with paired intervals, commands). Every number is read
from the runs' own files; the setups, methods and labels are :mod:`benchmarks.sparsyfed_repro`'s.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from benchmarks.sparsyfed_repro import BASE_LR, LABELS, LR_SWEEP, METHODS, SETUPS
from benchmarks.sparsyfed_timing import cifar_section

AFTER = 10        # "after round 10": rounds 11.. for the density figures
LAST = 5          # final accuracy = mean of the last LAST evaluated rounds (and the last one)


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


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
