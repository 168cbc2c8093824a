"""Draw stored results straight to a file, the format chosen by the extension.

:func:`plot_file` draws a surface; :func:`plot_curves_file` draws comparison files
(metrics against the epoch); :func:`plot_inputs` picks between them from the inputs,
as ``landscape plot`` does.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from landscape.plotting._common import SurfaceLike, as_surface, surface_ndim

__all__ = [
    "STATIC_FORMATS",
    "plot_correlation_file",
    "plot_curves_file",
    "plot_file",
    "plot_inputs",
]

#: Extensions drawn with matplotlib.
STATIC_FORMATS = (".png", ".pdf", ".svg", ".jpg", ".jpeg", ".eps", ".ps")


def plot_file(
    surface: SurfaceLike,
    out: str | os.PathLike,
    *,
    kind: str | None = None,
    metric: str | None = None,
    log: bool = False,
    levels: int = 30,
    vmin: float | None = None,
    vmax: float | None = None,
    scale: float = 1.0,
    dpi: int = 150,
) -> Path:
    """Draw ``surface`` into ``out``: picture, interactive page or mesh, by extension.

    - ``.png .pdf .svg .jpg .eps .ps``: a matplotlib figure of ``kind`` (see
      :data:`landscape.plotting.PLOT_KINDS`; default ``contour`` for 2-D (``heatmap`` for
      a grid of one row or column), ``line`` 1-D);
    - ``.html``: an offline plotly page (3-D surface for 2-D, curves for 1-D);
    - ``.vtp .vtu .vtk .obj .stl .ply .off``: a mesh of the 2-D surface.

    A mode-connectivity curve (:func:`landscape.connectivity.fit_curve`) is drawn with
    :func:`~landscape.plotting.static.plot_connectivity` (loss and error along the curve
    and the line) unless ``kind`` or ``metric`` asks for a plain 1-D plot.

    Args:
        surface: a surface or its HDF5 file.
        out: output path.
        kind: static plot kind.
        metric: stored metric (default ``train_loss``; for 1-D curves every metric).
        log: logarithmic levels, colours or heights.
        levels: number of contour levels.
        vmin: lower end of the colour range.
        vmax: upper end of the colour range.
        scale: height scale of mesh exports.
        dpi: resolution of raster images.
    """
    from landscape.connectivity import is_curve_file
    from landscape.plotting.export import MESH_FORMATS, export_surface

    surface = as_surface(surface)
    out = Path(out)
    ext = out.suffix.lower()
    two_d = surface_ndim(surface) == 2
    if is_curve_file(surface) and kind in (None, "line") and metric is None:
        return _plot_curve_file(surface, out, log=log, dpi=dpi)
    if kind is None:
        kind = "contour" if two_d else "line"
        if two_d and min(len(surface.x), len(surface.y)) < 2:
            kind = "heatmap"  # one row or column: no contour lines to draw
    if ext in MESH_FORMATS:
        return export_surface(surface, out, metric or "train_loss", scale=scale, log=log)
    if ext in (".html", ".htm"):
        from landscape.plotting.interactive import interactive_line, interactive_surface, write_html

        if two_d:
            fig: Any = interactive_surface(
                surface, metric or "train_loss", log=log, vmin=vmin, vmax=vmax
            )
        else:
            fig = interactive_line(surface, metrics=None if metric is None else [metric], log=log)
        return write_html(fig, out, title=out.stem)
    if ext in STATIC_FORMATS:
        from landscape.plotting.static import plot_surface, save_figure

        kwargs: dict[str, Any] = {"log": log}
        if kind != "line":
            kwargs.update(vmin=vmin, vmax=vmax)
        if kind in ("contour", "filled", "trajectory"):
            kwargs["levels"] = levels
        fig = plot_surface(
            surface, kind, metric if metric or kind == "line" else "train_loss", **kwargs
        )
        return save_figure(fig, out, dpi=dpi)
    raise ValueError(
        f"--out must end in one of {(*STATIC_FORMATS, '.html', *MESH_FORMATS)}, got {out.name!r}"
    )


def _plot_curve_file(surface: Any, out: Path, *, log: bool, dpi: int) -> Path:
    ext = out.suffix.lower()
    if ext in (".html", ".htm"):
        from landscape.plotting.interactive import interactive_connectivity, write_html

        return write_html(interactive_connectivity(surface, log=log), out, title=out.stem)
    if ext in STATIC_FORMATS:
        from landscape.plotting.static import plot_connectivity, save_figure

        return save_figure(plot_connectivity(surface, log=log), out, dpi=dpi)
    raise ValueError(f"--out must end in one of {(*STATIC_FORMATS, '.html')}, got {out.name!r}")


def _check_suffix(out: Path, what: str, allowed: tuple[str, ...]) -> str:
    from landscape.plotting.export import MESH_FORMATS

    ext = out.suffix.lower()
    if ext in allowed:
        return ext
    if ext in MESH_FORMATS:
        raise ValueError(f"--out {out.name!r}: {what} is drawn as {allowed}, not as a mesh")
    raise ValueError(f"--out must end in one of {allowed} for {what}, got {out.name!r}")


def plot_curves_file(
    comparisons: Any,
    out: str | os.PathLike,
    *,
    metric: str | None = None,
    labels: Sequence[str] | None = None,
    log: bool = False,
    dpi: int = 150,
) -> Path:
    """Draw comparisons' metrics against the epoch into ``out`` (format by extension).

    ``.png .pdf .svg .jpg .eps .ps``: :func:`landscape.plotting.static.plot_metric_curves`;
    ``.html``: :func:`landscape.plotting.interactive.interactive_metric_curves` as an
    offline page.

    Args:
        comparisons: comparison JSON files (``landscape compare --out``), ``Comparison``
            objects or their ``to_dict()``; one line per run of each.
        out: output path.
        metric: draw only this metric (default one panel per metric).
        labels: one legend label per comparison (default the file stems).
        log: logarithmic value axes.
        dpi: resolution of raster images.
    """
    out = Path(out)
    ext = _check_suffix(out, "a comparison", (*STATIC_FORMATS, ".html", ".htm"))
    if ext in (".html", ".htm"):
        from landscape.plotting.interactive import interactive_metric_curves, write_html

        fig: Any = interactive_metric_curves(comparisons, metric, labels=labels, log=log)
        return write_html(fig, out, title=out.stem)
    from landscape.plotting.static import plot_metric_curves, save_figure

    fig = plot_metric_curves(comparisons, metric, labels=labels, log=log)
    return save_figure(fig, out, dpi=dpi)


def plot_correlation_file(
    correlation: Any, out: str | os.PathLike, *, metric: str | None = None, dpi: int = 150
) -> Path:
    """Draw a correlation's measure-vs-gap scatters into ``out`` (format by extension).

    ``.png .pdf .svg .jpg .eps .ps``: :func:`landscape.plotting.static.plot_correlation`;
    ``.html``: :func:`landscape.plotting.interactive.interactive_correlation` as an
    offline page.

    Args:
        correlation: a :class:`landscape.correlation.Correlation`, its JSON file or dict.
        out: output path.
        metric: draw only this metric (default one panel per metric).
        dpi: resolution of raster images.
    """
    out = Path(out)
    ext = _check_suffix(out, "a correlation", (*STATIC_FORMATS, ".html", ".htm"))
    if ext in (".html", ".htm"):
        from landscape.plotting.interactive import interactive_correlation, write_html

        fig: Any = interactive_correlation(correlation, metric)
        return write_html(fig, out, title=out.stem)
    from landscape.plotting.static import plot_correlation, save_figure

    fig = plot_correlation(correlation, metric)
    return save_figure(fig, out, dpi=dpi)


def plot_inputs(
    inputs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    kind: str | None = None,
    metric: str | None = None,
    labels: Sequence[str] | None = None,
    log: bool = False,
    levels: int | None = None,
    vmin: float | None = None,
    vmax: float | None = None,
    scale: float | None = None,
    dpi: int = 150,
) -> Path:
    """Draw one surface file or one or more comparison files (what ``landscape plot`` calls).

    ``.json`` inputs are comparisons (metric curves against the epoch, one line per
    run, see :func:`plot_curves_file`); any other input is a surface file, drawn alone
    by :func:`plot_file`.  The surface options (``kind``, ``levels``, ``vmin``,
    ``vmax``, ``scale``) apply to surfaces only and ``labels`` to comparisons only;
    ``None`` means not given.

    Raises:
        ValueError: no input, surfaces mixed with comparisons, several surfaces, or an
            option that does not apply to the inputs (the message names the option).
    """
    items = [inputs] if isinstance(inputs, str | os.PathLike) else list(inputs)
    paths = [Path(p) for p in items]
    if not paths:
        raise ValueError("inputs must name a surface file or comparison .json files")
    is_json = [p.suffix.lower() == ".json" for p in paths]
    if any(is_json) and not all(is_json):
        mixed = ", ".join(p.name for p in paths)
        raise ValueError(
            f"inputs mix comparison .json files and surface files ({mixed}): "
            "plot one surface, or one or more comparisons"
        )
    if all(is_json):
        surface_only = (
            ("--kind", kind),
            ("--levels", levels),
            ("--vmin", vmin),
            ("--vmax", vmax),
            ("--scale", scale),
        )
        given = [name for name, value in surface_only if value is not None]
        if given:
            verb = "applies" if len(given) == 1 else "apply"
            raise ValueError(f"{', '.join(given)} {verb} to surface files, not to comparisons")
        return plot_curves_file(paths, out, metric=metric, labels=labels, log=log, dpi=dpi)
    if len(paths) > 1:
        raise ValueError(
            f"inputs: plot draws one surface file at a time, got {len(paths)} "
            "(several inputs must be comparison .json files)"
        )
    if labels is not None:
        raise ValueError("--labels applies to comparison files, not to a surface")
    return plot_file(
        paths[0],
        out,
        kind=kind,
        metric=metric,
        log=log,
        levels=30 if levels is None else levels,
        vmin=vmin,
        vmax=vmax,
        scale=1.0 if scale is None else scale,
        dpi=dpi,
    )
