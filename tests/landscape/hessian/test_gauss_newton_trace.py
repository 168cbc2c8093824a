"""ggn_trace: Tr G exactly from per-sample gradients plus the residual's diagonal blocks."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _hessian_problems import classification_data, dense_hessian, mse, tanh_mlp
from torch import nn
from torch.func import functional_call, hessian, jacrev

from landscape.hessian import HessianOperator, ggn_trace, hutchinson_trace
from landscape.hessian._blocks import group_blocks
from landscape.hessian.trace import gauss_newton
from landscape.hessian.trace.gauss_newton import _gauss_newton, _residual_operator
from landscape.objective import Objective


def dense_ggn(model, batches, loss_fn, names=None):
    """``Σ_b (n_b/N) Jᵀ ∇²_f loss_fn(f_b, y_b) J``, from ``jacrev`` and ``hessian`` (float64)."""
    m64 = copy.deepcopy(model).double().eval()
    params = dict(m64.named_parameters())
    names = list(params) if names is None else list(names)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    n_total = sum(int(y.shape[0]) for _, y in batches)

    def outputs(v, x):
        ps = dict(
            zip(names, (c.view(s) for c, s in zip(v.split([s.numel() for s in shapes]), shapes)))
        )
        return functional_call(m64, ps, (x,))

    G = torch.zeros(flat.numel(), flat.numel(), dtype=torch.float64)
    for x, y in batches:
        x64 = x.double()
        y64 = y.double() if y.is_floating_point() else y
        out = outputs(flat, x64)
        J = jacrev(outputs)(flat, x64).reshape(out.numel(), -1)
        L = hessian(lambda f, s=out.shape, t=y64: loss_fn(f.reshape(s), t))(
            out.reshape(-1).detach()
        )
        G += (y.shape[0] / n_total) * J.T @ L.reshape(out.numel(), out.numel()) @ J
    return G


def dense_full(model, batches, loss_fn, names=None):
    """The exactly weighted dense Hessian over several batches."""
    n_total = sum(int(y.shape[0]) for _, y in batches)
    return sum(
        (y.shape[0] / n_total) * dense_hessian(model, x, y, loss_fn=loss_fn, names=names)
        for x, y in batches
    )


class ReluConvNet(nn.Module):
    """Conv, eval-mode BatchNorm, ReLU, max-pool, linear layers: R's diagonal blocks are 0."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc1 = nn.Linear(12, 5)
        self.fc2 = nn.Linear(5, 3)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.3, 0.3)

    def forward(self, x):
        h = F.max_pool2d(F.relu(self.bn(self.conv(x))), 2)
        return self.fc2(F.relu(self.fc1(h.flatten(1))))


