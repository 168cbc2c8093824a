"""The statistics of ``landscape.correlation``: tau-a, its bootstrap, the granulated ψ/Ψ."""

import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from landscape.correlation import (
    bootstrap_tau,
    granulated_tau,
    kendall_tau,
    population_axes,
)


def test_without_ties_tau_a_equals_scipy():
    rng = np.random.default_rng(0)
    for n in (2, 5, 40):
        mu, g = rng.normal(size=n), rng.normal(size=n)
        assert kendall_tau(mu, g) == pytest.approx(kendalltau(mu, g).statistic, abs=1e-12)
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == 1.0
    assert kendall_tau([1, 2, 3], [30, 20, 10]) == -1.0


def test_ties_count_zero_and_stay_in_the_denominator():
    # pairs (0,1): μ tied -> 0; (0,2): +1; (1,2): +1  =>  τ = 2/3 (tau-b would be 0.82)
    assert kendall_tau([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / 3)
    # (0,1): +1, (0,2): +1, (0,3): -1, (1,2): gap tied 0, (1,3): -1, (2,3): -1 => -1/6
    assert kendall_tau([1, 2, 3, 4], [0, 5, 5, -1]) == pytest.approx(-1 / 6)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) == 0.0
    # tau-a from scipy's tau-b: τ_a = τ_b · sqrt((n0 − n1)(n0 − n2)) / n0
    rng = np.random.default_rng(1)
    mu, g = rng.integers(0, 4, 30), rng.integers(0, 3, 30)

    def tied(x):
        _, counts = np.unique(x, return_counts=True)
        return (counts * (counts - 1) // 2).sum()

    n0 = 30 * 29 / 2
    tau_b = kendalltau(mu, g, variant="b").statistic
    expected = tau_b * math.sqrt((n0 - tied(mu)) * (n0 - tied(g))) / n0
    assert kendall_tau(mu, g) == pytest.approx(expected, abs=1e-12)


def test_degenerate_and_bad_inputs():
    assert math.isnan(kendall_tau([1.0], [2.0]))
    assert all(math.isnan(v) for v in bootstrap_tau([1, 2], [1, 2]))
    with pytest.raises(ValueError, match="nan or inf"):
        kendall_tau([1, math.nan], [1, 2])
    with pytest.raises(ValueError, match="3 values for 2 measures"):
        kendall_tau([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="Invalid draws"):
        bootstrap_tau([1, 2, 3], [1, 2, 3], draws=10)
    with pytest.raises(ValueError, match="Invalid confidence"):
        granulated_tau([1, 2], [1, 2], [{}, {}], confidence=1.5)
    with pytest.raises(ValueError, match="Invalid hparams"):
        granulated_tau([1, 2], [1, 2], [{}])


def test_bootstrap_resamples_models_with_tau_a_of_each_draw():
    rng = np.random.default_rng(2)
    mu = rng.normal(size=12)
    g = mu + rng.normal(scale=0.7, size=12)
    lo, hi = bootstrap_tau(mu, g, draws=500, seed=3, confidence=0.9)
    # the same counts, expanded into resampled populations and measured one by one
    counts = np.random.default_rng(3).multinomial(12, np.full(12, 1 / 12), size=500)
    taus = [kendall_tau(mu[np.repeat(np.arange(12), c)], g[np.repeat(np.arange(12), c)])
            for c in counts]  # fmt: skip
    assert (lo, hi) == pytest.approx(tuple(np.quantile(taus, [0.05, 0.95])), abs=1e-12)
    assert lo < kendall_tau(mu, g) < hi
    assert bootstrap_tau(mu, g, seed=3) == bootstrap_tau(mu, g, seed=3)
    assert bootstrap_tau(mu, g, seed=3) != bootstrap_tau(mu, g, seed=4)


def _grid(optimizers, lrs):
    return [{"optimizer": o, "lr": lr} for o in optimizers for lr in lrs]


def test_high_tau_with_a_low_psi_on_one_axis():
    # The gap grows with the optimizer index and the lr; the measure follows the
    # optimizer but falls with the lr: across optimizers every pair agrees, within
    # one optimizer every pair disagrees.
    hp = _grid([0, 1, 2], [0.1, 0.2])
    gap = [10 * h["optimizer"] + 10 * h["lr"] for h in hp]
    mu = [10 * h["optimizer"] - 10 * h["lr"] for h in hp]
    assert kendall_tau(mu, gap) == pytest.approx((12 - 3) / 15)  # 0.6
    gran = granulated_tau(mu, gap, hp, draws=200)
    assert gran.psi["optimizer"].value == 1.0 and gran.psi["optimizer"].groups == 2
    assert gran.psi["lr"].value == -1.0 and gran.psi["lr"].groups == 3
    assert gran.psi["lr"].taus == (-1.0, -1.0, -1.0)
    assert gran.value == 0.0
    assert gran.psi["lr"].ci == (-1.0, -1.0)


def test_psi_is_the_mean_over_groups_bootstrapped_over_groups():
    hp = _grid(["sgd", "sam"], [0.1, 0.2, 0.4])
    gap = [0, 1, 2, 0, 1, 2]
    mu = [0, 1, 2, 2, 1, 0]  # lr: +1 under sgd, −1 under sam
    gran = granulated_tau(mu, gap, hp, draws=400, seed=1)
    assert gran.psi["lr"].taus == (1.0, -1.0) and gran.psi["lr"].value == 0.0
    lo, hi = gran.psi["lr"].ci
    assert -1.0 <= lo < 0.0 < hi <= 1.0
    assert gran == granulated_tau(mu, gap, hp, draws=400, seed=1)  # seeded
    # optimizer: groups of one lr each, τ over the one pair: sign(Δμ)·sign(0) = 0
    assert gran.psi["optimizer"].taus == (0.0, 0.0, 0.0)
    # a single group: ψ but no interval
    one = granulated_tau([0, 1], [0, 1], [{"lr": 0.1}, {"lr": 0.2}], draws=100)
    assert one.psi["lr"].value == 1.0 and all(math.isnan(v) for v in one.psi["lr"].ci)


def test_an_axis_never_varied_alone_has_no_psi_and_psi_averages_the_others():
    # the batch size changes with the optimizer: neither varies alone
    hp = [
        {"optimizer": "sgd", "lr": 0.1, "bs": 32},
        {"optimizer": "sgd", "lr": 0.2, "bs": 32},
        {"optimizer": "sam", "lr": 0.1, "bs": 64},
    ]
    gran = granulated_tau([0, 1, 2], [0, 1, 2], hp, axes=["optimizer", "lr", "bs"], draws=100)
    assert gran.psi["lr"].value == 1.0
    assert math.isnan(gran.psi["optimizer"].value) and gran.psi["optimizer"].groups == 0
    assert math.isnan(gran.psi["bs"].value)
    assert gran.value == 1.0  # the mean of the defined ψ
    # by default they are one axis, which varies alone
    assert population_axes(hp) == {"optimizer": ["optimizer", "bs"], "lr": ["lr"]}
    gran = granulated_tau([0, 1, 2], [0, 1, 2], hp, draws=100)
    assert gran.psi["optimizer"].taus == (1.0,)


def test_replicates_are_grouped_but_never_compared_with_each_other():
    hp = [{"lr": lr} for lr in (0.1, 0.1, 0.2, 0.2)]  # two seeds of each lr
    gap = [0, 5, 1, 6]
    mu = [1, 0, 2, 3]  # the replicates disagree; every pair across lrs agrees
    gran = granulated_tau(mu, gap, hp, draws=100)
    assert gran.psi["lr"].taus == (pytest.approx(0.5),)  # pairs (0,2)+ (0,3)+ (1,2)- (1,3)+
    assert kendall_tau(mu, gap) == pytest.approx(2 / 6)


def test_a_conditional_hyperparameter_is_not_held_fixed_by_the_axis_that_decides_it():
    hp = [
        {"optimizer": o, "lr": lr, "rho": rho}
        for o, rhos in (("sgd", [None]), ("sam", [0.05, 0.1]))
        for rho in rhos
        for lr in (0.1, 0.2)
    ]
    axes = population_axes(hp)
    assert axes == {"optimizer": ["optimizer"], "lr": ["lr"], "rho": ["rho"]}
    gap = list(range(6))
    mu = list(range(6))
    gran = granulated_tau(mu, gap, hp, draws=100)
    # optimizer: one group per lr holding sgd and both SAMs; pairs sgd–sam only
    assert gran.psi["optimizer"].groups == 2
    assert gran.psi["rho"].groups == 2 and gran.psi["lr"].groups == 3


def test_population_axes_merge_keys_that_vary_together_and_shorten_names():
    configs = [
        {"optimizer": o, "hparams.lr": lr, "hparams.rho": rho, "seed": s, "data.seed": s,
         "epochs": 1, "model.hidden": [8]}
        for o, rho in (("sgd", None), ("sam", 0.05))
        for lr in (0.1, 0.2)
        for s in (0, 1)
    ]  # fmt: skip
    assert population_axes(configs) == {
        "optimizer": ["optimizer", "hparams.rho"],
        "lr": ["hparams.lr"],
        "seed": ["seed", "data.seed"],
    }
    clash = [{"a.lr": 1, "b.lr": 1}, {"a.lr": 2, "b.lr": 1}, {"a.lr": 2, "b.lr": 3}]
    assert population_axes(clash) == {"a.lr": ["a.lr"], "b.lr": ["b.lr"]}
