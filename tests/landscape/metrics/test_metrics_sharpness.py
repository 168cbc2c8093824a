import itertools
import math

import numpy as np
import pytest
import torch
from _metrics_helpers import QUAD_DATA, Quadratic, quad_loss, random_quadratic, trust_region_max

from landscape.metrics import compute_metrics
from landscape.objective import Objective


def _one(model, name, **options):
    return compute_metrics(model, QUAD_DATA, [name], loss_fn=quad_loss, progress=False, **options)[
        name
    ]


def _np(t):
    return t.detach().numpy().astype(np.float64)


# ----------------------------------------------------------------------------- SAM
def test_sam_one_step_is_sams_estimate():
    model = random_quadratic(seed=3)
    A, g, rho = _np(model.A), _np(model.grad()), 0.3
    eps = rho * g / np.linalg.norm(g)
    expected = 0.5 * eps @ A @ eps + g @ eps
    res = _one(model, "sam_sharpness", rho=rho)
    assert res.value == pytest.approx(expected, rel=1e-12)
    assert res.info["steps"] == 1 and res.info["steps_taken"] == 1
    assert res.stderr is None


def test_sam_many_steps_approach_the_true_maximum_from_below():
    model = random_quadratic(seed=4)
    rho = 0.5
    exact, _ = trust_region_max(_np(model.A), _np(model.grad()), rho)
    values = [_one(model, "sam_sharpness", rho=rho, steps=k).value for k in (1, 3, 10, 200)]
    assert all(v <= exact + 1e-12 for v in values)
    assert values == sorted(values)
    assert values[0] < exact - 1e-4  # one step is not the maximum here
    assert values[-1] == pytest.approx(exact, rel=1e-8)


def test_sam_zero_gradient_gives_zero_and_reports_no_step():
    A = np.diag([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    model = Quadratic(A, np.zeros(6), np.zeros(6))
    res = _one(model, "sam_sharpness", rho=0.1, steps=3)
    assert res.value == 0.0 and res.info["steps_taken"] == 0


# ----------------------------------------------------------------------------- ASAM
def test_adaptive_one_step_by_hand_diagonal():
    a = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 1.5])
    theta = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -2.0])
    b = np.array([0.1, 0.2, -0.3, 0.4, -0.5, 0.6])
    model = Quadratic(np.diag(a), b, theta)
    rho, eta = 0.2, 0.05
    g = a * theta + b
    # T = |θ| + η on the 2×2 weight (first four entries), 1 on the bias (dim 1).
    T = np.array([0.55, 1.05, 2.05, 0.05, 1.0, 1.0])
    u = T * g
    eps = T * (rho * u / math.sqrt(sum(ui * ui for ui in u)))
    expected = sum(0.5 * a[i] * eps[i] ** 2 + g[i] * eps[i] for i in range(6))
    res = _one(model, "adaptive_sharpness", rho=rho, eta=eta, weights_by="dim")
    assert res.value == pytest.approx(expected, rel=1e-12)
    # adaptive_all: the bias is scaled too
    T_all = np.abs(theta) + eta
    u = T_all * g
    eps = T_all * (rho * u / np.linalg.norm(u))
    expected_all = float(0.5 * eps @ np.diag(a) @ eps + g @ eps)
    res = _one(model, "adaptive_sharpness", rho=rho, eta=eta, adaptive_all=True)
    assert res.value == pytest.approx(expected_all, rel=1e-12)


def test_adaptive_many_steps_reach_the_scaled_trust_region_maximum():
    model = random_quadratic(seed=5)
    rho, eta = 0.4, 0.1
    theta = _np(model.flat())
    T = np.concatenate([np.abs(theta[:4]) + eta, np.ones(2)])
    A, g = _np(model.A), _np(model.grad())
    exact, _ = trust_region_max(T[:, None] * A * T[None, :], T * g, rho)
    one = _one(model, "adaptive_sharpness", rho=rho, eta=eta, weights_by="dim").value
    many = _one(model, "adaptive_sharpness", rho=rho, eta=eta, steps=300, weights_by="dim").value
    assert one <= many <= exact + 1e-12
    assert many == pytest.approx(exact, rel=1e-8)


