"""Static matplotlib figures drawn from stored surface files."""

from __future__ import annotations

import json

import matplotlib.image as mpimg
import numpy as np
import pytest
from matplotlib.collections import QuadMesh
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from plotting_helpers import write_surface

from landscape.plotting import (
    plot_contour,
    plot_heatmap,
    plot_line,
    plot_spectrum,
    plot_surface,
    plot_surface3d,
    plot_surface_grid,
    plot_training_curves,
    plot_trajectory,
    save_figure,
)
from landscape.plotting._common import contour_levels
from landscape.store import read_surface


def _assert_png_drawn(path):
    assert path.stat().st_size > 1000
    img = mpimg.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100
    assert img[..., :3].std() > 0.02, "the picture is blank"


@pytest.mark.parametrize("kind", ["contour", "filled", "surface", "heatmap", "trajectory"])
def test_every_2d_kind_renders_png(pca_surface, tmp_path, kind):
    fig = plot_surface(pca_surface, kind, "train_loss")
    assert isinstance(fig, Figure)
    out = save_figure(fig, tmp_path / f"{kind}.png")
    _assert_png_drawn(out)


def test_line_kind_renders_every_metric(surface1d, tmp_path):
    fig = plot_surface(surface1d, "line", None)
    out = save_figure(fig, tmp_path / "line.png")
    _assert_png_drawn(out)
    labels = {line.get_label() for ax in fig.axes for line in ax.lines}
    assert {"train loss", "test loss", "train accuracy (%)", "test accuracy (%)"} <= labels
    # The curve is the stored data, not a re-sampling of it.
    s = read_surface(surface1d)
    line = next(ln for ln in fig.axes[0].lines if ln.get_label() == "train loss")
    np.testing.assert_allclose(line.get_ydata(), s.values["train_loss"])
    np.testing.assert_allclose(line.get_xdata(), s.x)


@pytest.mark.parametrize("ext", ["pdf", "svg"])
def test_vector_formats_non_empty(surface2d, tmp_path, ext):
    out = save_figure(plot_contour(surface2d, filled=True), tmp_path / f"c.{ext}")
    assert out.stat().st_size > 1000


def test_non_square_grid_keeps_rows_along_y(tmp_path):
    # f depends on x only: every contour line must be vertical, at x = its level.
    path = tmp_path / "xonly.h5"
    write_surface(path, nx=11, ny=4, func=lambda x, y: np.meshgrid(x, y)[0] + 2.0)
    fig = plot_contour(path, levels=[1.5, 2.0, 2.5])
    ax = fig.axes[0]
    cs = next(c for c in ax.collections if hasattr(c, "levels"))
    for level, path_ in zip(cs.levels, cs.get_paths()):
        verts = path_.vertices
        assert len(verts) >= 2
        np.testing.assert_allclose(verts[:, 0], level - 2.0, atol=1e-9)
        assert np.ptp(verts[:, 1]) > 1.0  # spans the y range
    # The heatmap holds the (ny, nx) grid as stored.
    fig = plot_heatmap(path)
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    arr = np.asarray(mesh.get_array()).reshape(4, 11)
    np.testing.assert_allclose(arr, read_surface(path).values["train_loss"])


def test_nan_and_unfinished_cells_are_masked(tmp_path):
    path = tmp_path / "holes.h5"
    write_surface(path, nan_cells=[(2, 3)], undone_cells=[(4, 1)])
    fig = plot_heatmap(path)
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    mask = np.ma.getmaskarray(mesh.get_array()).reshape(6, 9)
    assert mask[2, 3] and mask[4, 1]
    assert mask.sum() == 2
    # Contours and 3-D still draw around the holes.
    plot_contour(path, filled=True, log=True)
    plot_surface3d(path, log=True)


def test_log_levels_are_geometric():
    lv = contour_levels(0.1, 10.0, 5, log=True)
    np.testing.assert_allclose(lv, [0.1, 0.1 * 10**0.5, 1.0, 10**0.5, 10.0])
    np.testing.assert_allclose(contour_levels(0.0, 1.0, 3, log=False), [0.0, 0.5, 1.0])
    with pytest.raises(ValueError, match="levels"):
        contour_levels(0.0, 1.0, 1, log=False)


def test_log_contour_uses_log_norm(surface2d):
    fig = plot_contour(surface2d, filled=True, log=True, levels=7)
    cs = next(c for c in fig.axes[0].collections if hasattr(c, "levels"))
    assert isinstance(cs.norm, LogNorm)
    ratios = cs.levels[1:] / cs.levels[:-1]
    np.testing.assert_allclose(ratios, ratios[0])
    z = read_surface(surface2d).values["train_loss"]
    assert cs.levels[0] == pytest.approx(z.min()) and cs.levels[-1] == pytest.approx(z.max())


def test_trajectory_drawn_in_the_plane_coordinates(pca_surface):
    s = read_surface(pca_surface)
    fig = plot_trajectory(pca_surface)
    ax = fig.axes[0]
    path_line = next(ln for ln in ax.lines if ln.get_label() == "training path")
    np.testing.assert_allclose(path_line.get_xdata(), s.trajectory[:, 0])
    np.testing.assert_allclose(path_line.get_ydata(), s.trajectory[:, 1])
    assert ax.get_xlabel().startswith("PC1 (71.0 %)")
    assert ax.get_ylabel().startswith("PC2 (12.0 %)")


