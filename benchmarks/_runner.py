"""Plumbing shared by the benchmark runners that drive ``python -m fl run`` into a run directory.

:func:`run_recorded` runs one ``fl`` command and writes ``<out>/command.json`` (the runner's
command, the exact ``fl`` command, the wall time summed over resumed sessions, the machine); once
the run has all its rounds it deletes the files that are not results (checkpoint, coded model).
:func:`load_run` reads a finished run directory back for a report.
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

__all__ = ["run_recorded", "load_run"]


def run_recorded(argv: list[str], out: Path, command: str, *, resume: bool,
                 not_results: tuple[str, ...] = ("checkpoint.ckpt", "model.sc")) -> int:
    """Run ``python -m fl <argv>`` (whose ``--out`` is ``out``) and record it; returns its status.

    ``command`` is the runner's own command line, as a user would retype it. With ``resume`` the
    wall time and the sessions of the previous ``command.json`` are carried over.
    """
    from fl.cli import main as fl_main

    record_path = out / "command.json"
    previous = json.loads(record_path.read_text()) if resume and record_path.is_file() else None
    start = time.perf_counter()
    status = fl_main(argv)
    wall = time.perf_counter() - start
    if status != 0:
        return status
    summary = json.loads((out / "summary.json").read_text())
    record = {
        "command": command,
        "fl_command": "python -m fl " + " ".join(argv),
        "wall_seconds": wall + (previous["wall_seconds"] if previous else 0.0),
        "sessions": (previous.get("sessions", []) if previous else []) + [{"command": command, "wall_seconds": wall}],
        "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs), torch threads = 1",
    }
    record_path.write_text(json.dumps(record, indent=2) + "\n")
    if summary["rounds"] == summary["config"]["rounds"]:
        for name in not_results:
            (out / name).unlink(missing_ok=True)
    return 0


def load_run(path: Path) -> dict | None:
    """``{"metrics", "summary", "command", "dir"}`` of a finished run directory, or None."""
    if not (path / "summary.json").is_file():
        return None
    metrics = [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines() if line]
    summary = json.loads((path / "summary.json").read_text())
    command = json.loads((path / "command.json").read_text()) if (path / "command.json").is_file() else {}
    return {"metrics": metrics, "summary": summary, "command": command, "dir": path}
