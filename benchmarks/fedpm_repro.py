"""T6 / T7 reproductions: FedPM and regularized FedPM on MNIST (docs/reproductions.md, docs/fedpm.md).

    python -m benchmarks.fedpm_repro run --lambda 0        # T6 (and the lambda = 0 row of T7)
    python -m benchmarks.fedpm_repro run --lambda 0.5      # T7 rows: 0.5, 1, 2, 5
    python -m benchmarks.fedpm_repro report                # tables, README and plot

``run`` is ``python -m fl run --config benchmarks/configs/fedpm/mnist_mlp.toml
--set algo.lambda_reg=L --out benchmarks/results/fedpm/mlp_lambda<L>`` plus bookkeeping: it
records the exact command and the wall time in ``<out>/command.json`` and, once the run is
complete, deletes the checkpoint (about 60 MB of per-client Adam state) and ``model.sc``
(the fp32 scores), which are not results. ``--resume`` continues an interrupted run from its
checkpoint. Each run uses one thread (``sim.threads = 1``); run at most two at a time.

``report`` reads every ``mlp_lambda*`` directory and writes ``t6.json`` (per-round figures
of the lambda = 0 run), ``t7.json`` (one row per lambda), ``fedpm_rounds.png`` (accuracy and
bits per parameter per round) and ``README.md`` (tables, acceptance checks, commands, wall
times) into ``benchmarks/results/fedpm``. Every number there is read from the runs' own
``metrics.jsonl`` / ``summary.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks._runner import load_run, run_recorded

ROOT = Path(__file__).resolve().parent.parent
CONFIG = Path("benchmarks/configs/fedpm/mnist_mlp.toml")
RESULTS = Path("benchmarks/results/fedpm")
LAMBDAS = (0.0, 0.5, 1.0, 2.0, 5.0)
LAST = 5          # rounds averaged for the "end of run" figures (the test accuracy is stochastic)


def run_dir(lam: float) -> Path:
    return RESULTS / f"mlp_lambda{lam:g}"


def fl_argv(lam: float, rounds: int | None, resume: bool) -> list[str]:
    argv = ["run", "--config", str(CONFIG), "--set", f"algo.lambda_reg={lam:g}",
            "--out", str(run_dir(lam)), "--no-progress"]
    if rounds is not None:
        argv += ["--rounds", str(rounds)]
    if resume:
        argv.append("--resume")
    return argv


def cmd_run(args) -> int:
    os.chdir(ROOT)
    return run_recorded(fl_argv(args.lam, args.rounds, args.resume), run_dir(args.lam),
                        "python -m benchmarks.fedpm_repro " + " ".join(sys.argv[1:]), resume=args.resume)


# -- report -------------------------------------------------------------------------------------
def per_round(metrics: list[dict]) -> list[dict]:
    """The per-round FedPM figures (bpp = bits per parameter per client)."""
    rows = []
    for m in metrics:
        d, k = m["server_numel"], m["updates"]
        rows.append({
            "round": m["round"], "accuracy": m["accuracy"], "accuracy_threshold": m.get("accuracy_threshold"),
            "train_loss": m["train_loss"],
            "coded_bpp_global": m["uplink_bits"] / (k * d),          # the ledger: what was sent
            "coded_bpp_adaptive": m["server_coded_bpp_adaptive"],
            "xent_global_bpp": m["server_xent_global_bpp"],
            "ideal_bpp": m["server_ideal_bpp"], "ideal_bpp_code": m["server_ideal_bpp_code"],
            "density": m["server_density"], "theta_below_half": m["server_theta_below_half"],
            "local_theta_below_half": m["server_local_theta_below_half"],
        })
    return rows


def _mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def t7_row(run: dict, lam: float) -> dict:
    rows = per_round(run["metrics"])
    tail = rows[-LAST:]
    first95 = next((r["round"] for r in rows if r["accuracy"] >= 0.95), None)
    row = {"lambda": lam, "rounds": len(rows), "first_round_acc_ge_0.95": first95,
           "acc_round30": rows[29]["accuracy"] if len(rows) >= 30 else None,
           "final_accuracy": rows[-1]["accuracy"], "final_accuracy_threshold": rows[-1]["accuracy_threshold"]}
    for key in ("accuracy", "coded_bpp_global", "coded_bpp_adaptive", "ideal_bpp", "ideal_bpp_code",
                "density", "theta_below_half"):
        row[f"{key}_last{LAST}"] = _mean(tail, key)
    for key in ("coded_bpp_global", "coded_bpp_adaptive", "ideal_bpp", "ideal_bpp_code", "density",
                "theta_below_half"):
        row[f"{key}_final"] = rows[-1][key]
    row["rounds_coded_above_ideal"] = [r["round"] for r in rows if r["coded_bpp_global"] > r["ideal_bpp"]]
    row["rounds_coded_above_ideal_code"] = [r["round"] for r in rows if r["coded_bpp_global"] > r["ideal_bpp_code"]]
    row["uplink_bpp_run"] = run["summary"]["uplink_bpp"]
    row["uplink_bpp_ideal_run"] = run["summary"]["uplink_bpp_ideal"]
    row["wall_seconds"] = run["command"].get("wall_seconds", run["summary"]["wall_seconds"])
    row["command"] = run["command"].get("command")
    row["fl_command"] = run["command"].get("fl_command")
    return row


def _plot(runs: dict[float, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_acc, ax_bpp) = plt.subplots(1, 2, figsize=(12, 4.5))
    for i, (lam, run) in enumerate(sorted(runs.items())):
        rows = per_round(run["metrics"])
        r = [x["round"] for x in rows]
        color = f"C{i}"
        ax_acc.plot(r, [x["accuracy"] for x in rows], color=color, label=f"lambda={lam:g}")
        ax_bpp.plot(r, [x["coded_bpp_global"] for x in rows], color=color, label=f"lambda={lam:g}")
        ax_bpp.plot(r, [x["ideal_bpp"] for x in rows], color=color, ls="--")
        ax_bpp.plot(r, [x["coded_bpp_adaptive"] for x in rows], color=color, ls=":", lw=1)
    ax_acc.set(xlabel="round", ylabel="test accuracy (sampled mask)", ylim=(0.8, 1.0),
               title="FedPM, masked MLP 784-600-300-10, MNIST, 10 IID clients")
    ax_acc.axhline(0.95, color="gray", lw=0.8)
    ax_acc.legend(fontsize=8)
    ax_bpp.set(xlabel="round", ylabel="uplink bits per parameter per client")
    ax_bpp.set_title("solid: coded under global theta (ledger); dashed: ideal H_b(f) + log2(d)/d;\n"
                     "dotted: coded under the adaptive model", fontsize=9)
    ax_bpp.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cmd_report(args) -> int:
    os.chdir(ROOT)
    runs = {lam: run for lam in LAMBDAS if (run := load_run(run_dir(lam))) is not None}
    extra = sorted(float(p.name[len("mlp_lambda"):]) for p in RESULTS.glob("mlp_lambda*")
                   if p.is_dir() and float(p.name[len("mlp_lambda"):]) not in LAMBDAS and load_run(p) is not None)
    for lam in extra:
        runs[lam] = load_run(run_dir(lam))
    if not runs:
        print("no finished runs under", RESULTS, file=sys.stderr)
        return 1
    rows = [t7_row(runs[lam], lam) for lam in sorted(runs)]
    (RESULTS / "t7.json").write_text(json.dumps(rows, indent=2) + "\n")
    if 0.0 in runs:
        t6 = {"config": runs[0.0]["summary"]["config"], "summary": {k: v for k, v in runs[0.0]["summary"].items()
                                                                      if k != "config"},
              "rounds": per_round(runs[0.0]["metrics"])}
        (RESULTS / "t6.json").write_text(json.dumps(t6, indent=2) + "\n")
    _plot(runs, RESULTS / "fedpm_rounds.png")
    (RESULTS / "README.md").write_text(readme(runs, rows))
    print((RESULTS / "README.md").read_text())
    return 0


def _f(x, spec=".4f") -> str:
    return "-" if x is None else format(x, spec)


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def acceptance(rows: list[dict]) -> list[str]:
    """The issue's acceptance points, evaluated on the rows (end-of-run = mean of the last rounds)."""
    out = []
    by = {r["lambda"]: r for r in rows}
    base = by.get(0.0)
    if base is not None:
        first = base["first_round_acc_ge_0.95"]
        ok = first is not None and first <= 30
        out.append(f"* FedPM (lambda = 0) reaches >= 0.95 test accuracy within 30 rounds: "
                   f"**{'met' if ok else 'NOT met'}** (first round with accuracy >= 0.95: {first}; "
                   f"accuracy at round 30: {_f(base['acc_round30'])}).")
    for r in rows:
        above = r["rounds_coded_above_ideal"]
        out.append(f"* lambda = {r['lambda']:g}: coded bpp under the global theta <= ideal "
                   f"H_b(f) + log2(d)/d in every round: **{'met' if not above else 'NOT met'}**"
                   + (f" (above in rounds {above})" if above else f" ({r['rounds']} of {r['rounds']} rounds)")
                   + (f"; against the official code's eps-smoothed figure above in rounds "
                      f"{r['rounds_coded_above_ideal_code']}" if r["rounds_coded_above_ideal_code"] else "")
                   + ".")
    sweep = [by[lam] for lam in LAMBDAS if lam in by]
    if len(sweep) == len(LAMBDAS):
        for key, what in ((f"coded_bpp_global_last{LAST}", "coded bpp (global theta)"),
                          (f"ideal_bpp_last{LAST}", "ideal bpp"),
                          (f"density_last{LAST}", "mask density")):
            vals = [r[key] for r in sweep]
            mono = all(a > b for a, b in zip(vals, vals[1:]))
            out.append(f"* {what} falls strictly monotonically with lambda over {list(LAMBDAS)}: "
                       f"**{'met' if mono else 'NOT met'}** ({', '.join(_f(v) for v in vals)}).")
        for key, what in ((f"ideal_bpp_last{LAST}", "the papers' (ideal) bpp"),
                          (f"coded_bpp_global_last{LAST}", "our coded bpp (global theta)")):
            good = [r for r in sweep[1:] if base[key] - r[key] >= 0.3
                    and base[f"accuracy_last{LAST}"] - r[f"accuracy_last{LAST}"] <= 0.02]
            detail = "; ".join(f"lambda = {r['lambda']:g}: saves {base[key] - r[key]:.3f} bpp "
                               f"({base[key] / r[key]:.1f}x fewer bits) for "
                               f"{100 * (base[f'accuracy_last{LAST}'] - r[f'accuracy_last{LAST}']):.2f} "
                               "points" for r in sweep[1:])
            out.append(f"* some lambda saves >= 0.3 of {what} for <= 2 points of accuracy: "
                       f"**{'met' if good else 'NOT met'}** ({detail}).")
        out.append(f"  The issue's criterion is read on the papers' bpp (the ideal formula, which is what the "
                   f"paper's ~0.8 bpp claim measures). On the real coder under the global theta FedPM itself "
                   f"already sends only {base[f'coded_bpp_global_last{LAST}']:.3f} bpp, so an absolute saving "
                   f"of 0.3 there would mean sending <= {base[f'coded_bpp_global_last{LAST}'] - 0.3:.3f} bpp; "
                   f"the regularizer's gain on the real coder is the ratio shown.")
    return out


