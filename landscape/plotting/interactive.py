"""Interactive figures with plotly: 3-D landscapes, curves, spectra; offline HTML pages.

Functions return :class:`plotly.graph_objects.Figure` objects, which notebooks display
inline; :func:`write_html` saves one or several figures as ONE offline page with
plotly.js embedded once (inline in the first figure, reused by the others).
"""

from __future__ import annotations

import html
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from landscape.plotting._common import (
    SurfaceLike,
    as_spectrum,
    as_surface,
    axis_labels,
    comparison_curves,
    curve_metrics,
    curves_from_records,
    for_log,
    interpolate_on_grid,
    is_accuracy,
    load_surfaces,
    metric_label,
    metric_order,
    metric_values,
    surface_label,
    surface_ndim,
    trajectory_of,
    value_range,
)

__all__ = [
    "figures_to_html",
    "interactive_connectivity",
    "interactive_contours",
    "interactive_correlation",
    "interactive_line",
    "interactive_metric_curves",
    "interactive_spectrum",
    "interactive_surface",
    "interactive_surfaces",
    "interactive_training_curves",
    "write_html",
]

_COLORSCALE = "Viridis"


def _go():
    import plotly.graph_objects as go

    return go


_PALETTE = [
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
    "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
]  # fmt: skip


def _hover_extras(surface: Any, metric: str) -> tuple[np.ndarray | None, str]:
    """Customdata stacking the other stored metrics, and the hover lines showing them."""
    others = [m for m in sorted(surface.values) if m != metric]
    if not others:
        return None, ""
    stack = np.stack([metric_values(surface, m) for m in others], axis=-1)
    lines = "".join(
        f"<br>{html.escape(metric_label(m))}: %{{customdata[{i}]:.4g}}"
        for i, m in enumerate(others)
    )
    return stack, lines


def interactive_surface(
    surface: SurfaceLike,
    metric: str = "train_loss",
    *,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    contours: bool = True,
    trajectory: bool = True,
    title: str | None = None,
    name: str | None = None,
) -> Any:
    """Rotatable 3-D surface with contour lines projected on the floor.

    Hovering shows the coordinates and every stored metric (losses and accuracies);
    the stored training path, if any, is drawn on the surface (its height interpolated
    from the grid).  1-D surfaces are drawn as curves (see :func:`interactive_line`).

    Args:
        surface: a surface or its file.
        metric: the metric giving the height and colour.
        log: height is ``log10`` of the metric (hover still shows the value).
        vmin: clip heights below this.
        vmax: clip heights above this (like the original paper's ``zlim``).
        contours: project contour lines on the floor of the scene.
        trajectory: draw the stored training path.
        title: figure title; default file name and metric.
        name: trace name (legend entry).
    """
    go = _go()
    surface = as_surface(surface)
    if surface_ndim(surface) == 1:
        return interactive_line(surface, title=title)
    fig = go.Figure()
    for trace in _surface_traces(surface, metric, log, vmin, vmax, contours, trajectory, name):
        fig.add_trace(trace)
    _layout_3d(fig, surface, metric, log, title)
    return fig


