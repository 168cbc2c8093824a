"""Static figures with matplotlib: curves, contours, heatmaps, 3-D surfaces, spectra.

Every function returns a :class:`matplotlib.figure.Figure` (drawn on the Agg canvas
unless an ``ax`` of another figure is passed) and never calls ``plt.show()``: save it
with :func:`save_figure` or ``fig.savefig``, or let a notebook display it.

Surfaces are :class:`landscape.store.Surface` objects or paths of HDF5 files in the
layout of ``analysis.md``; values are (ny, nx) with rows along y, and unfinished or
non-finite cells are masked (drawn blank), never rewritten.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator

from landscape.plotting._common import (
    SurfaceLike,
    as_spectrum,
    as_surface,
    axis_labels,
    cell_edges,
    comparison_curves,
    contour_levels,
    correlation_panels,
    curve_metrics,
    curves_from_records,
    for_log,
    is_accuracy,
    load_surfaces,
    metric_label,
    metric_order,
    metric_values,
    read_metrics_jsonl,
    surface_label,
    surface_ndim,
    trajectory_of,
    value_range,
)

__all__ = [
    "PLOT_KINDS",
    "plot_connectivity",
    "plot_contour",
    "plot_correlation",
    "plot_heatmap",
    "plot_line",
    "plot_metric_curves",
    "plot_spectrum",
    "plot_surface",
    "plot_surface3d",
    "plot_surface_grid",
    "plot_training_curves",
    "plot_trajectory",
    "save_figure",
]

logger = logging.getLogger(__name__)

#: Kinds accepted by :func:`plot_surface` (and ``landscape plot --kind``).
PLOT_KINDS = ("contour", "filled", "surface", "heatmap", "line", "trajectory")

_CMAP = "viridis"


def _new_axes(ax: Any = None, *, projection: str | None = None, figsize=(6.0, 4.8)):
    """Return (figure, axes): the given axes' figure, or a new Agg figure."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.add_subplot(projection=projection)


def _require_2d(surface: Any, what: str) -> None:
    if surface_ndim(surface) != 2:
        raise ValueError(f"{what} needs a 2-D surface; this one is 1-D (use kind='line')")


def _norm(lo: float, hi: float, log: bool) -> Normalize:
    return LogNorm(vmin=lo, vmax=hi) if log else Normalize(vmin=lo, vmax=hi)


def _title(ax: Any, surface: Any, metric: str, title: str | None) -> None:
    ax.set_title(
        title if title is not None else f"{surface_label(surface)}: {metric_label(metric)}"
    )


# --- 1-D -------------------------------------------------------------------------------


def plot_line(
    surface: SurfaceLike,
    *,
    metrics: Sequence[str] | None = None,
    log: bool = False,
    ax: Any = None,
    title: str | None = None,
) -> Figure:
    """1-D curves: losses on the left axis, accuracies (percent) on a right twin axis.

    Args:
        surface: a 1-D surface or its file.
        metrics: metric names to draw; default every stored one (train solid, test dashed).
        log: log scale for the loss axis.
        ax: axes to draw on; default a new figure.
        title: figure title; default the file name.
    """
    surface = as_surface(surface)
    if surface_ndim(surface) != 1:
        raise ValueError("plot_line needs a 1-D surface; use kind='contour' for 2-D ones")
    names = list(metrics) if metrics is not None else sorted(surface.values, key=metric_order)
    if not names:
        raise ValueError("metrics must name at least one metric")
    fig, ax = _new_axes(ax)
    x = np.asarray(surface.x, dtype=np.float64)
    losses = [m for m in names if not is_accuracy(m)]
    accs = [m for m in names if is_accuracy(m)]
    loss_ax = ax
    acc_ax = ax.twinx() if (losses and accs) else ax
    handles = []
    for i, name in enumerate(losses):
        z = metric_values(surface, name)
        style = "--" if name.startswith("test") else "-"
        (h,) = loss_ax.plot(x, z, style, color=f"C{i}", label=metric_label(name))
        handles.append(h)
    for i, name in enumerate(accs):
        z = metric_values(surface, name)
        style = "--" if name.startswith("test") else "-"
        (h,) = acc_ax.plot(x, z, style, color=f"C{len(losses) + i}", label=metric_label(name))
        handles.append(h)
    if losses:
        loss_ax.set_ylabel("loss")
        if log:
            loss_ax.set_yscale("log")
    if accs:
        acc_ax.set_ylabel("accuracy (%)")
    ax.set_xlabel(axis_labels(surface)[0])
    ax.legend(handles=handles, loc="best", fontsize="small")
    _title(ax, surface, names[0] if len(names) == 1 else "1-D slice", title)
    return fig


