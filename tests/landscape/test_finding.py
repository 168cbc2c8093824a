"""The demo's finding: τ of flatness with test accuracy, its p-value, the one sentence."""

import math
import re

import numpy as np
import pytest
from scipy.stats import kendalltau

from landscape.compare import Comparison
from landscape.correlation import flatness_finding, kendall_tau, permutation_pvalue


def _table(measure, acc, *, labels=None, clean=False, metric="lambda_max"):
    labels = labels or [f"opt{i}" for i in range(len(measure))]
    rows = []
    for label, m, a in zip(labels, measure, acc, strict=True):
        row = {"label": label, metric: {"value": m, "stderr": None}, "test_acc": {"value": a}}
        row["train_clean_acc"] = {"value": 95.0 if clean else None}
        rows.append(row)
    return {"metrics": [metric, "train_clean_acc", "test_acc"], "rows": rows}


def test_pvalue_is_exact_up_to_nine_models_and_matches_scipy_without_ties():
    rng = np.random.default_rng(0)
    for n in (4, 6, 9):
        x, y = rng.permutation(n), rng.permutation(n)
        assert permutation_pvalue(x, y) == pytest.approx(
            kendalltau(x, y, method="exact").pvalue, rel=1e-9
        )
    assert permutation_pvalue([1, 2, 3], [1, 2, 3]) == pytest.approx(2 / 6)  # ±1: 2 of 3!
    assert permutation_pvalue([1, 2, 3, 4], [5, 5, 5, 5]) == 1.0  # all tied: τ = 0 always
    assert math.isnan(permutation_pvalue([1.0], [2.0]))


def test_pvalue_beyond_nine_models_is_a_seeded_estimate():
    rng = np.random.default_rng(1)
    x = np.arange(30.0)
    y = x + rng.normal(scale=20.0, size=30)
    p = permutation_pvalue(x, y, draws=4000, seed=3)
    assert p == permutation_pvalue(x, y, draws=4000, seed=3)
    assert p == pytest.approx(kendalltau(x, y).pvalue, abs=0.02)
    assert permutation_pvalue(x, x, draws=200) == pytest.approx(1 / 201)  # none as extreme
    with pytest.raises(ValueError, match="Invalid draws"):
        permutation_pvalue(x, y, draws=10)
    with pytest.raises(ValueError, match="3 values for 2"):
        permutation_pvalue([1, 2], [1, 2, 3])


def test_flatter_more_accurate():
    mu = [4.1, 2.9, 1.9, 2.6, 2.6, 2.2, 2.7, 2.1, 2.8]
    acc = [92.5, 94.0, 96.1, 94.9, 94.4, 95.5, 94.2, 95.8, 93.9]
    labels = ["sgd", "sam", "asam", "gsam", "agnostic_sam", "gam", "fad", "crsam", "msam"]
    f = flatness_finding(_table(mu, acc, labels=labels, clean=True))
    assert f.tau == pytest.approx(kendall_tau(mu, acc)) and f.tau < -0.8
    assert f.p_value < 0.01 and f.clean and f.measure == "lambda_max"
    assert f.sentence.startswith(
        "Across the 9 models, the flatter the model, the higher its clean test accuracy "
        f"(Kendall τ of λmax with clean test accuracy −{abs(f.tau):.2f}, permutation p"
    )
    assert f.sentence.endswith(
        "asam is both the flattest (λmax 1.9) and the most accurate (96.1 %)."
    )
    assert re.search(r"[.;:]\s+[A-Z]", f.sentence) is None  # one sentence
    assert str(f) == f.sentence


def test_sharper_more_accurate_names_the_flattest_and_the_most_accurate():
    mu = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    acc = [90.0, 91.0, 92.0, 93.0, 94.0, 95.0]
    f = flatness_finding(_table(mu, acc))
    assert f.tau == 1.0 and f.p_value == pytest.approx(2 / 720)
    assert not f.clean  # no train_clean_acc value: no label noise, plain "test accuracy"
    assert "the flatter the model, the lower its test accuracy (Kendall τ" in f.sentence
    assert "+1.00, permutation p = 0.0028)" in f.sentence
    assert f.sentence.endswith(
        "opt0 is the flattest (λmax 1, 90.0 %) and opt5 the most accurate (95.0 %, λmax 6)."
    )


def test_no_relation_and_a_weak_tendency_are_not_called_a_relation():
    mu = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    flat = flatness_finding(_table(mu, [93.0, 95.0, 94.0, 93.5, 96.0, 92.0, 94.5, 95.5, 93.2]))
    assert abs(flat.tau) < 0.2 and flat.p_value > 0.05
    assert "λmax shows no relation to test accuracy" in flat.sentence
    assert "the flatter the model" not in flat.sentence
    weak = flatness_finding(_table(mu, [95.0, 96.0, 94.0, 93.0, 95.5, 92.0, 94.5, 93.5, 92.5]))
    assert -0.6 < weak.tau <= -0.2 and weak.p_value >= 0.05
    assert "the flatter tend to be the more accurate, but not significantly" in weak.sentence
    # Three models can never be significant: τ = −1 is still only a tendency.
    three = flatness_finding(_table([1.0, 2.0, 3.0], [99.0, 98.0, 97.0]))
    assert three.tau == -1.0 and three.p_value == pytest.approx(1 / 3)
    assert "but not significantly" in three.sentence


def test_ties_nan_rows_trace_and_bad_tables():
    # Five tied for the best accuracy, two tied flattest; a diverged row is left out.
    mu = [3.4, 3.1, 2.4, 2.4, 2.9, math.nan]
    acc = [93.04, 93.04, 93.04, 92.76, 93.04, 93.04]
    f = flatness_finding(_table(mu, acc, labels=["a", "b", "c", "d", "e", "f"]))
    assert f.labels == ("a", "b", "c", "d", "e")
    assert "Across the 5 models" in f.sentence
    assert "c and d are the flattest (λmax 2.4) and a, b, c and e the most accurate (93.0 %)" in (
        f.sentence
    )
    # Without λmax the trace is the measure; a Comparison object works as well as its JSON.
    table = _table([20.0, 18.0, 16.0, 17.0], [90.0, 91.0, 93.0, 92.0], metric="trace")
    comp = Comparison(table["metrics"], table["rows"])
    f = flatness_finding(comp)
    assert f.measure == "trace" and "Kendall τ of the Hessian trace with" in f.sentence
    assert "opt2 is both the flattest (trace 16) and the most accurate (93.0 %)" in f.sentence
    assert flatness_finding(comp, measure="trace", clean=True).clean
    with pytest.raises(ValueError, match="none of lambda_max, trace"):
        flatness_finding({"metrics": ["grad_norm", "test_acc"], "rows": []})
    with pytest.raises(ValueError, match="no 'test_acc' column"):
        flatness_finding({"metrics": ["lambda_max"], "rows": []})
    with pytest.raises(ValueError, match="1 rows with finite"):
        flatness_finding(_table([1.0, math.nan], [90.0, 91.0]))
    with pytest.raises(ValueError, match="Invalid alpha"):
        flatness_finding(table, alpha=0)


def test_another_accuracy_column_is_named_as_it_is():
    table = _table([1.0, 2.0, 3.0], [90.0, 80.0, 70.0])
    for row in table["rows"]:
        row["val_acc"] = row.pop("test_acc")
    table["metrics"][-1] = "val_acc"
    f = flatness_finding(table, accuracy="val_acc")
    assert f.accuracy == "val_acc" and "Kendall τ of λmax with val_acc −1.00" in f.sentence
