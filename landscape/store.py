"""HDF5 storage of loss surfaces: the original paper's layout, resumable, kill-safe.

Layout of a surface file (readable by the plotting scripts of Li et al. 2018):

- root datasets, float64: ``xcoordinates`` (nx,), ``ycoordinates`` (ny,) for 2-D, and one
  dataset per field (``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``, extra
  metrics) of shape (nx,) for 1-D or (ny, nx) for 2-D with ``Z[iy, ix] = f(x[ix], y[iy])``
  (rows are y). Unfinished cells hold the original's sentinel ``-1``;
- ``done``: a boolean mask of the same shape marking finished cells (a loss can be ≤ 0,
  so completion is tracked explicitly rather than by the sentinel);
- groups ``xdirection`` / ``ydirection``: one dataset per direction tensor named ``"0"``,
  ``"1"``, … in ``model.parameters()`` order (then BatchNorm buffers in ``states``
  mode), each with the tensor's shape; the group attribute ``names`` lists the tensors'
  names;
- ``dir_file``: a string (the file holding the directions: this file);
- ``trajectory`` (T, 2), optional: a projected training path (PCA planes, planes
  through checkpoints), written a second time as the original's projection file holds
  it: ``proj_xcoord`` and ``proj_ycoord``, (T,) each;
- PCA planes: ``explained_variance_ratio_``, ``explained_variance_`` and
  ``singular_values_`` (2,), as the original's PCA direction file holds them (from the
  attributes ``explained_variance_ratio``, ``explained_variance``, ``singular_values``);
- every other piece of metadata (checkpoint path and sha256, norm, ignore, seed, data,
  sample count, package version, creation time, grid spec…) as root attributes.

The file is thus its own direction file (``dir_file``) and its own projection file, and
the original's trajectory plots read it directly: ``plot_2D.plot_trajectory(f, f)`` and
``plot_2D.plot_contour_trajectory(f, f, f, "train_loss")`` with ``f`` the file's path.

Kill safety: every dataset is contiguous and fully allocated when the file is created,
so writing results later only overwrites raw bytes in place and never touches HDF5
metadata (attributes are written once, at creation). Values are written and flushed
before the ``done`` cells that vouch for them, so a process killed at any instant leaves
a readable file whose ``done`` cells all hold final values; a rerun computes the rest.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SENTINEL",
    "Surface",
    "SurfaceWriter",
    "directions_sha256",
    "open_surface_file",
    "read_surface",
]

log = logging.getLogger(__name__)

SENTINEL = -1.0
_JSON_PREFIX = "json:"
_IDENTITY_ATTR = "identity"
_COORD_NAMES = ("xcoordinates", "ycoordinates")
# The original's projection file (projection.project_trajectory): the path's coordinates.
_PAPER_PROJECTION = ("proj_xcoord", "proj_ycoord")
# The original's PCA direction file (projection.setup_PCA_directions) holds scikit-learn's
# PCA attributes as datasets of the same names (with the trailing underscore).
_PAPER_PCA = ("explained_variance_ratio", "explained_variance", "singular_values")
# torch dtypes without a numpy counterpart
_NO_NUMPY = {"torch.bfloat16", "torch.float8_e4m3fn", "torch.float8_e4m3fnuz"}
_NO_NUMPY |= {"torch.float8_e5m2", "torch.float8_e5m2fnuz"}
_RESERVED = {
    "xcoordinates",
    "ycoordinates",
    "done",
    "dir_file",
    "xdirection",
    "ydirection",
    "trajectory",
    *_PAPER_PROJECTION,
    *(f"{key}_" for key in _PAPER_PCA),
}


@dataclass
class Surface:
    """A computed (or partly computed) loss surface.

    Attributes:
        x: grid coordinates along the first direction, shape (nx,).
        y: grid coordinates along the second direction, shape (ny,), or None for 1-D.
        values: field name (``"train_loss"``, ``"train_acc"``, ``"test_loss"``, …) to an
            array of shape (nx,) or (ny, nx) (rows are y); NaN where the value is not
            finite or not computed yet.
        done: boolean mask of computed cells, same shape as the values.
        attrs: the file's metadata (checkpoint, norm, seed, data, grid, …).
        path: the HDF5 file it was read from, if any.
        trajectory: (T, 2) coordinates of a projected training path, or None.
    """

    x: np.ndarray
    y: np.ndarray | None
    values: dict[str, np.ndarray]
    done: np.ndarray
    attrs: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None
    trajectory: np.ndarray | None = None

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return 1 if self.y is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of every value array: (nx,) or (ny, nx)."""
        return (len(self.x),) if self.y is None else (len(self.y), len(self.x))

    @property
    def complete(self) -> bool:
        """Whether every grid point has been computed."""
        return bool(self.done.all())

    def to_xarray(self, name: str = "train_loss") -> Any:
        """Return one field as an ``xarray.DataArray`` with dims ``("y", "x")`` or ``("x",)``.

        Raises:
            ImportError: when xarray is not installed.
            KeyError: for an unknown field name.
        """
        try:
            import xarray as xr
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("Surface.to_xarray needs xarray: pip install xarray") from exc
        if name not in self.values:
            raise KeyError(f"Invalid name: {name!r}; fields are {sorted(self.values)}")
        coords: dict[str, Any] = {"x": self.x}
        dims: tuple[str, ...] = ("x",)
        if self.y is not None:
            coords["y"] = self.y
            dims = ("y", "x")
        attrs = {k: v for k, v in self.attrs.items() if isinstance(v, str | int | float)}
        return xr.DataArray(self.values[name], coords=coords, dims=dims, name=name, attrs=attrs)


