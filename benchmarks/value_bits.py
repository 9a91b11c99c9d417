"""Quantized values under error feedback: value bits per uplink message and accuracy (issue 18).

Runs EC (density 1e-3, the demo setting of issue 15's filing: small-cnn, 20 rounds, 5 of 10
clients) over 3 seeds and FLARE (the T2 setting, ``benchmarks/configs/flare/cnn.toml``) to
round 100, each with ``values = "fp32" | "q8" | "q8b" | "sign" | "signb"`` and ``sim.values_scope =
"tensor"`` (one scale per tensor; the default) or ``"message"`` (``--values-scope message``: one
value block, so one scale, per message), and tabulates what the receivers read off the bytes
(the ledger's ``values`` sections of every uplink message)::

    python -m benchmarks.value_bits run ec-demo                  # 3 seeds x 5 coders (~5 min)
    python -m benchmarks.value_bits run ec-demo-mlp              # the same on today's demo model
    python -m benchmarks.value_bits run flare-t2 --values q8     # one coder (~25 min here)
    python -m benchmarks.value_bits run ec-demo --values q8b --values-scope message
    python -m benchmarks.value_bits report                       # README.md + results.json

Results: ``benchmarks/results/values/<setting>/<coder>[-message]_s<seed>`` (no suffix: the
tensor scope, as every run before the values scope existed). Every run uses the compact uplink and the patch
downlink (the defaults) and the Makefile's SIMD pins, like ``make demo``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "values"
PINNED_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "NPY_DISABLE_CPU_FEATURES")
CODERS = ("fp32", "q8", "q8b", "sign", "signb")
SCOPES = ("tensor", "message")
SETTINGS = {
    "ec-demo": {"argv": ["run", "--algorithm", "ec", "--setting", "demo", "--model", "small-cnn",
                         "--rounds", "20", "--set", "sim.clients_per_round=5"],
                "section": "ec", "seeds": (0, 1, 2)},
    # the same on today's demo setting (``make demo``: fedpm-mlp, 10 rounds, all 10 clients),
    # whose larger tensors keep more values each
    "ec-demo-mlp": {"argv": ["run", "--algorithm", "ec", "--setting", "demo"], "section": "ec",
                    "seeds": (0, 1, 2)},
    "flare-t2": {"argv": ["run", "--algorithm", "flare", "--config", "benchmarks/configs/flare/cnn.toml",
                          "--rounds", "100", "--set", "sim.wire='compact'", "--set", "sim.downlink='patch'"],
                 "section": "flare", "seeds": (0,)},
}
#: the acceptance of issue 18: value bits cut at least this much, accuracy within this many points
TARGETS = {"q8": (3.5, 1.0), "q8b": (3.5, 1.0), "sign": (20.0, 3.0), "signb": (20.0, 3.0)}


def run_name(coder: str, values_scope: str, seed: int) -> str:
    """A run's directory name; the tensor scope keeps the name runs had before the option."""
    return f"{coder}{'' if values_scope == 'tensor' else '-' + values_scope}_s{seed}"


def _coder_scope(key: str) -> tuple[str, str]:
    """(coder, values scope) of a run directory's name without its ``_s<seed>``."""
    coder, _, scope = key.partition("-")
    return coder, scope or "tensor"


def _ledger_stats(ledger: Path) -> dict:
    """Value and total bits of every uplink message, from the ledger rows (read off the bytes)."""
    values, totals = [], []
    for line in ledger.read_text().splitlines():
        row = json.loads(line)
        if row["direction"] != "up":
            continue
        values.append(sum(t.get("values", 0) for t in row["tensors"].values()))
        totals.append(row["nbits"])
    return {"uplink_messages": len(values), "value_bits_median": statistics.median(values),
            "value_bits_mean": statistics.fmean(values), "uplink_bits_median": statistics.median(totals),
            "uplink_bits_mean": statistics.fmean(totals)}


def run(setting: str, coders: list[str], seeds: list[int], values_scope: str = "tensor") -> None:
    from fl.cli import main as fl_main

    spec = SETTINGS[setting]
    for seed in seeds:
        for coder in coders:
            out = RESULTS / setting / run_name(coder, values_scope, seed)
            argv = spec["argv"] + ["--seed", str(seed), "--set", f"algo.{spec['section']}.values='{coder}'"]
            if values_scope != "tensor":
                argv += ["--set", f"sim.values_scope='{values_scope}'"]
            argv += ["--out", str(out), "--no-progress"]
            print("python -m fl " + " ".join(argv), flush=True)
            if fl_main(argv) != 0:
                raise SystemExit(f"the {setting} {coder} ({values_scope} scope) seed {seed} run failed")
            (out / "values.json").write_text(json.dumps(_ledger_stats(out / "ledger.jsonl"), indent=1) + "\n")
            env = " ".join(f"{k}={os.environ[k]!r}" for k in PINNED_ENV if k in os.environ)
            shown = [str(out.relative_to(ROOT)) if a == str(out) else a for a in argv]   # runnable anywhere
            (out / "command.txt").write_text((env + " " if env else "") + "python -m fl " + " ".join(shown) + "\n")
            for f in list(out.iterdir()):
                if f.name not in ("summary.json", "metrics.jsonl", "values.json", "command.txt"):
                    shutil.rmtree(f) if f.is_dir() else f.unlink()


