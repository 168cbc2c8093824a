import math

import pytest
import torch
from _metrics_helpers import classification_data, dense_hessian, mlp

from landscape.metrics import compute_metrics

# torch.func.hessian (the reference) triggers torch's own torch.jit.script deprecation notice.
pytestmark = pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:DeprecationWarning")


@pytest.fixture(scope="module")
def problem():
    model = mlp()
    x, y = classification_data(n=24)
    H, g = dense_hessian(model, x, y)
    return model, (x, y), H, g


def test_lambda_max_matches_dense_hessian(problem):
    model, data, H, _ = problem
    res = compute_metrics(
        model, data, ["lambda_max"], tol=1e-9, max_products=H.shape[0], progress=False
    )["lambda_max"]
    exact = float(torch.linalg.eigvalsh(H)[-1])
    assert res.value == pytest.approx(exact, rel=1e-6)
    assert res.info["converged"] and res.info["products"] <= H.shape[0]


def test_lambda_max_eigenvalue_criterion(problem):
    model, data, H, _ = problem
    exact = float(torch.linalg.eigvalsh(H)[-1])
    res = compute_metrics(
        model, data, ["lambda_max"], tol=1e-4, criterion="eigenvalue", progress=False
    )["lambda_max"]
    assert res.info["criterion"] == "eigenvalue" and res.info["converged"]
    assert res.value == pytest.approx(exact, rel=1e-4)
    with pytest.raises(ValueError, match="criterion"):
        compute_metrics(model, data, ["lambda_max"], criterion="value", progress=False)


@pytest.mark.parametrize("method", ["hutchinson", "hutchpp", "fd"])
def test_trace_within_three_stderr_of_exact(problem, method):
    model, data, H, _ = problem
    exact = float(torch.trace(H))
    for seed in range(3):
        res = compute_metrics(
            model,
            data,
            ["trace"],
            trace_method=method,
            num_products=30,
            seed=seed,
            progress=False,
        )["trace"]
        assert res.stderr > 0
        assert abs(res.value - exact) <= 3 * res.stderr + 1e-9 * abs(exact)
        assert res.info["method"] == method and res.info["products"] <= 30


def test_normalized_trace_is_trace_over_grad_norm(problem):
    model, data, H, g = problem
    out = compute_metrics(
        model,
        data,
        ["trace", "normalized_trace", "grad_norm"],
        num_products=40,
        seed=1,
        progress=False,
    )
    gnorm = float(g.norm())
    assert out["grad_norm"].value == pytest.approx(gnorm, rel=1e-10)
    nt = out["normalized_trace"]
    assert nt.value == pytest.approx(out["trace"].value / gnorm, rel=1e-10)
    assert nt.stderr == pytest.approx(out["trace"].stderr / gnorm, rel=1e-10)
    assert abs(nt.value - float(torch.trace(H)) / gnorm) <= 3 * nt.stderr


def test_grad_curvature_matches_dense(problem):
    model, data, H, g = problem
    res = compute_metrics(model, data, ["grad_curvature"], progress=False)["grad_curvature"]
    exact = float(g @ H @ g / (g @ g))
    assert res.value == pytest.approx(exact, rel=1e-10)
    assert res.info["products"] == 1
    assert res.info["grad_norm"] == pytest.approx(float(g.norm()), rel=1e-10)


def test_curvature_over_several_uneven_batches(problem):
    model, data, H, g = problem
    res = compute_metrics(
        model,
        data,
        ["grad_curvature", "lambda_max"],
        batch_size=7,
        tol=1e-9,
        max_products=H.shape[0],
        progress=False,
    )
    assert res["grad_curvature"].value == pytest.approx(float(g @ H @ g / (g @ g)), rel=1e-10)
    assert res["lambda_max"].value == pytest.approx(float(torch.linalg.eigvalsh(H)[-1]), rel=1e-6)


def test_grad_curvature_nan_at_a_stationary_point():
    from _metrics_helpers import QUAD_DATA, Quadratic, quad_loss

    model = Quadratic(torch.eye(6), torch.zeros(6), torch.zeros(6))
    res = compute_metrics(model, QUAD_DATA, ["grad_curvature"], loss_fn=quad_loss)
    assert math.isnan(res["grad_curvature"].value)


def test_trace_per_layer_blocks_and_shared_estimate(problem):
    model, data, H, _ = problem
    out = compute_metrics(
        model,
        data,
        ["normalized_trace", "trace"],
        num_products=40,
        per_metric={"trace": {"per_layer": True}},
        progress=False,
    )
    tr = out["trace"]
    blocks = tr.info["per_param"]
    assert list(blocks) == [n for n, _ in model.named_parameters()]
    assert sum(b["value"] for b in blocks.values()) == pytest.approx(tr.value, rel=1e-10)
    start = 0
    for (_, p), b in zip(model.named_parameters(), blocks.values()):
        exact = float(torch.diagonal(H)[start : start + p.numel()].sum())
        start += p.numel()
        assert abs(b["value"] - exact) <= 4 * b["stderr"] + 1e-12
    # normalized_trace used the same probes (one estimate, computed once)
    assert out["normalized_trace"].info["trace"] == tr.value
    with pytest.raises(ValueError, match="per_layer"):
        compute_metrics(model, data, ["trace"], per_layer=True, trace_method="hutchpp")
