"""The benchmark runners' shared plumbing (a tiny real run) and the decision logic their reports
print (synthetic rows)."""

from __future__ import annotations

import json

import pytest

from benchmarks import sparsyfed_repro as sf
from benchmarks._runner import load_run, run_recorded

TINY = ["dataset=synthetic-logistic", "data.n_train=120", "data.n_test=40", "data.dim=8",
        "data.num_classes=3", "model=logistic-regression", "model_options.in_features=8",
        "model_options.num_classes=3", "sim.clients=4", "sim.clients_per_round=2",
        "algo.lr=0.2", "algo.batch_size=8", "algo.ec.density=0.25"]


def test_run_recorded_writes_the_record_carries_it_over_a_resume_and_drops_non_results(tmp_path):
    out = tmp_path / "run"
    base = ["run", "--algorithm", "ec", "--out", str(out), "--no-progress"]
    base += [arg for s in TINY for arg in ("--set", s)]
    first = base + ["--rounds", "2"]
    assert run_recorded(first, out, "runner run --rounds 2", resume=False, not_results=()) == 0
    record = json.loads((out / "command.json").read_text())
    assert record["command"] == "runner run --rounds 2"
    assert record["fl_command"] == "python -m fl " + " ".join(first)
    assert (out / "checkpoint.ckpt").is_file()                 # kept: not_results=()
    # a resumed session adds its wall time to the recorded one and then drops the checkpoint
    record["wall_seconds"] = 100.0
    (out / "command.json").write_text(json.dumps(record))
    second = base + ["--rounds", "3", "--resume"]
    assert run_recorded(second, out, "runner run --resume", resume=True) == 0
    record = json.loads((out / "command.json").read_text())
    assert record["wall_seconds"] > 100.0
    assert [s["command"] for s in record["sessions"]] == ["runner run --rounds 2", "runner run --resume"]
    assert not (out / "checkpoint.ckpt").exists()
    run = load_run(out)
    assert [m["round"] for m in run["metrics"]] == [1, 2, 3] and run["summary"]["rounds"] == 3
    assert load_run(tmp_path / "missing") is None

SETUP = "mnist_lda0.1_flarecnn"
KEY = f"accuracy_last{sf.LAST}"


def _seeded(sparsyfed: list[float], topk: list[float]) -> dict:
    return {(SETUP, "sparsyfed-lr0.2"): {seed: {KEY: a} for seed, a in enumerate(sparsyfed)},
            (SETUP, "topk-prune"): {seed: {KEY: a} for seed, a in enumerate(topk)}}


def _verdict(lines: list[str]) -> str:
    (line,) = [x for x in lines if x.startswith("* ")]
    return line


def test_paired_interval_above_zero_when_every_seed_agrees():
    # differences +1.0, +1.2, +0.8 points: mean +1.0, sd 0.2, half-width 4.303 * 0.2 / sqrt(3) = 0.50
    line = _verdict(sf.seed_repeats(_seeded([0.960, 0.962, 0.958], [0.950, 0.950, 0.950])))
    assert "**met**" in line and "SparsyFed is higher" in line
    assert "[+0.50, +1.50]" in line


def test_paired_interval_containing_zero_is_called_a_tie_even_when_the_mean_favours_sparsyfed():
    line = _verdict(sf.seed_repeats(_seeded([0.960, 0.945, 0.958], [0.950, 0.950, 0.950])))
    assert "**met**" in line and "not distinguishable" in line


def test_lower_sparsyfed_mean_is_not_met():
    line = _verdict(sf.seed_repeats(_seeded([0.940, 0.941, 0.939], [0.950, 0.950, 0.951])))
    assert "**NOT met**" in line and "Top-K is higher" in line


def test_the_seed_table_reports_mean_and_sample_sd():
    lines = sf.seed_repeats(_seeded([0.95, 0.96, 0.97], [0.95, 0.95, 0.95]))
    (row,) = [x for x in lines if x.startswith(f"| {sf.LABELS['sparsyfed-lr0.2']} |")]
    assert row.endswith("| 0.9600 | 0.0100 |")


@pytest.mark.parametrize("seeds", [[0.95], []])
def test_a_single_seed_gives_no_repeat_section(seeds):
    assert sf.seed_repeats(_seeded(seeds, seeds)) == []