def conv_data(n=24, seed=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _exact(result, reference, rtol=1e-8):
    assert abs(result.value - reference) <= rtol * abs(reference)
    assert result.stderr <= 1e-12 * abs(reference)


@pytest.fixture(params=["hooks", "vmap"])
def engine(request, monkeypatch):
    """Per-sample products by the closed forms of hooked modules, or by vmap only."""
    if request.param == "vmap":
        monkeypatch.setattr(gauss_newton, "_hookable", lambda model, names: {})
    return request.param


@pytest.fixture(scope="module")
def tanh_problem():
    model = tanh_mlp(hidden=8)
    x, y = classification_data(n=40)
    H = dense_hessian(model, x, y)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    return model, x, y, op, H


def test_ggn_part_matches_dense_gauss_newton(tanh_problem, engine):
    model, x, y, op, _ = tanh_problem
    G = dense_ggn(model, [(x, y)], F.cross_entropy)
    res = ggn_trace(op, 60, seed=0)
    assert res.info["per_sample"] == engine
    assert res.info["ggn_trace"] == pytest.approx(float(G.trace()), rel=1e-10)
    assert res.info["ggn_stderr"] == 0.0
    # cross-entropy's output Hessian has the null vector 1: 2 of 3 columns per sample
    assert res.info["gradient_passes"] == 2


def test_residual_operator_is_hessian_minus_gauss_newton(tanh_problem):
    model, x, y, op, H = tanh_problem
    G = dense_ggn(model, [(x, y)], F.cross_entropy)
    ggn = _gauss_newton(op, group_blocks(op, "module"), None, 0, None, False)
    with _residual_operator(op, ggn["residuals"]) as rop:
        R = rop.to_dense()
    assert torch.allclose(R, H - G, atol=1e-12 * float(H.abs().max()))
    assert float(R.abs().max()) > 1e-3  # a tanh network has a real residual term


def test_relu_conv_net_is_exact_with_zero_residual_blocks(engine):
    model = ReluConvNet()
    x, y = conv_data()
    H = dense_hessian(copy.deepcopy(model).eval(), x, y)
    model.train()
    model.conv.weight.grad = torch.ones_like(model.conv.weight)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    res = ggn_trace(op, 10, seed=0)
    assert res.info["per_sample"] == engine
    _exact(res, float(H.trace()))
    assert res.info["zero_blocks"] == 4 and res.products == 4 and op.products == 4
    assert set(res.blocks) == {"conv", "bn", "fc1", "fc2"}
    offsets = np.cumsum([0] + [p.numel() for p in model.parameters()])
    diag = torch.diagonal(H).numpy()
    assert res.blocks["conv"][0] == pytest.approx(diag[offsets[0] : offsets[2]].sum(), rel=1e-8)
    # mode and .grad left as found
    assert model.training and model.bn.training
    assert torch.equal(model.conv.weight.grad, torch.ones_like(model.conv.weight))
    assert model.fc1.weight.grad is None
    # the same in float32 (the operator's own dtype), to float32 accuracy
    res32 = ggn_trace(HessianOperator(model, data=(x, y)), 10)
    assert res32.value == pytest.approx(float(H.trace()), rel=1e-5)


def test_tanh_unbiased_and_below_hutchinson(tanh_problem):
    *_, op, H = tanh_problem
    exact = float(H.trace())
    runs = [ggn_trace(op, 16, seed=s) for s in range(24)]
    assert all(r.products == 16 for r in runs)
    assert all(r.info["zero_blocks"] == 1 for r in runs)  # the last layer's block
    est = np.array([r.value for r in runs])
    se_mean = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - exact) <= 3 * se_mean
    assert 0.5 < np.median([r.stderr for r in runs]) / est.std(ddof=1) < 2.0
    hutch = [hutchinson_trace(op, 16, seed=s).stderr for s in range(24)]
    assert np.median([r.stderr for r in runs]) < 0.5 * np.median(hutch)


def test_target_rel_stderr_stops_early(tanh_problem):
    *_, op, _ = tanh_problem
    full = ggn_trace(op, 30, seed=1)
    loose = ggn_trace(op, 30, target_rel_stderr=0.5, seed=1)
    assert loose.products < full.products and loose.converged
    assert loose.stderr <= 0.5 * abs(loose.value)


def _custom_mean_loss(out, y):
    """A non-convex mean loss: an indefinite output Hessian (negative eigenvalues)."""
    return (torch.sin(out) * (y[:, None].to(out.dtype) + 1.0)).sum(1).mean() + 0.1 * (out**2).mean()


@pytest.mark.parametrize("loss", ["cross_entropy", "custom"])
def test_output_probes_unbiased_with_calibrated_stderr(loss, engine):
    loss_fn = F.cross_entropy if loss == "cross_entropy" else _custom_mean_loss
    model = ReluConvNet()
    x, y = conv_data()
    exact_g = float(dense_ggn(model, [(x, y)], loss_fn).trace())
    op = HessianOperator(model, data=(x, y), loss_fn=loss_fn, dtype=torch.float64)
    assert ggn_trace(op, 10).info["ggn_trace"] == pytest.approx(exact_g, rel=1e-10)
    runs = [ggn_trace(op, 4, seed=s, output_probes=3) for s in range(30)]
    values = np.array([r.info["ggn_trace"] for r in runs])
    assert abs(values.mean() - exact_g) <= 3 * values.std(ddof=1) / np.sqrt(len(values))
    assert 0.5 < np.median([r.stderr for r in runs]) / values.std(ddof=1) < 1.7
    assert runs[0].info["gradient_passes"] == (3 if loss == "cross_entropy" else 6)


