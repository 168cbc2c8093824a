import numpy as np
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
from torch import nn

from landscape.hessian import HessianOperator, fd_trace, hutchinson_trace, hutchpp_trace
from landscape.objective import Objective


@pytest.fixture(scope="module")
def problem():
    torch.manual_seed(0)
    model = tanh_mlp()
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    obj = Objective(model, (x, y))
    return obj, HessianOperator(obj, dtype=torch.float64), H


def _unbiased(estimates, stderrs, exact):
    """The mean over seeds lies within 3 standard errors of the exact value."""
    est = np.asarray(estimates)
    se_mean = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - exact) <= 3 * se_mean
    # each run's own standard error matches the spread over seeds (within a factor 2)
    assert 0.5 < np.median(stderrs) / est.std(ddof=1) < 2.0


def test_hutchinson_unbiased_with_calibrated_stderr(problem):
    _, op, H = problem
    runs = [hutchinson_trace(op, num_products=20, seed=s) for s in range(30)]
    assert all(r.products == 20 and len(r.samples) == 20 for r in runs)
    _unbiased([r.value for r in runs], [r.stderr for r in runs], float(H.trace()))


def test_hutchpp_unbiased(problem):
    _, op, H = problem
    runs = [hutchpp_trace(op, num_products=21, seed=s) for s in range(30)]
    assert all(r.products == 21 for r in runs)
    _unbiased([r.value for r in runs], [r.stderr for r in runs], float(H.trace()))


def test_hutchpp_variance_far_below_hutchinson_on_low_rank_hessian():
    model = LowRankRegression(d=40)
    x, y = low_rank_data(n=200, d=40)
    H = dense_hessian(model, x, y, loss_fn=mse)
    op = HessianOperator(model, data=(x, y), loss_fn=mse, dtype=torch.float64)
    exact = float(H.trace())
    hutch = np.array([hutchinson_trace(op, 30, seed=s).value for s in range(20)])
    hpp = np.array([hutchpp_trace(op, 30, seed=s).value for s in range(20)])
    assert np.mean((hpp - exact) ** 2) < 0.05 * np.mean((hutch - exact) ** 2)
    assert abs(hpp.mean() - exact) <= 3 * hpp.std(ddof=1) / np.sqrt(20) + 1e-9 * exact


def test_target_rel_stderr_stops_early(problem):
    _, op, H = problem
    res = hutchinson_trace(op, num_products=2000, target_rel_stderr=0.05, seed=1)
    assert res.converged and res.products < 2000
    assert res.stderr <= 0.05 * abs(res.value)
    assert abs(res.value - float(H.trace())) <= 4 * res.stderr
    res = hutchpp_trace(op, num_products=300, target_rel_stderr=0.02, seed=1)
    assert res.converged and res.products < 300


def test_per_block_traces_in_one_pass(problem):
    _, op, H = problem
    res = hutchinson_trace(op, num_products=300, seed=3, per_block=True)
    assert res.products == 300
    assert list(res.blocks) == op.param_names
    assert abs(sum(v for v, _ in res.blocks.values()) - res.value) < 1e-9 * abs(res.value)
    diag = torch.diagonal(H)
    for name, sl in op.blocks():
        value, se = res.blocks[name]
        assert abs(value - float(diag[sl].sum())) <= 4 * se + 1e-12


def test_negative_trace_is_estimated():
    """PyHessian stops after two samples on a negative trace; the stderr rule does not."""
    torch.manual_seed(0)
    model = nn.Linear(6, 2)
    x, y = torch.randn(50, 6), torch.randn(50, 2)

    def neg(out, t):
        return -mse(out, t)  # a concave quadratic: negative semi-definite Hessian

    H = dense_hessian(model, x, y, loss_fn=neg)
    exact = float(H.trace())
    assert exact < 0
    op = HessianOperator(model, data=(x, y), loss_fn=neg, dtype=torch.float64)
    res = hutchinson_trace(op, num_products=500, target_rel_stderr=0.02, seed=0)
    assert res.products >= 10 and res.converged
    assert res.value < 0 and abs(res.value - exact) <= 4 * res.stderr


