"""Mesh export of 2-D surfaces through meshio: ParaView .vtp/.vtu/.vtk, .obj, .stl, .ply.

A surface becomes a triangle mesh: one vertex per finished, finite grid cell at
``(x, y, scale · z)``, two triangles per grid square whose four corners are finite (one
when only three are), and every stored metric as point data (formats that carry point
data: VTK and PLY).  Unfinished or NaN cells are left out, never given made-up heights.

meshio writes every format itself except ParaView's PolyData ``.vtp`` (the format the
original paper rendered with), which it does not know: :func:`export_surface` writes
meshio's XML UnstructuredGrid (``.vtu``) and renames its elements to the equivalent
PolyData ones, so the data arrays are still meshio's own encoding.
"""

from __future__ import annotations

import os
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np

from landscape.plotting._common import (
    SurfaceLike,
    as_surface,
    for_log,
    metric_values,
    surface_ndim,
)

__all__ = ["MESH_FORMATS", "export_surface", "read_mesh", "surface_to_mesh"]

#: File extensions :func:`export_surface` writes.
MESH_FORMATS = (".vtp", ".vtu", ".vtk", ".obj", ".stl", ".ply", ".off")


def surface_to_mesh(
    surface: SurfaceLike, metric: str = "train_loss", *, scale: float = 1.0, log: bool = False
) -> Any:
    """A :class:`meshio.Mesh` of a 2-D surface (height = ``scale`` × metric).

    Args:
        surface: a 2-D surface or its file.
        metric: the metric giving the height.
        scale: multiplies the heights (loss ranges are often far larger than the plane).
        log: height is ``log10`` of the metric.

    Returns:
        The mesh: points (n, 3) for the n finite cells in row-major (y, x) order,
        ``triangle`` cells, point data for every stored metric.
    """
    import meshio

    surface = as_surface(surface)
    if surface_ndim(surface) != 2:
        raise ValueError("mesh export needs a 2-D surface; this one is 1-D")
    if not np.isfinite(scale) or scale == 0:
        raise ValueError(f"scale must be finite and non-zero, got {scale}")
    z = metric_values(surface, metric)
    if log:
        z = np.log10(for_log(z))
    x = np.asarray(surface.x, dtype=np.float64)
    y = np.asarray(surface.y, dtype=np.float64)
    ny, nx = z.shape
    ok = np.isfinite(z)
    if not ok.any():
        raise ValueError(f"metric {metric!r} has no finite cell to export")
    index = np.full((ny, nx), -1, dtype=np.int64)
    index[ok] = np.arange(int(ok.sum()))
    xx, yy = np.meshgrid(x, y)
    points = np.column_stack([xx[ok], yy[ok], scale * z[ok]])
    # Corners of each grid square, counter-clockwise seen from +z.
    a, b = index[:-1, :-1], index[:-1, 1:]  # (iy, ix), (iy, ix+1)
    c, d = index[1:, 1:], index[1:, :-1]  # (iy+1, ix+1), (iy+1, ix)
    present = (a >= 0).astype(int) + (b >= 0) + (c >= 0) + (d >= 0)
    full = present == 4
    tris = [
        np.column_stack([a[full], b[full], c[full]]),
        np.column_stack([a[full], c[full], d[full]]),
    ]
    # A square with one missing corner keeps the triangle of its other three corners.
    for miss, (p, q, r) in ((a, (b, c, d)), (b, (a, c, d)), (c, (a, b, d)), (d, (a, b, c))):
        one = (present == 3) & (miss < 0)
        tris.append(np.column_stack([p[one], q[one], r[one]]))
    triangles = np.concatenate(tris).astype(np.int64)
    point_data = {
        name: metric_values(surface, name)[ok].astype(np.float64) for name in sorted(surface.values)
    }
    cells = (
        [("triangle", triangles)]
        if len(triangles)
        else [("vertex", np.arange(len(points))[:, None])]
    )
    return meshio.Mesh(points, cells, point_data=point_data)


