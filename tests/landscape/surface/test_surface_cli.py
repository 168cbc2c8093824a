import h5py
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from landscape.checkpoint import file_sha256, load_checkpoint, save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.models import build_model
from landscape.store import read_surface

SPEC = {"name": "mlp", "in_channels": 1, "num_classes": 10, "input_size": [8, 8], "hidden": [16]}
DATA = {"name": "digits", "seed": 0}


def _checkpoint(path, seed, epoch=0):
    torch.manual_seed(seed)
    spec = dict(SPEC)
    model = build_model(spec.pop("name"), **spec)
    save_checkpoint(path, model, model_spec=SPEC, data_spec=DATA, meta={"epoch": epoch})
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "checkpoints").mkdir()
    paths = [_checkpoint(root / "checkpoints" / f"epoch_{e:04d}.pt", e, e) for e in range(4)]
    return root, paths


def _loss(path, split="train", n=64):
    model = load_checkpoint(path).model
    bundle = load_data(**DATA)
    ds = bundle.train if split == "train" else bundle.test
    x, y = ds.tensors[0][:n], ds.tensors[1][:n]
    with torch.no_grad():
        return float(F.cross_entropy(model(x), y))


def test_cli_2d_surface(ckpts, tmp_path):
    _, paths = ckpts
    out = tmp_path / "s.h5"
    argv = [
        "surface",
        str(paths[-1]),
        "--x",
        "-1:1:3",
        "--y",
        "-0.5:0.5:2",
        "--norm",
        "filter",
        "--max-samples",
        "64",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    s = read_surface(out)
    assert s.shape == (2, 3) and s.complete and set(s.values) == {"train_loss", "train_acc"}
    assert s.attrs["checkpoint_sha256"] == file_sha256(paths[-1])
    assert s.attrs["grid_x"] == "-1:1:3" and s.attrs["norm"] == "filter"
    assert s.attrs["n_samples"] == {"train": 64} and s.attrs["dataset"] == "digits"
    with h5py.File(out, "r") as f:
        assert f["train_loss"].shape == (2, 3) and len(f["xdirection"]) == 4
    # the same command resumes (nothing to do); another seed is refused
    assert main(argv) == 0
    assert main([*argv, "--seed", "5"]) == 2


def test_cli_interpolation_endpoints_are_the_checkpoints(ckpts, tmp_path):
    _, paths = ckpts
    out = tmp_path / "line.h5"
    assert (
        main(
            [
                "surface",
                str(paths[0]),
                "--interpolate",
                str(paths[1]),
                "--x",
                "-0.5:1:4",
                "--max-samples",
                "64",
                "--split",
                "both",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    s = read_surface(out)
    assert s.ndim == 1 and list(s.x) == [-0.5, 0.0, 0.5, 1.0]
    assert s.values["train_loss"][1] == pytest.approx(_loss(paths[0]), rel=1e-5)
    assert s.values["train_loss"][3] == pytest.approx(_loss(paths[1]), rel=1e-5)
    assert s.values["test_loss"][3] == pytest.approx(_loss(paths[1], "test"), rel=1e-5)
    assert s.attrs["other_checkpoint_sha256"] == file_sha256(paths[1])


def test_cli_pca_of_a_run(ckpts, tmp_path):
    root, paths = ckpts
    out = tmp_path / "pca.h5"
    assert (
        main(
            [
                "surface",
                str(paths[-1]),
                "--pca",
                str(root),
                "--x",
                "-1:1:2",
                "--y",
                "-1:1:2",
                "--max-samples",
                "32",
                "--split",
                "test",
                "--out",
                str(out),
                "--no-progress",
            ]
        )
        == 0
    )
    s = read_surface(out)
    assert set(s.values) == {"test_loss", "test_acc"}
    assert s.trajectory.shape == (4, 2) and np.allclose(s.trajectory[-1], 0)
    assert len(s.attrs["explained_variance_ratio"]) == 2


def test_cli_rejects_malformed_grid_before_any_work(tmp_path, capsys):
    out = tmp_path / "never.h5"
    for bad in (["--x", "-1:1"], ["--y", "0:1:zero"], ["--x", "1:1:5"]):
        with pytest.raises(SystemExit) as exc:
            main(["surface", str(tmp_path / "missing.pt"), *bad, "--out", str(out)])
        assert exc.value.code == 2
        assert "Invalid grid" in capsys.readouterr().err
    assert not out.exists()
    assert main(["surface", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "missing.pt: no such checkpoint" in capsys.readouterr().err