def _surface_traces(surface, metric, log, vmin, vmax, contours, trajectory, name, **extra):
    go = _go()
    raw = metric_values(surface, metric)
    z = for_log(raw) if log else raw
    lo, hi = value_range([z], vmin, vmax, log)
    z = np.clip(z, lo, hi)
    if log:
        z = np.log10(z)
    x, y = np.asarray(surface.x), np.asarray(surface.y)
    custom, extra_lines = _hover_extras(surface, metric)
    value = f"{html.escape(metric_label(metric))}: "
    # The true value is shown even when the height is log10 of it.
    if custom is None:
        custom = raw[..., None]
    else:
        custom = np.concatenate([custom, raw[..., None]], axis=-1)
    k = custom.shape[-1] - 1
    xl, yl = axis_labels(surface)
    hover = (
        f"{html.escape(xl)}: %{{x:.4g}}<br>{html.escape(yl)}: %{{y:.4g}}"
        f"<br>{value}%{{customdata[{k}]:.4g}}{extra_lines}<extra>%{{fullData.name}}</extra>"
    )
    label = name or surface_label(surface)
    traces = [
        go.Surface(
            x=x,
            y=y,
            z=z,
            customdata=custom,
            hovertemplate=hover,
            name=label,
            showlegend=True,
            colorscale=_COLORSCALE,
            contours={
                "z": {
                    "show": contours,
                    "usecolormap": True,
                    "project": {"z": contours},
                    "highlightcolor": "white",
                }
            },
            colorbar={"title": {"text": ("log10 " if log else "") + metric_label(metric)}},
            **extra,
        )
    ]
    path = trajectory_of(surface) if trajectory else None
    if path is not None:
        pz_raw = interpolate_on_grid(surface, raw, path)
        pz = np.clip(for_log(pz_raw) if log else pz_raw, lo, hi)
        if log:
            pz = np.log10(pz)
        # Lift the path a little above the surface so the surface does not hide it.
        span = np.nanmax(z) - np.nanmin(z) if np.isfinite(z).any() else 0.0
        pz = pz + 0.01 * span
        traces.append(
            go.Scatter3d(
                x=path[:, 0],
                y=path[:, 1],
                z=pz,
                mode="lines+markers",
                line={"color": "crimson", "width": 5},
                marker={"size": 3, "color": "crimson"},
                name=f"{label}: training path",
                customdata=np.arange(len(path)),
                hovertemplate=(
                    "checkpoint %{customdata}<br>x: %{x:.4g}<br>y: %{y:.4g}"
                    "<extra>training path</extra>"
                ),
            )
        )
    return traces


def _layout_3d(fig, surface, metric, log, title):
    xl, yl = axis_labels(surface)
    zl = ("log10 " if log else "") + metric_label(metric)
    fig.update_layout(
        title={"text": html.escape(title or f"{surface_label(surface)}: {metric_label(metric)}")},
        scene={
            "xaxis_title": xl,
            "yaxis_title": yl,
            "zaxis_title": zl,
            "aspectmode": "manual",
            "aspectratio": {"x": 1.0, "y": 1.0, "z": 0.7},
        },
        margin={"l": 0, "r": 0, "t": 40, "b": 0},
        legend={"x": 0.0, "y": 1.0},
        height=600,
    )


def interactive_surfaces(
    surfaces: Sequence[SurfaceLike],
    metric: str = "train_loss",
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    contours: bool = True,
    trajectory: bool = True,
    title: str | None = None,
) -> Any:
    """Several surfaces in ONE 3-D scene, togglable, on one shared colour scale.

    The first surface shows at first; buttons show one surface at a time (or all), and
    clicking a legend entry toggles a surface too.  Heights and colours use the same
    range for every surface.

    Args:
        surfaces: 2-D surfaces or their files.
        metric: the metric giving height and colour.
        labels: one name per surface; default the file names.
        log: heights are ``log10`` of the metric.
        vmin: shared lower clip; default the minimum over all surfaces.
        vmax: shared upper clip; default the maximum over all surfaces.
        contours: project contour lines on the floor.
        trajectory: draw stored training paths.
        title: figure title.
    """
    go = _go()
    loaded, names = load_surfaces(surfaces, labels, need_2d="interactive_surfaces")
    zs = [metric_values(s, metric) for s in loaded]
    lo, hi = value_range([for_log(z) if log else z for z in zs], vmin, vmax, log)
    cmin, cmax = (np.log10(lo), np.log10(hi)) if log else (lo, hi)
    fig = go.Figure()
    owner: list[int] = []
    for i, (s, name) in enumerate(zip(loaded, names)):
        traces = _surface_traces(
            s, metric, log, lo, hi, contours, trajectory, name, coloraxis="coloraxis"
        )
        for t in traces:
            if isinstance(t, go.Surface):
                t.colorbar = None
            # The first surface shows; the others wait in the legend (click or buttons).
            t.visible = True if i == 0 else "legendonly"
            fig.add_trace(t)
            owner.append(i)
    buttons = [
        {
            "label": html.escape(name),
            "method": "update",
            "args": [{"visible": [o == i for o in owner]}],
        }
        for i, name in enumerate(names)
    ]
    buttons.append({"label": "all", "method": "update", "args": [{"visible": [True] * len(owner)}]})
    _layout_3d(
        fig, loaded[0], metric, log, title or f"{metric_label(metric)}: {len(names)} surfaces"
    )
    fig.update_layout(
        coloraxis={
            "colorscale": _COLORSCALE,
            "cmin": cmin,
            "cmax": cmax,
            "colorbar": {"title": {"text": ("log10 " if log else "") + metric_label(metric)}},
        },
        updatemenus=[
            {
                "type": "buttons",
                "direction": "right",
                "x": 0.0,
                "xanchor": "left",
                "y": 0.0,
                "yanchor": "bottom",
                "buttons": buttons,
            }
        ],
        scene_zaxis_range=[cmin, cmax],
    )
    return fig


