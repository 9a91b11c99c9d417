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
``README.md``, ``results.json`` and PNG plots (density, regrowth, accuracy vs uplink bits) with
:mod:`benchmarks.sparsyfed_report`.
Every number there is read from the runs' own files.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from benchmarks._runner import load_run, run_recorded

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
# the report side (rows, plots, README.md) is benchmarks/sparsyfed_report.py, which imports the
# grid above at load; this module imports it only when used (cmd_report, and __getattr__ for its
# names, still reachable from here: ``sparsyfed_repro.seed_repeats``, ``.LAST``, ...), so no cycle
_REPORT_NAMES = ("AFTER", "LAST", "T975", "row", "acceptance", "lr_sweep", "finding", "seed_repeats",
                 "readme", "_mean", "_plot", "_f", "_at_lr", "_sweep", "_best", "_paired")


def __getattr__(name: str):
    if name not in _REPORT_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from benchmarks import sparsyfed_report
    return getattr(sparsyfed_report, name)


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


def cmd_report(args) -> int:
    from benchmarks.sparsyfed_report import _plot, readme, row

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
