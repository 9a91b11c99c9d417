"""Does the CPU's SIMD dispatch change fl's results? Runs 2 FedAvg rounds of the demo setting
(4 clients) in fresh processes with torch's default dispatch and with ATen pinned to AVX2, and
prints accuracy, loss and a digest of the model for each (the README's determinism note)::

    python tools/simd_dispatch.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CHILD = r"""
import hashlib, json, torch
from fl.config import resolve_config
from fl.simulation import run_simulation
cfg = resolve_config(algorithm="fedavg", setting="demo", model="small-cnn",
                     sets=["rounds=2", "sim.clients=4", "sim.clients_per_round=0"])
r = run_simulation(cfg)
sha = hashlib.sha256(b"".join(r.params[k].tobytes() for k in sorted(r.params))).hexdigest()[:16]
print(json.dumps({"capability": torch.backends.cpu.get_cpu_capability(),
                  "accuracy": r.metrics[-1]["accuracy"], "train_loss": r.metrics[-1]["train_loss"],
                  "model_sha256": sha}))
"""


def main() -> None:
    for label, extra in (("default dispatch", {}), ("ATEN_CPU_CAPABILITY=avx2", {"ATEN_CPU_CAPABILITY": "avx2"})):
        env = {**os.environ, **extra, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip().splitlines()[-1]
        print(f"{label:28s} {json.loads(out)}")


if __name__ == "__main__":
    main()
