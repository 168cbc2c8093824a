import copy
import logging

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _surface_problem import make_problem

from landscape.directions import random_directions
from landscape.store import read_surface
from landscape.surface import GridSpec, compute_surface, parse_grid


def _by_hand(model, names, origin, dx, dy, a, b, x, y, loss=F.cross_entropy):
    """Loss and accuracy of a fresh copy with weights origin + a dx + b dy, computed directly."""
    m = copy.deepcopy(model)
    tensors = dict(m.named_parameters()) | dict(m.named_buffers())
    with torch.no_grad():
        for n, o, u, v in zip(names, origin, dx, dy):
            tensors[n].copy_(o.double().add(u.double(), alpha=a).add(v.double(), alpha=b).float())
    m.eval()
    with torch.no_grad():
        out = m(x)
        return float(loss(out, y)), float((out.argmax(1) == y).double().mean() * 100)


def test_values_recomputed_by_hand(tmp_path):
    model, x, y = make_problem(n=50)
    d = random_directions(model, seed=4)
    origin = [p.detach().clone() for p in model.parameters()]
    s = compute_surface(
        model,
        (x, y),
        x="-1:1:3",
        y="-0.5:1:4",
        directions=d,
        out=tmp_path / "s.h5",
        batch_size=16,
        test_data=(x[:20], y[:20]),
        progress=False,
    )
    assert s.shape == (4, 3) and s.complete
    assert set(s.values) == {"train_loss", "train_acc", "test_loss", "test_acc"}
    for iy, ix in [(0, 0), (3, 2), (1, 1), (2, 0)]:
        a, b = s.x[ix], s.y[iy]
        loss, acc = _by_hand(model, d.names, origin, d.x, d.y, a, b, x, y)
        assert s.values["train_loss"][iy, ix] == pytest.approx(loss, rel=1e-5, abs=1e-6)
        assert s.values["train_acc"][iy, ix] == pytest.approx(acc, abs=1e-9)
        tloss, _ = _by_hand(model, d.names, origin, d.x, d.y, a, b, x[:20], y[:20])
        assert s.values["test_loss"][iy, ix] == pytest.approx(tloss, rel=1e-5, abs=1e-6)
    # the same values in the file, rows are y
    again = read_surface(tmp_path / "s.h5")
    np.testing.assert_array_equal(again.values["train_loss"], s.values["train_loss"])
    assert again.attrs["seed"] == 0 or again.attrs["kind"] == "random"


def test_model_left_exactly_as_given():
    model, x, y = make_problem()
    model.train()
    model.fc.eval()  # a mixed mode must survive too
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = [id(p) for p in model.parameters()]
    compute_surface(model, (x, y), x="-1:1:3", y="-1:1:3", states=True, ignore=None, progress=False)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert [id(p) for p in model.parameters()] == params
    assert model.training and model.conv.training and not model.fc.training
    assert all(p.grad is None for p in model.parameters())


def test_states_mode_moves_running_stats_by_hand():
    model, x, y = make_problem()
    d = random_directions(model, states=True, ignore=None, norm="layer", seed=1)
    names = d.names
    origin = [
        t.detach().clone()
        for t in ([*list(model.parameters()), model.bn.running_mean, model.bn.running_var])
    ]
    s = compute_surface(model, (x, y), x=[0.3], y=[-0.2], directions=d, progress=False)
    loss, _ = _by_hand(model, names, origin, d.x, d.y, 0.3, -0.2, x, y)
    assert s.values["train_loss"][0, 0] == pytest.approx(loss, rel=1e-5)


def test_one_dimensional_custom_loss_metrics_and_dict_batches():
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 1)
    xs = torch.randn(30, 3)
    ys = torch.randn(30, 1)
    batches = [{"x": xs[i : i + 8], "y": ys[i : i + 8]} for i in range(0, 30, 8)]
    direction = [torch.ones_like(p) for p in model.parameters()]
    s = compute_surface(
        model,
        batches,
        x="-2:2:5",
        directions=direction,
        loss_fn=F.mse_loss,
        metrics={"mae": lambda o, t: (o - t).abs().mean()},
        progress=False,
    )
    assert s.ndim == 1 and set(s.values) == {"train_loss", "train_mae"}  # no accuracy
    w0, b0 = model.weight.detach().clone(), model.bias.detach().clone()
    for i, a in enumerate(s.x):
        pred = xs @ (w0 + a).T + (b0 + a)
        assert s.values["train_loss"][i] == pytest.approx(float(F.mse_loss(pred, ys)), rel=1e-5)
        assert s.values["train_mae"][i] == pytest.approx(float((pred - ys).abs().mean()), rel=1e-5)


def test_nonfinite_stored_as_nan_and_counted(tmp_path, caplog):
    model, x, y = make_problem()
    direction = [torch.zeros_like(p) for p in model.parameters()]
    direction[-1] = torch.ones_like(direction[-1])  # fc.bias

    def loss_fn(out, target):  # blows up far from the centre
        return F.cross_entropy(out, target) * (torch.inf if out.abs().max() > 80 else 1.0)

    with caplog.at_level(logging.WARNING, logger="landscape.surface"):
        s = compute_surface(
            model,
            (x, y),
            x="-100:100:5",
            directions=direction,
            loss_fn=loss_fn,
            out=tmp_path / "nan.h5",
            progress=False,
        )
    assert np.isnan(s.values["train_loss"][[0, 4]]).all()
    assert np.isfinite(s.values["train_loss"][1:4]).all()
    assert s.done.all() and s.attrs["nonfinite_points"] == 2
    assert "2 of 5 grid points gave a non-finite loss" in caplog.text


@pytest.mark.parametrize("mode", ["vmap", "auto"])
def test_vmap_and_auto_agree_with_loop(mode):
    model, x, y = make_problem()
    kw = {"x": "-1:1:4", "y": "-1:1:3", "seed": 2, "progress": False, "batch_size": 20}
    loop = compute_surface(model, (x, y), evaluation="loop", **kw)
    other = compute_surface(model, (x, y), evaluation=mode, points_per_batch=3, **kw)
    for k in loop.values:
        np.testing.assert_allclose(other.values[k], loop.values[k], rtol=1e-5, atol=1e-6)


def test_parse_grid_and_bad_arguments():
    assert parse_grid("-1:1:51") == GridSpec(-1.0, 1.0, 51)
    np.testing.assert_array_equal(parse_grid("0:1:3").values(), [0, 0.5, 1])
    assert str(parse_grid("-0.5:1.5:41")) == "-0.5:1.5:41"
    for bad in ["-1:1", "a:1:5", "-1:1:0", "-1:1:2.5", "1:1:3", "inf:1:3", ""]:
        with pytest.raises(ValueError, match="Invalid x"):
            parse_grid(bad, name="x")
    model, x, y = make_problem()
    with pytest.raises(ValueError, match="Invalid evaluation"):
        compute_surface(model, (x, y), x="-1:1:3", evaluation="fast")
    with pytest.raises(ValueError, match="needs two directions"):
        compute_surface(
            model,
            (x, y),
            x="-1:1:3",
            y="-1:1:3",
            directions=[torch.ones_like(p) for p in model.parameters()],
        )
    with pytest.raises(ValueError, match="Invalid y"):
        compute_surface(model, (x, y), x="-1:1:3", y="-1:1:x")
