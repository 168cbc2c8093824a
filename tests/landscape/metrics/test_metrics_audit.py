"""Audit of the metrics (and the objective under them) against exact answers on odd data."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.hessian import HessianOperator
from landscape.metrics import compute_metrics
from landscape.objective import Objective

Pair = collections.namedtuple("Pair", "x y")


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()


def _xy(n=11):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,))


def test_named_tuple_batches_give_the_exact_loss_and_gradient():
    model, (x, y) = _mlp(), _xy()
    data = [Pair(x[:4], y[:4]), Pair(x[4:8], y[4:8]), Pair(x[8:], y[8:])]
    loss, grads = Objective(model, data).loss_and_gradient()
    ref = F.cross_entropy(model(x), y)
    assert loss == pytest.approx(float(ref), abs=1e-14)
    for g, r in zip(grads, torch.autograd.grad(ref, list(model.parameters())), strict=True):
        assert torch.allclose(g, r, atol=1e-14)


def test_named_tuple_batches_in_a_float64_twin_and_a_gradient_split():
    model, (x, y) = _mlp(), _xy()
    model = model.float()
    data = [Pair(x[:4].float(), y[:4]), Pair(x[4:].float(), y[4:])]
    dense = HessianOperator(model, data=data, dtype=torch.float64).to_dense()
    ref = HessianOperator(model, data=(x.float(), y), dtype=torch.float64).to_dense()
    assert torch.allclose(dense, ref, atol=1e-12)
    res = compute_metrics(model, data, ["grad_cosine"], subsets=([0, 2, 4, 6], [1, 3, 5]))
    ga = torch.autograd.grad(
        F.cross_entropy(model(x[[0, 2, 4, 6]].float()), y[[0, 2, 4, 6]]), list(model.parameters())
    )
    gb = torch.autograd.grad(
        F.cross_entropy(model(x[[1, 3, 5]].float()), y[[1, 3, 5]]), list(model.parameters())
    )
    fa, fb = torch.cat([g.reshape(-1) for g in ga]), torch.cat([g.reshape(-1) for g in gb])
    assert res["grad_cosine"].value == pytest.approx(
        float(fa @ fb / fa.norm() / fb.norm()), abs=1e-5
    )


@pytest.mark.parametrize(
    "name",
    [
        "grad_norm",
        "grad_curvature",
        "sam_sharpness",
        "average_sharpness",
        "eps_sharpness",
        "grad_cosine",
    ],
)
def test_a_fully_frozen_model_is_one_clear_error_for_metrics_that_need_gradients(name):
    model, (x, y) = _mlp(), _xy()
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ValueError, match="Invalid params: no parameter requiring grad"):
        compute_metrics(model, (x, y), [name], progress=False)
    assert compute_metrics(model, (x, y), ["loss"], progress=False)["loss"].value > 0