@pytest.mark.parametrize("form", ["loss", "gradient"])
def test_fd_trace_unbiased_and_weights_restored(problem, form):
    obj, _, H = problem
    before = [p.detach().clone() for p in obj.params]
    res = fd_trace(obj, num_probes=200, seed=0, form=form, dtype=torch.float64)
    exact = float(H.trace())
    assert res.products == 200 and res.info["method"] == f"fd_{form}"
    assert abs(res.value - exact) <= 4 * res.stderr
    # the same probes through exact products give the same estimate
    ref = hutchinson_trace(HessianOperator(obj, dtype=torch.float64), 200, seed=0)
    assert abs(res.value - ref.value) <= 1e-4 * abs(exact)
    assert all(torch.equal(a, b) for a, b in zip(before, obj.params, strict=True))


def test_fd_trace_float32_loss_form(problem):
    obj, _, H = problem
    res = fd_trace(obj, num_probes=200, seed=0)
    assert abs(res.value - float(H.trace())) <= 4 * res.stderr + 0.02 * float(H.trace())


def test_bad_arguments(problem):
    obj, op, _ = problem
    with pytest.raises(ValueError, match="num_products"):
        hutchinson_trace(op, num_products=0)
    with pytest.raises(ValueError, match="target_rel_stderr"):
        hutchinson_trace(op, target_rel_stderr=-1)
    with pytest.raises(ValueError, match="num_products"):
        hutchpp_trace(op, num_products=2)
    with pytest.raises(ValueError, match="form"):
        fd_trace(obj, form="hessian")


def test_hutchpp_lanczos_sketch_unbiased_and_exact_when_exhausted(problem):
    _, op, H = problem
    exact = float(H.trace())
    runs = [hutchpp_trace(op, num_products=21, seed=s, sketch="lanczos") for s in range(30)]
    assert all(r.products == 21 and r.info["sketch_size"] == 14 for r in runs)
    _unbiased([r.value for r in runs], [r.stderr for r in runs], exact)
    full = hutchpp_trace(op, op.dim + 1, sketch="lanczos", sketch_size=op.dim)
    assert abs(full.value - exact) < 1e-9 * abs(exact) and full.stderr == 0


def test_block_trace_unbiased_with_exact_block_values(problem):
    _, op, H = problem
    from landscape.hessian import block_trace

    runs = [block_trace(op, 24, seed=s) for s in range(30)]
    r0 = runs[0]
    assert list(r0.blocks) == ["0", "2"] and r0.products <= 24
    _unbiased([r.value for r in runs], [max(r.stderr, 1e-12) for r in runs], float(H.trace()))
    per_tensor = block_trace(op, 40, blocks="tensor", seed=0)
    assert list(per_tensor.blocks) == op.param_names
    # a budget covering every block's size traces each block exactly
    big = block_trace(op, 2 * op.dim, blocks="tensor")
    assert big.info["split"] == "exact" and big.stderr == 0
    diag = torch.diagonal(H)
    for name, sl in op.blocks():
        assert abs(big.blocks[name][0] - float(diag[sl].sum())) < 1e-8
    with pytest.raises(ValueError, match="num_products"):
        block_trace(op, 5, blocks="tensor")


class _DenseOperator(HessianOperator):
    """The operator's layout and blocks, with products by a given dense matrix (fast)."""

    def __init__(self, objective, dense):
        super().__init__(objective, dtype=torch.float64)
        self.dense = dense

    def matvec(self, v):
        self.products += 1
        return self.dense @ torch.as_tensor(v, dtype=torch.float64)


def test_block_trace_pilot_split_unbiased_and_covers(problem):
    """Many seeds against the dense Hessian: mean within 3 standard errors, 95 % covers."""
    from landscape.hessian import block_trace

    obj, _, H = problem
    op = _DenseOperator(obj, H)
    exact = float(H.trace())
    runs = [block_trace(op, 24, seed=s, progress=False) for s in range(300)]
    assert {r.info["split"] for r in runs} == {"pilot"} and max(r.products for r in runs) <= 24
    _unbiased([r.value for r in runs], [r.stderr for r in runs], exact)
    covered = np.mean([lo <= exact <= hi for lo, hi in (r.interval(0.95) for r in runs)])
    assert covered >= 0.92
    rad = [block_trace(op, 24, seed=s, sketch="rademacher", progress=False) for s in range(60)]
    assert {r.info["split"] for r in rad} == {"pilot"} and max(r.products for r in rad) <= 24
    _unbiased([r.value for r in rad], [r.stderr for r in rad], exact)


