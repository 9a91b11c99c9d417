"""FLARE reproductions T1 (MNIST FC) and T2 (MNIST CNN) against the official committed results.

    python -m benchmarks.flare_repro run cnn flare          # one row (any of flare ec ef21 fedavg)
    python -m benchmarks.flare_repro run fc ec --rounds 100
    python -m benchmarks.flare_repro table                  # README.md from the finished rows

``run`` is exactly ``python -m fl run --algorithm ALGO --config benchmarks/configs/flare/SETTING.toml
--out benchmarks/results/tmp/flare/SETTING_ALGO`` (the same :func:`fl.simulation.run_simulation`
call, so the same numbers bit for bit), followed by a digest of that run into
``benchmarks/results/flare/``:

* ``SETTING_ALGO.metrics.jsonl``: the engine's per-round lines (accuracy every 10 rounds);
* ``SETTING_ALGO.json``: the engine's summary (final accuracy, exact ledger bits, resolved
  config, wall time), the accuracy at every evaluated round, the uplink bits per client per
  round from the ledger split by section, the information bounds of the same messages, the
  command line and the machine.

The full ledger and the checkpoint stay in ``benchmarks/results/tmp/`` (not committed; the FC
checkpoint is 1.6 GB). ``--resume`` continues an interrupted run from its checkpoint.

The reference numbers are the committed official result files (docs/flare.md, "Numbers to check
against"): the client-unavailability experiment, 7 of 10 clients per round, R = 0.001 %, E = 1.
The targets are T1 (FC) and T2 (CNN) of docs/reproductions.md. Paper: Greidi & Cohen, *Sparse
Training for Federated Learning with Regularized Error Correction*, arXiv 2312.13795.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shlex
import sys
import time
from pathlib import Path

for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "benchmarks" / "configs" / "flare"
RESULTS = ROOT / "benchmarks" / "results" / "flare"
SCRATCH = ROOT / "benchmarks" / "results" / "tmp" / "flare"
ALGORITHMS = ("flare", "ec", "ef21", "fedavg")
CHECKPOINTS = (50, 100, 200, 300)

_REPO = "RanGreidi/FLARE-Federated-Learning-with-Accumulated-Regularized-Embeddings"
#: Official committed test accuracies, 7 of 10 clients per round (docs/flare.md, "Numbers to check against").
REFERENCE = {
    "cnn": {
        "title": "T2: MNIST CNN (582,026 params, double softmax), lr 0.215, TAU 0.05, c 1.1",
        "source": f"{_REPO}: paper_experiments _reconstruction/clients_unavailability/"
                  "CNN_clients_unavailability/results/0.001R_1E_0.05TAU_10CLIENTS_1001ROUNDS_1.1Decay_"
                  "50t_1p_7client_unavailability/*_evaluation",
        "acc": {"fedavg": {50: .418, 100: .662, 200: .761, 300: .771},
                "flare": {50: .154, 100: .478, 200: .717, 300: .729},
                "ec": {50: .153, 100: .218, 200: .098, 300: .477},
                "ef21": {50: .160, 100: .235, 200: .098, 300: .459}},
        "accept_round": 200,
    },
    "fc": {
        "title": "T1: MNIST deep linear FC (36,356,525 params), lr 0.001, TAU 0.5, c 1.05",
        "source": f"{_REPO}: paper_experiments _reconstruction/clients_unavailability/"
                  "FC_clients_unavailability/results/0.001R_1E_0.5TAU_10CLIENTS_1001ROUNDS_1.05Decay_"
                  "50t_1p_working_clinets7/*_evaluation",
        "acc": {"fedavg": {50: .612, 100: .725, 200: .790, 300: .816},
                "flare": {50: .314, 100: .525, 200: .669, 300: .739},
                "ec": {50: .081, 100: .085, 200: .105, 300: .153},
                "ef21": {50: .081, 100: .086, 200: .110, 300: .165}},
        "accept_round": 100,
    },
}


# -- one run -----------------------------------------------------------------------------------
def message_bounds(config) -> dict:
    """Bits of one uplink message under the bit-accounting conventions of docs/conventions.md.

    Sparse algorithms send ``k_l`` values of every tensor ``l`` (``TopK.k_for``): the
    information bound ``sum log2 C(d_l, k_l) + 32 k_l``, index + value ``k (32 + ceil(log2 d))``
    and bitmap + values ``d + 32 k``. FedAvg sends ``32 d``.
    """
    from fl.models import build_model
    import sparsecodec as sc

    model = build_model(config.model, device="meta",
                        **{k: v for k, v in config.model_options.items() if k != "init"})
    sizes = [int(t.numel()) for t in model.state_dict().values() if t.is_floating_point()]
    d = sum(sizes)
    if config.algorithm == "fedavg":
        return {"numel": d, "dense_fp32": 32 * d}
    codec = config.algo.codec()
    ks = [codec.k_for(n) for n in sizes]
    return {"numel": d, "k": sum(ks),
            "info_bound": sum(sc.bounds.topk_index_bits(n, k) + 32 * k for n, k in zip(sizes, ks)),
            "index_plus_value": sum(k * (32 + math.ceil(math.log2(n))) for n, k in zip(sizes, ks)),
            "bitmap_plus_value": sum(n + 32 * k for n, k in zip(sizes, ks))}


def uplink_digest(ledger) -> dict:
    """Measured uplink bits per client per round (mean, min, max) and the mean per section."""
    recs = ledger.records(direction="up")
    bits = [r.nbits for r in recs]
    sections: dict[str, float] = {}
    for r in recs:
        for secs in r.tensor_sections.values():
            for k, v in secs.items():
                sections[k] = sections.get(k, 0) + v
    n = len(recs)
    return {"messages": n, "mean": sum(bits) / n, "min": min(bits), "max": max(bits),
            "sections_mean": {k: v / n for k, v in sorted(sections.items())}}


def cmd_run(args) -> None:
    import torch

    from fl.config import resolve_config
    from fl.simulation import run_simulation

    sets = list(args.sets)
    config = resolve_config(file=CONFIGS / f"{args.setting}.toml", algorithm=args.algorithm,
                            rounds=args.rounds, seed=args.seed, sets=sets)
    # the config's own seed (0) is the main row; other seeds are the spread rows
    name = f"{args.setting}_{config.algorithm}" + (f"_seed{args.seed}" if args.seed is not None else "")
    scratch = SCRATCH / name
    result = run_simulation(config, scratch, resume=args.resume, progress=False)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.metrics.jsonl").write_text(
        "".join(json.dumps(m) + "\n" for m in result.metrics))
    acc = {m["round"]: m["accuracy"] for m in result.metrics if m.get("accuracy") is not None}
    summary = dict(result.summary)
    if args.resume:
        summary["wall_seconds_note"] = "wall time of the resumed part only"
    digest = {
        "setting": args.setting, "algorithm": config.algorithm, "seed": config.seed,
        "command": "python -m benchmarks.flare_repro " + " ".join(shlex.quote(a) for a in sys.argv[1:]),
        "equivalent_cli": (f"python -m fl run --algorithm {config.algorithm} --config "
                           f"benchmarks/configs/flare/{args.setting}.toml"
                           + (f" --rounds {args.rounds}" if args.rounds else "")
                           + (f" --seed {args.seed}" if args.seed is not None else "")
                           + "".join(f" --set {shlex.quote(s)}" for s in sets)),
        "accuracy": {str(r): a for r, a in sorted(acc.items())},
        "uplink_per_client_round": uplink_digest(result.ledger),
        "uplink_bounds_per_message": message_bounds(config),
        "machine": {"platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__, "cpus": os.cpu_count(),
                    "torch_threads": torch.get_num_threads(),
                    "finished": time.strftime("%Y-%m-%d %H:%M:%S")},
        "summary": summary,
    }
    (RESULTS / f"{name}.json").write_text(json.dumps(digest, indent=2) + "\n")
    print(f"{name}: " + ", ".join(f"r{r} {acc[r]:.4f}" for r in CHECKPOINTS if r in acc)
          + f"; {summary['wall_seconds']:.0f} s -> {RESULTS / (name + '.json')}")


# -- the table ---------------------------------------------------------------------------------
def _fmt(x, spec=".3f") -> str:
    return "-" if x is None else format(x, spec)


def _rows(setting: str) -> list[dict]:
    rows = []
    for algo in ALGORITHMS:
        path = RESULTS / f"{setting}_{algo}.json"
        if path.is_file():
            rows.append(json.loads(path.read_text()))
    return rows


def render_table(setting: str) -> list[str]:
    ref = REFERENCE[setting]
    rows = _rows(setting)
    lines = [f"### {ref['title']}", "",
             f"Reference: `{ref['source']}` (accuracy on the 10,000 MNIST test images).", ""]
    if not rows:
        return lines + ["(no finished runs)", ""]
    head = ["algorithm"] + [f"r{r} ours / ref" for r in CHECKPOINTS] + [
        "uplink bits/client/round (ledger)", "bound (log2 C(d,k) + 32k)", "rounds", "wall time"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for d in rows:
        algo, acc = d["algorithm"], d["accuracy"]
        cells = [algo]
        for r in CHECKPOINTS:
            ours = acc.get(str(r))
            cells.append(f"{_fmt(ours)} / {_fmt(ref['acc'][algo].get(r))}")
        up, b = d["uplink_per_client_round"], d["uplink_bounds_per_message"]
        bound = b.get("info_bound", b.get("dense_fp32"))
        cells += [f"{up['mean']:,.0f}", f"{bound:,.0f}", str(d["summary"]["rounds"]),
                  f"{d['summary']['wall_seconds'] / 60:.1f} min"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    by = {d["algorithm"]: d["accuracy"] for d in rows}
    r = ref["accept_round"]
    if "flare" in by and "ec" in by and str(r) in by["flare"] and str(r) in by["ec"]:
        gap = by["flare"][str(r)] - by["ec"][str(r)]
        off = by["flare"][str(r)] - ref["acc"]["flare"][r]
        lines += [f"Acceptance at r{r}: FLARE - EC = {gap:+.3f} (needs >= +0.2); "
                  f"FLARE - reference FLARE = {off:+.3f} (needs |.| <= 0.1).", ""]
    spread = sorted(RESULTS.glob(f"{setting}_*_seed*.json"))
    extra = [json.loads(p.read_text()) for p in spread]
    if extra:
        lines += ["Other seeds (same config, `--seed N`: another initial model, client sampling and "
                  "batch order):", "",
                  "| algorithm | seed | " + " | ".join(f"r{r}" for r in CHECKPOINTS) + " | rounds | wall time |",
                  "|" + "---|" * (len(CHECKPOINTS) + 4)]
        for d in extra:
            lines.append(f"| {d['algorithm']} | {d['seed']} | "
                         + " | ".join(_fmt(d["accuracy"].get(str(r))) for r in CHECKPOINTS)
                         + f" | {d['summary']['rounds']} | {d['summary']['wall_seconds'] / 60:.1f} min |")
        lines.append("")
    lines += ["Commands (each row; `equivalent_cli` gives the same numbers through `python -m fl run`):", ""]
    for d in rows + extra:
        lines.append(f"* {d['algorithm']}: `{d['command']}`  (= `{d['equivalent_cli']}`)")
    lines.append("")
    for d in rows:
        up, b = d["uplink_per_client_round"], d["uplink_bounds_per_message"]
        if "k" in b:
            lines.append(f"* {d['algorithm']} uplink: {up['mean']:,.1f} bits per message (min {up['min']:,}, "
                         f"max {up['max']:,}; sections {', '.join(f'{k} {v:,.1f}' for k, v in up['sections_mean'].items())}) "
                         f"for k = {b['k']} of d = {b['numel']:,}; bounds: log2 C(d,k) + 32k = {b['info_bound']:,.1f}, "
                         f"k(32 + ceil(log2 d)) = {b['index_plus_value']:,}, d + 32k = {b['bitmap_plus_value']:,}.")
        else:
            lines.append(f"* {d['algorithm']} uplink: {up['mean']:,.1f} bits per message; dense fp32 "
                         f"32d = {b['dense_fp32']:,}.")
    lines.append("")
    return lines


def cmd_table(args) -> None:
    notes = RESULTS / "NOTES.md"
    lines = ["# FLARE reproduction: ours beside the official committed results", "",
             "Generated by `python -m benchmarks.flare_repro table` from the `*.json` files here "
             "(every number comes from a run of `python -m benchmarks.flare_repro run ...`; the "
             "reference columns are the official result files). Test accuracy after round r; "
             "uplink bits are the exact sizes of the encoded messages from the channel ledger "
             "(bundle header, index, values and CRC included), mean over all client messages. "
             "Runs are single-threaded (`sim.threads = 1`) on a 2-core machine shared with "
             "other jobs, so wall times are indicative.", ""]
    for setting in ("cnn", "fc"):
        lines += render_table(setting)
    if notes.is_file():
        lines += [notes.read_text().rstrip(), ""]
    (RESULTS / "README.md").write_text("\n".join(lines))
    print("\n".join(lines))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.flare_repro", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run one (setting, algorithm) row")
    run.add_argument("setting", choices=sorted(REFERENCE))
    run.add_argument("algorithm", choices=ALGORITHMS)
    run.add_argument("--rounds", type=int, help="override the config's rounds")
    run.add_argument("--seed", type=int, help="another master seed (a spread row: SETTING_ALGO_seedN)")
    run.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--resume", action="store_true", help="continue from the scratch checkpoint")
    sub.add_parser("table", help="write benchmarks/results/flare/README.md")
    args = parser.parse_args(argv)
    {"run": cmd_run, "table": cmd_table}[args.command](args)


if __name__ == "__main__":
    main()
