"""Interactive plotly figures and offline HTML pages."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
import pytest
from plotting_helpers import write_surface

from landscape.plotting import (
    figures_to_html,
    interactive_contours,
    interactive_line,
    interactive_spectrum,
    interactive_surface,
    interactive_surfaces,
    interactive_training_curves,
    write_html,
)
from landscape.plotting._common import read_metrics_jsonl
from landscape.store import read_surface

# A string only the inlined plotly.js bundle contains (its licence banner).
_PLOTLY_BANNER = "* plotly.js v"


def test_surface_figure_holds_the_grid_and_hover(surface2d):
    s = read_surface(surface2d)
    fig = interactive_surface(surface2d)
    assert isinstance(fig, go.Figure)
    (surf,) = [t for t in fig.data if isinstance(t, go.Surface)]
    np.testing.assert_allclose(np.asarray(surf.z), s.values["train_loss"])  # (ny, nx)
    np.testing.assert_allclose(surf.x, s.x)
    np.testing.assert_allclose(surf.y, s.y)
    assert surf.contours.z.show and surf.contours.z.project.z
    # hover: coordinates, the drawn value and every other metric (accuracies included)
    assert "%{x" in surf.hovertemplate and "%{y" in surf.hovertemplate
    assert "train accuracy (%)" in surf.hovertemplate and "test loss" in surf.hovertemplate
    custom = np.asarray(surf.customdata)
    assert custom.shape == (*s.values["train_loss"].shape, 4)
    others = sorted(m for m in s.values if m != "train_loss")
    for k, m in enumerate(others):
        np.testing.assert_allclose(custom[..., k], s.values[m])
    np.testing.assert_allclose(custom[..., -1], s.values["train_loss"])


def test_log_surface_keeps_true_values_in_hover(surface2d):
    s = read_surface(surface2d)
    fig = interactive_surface(surface2d, log=True)
    surf = fig.data[0]
    np.testing.assert_allclose(np.asarray(surf.z), np.log10(s.values["train_loss"]))
    np.testing.assert_allclose(np.asarray(surf.customdata)[..., -1], s.values["train_loss"])


def test_training_path_drawn_on_the_surface(tmp_path):
    path = tmp_path / "pca.h5"
    x_nodes = np.linspace(-1.0, 1.0, 9)
    y_nodes = np.linspace(-0.5, 0.75, 6)
    # Points on grid nodes get exactly the node's value; a midpoint gets the bilinear mean.
    traj = np.array([[x_nodes[1], y_nodes[4]], [x_nodes[5], y_nodes[2]], [0.125, 0.0]])
    z = write_surface(path, trajectory=traj)
    fig = interactive_surface(path)
    (path3d,) = [t for t in fig.data if isinstance(t, go.Scatter3d)]
    np.testing.assert_allclose(path3d.x, traj[:, 0])
    np.testing.assert_allclose(path3d.y, traj[:, 1])
    lift = 0.01 * np.ptp(z)  # drawn just above the surface, so it stays visible
    assert path3d.z[0] == pytest.approx(z[4, 1] + lift)
    assert path3d.z[1] == pytest.approx(z[2, 5] + lift)
    # x=0.125 is halfway between nodes 4 (0.0) and 5 (0.25); y=0 is 0.4 of the way
    # from node 1 (-0.25) to node 2 (0.0).
    fx, fy = 0.5, (0.0 - y_nodes[1]) / (y_nodes[2] - y_nodes[1])
    want = (
        z[1, 4] * (1 - fx) * (1 - fy)
        + z[1, 5] * fx * (1 - fy)
        + z[2, 4] * (1 - fx) * fy
        + z[2, 5] * fx * fy
    )
    assert path3d.z[2] == pytest.approx(want + lift)


def test_nan_cells_stay_nan(tmp_path):
    path = tmp_path / "holes.h5"
    write_surface(path, nan_cells=[(1, 1)], undone_cells=[(3, 3)])
    surf = interactive_surface(path).data[0]
    z = np.asarray(surf.z, dtype=float)
    assert np.isnan(z[1, 1]) and np.isnan(z[3, 3]) and np.isfinite(z).sum() == z.size - 2
    html = interactive_surface(path).to_html(include_plotlyjs=False)
    assert "NaN" not in html  # plotly writes gaps as null, which plotly.js understands


def test_several_surfaces_togglable_with_one_colour_scale(tmp_path):
    a, b = tmp_path / "sgd.h5", tmp_path / "sam.h5"
    za = write_surface(a, trajectory=np.array([[0.5, 0.5], [0.0, 0.0], [0.1, -0.1]]))
    zb = write_surface(b, func=lambda x, y: 2.0 + np.meshgrid(x, y)[0] ** 2)
    fig = interactive_surfaces([a, b], labels=["SGD", "SAM"])
    surfaces = [t for t in fig.data if isinstance(t, go.Surface)]
    assert [t.name for t in surfaces] == ["SGD", "SAM"]
    assert all(t.coloraxis == "coloraxis" for t in surfaces)
    assert fig.layout.coloraxis.cmin == pytest.approx(min(za.min(), zb.min()))
    assert fig.layout.coloraxis.cmax == pytest.approx(max(za.max(), zb.max()))
    assert [t.visible for t in fig.data] == [True, True, "legendonly"]
    buttons = fig.layout.updatemenus[0].buttons
    assert [btn.label for btn in buttons] == ["SGD", "SAM", "all"]
    # SGD has a surface and a path (2 traces), SAM a surface only.
    assert list(buttons[0].args[0]["visible"]) == [True, True, False]
    assert list(buttons[1].args[0]["visible"]) == [False, False, True]
    assert list(buttons[2].args[0]["visible"]) == [True, True, True]
    with pytest.raises(ValueError, match="labels"):
        interactive_surfaces([a, b], labels=["one"])


def test_line_spectrum_and_training_figures(surface1d, density_json, run_dir):
    fig = interactive_line(surface1d)
    names = [t.name for t in fig.data]
    assert "line: train loss" in names and "line: test accuracy (%)" in names
    acc = next(t for t in fig.data if t.name == "line: train accuracy (%)")
    assert acc.yaxis == "y2"
    spec = interactive_spectrum(density_json)
    assert spec.layout.yaxis.type == "log"
    assert min(spec.data[0].y) >= 1e-8
    curves = interactive_training_curves([("sgd", read_metrics_jsonl(run_dir))])
    assert {t.name for t in curves.data} == {
        "sgd train loss",
        "sgd test loss",
        "sgd train acc",
        "sgd test acc",
    }


def test_html_embeds_plotlyjs_once_and_works_offline(surface2d, surface1d, tmp_path):
    figs = [
        interactive_surface(surface2d),
        interactive_line(surface1d),
        interactive_surface(surface2d),
    ]
    parts = figures_to_html(figs)
    assert _PLOTLY_BANNER in parts[0]
    assert all(_PLOTLY_BANNER not in p for p in parts[1:])
    out = write_html(figs, tmp_path / "page.html", title="a <b>title</b>")
    text = out.read_text()
    assert text.count(_PLOTLY_BANNER) == 1
    assert "<script src=" not in text  # nothing fetched: the page works offline
    assert "a &lt;b&gt;title&lt;/b&gt;" in text
    assert text.count('class="plotly-graph-div"') == 3


def test_contour_maps_share_one_colour_scale(tmp_path):
    a, b = tmp_path / "sgd.h5", tmp_path / "sam.h5"
    za = write_surface(a, trajectory=np.array([[0.5, 0.5], [0.0, 0.0]]))
    zb = write_surface(b, nx=5, ny=7, func=lambda x, y: 2.0 + np.meshgrid(x, y)[0] ** 2)
    fig = interactive_contours([a, b], labels=["SGD", "SAM"], log=True)
    contours = [t for t in fig.data if isinstance(t, go.Contour)]
    assert [t.name for t in contours] == ["SGD", "SAM"]
    np.testing.assert_allclose(np.asarray(contours[1].z), np.log10(zb))  # (ny, nx) = (7, 5)
    np.testing.assert_allclose(np.asarray(contours[0].customdata), za)
    assert fig.layout.coloraxis.cmin == pytest.approx(np.log10(za.min()))
    assert fig.layout.coloraxis.cmax == pytest.approx(np.log10(max(za.max(), zb.max())))
    (path,) = [t for t in fig.data if isinstance(t, go.Scatter)]
    assert list(path.x) == [0.5, 0.0]