def test_adaptive_scale_follows_the_authors_names():
    from landscape.metrics import adaptive_scale

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    names = [n for n, _ in net.named_parameters()]
    params = list(net.parameters())
    with torch.no_grad():
        net[1].weight.fill_(2.0)
    by_name = adaptive_scale(params, 0.1, names=names)
    # Linear and LayerNorm weights scaled (the LayerNorm scale included), biases not
    assert [bool((t != 1).any()) for t in by_name] == [True, False, True, False]
    torch.testing.assert_close(by_name[2], torch.full((4,), 2.1))
    by_dim = adaptive_scale(params, 0.1, weights_by="dim")
    assert [bool((t != 1).any()) for t in by_dim] == [True, False, False, False]
    with pytest.raises(ValueError, match="names"):
        adaptive_scale(params, 0.1)


# ----------------------------------------------------------------------------- GAM
def test_first_order_flatness_one_step_by_hand():
    model = random_quadratic(seed=6)
    A, g, rho = _np(model.A), _np(model.grad()), 0.3
    h = A @ g  # ∇‖∇L‖ ∝ H g
    eps = rho * h / np.linalg.norm(h)
    expected = rho * np.linalg.norm(g + A @ eps)
    res = _one(model, "first_order_flatness", rho=rho)
    assert res.value == pytest.approx(expected, rel=1e-12)
    assert res.info["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-12)


def test_first_order_flatness_many_steps_reach_the_maximum():
    model = random_quadratic(seed=7)
    A, g, rho = _np(model.A), _np(model.grad()), 0.5
    # max ‖g + Aε‖² = ‖g‖² + 2·max(½εᵀA²ε + (Ag)ᵀε) over the ball
    tr, _ = trust_region_max(A @ A, A @ g, rho)
    exact = rho * math.sqrt(g @ g + 2 * tr)
    values = [_one(model, "first_order_flatness", rho=rho, steps=k).value for k in (1, 200)]
    assert values[0] <= values[1] <= exact * (1 + 1e-12)
    assert values[1] == pytest.approx(exact, rel=1e-8)


# ----------------------------------------------------------------------------- average
@pytest.mark.parametrize("antithetic", [True, False])
def test_average_sharpness_closed_form(antithetic):
    model = random_quadratic(seed=8)
    sigma = 0.1
    exact = 0.5 * sigma**2 * float(torch.trace(model.A))
    res = _one(
        model, "average_sharpness", sigma=sigma, num_samples=300, antithetic=antithetic, seed=1
    )
    assert res.stderr > 0
    assert abs(res.value - exact) <= 3 * res.stderr
    if antithetic:  # the first-order term cancels: an informative estimate
        assert res.stderr < 0.3 * exact


def test_average_sharpness_filter_scaled_closed_form():
    model = random_quadratic(seed=9)
    sigma = 0.2
    theta = _np(model.flat())
    A = _np(model.A)
    # filters: rows of W (entries 0-1 and 2-3), the bias as one filter (4-5).
    # each filter's noise has norm σ‖θ_f‖ in a uniform direction: E εεᵀ = σ²‖θ_f‖²/n_f I.
    exact = sum(
        0.5 * sigma**2 * (theta[idx] @ theta[idx]) / len(idx) * A[idx, idx].sum()
        for idx in ([0, 1], [2, 3], [4, 5])
    )
    res = _one(model, "average_sharpness", sigma=sigma, num_samples=300, scale="filter")
    assert abs(res.value - exact) <= 3 * res.stderr
    assert res.stderr < 0.3 * exact


def test_average_sharpness_is_reproducible_and_leaves_global_rng_alone():
    model = random_quadratic(seed=8)
    state = torch.get_rng_state()
    a = _one(model, "average_sharpness", num_samples=5, seed=3)
    assert torch.equal(state, torch.get_rng_state())
    b = _one(model, "average_sharpness", num_samples=5, seed=3)
    c = _one(model, "average_sharpness", num_samples=5, seed=4)
    assert a.value == b.value and a.stderr == b.stderr
    assert a.value != c.value


# ----------------------------------------------------------------------------- Keskar
def test_eps_sharpness_convex_diagonal_box_corner():
    a = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 1.5])
    theta = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -2.0])
    b = np.array([0.1, 0.2, -0.3, 0.4, -0.3, 0.6])  # no zero gradient entry: no saddle
    model = Quadratic(np.diag(a), b, theta, c=2.0)
    eps = 0.05
    g = a * theta + b
    half = eps * (np.abs(theta) + 1)
    gain = float(np.sum(0.5 * a * half**2 + np.abs(g) * half))
    L0 = model.value()
    res = _one(model, "eps_sharpness", eps=eps, max_iter=50)
    assert res.value == pytest.approx(100 * gain / (1 + L0), rel=1e-9)


