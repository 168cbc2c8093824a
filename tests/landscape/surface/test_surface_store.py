import h5py
import numpy as np
import pytest
import torch

from landscape.store import SENTINEL, Surface, open_surface_file, read_surface


def _make(path, *, identity=None, fields=("train_loss", "train_acc"), nx=4, ny=3, **kw):
    x = np.linspace(-1, 1, nx)
    y = None if ny is None else np.linspace(-2, 2, ny)
    return open_surface_file(
        path,
        x=x,
        y=y,
        fields=list(fields),
        identity=identity or {"a": 1},
        attrs={"norm": "filter", "seed": 3, "grid": {"x": "-1:1:4"}},
        x_direction=[torch.ones(2, 3), torch.zeros(2)],
        y_direction=None if ny is None else [torch.full((2, 3), 2.0), torch.ones(2)],
        names=["w", "b"],
        **kw,
    )


def test_layout_readable_with_plain_h5py(tmp_path):
    path = tmp_path / "s.h5"
    with _make(path) as w:
        # value f(x[ix], y[iy]) = 10*iy + ix, some points only
        pts = [(0, 0), (1, 2), (2, 3)]
        w.write([iy * 4 + ix for iy, ix in pts], [{"train_loss": 10 * iy + ix} for iy, ix in pts])
    with h5py.File(path, "r") as f:
        assert f["xcoordinates"].dtype == np.float64 and f["xcoordinates"].shape == (4,)
        assert f["ycoordinates"].shape == (3,)
        z = f["train_loss"][:]
        assert z.dtype == np.float64 and z.shape == (3, 4)  # (ny, nx): rows are y
        assert z[1, 2] == 12 and z[2, 3] == 23 and z[0, 0] == 0
        assert z[0, 1] == SENTINEL  # unfinished cells hold the original's -1
        assert np.isnan(f["train_acc"][1, 2])  # missing value -> NaN, still done
        assert f["done"][:].sum() == 3 and f["done"][1, 2]
        assert f["dir_file"][()].decode() == "s.h5"
        assert list(f["xdirection"]) == ["0", "1"]
        assert f["xdirection"]["0"].shape == (2, 3)
        np.testing.assert_array_equal(f["ydirection"]["0"][:], np.full((2, 3), 2.0))
        assert f.attrs["norm"] == "filter" and f.attrs["seed"] == 3
        # The original plotting code: meshgrid(x, y) then contour(X, Y, Z).
        xx, _yy = np.meshgrid(f["xcoordinates"][:], f["ycoordinates"][:])
        assert xx.shape == z.shape


def test_round_trip_surface(tmp_path):
    path = tmp_path / "s.h5"
    with _make(path, trajectory=np.array([[0.0, 1.0], [2.0, 3.0]])) as w:
        w.write(list(range(12)), [{"train_loss": i - 5.0, "train_acc": 50.0} for i in range(12)])
    s = read_surface(path)
    assert isinstance(s, Surface) and s.ndim == 2 and s.shape == (3, 4) and s.complete
    np.testing.assert_array_equal(s.values["train_loss"].ravel(), np.arange(12) - 5.0)
    assert s.values["train_loss"][0, 0] == -5.0  # losses <= 0 are fine: done is explicit
    assert s.attrs["grid"] == {"x": "-1:1:4"}
    np.testing.assert_array_equal(s.trajectory, [[0, 1], [2, 3]])
    da = s.to_xarray("train_loss")
    assert da.dims == ("y", "x") and float(da.sel(x=1.0, y=2.0)) == 6.0
    with pytest.raises(KeyError, match="Invalid name"):
        s.to_xarray("nope")


def test_one_dimensional_and_not_done_is_nan(tmp_path):
    path = tmp_path / "line.h5"
    with _make(path, ny=None) as w:
        w.write([1, 2], [{"train_loss": 1.5}, {"train_loss": float("inf")}])
    s = read_surface(path)
    assert s.ndim == 1 and s.y is None and s.shape == (4,)
    assert s.done.tolist() == [False, True, True, False]
    assert np.isnan(s.values["train_loss"][0]) and s.values["train_loss"][1] == 1.5
    assert np.isnan(s.values["train_loss"][2])  # non-finite stored as NaN
    with h5py.File(path, "r") as f:
        assert "ycoordinates" not in f and f["train_loss"][0] == SENTINEL


def test_resume_keeps_done_and_refuses_other_computations(tmp_path):
    path = tmp_path / "s.h5"
    with _make(path) as w:
        w.write([5], [{"train_loss": 1.0, "train_acc": 2.0}])
    with _make(path) as w:  # same computation: resumed
        assert w.done.sum() == 1 and 5 not in w.pending and len(w.pending) == 11
    with pytest.raises(ValueError, match=r"s\.h5.*different computation.*differs in: a"):
        _make(path, identity={"a": 2})
    with pytest.raises(ValueError, match="x grid"):
        _make(path, nx=5)
    with pytest.raises(ValueError, match="dimension"):
        _make(path, ny=None)
    with pytest.raises(ValueError, match="fields"):
        _make(path, fields=("train_loss",))
    with _make(path, identity={"a": 2}, overwrite=True) as w:
        assert w.done.sum() == 0


def test_corrupt_file_error_names_it(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"this is not hdf5" * 10)
    with pytest.raises(ValueError, match=r"bad\.h5: not a readable surface file"):
        read_surface(bad)
    with pytest.raises(ValueError, match=r"bad\.h5: not a readable surface file"):
        _make(bad)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f["something"] = 1
    with pytest.raises(ValueError, match=r"empty\.h5"):
        read_surface(tmp_path / "empty.h5")
    with pytest.raises(FileNotFoundError, match="missing"):
        read_surface(tmp_path / "missing.h5")


def test_reads_a_file_of_the_original_code(tmp_path):
    # The original writes (nx, ny) arrays filled with -1 and no done mask.
    path = tmp_path / "orig.h5"
    z = -np.ones((3, 3))
    z[0, :] = [0.5, 0.6, 0.7]
    with h5py.File(path, "w") as f:
        f["xcoordinates"] = np.linspace(-1, 1, 3)
        f["ycoordinates"] = np.linspace(-1, 1, 3)
        f["train_loss"] = z
        f["dir_file"] = "dirs.h5"
    s = read_surface(path)
    assert s.done[0].all() and not s.done[1:].any()
    assert s.values["train_loss"][0, 2] == 0.7