def plot_connectivity(
    curve: Any,
    *,
    error: bool = True,
    log: bool = False,
    title: str | None = None,
) -> Figure:
    """The loss (and error) along a fitted curve and along the straight line, over t.

    One panel of the loss and, when the accuracy was measured and ``error`` is set, one of
    the error rate ``100 − acc``; the curve solid, the line dashed, train in one colour
    and test in another; the legend gives each path's barrier.

    Args:
        curve: a :class:`landscape.connectivity.CurveResult` or its HDF5 file.
        error: add the error-rate panel.
        log: log scale for the loss axis.
        title: figure title; default the kind of curve and the file name.
    """
    from landscape.connectivity import as_curve

    res = as_curve(curve)
    rows = [(split, name, prof) for name, split, prof in res.profiles()]
    with_error = error and all(prof.acc is not None for _, _, prof in rows)
    fig = Figure(figsize=(10.0 if with_error else 6.0, 4.2), layout="constrained")
    axes = fig.subplots(1, 2 if with_error else 1, squeeze=False)[0]
    for split, name, prof in rows:
        style = {"color": "C0" if split == "train" else "C1"}
        style["linestyle"] = "--" if name == "line" else "-"
        axes[0].plot(
            prof.alphas, prof.loss, label=f"{name}, {split} (barrier {prof.barrier:.3g})", **style
        )
        if with_error:
            axes[1].plot(
                prof.alphas,
                100.0 - prof.acc,
                label=f"{name}, {split} (barrier {prof.error_barrier:.3g} pp)",
                **style,
            )
    axes[0].set_ylabel("loss")
    if log:
        axes[0].set_yscale("log")
    if with_error:
        axes[1].set_ylabel("error (%)")
    for ax in axes:
        ax.set_xlabel("t (0: network A, 1: network B)")
        ax.legend(loc="best", fontsize="small")
    source = res.info.get("path")
    default = f"{res.kind} curve vs line" + (f": {Path(source).stem}" if source else "")
    fig.suptitle(title if title is not None else default)
    return fig


# --- 2-D -------------------------------------------------------------------------------


def plot_contour(
    surface: SurfaceLike,
    metric: str = "train_loss",
    *,
    filled: bool = False,
    levels: int | Sequence[float] = 30,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    trajectory: bool = True,
    colorbar: bool = True,
    labels: bool = False,
    cmap: str = _CMAP,
    ax: Any = None,
    title: str | None = None,
) -> Figure:
    """Contour lines (or ``filled`` contours) of one metric over the plane.

    Args:
        surface: a 2-D surface or its file.
        metric: which stored metric to draw.
        filled: filled contours (``contourf``) instead of lines.
        levels: number of levels (even, or geometric with ``log``) or explicit values.
        log: logarithmic levels and colour scale (non-positive cells shown at the floor).
        vmin: lower end of the level range; default the data minimum.
        vmax: upper end of the level range; default the data maximum.
        trajectory: overlay the stored training path, if the surface has one.
        colorbar: draw a colour bar.
        labels: write level values on the contour lines.
        cmap: matplotlib colour map name.
        ax: axes to draw on; default a new figure.
        title: figure title; default file name and metric.
    """
    surface = as_surface(surface)
    _require_2d(surface, "a contour plot")
    if min(len(surface.x), len(surface.y)) < 2:
        raise ValueError(
            f"a contour plot needs at least 2 grid points along each axis; this grid has "
            f"{len(surface.x)} × {len(surface.y)} (use kind='heatmap')"
        )
    z = metric_values(surface, metric)
    if log:
        z = for_log(z)
    lo, hi = value_range([z], vmin, vmax, log)
    lv = contour_levels(lo, hi, levels, log)
    fig, ax = _new_axes(ax)
    x, y = np.asarray(surface.x), np.asarray(surface.y)
    zm = np.ma.masked_invalid(z)
    norm = _norm(float(lv[0]), float(lv[-1]), log)
    draw = ax.contourf if filled else ax.contour
    extend = "both" if filled else "neither"
    cs = draw(x, y, zm, levels=lv, cmap=cmap, norm=norm, extend=extend)
    if labels and not filled:
        ax.clabel(cs, inline=True, fontsize=7, fmt="%.3g")
    if colorbar:
        cb = fig.colorbar(cs, ax=ax, label=metric_label(metric))
        if log:
            cb.set_ticks(LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lv[0], lv[-1]))
            cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
            cb.ax.set_ylim(lv[0], lv[-1])
    if trajectory:
        path = trajectory_of(surface)
        if path is not None:
            _draw_path(ax, path)
    xl, yl = axis_labels(surface)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_xlim(x.min(), x.max())
    ax.set_ylim(y.min(), y.max())
    _title(ax, surface, metric, title)
    return fig


