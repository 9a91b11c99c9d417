"""Plots of finished runs: accuracy vs round, vs cumulative uplink bits and vs total bits.

Reads ``metrics.jsonl`` and ``summary.json`` from each run directory (as written by
``python -m fl run``) and writes PNGs with matplotlib's non-interactive Agg backend.

    >>> label_for({"algorithm": "ec", "config": {"algo": {"density": 0.001}}})
    'ec (density=0.001)'
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

from sparsecodec.errors import ConfigError

__all__ = ["read_run", "plot_runs", "label_for", "ACCURACY_VS_ROUND", "ACCURACY_VS_BITS",
           "ACCURACY_VS_TOTAL_BITS"]

ACCURACY_VS_ROUND = "accuracy_vs_round.png"
ACCURACY_VS_BITS = "accuracy_vs_uplink_bits.png"
ACCURACY_VS_TOTAL_BITS = "accuracy_vs_total_bits.png"


def read_run(run_dir: str | os.PathLike) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``(summary, metrics)`` of a run directory; a missing file raises ConfigError."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    except FileNotFoundError as exc:
        raise ConfigError(f"{run_dir} is not a finished run directory (missing {Path(exc.filename).name})") from None
    return summary, metrics


def label_for(summary: dict[str, Any]) -> str:
    """Algorithm name, plus its sparsity when it has one."""
    algo = summary.get("config", {}).get("algo", {})
    if algo.get("density") is not None:
        return f"{summary['algorithm']} (density={algo['density']:g})"
    if "R" in algo:
        return f"{summary['algorithm']} (R={algo['R']:g}%)"
    return str(summary["algorithm"])


def plot_runs(run_dirs: Sequence[str | os.PathLike], out_dir: str | os.PathLike | None = None,
              title: str | None = None) -> list[Path]:
    """Write the two PNGs for ``run_dirs`` into ``out_dir`` (default: the first run's parent)."""
    if not run_dirs:
        raise ConfigError("plot needs at least one run directory")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [read_run(d) for d in run_dirs]
    out = Path(out_dir) if out_dir is not None else Path(run_dirs[0]).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    if title is None:
        s = runs[0][0]
        title = f"{s['dataset']}, {s['model']}, {s['clients_per_round']} of {s['clients']} clients per round"
    paths = []
    for filename, xkey, xlabel, logx in (
            (ACCURACY_VS_ROUND, "round", "round", False),
            (ACCURACY_VS_BITS, "cum_uplink_bits", "cumulative uplink bits (all clients)", True),
            (ACCURACY_VS_TOTAL_BITS, "cum_total_bits", "cumulative bits, uplink + downlink (all clients)", True)):
        fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
        for summary, metrics in runs:
            points = [(m["cum_uplink_bits"] + m["cum_downlink_bits"] if xkey == "cum_total_bits" else m[xkey],
                       m["accuracy"]) for m in metrics if m.get("accuracy") is not None]
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", markersize=3, label=label_for(summary))
        if logx:
            ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy")
        ax.set_title(title, fontsize=9)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / filename)
        plt.close(fig)
        paths.append(out / filename)
    return paths
