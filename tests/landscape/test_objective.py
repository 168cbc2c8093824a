import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.distributed import DistContext
from landscape.objective import Objective, eval_mode


def _net():
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(5, 7), nn.BatchNorm1d(7), nn.Tanh(), nn.Linear(7, 3)).double()


def _data(n=23):
    g = torch.Generator().manual_seed(2)
    return torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randint(
        0, 3, (n,), generator=g
    )


def _reference(model, x, y):
    with eval_mode(model):
        out = model(x)
        loss = F.cross_entropy(out, y)
        grads = torch.autograd.grad(loss, list(model.parameters()))
        acc = (out.argmax(1) == y).double().mean().item() * 100
    return loss.item(), grads, acc


@pytest.mark.parametrize("form", ["pair", "dataset", "loader", "dicts", "generator"])
def test_exact_weighting_over_uneven_batches(form):
    model = _net()
    x, y = _data()
    if form == "pair":
        data = (x, y)
    elif form == "dataset":
        data = TensorDataset(x, y)
    elif form == "loader":
        data = DataLoader(TensorDataset(x, y), batch_size=10)
    elif form == "dicts":
        data = [{"x": x[i : i + 10], "y": y[i : i + 10]} for i in range(0, 23, 10)]
    else:
        data = ((x[i : i + 10], y[i : i + 10]) for i in range(0, 23, 10))
    obj = Objective(model, data, batch_size=10)
    loss, grads, acc = _reference(model, x, y)
    res = obj.evaluate()
    assert obj.n_samples == 23
    assert res["loss"] == pytest.approx(loss, rel=1e-12)
    assert res["acc"] == pytest.approx(acc, rel=1e-12)
    for g, r in zip(obj.gradient(), grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    value, grads2 = obj.loss_and_gradient()
    assert value == pytest.approx(loss, rel=1e-12)
    for g, r in zip(grads2, grads):
        torch.testing.assert_close(g, r, rtol=1e-10, atol=1e-12)
    assert obj.loss().item() == pytest.approx(loss, rel=1e-12)


def test_streaming_equals_cached_and_max_samples():
    model = _net()
    x, y = _data()
    cached = Objective(model, (x, y), batch_size=4)
    streamed = Objective(model, (x, y), batch_size=4, max_cache_bytes=100)
    assert cached.cached and not streamed.cached
    assert cached.evaluate() == streamed.evaluate()
    sub = Objective(model, (x, y), batch_size=4, max_samples=9)
    loss, _, _ = _reference(model, x[:9], y[:9])
    assert sub.n_samples == 9
    assert sub.evaluate()["loss"] == pytest.approx(loss, rel=1e-12)


def test_modes_and_grads_left_as_found():
    model = _net()
    model.train()
    model[1].eval()  # a mixed state must survive
    x, y = _data()
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    running = model[1].running_mean.clone()
    obj = Objective(model, (x, y))
    obj.evaluate()
    obj.gradient()
    assert model.training and not model[1].training and model[3].training
    assert all(torch.all(p.grad == 7.0) for p in model.parameters())
    torch.testing.assert_close(model[1].running_mean, running, rtol=0, atol=0)


def test_unused_parameter_gets_zero_gradient_and_metrics():
    class WithUnused(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = _net()
            self.unused = nn.Linear(2, 2).double()

        def forward(self, x):
            return self.net(x)

    model = WithUnused()
    x, y = _data()
    obj = Objective(model, (x, y), metrics={"margin": lambda out, t: out.max(1).values.mean()})
    grads = obj.gradient()
    assert len(grads) == len(obj.params) == len(obj.param_names)
    unused = [g for g, n in zip(grads, obj.param_names) if n.startswith("unused")]
    assert unused and all(torch.all(g == 0) for g in unused)
    with eval_mode(model), torch.no_grad():
        margin = model(x).max(1).values.mean().item()
    assert obj.evaluate()["margin"] == pytest.approx(margin, rel=1e-12)


def test_nonfinite_loss_is_nan_and_regression_has_no_accuracy():
    model = nn.Linear(3, 1).double()
    x = torch.randn(8, 3, dtype=torch.float64)
    y = torch.randn(8, 1, dtype=torch.float64)
    obj = Objective(model, (x, y), loss_fn=F.mse_loss)
    assert set(obj.evaluate()) == {"loss"}
    with torch.no_grad():
        model.weight.fill_(float("inf"))
    assert math.isnan(obj.evaluate()["loss"])


def test_bad_inputs_are_named():
    model = _net()
    x, y = _data()
    with pytest.raises(ValueError, match="batch_size"):
        Objective(model, (x, y), batch_size=0)
    with pytest.raises(ValueError, match="Invalid data"):
        Objective(model, (x, y[:3]))
    with pytest.raises(ValueError, match="Invalid data"):
        Objective(model, 3)
    with pytest.raises(ValueError, match="input_key"):
        Objective(model, [{"a": x, "b": y}])
    with pytest.raises(ValueError, match="accuracy"):
        Objective(model, (x, y.double()), accuracy=True, loss_fn=lambda o, t: o.sum()).evaluate()


def test_single_process_dist_context_and_batch_starts():
    model, (x, y) = _net(), _data()
    plain = Objective(model, (x, y), batch_size=10)
    one = Objective(model, (x, y), batch_size=10, dist=DistContext())
    assert not one.distributed and one.evaluate() == plain.evaluate()
    assert [b.start for b in one.batches()] == [0, 10, 20]
    assert one.all_reduce_float(0.25) == 0.25
    # a derived objective reads this process's batches, as its share
    assert one.derive().sharded and one.derive().n_samples == 23
    with pytest.raises(ValueError, match="Invalid max_samples"):
        Objective(model, (x, y), sharded=True, max_samples=5)
    with pytest.raises(ValueError, match="Invalid dist"):
        Objective(model, (x, y), dist="gloo")


def test_namedtuple_batches_reach_every_reader():
    """A namedtuple batch is an (inputs, targets) pair wherever batches are rebuilt
    (device moves, the float64 twin of the Hessian operator, grad_cosine's random split)."""
    import collections

    from landscape.hessian.operator import HessianOperator
    from landscape.metrics import grad_cosine

    pair = collections.namedtuple("Pair", "inputs targets")
    model = _net().float()
    x, y = _data()
    x = x.float()
    data = [pair(x[:16], y[:16]), pair(x[16:], y[16:])]
    loss, grads, _ = _reference(model, x, y)
    obj = Objective(model, data)
    assert obj.evaluate()["loss"] == pytest.approx(loss, rel=1e-6)
    for g, ref in zip(obj.gradient(), grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-5, atol=1e-6)
    op = HessianOperator(model, data=data, dtype=torch.float64)
    v = torch.randn(op.dim, dtype=torch.float64)
    plain = [tuple(b) for b in data]
    twin = HessianOperator(model, data=plain, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), twin.matvec(v))
    a, b = [0, 3, 17, 20, 5], [1, 2, 18, 9]
    got = grad_cosine(obj, subsets=(a, b)).value
    ga, gb = (torch.cat([g.flatten() for g in _reference(model, x[i], y[i])[1]]) for i in (a, b))
    assert got == pytest.approx(float(F.cosine_similarity(ga, gb, dim=0)), rel=1e-5)
