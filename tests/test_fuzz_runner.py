"""tools/fuzz_long.py: the long fuzz runner, run tiny; every detector is proven to fire."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import fuzz_long  # noqa: E402


def test_a_tiny_run_counts_injected_crash_hang_exception_and_memory(tmp_path):
    n = 400
    inject = {"crash": 37, "hang": 250, "slow": 300, "other": 101, "memory": 5}   # pass 0 is traced
    cmd = [sys.executable, str(ROOT / "tools" / "fuzz_long.py"), "--count", str(n), "--workers", "2",
           "--quick-corpus", "--timeout", "2", "--confirm-timeout", "3", "--out", str(tmp_path),
           "--progress-every", "1000"]
    cmd += [a for k, i in inject.items() for a in ("--inject", f"{k}:{i}")]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    res = json.loads((tmp_path / f"fuzz_seed0_n{n}.json").read_text())
    s = res["summary"]
    assert s["inputs"] == n
    assert (s["crashes"], s["hangs"], s["other_exceptions"], s["over_memory_limit"]) == (1, 1, 1, 1)
    assert s["slow"] >= 1          # the injected one; a numba compile on a loaded machine may add one
    assert s["silent_changes"] == 0 and 0 < s["ok"] < n
    kinds = {e["input"]: e["kind"] for e in res["events"]}
    assert all(kinds[i] == k for k, i in inject.items())
    what = {e["kind"]: e["what"] for e in res["events"] if e["input"] in inject.values()}
    assert "s of CPU" in what["slow"] and "alone: " in what["slow"]
    assert "no result after 3.0 s either" in what["hang"]
    targets = res["targets"]
    assert {"decode", "bundle", "state", "checkpoint", "checkpoint_resigned"} <= set(targets)
    documented = {name for t in targets.values() for name in t["documented"]}
    assert {"ChecksumError", "StateError", "CheckpointError"} <= documented
    md = (tmp_path / f"fuzz_seed0_n{n}.md").read_text()
    assert "crashes 1, hangs 1, exceptions outside SparseCodecError 1" in md


def test_inputs_are_a_pure_function_of_seed_and_index():
    corpus = [{"target": "decode", "data": bytes(range(40))}, {"target": "decode", "data": b"SC\x01\x00" * 5}]
    a = [fuzz_long.mutate(corpus, 3, i) for i in range(200)]
    assert a == [fuzz_long.mutate(corpus, 3, i) for i in range(200)]
    assert a != [fuzz_long.mutate(corpus, 4, i) for i in range(200)]
    assert sum(m[1] != corpus[m[0]]["data"] for m in a) > 190       # almost every input changed
    assert {m[0] for m in a} == {0, 1}
