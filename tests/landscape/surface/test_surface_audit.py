"""Audit probes of surfaces, directions and the HDF5 store against hand-computed values."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from landscape.store import Surface, read_directions
from landscape.surface import compute_surface


def _mlp(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    x = torch.randn(9, 3, generator=g).to(dtype)
    y = torch.randint(0, 2, (9,), generator=g)
    return model, x, y


def test_bfloat16_model_surface_in_memory_and_file(tmp_path):
    model, x, y = _mlp(torch.bfloat16)
    out = tmp_path / "bf16.h5"
    surf = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:2", out=out, progress=False)
    assert surf.complete and np.isfinite(surf.values["train_loss"]).all()
    dx, _dy, names = read_directions(out)
    assert dx[0].dtype == np.float32 and len(names) == 4
    # the stored directions are exactly the bf16 ones (float32 holds every bf16 value)
    back = torch.from_numpy(dx[0]).to(torch.bfloat16).float()
    np.testing.assert_array_equal(back.numpy(), dx[0])
    again = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:2", out=out, progress=False)
    np.testing.assert_array_equal(again.values["train_loss"], surf.values["train_loss"])


def test_contour_of_a_one_row_grid_is_a_clear_error():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from landscape.plotting import plot_contour, plot_heatmap

    x = np.linspace(-1, 1, 3)
    surf = Surface(x=x, y=np.zeros(1), values={"train_loss": x[None] ** 2}, done=np.ones((1, 3)))
    with pytest.raises(ValueError, match="at least 2 grid points"):
        plot_contour(surf)
    plot_heatmap(surf)  # a heatmap draws it


def test_multi_surface_plots_take_one_surface_or_one_file(tmp_path):
    pytest.importorskip("plotly")
    from landscape.plotting import interactive_contours, interactive_surfaces

    model, x, y = _mlp()
    out = tmp_path / "one.h5"
    surf = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:3", out=out, progress=False)
    for one in (surf, out, str(out)):
        assert len(interactive_contours(one).data) >= 1
        assert len(interactive_surfaces(one).data) >= 1


def test_resume_refuses_other_data_of_the_same_size(tmp_path):
    model, x, y = _mlp()
    out = tmp_path / "s.h5"
    kw = {"x": "-1:1:3", "y": "-1:1:2", "out": out, "progress": False}
    first = compute_surface(model, (x, y), **kw)
    with pytest.raises(ValueError, match=r"different computation.*data_sha256"):
        compute_surface(model, (x + 1.0, y), **kw)
    with pytest.raises(ValueError, match="data_sha256"):
        compute_surface(model, (x, 1 - y), **kw)
    # the same data in other batches is the same computation
    again = compute_surface(model, (x, y), batch_size=2, **kw)
    np.testing.assert_array_equal(again.values["train_loss"], first.values["train_loss"])


def test_unwritable_out_is_refused_before_any_point(tmp_path):
    model, x, y = _mlp()
    calls = []

    def loss_fn(out, target):
        calls.append(1)
        return nn.functional.cross_entropy(out, target)

    (tmp_path / "plain").write_text("x")
    for out in (tmp_path, tmp_path / "plain" / "s.h5"):
        for overwrite in (False, True):
            with pytest.raises(ValueError, match="Invalid out"):
                compute_surface(
                    model, (x, y), x="-1:1:3", loss_fn=loss_fn, out=out, overwrite=overwrite
                )
    assert not calls and not list(tmp_path.glob("*.partial"))


class _Rotary(nn.Module):
    """A linear layer after a non-persistent float buffer (like a rotary ``inv_freq``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.register_buffer("inv_freq", torch.tensor([1.0, 0.5, 0.25]), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x * self.inv_freq)


def test_checkpoint_directions_skip_non_persistent_buffers(tmp_path):
    from landscape.directions import interpolation_directions, plane_directions

    torch.manual_seed(0)
    a, b, c = _Rotary(), _Rotary(), _Rotary()
    torch.save(b.state_dict(), tmp_path / "b.pt")
    line = interpolation_directions(a, tmp_path / "b.pt")
    assert line.names == ["lin.weight", "lin.bias"]
    plane = plane_directions(a, b.state_dict(), c)
    np.testing.assert_allclose(plane.trajectory, [[0, 0], [1, 0], [0, 1]], atol=1e-12)
    x = torch.randn(5, 3)
    y = torch.randint(0, 3, (5,))
    surf = compute_surface(a, (x, y), x=[1.0], directions=line, progress=False)
    with torch.no_grad():
        want = nn.functional.cross_entropy(b(x), y)
    assert surf.values["train_loss"][0] == pytest.approx(float(want), rel=1e-6)


def test_plane_through_collinear_checkpoints_is_a_clear_error():
    from landscape.directions import plane_directions

    torch.manual_seed(0)
    a = nn.Linear(3, 2)
    b = {k: v + 1.0 for k, v in a.state_dict().items()}
    c = {k: v + 2.0 for k, v in a.state_dict().items()}
    with pytest.raises(ValueError, match="do not span a plane"):
        plane_directions(a, b, c)
    with pytest.raises(ValueError, match="do not span a plane"):
        plane_directions(a, b, b, orthogonalize=True)


def test_plot_file_of_a_one_row_grid_draws_a_heatmap(tmp_path):
    pytest.importorskip("matplotlib")
    from landscape.plotting import plot_file

    model, x, y = _mlp()
    out = tmp_path / "row.h5"
    compute_surface(model, (x, y), x="-1:1:3", y=[0.0], out=out, progress=False)
    assert plot_file(out, tmp_path / "row.png").stat().st_size > 0


def test_surface_of_namedtuple_batches():
    from collections import namedtuple

    Batch = namedtuple("Batch", "x y")
    model, x, y = _mlp()
    batches = [Batch(x[:4], y[:4]), Batch(x[4:], y[4:])]
    got = compute_surface(model, batches, x=[0.0], progress=False)
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(model(x), y))
    assert got.values["train_loss"][0] == pytest.approx(want, rel=1e-6)


