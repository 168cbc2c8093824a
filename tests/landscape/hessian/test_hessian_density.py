import numpy as np
import pytest
import torch
from _hessian_problems import classification_data, dense_hessian, tanh_mlp
from scipy.stats import wasserstein_distance

from landscape.hessian import HessianOperator, slq_density


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = tanh_mlp(hidden=8)
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    return HessianOperator(model, data=(x, y), dtype=torch.float64), H


def test_density_integrates_to_one_and_matches_spectrum(problem):
    op, H = problem
    exact = torch.linalg.eigvalsh(H).numpy()
    dens = slq_density(op, num_runs=8, num_steps=30, seed=0)
    assert dens.products == 8 * 30
    assert abs(np.trapezoid(dens.density, dens.grid) - 1) < 1e-3
    assert abs(dens.weights.sum() - 1) < 1e-12
    span = exact.max() - exact.min()
    # extreme Ritz values of the same runs
    assert abs(dens.lambda_max - exact.max()) <= 1e-6 * span
    assert abs(dens.lambda_min - exact.min()) <= 1e-6 * span
    # the quadrature measure sits where the eigenvalues are
    assert wasserstein_distance(dens.nodes, exact, u_weights=dens.weights) < 0.05 * span
    mean = float(np.sum(dens.weights * dens.nodes))
    assert abs(mean - exact.mean()) < 0.1 * exact.std()
    # location of the broadened density: mass near the bulk of the eigenvalues
    q = np.quantile(exact, [0.25, 0.75])
    inside = (dens.grid >= q[0] - 0.05 * span) & (dens.grid <= q[1] + 0.05 * span)
    assert np.trapezoid(dens.density[inside], dens.grid[inside]) > 0.4


def test_full_lanczos_run_is_exact_quadrature(problem):
    """Run to breakdown, the nodes are the distinct eigenvalues (the Krylov space is invariant)."""
    op, H = problem
    exact = torch.linalg.eigvalsh(H).numpy()
    dens = slq_density(op, num_runs=1, num_steps=op.dim, seed=1, sigma=1e-3)
    gaps = np.abs(dens.nodes[:, None] - exact[None, :]).min(axis=1)
    assert gaps.max() < 1e-8
    distinct = np.unique(np.round(exact, 6))
    assert len(dens.nodes) >= len(distinct) - 1  # the zero eigenvalue may have no weight
    d = dens.to_dict()
    assert set(d) >= {"grid", "density", "nodes", "weights", "lambda_min", "lambda_max"}


def test_bad_arguments(problem):
    op, _ = problem
    with pytest.raises(ValueError, match="num_runs"):
        slq_density(op, num_runs=0)
    with pytest.raises(ValueError, match="sigma"):
        slq_density(op, sigma=-1.0)