def interactive_contours(
    surfaces: Sequence[SurfaceLike],
    metric: str = "train_loss",
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int | None = None,
    title: str | None = None,
) -> Any:
    """Filled contour maps of several surfaces side by side, one shared colour scale.

    Drawn in SVG (no WebGL), so a page can hold many; stored training paths are drawn
    over their planes.  Hover shows coordinates and the value.

    Args:
        surfaces: 2-D surfaces or their files.
        metric: the metric to colour by.
        labels: one title per surface; default the file names.
        log: colour by ``log10`` of the metric (hover shows the value).
        vmin: shared lower end; default the minimum over all surfaces.
        vmax: shared upper end; default the maximum over all surfaces.
        ncols: panels per row; default up to 3.
        title: figure title.
    """
    go = _go()
    from plotly.subplots import make_subplots

    loaded, names = load_surfaces(surfaces, labels, need_2d="interactive_contours")
    raws = [metric_values(s, metric) for s in loaded]
    zs = [for_log(z) if log else z for z in raws]
    lo, hi = value_range(zs, vmin, vmax, log)
    cmin, cmax = (np.log10(lo), np.log10(hi)) if log else (lo, hi)
    ncols = ncols or min(len(loaded), 3)
    nrows = -(-len(loaded) // ncols)
    fig = make_subplots(
        rows=nrows,
        cols=ncols,
        subplot_titles=[html.escape(n) for n in names],
        horizontal_spacing=0.06,
        vertical_spacing=0.12 / max(nrows - 1, 1),
    )
    for i, (s, z, raw, name) in enumerate(zip(loaded, zs, raws, names)):
        row, col = divmod(i, ncols)
        shown = np.log10(np.clip(z, lo, hi)) if log else np.clip(z, lo, hi)
        xl, yl = axis_labels(s)
        fig.add_trace(
            go.Contour(
                x=np.asarray(s.x),
                y=np.asarray(s.y),
                z=shown,
                customdata=raw,
                coloraxis="coloraxis",
                contours={"coloring": "heatmap", "showlines": True},
                line={"width": 0.5},
                name=name,
                hovertemplate=(
                    f"{html.escape(xl)}: %{{x:.4g}}<br>{html.escape(yl)}: %{{y:.4g}}"
                    f"<br>{html.escape(metric_label(metric))}: %{{customdata:.4g}}"
                    "<extra>%{fullData.name}</extra>"
                ),
            ),
            row=row + 1,
            col=col + 1,
        )
        path = trajectory_of(s)
        if path is not None:
            fig.add_trace(
                go.Scatter(
                    x=path[:, 0],
                    y=path[:, 1],
                    mode="lines+markers",
                    line={"color": "crimson", "width": 2},
                    marker={"size": 5},
                    name=f"{name}: training path",
                    showlegend=False,
                    hovertemplate="x: %{x:.4g}<br>y: %{y:.4g}<extra>training path</extra>",
                ),
                row=row + 1,
                col=col + 1,
            )
    fig.update_layout(
        title={"text": html.escape(title or f"{metric_label(metric)}: contour maps")},
        coloraxis={
            "colorscale": _COLORSCALE,
            "cmin": cmin,
            "cmax": cmax,
            "colorbar": {"title": {"text": ("log10 " if log else "") + metric_label(metric)}},
        },
        height=max(360, 320 * nrows),
        showlegend=False,
    )
    return fig


def interactive_line(
    surfaces: SurfaceLike | Sequence[SurfaceLike],
    *,
    metrics: Sequence[str] | None = None,
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = None,
) -> Any:
    """1-D curves (loss on the left axis, accuracy on the right) of one or more surfaces.

    Args:
        surfaces: one 1-D surface (or file) or a list of them.
        metrics: metrics to draw; default every stored one.
        labels: one name per surface.
        log: log-scale loss axis.
        title: figure title.
    """
    go = _go()
    items = list(surfaces) if isinstance(surfaces, list | tuple) else [surfaces]
    loaded, names = load_surfaces(items, labels)  # at least one, one label each
    if any(surface_ndim(s) != 1 for s in loaded):
        raise ValueError("interactive_line needs 1-D surfaces")
    fig = go.Figure()
    any_acc = False
    for s, name in zip(loaded, names):
        for m in metrics if metrics is not None else sorted(s.values, key=metric_order):
            acc = is_accuracy(m)
            any_acc |= acc
            fig.add_trace(
                go.Scatter(
                    x=np.asarray(s.x),
                    y=metric_values(s, m),
                    mode="lines",
                    name=f"{name}: {metric_label(m)}",
                    yaxis="y2" if acc else "y",
                    line={"dash": "dash" if m.startswith("test") else "solid"},
                    hovertemplate="x: %{x:.4g}<br>%{y:.4g}",
                )
            )
    layout: dict[str, Any] = {
        "title": {"text": html.escape(title or "1-D loss curve")},
        "xaxis": {"title": {"text": axis_labels(loaded[0])[0]}},
        "yaxis": {"title": {"text": "loss"}, "type": "log" if log else "linear"},
        "height": 450,
    }
    if any_acc:
        layout["yaxis2"] = {"title": {"text": "accuracy (%)"}, "overlaying": "y", "side": "right"}
    fig.update_layout(**layout)
    return fig


def interactive_connectivity(
    curves: Any,
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = "Mode connectivity: loss along the fitted curve and the line",
) -> Any:
    """Loss (left axis) and error rate (right axis, dotted) over t, curve and line.

    The plotly twin of :func:`landscape.plotting.static.plot_connectivity`, for one or
    several curves: the curve solid, the line dashed, one colour per file; hover gives t.

    Args:
        curves: a :class:`landscape.connectivity.CurveResult` or curve file, or a list.
        labels: one legend label per curve; default the file stems.
        log: log-scale loss axis.
        title: figure title.
    """
    from landscape.connectivity import as_curve

    go = _go()
    items = list(curves) if isinstance(curves, list | tuple) else [curves]
    loaded = [as_curve(c) for c in items]
    if labels is not None and len(labels) != len(loaded):
        raise ValueError(f"labels has {len(labels)} entries for {len(loaded)} curves")
    fig = go.Figure()
    any_acc = False
    for i, res in enumerate(loaded):
        source = res.info.get("path")
        label = labels[i] if labels is not None else (Path(source).stem if source else "curve")
        color = _PALETTE[i % len(_PALETTE)]
        for name, split, prof in res.profiles():
            width = 2.0 if split == "train" else 1.0
            dash = ("dash", "dashdot") if name == "line" else ("solid", "dot")
            series = [("loss", prof.loss, "y", dash[0], prof.barrier)]
            if prof.acc is not None:
                any_acc = True
                err = 100.0 - prof.acc
                series.append(("error %", err, "y2", dash[1], prof.error_barrier))
            for what, y, axis, style, barrier in series:
                text = html.escape(f"{label}: {name} {split} {what} (barrier {barrier:.3g})")
                fig.add_trace(
                    go.Scatter(
                        x=prof.alphas,
                        y=y,
                        mode="lines",
                        name=text,
                        yaxis=axis,
                        line={"color": color, "dash": style, "width": width},
                        hovertemplate="t: %{x:.3f}<br>%{y:.4g}",
                    )
                )
    layout: dict[str, Any] = {
        "title": {"text": html.escape(title or "")},
        "xaxis": {"title": {"text": "t (0: network A, 1: network B)"}},
        "yaxis": {"title": {"text": "loss"}, "type": "log" if log else "linear"},
        "height": 480,
    }
    if any_acc:
        layout["yaxis2"] = {"title": {"text": "error (%)"}, "overlaying": "y", "side": "right"}
    fig.update_layout(**layout)
    return fig


def interactive_spectrum(
    densities: Any,
    *,
    labels: Sequence[str] | None = None,
    floor: float = 1e-8,
    title: str | None = "Hessian spectral density",
) -> Any:
    """Spectral densities on a log density axis (one curve per density result or file)."""
    go = _go()
    items = densities if isinstance(densities, list | tuple) else [densities]
    if not items:
        raise ValueError("densities must hold at least one density")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels has {len(labels)} entries for {len(items)} densities")
    fig = go.Figure()
    for i, d in enumerate(items):
        s = as_spectrum(d, None if labels is None else labels[i])
        fig.add_trace(
            go.Scatter(
                x=s.grid,
                y=np.maximum(s.density, floor),
                mode="lines",
                name=s.label,
                hovertemplate="λ: %{x:.4g}<br>density: %{y:.3g}",
            )
        )
    fig.update_layout(
        title={"text": html.escape(title or "")},
        xaxis={"title": {"text": "eigenvalue"}},
        yaxis={"title": {"text": "density"}, "type": "log"},
        height=420,
    )
    return fig


def interactive_training_curves(
    runs: Sequence[tuple[str, Sequence[dict]]], *, title: str | None = "Training curves"
) -> Any:
    """Loss and accuracy per epoch of named runs: ``[(name, records), ...]``."""
    go = _go()
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy (%)"))
    dashes = {"train": "solid", "val": "dashdot", "test": "dash"}
    for i, (name, records) in enumerate(runs):
        color = _PALETTE[i % len(_PALETTE)]
        curves = curves_from_records(records)
        for key in sorted(curves, key=metric_order):
            epoch, value = curves[key]
            split, _, what = key.partition("_")
            if split not in dashes or what not in ("loss", "acc"):
                continue
            fig.add_trace(
                go.Scatter(
                    x=epoch,
                    y=value,
                    mode="lines+markers",
                    name=f"{name} {split} {what}",
                    legendgroup=name,  # one click on a legend entry toggles the whole run
                    line={"color": color, "dash": dashes[split]},
                    marker={"size": 4},
                ),
                row=1,
                col=1 if what == "loss" else 2,
            )
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title={"text": html.escape(title or "")}, height=420)
    return fig