def test_parameter_subset():
    model = ReluConvNet()
    x, y = conv_data()
    names = ["fc1.weight", "fc1.bias", "conv.weight"]
    H = dense_hessian(model.eval(), x, y, names=names)
    op = HessianOperator(model, params=["fc1", model.conv.weight], data=(x, y), dtype=torch.float64)
    res = ggn_trace(op, 5)
    _exact(res, float(H.trace()))
    assert set(res.blocks) == {"fc1", "conv"}


def test_unequal_batches_mse_exact_weights(engine):
    model = ReluConvNet()
    x, _ = conv_data(n=23)
    t = torch.randn(23, 3, generator=torch.Generator().manual_seed(5))
    batches = [(x[i : i + 10], t[i : i + 10]) for i in range(0, 23, 10)]  # 10, 10, 3
    H = dense_full(model.eval(), batches, mse)
    G = dense_ggn(model, batches, mse)
    op = HessianOperator(model, data=batches, loss_fn=mse, dtype=torch.float64)
    assert op.reuse_graph is False
    res = ggn_trace(op, 4)
    _exact(res, float(H.trace()))
    assert res.info["ggn_trace"] == pytest.approx(float(G.trace()), rel=1e-10)


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.a, self.b, self.head = nn.Linear(3, 4), nn.Linear(2, 4), nn.Linear(4, 3)

    def forward(self, a, b):
        return self.head(torch.tanh(self.a(a) + self.b(b)))


def test_dict_inputs_and_chunks(engine):
    model = DictNet()
    g = torch.Generator().manual_seed(7)
    a, b = torch.randn(20, 3, generator=g), torch.randn(20, 2, generator=g)
    y = torch.randint(0, 3, (20,), generator=g)
    data = [{"inputs": {"a": a, "b": b}, "targets": y}]
    H = dense_hessian(lambda_module(model), torch.cat([a, b], 1), y)
    obj = Objective(model, data)
    op = HessianOperator(obj, dtype=torch.float64)
    res = ggn_trace(op, 200, chunk_size=3)
    _exact(res, float(H.trace()))  # every block small enough to be traced exactly
    assert ggn_trace(op, 200, chunk_size=20).info["ggn_trace"] == pytest.approx(
        res.info["ggn_trace"], rel=1e-12
    )


def lambda_module(model):
    """``model`` as a module of one concatenated input (for the dense reference)."""

    class Cat(nn.Module):
        def __init__(self):
            super().__init__()
            self.m = model

        def forward(self, x):
            return self.m(x[:, :3], x[:, 3:])

    return Cat()


def test_requirements_are_checked():
    model = tanh_mlp()
    x, y = classification_data(n=12)

    def summed(out, t):
        return F.cross_entropy(out, t, reduction="sum")

    with pytest.raises(ValueError, match="mean of the per-sample"):
        ggn_trace(HessianOperator(model, data=(x, y), loss_fn=summed))
    obj = Objective(
        model, (x, y), lambda o, t: F.cross_entropy(o[0], t), forward=lambda m, i: (m(i),)
    )
    with pytest.raises(ValueError, match="Invalid model outputs"):
        ggn_trace(HessianOperator(obj))

    class Centred(nn.Module):  # mixes the samples of a batch even in eval mode
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)

        def forward(self, x):
            return self.lin(x - x.mean(0))

    with pytest.raises(ValueError, match="not independent"):
        ggn_trace(HessianOperator(Centred(), data=(x, y)))
    op = HessianOperator(model, data=(x, y))
    for kwargs, match in [
        ({"output_probes": 1}, "output_probes"),
        ({"blocks": "layer"}, "blocks"),
        ({"num_products": 1}, "num_products"),
        ({"chunk_size": 0}, "chunk_size"),
        ({"target_rel_stderr": 0.0}, "target_rel_stderr"),
    ]:
        with pytest.raises(ValueError, match=match):
            ggn_trace(op, **kwargs)


