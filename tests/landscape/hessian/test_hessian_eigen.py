import pytest
import torch
from _hessian_problems import (
    LowRankRegression,
    classification_data,
    dense_hessian,
    low_rank_data,
    mse,
    tanh_mlp,
)

from landscape.hessian import HessianOperator, lanczos_eigen, power_iteration


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = tanh_mlp(hidden=8)
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    return op, H


@pytest.mark.parametrize("which", ["largest", "smallest"])
def test_top5_to_1e6_with_residuals(problem, which):
    op, H = problem
    exact = torch.linalg.eigvalsh(H)
    want = exact.flip(0)[:5] if which == "largest" else exact[:5]
    res = lanczos_eigen(op, k=5, which=which, tol=1e-9, max_products=op.dim)
    assert res.converged and all(res.converged_each)
    assert res.products == res.info["steps"] <= op.dim
    torch.testing.assert_close(res.eigenvalues, want, rtol=1e-6, atol=0)
    for lam, vec, r in zip(res.eigenvalues, res.eigenvectors, res.residuals, strict=True):
        v = op.to_flat(vec)
        assert abs(float(v.norm()) - 1) < 1e-10
        true_res = float((H @ v - lam * v).norm())
        assert true_res <= 1e-8 * abs(float(lam))
        assert abs(true_res - float(r)) <= 1e-8 * abs(float(lam))
        assert [t.shape for t in vec] == [p.shape for p in op.params]


def test_stopping_rule_and_unconverged_flag(problem, caplog):
    op, H = problem
    lam = float(torch.linalg.eigvalsh(H)[-1])
    res = lanczos_eigen(op, k=1, tol=1e-3)
    assert res.converged and float(res.residuals[0]) <= 1e-3 * abs(float(res.eigenvalues[0]))
    assert abs(float(res.eigenvalues[0]) - lam) <= 1e-3 * lam
    short = lanczos_eigen(op, k=5, tol=1e-12, max_products=6)
    assert short.products == 6 and not short.converged
    assert len(short.eigenvalues) == 5
    assert "not converged" in caplog.text


def test_magnitude_and_repeated_eigenvalues():
    """A Hessian with a repeated top eigenvalue: restarts after breakdown find both copies."""
    model = LowRankRegression(d=12)
    x, y = low_rank_data(n=100, d=12, top=(5.0, 5.0, 2.0))
    x = torch.cat([x, -x])  # symmetric data, same Hessian 2XᵀX/N
    y = torch.cat([y, y])
    H = dense_hessian(model, x, y, loss_fn=mse)
    op = HessianOperator(model, data=(x, y), loss_fn=mse, dtype=torch.float64)
    exact = torch.linalg.eigvalsh(H).flip(0)
    res = lanczos_eigen(op, k=3, which="magnitude", tol=1e-10, max_products=12)
    torch.testing.assert_close(res.eigenvalues, exact[:3], rtol=1e-8, atol=0)


def test_power_iteration_baseline(problem):
    op, H = problem
    exact = torch.linalg.eigvalsh(H)
    top = exact[exact.abs().argmax()]
    res = power_iteration(op, k=1, tol=1e-8, max_products=500)
    assert res.converged
    assert abs(float(res.eigenvalues[0]) - float(top)) <= 1e-5 * abs(float(top))
    lz = lanczos_eigen(op, k=1, tol=1e-4)
    assert lz.products < res.products


def test_bad_arguments(problem):
    op, _ = problem
    with pytest.raises(ValueError, match="k"):
        lanczos_eigen(op, k=0)
    with pytest.raises(ValueError, match="which"):
        lanczos_eigen(op, which="middle")
    with pytest.raises(ValueError, match="tol"):
        lanczos_eigen(op, tol=0)
    with pytest.raises(ValueError, match="max_products"):
        lanczos_eigen(op, k=5, max_products=3)


