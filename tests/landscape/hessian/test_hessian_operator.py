import gc
import warnings

import pytest
import torch
import torch.nn.functional as F
from _hessian_problems import classification_data, dense_hessian, mse, tanh_mlp
from scipy.sparse.linalg import eigsh
from torch import nn

from landscape.hessian import FiniteDifferenceWarning, HessianOperator, default_fd_step
from landscape.objective import Objective


def _rel(a, b):
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    ("method", "batch_size", "reuse"),
    [
        ("exact", 64, None),
        ("exact", 16, None),
        ("exact", 16, True),
        ("forward", 16, None),
        ("fd", 16, None),
    ],
)
def test_products_match_dense_hessian(method, batch_size, reuse):
    model = tanh_mlp()
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    op = HessianOperator(
        Objective(model, (x, y), batch_size=batch_size),
        method=method,
        dtype=torch.float64,
        reuse_graph=reuse,
    )
    assert op.reuse_graph == (method == "exact" and (batch_size == 64 or reuse is True))
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for a, b in zip(op.gradient(), g, strict=True):
        torch.testing.assert_close(a.float(), b, rtol=1e-4, atol=1e-6)
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    tol = 1e-8 if method == "fd" else 1e-12
    assert _rel(op @ V, H @ V) < tol
    assert op.products == 3


def test_float32_products_and_list_interface():
    model = tanh_mlp()
    x, y = classification_data()
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, data=(x, y))
    assert op.dtype == torch.float32 and op.dim == H.shape[0]
    v = torch.randn(op.dim)
    hv = op.hvp(op.to_list(v))
    assert [t.shape for t in hv] == [p.shape for p in model.parameters()]
    assert _rel(op.to_flat(hv).double(), H @ v.double()) < 1e-5
    first = (op @ op.to_list(v))[0].reshape(-1).double()
    assert _rel(first, (H @ v.double())[: hv[0].numel()]) < 1e-5


def test_gradient_matches_autograd():
    model = tanh_mlp()
    x, y = classification_data()
    op = HessianOperator(model, data=(x, y))
    g = torch.autograd.grad(F.cross_entropy(model(x), y), list(model.parameters()))
    for a, b in zip(op.gradient(), g, strict=True):
        torch.testing.assert_close(a, b)


def test_parameter_subset_is_the_diagonal_block():
    model = tanh_mlp()
    x, y = classification_data()
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, ["2"], data=(x, y), dtype=torch.float64)  # last layer
    assert op.param_names == ["2.weight", "2.bias"]
    start = sum(p.numel() for p in model[0].parameters())
    torch.testing.assert_close(op.to_dense(), H[start:, start:])
    op_w = HessianOperator(model, [model[0].weight], data=(x, y), dtype=torch.float64)
    n = model[0].weight.numel()
    torch.testing.assert_close(op_w.to_dense(), H[:n, :n])
    with pytest.raises(ValueError, match="params"):
        HessianOperator(model, ["nope"], data=(x, y))
    with pytest.raises(ValueError, match="params"):
        HessianOperator(model, [torch.zeros(3, requires_grad=True)], data=(x, y))


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.unused = nn.Parameter(torch.randn(5))

    def forward(self, x):
        return self.lin(x)


@pytest.mark.parametrize("method", ["exact", "forward", "fd"])
def test_unused_parameter_gives_zeros(method):
    torch.manual_seed(0)
    model = WithUnused()
    x, y = classification_data(d_in=4)
    op = HessianOperator(model, data=(x, y), method=method, dtype=torch.float64)
    assert op.param_names == ["unused", "lin.weight", "lin.bias"]
    dense = op.to_dense()
    assert dense[:5].abs().max() == 0 and dense[:, :5].abs().max() == 0
    H = dense_hessian(model, x, y, names=["lin.weight", "lin.bias"])
    torch.testing.assert_close(dense[5:, 5:], H, atol=1e-7, rtol=1e-6)