def _load(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text())
    v = json.loads((run_dir / "values.json").read_text())
    return {"accuracy": s["final_accuracy"], "uplink_per_client_round": s["uplink_bits_per_client_round"],
            "rounds": s["rounds"], **v}


def rows_for(setting_dir: Path) -> list[dict]:
    runs: dict[tuple[str, str], list[dict]] = {}
    for d in sorted(setting_dir.iterdir()):
        if (d / "values.json").exists():
            runs.setdefault(_coder_scope(d.name.rsplit("_s", 1)[0]), []).append(_load(d))
    if ("fp32", "tensor") not in runs:
        return []
    # the baseline is fp32 with today's per-tensor values, whatever scope a row uses
    base_bits = statistics.fmean(r["value_bits_mean"] for r in runs["fp32", "tensor"])
    base_acc = statistics.fmean(r["accuracy"] for r in runs["fp32", "tensor"])
    rows = []
    for key in [(c, s) for s in SCOPES for c in CODERS if (c, s) in runs]:
        rs = runs[key]
        coder, scope = key
        accs = [r["accuracy"] for r in rs]
        bits = statistics.fmean(r["value_bits_mean"] for r in rs)
        row = {"values": coder, "values scope": scope, "seeds": len(rs), "rounds": rs[0]["rounds"],
               "value bits / msg": bits, "value bits median": statistics.median(r["value_bits_median"] for r in rs),
               "x fewer value bits": base_bits / bits,
               "uplink bits / msg": statistics.fmean(r["uplink_bits_mean"] for r in rs),
               "accuracy (mean)": statistics.fmean(accs), "accuracy (min-max)": f"{min(accs):.4f}-{max(accs):.4f}",
               "points vs fp32": 100 * (statistics.fmean(accs) - base_acc)}
        if coder in TARGETS:
            cut, points = TARGETS[coder]
            row["target"] = f">= {cut}x, >= -{points} points"
            row["bits met"] = row["x fewer value bits"] >= cut
            row["accuracy met"] = row["points vs fp32"] >= -points
        rows.append(row)
    return rows


COLUMNS = ("values", "values scope", "seeds", "rounds", "value bits / msg", "x fewer value bits", "uplink bits / msg",
           "accuracy (mean)", "accuracy (min-max)", "points vs fp32", "target", "bits met", "accuracy met")


def _cell(v, column: str = "") -> str:
    if isinstance(v, bool):
        return "yes" if v else "**no**"
    if isinstance(v, float):
        if column.startswith("accuracy"):
            return f"{v:.4f}"
        if column.startswith("points"):
            return f"{v:+.2f}"
        if column.startswith("x fewer"):
            return f"{v:.2f}x"
        return f"{v:,.0f}"
    return "-" if v is None else str(v)


def report() -> None:
    out: dict = {}
    lines = ["# Quantized values under error feedback (issue 18)", "",
             "Written by `python -m benchmarks.value_bits report` from the runs of "
             "`python -m benchmarks.value_bits run <setting>` (each run's command in its `command.txt`). "
             "Value bits are the `values` sections the receiver read off each uplink message "
             "(compact wire), averaged over messages; accuracy is the last round's.", ""]
    for setting_dir in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        rows = rows_for(setting_dir)
        if not rows:
            continue
        out[setting_dir.name] = rows
        lines += [f"## {setting_dir.name}", "", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(r.get(c), c) for c in COLUMNS) + " |" for r in rows]
        lines += [""]
    notes = RESULTS / "NOTES.md"
    if notes.exists():
        lines += [notes.read_text()]
    (RESULTS / "README.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "results.json").write_text(json.dumps(out, indent=1) + "\n")
    print("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.value_bits", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("setting", choices=sorted(SETTINGS))
    r.add_argument("--values", default=",".join(CODERS), help="comma-separated value coders")
    r.add_argument("--seeds", help="comma-separated seeds (default: the setting's)")
    r.add_argument("--values-scope", choices=SCOPES, default="tensor",
                   help="sim.values_scope: one value block per tensor (default) or per message")
    sub.add_parser("report")
    args = ap.parse_args(argv)
    if args.cmd == "run":
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else list(SETTINGS[args.setting]["seeds"])
        run(args.setting, args.values.split(","), seeds, args.values_scope)
    report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
