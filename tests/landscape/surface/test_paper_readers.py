"""PCA surfaces read the way the original code's trajectory plots read them.

tomgoldstein/loss-landscape draws a training path with ``plot_2D.plot_trajectory(
proj_file, dir_file)`` and over the contours with ``plot_2D.plot_contour_trajectory(
surf_file, dir_file, proj_file, surf_name)``. What they read, restated (not their code):

- the projection file: datasets ``proj_xcoord`` and ``proj_ycoord``, one coordinate per
  checkpoint (``projection.project_trajectory`` writes them: the ``cos`` projection of
  ``θ_t − θ_T`` on each direction);
- the direction file: dataset ``explained_variance_ratio_``, indexed ``[0]`` and ``[1]``
  for the axis labels (``projection.setup_PCA_directions`` writes it, with
  ``explained_variance_`` and ``singular_values_``, from scikit-learn's PCA of the
  matrix of ``θ_t − θ_T`` over every checkpoint t, the last included), and its groups
  ``xdirection``/``ydirection`` of datasets ``"0"``, ``"1"``, ... (``h5_util.read_list``);
- the surface file: ``xcoordinates``, ``ycoordinates``, ``np.meshgrid(x, y)`` and the
  named values as ``Z`` for ``plt.contour(X, Y, Z)``; the three files are opened in turn,
  each left open while the next is opened.

Our surface file is all three: its own ``dir_file`` and its own projection file.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from landscape.checkpoint import load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.directions import direction_targets, pca_directions, project_onto_plane
from landscape.models import build_model
from landscape.store import read_surface

SPEC = {"name": "mlp", "in_channels": 1, "num_classes": 10, "input_size": [8, 8], "hidden": [6]}


@pytest.fixture(scope="module")
def run3(tmp_path_factory):
    """A run folder of three checkpoints (epochs 0, 1, 2), weights drifting apart."""
    root = tmp_path_factory.mktemp("run3")
    data = load_data("digits", n_per_class=4)
    spec = dict(SPEC)
    torch.manual_seed(0)
    model = build_model(spec.pop("name"), **spec)
    g = torch.Generator().manual_seed(1)
    for epoch in range(3):
        path = root / "checkpoints" / f"epoch_{epoch:04d}.pt"
        save_checkpoint(path, model, model_spec=SPEC, data_spec=data.spec, meta={"epoch": epoch})
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return root


@pytest.fixture(scope="module")
def pca_file(run3, tmp_path_factory):
    out = tmp_path_factory.mktemp("pca") / "pca.h5"
    last = run3 / "checkpoints" / "epoch_0002.pt"
    argv = ["surface", str(last), "--pca", str(run3), "--x", "-1:1:3", "--y", "-1:1:4"]
    assert main([*argv, "--max-samples", "16", "--out", str(out), "--no-progress"]) == 0
    return out


def _weights(path: Path) -> list[np.ndarray]:
    """The parameters with dim > 1 (the directions' support under ignore=biasbn)."""
    sd = load_checkpoint(path).state_dict
    return [v.double().numpy() for v in sd.values() if v.dim() > 1]


def test_plot_trajectory_reads_our_pca_file(pca_file):
    # plot_trajectory(proj_file, dir_file): both are our file.
    proj_file = dir_file = str(pca_file)
    assert Path(proj_file).exists()
    with h5py.File(proj_file, "r") as f:
        xs, ys = np.asarray(f["proj_xcoord"]), np.asarray(f["proj_ycoord"])
    assert xs.shape == ys.shape == (3,) and xs.dtype == np.float64
    with h5py.File(dir_file, "r") as f2:
        assert "explained_variance_ratio_" in f2.keys()
        ratio_x = f2["explained_variance_ratio_"][0]
        ratio_y = f2["explained_variance_ratio_"][1]
    label = "1st PC: %.2f %%" % (ratio_x * 100)
    assert label.startswith("1st PC: ") and 0 < ratio_y <= ratio_x <= 1
    # the same numbers as our own reading of the file
    s = read_surface(pca_file)
    np.testing.assert_array_equal(np.stack([xs, ys], 1), s.trajectory)
    np.testing.assert_allclose([ratio_x, ratio_y], s.attrs["explained_variance_ratio"])


def test_plot_contour_trajectory_reads_our_pca_file(pca_file):
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    surf_file = dir_file = proj_file = str(pca_file)
    surf_name = "train_loss"
    # Each file opened in turn, the earlier ones still open (as the original leaves them).
    f = h5py.File(surf_file, "r")
    pf = df = None
    try:
        x = np.array(f["xcoordinates"][:])
        y = np.array(f["ycoordinates"][:])
        X, Y = np.meshgrid(x, y)
        assert surf_name in f.keys()
        Z = np.array(f[surf_name][:])
        assert Z.shape == X.shape == (4, 3)
        fig = plt.figure()
        plt.contour(X, Y, Z, levels=np.linspace(Z.min(), Z.max() + 1e-9, 5))
        pf = h5py.File(proj_file, "r")
        # (The original hands matplotlib the h5py datasets themselves, which today's
        # matplotlib indexes with None and h5py refuses; the arrays are what it plots.)
        plt.plot(np.asarray(pf["proj_xcoord"]), np.asarray(pf["proj_ycoord"]), marker=".")
        df = h5py.File(dir_file, "r")
        ratio_x = df["explained_variance_ratio_"][0]
        ratio_y = df["explained_variance_ratio_"][1]
        plt.xlabel("1st PC: %.2f %%" % (ratio_x * 100))
        plt.ylabel("2nd PC: %.2f %%" % (ratio_y * 100))
        plt.close(fig)
        # The path ends at the origin of the plane (the last checkpoint, the surface's θ*).
        np.testing.assert_allclose([pf["proj_xcoord"][-1], pf["proj_ycoord"][-1]], 0, atol=1e-9)
        # The value at the grid point (0, 0): rows are y, columns x.
        assert np.isfinite(Z).all() and Z[np.argmin(abs(y)), np.argmin(abs(x))] > 0
    finally:
        for h in (df, pf, f):
            if h is not None:
                h.close()


def test_paper_pca_numbers_from_an_independent_pca(pca_file, run3):
    """explained_variance_ratio_ & co. and the projection, from a restated sklearn PCA."""
    ckpts = sorted((run3 / "checkpoints").glob("epoch_*.pt"))
    final = _weights(ckpts[-1])
    # The original's matrix: θ_t − θ_T for every checkpoint, the last one included.
    rows = np.stack(
        [np.concatenate([(w - f).ravel() for w, f in zip(_weights(c), final)]) for c in ckpts]
    )
    centred = rows - rows.mean(0)
    _, sing, vt = np.linalg.svd(centred, full_matrices=False)
    with h5py.File(pca_file, "r") as f:
        np.testing.assert_allclose(
            f["explained_variance_ratio_"][:], (sing**2 / (sing**2).sum())[:2]
        )
        np.testing.assert_allclose(f["explained_variance_"][:], sing[:2] ** 2 / (len(ckpts) - 1))
        np.testing.assert_allclose(f["singular_values_"][:], sing[:2])
        # Directions as the original's load_directions reads them: h5_util.read_list.
        dirs = []
        for gname in ("xdirection", "ydirection"):
            grp = f[gname]
            tensors = [np.asarray(grp[str(i)]) for i in range(len(grp))]
            dirs.append(np.concatenate([t.ravel() for t in tensors if t.ndim > 1]))
        # Unit principal axes, equal to the SVD's up to sign.
        for d, v in zip(dirs, vt[:2]):
            assert abs(abs(d @ v) - 1) < 1e-6
        # The original's "cos" projection of each θ_t − θ_T: (d · dx) / ‖dx‖.
        for j, name in enumerate(("proj_xcoord", "proj_ycoord")):
            expect = rows @ dirs[j] / np.linalg.norm(dirs[j])
            np.testing.assert_allclose(f[name][:], expect, atol=1e-6)


def test_paper_pca_matches_scikit_learn(pca_file, run3):
    decomposition = pytest.importorskip("sklearn.decomposition")
    ckpts = sorted((run3 / "checkpoints").glob("epoch_*.pt"))
    final = _weights(ckpts[-1])
    rows = np.stack(
        [np.concatenate([(w - f).ravel() for w, f in zip(_weights(c), final)]) for c in ckpts]
    )
    pca = decomposition.PCA(n_components=2).fit(rows)
    with h5py.File(pca_file, "r") as f:
        np.testing.assert_allclose(f["explained_variance_ratio_"][:], pca.explained_variance_ratio_)
        np.testing.assert_allclose(f["explained_variance_"][:], pca.explained_variance_)
        np.testing.assert_allclose(f["singular_values_"][:], pca.singular_values_)


def test_pca_of_three_checkpoints_spans_their_two_differences(run3):
    ckpts = sorted((run3 / "checkpoints").glob("epoch_*.pt"))
    model = load_checkpoint(ckpts[-1]).model
    d = pca_directions(model, ckpts)
    assert d.attrs["trajectory_length"] == 3
    names, _ = direction_targets(model)
    states = [load_checkpoint(c).state_dict for c in ckpts]
    # θ_0 − θ_2 and θ_1 − θ_2 (weights of dim > 1) lie in the plane: exact reconstruction.
    for t, (a, b) in zip(states, d.trajectory):
        for name, x, y in zip(names, d.x, d.y):
            if x.dim() > 1:
                diff = t[name] - states[-1][name]
                torch.testing.assert_close(a * x + b * y, diff, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(d.trajectory[-1], 0, atol=1e-9)
    assert sum(d.attrs["explained_variance_ratio"]) == pytest.approx(1.0)  # 3 points: a plane


def test_pca_refuses_collinear_checkpoints_and_two(run3, tmp_path):
    ckpts = sorted((run3 / "checkpoints").glob("epoch_*.pt"))
    model = load_checkpoint(ckpts[-1]).model
    with pytest.raises(ValueError, match="at least 3"):
        pca_directions(model, ckpts[:2])
    a, b = (load_checkpoint(c).state_dict for c in ckpts[:2])
    line = [{k: a[k] + s * (b[k] - a[k]) for k in a} for s in (0.0, 0.5, 1.0)]
    with pytest.raises(ValueError, match="on a line"):
        pca_directions(model, line)


def test_projection_is_the_least_squares_one_for_the_pca_plane(run3):
    # project_onto_plane (least squares) equals the original's cos projection on the
    # orthonormal PCA axes.
    ckpts = sorted((run3 / "checkpoints").glob("epoch_*.pt"))
    model = load_checkpoint(ckpts[-1]).model
    d = pca_directions(model, ckpts)
    dot = sum(float((x * y).sum()) for x, y in zip(d.x, d.y))
    assert abs(dot) < 1e-6
    p = project_onto_plane([d.x], d.x, d.y)
    np.testing.assert_allclose(p, [[1.0, 0.0]], atol=1e-6)