def test_plots_draw_an_unsorted_grid_in_order():
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from landscape.plotting import plot_heatmap, plot_line

    x, y = np.array([1.0, -1.0, 0.0, 0.5]), np.array([0.0, 1.0, -1.0])
    z = x[None, :] ** 2 + 10 * y[:, None]
    surf = Surface(x=x, y=y, values={"train_loss": z}, done=np.ones(z.shape, bool))
    mesh = plot_heatmap(surf).axes[0].collections[0]
    # cells in increasing x then y: the first row is y = -1, its values x² − 10
    np.testing.assert_allclose(np.asarray(mesh.get_array()).reshape(3, 4)[0], np.sort(x) ** 2 - 10)
    line = Surface(x=x, y=None, values={"train_loss": x**2}, done=np.ones(4, bool))
    drawn = plot_line(line).axes[0].lines[0]
    np.testing.assert_array_equal(drawn.get_xdata(), np.sort(x))
    np.testing.assert_array_equal(drawn.get_ydata(), np.sort(x) ** 2)


def test_pca_plane_origin_carries_the_last_batchnorm_statistics():
    from landscape.directions import pca_directions

    torch.manual_seed(0)

    def net() -> nn.Module:
        return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 3))

    x, y = torch.randn(16, 3), torch.randint(0, 3, (16,))
    model, trajectory = net(), []
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(4):
        for _ in range(3):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
        trajectory.append(copy.deepcopy(model.state_dict()))
    fresh = net()  # the architecture only (the docstring's contract)
    plane = pca_directions(fresh, trajectory)
    surf = compute_surface(fresh, (x, y), x=[0.0], y=[0.0], directions=plane, progress=False)
    final = net()
    final.load_state_dict(trajectory[-1])
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(final.eval()(x), y))
    assert surf.values["train_loss"][0, 0] == pytest.approx(want, rel=1e-6)
    for ev in ("loop", "vmap"):  # the statistics are held on the whole plane
        more = compute_surface(
            fresh, (x, y), x=[0.0, 0.5], y=[0.0], directions=plane, evaluation=ev
        )
        assert more.values["train_loss"][0, 0] == pytest.approx(want, rel=1e-6)
    # the directions stay aligned with the parameters; the model is left as it was
    assert len(plane.x) == len(list(fresh.parameters())) and not plane.states
    assert float(fresh[1].running_var.sum()) == 4.0
    # parameters-only states still work (the model's own statistics then)
    params_only = [{k: v for k, v in s.items() if "running" not in k} for s in trajectory]
    assert pca_directions(fresh, params_only).fixed is None


