"""Audit of the Hessian operator and estimators against dense float64 truth on odd models.

The truth is ``torch.autograd.functional.hessian`` (reverse over reverse) of the exactly
weighted mean loss over the flattened parameters: ``torch.func.hessian`` is not used,
since in torch 2.13 its vmapped rules give wrong off-diagonal entries for LayerNorm.
"""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from landscape.hessian import (
    HessianOperator,
    block_trace,
    fd_trace,
    ggn_trace,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigen,
    layer_eigenvalues,
    power_iteration,
    slq_density,
)
from landscape.hessian.summary import hessian_summary


def _truth(model, batches, names):
    """Dense Hessian of ``Σ per-sample losses / N`` over ``names`` (eval mode, float64)."""
    params = dict(model.named_parameters())
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    n_total = sum(len(y) for _, y in batches)

    def loss(v):
        ps = {n: c.view(s) for n, c, s in zip(names, v.split([s.numel() for s in shapes]), shapes)}
        total = sum(
            F.cross_entropy(functional_call(model, {**fixed, **ps}, (x,)), y, reduction="sum")
            for x, y in batches
        )
        return total / n_total

    training = model.training
    model.eval()
    try:
        return torch.autograd.functional.hessian(loss, flat)
    finally:
        model.train(training)


class PaddedBag(nn.Module):
    """Token ids -> an embedding with a padding row -> mean over tokens -> linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.emb = nn.Embedding(5, 3, padding_idx=0)
        self.head = nn.Linear(3, 3)
        with torch.no_grad():
            self.emb.weight[0].normal_()  # a padding row that changes the outputs

    def forward(self, ids):
        return self.head(torch.tanh(self.emb(ids)).mean(1))


def _padded_data():
    g = torch.Generator().manual_seed(4)
    ids = torch.randint(0, 5, (9, 4), generator=g)
    ids[:, 0] = 0  # every sample holds a padding token
    y = torch.randint(0, 3, (9,), generator=g)
    return [(ids[:4], y[:4]), (ids[4:8], y[4:8]), (ids[8:], y[8:])]  # smaller last batch


@pytest.mark.parametrize("method", ["forward", "auto"])
def test_products_with_a_padding_embedding_equal_the_exact_ones(method):
    model, data = PaddedBag().double(), _padded_data()
    exact = HessianOperator(model, data=data, method="exact").to_dense()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        op = HessianOperator(model, data=data, method=method)
        dense = op.to_dense()
    # forward mode sees the padding row that autograd freezes: a non-symmetric matrix
    assert torch.allclose(dense, dense.T, atol=1e-12)
    assert torch.allclose(dense, exact, atol=1e-12)
    assert op.method == "exact"


def test_forward_with_a_padding_embedding_warns_once():
    model, data = PaddedBag().double(), _padded_data()
    with pytest.warns(UserWarning, match="padding_idx"):
        HessianOperator(model, data=data, method="forward")


def test_exact_products_with_a_padding_embedding_freeze_the_padding_row():
    model, data = PaddedBag().double(), _padded_data()
    names = [n for n, _ in model.named_parameters()]
    H = _truth(model, data, names)
    mask = torch.ones(H.shape[0], dtype=torch.float64)
    mask[:3] = 0.0  # emb.weight[0], the padding row, is frozen by autograd
    expected = mask[:, None] * H * mask[None, :]
    dense = HessianOperator(model, data=data).to_dense()
    assert torch.allclose(dense, expected, atol=1e-12)


def _nan_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    with torch.no_grad():
        model[2].bias[0] = float("nan")
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,))
    return model, [(x[:6], y[:6]), (x[6:], y[6:])]


@pytest.mark.parametrize("form", ["loss", "gradient"])
def test_fd_trace_of_a_nonfinite_loss_is_one_clear_error(form):
    model, data = _nan_model()
    op = HessianOperator(model, data=data)
    with pytest.raises(ValueError, match=r"Invalid value: .*(nan|not finite)"):
        fd_trace(op, num_probes=3, form=form, progress=False)


def test_ggn_trace_of_a_nonfinite_loss_is_one_clear_error():
    model, data = _nan_model()
    op = HessianOperator(model, data=data)
    with pytest.raises(ValueError, match=r"Invalid value: .*nan or inf"):
        ggn_trace(op, num_products=4, progress=False)


def test_layer_eigenvalues_of_nonfinite_weights_blame_the_values_not_the_step():
    model, data = _nan_model()
    op = HessianOperator(model, data=data)
    with pytest.raises(ValueError, match="Invalid value: a Hessian-vector product holds nan"):
        layer_eigenvalues(op, progress=False)


class TiedUnused(nn.Module):
    """One weight used by two layers (counted once), a layer never called (zero rows)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.a, self.c = nn.Linear(4, 4), nn.Linear(4, 4)
        self.c.weight = self.a.weight
        self.b, self.unused = nn.Linear(4, 3), nn.Linear(3, 3)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = torch.tanh(self.bn(self.a(x)))
        return self.b(self.drop(torch.tanh(self.c(h))))