def _draw_path(ax: Any, path: np.ndarray) -> None:
    ax.plot(path[:, 0], path[:, 1], "-o", color="crimson", ms=3, lw=1.2, label="training path")
    ax.plot(*path[0], marker="s", color="black", ms=6, ls="none", label="start")
    ax.plot(*path[-1], marker="*", color="gold", mec="black", ms=12, ls="none", label="end")
    ax.legend(loc="best", fontsize="small")


def plot_trajectory(
    surface: SurfaceLike,
    metric: str = "train_loss",
    *,
    levels: int | Sequence[float] = 30,
    log: bool = True,
    filled: bool = False,
    ax: Any = None,
    title: str | None = None,
    **kwargs: Any,
) -> Figure:
    """The training path over the contours of its PCA plane.

    The path coordinates are the surface's own ``trajectory`` (each checkpoint projected
    on the same two directions the grid was evaluated along), so the path and the
    contours share one coordinate system.  The axes widen to show the whole path.

    Args:
        surface: a 2-D surface with a stored trajectory, or its file.
        metric: which stored metric to contour.
        levels: number of levels or explicit values.
        log: logarithmic levels (the default: losses along a path span decades).
        filled: filled contours instead of lines.
        ax: axes to draw on; default a new figure.
        title: figure title.
        **kwargs: passed on to :func:`plot_contour`.
    """
    surface = as_surface(surface)
    _require_2d(surface, "a trajectory plot")
    path = trajectory_of(surface)
    if path is None:
        raise ValueError(
            "this surface has no stored trajectory; compute it on a PCA plane of a run"
        )
    fig = plot_contour(
        surface, metric, levels=levels, log=log, filled=filled, ax=ax, title=title, **kwargs
    )
    ax = ax if ax is not None else fig.axes[0]
    x, y = np.asarray(surface.x), np.asarray(surface.y)
    ax.set_xlim(min(x.min(), path[:, 0].min()), max(x.max(), path[:, 0].max()))
    ax.set_ylim(min(y.min(), path[:, 1].min()), max(y.max(), path[:, 1].max()))
    return fig