def test_params_as_a_generator_of_parameters():
    from landscape.directions import random_directions

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    by_name = random_directions(model, params="2", seed=1)
    by_gen = random_directions(model, params=model[2].parameters(), seed=1)
    for a, b in zip(by_name.x + by_name.y, by_gen.x + by_gen.y, strict=True):
        assert torch.equal(a, b)
    assert float(by_gen.y[0].abs().sum()) == 0 and float(by_gen.y[2].abs().sum()) > 0
    x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
    surf = compute_surface(
        model, (x, y), x="-1:1:2", y="-1:1:2", params=model[2].parameters(), seed=1
    )
    assert surf.complete and np.isfinite(surf.values["train_loss"]).all()


def test_plots_of_nothing_or_mismatched_labels_are_clear_errors():
    pytest.importorskip("plotly")
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from landscape.plotting import interactive_line, interactive_spectrum, plot_spectrum

    for call in (lambda: plot_spectrum([]), lambda: interactive_spectrum([])):
        with pytest.raises(ValueError, match="at least one density"):
            call()
    with pytest.raises(ValueError, match="at least one surface"):
        interactive_line([])
    x = np.linspace(-1, 1, 3)
    line = Surface(x=x, y=None, values={"train_loss": x**2}, done=np.ones(3, bool))
    with pytest.raises(ValueError, match="labels has 2 entries for 1 surfaces"):
        interactive_line([line], labels=["a", "b"])


def test_filter_normalisation_of_a_zero_filter_in_float16():
    from landscape.directions import custom_directions, normalize_direction

    d = [torch.tensor([[1.0, 2.0], [0.0, 0.0]], dtype=torch.float16)]
    normalize_direction(d, [torch.ones(2, 2, dtype=torch.float16)], "filter")
    assert torch.isfinite(d[0]).all() and d[0][1].abs().sum() == 0
    model = nn.Linear(3, 2).half()
    v = [torch.zeros(2, 3, dtype=torch.float16), torch.zeros(2, dtype=torch.float16)]
    v[0][0] = 1.0  # an eigenvector-like direction with a zero row
    dirs = custom_directions(model, v, normalize="layer")
    assert all(torch.isfinite(t).all() for t in dirs.x)
    row = dirs.x[0][0].float()
    assert float(row.norm()) == pytest.approx(float(model.weight.detach().float().norm()), rel=1e-2)


def test_directions_read_back_from_a_file_give_the_same_surface(tmp_path):
    model, x, y = _mlp()
    out = tmp_path / "s.h5"
    first = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:2", out=out, progress=False)
    dx, dy, names = read_directions(out)
    assert names == [n for n, _ in model.named_parameters()]
    again = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:2", directions=(dx, dy))
    np.testing.assert_array_equal(again.values["train_loss"], first.values["train_loss"])


def test_linear_barrier_to_a_model_with_a_non_persistent_buffer():
    """A rotary embedding's ``inv_freq`` (Llama, Qwen...) is in no state dict."""
    from landscape.connectivity import linear_barrier

    torch.manual_seed(0)
    a, b = _Rotary(), _Rotary()
    x, y = torch.randn(6, 3), torch.randint(0, 3, (6,))
    for other in (b, b.state_dict()):
        res = linear_barrier(a, other, (x, y), num=3)
        with torch.no_grad():
            ends = [float(nn.functional.cross_entropy(m(x), y)) for m in (a, b)]
        np.testing.assert_allclose(res.loss[[0, -1]], ends, rtol=1e-6)
