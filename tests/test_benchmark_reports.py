"""The decision logic the benchmark reports print (no runs: synthetic rows)."""

from __future__ import annotations

import pytest

from benchmarks import sparsyfed_repro as sf

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
