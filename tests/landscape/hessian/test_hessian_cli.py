import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _hessian_problems import dense_hessian

from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.hessian.summary import format_summary, hessian_summary
from landscape.models import build_model


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    bundle = load_data("digits", n_per_class=6)
    spec = {
        "name": "mlp",
        "in_channels": 1,
        "num_classes": bundle.num_classes,
        "input_size": [8, 8],
        "hidden": [6],
    }
    torch.manual_seed(0)
    model = build_model(**spec)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, model_spec=spec, data_spec=bundle.spec, meta={"epoch": 0})
    return path


def test_cli_eigenvalues_trace_density_json(checkpoint, tmp_path, capsys):
    out = tmp_path / "h.json"
    vec = tmp_path / "v.pt"
    code = main(
        [
            "hessian",
            str(checkpoint),
            "--top-k",
            "2",
            "--tol",
            "1e-8",
            "--trace",
            "--per-layer",
            "--trace-products",
            "30",
            "--density",
            "--density-runs",
            "2",
            "--density-steps",
            "12",
            "--out",
            str(out),
            "--save-eigenvectors",
            str(vec),
            "--no-progress",
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "λ1 =" in text and "trace =" in text and "density:" in text
    summary = json.loads(out.read_text())
    ckpt = load_checkpoint(checkpoint)
    x, y = ckpt.load_data().train.tensors
    exact = torch.linalg.eigvalsh(dense_hessian(ckpt.model, x, y, F.cross_entropy))
    np.testing.assert_allclose(
        summary["eigen"]["eigenvalues"], exact.flip(0)[:2].numpy(), rtol=1e-5
    )
    tr = summary["trace"]
    assert abs(tr["value"] - float(exact.sum())) <= 4 * tr["stderr"] + 1e-6
    assert set(tr["layers"]) == {n for n, _ in ckpt.model.named_parameters()}
    assert abs(np.trapezoid(summary["density"]["density"], summary["density"]["grid"]) - 1) < 1e-2
    assert summary["sha256"] == ckpt.sha256 and summary["n_samples"] == x.shape[0]
    saved = torch.load(vec, weights_only=True)
    assert len(saved["eigenvectors"]) == 2
    assert [t.shape for t in saved["eigenvectors"][0]] == [p.shape for p in ckpt.model.parameters()]


def test_cli_errors(checkpoint, tmp_path, capsys):
    assert main(["hessian", str(tmp_path / "missing.pt")]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    assert main(["hessian", str(checkpoint), "--out", str(tmp_path / "h.txt")]) == 2
    assert "expected a .json file" in capsys.readouterr().err
    # a missing folder is created, as every other command does
    out = tmp_path / "new" / "h.json"
    assert (
        main(["hessian", str(checkpoint), "--top-k", "1", "--no-progress", "--out", str(out)]) == 0
    )
    assert json.loads(out.read_text())["complete"] is True


def _small_tanh_problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    return model, torch.randn(30, 4), torch.randint(0, 3, (30,))


def test_summary_in_python_fd_trace_and_smallest():
    model, x, y = _small_tanh_problem()
    s = hessian_summary(
        model,
        (x, y),
        top_k=2,
        which="smallest",
        tol=1e-8,
        trace=True,
        trace_method="fd",
        trace_products=200,
        dtype=torch.float64,
    )
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    np.testing.assert_allclose(s["eigen"]["eigenvalues"], exact[:2].numpy(), rtol=1e-6)
    assert abs(s["trace"]["value"] - float(exact.sum())) <= 4 * s["trace"]["stderr"]
    json.dumps(s)
    assert "λ1" in format_summary(s)
    with pytest.raises(ValueError, match="trace_method"):
        hessian_summary(model, (x, y), trace_method="magic")


@pytest.mark.parametrize(("batch_size", "used"), [(30, {"exact"}), (8, {"exact", "forward"})])
def test_summary_reports_the_method_auto_chose(batch_size, used):
    model, x, y = _small_tanh_problem()
    s = hessian_summary(
        model,
        (x, y),
        top_k=1,
        tol=1e-8,
        method="auto",
        batch_size=batch_size,
        dtype=torch.float64,
    )
    assert s["settings"]["method"] == "auto" and s["settings"]["method_used"] in used
    exact = torch.linalg.eigvalsh(dense_hessian(model, x, y))
    assert s["eigen"]["eigenvalues"][0] == pytest.approx(float(exact[-1]), rel=1e-6)


def test_summary_basis_on_the_cpu_in_float64_equals_the_default():
    # Issue 15: the Krylov bases of every Lanczos run of the summary (eigenpairs, per-layer
    # eigenvalues, SLQ) kept elsewhere and wider give the same numbers on a float32 model.
    model, x, y = _small_tanh_problem()
    kw = {
        "top_k": 2,
        "tol": 1e-4,
        "per_layer": True,
        "density": True,
        "density_runs": 2,
        "density_steps": 12,
        "progress": False,
    }
    ref = hessian_summary(model, (x, y), **kw)
    wide = hessian_summary(model, (x, y), basis_device="cpu", basis_dtype=torch.float64, **kw)
    np.testing.assert_allclose(
        wide["eigen"]["eigenvalues"], ref["eigen"]["eigenvalues"], rtol=1e-5, atol=1e-7
    )
    for name, layer in ref["eigen"]["layers"].items():
        np.testing.assert_allclose(
            wide["eigen"]["layers"][name]["eigenvalues"], layer["eigenvalues"], rtol=1e-5
        )
    for key in ("nodes", "weights"):
        np.testing.assert_allclose(
            wide["density"][key], ref["density"][key], rtol=1e-4, atol=1e-6, err_msg=key
        )
    assert wide["products"] == ref["products"]
    assert "basis_device" not in wide["settings"]  # placement, not a setting (as device)
    with pytest.raises(ValueError, match="Invalid basis_dtype"):
        hessian_summary(model, (x, y), basis_dtype=torch.int64)
    with pytest.raises(ValueError, match="Invalid basis_device"):
        hessian_summary(model, (x, y), basis_device="nowhere")


def test_cli_basis_flags(checkpoint, tmp_path, capsys):
    out = tmp_path / "h.json"
    base = ["hessian", str(checkpoint), "--top-k", "2", "--tol", "1e-6", "--no-progress"]
    flags = ["--basis-device", "cpu", "--basis-dtype", "float64"]
    assert main([*base, "--density", "--density-steps", "8", *flags, "--out", str(out)]) == 0
    assert "λ1 =" in capsys.readouterr().out
    summary = json.loads(out.read_text())
    assert summary["complete"] and summary["density"] is not None
    ckpt = load_checkpoint(checkpoint)
    x, y = ckpt.load_data().train.tensors
    exact = torch.linalg.eigvalsh(dense_hessian(ckpt.model, x, y, F.cross_entropy))
    np.testing.assert_allclose(
        summary["eigen"]["eigenvalues"], exact.flip(0)[:2].numpy(), rtol=1e-5
    )
    with pytest.raises(SystemExit) as exc:
        main([*base, "--basis-dtype", "float16"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err
    assert main([*base, "--basis-device", "nowhere"]) == 2
    assert "Invalid basis_device" in capsys.readouterr().err