def plot_heatmap(
    surface: SurfaceLike,
    metric: str = "train_loss",
    *,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = _CMAP,
    trajectory: bool = True,
    ax: Any = None,
    title: str | None = None,
) -> Figure:
    """Heatmap of one metric: one cell per grid point, NaN cells left blank.

    Cell edges lie halfway between grid coordinates, so uneven grids are drawn right.

    Args:
        surface: a 2-D surface or its file.
        metric: which stored metric to draw.
        log: logarithmic colour scale.
        vmin: colour scale minimum.
        vmax: colour scale maximum.
        cmap: matplotlib colour map name.
        trajectory: overlay the stored training path, if any.
        ax: axes to draw on; default a new figure.
        title: figure title.
    """
    surface = as_surface(surface)
    _require_2d(surface, "a heatmap")
    z = metric_values(surface, metric)
    if log:
        z = for_log(z)
    lo, hi = value_range([z], vmin, vmax, log)
    fig, ax = _new_axes(ax)
    x, y = np.asarray(surface.x), np.asarray(surface.y)
    mesh = ax.pcolormesh(
        cell_edges(x), cell_edges(y), np.ma.masked_invalid(z), cmap=cmap, norm=_norm(lo, hi, log)
    )
    fig.colorbar(mesh, ax=ax, label=metric_label(metric))
    if trajectory:
        path = trajectory_of(surface)
        if path is not None:
            _draw_path(ax, path)
    xl, yl = axis_labels(surface)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    _title(ax, surface, metric, title)
    return fig


def plot_surface3d(
    surface: SurfaceLike,
    metric: str = "train_loss",
    *,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = _CMAP,
    elev: float = 35.0,
    azim: float = -60.0,
    ax: Any = None,
    title: str | None = None,
) -> Figure:
    """3-D surface of one metric (``log`` plots log10 of the values on the z axis).

    Args:
        surface: a 2-D surface or its file.
        metric: which stored metric to draw.
        log: plot ``log10`` of the metric (matplotlib's 3-D axes have no log scale).
        vmin: clip the z values below this (before the log).
        vmax: clip the z values above this (the original paper's ``zlim``).
        cmap: matplotlib colour map name.
        elev: camera elevation in degrees.
        azim: camera azimuth in degrees.
        ax: 3-D axes to draw on; default a new figure.
        title: figure title.
    """
    surface = as_surface(surface)
    _require_2d(surface, "a 3-D surface plot")
    z = metric_values(surface, metric)
    if log:
        z = for_log(z)
    lo, hi = value_range([z], vmin, vmax, log)
    z = np.clip(z, lo, hi)
    zlabel = metric_label(metric)
    if log:
        z, lo, hi = np.log10(z), np.log10(lo), np.log10(hi)
        zlabel = f"log10 {zlabel}"
    fig, ax = _new_axes(ax, projection="3d", figsize=(7.0, 5.6))
    xx, yy = np.meshgrid(np.asarray(surface.x), np.asarray(surface.y))
    surf = ax.plot_surface(
        xx,
        yy,
        np.ma.masked_invalid(z),
        cmap=cmap,
        norm=Normalize(vmin=lo, vmax=hi),
        linewidth=0,
        antialiased=True,
        rstride=1,
        cstride=1,
    )
    fig.colorbar(surf, ax=ax, shrink=0.6, label=zlabel)
    xl, yl = axis_labels(surface)
    ax.set_xlabel(xl)
    ax.set_ylabel(yl)
    ax.set_zlabel(zlabel)
    ax.view_init(elev=elev, azim=azim)
    _title(ax, surface, metric, title)
    return fig