def export_surface(
    surface: SurfaceLike,
    path: str | os.PathLike,
    metric: str = "train_loss",
    *,
    scale: float = 1.0,
    log: bool = False,
) -> Path:
    """Write a 2-D surface as a mesh file; the format comes from the extension.

    Args:
        surface: a 2-D surface or its file.
        path: output file ending in one of :data:`MESH_FORMATS`.
        metric: the metric giving the height.
        scale: multiplies the heights.
        log: height is ``log10`` of the metric.
    """
    import meshio

    path = Path(path)
    ext = path.suffix.lower()
    if ext not in MESH_FORMATS:
        raise ValueError(f"mesh format must be one of {MESH_FORMATS}, got {path.name!r}")
    mesh = surface_to_mesh(surface, metric, scale=scale, log=log)
    path.parent.mkdir(parents=True, exist_ok=True)
    if ext == ".vtp":
        _write_vtp(mesh, path)
    elif ext == ".stl":  # binary STL: compact, and what most 3-D tools expect
        meshio.write(path, meshio.Mesh(mesh.points, mesh.cells), binary=True)
    elif ext in (".obj", ".off"):  # geometry-only formats: no point data
        meshio.write(path, meshio.Mesh(mesh.points, mesh.cells))
    else:
        meshio.write(path, mesh)
    return path


def _write_vtp(mesh: Any, path: Path) -> None:
    import meshio

    if [c.type for c in mesh.cells] != ["triangle"]:
        raise ValueError("a .vtp export needs a triangle mesh")
    with tempfile.TemporaryDirectory() as tmp:
        vtu = Path(tmp) / "surface.vtu"
        meshio.write(vtu, mesh)
        tree = ET.parse(vtu)
    root = tree.getroot()
    root.set("type", "PolyData")
    grid = root.find("UnstructuredGrid")
    grid.tag = "PolyData"
    for piece in grid.findall("Piece"):
        n_cells = piece.attrib.pop("NumberOfCells")
        piece.set("NumberOfVerts", "0")
        piece.set("NumberOfLines", "0")
        piece.set("NumberOfStrips", "0")
        piece.set("NumberOfPolys", n_cells)
        cells = piece.find("Cells")
        cells.tag = "Polys"
        for arr in list(cells):
            if arr.get("Name") == "types":  # PolyData cells carry no type array
                cells.remove(arr)
    tree.write(path, encoding="utf-8", xml_declaration=True)


def read_mesh(path: str | os.PathLike) -> Any:
    """Read a mesh back with meshio (``.vtp`` triangle files written here included)."""
    import meshio

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"mesh file not found: {path}")
    if path.suffix.lower() != ".vtp":
        return meshio.read(path)
    tree = ET.parse(path)
    root = tree.getroot()
    if root.get("type") != "PolyData":
        raise ValueError(f"{path} is not a VTK PolyData file")
    root.set("type", "UnstructuredGrid")
    grid = root.find("PolyData")
    grid.tag = "UnstructuredGrid"
    for piece in grid.findall("Piece"):
        n = int(piece.get("NumberOfPolys", "0"))
        for key in ("NumberOfVerts", "NumberOfLines", "NumberOfStrips", "NumberOfPolys"):
            piece.attrib.pop(key, None)
        piece.set("NumberOfCells", str(n))
        polys = piece.find("Polys")
        polys.tag = "Cells"
        types = ET.SubElement(polys, "DataArray", type="UInt8", Name="types", format="ascii")
        types.text = " ".join(["5"] * n)  # VTK_TRIANGLE: what export_surface writes
    with tempfile.TemporaryDirectory() as tmp:
        vtu = Path(tmp) / "mesh.vtu"
        tree.write(vtu, encoding="utf-8", xml_declaration=True)
        return meshio.read(vtu)