@pytest.mark.parametrize("method", ["exact", "fd"])
def test_tied_unused_batchnorm_dropout_model_matches_dense_truth(method):
    model = TiedUnused().double().train()
    model.a.bias.requires_grad_(False)  # frozen: not in the operator
    g = torch.Generator().manual_seed(6)
    x, y = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,))
    data = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    for p in model.parameters():
        p.grad = torch.full_like(p, 7.0)
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    H = _truth(model, data, names)
    op = HessianOperator(model, data=data, method=method)
    assert op.param_names == names and op.dim == H.shape[0]
    assert torch.allclose(op.to_dense(), H, atol=1e-12 if method != "fd" else 1e-7)
    ev = torch.linalg.eigvalsh(H)
    assert float(ev[0]) < 0 < float(ev[-1])  # indefinite
    low = lanczos_eigen(op, k=2, which="smallest", tol=1e-9, max_products=H.shape[0])
    assert torch.allclose(low.eigenvalues, ev[:2], atol=1e-6)
    assert model.training and model.bn.training and model.drop.training
    assert all(torch.equal(p.grad, torch.full_like(p, 7.0)) for p in model.parameters())


class WithUnused(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(7)
        self.a, self.unused = nn.Linear(4, 3), nn.Linear(2, 2)

    def forward(self, x):
        return self.a(x)


def test_power_iteration_on_a_zero_block_returns_zero_eigenvalues_not_nan():
    model = WithUnused().double()
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,))
    op = HessianOperator(model, "unused", data=(x, y))
    res = power_iteration(op, k=2, max_products=20, progress=False)
    assert res.eigenvalues.tolist() == [0.0, 0.0] and res.converged
    assert all(torch.isfinite(t).all() for v in res.eigenvectors for t in v)


def test_power_iteration_past_the_rank_finds_the_zero_eigenvalue():
    # the output layer's block under cross-entropy with 2 classes: rank 1 per input
    # direction; asking for more pairs than the nonzero spectrum gives 0, not nan
    torch.manual_seed(9)
    model = nn.Linear(1, 2, bias=False).double()
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(6, 1, generator=g, dtype=torch.float64), torch.randint(0, 2, (6,))
    op = HessianOperator(model, data=(x, y))
    ev = torch.linalg.eigvalsh(_truth(model, [(x, y)], ["weight"])).flip(0)
    res = power_iteration(op, k=2, tol=1e-10, max_products=50, progress=False)
    assert torch.allclose(res.eigenvalues, ev, atol=1e-10)


@pytest.mark.parametrize("bad", [2.5, None, "3"])
@pytest.mark.parametrize(
    ("name", "call"),
    [
        ("k", lambda op, v: lanczos_eigen(op, k=v)),
        ("max_products", lambda op, v: lanczos_eigen(op, max_products=v)),
        ("k", lambda op, v: power_iteration(op, k=v)),
        ("k", lambda op, v: layer_eigenvalues(op, k=v)),
        ("num_products", lambda op, v: hutchinson_trace(op, num_products=v)),
        ("num_products", lambda op, v: hutchpp_trace(op, num_products=v)),
        ("num_products", lambda op, v: block_trace(op, num_products=v)),
        ("num_products", lambda op, v: ggn_trace(op, num_products=v)),
        ("num_probes", lambda op, v: fd_trace(op, num_probes=v)),
        ("num_steps", lambda op, v: slq_density(op, num_steps=v)),
        ("num_runs", lambda op, v: slq_density(op, num_runs=v)),
        ("top_k", lambda op, v: hessian_summary(op.objective, top_k=v, progress=False)),
    ],
)
def test_a_count_that_is_not_an_integer_is_one_clear_error(name, call, bad):
    model = WithUnused().double()
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,))
    op = HessianOperator(model, data=(x, y))
    with pytest.raises(ValueError, match=f"Invalid {name}: .*expected an integer"):
        call(op, bad)


def test_hessian_summary_refuses_max_products_zero_before_any_work():
    model = WithUnused().double()
    g = torch.Generator().manual_seed(8)
    x, y = torch.randn(10, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (10,))
    with pytest.raises(ValueError, match="Invalid max_products: 0"):
        hessian_summary(model, (x, y), top_k=2, max_products=0, progress=False)


class DictOutput(nn.Module):
    """A model returning ``{"logits": ...}`` like a Hugging Face ``ModelOutput``."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(10)
        self.body, self.head = nn.Linear(4, 5), nn.Linear(5, 3)

    def forward(self, x):
        return {"logits": self.head(torch.tanh(self.body(x)))}


def test_ggn_trace_reads_the_logits_of_a_model_output():
    model = DictOutput().double()
    g = torch.Generator().manual_seed(11)
    x, y = torch.randn(9, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (9,))
    data = [(x[:4], y[:4]), (x[4:8], y[4:8]), (x[8:], y[8:])]
    names = [n for n, _ in model.named_parameters()]
    plain = nn.Sequential(model.body, nn.Tanh(), model.head)  # same weights, tensor outputs
    truth = _truth(plain, data, ["0.weight", "0.bias", "2.weight", "2.bias"])
    op = HessianOperator(model, data=data, loss_fn=F.cross_entropy)
    assert op.param_names == names
    res = ggn_trace(op, num_products=40, progress=False)
    assert res.value == pytest.approx(float(truth.trace()), rel=1e-10)
