"""Mesh export through meshio, read back."""

from __future__ import annotations

import numpy as np
import pytest
from plotting_helpers import write_surface

from landscape.plotting import MESH_FORMATS, export_surface, read_mesh, surface_to_mesh
from landscape.store import read_surface


@pytest.mark.parametrize("ext", MESH_FORMATS)
def test_every_format_reads_back_with_all_vertices(surface2d, tmp_path, ext):
    s = read_surface(surface2d)
    ny, nx = s.values["train_loss"].shape
    out = export_surface(surface2d, tmp_path / f"surf{ext}")
    assert out.stat().st_size > 0
    mesh = read_mesh(out)
    assert len(mesh.points) == nx * ny
    n_tri = sum(len(c.data) for c in mesh.cells if c.type == "triangle")
    assert n_tri == 2 * (nx - 1) * (ny - 1)
    # Every vertex is a grid node at its stored height.
    xx, yy = np.meshgrid(s.x, s.y)
    want = {(round(a, 9), round(b, 9), round(c, 9))
            for a, b, c in zip(xx.ravel(), yy.ravel(), s.values["train_loss"].ravel())}  # fmt: skip
    got = {tuple(np.round(p.astype(float), 5 if ext == ".stl" else 9)) for p in mesh.points}
    if ext == ".stl":  # float32 storage
        want = {tuple(np.round(np.asarray(w), 5)) for w in want}
    assert got == want


def test_vtp_is_polydata_with_point_data(surface2d, tmp_path):
    out = export_surface(surface2d, tmp_path / "surf.vtp", scale=2.0)
    head = out.read_text()[:400]
    assert 'type="PolyData"' in head
    assert "<Polys>" in out.read_text() and "UnstructuredGrid" not in out.read_text()
    mesh = read_mesh(out)
    s = read_surface(surface2d)
    np.testing.assert_allclose(mesh.point_data["train_acc"], s.values["train_acc"].ravel())
    np.testing.assert_allclose(mesh.points[:, 2], 2.0 * s.values["train_loss"].ravel())


def test_missing_cells_drop_vertices_and_their_triangles(tmp_path):
    path = tmp_path / "holes.h5"
    write_surface(path, nx=5, ny=4, nan_cells=[(1, 2)], undone_cells=[(0, 0)])
    mesh = surface_to_mesh(path)
    assert len(mesh.points) == 5 * 4 - 2
    assert np.isfinite(mesh.points).all()
    # 12 squares: 4 touch the interior hole (1, 2) and 1 the corner hole (0, 0); each
    # keeps one triangle of its three remaining corners.
    tris = mesh.cells[0].data
    assert len(tris) == 2 * 12 - 5
    assert tris.max() < len(mesh.points)


def test_export_refuses_1d_and_unknown_formats(surface1d, surface2d, tmp_path):
    with pytest.raises(ValueError, match="2-D"):
        export_surface(surface1d, tmp_path / "a.vtp")
    with pytest.raises(ValueError, match="mesh format"):
        export_surface(surface2d, tmp_path / "a.xyz")