def test_eps_sharpness_concave_interior_and_clipped():
    a = np.array([1.0, 2.0, 3.0, 4.0, 0.5, 1.5])
    theta = np.array([0.5, -1.0, 2.0, 0.0, 1.0, -2.0])
    model = Quadratic(-np.diag(a), np.zeros(6), theta, c=10.0)
    eps = 0.3
    g = -a * theta
    half = eps * (np.abs(theta) + 1)
    y = np.clip(g / a, -half, half)  # maximiser of −½a y² + g y on [−half, half]
    assert np.any(np.abs(g / a) < half) and np.any(np.abs(g / a) > half)
    gain = float(np.sum(-0.5 * a * y**2 + g * y))
    L0 = model.value()
    res = _one(model, "eps_sharpness", eps=eps, max_iter=100)
    assert res.value == pytest.approx(100 * gain / (1 + L0), rel=1e-7)


def test_eps_sharpness_matches_brute_force_over_box_vertices():
    model = random_quadratic(seed=10, c=3.0)
    eps = 0.2
    theta = _np(model.flat())
    A, g = _np(model.A), _np(model.grad())
    half = eps * (np.abs(theta) + 1)
    best = max(
        0.5 * (s * half) @ A @ (s * half) + g @ (s * half)
        for s in map(np.array, itertools.product([-1.0, 1.0], repeat=6))
    )
    L0 = model.value()
    # L-BFGS-B is local: from y = 0 alone it may stop at a lesser vertex ...
    local = _one(model, "eps_sharpness", eps=eps, max_iter=100)
    assert local.value <= 100 * best / (1 + L0) * (1 + 1e-12)
    # ... random restarts in the box find the global one here.
    res = _one(model, "eps_sharpness", eps=eps, max_iter=100, restarts=8, seed=0)
    assert res.value == pytest.approx(100 * best / (1 + L0), rel=1e-8)
    assert res.info["max_loss"] == pytest.approx(L0 + best, rel=1e-10)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("sam_sharpness", {"rho": -1.0}, "rho"),
        ("sam_sharpness", {"steps": 0}, "steps"),
        ("adaptive_sharpness", {"eta": -0.1}, "eta"),
        ("average_sharpness", {"scale": "layer"}, "scale"),
        ("average_sharpness", {"num_samples": 0}, "num_samples"),
        ("eps_sharpness", {"eps": 0.0}, "eps"),
    ],
)
def test_bad_options_raise_naming_them(name, options, match):
    model = random_quadratic()
    with pytest.raises(ValueError, match=match):
        _one(model, name, **options)


def test_metric_functions_work_on_an_objective_directly():
    from landscape.metrics import sam_sharpness

    model = random_quadratic(seed=3)
    obj = Objective(model, QUAD_DATA, quad_loss)
    a = sam_sharpness(obj, rho=0.3, progress=False)
    b = _one(model, "sam_sharpness", rho=0.3)
    assert a.value == b.value
