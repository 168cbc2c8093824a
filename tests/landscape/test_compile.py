"""Compiled evaluation (``compile=``): values equal eager, weights seen, one compile."""

import pytest
import torch
from torch import nn

from landscape._compile import CompileSpec, parse_compile
from landscape.objective import Objective
from landscape.surface import compute_surface


def _cnn(channels=1):
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(channels, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
    ).eval()


def _data(n=10, channels=1):
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, channels, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)


class _Counting:
    """A ``torch.compile`` backend that runs the traced graph eagerly and counts compiles."""

    def __init__(self):
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return gm.forward


def test_parse_compile():
    assert parse_compile(False).when == "off" and not parse_compile(None).enabled
    assert parse_compile(True).when == "on"
    assert parse_compile("auto").when == "auto"
    assert parse_compile("on") == CompileSpec("on")
    with pytest.raises(ValueError, match="Invalid compile"):
        parse_compile("fast")
    with pytest.raises(ValueError, match="Invalid compile"):
        parse_compile(CompileSpec("always"))


def test_compiled_evaluate_equals_eager_sees_weights_and_compiles_once():
    model, (x, y) = _cnn(), _data()
    backend = _Counting()
    eager = Objective(model, (x, y), batch_size=4)  # batches 4, 4, 2
    comp = Objective(model, (x, y), batch_size=4, compile=CompileSpec("on", backend=backend))
    ref = eager.evaluate()
    got = comp.evaluate()
    assert got == pytest.approx(ref, rel=1e-6, abs=1e-6)
    report = comp.compile_report
    assert report["compiled"] and report["compile_seconds"] >= 0
    with torch.no_grad():  # weights set in place are seen by the compiled module
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    moved = comp.evaluate()
    assert moved["loss"] != pytest.approx(got["loss"])
    assert moved == pytest.approx(eager.evaluate(), rel=1e-6, abs=1e-6)
    # one graph: the last, smaller batch runs eager; moving the weights recompiles nothing
    assert backend.graphs == 1
    assert model.training is False and all(p.grad is None for p in model.parameters())


def test_compile_auto_decides_from_the_passes():
    model, data = _cnn(), _data()
    never = Objective(
        model, data, compile=CompileSpec("auto", backend="eager", compile_seconds=1e9)
    )
    report = never.prepare_compile(passes=441)
    assert not report["compiled"] and report["reason"].startswith("not compiled")
    assert never.evaluate() == pytest.approx(Objective(model, data).evaluate())
    # a compile that costs nothing pays: compiled, unless the compiled batch is slower
    free = Objective(model, data, compile=CompileSpec("auto", backend="eager", compile_seconds=0))
    report = free.prepare_compile(passes=441)
    assert report["compiled"] or "eager kept" in report["reason"]
    assert "compiled_over_eager" in report


def test_compile_auto_unplanned_compiles_once_paid():
    model, data = _cnn(), _data()
    obj = Objective(model, data, compile=CompileSpec("auto", backend="eager", compile_seconds=0))
    obj.evaluate()  # eager, then the forwards run have paid for a free compile
    assert obj._compiled.decided
    assert "eager_batch_seconds" in obj.compile_report


def test_surface_compile_equals_eager_and_is_stored(tmp_path):
    from landscape.store import read_surface

    model, data = _cnn(), _data()
    kw = {"x": "-1:1:3", "y": "-1:1:2", "batch_size": 4, "progress": False}
    ref = compute_surface(model, data, **kw)
    backend = _Counting()
    got = compute_surface(
        model, data, out=tmp_path / "s.h5", compile=CompileSpec("on", backend=backend), **kw
    )
    for name in ("train_loss", "train_acc"):
        assert got.values[name] == pytest.approx(ref.values[name], rel=1e-6, abs=1e-6)
    assert backend.graphs == 1
    stored = read_surface(tmp_path / "s.h5").attrs["compile"]
    assert stored["train"]["compiled"] is True and stored["train"]["compile"] == "on"
    with pytest.raises(ValueError, match="Invalid compile"):
        compute_surface(model, data, evaluation="vmap", compile=True, **kw)


@pytest.mark.slow
def test_inductor_values_equal_eager():
    """The real thing (inductor, C++ code generation, channels-last inputs): 20-60 s."""
    model, data = _cnn(3), _data(12, 3)
    eager = Objective(model, data, batch_size=4)
    comp = Objective(model, data, batch_size=4, compile=True)
    assert comp.evaluate() == pytest.approx(eager.evaluate(), rel=1e-5, abs=1e-6)
    with torch.no_grad():
        model[0].weight.mul_(1.5)
    assert comp.evaluate() == pytest.approx(eager.evaluate(), rel=1e-5, abs=1e-6)
    assert comp.compile_report["compiled"] and comp.compile_report["channels_last"]


def test_cli_compile_auto_declines_a_small_grid_and_says_so(tmp_path):
    from landscape.checkpoint import save_checkpoint
    from landscape.cli import main
    from landscape.models import build_model
    from landscape.store import read_surface

    spec = {"name": "mlp", "in_channels": 1, "num_classes": 10, "input_size": [8, 8]}
    model = build_model("mlp", in_channels=1, num_classes=10, input_size=[8, 8], hidden=[8])
    ckpt = tmp_path / "m.pt"
    save_checkpoint(
        ckpt, model, model_spec={**spec, "hidden": [8]}, data_spec={"name": "digits", "seed": 0}
    )
    out = tmp_path / "s.h5"
    argv = ["surface", str(ckpt), "--x", "-1:1:3", "--y", "-1:1:2", "--out", str(out)]
    assert main([*argv, "--max-samples", "64", "--compile", "auto", "--no-progress"]) == 0
    decision = read_surface(out).attrs["compile"]["train"]
    assert decision["compile"] == "auto" and decision["compiled"] is False
    assert decision["reason"].startswith("not compiled: 6 passes")


class _Viewing(nn.Module):
    """``x.view(n, -1)`` of a 4-D input: fails on a channels-last tensor."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(72, 3)

    def forward(self, x):
        return self.fc(x.view(x.shape[0], -1))


def test_channels_last_inputs_and_the_fallback_for_models_that_reject_them():
    data = _data()
    conv = Objective(_cnn(), data, compile=CompileSpec("on", backend="eager"))
    conv.evaluate()
    assert conv.compile_report["channels_last"] is True
    torch.manual_seed(0)
    viewing = _Viewing()
    data = (torch.randn(10, 2, 6, 6), data[1])  # two channels: channels-last is not a view
    obj = Objective(viewing, data, compile=CompileSpec("on", backend="eager"))
    assert obj.evaluate() == pytest.approx(Objective(viewing, data).evaluate(), rel=1e-6)
    assert obj.compile_report["channels_last"] is False and obj.compile_report["compiled"]


def test_compute_metrics_passes_compile_through():
    from landscape.metrics import compute_metrics

    model, data = _cnn(), _data()
    spec = CompileSpec("on", backend="eager")
    ref = compute_metrics(model, data, "sam_sharpness", progress=False)
    got = compute_metrics(model, data, "sam_sharpness", progress=False, compile=spec)
    assert got["sam_sharpness"].value == pytest.approx(ref["sam_sharpness"].value, rel=1e-5)