def interactive_metric_curves(
    comparisons: Any,
    metric: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = "Metrics along training",
) -> Any:
    """Metrics of checkpoints against their epoch, one line per run of each comparison.

    The plotly twin of :func:`landscape.plotting.static.plot_metric_curves`: rows sorted
    by epoch, error bars of ±1 standard error where the stderr is finite and positive,
    rows without an epoch or a finite value left out.  One panel per metric (shared
    epoch axis) unless ``metric`` is given; a line keeps its colour in every panel and its
    legend entry toggles all of them.  Hover shows the checkpoint's label.

    Args:
        comparisons: a comparison JSON file, a :class:`landscape.compare.Comparison`,
            its ``to_dict()``, or a list of those.
        metric: the metric to draw; default every metric with a value.
        labels: one legend label per comparison; default the file stems.
        log: logarithmic value axes.
        title: figure title.

    Raises:
        ValueError: as :func:`landscape.plotting.static.plot_metric_curves`.
    """
    go = _go()
    from plotly.subplots import make_subplots

    sets = comparison_curves(comparisons, labels)
    names = curve_metrics(sets, metric)
    fig = make_subplots(
        rows=len(names),
        cols=1,
        shared_xaxes=True,
        vertical_spacing=0.08 / max(len(names) - 1, 1) if len(names) > 1 else 0.0,
    )
    shown: set[int] = set()  # comparisons with a legend entry already
    for row, name in enumerate(names, start=1):
        for i, s in enumerate(sets):
            curve = s.curves.get(name)
            if curve is None or curve.epoch.size == 0:
                continue
            color = _PALETTE[i % len(_PALETTE)]
            fig.add_trace(
                go.Scatter(
                    x=curve.epoch,
                    y=curve.value,
                    error_y={
                        "type": "data",
                        "array": curve.stderr,  # NaN (no stderr) draws no bar
                        "visible": bool(np.isfinite(curve.stderr).any()),
                        "thickness": 1.2,
                    },
                    customdata=[
                        [html.escape(r), "" if np.isnan(e) else f" ± {e:.2g}"]
                        for r, e in zip(curve.rows, curve.stderr, strict=True)
                    ],
                    mode="lines+markers",
                    name=html.escape(s.label),
                    legendgroup=f"comparison {i}",
                    showlegend=i not in shown,
                    line={"color": color},
                    marker={"size": 5},
                    hovertemplate=(
                        f"%{{customdata[0]}}<br>epoch %{{x}}<br>{html.escape(name)}: "
                        "%{y:.4g}%{customdata[1]}<extra>%{fullData.name}</extra>"
                    ),
                ),
                row=row,
                col=1,
            )
            shown.add(i)
        fig.update_yaxes(
            title_text=html.escape(name), type="log" if log else "linear", row=row, col=1
        )
    fig.update_xaxes(title_text="epoch", row=len(names), col=1)
    fig.update_layout(
        title={"text": html.escape(title or "")}, height=max(360, 100 + 260 * len(names))
    )
    return fig