def test_dict_batches_and_exact_weighting():
    model = tanh_mlp()
    x, y = classification_data(n=37)
    H = dense_hessian(model, x, y)
    batches = [{"x": x[i : i + 10], "y": y[i : i + 10]} for i in range(0, 37, 10)]  # last: 7
    op = HessianOperator(Objective(model, batches), dtype=torch.float64)
    torch.testing.assert_close(op.to_dense(), H)


def test_mode_and_grads_left_as_found():
    model = nn.Sequential(
        nn.Linear(5, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)
    )
    x, y = classification_data()
    model.train()
    model[0].weight.grad = torch.ones_like(model[0].weight)
    before = [p.detach().clone() for p in model.parameters()]
    stats = model[1].running_mean.clone()
    for method in ("exact", "forward", "fd"):
        with HessianOperator(model, data=(x, y), method=method) as op:
            op.matvec(torch.randn(op.dim))
            op.gradient()
        assert all(m.training for m in model.modules())
        assert torch.equal(model[0].weight.grad, torch.ones_like(model[0].weight))
        assert all(p.grad is None for p in list(model.parameters())[1:])
        assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
        assert torch.equal(model[1].running_mean, stats)


def test_eval_mode_is_used_for_products():
    """Dropout off and BatchNorm on running statistics: the product is deterministic."""
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Dropout(0.5), nn.Linear(6, 3)).train()
    x, y = classification_data()
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    v = torch.randn(op.dim, dtype=torch.float64)
    torch.testing.assert_close(op.matvec(v), op.matvec(v))
    eval_model = nn.Sequential(*list(model)).eval()
    H = dense_hessian(eval_model, x, y)
    torch.testing.assert_close(op.matvec(v), H @ v)
    model.train()


def test_reused_graph_does_not_grow_and_is_released():
    model = tanh_mlp()
    x, y = classification_data()
    op = HessianOperator(model, data=(x, y))
    v = torch.randn(op.dim)

    def live_tensors():
        gc.collect()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))

    op.matvec(v)
    n1 = live_tensors()
    for _ in range(20):
        op.matvec(v)
    assert live_tensors() == n1
    assert op._graph is not None
    op.close()
    assert op._graph is None
    assert live_tensors() < n1


def test_graph_rebuilt_when_weights_move():
    model = tanh_mlp()
    x, y = classification_data()
    op = HessianOperator(model, data=(x, y), dtype=None)
    v = torch.randn(op.dim)
    op.matvec(v)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    H = dense_hessian(model, x, y)
    assert _rel(op.matvec(v).double(), H @ v.double()) < 1e-5


def test_to_scipy_eigsh_agrees_with_dense():
    model = tanh_mlp()
    x, y = classification_data()
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    vals = eigsh(op.to_scipy(), k=2, which="LA", return_eigenvectors=False)
    torch.testing.assert_close(torch.tensor(sorted(vals)), torch.linalg.eigvalsh(H)[-2:])


def test_fd_smooth_model_matches_exact_in_float32():
    model = tanh_mlp()
    x, y = classification_data()
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, data=(x, y), method="fd")
    assert op.h == default_fd_step(torch.float32, op.params)
    v = torch.randn(op.dim)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FiniteDifferenceWarning)
        hv = op.matvec(v)
    assert _rel(hv.double(), H @ v.double()) < 1e-2
    before = [p.detach().clone() for p in model.parameters()]
    op.matvec(v)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_fd_kink_check_warns_on_relu_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = classification_data(d_in=4)
    with torch.no_grad():
        model[0].bias.zero_()
    x[:10] = 0.0  # ten samples sit exactly on the ReLU kinks (pre-activation = bias = 0)
    op = HessianOperator(model, data=(x, y), method="fd")
    with pytest.warns(FiniteDifferenceWarning, match="unverified"):
        op.matvec(torch.randn(op.dim))
    with pytest.warns(FiniteDifferenceWarning, match="2 of 2"):  # every product is checked
        op.matvec(torch.randn(op.dim))
    assert op.fd_failed == 2 and op.unverified_products == 2 and op.fd_retried == 4
    once = HessianOperator(model, data=(x, y), method="fd", fd_check="first")
    with pytest.warns(FiniteDifferenceWarning):
        once.matvec(torch.randn(op.dim))
    once.matvec(torch.randn(op.dim))
    assert once.fd_failed == 1 and once.fd_unchecked == 1 and once.unverified_products == 2


