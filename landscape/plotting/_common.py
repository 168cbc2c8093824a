"""Shared helpers of the plotting modules: loading inputs and preparing values.

Every plot takes a :class:`landscape.store.Surface` or the path of an HDF5 file in the
layout of ``analysis.md`` (read with :func:`landscape.store.read_surface`), picks one
metric, masks unfinished and non-finite cells and, for log scales, positive values.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

SurfaceLike = Any  # a landscape.store.Surface, or a path to one

_LOSS_LABELS = {
    "train_loss": "train loss",
    "test_loss": "test loss",
    "train_acc": "train accuracy (%)",
    "test_acc": "test accuracy (%)",
}


def as_surface(surface: SurfaceLike) -> Any:
    """Return ``surface`` itself, or the surface stored at that path, in increasing order.

    A grid given in another order (``x=[1, -1, 0]``) is drawn sorted: a copy with its
    coordinates increasing and its values (and ``done``) reordered alike.
    """
    if isinstance(surface, str | os.PathLike):
        path = Path(surface)
        if not path.exists():
            raise FileNotFoundError(f"surface file not found: {path}")
        from landscape.store import read_surface

        surface = read_surface(path)
    if not hasattr(surface, "values") or not hasattr(surface, "x"):
        raise ValueError(
            f"surface must be a landscape.store.Surface or a path, got {type(surface).__name__}"
        )
    return _sorted_grid(surface)


def _sorted_grid(surface: Any) -> Any:
    """``surface``, or a copy whose coordinates increase (values reordered alike)."""
    import dataclasses

    x = np.asarray(surface.x, dtype=np.float64)
    y = None if getattr(surface, "y", None) is None else np.asarray(surface.y, dtype=np.float64)
    if np.all(np.diff(x) >= 0) and (y is None or np.all(np.diff(y) >= 0)):
        return surface
    if not dataclasses.is_dataclass(surface):
        return surface
    ix, iy = np.argsort(x, kind="stable"), None if y is None else np.argsort(y, kind="stable")

    def order(a: Any) -> Any:
        a = np.asarray(a)
        return a[..., ix] if iy is None else a[iy][:, ix]

    return dataclasses.replace(
        surface,
        x=x[ix],
        y=None if y is None else y[iy],
        values={k: order(v) for k, v in surface.values.items()},
        done=order(surface.done),
    )


def surface_ndim(surface: Any) -> int:
    """Number of grid dimensions (1 or 2) of a surface."""
    ndim = getattr(surface, "ndim", None)
    if ndim is None:
        ndim = 1 if getattr(surface, "y", None) is None else 2
    return int(ndim)


def load_surfaces(
    surfaces: Iterable[SurfaceLike],
    labels: Sequence[str] | None = None,
    *,
    labels_name: str = "labels",
    need_2d: str | None = None,
) -> tuple[list[Any], list[str]]:
    """Load several surfaces (objects or files) with one label each.

    Args:
        surfaces: surfaces or their files; at least one (a single one is taken as such).
        labels: one label per surface; default each surface's file name.
        labels_name: the caller's name for ``labels`` (error messages).
        need_2d: when given, the caller's name: every surface must be 2-D.

    Raises:
        ValueError: no surface, a 1-D surface where 2-D is needed, or a label count
            that does not match.
    """
    if isinstance(surfaces, str | os.PathLike) or hasattr(surfaces, "values"):
        surfaces = [surfaces]  # one surface (or its file) is a list of one, not an iterable
    loaded = [as_surface(s) for s in surfaces]
    if not loaded:
        raise ValueError("surfaces must hold at least one surface")
    if need_2d is not None and any(surface_ndim(s) != 2 for s in loaded):
        raise ValueError(f"{need_2d} needs 2-D surfaces")
    if labels is not None and len(labels) != len(loaded):
        raise ValueError(f"{labels_name} has {len(labels)} entries for {len(loaded)} surfaces")
    names = list(labels) if labels is not None else [surface_label(s) for s in loaded]
    return loaded, names


def surface_label(surface: Any, default: str = "surface") -> str:
    """A short human label for a surface (its file stem, else ``default``)."""
    path = getattr(surface, "path", None)
    return Path(path).stem if path else default


def metric_label(metric: str) -> str:
    """Axis label of a metric name."""
    return _LOSS_LABELS.get(metric, metric.replace("_", " "))


def metric_order(name: str) -> tuple[int, str]:
    """Sort key putting train metrics first, then validation, then test, then others."""
    for rank, prefix in enumerate(("train", "val", "test")):
        if name.startswith(prefix):
            return (rank, name)
    return (3, name)


def is_accuracy(metric: str) -> bool:
    """True for accuracy-like metrics (higher is better, percent)."""
    return metric.endswith("acc") or metric.endswith("accuracy")


def metric_values(surface: Any, metric: str) -> np.ndarray:
    """The float64 values of ``metric`` with unfinished or non-finite cells set to NaN.

    Shape (nx,) for 1-D surfaces and (ny, nx) for 2-D ones (rows are y).
    """
    values = getattr(surface, "values", {}) or {}
    if metric not in values:
        raise ValueError(
            f"metric {metric!r} is not in the surface; available: {sorted(values) or 'none'}"
        )
    z = np.array(values[metric], dtype=np.float64, copy=True)
    done = getattr(surface, "done", None)
    if done is not None:
        done = np.asarray(done, dtype=bool)
        if done.shape == z.shape:
            z[~done] = np.nan
    z[~np.isfinite(z)] = np.nan
    x = np.asarray(surface.x, dtype=np.float64)
    if surface_ndim(surface) == 2:
        y = np.asarray(surface.y, dtype=np.float64)
        if z.shape != (y.size, x.size):
            raise ValueError(
                f"metric {metric!r} has shape {z.shape}, expected (ny, nx) = {(y.size, x.size)}"
            )
    elif z.shape != (x.size,):
        raise ValueError(f"metric {metric!r} has shape {z.shape}, expected (nx,) = {(x.size,)}")
    return z


def positive_floor(z: np.ndarray) -> float:
    """Smallest positive finite value of ``z`` (for log scales)."""
    pos = z[np.isfinite(z) & (z > 0)]
    if pos.size == 0:
        raise ValueError("log scale needs positive values, and the metric has none")
    return float(pos.min())


def for_log(z: np.ndarray) -> np.ndarray:
    """Copy of ``z`` with non-positive values raised to the smallest positive one."""
    floor = positive_floor(z)
    out = z.copy()
    bad = np.isfinite(out) & (out <= 0)
    if bad.any():
        logger.warning("log scale: %d non-positive cells shown at %.3g", int(bad.sum()), floor)
        out[bad] = floor
    return out


def value_range(
    arrays: Iterable[np.ndarray], vmin: float | None, vmax: float | None, log: bool
) -> tuple[float, float]:
    """Shared (vmin, vmax) over several arrays, ignoring NaN; positive for log scales."""
    finite = [a[np.isfinite(a)] for a in arrays]
    finite = [a[a > 0] if log else a for a in finite]
    finite = [a for a in finite if a.size]
    if not finite:
        raise ValueError("nothing to plot: every cell is NaN or unfinished")
    lo = min(float(a.min()) for a in finite) if vmin is None else float(vmin)
    hi = max(float(a.max()) for a in finite) if vmax is None else float(vmax)
    if log and lo <= 0:
        raise ValueError(f"vmin must be positive on a log scale, got {lo}")
    if hi <= lo:  # a flat surface still needs a non-empty range
        pad = abs(lo) * 1e-3 or 1e-3
        lo, hi = (lo / (1 + 1e-3), hi * (1 + 1e-3)) if log else (lo - pad, hi + pad)
    return lo, hi


def contour_levels(lo: float, hi: float, levels: int | Sequence[float], log: bool) -> np.ndarray:
    """Contour levels: explicit values, or ``levels`` many spaced evenly (geometric if log)."""
    if not isinstance(levels, int | np.integer):
        out = np.asarray(sorted(float(v) for v in levels), dtype=np.float64)
        if out.size < 2:
            raise ValueError("levels must give at least two values")
        return out
    if levels < 2:
        raise ValueError(f"levels must be at least 2, got {levels}")
    if log:
        return np.geomspace(lo, hi, int(levels))
    return np.linspace(lo, hi, int(levels))


def cell_edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges around grid centres (midpoints; ends extended by half a step)."""
    c = np.asarray(centres, dtype=np.float64)
    if c.size == 1:
        return np.array([c[0] - 0.5, c[0] + 0.5])
    mid = (c[1:] + c[:-1]) / 2
    return np.concatenate([[c[0] - (mid[0] - c[0])], mid, [c[-1] + (c[-1] - mid[-1])]])