def figures_to_html(figures: Sequence[Any], *, first_includes_plotlyjs: bool = True) -> list[str]:
    """HTML fragments of plotly figures, plotly.js inlined in the first fragment only.

    The fragments share one page: every later figure reuses the library the first one
    defines, so a page of many figures stays one copy of plotly.js large and offline.
    """
    out = []
    for i, fig in enumerate(figures):
        out.append(
            fig.to_html(
                full_html=False,
                include_plotlyjs=bool(first_includes_plotlyjs and i == 0),
                config={"responsive": True, "displaylogo": False},
            )
        )
    return out


def interactive_correlation(
    correlation: Any, metric: str | None = None, *, title: str | None = None
) -> Any:
    """The plotly twin of :func:`landscape.plotting.static.plot_correlation`.

    One panel per metric (side by side), one point per run coloured by the most varied
    hyper-parameter axis (a legend entry toggles that value in every panel); hover
    shows the run's label.

    Args:
        correlation: a :class:`landscape.correlation.Correlation`, its JSON file or dict.
        metric: the metric to draw; default every metric.
        title: figure title.
    """
    go = _go()
    from plotly.subplots import make_subplots

    from landscape.plotting._common import correlation_panels

    panels = correlation_panels(correlation, metric)
    fig = make_subplots(
        rows=1, cols=len(panels), subplot_titles=[html.escape(p.title) for p in panels]
    )
    for col, p in enumerate(panels, start=1):
        for i, (legend, x, y, labels) in enumerate(p.series):
            fig.add_trace(
                go.Scatter(
                    x=x,
                    y=y,
                    mode="markers",
                    marker={"color": _PALETTE[i % len(_PALETTE)], "size": 9},
                    name=html.escape(legend),
                    legendgroup=str(i),
                    showlegend=col == 1,
                    text=[html.escape(t) for t in labels],
                    hovertemplate="%{text}<br>measure %{x:.4g}<br>gap %{y:.4g}<extra></extra>",
                ),
                row=1,
                col=col,
            )
        fig.update_xaxes(title_text=p.metric, row=1, col=col)
    fig.update_yaxes(title_text=f"gap ({panels[0].gap})", row=1, col=1)
    fig.update_layout(title=title, height=420, width=max(480, 420 * len(panels)))
    return fig


def write_html(figures: Any, path: str | os.PathLike, *, title: str = "sharpscape figure") -> Path:
    """Save one figure or a list of figures as ONE self-contained offline HTML page."""
    figs = figures if isinstance(figures, list | tuple) else [figures]
    if not figs:
        raise ValueError("figures must hold at least one figure")
    parts = figures_to_html(figs)
    body = "\n".join(f'<div class="figure">{p}</div>' for p in parts)
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title></head>\n<body>\n{body}\n</body></html>\n"
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
