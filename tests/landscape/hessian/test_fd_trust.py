"""Finite differences that say when they are wrong, and intervals that hold their level.

Against exact dense float64 Hessians of tiny models: a trained ReLU MLP (kinks), a tanh
MLP (smooth).
"""

import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _hessian_problems import classification_data, tanh_mlp
from scipy.stats import t as student_t
from torch import nn

from landscape.hessian import (
    FiniteDifferenceWarning,
    HessianOperator,
    block_trace,
    default_fd_step,
    fd_trace,
    hutchinson_trace,
    lanczos_eigen,
    slq_density,
)
from landscape.hessian.density.slq import negative_mass
from landscape.hessian.trace._result import TraceResult, satterthwaite
from landscape.hessian.trace.finite_difference import FiniteDifferenceError
from landscape.objective import Objective


@pytest.fixture(scope="module")
def relu():
    """A ReLU MLP 4-16-3 trained 200 steps on 200 samples (d = 131) and its dense Hessian."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    x = torch.randn(200, 4, generator=g)
    y = (x[:, :3] + 0.3 * torch.randn(200, 3, generator=g)).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    obj = Objective(model, (x, y))
    return obj, HessianOperator(obj, dtype=torch.float64).to_dense()


def kinked():
    """A ReLU MLP with ten samples exactly on kinks: every finite difference crosses them."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    x, y = classification_data(d_in=4)
    with torch.no_grad():
        model[0].bias.zero_()
    x[:10] = 0.0
    return Objective(model, (x, y))


def _rel(a, b):
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def test_default_step_scales_with_the_weights():
    ps = [torch.full((100,), 0.5)]  # ‖θ‖ = 5
    assert default_fd_step(torch.float32, ps) == pytest.approx(5e-3)
    assert default_fd_step(torch.float64, ps) == pytest.approx(5e-7)
    assert default_fd_step(torch.float64, [torch.zeros(3)]) == default_fd_step(torch.float64)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_every_fd_product_is_right_or_flagged_on_a_relu_net(relu, dtype):
    obj, H = relu
    op = HessianOperator(obj, method="fd", dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteDifferenceWarning)
        for _ in range(10):
            v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
            failed = op.fd_failed
            err = _rel(op.matvec(v).double(), H @ v)
            assert err <= 0.05 or op.fd_failed > failed, err
    if dtype == torch.float64:  # kink-free at the default step or a retry: all verified
        assert op.unverified_products == 0
        v = torch.randn(op.dim, generator=gen, dtype=torch.float64)
        assert _rel(op.matvec(v), H @ v) < 1e-5


def test_the_old_step_was_wrong_on_the_relu_net_and_the_check_sees_it(relu):
    obj, H = relu
    op = HessianOperator(obj, method="fd", dtype=torch.float64, h=1e-2, fd_check="always")
    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteDifferenceWarning)
        hv = op.matvec(v)
    # at 1e-2 the product crosses kinks; the retries at 1e-3, 1e-4 get below them
    assert op.fd_retried >= 1 and op.fd_failed == 0 and _rel(hv, H @ v) < 1e-3


def test_lanczos_never_converged_on_unverified_products(relu):
    obj, H = relu
    exact = float(torch.linalg.eigvalsh(H)[-1])
    good = lanczos_eigen(HessianOperator(obj, method="fd", dtype=torch.float64), max_products=40)
    assert good.converged and good.info["unverified_products"] == 0
    assert abs(float(good.eigenvalues[0]) - exact) < 1e-3 * exact
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FiniteDifferenceWarning)
        bad = lanczos_eigen(HessianOperator(kinked(), method="fd"), max_products=20)
        unchecked = lanczos_eigen(
            HessianOperator(obj, method="fd", dtype=torch.float64, fd_check="never"),
            max_products=40,
        )
    assert not bad.converged and bad.info["unverified_products"] > 0
    assert not unchecked.converged and not any(unchecked.converged_each)