# --------------------------------------------------------------------------- helpers
def _encode_attr(value: Any) -> Any:
    if isinstance(value, bool | int | float | str | np.integer | np.floating):
        return value
    if value is None:
        return _JSON_PREFIX + "null"
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return _JSON_PREFIX + json.dumps(value, sort_keys=True, default=str)


def _decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode()
    if isinstance(value, str) and value.startswith(_JSON_PREFIX):
        return json.loads(value[len(_JSON_PREFIX) :])
    if isinstance(value, np.generic):
        return value.item()
    return value


def _canonical(value: Any) -> Any:
    """A JSON round-trip, so identities compare equal whatever their container types."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def directions_sha256(tensors: Sequence[Any], names: Sequence[str] = ()) -> str:
    """Content hash of a direction set (the tensors' bytes, shapes, dtypes and names)."""
    h = hashlib.sha256()
    for name in names:
        h.update(name.encode())
        h.update(b"\0")
    for t in tensors:
        arr = _as_numpy(t)
        dtype = str(t.dtype) if str(getattr(t, "dtype", "")) in _NO_NUMPY else str(arr.dtype)
        h.update(dtype.encode())
        h.update(str(arr.shape).encode())
        h.update(np.ascontiguousarray(arr).tobytes())
    return h.hexdigest()


def _as_numpy(t: Any) -> np.ndarray:
    """A tensor (or array) as a numpy array; dtypes numpy lacks (bfloat16) as float32.

    The float32 copy is exact (every bfloat16 or float8 value is a float32 value).
    """
    if not hasattr(t, "detach"):
        return np.asarray(t)
    t = t.detach().cpu().contiguous()
    return (t.float() if str(t.dtype) in _NO_NUMPY else t).numpy()


def _grid_shape(x: np.ndarray, y: np.ndarray | None) -> tuple[int, ...]:
    return (len(x),) if y is None else (len(y), len(x))


def _corrupt(path: Path, exc: BaseException, output: bool = False) -> ValueError:
    """The error for a file that is not a surface file; the overwrite advice for outputs."""
    advice = "; delete it or overwrite it (--overwrite / overwrite=True)" if output else ""
    return ValueError(f"{path}: not a readable surface file ({type(exc).__name__}: {exc}){advice}")


# --------------------------------------------------------------------------- reading
def read_surface(path: str | Path) -> Surface:
    """Read a surface file written by sharpscape (or the original code) into a Surface.

    Files of the original code, which lack the ``done`` mask, count cells holding the
    sentinel ``-1`` as not done.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not a readable surface file (the message names it).
    """
    import h5py

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such surface file")
    try:
        with h5py.File(path, "r") as f:
            x = np.asarray(f["xcoordinates"][()], dtype=np.float64)
            y = np.asarray(f["ycoordinates"][()], dtype=np.float64) if "ycoordinates" in f else None
            shape = _grid_shape(x, y)
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            fields = attrs.get("fields") or [
                k for k, v in f.items() if isinstance(v, h5py.Dataset) and k not in _RESERVED
            ]
            raw = {name: np.asarray(f[name][()], dtype=np.float64) for name in fields}
            if "done" in f:
                done = np.asarray(f["done"][()], dtype=bool)
            else:
                first = raw[fields[0]] if fields else np.zeros(shape)
                done = first != SENTINEL
            trajectory = (
                np.asarray(f["trajectory"][()], dtype=np.float64) if "trajectory" in f else None
            )
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise _corrupt(path, exc) from exc
    for name, arr in raw.items():
        if arr.shape != shape:
            # The original writes (nx, ny) arrays; only square grids exist there.
            raise _corrupt(path, ValueError(f"{name} has shape {arr.shape}, expected {shape}"))
    if done.shape != shape:
        raise _corrupt(path, ValueError(f"done has shape {done.shape}, expected {shape}"))
    values = {}
    for name, arr in raw.items():
        out = arr.copy()
        out[~done] = np.nan
        out[~np.isfinite(out)] = np.nan
        values[name] = out
    attrs.pop(_IDENTITY_ATTR, None)
    if fields:  # finished points whose loss was not finite
        attrs["nonfinite_points"] = int(np.sum(done & ~np.isfinite(raw[fields[0]])))
    return Surface(
        x=x, y=y, values=values, done=done, attrs=attrs, path=path, trajectory=trajectory
    )


def read_directions(
    path: str | Path,
) -> tuple[list[np.ndarray], list[np.ndarray] | None, list[str]]:
    """Read the stored directions: ``(x_direction, y_direction or None, names)``."""
    import h5py

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            groups = []
            names: list[str] = []
            for gname in ("xdirection", "ydirection"):
                if gname not in f:
                    groups.append(None)
                    continue
                g = f[gname]
                names = [_decode_attr(n) for n in _decode_attr(g.attrs.get("names", "json:[]"))]
                groups.append([np.asarray(g[str(i)][()]) for i in range(len(g))])
    except (OSError, KeyError, ValueError) as exc:
        raise _corrupt(path, exc) from exc
    if groups[0] is None:
        raise _corrupt(path, KeyError("no xdirection group"))
    return groups[0], groups[1], names


# --------------------------------------------------------------------------- writing
class SurfaceWriter:
    """An open surface file that finished grid points are written into.

    Create it with :func:`open_surface_file`. Points are addressed by their flat index
    in the value arrays (row-major over (ny, nx)). :meth:`write` puts a chunk of results
    on disk and flushes: values first, then the ``done`` cells.
    """

    def __init__(self, path: Path, h5: Any, fields: list[str], shape: tuple[int, ...]) -> None:
        self.path = path
        self._f = h5
        self.fields = fields
        self.shape = shape
        self.done = np.asarray(h5["done"][()], dtype=bool).reshape(shape)
        self.nonfinite = 0

    @property
    def pending(self) -> list[int]:
        """Flat indices of the points not computed yet, in order."""
        return [int(i) for i in np.flatnonzero(~self.done.ravel())]

    def write(self, indices: Sequence[int], results: Sequence[Mapping[str, float]]) -> None:
        """Store the results of a chunk of points and flush them to disk.

        Args:
            indices: flat indices of the points.
            results: one ``{field: value}`` dict per point; missing or non-finite values
                are stored as NaN.
        """
        if not indices:
            return
        idx = np.unravel_index(np.asarray(indices, dtype=np.int64), self.shape)
        order = np.lexsort(idx[::-1])  # h5py wants increasing coordinates per axis
        for name in self.fields:
            col = np.array([float(r.get(name, math.nan)) for r in results], dtype=np.float64)
            bad = ~np.isfinite(col)
            col[bad] = np.nan
            self._write_cells(self._f[name], idx, order, col)
        self._f.flush()
        self._write_cells(self._f["done"], idx, order, np.ones(len(indices), dtype=bool))
        self._f.flush()
        self.done[idx] = True

    @staticmethod
    def _write_cells(dset: Any, idx: tuple[np.ndarray, ...], order: np.ndarray, col: Any) -> None:
        if dset.ndim == 1:
            cells = idx[0][order]
            vals = col[order]
            # Contiguous runs become one slice write each (a 1-D grid is written in order).
            start = 0
            while start < len(cells):
                stop = start + 1
                while stop < len(cells) and cells[stop] == cells[stop - 1] + 1:
                    stop += 1
                dset[int(cells[start]) : int(cells[stop - 1]) + 1] = vals[start:stop]
                start = stop
            return
        # 2-D: row by row, contiguous runs of columns as one slice write each.
        rows, cols = idx[0][order], idx[1][order]
        vals = col[order]
        start = 0
        while start < len(rows):
            stop = start + 1
            while (
                stop < len(rows) and rows[stop] == rows[start] and cols[stop] == cols[stop - 1] + 1
            ):
                stop += 1
            dset[int(rows[start]), int(cols[start]) : int(cols[stop - 1]) + 1] = vals[start:stop]
            start = stop

    def close(self) -> None:
        """Close the file."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> SurfaceWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_identity(
    path: Path,
    f: Any,
    identity: Mapping[str, Any],
    x: np.ndarray,
    y: np.ndarray | None,
    fields: Sequence[str],
) -> None:
    problems = []
    fx = np.asarray(f["xcoordinates"][()], dtype=np.float64)
    if fx.shape != x.shape or not np.array_equal(fx, x):
        problems.append("x grid")
    has_y = "ycoordinates" in f
    if (y is None) == has_y:
        problems.append("dimension (1-D vs 2-D)")
    elif y is not None:
        fy = np.asarray(f["ycoordinates"][()], dtype=np.float64)
        if fy.shape != y.shape or not np.array_equal(fy, y):
            problems.append("y grid")
    stored = _decode_attr(f.attrs.get(_IDENTITY_ATTR, _JSON_PREFIX + "{}"))
    want = _canonical(dict(identity))
    for key in sorted(set(stored) | set(want)):
        if stored.get(key) != want.get(key):
            problems.append(key)
    stored_fields = _decode_attr(f.attrs.get("fields", _JSON_PREFIX + "[]"))
    if fields is not None and list(stored_fields) != list(fields):
        problems.append("fields")
    if problems:
        raise ValueError(
            f"{path}: an existing surface file from a different computation "
            f"(differs in: {', '.join(problems)}); choose another --out or overwrite it "
            "(--overwrite / overwrite=True)"
        )


def open_surface_file(
    path: str | Path,
    *,
    x: np.ndarray,
    y: np.ndarray | None,
    fields: Sequence[str] | None,
    identity: Mapping[str, Any],
    attrs: Mapping[str, Any] | None = None,
    x_direction: Sequence[Any] | None = None,
    y_direction: Sequence[Any] | None = None,
    names: Sequence[str] = (),
    trajectory: np.ndarray | None = None,
    overwrite: bool = False,
) -> SurfaceWriter:
    """Open a surface file for writing: resume a matching one, or create it.

    Args:
        path: the HDF5 file.
        x: grid coordinates along the first direction.
        y: grid coordinates along the second direction (None for 1-D).
        fields: the value datasets (e.g. ``["train_loss", "train_acc"]``); None to take
            them from an existing file (creating a file needs them).
        identity: what makes two runs the same computation (checkpoint hash, directions
            hash, data, norm…). An existing file whose identity, grid or fields differ is
            refused unless ``overwrite``.
        attrs: further metadata stored as root attributes.
        x_direction: the first direction's tensors (stored in their dtype).
        y_direction: the second direction's tensors, or None.
        names: the direction tensors' names.
        trajectory: optional (T, 2) projected path.
        overwrite: replace an existing file instead of resuming it.

    Raises:
        ValueError: for a mismatching or corrupt existing file (the message names it).
    """
    import h5py

    path = Path(path)
    x = np.asarray(x, dtype=np.float64)
    y = None if y is None else np.asarray(y, dtype=np.float64)
    shape = _grid_shape(x, y)
    if path.exists() and not overwrite:
        try:
            f = h5py.File(path, "r+")
        except OSError as exc:
            raise _corrupt(path, exc, output=True) from exc
        try:
            if fields is None:
                fields = list(_decode_attr(f.attrs.get("fields", _JSON_PREFIX + "[]")))
            fields = list(fields)
            for name in (*fields, "done", "xcoordinates"):
                if name not in f:
                    raise KeyError(f"dataset {name!r} missing")
            _check_identity(path, f, identity, x, y, fields)
            for name in (*fields, "done"):
                if f[name].shape != shape:
                    raise _corrupt(path, ValueError(f"{name} has shape {f[name].shape}"), True)
            writer = SurfaceWriter(path, f, fields, shape)
        except KeyError as exc:
            f.close()
            raise _corrupt(path, exc, output=True) from exc
        except BaseException:
            f.close()
            raise
        log.info(
            "resuming %s: %d of %d points done", path, int(writer.done.sum()), writer.done.size
        )
        return writer

    if fields is None:
        raise ValueError(f"Invalid fields: None, but {path} must be created")
    fields = list(fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    # Build the complete file under a temporary name, then rename it into place: a kill
    # during creation never leaves a half-built file under the real name.
    try:
        _create(
            tmp, x, y, fields, shape, attrs, identity, x_direction, y_direction, names, trajectory
        )
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed creation leaves nothing behind
    return SurfaceWriter(path, h5py.File(path, "r+"), fields, shape)


def _create(
    tmp: Path,
    x: np.ndarray,
    y: np.ndarray | None,
    fields: list[str],
    shape: tuple[int, ...],
    attrs: Mapping[str, Any] | None,
    identity: Mapping[str, Any],
    x_direction: Sequence[Any] | None,
    y_direction: Sequence[Any] | None,
    names: Sequence[str],
    trajectory: np.ndarray | None,
) -> None:
    """Write a complete new surface file at ``tmp`` (see the module docstring)."""
    import h5py

    path = tmp.with_name(tmp.name.removesuffix(".partial"))
    with h5py.File(tmp, "w", libver="earliest") as f:
        f.create_dataset("xcoordinates", data=x, track_times=False)
        if y is not None:
            f.create_dataset("ycoordinates", data=y, track_times=False)
        for name in fields:
            f.create_dataset(
                name, data=np.full(shape, SENTINEL, dtype=np.float64), track_times=False
            )
        f.create_dataset("done", data=np.zeros(shape, dtype=bool), track_times=False)
        f["dir_file"] = path.name
        for gname, direction in (("xdirection", x_direction), ("ydirection", y_direction)):
            if direction is None:
                continue
            g = f.create_group(gname, track_order=True)
            g.attrs["names"] = _encode_attr(list(names))
            for i, t in enumerate(direction):
                arr = _as_numpy(t)
                g.create_dataset(str(i), data=arr, track_times=False)
        if trajectory is not None:
            path_xy = np.asarray(trajectory, dtype=np.float64)
            f.create_dataset("trajectory", data=path_xy, track_times=False)
            if path_xy.ndim == 2 and path_xy.shape[1] == 2:
                for j, name in enumerate(_PAPER_PROJECTION):
                    f.create_dataset(name, data=path_xy[:, j].copy(), track_times=False)
        for key in _PAPER_PCA:
            if (attrs or {}).get(key) is not None:
                values = np.asarray((attrs or {})[key], dtype=np.float64)
                f.create_dataset(f"{key}_", data=values, track_times=False)
        meta = {
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **dict(attrs or {}),
            "fields": fields,
        }
        for k, v in meta.items():
            f.attrs[k] = _encode_attr(v)
        f.attrs[_IDENTITY_ATTR] = _encode_attr(_canonical(dict(identity)))