def test_negative_definite_loss_and_custom_loss():
    torch.manual_seed(0)
    model = nn.Linear(3, 1)
    x = torch.randn(30, 3)
    y = torch.randn(30, 1)

    def neg(out, t):
        return -mse(out, t)

    H = dense_hessian(model, x, y, loss_fn=neg)
    op = HessianOperator(model, data=(x, y), loss_fn=neg, dtype=torch.float64)
    torch.testing.assert_close(op.to_dense(), H)
    assert torch.linalg.eigvalsh(H).max() <= 1e-12


def test_bad_arguments():
    model = tanh_mlp()
    x, y = classification_data()
    with pytest.raises(ValueError, match="data"):
        HessianOperator(model)
    with pytest.raises(ValueError, match="method"):
        HessianOperator(model, data=(x, y), method="magic")
    with pytest.raises(ValueError, match="h"):
        HessianOperator(model, data=(x, y), method="fd", h=-1.0)
    with pytest.raises(ValueError, match="fd_check"):
        HessianOperator(model, data=(x, y), fd_check="sometimes")
    op = HessianOperator(model, data=(x, y))
    with pytest.raises(ValueError, match="vector"):
        op.matvec(torch.zeros(op.dim + 1))


@pytest.mark.parametrize("method", ["forward", "fd"])
def test_parameter_subset_other_methods(method):
    model = tanh_mlp()
    x, y = classification_data()
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, ["2"], data=(x, y), method=method, dtype=torch.float64)
    start = sum(p.numel() for p in model[0].parameters())
    dense = op.to_dense()
    torch.testing.assert_close(dense, H[start:, start:], atol=1e-7, rtol=1e-6)
    # no autograd graph through the parameters outside the subset (they require grad)
    assert not dense.requires_grad


def test_lanczos_accepts_tensor_list_start():
    from landscape.hessian import lanczos_eigen

    model = tanh_mlp()
    x, y = classification_data()
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    g = op.gradient()
    res = lanczos_eigen(op, k=1, tol=1e-8, max_products=op.dim, v0=g)
    top = torch.linalg.eigvalsh(dense_hessian(model, x, y))[-1]
    assert abs(float(res.eigenvalues[0]) - float(top)) < 1e-8 * float(top)


def test_auto_keeps_the_graph_for_one_batch():
    model = tanh_mlp()
    x, y = classification_data(n=40)
    op = HessianOperator(model, data=(x, y), method="auto", dtype=torch.float64)
    assert op.reuse_graph and op.method == "exact"
    H = dense_hessian(model, x, y)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert _rel(op @ v, H @ v) < 1e-12
    assert op.method_seconds == {}  # nothing timed


