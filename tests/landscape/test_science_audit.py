"""Audit probes of mode connectivity and generalisation correlation against hand values."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape.connectivity import curve_profile, fit_curve, read_curve


def _pair(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(dtype))
    x = torch.randn(8, 3, generator=g).to(dtype)
    y = torch.randint(0, 2, (8,), generator=g)
    return a, b, x, y


def test_bfloat16_curve_saved_and_profiled_again(tmp_path):
    a, b, x, y = _pair(torch.bfloat16)
    out = tmp_path / "curve.h5"
    res = fit_curve(a, b, (x, y), epochs=2, num=3, batch_size=4, out=out, progress=False)
    stored = read_curve(out)
    for mine, back in zip(res.bend, stored.bend, strict=True):
        np.testing.assert_array_equal(mine.float().numpy(), back.numpy())
    again = curve_profile(a, b, out, (x, y), num=3)
    np.testing.assert_array_equal(again.loss, res.curve.loss)


def test_sweep_refuses_non_finite_values():
    from landscape.sweep import SweepSpec

    fixed = {"data": "digits", "model": "mlp"}
    for grid in (["lr=NaN"], ["lr=0.1,Infinity"], ["lr=-Infinity"]):
        with pytest.raises(ValueError, match="not a finite number"):
            SweepSpec.parse(grid, fixed)
    with pytest.raises(ValueError, match="not a finite number"):
        SweepSpec.parse({"lr": [0.1, float("nan")]}, fixed)
    with pytest.raises(ValueError, match="not a finite number"):
        SweepSpec.parse(["seed=0,1"], {**fixed, "weight_decay": "NaN"})


def test_train_refuses_nan_lr_before_any_work():
    from landscape.training import _check_train_arguments

    ok = dict(epochs=1, batch_size=32, save_every=1, lr=0.1, momentum=0.9, weight_decay=0.0)
    for name in ("lr", "momentum", "weight_decay"):
        with pytest.raises(ValueError, match=f"Invalid {name}"):
            _check_train_arguments(**{**ok, name: float("nan")}, nonfinite="stop", out=None)


def test_granulated_tau_refuses_an_axis_no_model_has():
    from landscape.correlation import granulated_tau

    hp = [{"lr": lr, "bs": bs} for lr in (0.1, 0.01) for bs in (32, 64)]
    mu, gap = [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0]
    with pytest.raises(ValueError, match="Invalid axes: 'lrr'"):
        granulated_tau(mu, gap, hp, axes=["lrr"])
    with pytest.raises(ValueError, match="'optimizer'"):
        granulated_tau(mu, gap, hp, axes={"opt": ["optimizer"]})
    # by hand: ψ_lr = mean over bs groups of τ over the pair that differs in lr
    got = granulated_tau(mu, gap, hp, axes=["lr", "bs"])
    assert got.psi["lr"].value == pytest.approx(1.0)  # both bs groups concordant
    assert got.psi["bs"].value == pytest.approx(1.0)


def test_batchnorm_recompute_with_a_last_batch_of_one_sample():
    from landscape.connectivity import linear_barrier

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn_like(p))
    x, y = torch.randn(9, 3), torch.randint(0, 3, (9,))
    res = linear_barrier(a, b, (x, y), num=3, batch_size=4)  # batches of 4, 4 and 1
    # by hand at α = 0: statistics from the batches of 4 (the sample alone is left out)
    m = copy.deepcopy(a)
    with torch.no_grad():
        h = m[0](x[:8])
        m[1].running_mean.copy_(h.mean(0))
        m[1].running_var.copy_((h[:4].var(0) + h[4:].var(0)) / 2)
        want = float(nn.functional.cross_entropy(m.eval()(x), y))
    assert res.loss[0] == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="at least 2"):
        linear_barrier(a, b, (x[:1], y[:1]), num=3)
    assert linear_barrier(a, b, (x[:1], y[:1]), num=3, recompute_bn=False).loss.shape == (3,)


def test_fit_curve_of_a_batchnorm_network_with_a_last_batch_of_one():
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 5), nn.BatchNorm1d(5), nn.Tanh(), nn.Linear(5, 3))
    b = copy.deepcopy(a)
    x, y = torch.randn(9, 3), torch.randint(0, 3, (9,))
    for data in (TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4)):
        res = fit_curve(a, b, data, epochs=2, batch_size=4, num=3, progress=False)
        assert np.isfinite(res.history).all() and np.isfinite(res.curve.loss).all()
    with pytest.raises(ValueError, match="no batch BatchNorm can train on"):
        fit_curve(a, b, [(x[:1], y[:1])], epochs=1, num=3, progress=False)


def test_barrier_of_a_path_with_a_nan_point_is_nan():
    from landscape.connectivity import BarrierResult

    t = np.linspace(0, 1, 5)
    res = BarrierResult.from_values(t, np.array([1.0, 3.0, np.nan, 1.5, 1.0]), None)
    assert np.isnan(res.barrier) and np.isnan(res.alpha_max)
    res = BarrierResult.from_values(t, np.array([1.0, 3.0, np.inf, 1.5, 1.0]), None)
    assert res.barrier == np.inf and res.alpha_max == 0.5
    res = BarrierResult.from_values(t, np.array([1.0, 3.0, 2.0, 1.5, 2.0]), None)
    assert res.barrier == pytest.approx(1.75) and res.alpha_max == 0.25
