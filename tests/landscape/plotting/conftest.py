"""Surface files in the analysis.md layout, written through landscape.store."""

from __future__ import annotations

import json

import numpy as np
import pytest

from landscape.store import open_surface_file


def bowl(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """An anisotropic quadratic bowl, (ny, nx) with rows along y."""
    xx, yy = np.meshgrid(x, y)
    return 0.1 + xx**2 + 3.0 * yy**2


def write_surface(
    path,
    *,
    nx: int = 9,
    ny: int | None = 6,
    func=bowl,
    nan_cells=(),
    undone_cells=(),
    trajectory=None,
    attrs=None,
    test: bool = True,
):
    """Write a complete surface file; returns the (ny, nx) train_loss written."""
    x = np.linspace(-1.0, 1.0, nx)
    y = None if ny is None else np.linspace(-0.5, 0.75, ny)
    if y is None:
        loss = 0.1 + x**2
    else:
        loss = func(x, y)
    fields = ["train_loss", "train_acc"] + (["test_loss", "test_acc"] if test else [])
    vals = {
        "train_loss": loss,
        "train_acc": 100.0 / (1.0 + loss),
        "test_loss": loss * 1.2 + 0.05,
        "test_acc": 95.0 / (1.0 + loss),
    }
    for cell in nan_cells:
        vals["train_loss"][cell] = np.nan
    undone = {tuple(np.atleast_1d(c)) for c in undone_cells}
    with open_surface_file(
        path,
        x=x,
        y=y,
        fields=fields,
        identity={"test": str(path)},
        attrs=dict(attrs or {}),
        trajectory=trajectory,
    ) as w:
        shape = loss.shape
        idx = [i for i in range(loss.size) if np.unravel_index(i, shape) not in undone]
        results = [{f: float(vals[f].ravel()[i]) for f in fields} for i in idx]
        w.write(idx, results)
    return loss


@pytest.fixture
def surface2d(tmp_path):
    path = tmp_path / "plane.h5"
    write_surface(path)
    return path


@pytest.fixture
def surface1d(tmp_path):
    path = tmp_path / "line.h5"
    write_surface(path, ny=None)
    return path


@pytest.fixture
def pca_surface(tmp_path):
    """A PCA-plane surface with a stored path ending at the origin."""
    path = tmp_path / "pca.h5"
    t = np.linspace(1.0, 0.0, 8)
    traj = np.column_stack([0.9 * t, 0.6 * t * np.cos(3 * t)])
    write_surface(path, trajectory=traj, attrs={"explained_variance_ratio": [0.71, 0.12]})
    return path


@pytest.fixture
def density_json(tmp_path):
    grid = np.linspace(-1.0, 10.0, 200)
    density = np.exp(-((grid - 0.0) ** 2) / 0.02) + 1e-3 * np.exp(-((grid - 8.0) ** 2) / 0.1)
    density /= np.trapezoid(density, grid)
    path = tmp_path / "density.json"
    doc = {"density": {"grid": grid.tolist(), "density": density.tolist(), "lambda_max": 8.0}}
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def run_dir(tmp_path):
    run = tmp_path / "run_sgd"
    run.mkdir()
    with (run / "metrics.jsonl").open("w") as fh:
        for e in range(5):
            rec = {
                "epoch": e,
                "train_loss": 2.0 / (e + 1),
                "train_acc": 50 + 10 * e,
                "test_loss": 2.2 / (e + 1),
                "test_acc": 45 + 9 * e,
                "lr": 0.1,
                "time": 0.5,
            }
            fh.write(json.dumps(rec) + "\n")
    return run