class _TwoBlocks(torch.nn.Module):
    """``out = x[:, :20] a + x[:, 20:] b``: a block-diagonal Hessian when the columns are."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.zeros(20, dtype=torch.float64))
        self.b = torch.nn.Parameter(torch.ones(3, dtype=torch.float64))

    def forward(self, x):
        return x[:, :20] @ self.a + x[:, 20:] @ self.b


def _gradient_blind_problem():
    """The top eigenvector lies in the ``b`` block, where the gradient is exactly zero."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(64, 23, generator=g, dtype=torch.float64))
    scales = torch.cat([torch.linspace(1.0, 2.0, 20), torch.tensor([3.5, 0.5, 0.4])])
    x = q * scales.double() * 8  # orthogonal columns: H = 2 diag(scales²·64) / 64
    model = _TwoBlocks()
    with torch.no_grad():
        y = model(x) + x[:, :20] @ torch.randn(20, generator=g, dtype=torch.float64)
    op = HessianOperator(model, data=(x, y), loss_fn=mse)
    top = float(2 * scales.max() ** 2)
    return op, top


def test_gradient_start_never_misses_a_direction_the_gradient_lacks():
    op, top = _gradient_blind_problem()
    grad = op.gradient()
    assert float(grad[1].abs().max()) < 1e-12 < float(grad[0].abs().max())
    # Started from the gradient alone, Lanczos sees only the `a` block in 12 products ...
    blind = lanczos_eigen(op, k=1, tol=1e-8, max_products=12, v0=grad)
    assert float(blind.eigenvalues[0]) < 0.5 * top
    # ... v0="gradient" (unit gradient + unit random vector) and the default (random)
    # start find the top of `b`.
    for v0 in ("gradient", "random"):
        res = lanczos_eigen(op, k=1, tol=1e-8, max_products=12, v0=v0)
        assert res.converged
        assert float(res.eigenvalues[0]) == pytest.approx(top, rel=1e-8)


def _gradient_along_second_problem(d=60, n=120):
    """``H = Q diag(1, 0.92, 0.3 … 0.01) Qᵀ`` with the gradient along the 2nd eigenvector."""
    g = torch.Generator().manual_seed(0)
    ev = torch.cat([torch.tensor([1.0, 0.92]), torch.linspace(0.3, 0.01, d - 2)]).double()
    s = (ev / 2).sqrt()  # H = 2 XᵀX / N
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    z, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    x = (z * n**0.5) * s @ q.T  # XᵀX/N = Q diag(s²) Qᵀ exactly
    a = torch.zeros(d, dtype=torch.float64)
    a[1], a[0] = 1.0, 0.01  # gradient 2XᵀXw/N − 2Xᵀy/N at w = 0 ∝ Q a
    y = -0.5 * (z * n**0.5) @ (a / s)
    model = LowRankRegression(d).double()
    return HessianOperator(model, data=(x, y), loss_fn=mse), q


def test_gradient_start_can_settle_on_the_second_eigenvalue():
    """Why the default start is random: a gradient along x2 hides x1 for several steps."""
    op, q = _gradient_along_second_problem()
    grad = op.to_flat(op.gradient())
    assert float((grad @ q[:, 1]).abs() / grad.norm()) > 0.99
    for seed in range(3):
        early = lanczos_eigen(op, tol=1e-3, criterion="eigenvalue", v0="gradient", seed=seed)
        assert float(early.eigenvalues[0]) == pytest.approx(0.92, rel=5e-3)  # λ2, 8 % low
        for criterion in ("eigenvalue", "residual"):
            res = lanczos_eigen(op, tol=1e-3, criterion=criterion, seed=seed)  # random start
            assert float(res.eigenvalues[0]) == pytest.approx(1.0, rel=1e-3)