def axis_labels(surface: Any) -> tuple[str, str]:
    """Labels of the two direction axes, with PCA explained variance when stored."""
    attrs = getattr(surface, "attrs", {}) or {}
    ratio = None
    for key in ("explained_variance_ratio", "explained_variance", "pca_explained_variance"):
        if key in attrs:
            ratio = np.atleast_1d(np.asarray(attrs[key], dtype=np.float64))
            break
    if ratio is not None and ratio.size >= 2:
        return (f"PC1 ({100 * ratio[0]:.1f} %)", f"PC2 ({100 * ratio[1]:.1f} %)")
    return ("α (x direction)", "β (y direction)")


def trajectory_of(surface: Any) -> np.ndarray | None:
    """The (T, 2) projected training path stored with a surface, or None."""
    traj = getattr(surface, "trajectory", None)
    if traj is None:
        return None
    traj = np.asarray(traj, dtype=np.float64)
    if traj.ndim != 2 or traj.shape[1] != 2 or traj.shape[0] == 0:
        return None
    return traj


def interpolate_on_grid(surface: Any, z: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Bilinear interpolation of the (ny, nx) grid ``z`` at (x, y) ``points``.

    Points outside the grid get NaN; NaN cells propagate.
    """
    from scipy.interpolate import RegularGridInterpolator

    x = np.asarray(surface.x, dtype=np.float64)
    y = np.asarray(surface.y, dtype=np.float64)
    interp = RegularGridInterpolator((y, x), z, bounds_error=False, fill_value=np.nan)
    return interp(np.column_stack([points[:, 1], points[:, 0]]))


# --- spectra and training curves ------------------------------------------------------


@dataclass
class Spectrum:
    """A spectral density on a grid (what :func:`landscape.hessian.slq_density` returns)."""

    grid: np.ndarray
    density: np.ndarray
    label: str = "spectrum"
    lambda_min: float | None = None
    lambda_max: float | None = None


def as_spectrum(obj: Any, label: str | None = None) -> Spectrum:
    """A :class:`Spectrum` from a density result, its ``to_dict()``, or a JSON file of it.

    JSON files may hold the dict itself or nest it under a ``"density"`` key (as written by
    ``landscape hessian --out``).
    """
    if isinstance(obj, Spectrum):
        return obj
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if not path.exists():
            raise FileNotFoundError(f"spectral density file not found: {path}")
        with path.open() as fh:
            data = json.load(fh)
        found = find_density_dict(data)
        if found is None:
            raise ValueError(f"{path} holds no spectral density (no 'grid' and 'density')")
        return as_spectrum(found, label or path.stem)
    if isinstance(obj, Mapping):
        if "grid" not in obj or "density" not in obj:
            raise ValueError("a spectral density needs 'grid' and 'density'")
        get = obj.get
    elif hasattr(obj, "grid") and hasattr(obj, "density"):

        def get(key: str, default: Any = None) -> Any:
            return getattr(obj, key, default)

    else:
        raise ValueError(f"not a spectral density: {type(obj).__name__}")
    grid = np.asarray(_numpy(get("grid")), dtype=np.float64).ravel()
    density = np.asarray(_numpy(get("density")), dtype=np.float64)
    if density.ndim > 1:  # several runs: average them
        density = density.reshape(-1, grid.size).mean(axis=0)
    if density.shape != grid.shape:
        raise ValueError(f"density shape {density.shape} does not match grid {grid.shape}")
    lmin, lmax = get("lambda_min"), get("lambda_max")
    return Spectrum(
        grid=grid,
        density=density,
        label=label or str(get("label") or "spectrum"),
        lambda_min=None if lmin is None else float(_numpy(lmin)),
        lambda_max=None if lmax is None else float(_numpy(lmax)),
    )


def find_density_dict(data: Any) -> Mapping | None:
    """The first mapping with 'grid' and 'density' keys inside a JSON document."""
    if isinstance(data, Mapping):
        if "grid" in data and "density" in data:
            return data
        for value in data.values():
            found = find_density_dict(value)
            if found is not None:
                return found
    elif isinstance(data, list):
        for value in data:
            found = find_density_dict(value)
            if found is not None:
                return found
    return None


def _numpy(value: Any) -> Any:
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    return value


def read_metrics_jsonl(path: str | os.PathLike) -> list[dict]:
    """Records of a run's ``metrics.jsonl`` (a run folder or the file itself)."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"training metrics not found: {path}")
    records = []
    with path.open() as fh:
        for n, line in enumerate(fh, 1):
            line = line.strip()
            if not line:
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{n}: not JSON ({exc.msg})") from None
    return records


def curves_from_records(records: Sequence[Mapping]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-metric (epoch, value) arrays from training records (numeric fields only)."""
    out: dict[str, tuple[list, list]] = {}
    for i, rec in enumerate(records):
        epoch = rec.get("epoch", i)
        for key, value in rec.items():
            if key in ("epoch", "time") or isinstance(value, bool):
                continue
            if isinstance(value, int | float) and math.isfinite(value):
                out.setdefault(key, ([], []))
                out[key][0].append(epoch)
                out[key][1].append(value)
    return {k: (np.asarray(e, dtype=np.float64), np.asarray(v)) for k, (e, v) in out.items()}


# --- metric curves along training (comparison files) ----------------------------------

_NO_EPOCH = (
    "rows have no epoch: plot needs checkpoints with an epoch, e.g. RUN/checkpoints/epoch_*.pt"
)


@dataclass
class MetricCurve:
    """One metric of one comparison against the epoch, sorted by epoch.

    Rows without an epoch or without a finite value are left out; ``stderr`` is NaN
    where the row has no finite, positive standard error.
    """

    epoch: np.ndarray
    value: np.ndarray
    stderr: np.ndarray
    rows: list[str]


@dataclass
class ComparisonCurves:
    """The metric curves of one comparison (one line per metric)."""

    label: str
    metrics: list[str]
    curves: dict[str, MetricCurve]


def is_comparison_like(obj: Any) -> bool:
    """True for a comparison object or its ``to_dict()`` (not for paths or sequences)."""
    if isinstance(obj, Mapping):
        return isinstance(obj.get("rows"), list)
    return hasattr(obj, "rows") and hasattr(obj, "metrics")


def comparison_metrics(rows: Sequence[Mapping], metrics: Sequence[str] | None) -> list[str]:
    """The metric names of a comparison: its list, else every row key holding a value cell."""
    if metrics:
        return [str(m) for m in metrics]
    found: list[str] = []
    for row in rows:
        for key, cell in row.items():
            if isinstance(cell, Mapping) and "value" in cell and key not in found:
                found.append(key)
    return found


def _float(value: Any) -> float:
    if value is None or isinstance(value, bool):
        return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _load_comparison(obj: Any) -> tuple[list[str], list[Mapping], str | None]:
    """(metrics, rows, file stem or None) of a comparison, its dict or its JSON file."""
    if isinstance(obj, str | os.PathLike):
        path = Path(obj)
        if not path.is_file():
            raise FileNotFoundError(f"comparison file not found: {path}")
        from landscape.compare import Comparison

        comp = Comparison.read_json(path)
        return list(comp.metrics), list(comp.rows), path.stem
    if isinstance(obj, Mapping):
        if not isinstance(obj.get("rows"), list):
            raise ValueError("a comparison dict needs a 'rows' list")
        source = obj.get("_source")  # set by the report for files it read
        stem = Path(source).stem if source and source != "computed" else None
        rows = [r for r in obj["rows"] if isinstance(r, Mapping)]
        return comparison_metrics(rows, obj.get("metrics")), rows, stem
    if is_comparison_like(obj):
        rows = list(obj.rows)
        return comparison_metrics(rows, obj.metrics), rows, None
    raise ValueError(
        "comparisons must be comparison JSON files, Comparison objects or their to_dict(), "
        f"got {type(obj).__name__}"
    )


def _distinct_labels(stems: list[str | None], sources: list[Any]) -> list[str]:
    """File stems (with the parent folder when stems repeat), else ``comparison i``."""
    labels = [s if s is not None else f"comparison {i + 1}" for i, s in enumerate(stems)]
    for i, (stem, src) in enumerate(zip(stems, sources, strict=True)):
        if stem is not None and stems.count(stem) > 1:
            path = Path(src if isinstance(src, str | os.PathLike) else src.get("_source", ""))
            if path.parent.name:
                labels[i] = f"{path.parent.name}/{path.stem}"
    return labels


def metric_curve(rows: Sequence[Mapping], metric: str) -> MetricCurve:
    """The curve of ``metric`` over the rows that have an epoch and a finite value."""
    points = []
    for n, row in enumerate(rows):
        epoch, cell = row.get("epoch"), row.get(metric)
        if epoch is None or not isinstance(cell, Mapping):
            continue
        value = _float(cell.get("value"))
        if not math.isfinite(value):
            continue
        stderr = _float(cell.get("stderr"))
        if not (math.isfinite(stderr) and stderr > 0):
            stderr = math.nan
        label = str(row.get("label") or row.get("checkpoint") or f"row {n}")
        points.append((float(epoch), value, stderr, label))
    points.sort(key=lambda p: p[0])  # stable: rows at the same epoch keep their order
    return MetricCurve(
        epoch=np.array([p[0] for p in points], dtype=np.float64),
        value=np.array([p[1] for p in points], dtype=np.float64),
        stderr=np.array([p[2] for p in points], dtype=np.float64),
        rows=[p[3] for p in points],
    )


def run_of(checkpoint: Any) -> str:
    """The run of a checkpoint path: ``RUN`` of ``RUN/checkpoints/x.pt``, else its folder."""
    parent = Path(str(checkpoint)).parent
    return str(parent.parent if parent.name == "checkpoints" else parent)


def _by_run(rows: Sequence[Mapping]) -> list[tuple[str, list[Mapping]]]:
    """Rows grouped by the run folder of their checkpoint, in order of first appearance.

    Rows without a checkpoint path (in-memory models) form one group with the rest of
    the unnamed ones.
    """
    groups: dict[str, list[Mapping]] = {}
    for row in rows:
        checkpoint = row.get("checkpoint")
        groups.setdefault(run_of(checkpoint) if checkpoint else "", []).append(row)
    return list(groups.items())


def _run_names(runs: Sequence[str]) -> list[str]:
    """Short names of run folders: the last path component, more when they collide."""
    parts = [Path(r).parts or ("",) for r in runs]
    for depth in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return list(runs)


def comparison_curves(
    comparisons: Any, labels: Sequence[str] | None = None
) -> list[ComparisonCurves]:
    """Per-metric curves against the epoch of one or several comparisons.

    A comparison whose rows come from several run folders (``RUN/checkpoints/*.pt`` of
    more than one ``RUN``) gives one line per run, labelled ``label: run`` (just the run's
    name when there is one comparison).

    Args:
        comparisons: a comparison JSON file (``landscape compare --out``), a
            :class:`landscape.compare.Comparison`, its ``to_dict()``, or a list of those.
        labels: one line label per comparison; default the file stem (with its folder
            when stems repeat), else ``comparison i``.

    Raises:
        ValueError: no comparison, a label count that does not match, or a comparison
            whose rows have no epoch.
        FileNotFoundError: a comparison file is missing.
    """
    single = isinstance(comparisons, str | os.PathLike | Mapping) or is_comparison_like(comparisons)
    items = [comparisons] if single else list(comparisons)
    if not items:
        raise ValueError("comparisons must hold at least one comparison")
    if labels is not None and len(labels) != len(items):
        raise ValueError(f"labels has {len(labels)} entries for {len(items)} comparisons")
    loaded = [_load_comparison(c) for c in items]
    names = (
        [str(x) for x in labels]
        if labels is not None
        else _distinct_labels([stem for _, _, stem in loaded], items)
    )
    out = []
    for (metrics, rows, _), name in zip(loaded, names, strict=True):
        if not any(r.get("epoch") is not None for r in rows):
            raise ValueError(f"{name}: {_NO_EPOCH}")
        groups = _by_run(rows)
        run_names = _run_names([run for run, _ in groups])
        for (_, group), run_name in zip(groups, run_names, strict=True):
            label = name
            if len(groups) > 1:
                label = run_name if len(items) == 1 and labels is None else f"{name}: {run_name}"
            epochs = [r["epoch"] for r in group if r.get("epoch") is not None]
            if len(set(epochs)) < len(epochs):
                logger.warning(
                    "%s: several rows share an epoch; its line joins them in file order",
                    label,
                )
            curves = {m: metric_curve(group, m) for m in metrics}
            out.append(ComparisonCurves(label, list(metrics), curves))
    return out


def curve_metrics(sets: Sequence[ComparisonCurves], metric: str | None) -> list[str]:
    """The metrics to draw: ``metric`` alone, else every one with a point to plot.

    Raises:
        ValueError: ``metric`` is in no comparison (the message lists the available
            ones), or there is nothing finite to plot.
    """
    available: list[str] = []
    for s in sets:
        available += [m for m in s.metrics if m not in available]
    if metric is not None:
        if metric not in available:
            raise ValueError(
                f"metric {metric!r} is not in the comparisons; available: "
                f"{', '.join(available) or 'none'}"
            )
        chosen = [metric]
    else:
        chosen = available
    drawn = [m for m in chosen if any(m in s.curves and s.curves[m].epoch.size for s in sets)]
    if not drawn:
        what = f"metric {metric!r} has" if metric is not None else "the comparisons have"
        raise ValueError(f"nothing to plot: {what} no finite value at any epoch")
    return drawn


# --- correlation with generalisation ---------------------------------------------------


@dataclass
class CorrelationPanel:
    """One metric of a correlation, ready to draw: points by value of the colour axis.

    Attributes:
        metric: the measure (x axis).
        title: ``metric: τ = ... [lo, hi], Ψ = ...``.
        gap: the y axis label.
        series: ``(legend label, x, y, point labels)`` per value of the colour axis.
    """

    metric: str
    title: str
    gap: str
    series: list[tuple[str, np.ndarray, np.ndarray, list[str]]]


def _correlation_dict(corr: Any) -> Mapping:
    """The correlation section of a :class:`~landscape.correlation.Correlation`, dict or file."""
    if isinstance(corr, str | os.PathLike):
        corr = json.loads(Path(corr).read_text())
    if hasattr(corr, "to_dict") and hasattr(corr, "results"):
        corr = corr.to_dict()
    if isinstance(corr, Mapping) and isinstance(corr.get("correlation"), Mapping):
        corr = corr["correlation"]
    if not isinstance(corr, Mapping) or "results" not in corr or "models" not in corr:
        raise ValueError("not a correlation (landscape correlate --out FILE.json writes one)")
    return corr


def _fmt2(value: Any) -> str:
    return "nan" if value is None or not math.isfinite(float(value)) else f"{float(value):.2f}"


def correlation_panels(corr: Any, metric: str | None = None) -> list[CorrelationPanel]:
    """Per metric, the models' (measure, gap) points grouped by the most varied axis.

    The colour axis is the one with the most distinct values among the models (the
    first such axis on ties); without axes every point is one series.

    Args:
        corr: a :class:`~landscape.correlation.Correlation`, its JSON file or dict.
        metric: only this metric (default every metric).

    Raises:
        ValueError: not a correlation, or an unknown ``metric``.
    """
    c = _correlation_dict(corr)
    names = list(c["metrics"])
    if metric is not None:
        if metric not in names:
            raise ValueError(f"Invalid metric: {metric!r} (the correlation has {', '.join(names)})")
        names = [metric]
    models = list(c["models"])
    spec = dict(c.get("axes") or {})
    axes = list(spec)

    def text(v: Any, axis: str | None = None) -> str:
        # An axis of several keys that vary together: its first key's value tells apart.
        if axis is not None and len(spec.get(axis) or ()) > 1 and isinstance(v, list) and v:
            v = v[0]
        return json.dumps(v) if isinstance(v, list | dict) else str(v)

    counts = [len({text(m["hparams"].get(a), a) for m in models}) for a in axes]
    colour = axes[counts.index(max(counts))] if axes else None
    values: list[str] = []
    for m in models:
        v = "all" if colour is None else text(m["hparams"].get(colour), colour)
        if v not in values:
            values.append(v)
    gap = "train_acc − test_acc" if c.get("gap") == "acc" else "test_loss − train_loss"
    panels = []
    for name in names:
        res = c["results"][name]
        ci = res.get("tau_ci") or [None, None]
        title = f"{name}: τ = {_fmt2(res.get('tau'))} [{_fmt2(ci[0])}, {_fmt2(ci[1])}]"
        title += f", Ψ = {_fmt2(res.get('Psi'))}"
        series = []
        for v in values:
            xs, ys, labels = [], [], []
            for m in models:
                if (colour is not None and text(m["hparams"].get(colour), colour) != v) or (
                    m["measures"].get(name) is None or m.get("gap") is None
                ):
                    continue
                xs.append(float(m["measures"][name]))
                ys.append(float(m["gap"]))
                labels.append(str(m["label"]))
            legend = v if colour is None else f"{colour}={v}"
            series.append((legend, np.asarray(xs), np.asarray(ys), labels))
        panels.append(CorrelationPanel(name, title, gap, series))
    return panels
