"""Pictures of loss landscapes: static (matplotlib), interactive (plotly), mesh export.

- :mod:`landscape.plotting.static`: 1-D curves, contours, filled contours, heatmaps, 3-D
  surfaces, the training path on its PCA plane, spectral densities, training curves,
  metrics of checkpoints against the epoch, a grid of surfaces on one colour scale;
  every function returns a matplotlib ``Figure``.
- :mod:`landscape.plotting.interactive`: plotly 3-D surfaces with hover and contour
  projections, several surfaces in one togglable scene, metric curves, offline HTML
  pages.
- :mod:`landscape.plotting.export`: ParaView ``.vtp``, ``.obj``, ``.stl`` and other
  meshes through meshio.

Names are imported lazily so that ``import landscape.plotting`` loads neither
matplotlib nor plotly.
"""

from __future__ import annotations

import importlib
from typing import Any

_NAMES = {
    # static (matplotlib)
    "PLOT_KINDS": "static",
    "plot_connectivity": "static",
    "plot_contour": "static",
    "plot_correlation": "static",
    "plot_heatmap": "static",
    "plot_line": "static",
    "plot_metric_curves": "static",
    "plot_spectrum": "static",
    "plot_surface": "static",
    "plot_surface3d": "static",
    "plot_surface_grid": "static",
    "plot_training_curves": "static",
    "plot_trajectory": "static",
    "save_figure": "static",
    # interactive (plotly)
    "figures_to_html": "interactive",
    "interactive_connectivity": "interactive",
    "interactive_contours": "interactive",
    "interactive_correlation": "interactive",
    "interactive_line": "interactive",
    "interactive_metric_curves": "interactive",
    "interactive_spectrum": "interactive",
    "interactive_surface": "interactive",
    "interactive_surfaces": "interactive",
    "interactive_training_curves": "interactive",
    "write_html": "interactive",
    # files by extension
    "STATIC_FORMATS": "files",
    "plot_correlation_file": "files",
    "plot_curves_file": "files",
    "plot_file": "files",
    "plot_inputs": "files",
    # meshes (meshio)
    "MESH_FORMATS": "export",
    "export_surface": "export",
    "read_mesh": "export",
    "surface_to_mesh": "export",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str) -> Any:
    try:
        module = _NAMES[name]
    except KeyError:
        raise AttributeError(f"module 'landscape.plotting' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(f"landscape.plotting.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_NAMES))
