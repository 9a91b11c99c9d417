"""``python -m fl``: list, run, plot, compare.

    python -m fl list
    python -m fl run --algorithm ec [--config FILE.toml] [--setting demo] [--dataset NAME]
                     [--rounds N] [--set key=value ...] [--device cpu|cuda] [--out DIR] [--resume]
    python -m fl plot DIR [DIR ...] [--out DIR]
    python -m fl compare [--algorithms fedavg,ec,ef21] [same options as run] [--out DIR]

``run`` writes ``DIR/metrics.jsonl`` (one line per round), ``DIR/summary.json`` (final
accuracy, exact uplink/downlink bits, bits per parameter, the full resolved config),
``DIR/ledger.jsonl``, ``DIR/model.sc`` and ``DIR/checkpoint.ckpt``. ``compare`` runs each
algorithm into ``DIR/<algorithm>``, prints a table and writes the plots into ``DIR``.
Errors in the configuration exit with status 2 and a message listing the valid choices.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from sparsecodec.errors import ConfigError

__all__ = ["main", "build_parser", "format_table", "compare"]

#: ``make demo``: the four sparse-FL algorithms beside FedAvg and EC
DEFAULT_COMPARE = ("fedavg", "ec", "flare", "sparse-proxskip", "fedpm", "sparsyfed")


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE.toml", help="TOML config file (see fl.config)")
    p.add_argument("--setting", help="named starting point (python -m fl list); default: demo")
    p.add_argument("--dataset", help="dataset name (default: the setting's, mnist-embedded)")
    p.add_argument("--model", help="model name (default: the setting's)")
    p.add_argument("--rounds", type=int, help="number of rounds")
    p.add_argument("--seed", type=int, help="master seed")
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, dotted, TOML value (e.g. algo.lr=0.1); repeatable")
    p.add_argument("--data-dir", help="directory holding the offline datasets (else $FL_DATA_DIR)")
    p.add_argument("--device", help="torch device for the model and local training: cpu (default) or "
                   "cuda / cuda:N (sets sim.device; what is sent is copied to the CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fl", description="In-process federated "
                                     "learning with exactly counted, really encoded messages.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="algorithms, datasets, models, settings, partitions")
    run = sub.add_parser("run", help="run one algorithm")
    run.add_argument("--algorithm", help="algorithm name (python -m fl list)")
    _add_run_options(run)
    run.add_argument("--out", help="output directory (default runs/<algorithm>)")
    run.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.ckpt")
    run.add_argument("--engine", choices=("inprocess", "flower"), default="inprocess",
                     help="inprocess (default) or flower: Flower's simulation engine (extra [flower])")
    plot = sub.add_parser("plot", help="PNG plots of finished runs")
    plot.add_argument("dirs", nargs="+", metavar="DIR")
    plot.add_argument("--out", help="where to write the PNGs (default: the first run's parent)")
    cmp_ = sub.add_parser("compare", help="run several algorithms on one setting, print a table")
    cmp_.add_argument("--algorithms", default=",".join(DEFAULT_COMPARE),
                      help=f"comma-separated (default {','.join(DEFAULT_COMPARE)})")
    _add_run_options(cmp_)
    cmp_.add_argument("--out", default="runs/compare", help="output directory (default runs/compare)")
    return parser


def _resolve(args, algorithm: str):
    from .config import resolve_config

    # --device is sim.device; an explicit --set sim.device=... after it still wins
    sets = ([f"sim.device={json.dumps(args.device)}"] if args.device is not None else []) + list(args.sets)
    return resolve_config(setting=args.setting, file=args.config, sets=sets,
                          algorithm=algorithm, dataset=args.dataset, model=args.model,
                          rounds=args.rounds, seed=args.seed)


def cmd_list() -> None:
    from .algorithms import available_algorithms, get_algorithm
    from .config import PARTITIONS, SETTINGS
    from .data import DATASETS
    from .models import MODELS

    print("algorithms:")
    for name in available_algorithms():
        algo = get_algorithm(name)
        fields = ", ".join(f"{f.name}={f.default!r}" for f in dataclasses.fields(algo.Config))
        print(f"  {name:<22} {algo.description}\n  {'':<22} options: {fields}")
    print("datasets:")
    for name in sorted(DATASETS):
        print(f"  {name:<22} {DATASETS[name].description}")
    print("models:")
    for name in sorted(MODELS):
        print(f"  {name:<22} {MODELS[name].description}")
    print("settings (--setting):")
    for name, s in SETTINGS.items():
        brief = ", ".join(f"{k}={v}" for k, v in s.items() if not isinstance(v, dict)) or "built-in defaults"
        print(f"  {name:<22} {brief}")
    print("partitions ([partition] kind):")
    for name, opts in PARTITIONS.items():
        print(f"  {name:<22} {', '.join(f'{k}={v!r}' for k, v in opts.items()) or '-'}")


def cmd_run(args) -> dict[str, Any]:
    if getattr(args, "engine", "inprocess") == "flower":
        from .flower import run_flower as run_simulation
    else:
        from .simulation import run_simulation

    if not args.algorithm and not args.config and not any(s.startswith("algorithm=") for s in args.sets):
        raise ConfigError("run needs --algorithm NAME (python -m fl list shows them)")
    config = _resolve(args, args.algorithm)
    out = Path(args.out or f"runs/{config.algorithm}")
    result = run_simulation(config, out, resume=args.resume, progress=not args.no_progress,
                            data_dir=args.data_dir)
    s = result.summary
    print(f"{s['algorithm']}: {s['rounds']} rounds, final accuracy {_num(s['final_accuracy'], '.4f')}, "
          f"uplink {s['uplink_bits']} bits ({_num(s['uplink_bpp'], '.4g')} bits/param/client/round), "
          f"downlink {s['downlink_bits']} bits, {_num(s.get('total_bits_per_client_round'), ',.0f')} "
          f"bits per client-round in all -> {out}")
    return s


def _num(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    """Accuracy and bits per client-round each way, with the ratio to dense FedAvg's total.

    Bits per client-round: what one sampled client downloads and uploads in one round,
    measured on the bytes; "bound" is what the messages' information requires (see
    ``Simulation.summary``). The ratio is FedAvg's measured total bits per client-round over
    the algorithm's (how many times fewer bits); without a FedAvg run it is taken against
    32 bits/param each way.

    >>> row = {"algorithm": "fedavg", "num_params": 10, "final_accuracy": 0.9, "wall_seconds": 2.0,
    ...        "uplink_bits_per_client_round": 400.0, "downlink_bits_per_client_round": 400.0,
    ...        "total_bits_per_client_round": 800.0, "uplink_bound_bits_per_client_round": 320.0,
    ...        "downlink_bound_bits_per_client_round": 320.0, "uplink_bpp": 40.0, "config": {"algo": {}}}
    >>> print(format_table([row]))
    algorithm | final acc | uplink | (bound) | downlink | (bound) | total | x fewer than FedAvg | seconds
    ----------|-----------|--------|---------|----------|---------|-------|---------------------|--------
    fedavg    |    0.9000 |    400 |     320 |      400 |     320 |   800 |                 1.0 |     2.0
    """
    dense = next((s for s in summaries if s["algorithm"] == "fedavg"), None)
    header = ["algorithm", "final acc", "uplink", "(bound)", "downlink", "(bound)", "total",
              "x fewer than " + ("FedAvg" if dense else "fp32"), "seconds"]
    from .plots import label_for

    rows = []
    for s in summaries:
        total = s.get("total_bits_per_client_round")
        ref = dense.get("total_bits_per_client_round") if dense else 64.0 * s["num_params"]
        rows.append([label_for(s), _num(s["final_accuracy"], ".4f"),
                     _num(s["uplink_bits_per_client_round"], ",.0f"),
                     _num(s.get("uplink_bound_bits_per_client_round"), ",.0f"),
                     _num(s.get("downlink_bits_per_client_round"), ",.0f"),
                     _num(s.get("downlink_bound_bits_per_client_round"), ",.0f"),
                     _num(total, ",.0f"), _num(ref / total if total and ref else None, ",.1f"),
                     _num(s.get("wall_seconds"), ".1f")])
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    lines = [" | ".join(h.ljust(w) for h, w in zip(header, widths)),
             "-|-".join("-" * w for w in widths)]
    lines += [" | ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
              for r in rows]
    return "\n".join(lines)


def compare(args) -> list[dict[str, Any]]:
    from .data import load_dataset
    from .plots import plot_runs
    from .simulation import Simulation

    names = [n.strip() for n in args.algorithms.split(",") if n.strip()]
    if not names:
        raise ConfigError("--algorithms is empty")
    configs = [_resolve(args, name) for name in names]     # validate everything before running
    out = Path(args.out)
    datasets: dict[str, Any] = {}
    summaries = []
    for config in configs:
        key = json.dumps([config.dataset, config.data], sort_keys=True)
        if key not in datasets:
            datasets[key] = load_dataset(config.dataset, args.data_dir, **config.data)
        sim = Simulation(config, dataset=datasets[key])
        result = sim.run(out / config.algorithm, progress=not args.no_progress)
        summaries.append(result.summary)
    table = format_table(summaries)
    (out / "table.txt").write_text(table + "\n")
    s = summaries[0]
    print(f"{s['dataset']}, {s['model']} ({s['num_params']:,} parameters), {s['rounds']} rounds, "
          f"{s['clients_per_round']} of {s['clients']} clients per round; bits per client-round, "
          f"uplink wire {s.get('wire')}, downlink {s.get('downlink')}")
    print(table)
    for path in plot_runs([out / c.algorithm for c in configs], out):
        print(f"wrote {path}")
    return summaries


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if getattr(args, "verbose", False) else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "list":
            cmd_list()
        elif args.command == "run":
            cmd_run(args)
        elif args.command == "plot":
            from .plots import plot_runs

            for path in plot_runs(args.dirs, args.out):
                print(f"wrote {path}")
        else:
            compare(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:   # DatasetNotFoundError says where to put the files
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
