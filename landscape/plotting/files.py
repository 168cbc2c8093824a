"""Draw a stored surface straight to a file, the format chosen by the extension."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from landscape.plotting._common import SurfaceLike, as_surface, surface_ndim

__all__ = ["STATIC_FORMATS", "plot_file"]

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
      :data:`landscape.plotting.PLOT_KINDS`; default ``contour`` for 2-D, ``line`` 1-D);
    - ``.html``: an offline plotly page (3-D surface for 2-D, curves for 1-D);
    - ``.vtp .vtu .vtk .obj .stl .ply .off``: a mesh of the 2-D surface.

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
    from landscape.plotting.export import MESH_FORMATS, export_surface

    surface = as_surface(surface)
    out = Path(out)
    ext = out.suffix.lower()
    two_d = surface_ndim(surface) == 2
    if kind is None:
        kind = "contour" if two_d else "line"
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