def test_start_vector_options(problem):
    op, H = problem
    lam = float(torch.linalg.eigvalsh(H)[-1])
    for v0 in ("gradient", "random", None):
        res = lanczos_eigen(op, k=1, tol=1e-9, max_products=op.dim, v0=v0)
        assert float(res.eigenvalues[0]) == pytest.approx(lam, rel=1e-8)
        assert res.info["v0"] == (v0 or "random")
    assert lanczos_eigen(op, k=1, tol=1e-3).info["v0"] == "random"  # the default
    a = lanczos_eigen(op, k=1, tol=1e-3, seed=3)
    b = lanczos_eigen(op, k=1, tol=1e-3, seed=3)
    assert torch.equal(a.eigenvalues, b.eigenvalues)  # reproducible for a seed
    with pytest.raises(ValueError, match="v0"):
        lanczos_eigen(op, k=1, v0="gradients")


def test_gradient_start_at_a_stationary_point_falls_back_to_random():
    model = LowRankRegression(d=12)
    x, y = low_rank_data(n=100, d=12)
    x, y = x.double(), y.double()
    model.double()
    with torch.no_grad():  # the least-squares solution: the gradient vanishes
        model.w.copy_(torch.linalg.lstsq(x, y).solution)
    op = HessianOperator(model, data=(x, y), loss_fn=mse)
    assert float(op.to_flat(op.gradient()).norm()) < 1e-10
    exact = float(torch.linalg.eigvalsh(2 * x.T @ x / x.shape[0])[-1])
    res = lanczos_eigen(op, k=1, tol=1e-9, max_products=12)
    assert float(res.eigenvalues[0]) == pytest.approx(exact, rel=1e-8)


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_eigenvalue_criterion_bounds_the_eigenvalue_error(problem, tol):
    op, H = problem
    lam = float(torch.linalg.eigvalsh(H)[-1])
    by_value = lanczos_eigen(op, k=1, tol=tol, max_products=op.dim, criterion="eigenvalue")
    by_residual = lanczos_eigen(op, k=1, tol=tol, max_products=op.dim)
    assert by_value.converged and by_value.info["criterion"] == "eigenvalue"
    assert abs(float(by_value.eigenvalues[0]) - lam) <= tol * lam
    est = by_value.info["error_estimates"][0]
    assert est <= tol * lam and est <= float(by_value.residuals[0])
    assert by_value.products <= by_residual.products
    with pytest.raises(ValueError, match="criterion"):
        lanczos_eigen(op, k=1, criterion="value")


class _WithUnused(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.used = torch.nn.Linear(4, 3).double()
        self.unused = torch.nn.Parameter(torch.ones(10, dtype=torch.float64))

    def forward(self, x):
        return self.used(x)


def test_zero_block_restarts_once_per_wanted_copy():
    """H = 0 on the block: every step breaks down; k zeros come after k restarts, no more."""
    torch.manual_seed(0)
    x, y = classification_data(n=20, d_in=4)
    op = HessianOperator(_WithUnused(), ["unused"], data=(x.double(), y))
    res = lanczos_eigen(op, k=3, tol=1e-8, max_products=50)
    assert res.converged and res.eigenvalues.tolist() == [0.0, 0.0, 0.0]
    assert res.products == 4  # k + 1 steps before any judgement, each a closed space


def test_basis_off_device_and_in_another_dtype_gives_the_same_pairs():
    import torch

    from landscape.hessian import HessianOperator, lanczos_eigen

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    x, y = torch.randn(30, 5), torch.randint(0, 3, (30,))
    op = HessianOperator(net, data=(x, y))
    ref = lanczos_eigen(op, k=2, tol=1e-6, max_products=60)
    wide = lanczos_eigen(
        op, k=2, tol=1e-6, max_products=60, basis_device="cpu", basis_dtype=torch.float64
    )
    torch.testing.assert_close(wide.eigenvalues, ref.eigenvalues, rtol=1e-5, atol=1e-7)
    assert wide.eigenvectors[0][0].dtype == torch.float32
    dense = torch.linalg.eigvalsh(op.to_dense().double())
    torch.testing.assert_close(wide.eigenvalues.double(), dense.flip(0)[:2], rtol=1e-5, atol=1e-6)