def plot_surface_grid(
    surfaces: Sequence[SurfaceLike],
    metric: str = "train_loss",
    *,
    kind: str = "filled",
    titles: Sequence[str] | None = None,
    levels: int | Sequence[float] = 30,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    ncols: int | None = None,
    cmap: str = _CMAP,
) -> Figure:
    """Several checkpoints' surfaces side by side with ONE shared colour scale.

    The same levels (contours), colour normalisation (heatmaps) or y range (1-D curves)
    apply to every panel, so panels compare directly.

    Args:
        surfaces: surfaces or files, all 2-D or all 1-D.
        metric: which stored metric to draw.
        kind: "filled", "contour" or "heatmap" for 2-D surfaces ("line" for 1-D ones).
        titles: one title per panel; default the file names.
        levels: number of levels or explicit values (contour kinds).
        log: logarithmic levels and colour scale.
        vmin: shared lower end; default the minimum over all panels.
        vmax: shared upper end; default the maximum over all panels.
        ncols: panels per row; default up to 3.
        cmap: matplotlib colour map name.
    """
    loaded, titles = load_surfaces(surfaces, titles, labels_name="titles")
    dims = {surface_ndim(s) for s in loaded}
    if len(dims) != 1:
        raise ValueError("surfaces must be all 1-D or all 2-D")
    two_d = dims == {2}
    allowed = ("filled", "contour", "heatmap") if two_d else ("line",)
    if (two_d and kind not in allowed) or (not two_d and kind not in ("line", "filled")):
        raise ValueError(f"kind must be one of {allowed} for these surfaces, got {kind!r}")
    zs = [metric_values(s, metric) for s in loaded]
    if log:
        zs = [for_log(z) for z in zs]
    lo, hi = value_range(zs, vmin, vmax, log)
    n = len(loaded)
    ncols = ncols or min(n, 3)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(4.2 * ncols + 1.0, 3.6 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=False, sharey=False)
    norm = _norm(lo, hi, log)
    mappable = None
    for ax, s, z, t in zip(axes.flat, loaded, zs, titles):
        x = np.asarray(s.x)
        if not two_d:
            ax.plot(x, z, "-", color="C0")
            ax.set_ylim(lo, hi)
            if log:
                ax.set_yscale("log")
            ax.set_xlabel(axis_labels(s)[0])
            ax.set_ylabel(metric_label(metric))
        else:
            y = np.asarray(s.y)
            zm = np.ma.masked_invalid(z)
            if kind == "heatmap":
                mappable = ax.pcolormesh(cell_edges(x), cell_edges(y), zm, cmap=cmap, norm=norm)
            else:
                lv = contour_levels(lo, hi, levels, log)
                draw = ax.contourf if kind == "filled" else ax.contour
                mappable = draw(x, y, zm, levels=lv, cmap=cmap, norm=norm)
            path = trajectory_of(s)
            if path is not None:
                ax.plot(path[:, 0], path[:, 1], "-o", color="crimson", ms=2, lw=1)
            xl, yl = axis_labels(s)
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
        ax.set_title(t)
    for ax in list(axes.flat)[n:]:
        ax.set_visible(False)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, label=metric_label(metric))
    return fig


# --- spectra and training curves --------------------------------------------------------