@pytest.mark.parametrize("seed, expected", [("0", None), ("2", 2)])
def test_seed_0_is_the_plain_row_and_other_seeds_get_their_own_directory(monkeypatch, seed, expected):
    seen = {}
    monkeypatch.setattr(sf, "cmd_run", lambda args: seen.update(seed=args.seed) or 0)
    assert sf.main(["run", "--setup", SETUP, "--method", "topk-prune", "--seed", seed]) == 0
    assert seen["seed"] == expected
    name = sf.run_dir(SETUP, "topk-prune", seen["seed"]).name
    assert name == (f"{SETUP}_topk-prune" if expected is None else f"{SETUP}_topk-prune_seed{expected}")


def test_value_bits_rows_read_the_ledger_and_judge_both_targets(tmp_path, monkeypatch):
    from benchmarks import value_bits as vb

    def fake(name, acc, value_bits):
        d = tmp_path / "s" / name
        d.mkdir(parents=True)
        (d / "summary.json").write_text(json.dumps(
            {"final_accuracy": acc, "uplink_bits_per_client_round": 100.0 + value_bits, "rounds": 3}))
        rows = [{"direction": "down", "nbits": 8, "tensors": {}}]
        rows += [{"direction": "up", "nbits": 100 + value_bits,
                  "tensors": {"a": {"index": 40, "values": value_bits // 2}, "b": {"values": value_bits // 2}}}] * 2
        (d / "ledger.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        (d / "values.json").write_text(json.dumps(vb._ledger_stats(d / "ledger.jsonl")))

    fake("fp32_s0", 0.80, 3200)
    fake("fp32_s1", 0.82, 3200)
    fake("q8_s0", 0.795, 800)        # 4x, -1.5 points: bits met, accuracy not
    fake("sign_s0", 0.80, 100)       # 32x, -1 point: both met
    rows = {r["values"]: r for r in vb.rows_for(tmp_path / "s")}
    assert rows["fp32"]["seeds"] == 2 and rows["fp32"]["value bits / msg"] == 3200
    assert rows["q8"]["x fewer value bits"] == 4.0 and rows["q8"]["bits met"]
    assert rows["q8"]["points vs fp32"] == pytest.approx(-1.5) and not rows["q8"]["accuracy met"]
    assert rows["sign"]["bits met"] and rows["sign"]["accuracy met"]
    fake("q8b-message_s0", 0.81, 400)   # sim.values_scope = "message": its own row, same fp32 base
    rows = {(r["values"], r["values scope"]): r for r in vb.rows_for(tmp_path / "s")}
    assert rows["q8", "tensor"]["x fewer value bits"] == 4.0
    assert rows["q8b", "message"]["x fewer value bits"] == 8.0 and rows["q8b", "message"]["bits met"]
    assert vb.run_name("q8b", "message", 0) == "q8b-message_s0" and vb.run_name("q8", "tensor", 1) == "q8_s1"


def test_select_speed_writes_its_table_and_judges_each_target(tmp_path, capsys):
    from benchmarks import select_speed as ss

    ss.main(["--n", "50000", "--repeats", "1", "--inputs", "normal", "--densities", "0.001", "0.01",
             "--out", str(tmp_path)])
    md = (tmp_path / "select_speed.md").read_text()
    record = json.loads((tmp_path / "select_speed.json").read_text())
    assert record["command"].startswith("python -m benchmarks.select_speed --n 50000")
    assert [r["density"] for r in record["rows"]] == [0.001, 0.01]
    assert "| normal | 0.001 | 50 |" in md and "/ log2 C(n, k) |" in md
    # density 0.01 has no target: only 1e-3's two coders are judged
    judged = [line for line in md.splitlines() if line.startswith("- ")]
    assert len(judged) == 2 and all("density 0.001" in line for line in judged)
    assert all(r["index_coder"]["golomb"] == "golomb" and r["index_bits"]["auto"] > 0
               for r in record["rows"])
    # judged against the input's fastest pass, not the one timed next to the encode
    row = {"input": "normal", "density": 0.1, "k": 1, "sum_ms": 1.1, "select_ms": 3.0,
           "select_ratio": 3.0, "encode_ratio": {"golomb": 7.0, "auto": 7.5},
           "encode_ratio_fastest": {"golomb": 7.9, "auto": 8.1},
           "index_coder": {"golomb": "golomb", "auto": "zstd"}, "index_bits": {"golomb": 10, "auto": 5},
           "bound_bits": 4.0}
    text = ss.report([row], ("golomb", "auto"), "head")
    assert "`index='golomb'` (golomb, 10 index bits): 7.90x <= 8x: met" in text
    assert "`index='auto'` (zstd, 5 index bits): 8.10x > 8x: NOT met" in text
