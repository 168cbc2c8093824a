"""Fixtures of the plotting tests: surface files, a density JSON, a run folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
from plotting_helpers import write_surface


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
