"""Mode connectivity curves (Garipov et al. 2018): fit, profile, store, draw, report.

Two minima of a small MLP on the built-in ``synthetic`` data: A and B from one
initialisation (different data orders), C from another initialisation. The line from A to
B has almost no barrier, the line from A to C a clear one, which the fitted Bezier curve
removes almost entirely.
"""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape.connectivity import (
    CurveResult,
    curve_profile,
    fit_curve,
    linear_barrier,
    path_weights,
    read_curve,
)
from landscape.data import load_data
from landscape.objective import Objective
from landscape.store import read_surface
from landscape.training import train

FIT = {"epochs": 30, "lr": 0.3, "batch_size": 50, "seed": 0, "progress": False}


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(20, 32), nn.ReLU(), nn.Linear(32, 4))


@pytest.fixture(scope="module")
def minima():
    """(A, B, C, train pair, test pair): A, B share an initialisation, C does not."""
    bundle = load_data("synthetic", n_train=500, n_test=500)

    def fit(model: nn.Module, seed: int) -> nn.Module:
        kw = {"epochs": 20, "lr": 0.1, "batch_size": 50, "weight_decay": 0.0}
        return train(model, bundle, seed=seed, progress=False, **kw).model

    init = _mlp(0)
    a = fit(copy.deepcopy(init), 1)
    b = fit(copy.deepcopy(init), 2)
    c = fit(_mlp(5), 3)
    return a, b, c, bundle.train.tensors, bundle.test.tensors


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_same(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_path_weights():
    assert path_weights("line", 0.25) == (0.75, 0.0, 0.25)
    assert path_weights("bezier", 0.5) == (0.25, 0.5, 0.25)
    assert path_weights("polychain", 0.25) == (0.5, 0.5, 0.0)
    assert path_weights("polychain", 0.75) == (0.0, 0.5, 0.5)
    for kind in ("line", "bezier", "polychain"):
        for t in (0.0, 0.3, 0.5, 1.0):
            assert sum(path_weights(kind, t)) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="kind"):
        path_weights("spline", 0.5)


def test_one_initialisation_has_a_lower_line_barrier_than_two(minima):
    a, b, c, train_xy, _ = minima
    same = linear_barrier(a, b, train_xy, num=25)
    different = linear_barrier(a, c, train_xy, num=25)
    # measured: 0.0010 (one initialisation) vs 0.244 (two); over four pairs of
    # initialisation seeds 0.0007-0.0013 vs 0.12-0.24
    assert same.barrier < 0.02
    assert different.barrier > 0.1
    assert different.barrier > 20 * same.barrier
    assert different.error_barrier > same.error_barrier


def test_fitted_bezier_curve_lies_below_the_line(minima):
    a, _, c, train_xy, test_xy = minima
    states = _state(a), _state(c)
    rng = torch.get_rng_state()
    res = fit_curve(a, c, train_xy, kind="bezier", test_data=test_xy, **FIT)
    assert isinstance(res, CurveResult)
    # measured: line 0.244 (max loss 0.284, error barrier 11.8 pp), curve 0.013 (max
    # loss 0.053, 0.6 pp); over four pairs of seeds the curve's barrier stays near 0.01
    assert res.curve.max_loss < res.line.max_loss
    assert res.barrier < 0.05 < 0.1 < res.line_barrier
    assert res.curve.error_barrier < res.line.error_barrier
    assert res.test_curve is not None and res.test_line is not None
    assert res.test_curve.max_loss < res.test_line.max_loss
    # the ends are the two networks, exactly
    la = Objective(a, train_xy).evaluate()["loss"]
    lc = Objective(c, train_xy).evaluate()["loss"]
    assert res.curve.loss[0] == res.line.loss[0] == la
    assert res.curve.loss[-1] == res.line.loss[-1] == lc
    assert res.history.shape == (FIT["epochs"],) and res.history[-1] < res.history[0]
    # the models and the caller's random state are left as found
    _assert_same(a, states[0])
    _assert_same(c, states[1])
    assert torch.equal(torch.get_rng_state(), rng)
    # the same curve evaluated again from its bend
    again = curve_profile(a, c, res.bend, train_xy, kind="bezier", num=25)
    np.testing.assert_allclose(again.loss, res.curve.loss, rtol=1e-6)
    assert res.info["seed"] == 0 and res.info["kind"] == "bezier"


def test_polychain_passes_through_the_bend(minima):
    a, b, _, train_xy, _ = minima
    res = fit_curve(a, b, train_xy, kind="polychain", num=5, **{**FIT, "epochs": 2})
    assert res.kind == "polychain"
    probe = copy.deepcopy(a)
    with torch.no_grad():
        for p, t in zip(probe.parameters(), res.bend, strict=False):
            p.copy_(t)
    assert res.curve.loss[2] == pytest.approx(Objective(probe, train_xy).evaluate()["loss"])