def test_fd_trace_right_on_relu_in_float64_and_says_so_otherwise(relu):
    obj, H = relu
    exact = float(H.trace())
    for form in ("loss", "gradient"):
        res = fd_trace(obj, num_probes=60, seed=0, form=form, dtype=torch.float64)
        assert res.info["verified"] and res.info["unverified"] == 0
        ref = hutchinson_trace(HessianOperator(obj, dtype=torch.float64), 60, seed=0)
        assert abs(res.value - ref.value) <= 1e-3 * abs(exact), form  # same probes, exact
    # the former defaults (loss form h=1e-3) without the check: far off, and unverified
    with pytest.warns(FiniteDifferenceWarning, match="60 of 60 probes unverified"):
        old = fd_trace(obj, 1e-3, 60, dtype=torch.float64, check=False)
    assert old.info["verified"] is False and abs(old.value - exact) > 4 * old.stderr
    with pytest.warns(FiniteDifferenceWarning, match="unverified") as record:
        res = fd_trace(kinked(), num_probes=10, form="gradient")
    assert len(record) == 1  # one warning for the trace, not one per product
    assert not res.info["verified"] and res.converged is False
    with pytest.raises(FiniteDifferenceError, match="unverified"):
        fd_trace(kinked(), num_probes=5, on_failure="raise")
    with pytest.raises(ValueError, match="on_failure"):
        fd_trace(obj, on_failure="ignore")


def test_interval_uses_student_t_with_the_right_dof():
    samples = np.array([1.0, 2.0, 4.0])
    res = TraceResult(value=7 / 3, stderr=0.5, products=3, samples=samples)
    lo, hi = res.interval(0.95, skew=False)
    assert (hi - lo) / 2 == pytest.approx(student_t.ppf(0.975, 2) * 0.5)
    assert TraceResult(1.0, 0.0, 3, samples, dof=math.inf).interval() == (1.0, 1.0)
    # Welch–Satterthwaite: two equal parts of 2 dof each give 4; exact parts do not count
    assert satterthwaite([(1.0, 2.0), (1.0, 2.0), (0.0, math.inf)]) == pytest.approx(4.0)
    assert satterthwaite([(0.0, math.inf)]) == math.inf
    with pytest.raises(ValueError, match="level"):
        res.interval(1.5)


def test_block_trace_interval_covers_with_few_probes_per_block():
    torch.manual_seed(0)
    model = tanh_mlp()
    x, y = classification_data(n=40)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    exact = float(op.to_dense().trace())
    runs = [block_trace(op, 12, seed=s, blocks="tensor") for s in range(60)]
    r0 = runs[0]
    stochastic = [(se, n) for (_, se), n in zip(r0.blocks.values(), [3, 3, 3, 3]) if se > 0]
    assert stochastic and r0.degrees_of_freedom < 10  # blocks of three products: few dof
    lo, hi = r0.interval(skew=False)
    q = student_t.ppf(0.975, r0.degrees_of_freedom)
    assert (hi - lo) / 2 == pytest.approx(q * r0.stderr)
    covered = np.mean([lo <= exact <= hi for lo, hi in (r.interval() for r in runs)])
    assert covered >= 0.88  # 1.96·stderr covered about 80 % here


def test_slq_trace_estimate_and_negative_mass_tolerance():
    torch.manual_seed(0)
    model = tanh_mlp()
    x, y = classification_data(n=40)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    H = op.to_dense()
    dens = slq_density(op, num_runs=4, num_steps=10, seed=3, progress=False)
    gen = torch.Generator().manual_seed(3)
    v = op.random_vector(gen, "rademacher")
    tr = dens.trace_estimate()
    assert tr.samples[0] == pytest.approx(float(v @ H @ v), rel=1e-10)
    assert tr.degrees_of_freedom == 3 and len(tr.samples) == 4
    nodes = np.array([-1e-5, -0.2, 0.0, 1.0, 3.0])
    weights = np.full(5, 0.2)
    assert negative_mass(nodes, weights) == pytest.approx(0.2)  # −1e-5 counts as zero
    assert negative_mass(nodes, weights, rtol=0.0) == pytest.approx(0.4)
    spectrum = torch.linalg.eigvalsh(H).numpy()
    full = slq_density(op, num_runs=1, num_steps=op.dim, seed=0, progress=False)
    tol = 1e-4 * np.abs(spectrum).max()
    assert full.negative_mass() <= float((spectrum < -tol).sum()) / op.dim + 0.5