def readme(runs: dict[float, dict], rows: list[dict]) -> str:
    cfg = next(iter(runs.values()))["summary"]["config"]
    num_params = next(iter(runs.values()))["summary"]["num_params"]
    lines = [
        "# FedPM and regularized FedPM on MNIST (T6, T7)",
        "",
        "Generated by `python -m benchmarks.fedpm_repro report` from the runs in this directory; every",
        "number below is read from their `metrics.jsonl` / `summary.json`. Spec: `docs/fedpm.md` (FedPM,",
        "regularized FedPM, their bit accounting) and `docs/reproductions.md` (T6, T7). Implementation:",
        "`fl/algorithms/fedpm.py`, `fl/masked.py`.",
        "",
        "## Setting",
        "",
        f"* {cfg['dataset']} (60,000 / 10,000, pixels Normalize(0.5, 0.5)), {cfg['sim']['clients']} IID clients "
        f"(random equal split, 6,000 images each), all clients every round, {cfg['rounds']} rounds, seed {cfg['seed']}.",
        f"* Masked MLP 784-600-300-10 (`{cfg['model']}`, d = {num_params:,} scores: every weight and bias), frozen "
        "signed-constant weights +-e/sqrt(fan_in).",
        f"* Official FedPM hyperparameters: Adam lr {cfg['algo']['lr']} (state kept per client across rounds), "
        f"{cfg['algo']['epochs']} local epochs, batch {cfg['algo']['batch_size']}, eps = {cfg['algo']['epsilon']}, "
        f"Beta({cfg['algo']['prior']:g}, {cfg['algo']['prior']:g}) prior reset every round, official STE "
        "(dL/dtheta = theta dL/dm), scores initialised N(0, 1).",
        "* Regularized FedPM: local loss CE + (lambda/n) sum_j sigmoid(s_j), n = d; lambda = 0 is FedPM.",
        "* Uplink: each client's sampled binary mask, range-coded by `sparsecodec.MaskCodec` under the global",
        "  theta = sigmoid(s_t) as per-entry side information (not in the bytes), one bundle per client with its",
        "  CRC-32. Downlink: the fp32 scores (32 bpp). All bits are the channel ledger's.",
        "",
        "Columns (bpp = bits per parameter per client per round):",
        "",
        "* **coded (global theta)**: the real uplink, ledger bits / (clients x d), frame headers and CRC included.",
        "* **coded (adaptive)**: the same mask coded without side information (count of ones + enumerative",
        "  code), built by the client for comparison and not sent.",
        "* **ideal**: the papers' rate H_b(f) + log2(d)/d (`docs/fedpm.md`, 'Bit accounting'), f = fraction of",
        "  ones of the binary mask (`sparsecodec.bounds.fedpm_ideal_bpp`); **ideal (code)**: the official",
        "  `find_bitrate`, f taken from the eps-smoothed mask (f = eps + (1 - 2 eps) f_true), slightly larger.",
        "  Both are means over clients.",
        "* **density**: fraction of ones in the uploaded masks; **theta<0.5**: fraction of the aggregated global",
        "  theta below 1/2.",
        "* Accuracy is the test accuracy with one freshly sampled mask per test batch of 1,000 (stochastic);",
        f"  **acc (ths)** uses the deterministic mask theta > 0.5. End-of-run figures are means over the last {LAST}",
        "  rounds, because the sampled-mask accuracy is noisy.",
        "",
    ]
    if 0.0 in runs:
        t6 = per_round(runs[0.0]["metrics"])
        lines += ["## T6: FedPM (lambda = 0), per round", "",
                  "| round | acc | acc (ths) | coded (global theta) | coded (adaptive) | ideal | ideal (code) | density | theta<0.5 |",
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        show = sorted({1, 2, 3, 5, 10, 15, 20, 25, 30, 35, 40, len(t6)} & set(range(1, len(t6) + 1)))
        for r in (t6[i - 1] for i in show):
            lines.append(f"| {r['round']} | {_f(r['accuracy'])} | {_f(r['accuracy_threshold'])} | "
                         f"{_f(r['coded_bpp_global'])} | {_f(r['coded_bpp_adaptive'])} | {_f(r['ideal_bpp'])} | "
                         f"{_f(r['ideal_bpp_code'])} | {_f(r['density'])} | {_f(r['theta_below_half'])} |")
        lines += ["", "Every round is in `t6.json`; `fedpm_rounds.png` plots accuracy and bpp per round for every lambda.", ""]
    lines += [f"## T7: lambda sweep (end of run = mean of the last {LAST} rounds)", "",
              "| lambda | acc | final acc | acc (ths) final | first round acc >= 0.95 | coded (global theta) | "
              "coded (adaptive) | ideal | ideal (code) | density | theta<0.5 (final) | wall time |",
              "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        L = f"_last{LAST}"
        lines.append(f"| {r['lambda']:g} | {_f(r['accuracy' + L])} | {_f(r['final_accuracy'])} | "
                     f"{_f(r['final_accuracy_threshold'])} | {r['first_round_acc_ge_0.95'] or 'not reached'} | "
                     f"{_f(r['coded_bpp_global' + L])} | {_f(r['coded_bpp_adaptive' + L])} | {_f(r['ideal_bpp' + L])} | "
                     f"{_f(r['ideal_bpp_code' + L])} | {_f(r['density' + L])} | {_f(r['theta_below_half_final'])} | "
                     f"{_minutes(r['wall_seconds'])} |")
    lines += ["", "Reference values (`docs/fedpm.md`: FedPM's 'Numbers', regularized FedPM's 'Setups and numbers';",
              "T6 and T7 in `docs/reproductions.md`; all [paper, unverified] or [unverified]):",
              "FedPM on MNIST: accuracy >= 0.95 within ~20 rounds, bpp 0.85-0.98 (ideal formula, slowly",
              "decreasing), ~0.99 accuracy with Conv4. Regularized FedPM: ~0.8 bpp saved on MNIST (Conv4) at similar",
              "accuracy; 0.31-0.52 bpp on CIFAR.", "", "## Acceptance (issue 6)", ""]
    lines += acceptance(rows)
    lines += ["", "## Commands and wall times", "",
              "Run from the repository root, one thread per run (`sim.threads = 1`), on a 2-core machine shared",
              "with other benchmark jobs (load average 2-8), so wall times are indicative only.", "", "| lambda | command | runs | wall time |", "|---:|---|---|---:|"]
    for r in rows:
        lines.append(f"| {r['lambda']:g} | `{r['command']}` | `{r['fl_command']}` | {_minutes(r['wall_seconds'])} |")
    lines += ["", "then `python -m benchmarks.fedpm_repro report` (this file, `t6.json`, `t7.json`, `fedpm_rounds.png`).",
              "", "## Deviations from the official code", "",
              "* Test accuracy: one mask per test batch of 1,000 drawn from a generator seeded by (seed, round),",
              "  reproducible; the official code samples per batch of its test loader from the global RNG.",
              "* Scores start from N(0, 1) drawn from a seeded generator; minibatch order and every Bernoulli",
              "  sample come from each client's own seeded generator (checkpointed), not the global RNG.",
              "* T7 (lambda > 0) starts from those N(0, 1) scores too, as FedPM's official code does; the",
              "  regularized paper starts from theta_0 = 0.5 [paper, unverified] (`score_init = \"zeros\"`, not run here).",
              "* Bernoulli samples are `1[u < theta]`, u ~ U[0, 1) (the law of `torch.bernoulli`, faster on CPU).",
              "* The model is the Flower port's MaskANN MLP, not Conv4 (CPU budget; T6 in `docs/reproductions.md`);",
              "  the paper's MNIST numbers are for Conv4, so they are soft targets here.",
              "* bpp is measured on a real coder (the ledger) and reported beside the papers' ideal formula.", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.fedpm_repro", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="one lambda of the sweep (lambda 0 = FedPM, T6)")
    r.add_argument("--lambda", dest="lam", type=float, required=True)
    r.add_argument("--rounds", type=int, help="override the config's 40 rounds")
    r.add_argument("--resume", action="store_true")
    sub.add_parser("report", help="tables, README.md and plot from the finished runs")
    args = p.parse_args(argv)
    return cmd_run(args) if args.command == "run" else cmd_report(args)


if __name__ == "__main__":
    sys.exit(main())