@pytest.mark.parametrize("faster", ["exact", "forward"])
def test_auto_times_the_first_product_and_keeps_the_faster(faster, monkeypatch):
    model = tanh_mlp()
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    op = HessianOperator(
        Objective(model, (x, y), batch_size=12), method="auto", dtype=torch.float64
    )  # 4 batches: the first two are computed both ways
    assert not op.reuse_graph and op.method == "auto"
    calls = []
    timed = op._timed

    def fake_timed(fn, *args):
        out, _ = timed(fn, *args)
        name = "forward" if fn == op._batch_forward else "exact"
        calls.append(name)
        if len(calls) <= 2:  # the warm-up batch says the opposite, and is not counted
            return out, (9.0 if name == faster else 0.5)
        return out, (1.0 if name == faster else 2.0)

    monkeypatch.setattr(op, "_timed", fake_timed)
    V = torch.randn(op.dim, 3, dtype=torch.float64)
    assert _rel(op @ V[:, 0], H @ V[:, 0]) < 1e-12
    assert calls == ["forward", "exact"] * 2  # two trial batches, then the choice
    assert op.method == faster
    assert op.method_seconds == {faster: 1.0, ({"exact", "forward"} - {faster}).pop(): 2.0}
    assert _rel(op @ V[:, 1:], H @ V[:, 1:]) < 1e-12
    assert len(calls) == 4 and op.products == 3
    # the per-batch functions really are the two methods: each alone matches H
    for method in ("exact", "forward"):
        op.method = method
        assert _rel(op @ V[:, 0], H @ V[:, 0]) < 1e-12


def test_auto_with_fewer_batches_than_the_trial():
    model = tanh_mlp()
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, data=(x, y), method="auto", dtype=torch.float64, reuse_graph=False)
    v = torch.randn(op.dim, dtype=torch.float64)
    assert _rel(op @ v, H @ v) < 1e-12
    assert op.method in ("exact", "forward")
    assert set(op.method_seconds) == {"exact", "forward"}
    assert all(t > 0 for t in op.method_seconds.values())


def test_like_keeps_the_product_settings_on_a_block_or_another_objective():
    model = tanh_mlp()
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    op = HessianOperator(
        Objective(model, (x, y), batch_size=12), method="auto", dtype=torch.float64
    )
    op @ torch.randn(op.dim, dtype=torch.float64)  # resolves op's own method
    block = op.like(params=["2"])
    assert block._obj is op._obj  # the float64 twin, not another copy
    assert block.method == "auto" and not block.reuse_graph  # times its own products
    start = sum(p.numel() for p in model[0].parameters())
    torch.testing.assert_close(block.to_dense(), H[start:, start:], rtol=1e-10, atol=1e-12)
    fd = HessianOperator(model, data=(x, y), method="fd", h=1e-3, fd_check="never")
    same = fd.like()
    assert (same.method, same.h, same.fd_check, same.param_names) == (
        "fd",
        1e-3,
        "never",
        fd.param_names,
    )
    exact = HessianOperator(model, data=(x, y))
    assert exact.like().reuse_graph and exact.like().method == "exact"


def test_dense_reference_of_a_layernorm_model():
    """The tests' dense reference is right where ``torch.func.hessian`` is not (LayerNorm).

    Checked against central differences of the exact (reverse-mode) gradient; every
    product method agrees with it (a transformer's blocks hold LayerNorms).
    """
    from torch.func import functional_call, grad

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Tanh(), nn.Linear(4, 2)).double()
    x, y = torch.randn(5, 3, dtype=torch.float64), torch.randint(0, 2, (5,))
    H = dense_hessian(model, x, y)
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]
    theta = torch.cat([p.detach().flatten() for p in model.parameters()])

    def loss(v):
        parts = dict(
            zip(
                names,
                (c.view(s) for c, s in zip(v.split([s.numel() for s in shapes]), shapes)),
                strict=True,
            )
        )
        return F.cross_entropy(functional_call(model, parts, (x,)), y)

    eps, eye = 1e-6, torch.eye(theta.numel(), dtype=torch.float64)
    g = grad(loss)
    fd = torch.stack([(g(theta + eps * e) - g(theta - eps * e)) / (2 * eps) for e in eye])
    torch.testing.assert_close(H, fd, rtol=0, atol=1e-7)
    for method in ("exact", "forward", "fd"):
        dense = HessianOperator(model, data=[(x, y)], method=method).to_dense()
        torch.testing.assert_close(dense, H, rtol=0, atol=1e-8 if method != "fd" else 1e-6)