def plot_spectrum(
    densities: Any,
    *,
    labels: Sequence[str] | None = None,
    log: bool = True,
    floor: float = 1e-8,
    ax: Any = None,
    title: str | None = "Hessian spectral density",
) -> Figure:
    """Hessian eigenvalue density (stochastic Lanczos quadrature) on a log scale.

    Args:
        densities: one density result (``.grid``/``.density``), its ``to_dict()``, a JSON
            file written by ``landscape hessian --out``, or a list of those.
        labels: one legend label per density.
        log: log-scale density axis (zeros are shown at ``floor``).
        floor: lower limit of the density axis on a log scale.
        ax: axes to draw on; default a new figure.
        title: figure title.
    """
    items = densities if isinstance(densities, list | tuple) else [densities]
    if not items:
        raise ValueError("densities must hold at least one density")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels has {len(labels)} entries for {len(items)} densities")
    specs = [as_spectrum(d, None if labels is None else labels[i]) for i, d in enumerate(items)]
    fig, ax = _new_axes(ax)
    for i, s in enumerate(specs):
        d = np.maximum(s.density, floor) if log else s.density
        ax.plot(s.grid, d, color=f"C{i}", lw=1.3, label=s.label)
        if s.lambda_max is not None:
            ax.axvline(s.lambda_max, color=f"C{i}", ls=":", lw=0.8)
    if log:
        ax.set_yscale("log")
        ax.set_ylim(bottom=floor)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    if len(specs) > 1 or specs[0].label != "spectrum":
        ax.legend(loc="best", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_training_curves(
    runs: Any,
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    title: str | None = None,
) -> Figure:
    """Loss and accuracy per epoch (train solid, validation dash-dot, test dashed).

    Args:
        runs: a run folder (holding ``metrics.jsonl``), the file, a list of records, or a
            list of any of those (one colour per run).
        labels: one label per run; default the folder names.
        log: log scale for the loss panel.
        title: figure title.
    """
    items = _as_runs(runs)
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels has {len(labels)} entries for {len(items)} runs")
    fig = Figure(figsize=(10.0, 4.0), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    styles = {"train": "-", "val": "-.", "test": "--"}
    for i, (name, records) in enumerate(items):
        label = labels[i] if labels is not None else name
        curves = curves_from_records(records)
        for key in sorted(curves, key=metric_order):
            epoch, value = curves[key]
            split, _, what = key.partition("_")
            if split not in styles or what not in ("loss", "acc"):
                continue
            ax = loss_ax if what == "loss" else acc_ax
            ax.plot(epoch, value, styles[split], color=f"C{i}", label=f"{label} {split}")
    loss_ax.set_xlabel("epoch")
    loss_ax.set_ylabel("loss")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("accuracy (%)")
    if log:
        loss_ax.set_yscale("log")
    for ax in (loss_ax, acc_ax):
        if ax.lines:
            ax.legend(fontsize="x-small", loc="best")
    if title:
        fig.suptitle(title)
    return fig


def _as_runs(runs: Any) -> list[tuple[str, list[dict]]]:
    if isinstance(runs, str | os.PathLike):
        return [(_run_name(runs), read_metrics_jsonl(runs))]
    if isinstance(runs, Sequence) and runs and isinstance(runs[0], Mapping):
        return [("run", list(runs))]
    if isinstance(runs, Sequence):
        out = []
        for r in runs:
            out.extend(_as_runs(r))
        if not out:
            raise ValueError("runs must name at least one run")
        return out
    raise ValueError(f"runs must be a run folder, a metrics file or records, got {type(runs)}")


def _run_name(path: str | os.PathLike) -> str:
    p = Path(path)
    return p.name if p.is_dir() else p.parent.name or p.stem


def plot_metric_curves(
    comparisons: Any,
    metric: str | None = None,
    *,
    labels: Sequence[str] | None = None,
    log: bool = False,
    ax: Any = None,
) -> Figure:
    """Metrics of checkpoints against their epoch: curvature along training runs.

    Each run of each comparison (``landscape compare RUN/checkpoints/*.pt --out
    run.json``; the run of a row is the ``RUN`` of its checkpoint path) becomes one line
    through its rows sorted by epoch, with a band of ±1 standard error where the stderr
    is finite and positive.  Rows without an epoch or without a finite value are left out
    of the line, never filled in.

    Args:
        comparisons: a comparison JSON file, a :class:`landscape.compare.Comparison`,
            its ``to_dict()``, or a list of those.
        metric: the metric to draw; default one panel per metric (shared epoch axis).
        labels: one legend label per comparison; default the file stems, else
            ``comparison i`` (``label: run`` when a comparison holds several runs).
        log: logarithmic value axis.
        ax: axes to draw on (one metric only); default a new figure.

    Raises:
        ValueError: a comparison without epochs, an unknown ``metric`` (the message lists
            the available ones), nothing finite to plot, a label count that does not
            match, or ``ax`` with several metrics.
    """
    sets = comparison_curves(comparisons, labels)
    names = curve_metrics(sets, metric)
    if ax is not None:
        if len(names) != 1:
            raise ValueError(
                f"ax holds one panel; pass metric= (one of {', '.join(names)}) with it"
            )
        fig, axes = ax.figure, [ax]
    else:
        fig = Figure(figsize=(6.4, 1.0 + 2.4 * len(names)), layout="constrained")
        axes = list(fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0])
    for panel, name in zip(axes, names, strict=True):
        for i, s in enumerate(sets):
            curve = s.curves.get(name)
            if curve is None or curve.epoch.size == 0:
                continue
            color = f"C{i % 10}"
            panel.plot(curve.epoch, curve.value, "-o", ms=3, lw=1.4, color=color, label=s.label)
            has = np.isfinite(curve.stderr)
            if has.any():  # NaN stderr: a gap in the band
                panel.fill_between(
                    curve.epoch,
                    curve.value - curve.stderr,
                    curve.value + curve.stderr,
                    color=color,
                    alpha=0.25,
                    lw=0,
                )
            # A band point between two gaps has no width: show it as an error bar.
            alone = has & ~np.r_[False, has[:-1]] & ~np.r_[has[1:], False]
            if alone.any():
                panel.errorbar(
                    curve.epoch[alone],
                    curve.value[alone],
                    yerr=curve.stderr[alone],
                    fmt="none",
                    ecolor=color,
                    capsize=3,
                    lw=1.0,
                )
            if log and (curve.value <= 0).any():
                logger.warning(
                    "log scale: %s of %s has %d non-positive values, not drawn",
                    name,
                    s.label,
                    int((curve.value <= 0).sum()),
                )
        panel.set_ylabel(name)
        if log:
            panel.set_yscale("log")
        panel.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("epoch")
    axes[0].legend(loc="best", fontsize="small")
    return fig


def plot_correlation(
    correlation: Any,
    metric: str | None = None,
    *,
    ax: Any = None,
) -> Figure:
    """Measure against generalisation gap, one panel per metric, τ in the titles.

    One point per run, coloured by its value of the hyper-parameter axis with the most
    distinct values; the title gives Kendall's τ with its bootstrap interval and Ψ.

    Args:
        correlation: a :class:`landscape.correlation.Correlation`, its JSON file
            (``landscape correlate --out``) or its ``to_dict()``.
        metric: the metric to draw; default one panel per metric (side by side).
        ax: axes to draw on (one metric only); default a new figure.

    Raises:
        ValueError: not a correlation, an unknown ``metric``, or ``ax`` with several
            metrics.
    """
    panels = correlation_panels(correlation, metric)
    if ax is not None:
        if len(panels) != 1:
            raise ValueError("ax holds one panel; pass metric= with it")
        fig, axes = ax.figure, [ax]
    else:
        cols = min(len(panels), 3)
        rows = -(-len(panels) // cols)
        fig = Figure(figsize=(4.2 * cols, 0.6 + 3.4 * rows), layout="constrained")
        axes = list(fig.subplots(rows, cols, squeeze=False).ravel())
        for extra in axes[len(panels) :]:
            extra.set_visible(False)
    for panel, p in zip(axes, panels, strict=False):
        for i, (legend, x, y, _) in enumerate(p.series):
            panel.scatter(x, y, s=28, color=f"C{i % 10}", label=legend, alpha=0.85)
        panel.set_title(p.title, fontsize="medium")
        panel.set_xlabel(p.metric)
        panel.set_ylabel(f"gap ({p.gap})")
    if len(panels[0].series) > 1:
        axes[0].legend(loc="best", fontsize="small")
    return fig


# --- dispatch and saving ---------------------------------------------------------------


def plot_surface(
    surface: SurfaceLike, kind: str = "contour", metric: str = "train_loss", **kwargs: Any
) -> Figure:
    """Draw a surface as one of :data:`PLOT_KINDS` (what ``landscape plot`` calls).

    ``line`` draws 1-D surfaces (``metric`` alone, or every metric when ``metric`` is
    None); the other kinds need 2-D surfaces.
    """
    surface = as_surface(surface)
    if kind == "line":
        metrics = None if metric is None else [metric]
        kwargs.pop("levels", None)
        return plot_line(surface, metrics=metrics, **kwargs)
    if metric is None:
        metric = "train_loss"
    if kind in ("contour", "filled"):
        return plot_contour(surface, metric, filled=kind == "filled", **kwargs)
    if kind == "trajectory":
        return plot_trajectory(surface, metric, **kwargs)
    kwargs.pop("levels", None)
    if kind == "heatmap":
        return plot_heatmap(surface, metric, **kwargs)
    if kind == "surface":
        return plot_surface3d(surface, metric, **kwargs)
    raise ValueError(f"kind must be one of {PLOT_KINDS}, got {kind!r}")


def save_figure(fig: Figure, path: str | os.PathLike, *, dpi: int = 150) -> Path:
    """Save a matplotlib figure (format from the extension: png, pdf, svg, ...)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path