def test_curve_file_round_trip_plot_and_report(minima, tmp_path):
    from landscape.plotting.files import plot_file
    from landscape.plotting.static import plot_connectivity
    from landscape.report import build_report

    a, b, _, train_xy, test_xy = minima
    out = tmp_path / "curve.h5"
    res = fit_curve(a, b, train_xy, test_data=test_xy, num=7, out=out, **{**FIT, "epochs": 2})
    back = read_curve(out)
    assert back.kind == "bezier"
    for name in ("curve", "line", "test_curve", "test_line"):
        mine, stored = getattr(res, name), getattr(back, name)
        np.testing.assert_array_equal(stored.alphas, mine.alphas)
        np.testing.assert_array_equal(stored.loss, mine.loss)
        np.testing.assert_array_equal(stored.acc, mine.acc)
        assert stored.barrier == mine.barrier
    assert back.names == res.names
    for t, u in zip(back.bend, res.bend, strict=True):
        assert torch.equal(t, u)
    np.testing.assert_array_equal(back.history, res.history)
    assert back.info["weights_b_sha256"] == res.info["weights_b_sha256"]
    # a 1-D surface file to the surface readers
    surface = read_surface(out)
    assert surface.ndim == 1 and surface.complete
    np.testing.assert_array_equal(surface.x, res.t)
    np.testing.assert_array_equal(surface.values["train_loss"], res.curve.loss)
    np.testing.assert_array_equal(surface.values["line_test_acc"], res.test_line.acc)
    assert surface.attrs["connectivity"] == "bezier"
    with pytest.raises(ValueError, match="exists"):
        res.save(out)
    with pytest.raises(ValueError, match="exists"):
        fit_curve(a, b, train_xy, out=out, **FIT)
    res.save(out, overwrite=True)
    # drawn, and in the report
    fig = plot_connectivity(out)
    assert len(fig.axes) == 2 and len(fig.axes[0].lines) == 4
    assert plot_file(out, tmp_path / "curve.png").stat().st_size > 0
    assert "line test loss" in plot_file(out, tmp_path / "curve.html").read_text()
    page = build_report([out], tmp_path / "report.html").read_text()
    assert "Mode connectivity" in page and "curve barrier" in page
    with pytest.raises(ValueError, match="curve file"):
        read_curve(_plain_surface(tmp_path / "plain.h5"))


def _plain_surface(path):
    from landscape.store import open_surface_file

    with open_surface_file(
        path, x=np.linspace(0, 1, 3), y=None, fields=["train_loss"], identity={}
    ) as w:
        w.write([0, 1, 2], [{"train_loss": 1.0}] * 3)
    return path


def test_batchnorm_network_fits_and_is_left_as_found():
    torch.manual_seed(0)
    x, y = torch.randn(64, 5) * 2 + 1, torch.randint(0, 3, (64,))

    def net():
        return nn.Sequential(
            nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Dropout(0.1), nn.Linear(8, 3)
        )

    a, b = net(), net()
    a.train()
    b.eval()
    states = _state(a), _state(b)
    res = fit_curve(a, b, (x, y), epochs=3, lr=0.05, batch_size=16, num=5, progress=False)
    assert res.info["bn_recomputed"] is True
    assert np.isfinite(res.curve.loss).all() and np.isfinite(res.line.loss).all()
    _assert_same(a, states[0])  # num_batches_tracked included
    _assert_same(b, states[1])
    assert a.training and all(m.training for m in a.modules())
    assert not b.training
    assert a[1].momentum == 0.1


def test_invalid_options():
    a, b = _mlp(0), _mlp(1)
    xy = (torch.randn(8, 20), torch.randint(0, 4, (8,)))
    for kw, match in (
        ({"kind": "line"}, "kind"),
        ({"epochs": 0}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"schedule": "step"}, "schedule"),
        ({"num": 2}, "num"),
    ):
        with pytest.raises(ValueError, match=match):
            fit_curve(a, b, xy, **kw)


def test_cli_connect(tmp_path, capsys):
    from landscape.cli import main

    common = [
        *("--data", "synthetic", "--data-arg", "n_train=48", "--data-arg", "n_test=16"),
        *("--data-arg", "dim=5", "--model", "mlp", "--model-arg", "hidden=[4]"),
        *("--batch-size", "16", "--epochs", "1", "--no-progress"),
    ]
    for seed in (0, 1):
        assert (
            main(["train", *common, "--seed", str(seed), "--out", str(tmp_path / f"r{seed}")]) == 0
        )
    a, b = tmp_path / "r0" / "final.pt", tmp_path / "r1" / "final.pt"
    out = tmp_path / "curve.h5"
    args = ["connect", str(a), str(b), "--out", str(out), "--epochs", "1", "--num", "3"]
    assert main([*args, "--no-progress"]) == 0
    assert "bezier curve, barrier" in capsys.readouterr().out
    res = read_curve(out)
    assert res.test_curve is not None and len(res.t) == 3
    assert res.info["checkpoint_a"] == str(a) and len(res.info["checkpoint_b_sha256"]) == 64
    # refused before any work: an existing --out, a wrong suffix, a bad option
    for bad in (
        [*args],
        [*args[:4], str(tmp_path / "c.png")],
        [*args, "--overwrite", "--momentum", "1.5"],
    ):
        assert main(bad) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("landscape connect: error:") and "\n" not in err
