"""sharpscape: loss landscapes, Hessian curvature and sharpness of PyTorch models.

The public API is grouped by area; names are imported lazily on first use so that
``import landscape`` stays cheap (no matplotlib/plotly/h5py until needed).
"""

from __future__ import annotations

import importlib
from typing import Any

from landscape._version import __version__

# name -> module that defines it.  Each area keeps its own block.
_LAZY: dict[str, str] = {
    # --- evaluation core -------------------------------------------------------
    "Objective": "landscape.objective",
    "BatchAdapter": "landscape.batches",
    "math_attention": "landscape.batches",
    "select_parameters": "landscape.params",
    "linear_barrier": "landscape.connectivity",
    "BarrierResult": "landscape.connectivity",
    "fit_curve": "landscape.connectivity",
    "curve_profile": "landscape.connectivity",
    "read_curve": "landscape.connectivity",
    "CurveResult": "landscape.connectivity",
    # --- data, models, training, checkpoints (issue: training) ----------------
    "DATA_NAMES": "landscape.data",
    "DataBundle": "landscape.data",
    "load_data": "landscape.data",
    "MODEL_NAMES": "landscape.models",
    "build_model": "landscape.models",
    "train": "landscape.training",
    "TrainResult": "landscape.training",
    "Checkpoint": "landscape.checkpoint",
    "load_checkpoint": "landscape.checkpoint",
    "save_checkpoint": "landscape.checkpoint",
    "run_checkpoints": "landscape.checkpoint",
    "file_sha256": "landscape.checkpoint",
    "UserModel": "landscape.user",
    # --- directions, surfaces, HDF5 store (issue: surfaces) -------------------
    "Surface": "landscape.store",
    "read_surface": "landscape.store",
    "compute_surface": "landscape.surface",
    "surface_from_checkpoint": "landscape.surface",
    "parse_grid": "landscape.surface",
    "GridSpec": "landscape.surface",
    "Directions": "landscape.directions",
    "random_directions": "landscape.directions",
    "interpolation_directions": "landscape.directions",
    "plane_directions": "landscape.directions",
    "pca_directions": "landscape.directions",
    "custom_directions": "landscape.directions",
    # --- Hessian, estimators, metrics, comparison (issue: curvature) ----------
    "HessianOperator": "landscape.hessian",
    "lanczos_eigen": "landscape.hessian",
    "power_iteration": "landscape.hessian",
    "layer_eigenvalues": "landscape.hessian",
    "hutchinson_trace": "landscape.hessian",
    "hutchpp_trace": "landscape.hessian",
    "fd_trace": "landscape.hessian",
    "slq_density": "landscape.hessian",
    "block_trace": "landscape.hessian",
    "ggn_trace": "landscape.hessian",
    "METRICS": "landscape.metrics",
    "MetricResult": "landscape.metrics",
    "compute_metrics": "landscape.metrics",
    "Comparison": "landscape.compare",
    "compare_checkpoints": "landscape.compare",
    "compare_models": "landscape.compare",
    "CompareInterrupted": "landscape.compare",
    # --- plots, interactive figures, export, report (issue: seeing it) --------
    "plot_surface": "landscape.plotting.static",
    "plot_contour": "landscape.plotting.static",
    "plot_trajectory": "landscape.plotting.static",
    "plot_spectrum": "landscape.plotting.static",
    "plot_connectivity": "landscape.plotting.static",
    "plot_surface_grid": "landscape.plotting.static",
    "plot_training_curves": "landscape.plotting.static",
    "plot_metric_curves": "landscape.plotting.static",
    "interactive_surface": "landscape.plotting.interactive",
    "interactive_surfaces": "landscape.plotting.interactive",
    "interactive_metric_curves": "landscape.plotting.interactive",
    "write_html": "landscape.plotting.interactive",
    "export_surface": "landscape.plotting.export",
    "plot_file": "landscape.plotting.files",
    "build_report": "landscape.report",
    "run_demo": "landscape.demo",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'landscape' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
