"""The verdict, ratio and table helpers of benchmarks/_science_common.py (no training)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

# benchmarks/ is not a package: load the module from its file (sys.path untouched).
_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "_science_common.py"
_SPEC = importlib.util.spec_from_file_location("_science_common", _PATH)
common = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(common)

HOLDS, REPRODUCED = common.HOLDS, common.REPRODUCED
column, holds_count, mean_sd = common.column, common.holds_count, common.mean_sd
paired_diff, paired_ratio, runs_table = common.paired_diff, common.paired_ratio, common.runs_table
steps_per_epoch, table, verdict = common.steps_per_epoch, common.table, common.verdict


def test_paired_ratio_counts_seeds_and_averages_ratios():
    a, b = [1.0, 3.0, 2.0], [2.0, 2.0, 4.0]
    assert paired_ratio(a, b, lower=True) == (2, pytest.approx((0.5 + 1.5 + 0.5) / 3))
    assert paired_ratio(a, b, lower=False) == (1, pytest.approx(2.5 / 3))


def test_paired_diff_and_ties():
    a, b = [0.5, 0.2, 0.3], [0.1, 0.2, 0.4]
    assert paired_diff(a, b, lower=False) == (1, pytest.approx((0.4 + 0.0 - 0.1) / 3))
    assert paired_diff(a, b, lower=False, ties=True)[0] == 2
    assert holds_count(a, b, lower=True) == 1
    assert holds_count(a, b, lower=True, ties=True) == 2


def test_paired_needs_equal_nonempty_lengths():
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        paired_ratio([1.0], [1.0, 2.0], lower=True)
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        paired_diff([], [], lower=True)


@pytest.mark.parametrize(
    ("holds", "n", "science", "seeds"),
    [
        (3, 3, "reproduced", "holds"),
        (2, 3, "mostly (not every seed)", "mixed"),
        (1, 3, "NOT reproduced", "mixed"),
        (2, 4, "NOT reproduced", "mixed"),
        (0, 3, "NOT reproduced", "does not hold"),
    ],
)
def test_verdict_words(holds, n, science, seeds):
    assert verdict(holds, n) == verdict(holds, n, REPRODUCED) == science
    assert verdict(holds, n, HOLDS) == seeds


def test_verdict_rejects_bad_counts():
    for holds, n in ((4, 3), (-1, 3), (0, 0)):
        with pytest.raises(ValueError, match="Invalid count"):
            verdict(holds, n)


def test_tables():
    per_seed = [{"A": {"x": 1.0}, "B": {"x": 4.0}}, {"A": {"x": 3.0}, "B": {"x": 4.0}}]
    assert column(per_seed, "A", "x") == [1.0, 3.0]
    assert mean_sd([1.0, 3.0]) == "2 ± 1.4"
    assert mean_sd([5.0]) == "5 ± 0"
    assert runs_table(per_seed, ["A", "B"], [("x", "X")]).splitlines() == [
        "| run | X       |",
        "|-----|---------|",
        "| A   | 2 ± 1.4 |",
        "| B   | 4 ± 0   |",
    ]
    assert table(["a"], [["bcd"]]).splitlines()[1] == "|-----|"


def test_steps_per_epoch():
    assert steps_per_epoch(1294, 32) == 41  # 40 full batches and one of 14
    assert steps_per_epoch(65, 32) == 2  # a last batch of one example is dropped
    assert steps_per_epoch(10, 32) == 1
