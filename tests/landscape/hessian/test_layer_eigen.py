"""Per-layer eigenvalues: each diagonal block against the dense float64 Hessian's block."""

import json

import numpy as np
import pytest
import torch
from _hessian_problems import classification_data, dense_hessian
from test_hessian_cli import checkpoint  # noqa: F401  (the tiny checkpoint fixture)
from torch import nn

from landscape.checkpoint import load_checkpoint
from landscape.cli import main
from landscape.hessian import HessianOperator, LayerEigenResult, layer_eigenvalues
from landscape.hessian.summary import format_summary, hessian_summary
from landscape.objective import Objective


def mlp2(seed=0):
    """An MLP with two hidden layers (tanh: every diagonal block is indefinite)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 4), nn.Tanh(), nn.Linear(4, 3)
    ).double()


def tiny_cnn(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.Tanh(), nn.Flatten(), nn.Linear(2 * 3 * 3, 3)
    ).double()


def cnn_data(n=24, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 5, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def dense_blocks(model, x, y, grouping):
    """``{block name: (dense float64 diagonal block, [parameter names])}``, built by hand."""
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    h = dense_hessian(model, x, y)
    owners: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        owners.setdefault(n if grouping == "tensor" else n.rsplit(".", 1)[0], []).append(i)
    starts = np.cumsum([0, *sizes])
    out = {}
    for block, idx in owners.items():
        coords = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in idx])
        out[block] = (h[coords][:, coords], [names[i] for i in idx])
    return out


def check_block(res, dense, which, k):
    exact = torch.linalg.eigvalsh(dense)
    want = exact.flip(0)[:k] if which == "largest" else exact[:k]
    np.testing.assert_allclose(res.eigenvalues.numpy(), want.numpy(), rtol=1e-6, atol=1e-12)
    for lam, vec in zip(res.eigenvalues, res.eigenvectors, strict=True):
        v = torch.cat([t.reshape(-1) for t in vec]).double()
        assert abs(float(v.norm()) - 1) < 1e-8
        resid = float((dense @ v - lam * v).norm())
        assert resid <= 1e-6 * float(torch.linalg.matrix_norm(dense, 2))


@pytest.mark.parametrize("which", ["largest", "smallest"])
@pytest.mark.parametrize("make", [mlp2, tiny_cnn], ids=["mlp", "cnn"])
def test_blocks_match_dense(make, which):
    model = make()
    x, y = classification_data() if make is mlp2 else cnn_data()
    op = HessianOperator(model, data=(x.double(), y))
    # k=2 for "smallest" too: the output layer's block has a multiple zero eigenvalue (the
    # softmax's shift invariance), which needs the restart after the Krylov space closes
    k = 2
    res = layer_eigenvalues(op, k=k, which=which, tol=1e-10, max_products=200, progress=False)
    dense = dense_blocks(model, x, y, "module")
    assert list(res) == list(dense)  # one block per module, in parameter order
    for name, (block, pnames) in dense.items():
        assert res.param_names[name] == pnames and res.dims[name] == block.shape[0]
        assert [t.shape for t in res[name].eigenvectors[0]] == [
            dict(model.named_parameters())[n].shape for n in pnames
        ]
        check_block(res[name], block, which, k)
        assert res[name].converged
    assert res.products == sum(r.products for r in res.values()) == op.products


@pytest.mark.parametrize("method", ["exact", "forward", "auto"])
def test_several_batches_and_product_methods(method):
    model = mlp2()
    x, y = classification_data()
    op = HessianOperator(model, data=(x.double(), y), batch_size=16, method=method)
    assert not op.reuse_graph  # 3 batches: every product recomputes them
    res = layer_eigenvalues(op, tol=1e-10, max_products=200, progress=False)
    for name, (block, _) in dense_blocks(model, x, y, "module").items():
        check_block(res[name], block, "largest", 1)


def test_tensor_blocks_and_k_clipped_to_the_block():
    model = mlp2()
    x, y = classification_data()
    obj = Objective(model, (x.double(), y))
    res = layer_eigenvalues(obj, k=5, tol=1e-10, max_products=200, blocks="tensor")
    dense = dense_blocks(model, x, y, "tensor")
    assert list(res) == [n for n, _ in model.named_parameters()] == list(dense)
    assert res.param_names["2.bias"] == ["2.bias"]
    # the last layer's bias has 3 entries: k=5 is clipped to 3, all its eigenvalues
    assert len(res["4.bias"].eigenvalues) == 3
    for name, (block, _) in dense.items():
        check_block(res[name], block, "largest", min(5, block.shape[0]))


def test_float32_operator_on_a_float64_twin_and_json():
    model = mlp2().float()
    x, y = classification_data()
    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    res = layer_eigenvalues(op, tol=1e-10, max_products=200, progress=False)
    dense = dense_blocks(model, x, y, "module")
    for name, (block, _) in dense.items():
        check_block(res[name], block, "largest", 1)
        assert res[name].eigenvectors[0][0].dtype == torch.float64
    assert next(model.parameters()).dtype == torch.float32
    d = json.loads(json.dumps(res.to_dict()))
    assert set(d["layers"]) == {"0", "2", "4"} and d["grouping"] == "module"
    assert d["layers"]["2"]["param_names"] == ["2.weight", "2.bias"]
    assert d["layers"]["2"]["dim"] == 28 and d["products"] == res.products
    assert isinstance(res, LayerEigenResult) and len(res) == 3


class WithUnused(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))
        self.unused = nn.Linear(2, 2)
        self.drop = nn.Dropout(0.5)

    def forward(self, x):
        return self.body(self.drop(x))


def test_unused_parameter_mode_and_grads_left_as_found():
    model = WithUnused().double().train()
    x, y = classification_data()
    sentinel = [torch.full_like(p, 7.0) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel, strict=True):
        p.grad = s.clone()
    before = [p.detach().clone() for p in model.parameters()]
    op = HessianOperator(model, data=(x.double(), y))
    res = layer_eigenvalues(op, tol=1e-10, max_products=200, progress=False)
    assert list(res) == ["body.0", "body.2", "unused"]
    assert float(res["unused"].eigenvalues[0]) == 0.0 and res["unused"].converged
    assert res["unused"].products <= 2
    model.eval()  # the dense reference in eval mode, as the operator measures
    dense = dense_blocks(model, x, y, "module")
    check_block(res["body.2"], dense["body.2"][0], "largest", 1)
    model.train()
    assert model.training and model.drop.training
    for p, s, b in zip(model.parameters(), sentinel, before, strict=True):
        assert torch.equal(p.grad, s) and torch.equal(p.detach(), b)


def test_errors():
    model = mlp2()
    x, y = classification_data()
    op = HessianOperator(model, data=(x.double(), y))
    with pytest.raises(ValueError, match="Invalid blocks"):
        layer_eigenvalues(op, blocks="layer")
    with pytest.raises(ValueError, match="Invalid k"):
        layer_eigenvalues(op, k=0)
    with pytest.raises(ValueError, match="Invalid max_products"):
        layer_eigenvalues(op, k=3, max_products=2)
    with pytest.raises(ValueError, match="Invalid which"):
        layer_eigenvalues(op, which="middle")
    with pytest.raises(ValueError, match="Invalid criterion"):
        layer_eigenvalues(op, criterion="loss")
    with pytest.raises(ValueError, match="Invalid op_or_objective"):
        layer_eigenvalues(model)
    assert op.products == 0


def test_summary_per_layer_keys_json_and_format():
    model = mlp2()
    x, y = classification_data()
    s = hessian_summary(
        model, (x.double(), y), top_k=1, tol=1e-10, max_products=200, per_layer=True
    )
    layers = s["eigen"]["layers"]
    assert list(layers) == ["0", "2", "4"]
    for name, d in layers.items():
        # the entries of LayerEigenResult.to_dict(): one serialisation for both
        assert {"eigenvalues", "residuals", "products", "converged", "dim"} <= set(d)
        assert d["param_names"] == [f"{name}.weight", f"{name}.bias"]
        assert len(d["eigenvalues"]) == 1 and d["converged"]
    dense = dense_blocks(model, x, y, "module")
    for name, (block, _) in dense.items():
        top = float(torch.linalg.eigvalsh(block)[-1])
        assert layers[name]["eigenvalues"][0] == pytest.approx(top, rel=1e-6)
    lay = sum(d["products"] for d in layers.values())
    assert s["eigen"]["layer_products"] == lay
    assert s["products"] == s["eigen"]["products"] + lay  # the layer runs are counted
    assert json.loads(json.dumps(s)) == s
    lines = format_summary(s).splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("per-layer λ1"))
    assert lines[at - 1].lstrip().startswith("λ1 =")  # under the eigenvalues
    assert f"{lay} block products" in lines[at]
    for i, name in enumerate(["0", "2", "4"]):
        assert lines[at + 1 + i].split()[:2] == [name, f"{layers[name]['eigenvalues'][0]:.6g}"]
    # the same which, tol and criterion per layer
    s = hessian_summary(
        model, (x.double(), y), top_k=1, which="smallest", tol=1e-10, per_layer=True
    )
    for name, (block, _) in dense.items():
        low = float(torch.linalg.eigvalsh(block)[0])
        assert s["eigen"]["layers"][name]["eigenvalues"][0] == pytest.approx(low, abs=1e-12)
    # no per-layer eigenvalues without per_layer, or with top_k=0
    s = hessian_summary(model, (x.double(), y), top_k=1, max_products=200)
    assert "layers" not in s["eigen"] and "per-layer" not in format_summary(s)
    s = hessian_summary(model, (x.double(), y), top_k=0, per_layer=True)
    assert s["eigen"] is None and s["products"] == 0


def test_cli_per_layer(checkpoint, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "h.json"
    args = ["hessian", str(checkpoint), "--per-layer", "--top-k", "1", "--out", str(out)]
    code = main([*args, "--float64", "--tol", "1e-8", "--max-products", "400", "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    assert "per-layer λ1" in text and "  net.1 " in text and "  net.3 " in text
    layers = json.loads(out.read_text())["eigen"]["layers"]
    assert list(layers) == ["net.1", "net.3"]
    ckpt = load_checkpoint(checkpoint)
    x, y = ckpt.load_data().train.tensors
    for name, (block, _) in dense_blocks(ckpt.model, x, y, "module").items():
        top = float(torch.linalg.eigvalsh(block)[-1])
        assert layers[name]["eigenvalues"][0] == pytest.approx(top, rel=1e-6)
        assert layers[name]["dim"] == block.shape[0]