def test_trace_metric_with_ggn():
    from landscape.metrics import compute_metrics

    model = ReluConvNet().double()
    x, y = conv_data()
    H = dense_hessian(copy.deepcopy(model).eval(), x, y)
    res = compute_metrics(
        model,
        (x.double(), y),
        ["trace", "normalized_trace"],
        trace_method="ggn",
        num_products=8,
        progress=False,
    )
    assert res["trace"].value == pytest.approx(float(H.trace()), rel=1e-8)
    assert res["trace"].info["method"] == "ggn" and res["trace"].info["products"] == 4
    assert res["normalized_trace"].info["trace"] == pytest.approx(res["trace"].value)


def test_hessian_summary_with_ggn():
    from landscape.hessian.summary import format_summary, hessian_summary

    model = ReluConvNet()
    x, y = conv_data()
    H = dense_hessian(copy.deepcopy(model).eval(), x, y)
    out = hessian_summary(
        model,
        (x, y),
        top_k=0,
        trace=True,
        trace_method="ggn",
        trace_products=8,
        dtype=torch.float64,
        progress=False,
    )
    assert out["trace"]["method"] == "ggn" and out["products"] == 4
    assert out["trace"]["value"] == pytest.approx(float(H.trace()), rel=1e-8)
    assert "ggn" in format_summary(out)


class Mixed(nn.Module):
    """Conv1d (Gram form), dilated Conv2d and a linear map over positions (materialised),
    BatchNorm1d, in-place ReLU, and a LayerNorm (no closed form: vmap)."""

    def __init__(self, tied=False, shared=False):
        super().__init__()
        torch.manual_seed(8)
        self.c1 = nn.Conv1d(2, 3, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm1d(3)
        self.c2 = nn.Conv2d(1, 2, 3, padding=2, dilation=2)
        self.seq = nn.Linear(3, 3)
        self.ln = nn.LayerNorm(3)
        self.head = nn.Linear(44, 3)
        self.tied, self.shared = tied, shared
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        h = F.relu(self.bn(self.c1(x)), inplace=True).transpose(1, 2)  # (n, 4, 3)
        h = self.seq(h)
        if self.shared:  # one module called twice: no closed form
            h = self.seq(h)
        h = torch.tanh(self.ln(h)).flatten(1)
        z = self.c2(x.reshape(-1, 1, 4, 4)).flatten(1)
        out = self.head(torch.cat([h, z], 1))
        if self.tied:  # the head's weight used outside the module too
            out = out + 0.1 * F.linear(out, self.head.weight[:, :3])
        return out


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [({}, "hooks+vmap"), ({"shared": True}, "vmap"), ({"tied": True}, "vmap")],
)
def test_closed_forms_match_dense_gauss_newton(kwargs, expected):
    model = Mixed(**kwargs)
    g = torch.Generator().manual_seed(9)
    x, y = torch.randn(10, 2, 8, generator=g), torch.randint(0, 3, (10,), generator=g)
    G = dense_ggn(model, [(x, y)], F.cross_entropy)
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    res = ggn_trace(op, 8)
    assert res.info["per_sample"] == expected
    assert res.info["ggn_trace"] == pytest.approx(float(G.trace()), rel=1e-10)
    if not kwargs:  # a budget that traces every non-zero block exactly: per-module values
        H = dense_hessian(copy.deepcopy(model).eval(), x, y)
        res = ggn_trace(op, 200)
        _exact(res, float(H.trace()))
        bounds = np.cumsum([0, *op.numels])
        diag = torch.diagonal(H).numpy()
        for name, (value, _) in res.blocks.items():
            idx = [i for i, n in enumerate(op.param_names) if n.startswith(name + ".")]
            assert value == pytest.approx(diag[bounds[idx[0]] : bounds[idx[-1] + 1]].sum())