def test_trajectory_needs_a_path(surface2d):
    with pytest.raises(ValueError, match="no stored trajectory"):
        plot_trajectory(surface2d)


def test_2d_kinds_refuse_1d_surface(surface1d):
    with pytest.raises(ValueError, match="1-D"):
        plot_contour(surface1d)
    with pytest.raises(ValueError, match="metric 'nope'"):
        plot_line(surface1d, metrics=["nope"])


def test_grid_shares_one_colour_scale(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    za = write_surface(a)
    zb = write_surface(b, func=lambda x, y: 5.0 + 10 * np.meshgrid(x, y)[1] ** 2)
    for kind in ("filled", "heatmap", "contour"):
        fig = plot_surface_grid([a, b], kind=kind, titles=["sgd", "sam"])
        panels = [ax for ax in fig.axes if ax.get_title() in ("sgd", "sam")]
        mappables = [c for ax in panels for c in ax.collections if hasattr(c, "norm")]
        assert len(panels) == 2 and len(mappables) >= 2
        lo, hi = min(za.min(), zb.min()), max(za.max(), zb.max())
        for m in mappables:
            assert m.norm.vmin == pytest.approx(lo) and m.norm.vmax == pytest.approx(hi)
        titles = [ax.get_title() for ax in fig.axes]
        assert "sgd" in titles and "sam" in titles
    out = save_figure(plot_surface_grid([a, b], log=True), tmp_path / "grid.png")
    _assert_png_drawn(out)


def test_grid_of_1d_surfaces_shares_y_range(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    write_surface(a, ny=None)
    write_surface(b, ny=None)
    fig = plot_surface_grid([a, b], kind="line")
    ylims = {tuple(ax.get_ylim()) for ax in fig.axes if ax.get_visible()}
    assert len(ylims) == 1


def test_spectrum_from_json_on_log_axis(density_json, tmp_path):
    fig = plot_spectrum(density_json)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    (line,) = [ln for ln in ax.lines if ln.get_label() == "density"]
    doc = json.loads(density_json.read_text())["density"]
    np.testing.assert_allclose(line.get_xdata(), doc["grid"])
    np.testing.assert_allclose(line.get_ydata(), np.maximum(doc["density"], 1e-8))
    _assert_png_drawn(save_figure(fig, tmp_path / "spec.png"))


def test_spectrum_accepts_result_objects():
    class Dens:
        grid = np.linspace(0, 1, 5)
        density = np.array([0.0, 1.0, 2.0, 1.0, 0.0])
        lambda_max = 1.0

    fig = plot_spectrum([Dens(), {"grid": [0, 1], "density": [1, 1]}], labels=["a", "b"])
    assert [ln.get_label() for ln in fig.axes[0].lines if not ln.get_label().startswith("_")] == [
        "a",
        "b",
    ]
    with pytest.raises(ValueError, match="grid"):
        plot_spectrum({"density": [1.0]})


def test_training_curves_from_run_folder(run_dir, tmp_path):
    fig = plot_training_curves(run_dir)
    loss_ax, acc_ax = fig.axes[:2]
    train = next(ln for ln in loss_ax.lines if ln.get_label() == "run_sgd train")
    np.testing.assert_allclose(train.get_ydata(), [2.0 / (e + 1) for e in range(5)])
    assert {ln.get_label() for ln in acc_ax.lines} == {"run_sgd train", "run_sgd test"}
    _assert_png_drawn(save_figure(fig, tmp_path / "curves.png"))


def test_file_of_the_original_code_plots(tmp_path):
    """A file as the original loss-landscape code writes it: no done mask, -1 sentinel."""
    import h5py

    from landscape.plotting import export_surface, interactive_surface, read_mesh

    n = 7
    x = np.linspace(-1, 1, n)
    y = np.linspace(-1, 1, n)
    z = 0.1 + np.add.outer(2 * y**2, x**2)  # z[iy, ix]
    acc = 100 - z
    z[3, 5] = acc[3, 5] = -1.0  # not computed yet: the original fills every field with -1
    path = tmp_path / "orig.h5"
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = x
        f["ycoordinates"] = y
        f["train_loss"] = z
        f["train_acc"] = acc
        f["dir_file"] = "orig.h5"
    fig = plot_contour(path, filled=True, log=True)
    _assert_png_drawn(save_figure(fig, tmp_path / "orig.png"))
    fig = plot_heatmap(path)
    mesh = next(c for c in fig.axes[0].collections if isinstance(c, QuadMesh))
    assert np.ma.getmaskarray(mesh.get_array()).reshape(n, n)[3, 5]
    surf = interactive_surface(path).data[0]
    assert np.isnan(np.asarray(surf.z, dtype=float)[3, 5])
    assert len(read_mesh(export_surface(path, tmp_path / "orig.obj")).points) == n * n - 1
