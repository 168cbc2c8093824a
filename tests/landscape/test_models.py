"""Built-in models: shapes for images and 1-D data, the paper's sizes, training works."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from landscape.models import MODEL_NAMES, build_model, input_kwargs, model_spec


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("shape", [(3, 12, 10), (1, 8, 8), (40,), (2, 17)])
def test_output_shape_any_input(name, shape):
    model = build_model(name, num_classes=7, **input_kwargs(shape))
    out = model(torch.randn(3, *shape))
    assert out.shape == (3, 7)


def test_one_dimensional_inputs_use_conv1d():
    model = build_model("resnet20", num_classes=10, **input_kwargs((40,)))
    assert any(isinstance(m, torch.nn.Conv1d) for m in model.modules())
    assert not any(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    # (N, L) and (N, 1, L) are the same input
    model.eval()
    x = torch.randn(2, 40)
    torch.testing.assert_close(model(x), model(x[:, None]))


def _count(model):
    return sum(p.numel() for p in model.parameters())


def test_paper_sizes():
    kw = {"in_channels": 3, "num_classes": 10, "input_size": 32}
    # He et al. 2016, Table 6: 0.27M / 0.46M / 0.85M parameters (option A: no shortcut
    # parameters); WRN-16-4: 2.7M (Zagoruyko & Komodakis 2016, Table 1).
    assert round(_count(build_model("resnet20", **kw)) / 1e6, 2) == 0.27
    assert round(_count(build_model("resnet32", **kw)) / 1e6, 2) == 0.46
    assert round(_count(build_model("resnet56", **kw)) / 1e6, 2) == 0.85
    assert round(_count(build_model("wrn16_4", **kw)) / 1e6, 1) == 2.7
    r20 = build_model("resnet20", **kw)
    convs = [m for m in r20.modules() if isinstance(m, torch.nn.Conv2d)]
    assert len(convs) == 19  # 6n + 1 convolutions + the fc layer = 20 weighted layers
    bns = [m for m in r20.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 19


def test_option_a_shortcut_pads_and_subsamples():
    model = build_model("resnet20", in_channels=1, num_classes=2, input_size=8, width=4)
    block = model.layers[3]  # first block of stage 2: 4 -> 8 channels, stride 2
    x = torch.randn(1, 4, 8, 8)
    s = block._shortcut(x)
    assert s.shape == (1, 8, 4, 4)
    torch.testing.assert_close(s[:, 2:6], x[:, :, ::2, ::2])
    assert float(s[:, :2].abs().sum()) == 0 and float(s[:, 6:].abs().sum()) == 0


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_trains_and_the_loss_falls(name):
    torch.manual_seed(0)
    x = torch.randn(16, 1, 8, 8)
    y = torch.arange(16) % 4
    x[torch.arange(16), 0, y, y] += 3.0  # a learnable pixel per class
    model = build_model(name, num_classes=4, **input_kwargs((1, 8, 8)))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(6):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    with torch.no_grad():
        final = float(F.cross_entropy(model(x), y))
    assert losses[-1] < losses[0] and final < losses[0]


def test_unknown_name_lists_choices():
    with pytest.raises(ValueError, match="mlp, cnn, resnet20, resnet32, resnet56, wrn16_4"):
        build_model("vgg", in_channels=1, num_classes=2, input_size=8)
    with pytest.raises(ValueError, match="Invalid option for model 'cnn'"):
        build_model("cnn", in_channels=1, num_classes=2, input_size=8, depth=3)
    with pytest.raises(ValueError, match="input_size"):
        build_model("cnn", in_channels=1, num_classes=2, input_size=(2, 3, 4))


def test_model_spec_rebuilds_same_architecture():
    spec = model_spec("cnn", (1, 8, 8), 10, width=4)
    assert spec == {
        "name": "cnn",
        "in_channels": 1,
        "input_size": [8, 8],
        "num_classes": 10,
        "width": 4,
    }
    kw = dict(spec)
    m = build_model(kw.pop("name"), **kw)
    assert m.features[0].out_channels == 4