def test_block_trace_pilot_split_sends_probes_where_the_residual_spreads(problem):
    """A rank-2 block, which its sketch captures, gets the minimum; the other block the rest."""
    from landscape.hessian import block_trace

    obj, _, _ = problem
    op = _DenseOperator(obj, torch.zeros(57, 57, dtype=torch.float64))
    g = torch.Generator().manual_seed(0)
    u = torch.randn(36, 2, generator=g, dtype=torch.float64)
    op.dense[:36, :36] = u @ u.T  # block "0": rank 2
    op.dense[36:, 36:] = torch.diag(torch.linspace(-1.0, 2.0, 21, dtype=torch.float64))
    op.dense[:36, 36:] = 0.3 * torch.randn(36, 21, generator=g, dtype=torch.float64)
    op.dense[36:, :36] = op.dense[:36, 36:].T  # cross-layer mass: never seen
    exact = float(op.dense[:36, :36].trace() + op.dense[36:, 36:].trace())
    for min_probes in (3, 5):
        res = block_trace(op, 30, seed=1, min_probes=min_probes, progress=False)
        probes, alloc = res.info["block_probes"], res.info["allocation"]
        assert res.info["split"] == "pilot" and res.products == sum(alloc.values()) <= 30
        assert probes["0"] == min_probes and probes["2"] > 30 // 2 - min_probes
        assert res.blocks["0"][0] == pytest.approx(float(op.dense[:36, :36].trace()), rel=1e-9)
        assert res.blocks["0"][1] < 1e-9 * res.blocks["2"][1]
        assert res.info["block_dof"]["2"] == probes["2"] - 1
        assert abs(res.value - exact) <= 4 * res.stderr
    # too few products per block for a pilot and the minimum probes: the size split
    small = block_trace(op, 24, seed=1, min_probes=6, progress=False)
    assert small.info["split"] == "size" and small.products <= 24
    assert block_trace(op, 30, seed=1, allocation="size").info["split"] == "size"
    with pytest.raises(ValueError, match="allocation"):
        block_trace(op, 30, allocation="neyman")
    with pytest.raises(ValueError, match="min_probes"):
        block_trace(op, 30, min_probes=1)


def test_block_trace_pilot_split_traces_small_blocks_exactly(problem):
    from landscape.hessian import block_trace

    obj, _, H = problem
    op = _DenseOperator(obj, H)
    res = block_trace(op, 40, seed=2, blocks="tensor", progress=False)
    assert res.info["split"] == "pilot" and res.products <= 40
    diag = torch.diagonal(H)
    for name, sl in op.blocks():
        value, se = res.blocks[name]
        if name.endswith("bias"):  # 6 and 3 entries: within their shares, exact
            assert value == pytest.approx(float(diag[sl].sum()), abs=1e-10) and se == 0
            assert res.info["block_probes"][name] == 0
        else:
            assert res.info["block_probes"][name] >= 3 and se > 0


def test_estimate_trace_dispatches_by_name(problem):
    from landscape.hessian.trace.select import TRACE_METHODS, estimate_trace

    _, op, H = problem
    exact = float(torch.trace(H))
    for method in TRACE_METHODS:
        res = estimate_trace(op, method, 40, seed=1, progress=False)
        assert res.info["method"].startswith(method.replace("hutchpp", "hutch")), method
        assert abs(res.value - exact) <= 5 * res.stderr + 1e-6 * abs(exact), method
    per = estimate_trace(op, "hutchinson", 20, per_block=True, progress=False)
    assert per.blocks is not None and len(per.blocks) == len(op.params)
    with pytest.raises(ValueError, match="trace_method"):
        estimate_trace(op, "exact")
    with pytest.raises(ValueError, match="per_layer"):
        estimate_trace(op, "hutchpp", per_block=True)
    with pytest.raises(ValueError, match="target_rel_stderr"):
        estimate_trace(op, "block", 40, target_rel_stderr=0.1)
