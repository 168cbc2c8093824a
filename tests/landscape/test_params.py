"""Parameter selections given as one-shot iterators (``model.fc.parameters()``)."""

import pytest
import torch
from torch import nn

from landscape.compare import compare_models
from landscape.hessian import HessianOperator
from landscape.hessian.summary import hessian_summary
from landscape.metrics import compute_metrics
from landscape.objective import Objective
from landscape.params import as_selection


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(16, 4, generator=g, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (16,), generator=g)


def test_as_selection_lists_iterators_only():
    model, _, _ = _problem()
    assert as_selection(model[2].parameters()) == list(model[2].parameters())
    loader = torch.utils.data.DataLoader(range(4))  # an iterable, not an iterator: not read
    assert as_selection(loader) is loader
    assert as_selection("2.*") == "2.*"
    assert as_selection(None) is None


def test_a_generator_selects_the_same_parameters_everywhere():
    model, x, y = _problem()
    want = HessianOperator(model, list(model[2].parameters()), data=(x, y))
    assert want.dim == 18
    v = torch.randn(want.dim, dtype=torch.float64)
    got = HessianOperator(model, model[2].parameters(), data=(x, y))
    torch.testing.assert_close(got.matvec(v), want.matvec(v))
    obj = Objective(model, (x, y), params=model[2].parameters())
    assert [p for p in obj.params] == list(model[2].parameters())
    assert len(obj.derive().params) == 2  # derive() reads the selection again
    ref = compute_metrics(model, (x, y), ["grad_norm"], params=["2.weight", "2.bias"])
    res = compute_metrics(model, (x, y), ["grad_norm"], params=model[2].parameters())
    assert res["grad_norm"].value == pytest.approx(ref["grad_norm"].value, rel=1e-12)
    summary = hessian_summary(model, (x, y), top_k=1, params=model[2].parameters())
    assert summary["dim"] == 18
    rows = compare_models({"a": model}, (x, y), ["grad_norm"], params=model[2].parameters())
    assert rows.rows[0]["grad_norm"]["value"] == pytest.approx(ref["grad_norm"].value, rel=1e-12)
