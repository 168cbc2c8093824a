"""The demo end to end at a tiny size."""

from __future__ import annotations

import html
import json

import numpy as np
import pytest
import torch

from landscape.checkpoint import load_checkpoint
from landscape.cli import main
from landscape.correlation import flatness_finding
from landscape.demo import run_demo
from landscape.report import build_report
from landscape.store import read_surface


def test_demo_tiny_end_to_end(tmp_path, capsys):
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # the demo runs on 1 thread and must restore this
    out = tmp_path / "demo"
    args = [
        "demo", "--out", str(out), "--optimizers", "sgd,sam", "--epochs", "3",
        "--grid", "3", "--pca-grid", "3", "--metrics", "grad_norm,trace",
        "--max-samples", "128", "--spectrum-runs", "1", "--spectrum-steps", "4",
        "--no-progress", "--threads", "1",
    ]  # fmt: skip
    try:
        assert main(args) == 0
        assert torch.get_num_threads() == 2  # restored
    finally:
        torch.set_num_threads(threads)
    printed = capsys.readouterr().out
    assert "grad_norm" in printed and "sam" in printed and "report:" in printed
    # Flatness and the clean test accuracy side by side, the remaining columns after.
    header = printed.splitlines()[0].split()
    assert header[:4] == ["checkpoint", "trace", "test_acc", "grad_norm"]
    assert "train_loss, train_acc: on the noisy training labels (40% replaced" in printed
    for name in ("sgd", "sam"):
        assert (out / "runs" / name / "final.pt").exists()
        s = read_surface(out / "surfaces" / f"{name}.h5")
        assert s.values["train_loss"].shape == (3, 3) and s.complete
        assert "test_loss" in s.values
        pca = read_surface(out / "surfaces" / f"{name}_pca.h5")
        # The PCA grid covers the whole projected path (4 checkpoints: epochs 0 to 3).
        assert pca.trajectory.shape == (4, 2)
        assert pca.x[0] < pca.trajectory[:, 0].min() and pca.trajectory[:, 0].max() < pca.x[-1]
        assert pca.y[0] < pca.trajectory[:, 1].min() and pca.trajectory[:, 1].max() < pca.y[-1]
        dens = json.loads((out / "spectra" / f"{name}.json").read_text())["density"]
        assert len(dens["grid"]) == len(dens["density"])
    comp = json.loads((out / "compare.json").read_text())
    assert [r["label"] for r in comp["rows"]] == ["sgd", "sam"]
    # beside the flatness: the training record of each final model, read from its file;
    # trained on 40 % noisy labels by default, tested on the clean test labels
    recorded = ["train_loss", "train_acc", "train_clean_acc", "test_acc"]
    assert comp["metrics"] == ["grad_norm", "trace", *recorded]
    for r, name in zip(comp["rows"], ("sgd", "sam")):
        config = json.loads((out / "runs" / name / "config.json").read_text())
        assert config["data"]["label_noise"] == 0.4
        record = load_checkpoint(out / "runs" / name / "final.pt").meta["metrics"]
        for key in recorded:
            assert r[key]["value"] == record[key]
        assert r["test_acc"]["value"] > 0
    assert all(np.isfinite(r["grad_norm"]["value"]) for r in comp["rows"])
    # The trace by the Gauss-Newton split: exact on the demo's ReLU MLP.
    for r in comp["rows"]:
        assert r["trace"]["info"]["method"] == "ggn"
        assert r["trace"]["stderr"] == 0 and r["trace"]["value"] > 0
    # λmax at every epoch of every run: one comparison, drawn as one line per run.
    traj = json.loads((out / "trajectory.json").read_text())
    assert traj["metrics"] == ["lambda_max"]
    assert [(r["label"], r["epoch"]) for r in traj["rows"]] == [
        (f"{name}/epoch_{e:04d}", e) for name in ("sgd", "sam") for e in range(4)
    ]
    assert all(r["lambda_max"]["value"] > 0 for r in traj["rows"])
    page = (out / "report.html").read_text()
    assert page.count("* plotly.js v") == 1 and "Sharpness comparison" in page
    assert "trajectory: metrics against the epoch" in page
    # The finding: computed from compare.json when the report is built, the same sentence
    # in the report and at the end of the printed output.
    finding = flatness_finding(comp)
    assert finding.measure == "trace" and finding.clean and finding.labels == ("sgd", "sam")
    assert finding.sentence.startswith("Across the 2 models,")
    assert "with clean test accuracy" in finding.sentence
    assert html.escape(finding.sentence) in page and "<h2>Finding</h2>" in page
    assert finding.sentence in printed.splitlines()
    assert page.index("<h2>Finding</h2>") < page.index("<h2>Sharpness comparison</h2>")
    # A rerun resumes: same files, same numbers.
    again = run_demo(
        out, optimizers=["sgd", "sam"], epochs=3, grid=3, pca_grid=3,
        metrics=["grad_norm", "trace"], max_samples=128, spectrum_runs=1,
        spectrum_steps=4, progress=False, threads=1,
    )  # fmt: skip
    assert again.comparison.rows[0]["grad_norm"]["value"] == pytest.approx(
        comp["rows"][0]["grad_norm"]["value"]
    )
    assert again.trajectory.rows == traj["rows"]
    assert again.finding.sentence == finding.sentence
    # The report computes a table itself from run folders' final checkpoints.
    page = build_report(
        [out / "runs" / "sgd", out / "runs" / "sam"],
        tmp_path / "computed.html",
        compute_metrics=["grad_norm"],
        compare_options={"max_samples": 64},
    ).read_text()
    assert "source: computed" in page and "<th>grad_norm</th>" in page
    assert page.count('<th scope="row"') == 2


def test_demo_rejects_bad_settings(tmp_path):
    with pytest.raises(ValueError, match="Invalid optimizers"):
        run_demo(tmp_path, optimizers=["sgd", "nope"])
    with pytest.raises(ValueError, match="Invalid grid"):
        run_demo(tmp_path, grid=1)
    with pytest.raises(ValueError, match="Invalid epochs"):
        run_demo(tmp_path, epochs=2)
    with pytest.raises(ValueError, match=r"Invalid epochs: 30; .*\(epochs / save_every = 2 "):
        run_demo(tmp_path, epochs=30, save_every=15)
    with pytest.raises(ValueError, match="Invalid save_every"):
        run_demo(tmp_path, save_every=0)
    with pytest.raises(ValueError, match="Invalid label_noise"):
        run_demo(tmp_path, label_noise=1.5)
    with pytest.raises(ValueError, match="nope"):  # before any training
        run_demo(tmp_path, trajectory_metrics=["lambda_max", "nope"])
    assert not (tmp_path / "runs").exists()


def test_demo_hparams_are_the_defaults_but_momentum_sam_rho():
    """Each optimizer's defaults, but Momentum-SAM's rho = 0.3 (3.0 is meant for ResNets)."""
    import optimizers
    from landscape.demo import DEMO_OPTIMIZERS, demo_hparams

    for name in DEMO_OPTIMIZERS:
        hp = demo_hparams(name)
        if name == "momentum_sam":
            assert hp == {"rho": 0.3, "decay_at": "perturbed"}
        else:
            assert hp == optimizers.optimizer_hparams(name)
    with pytest.raises(ValueError, match=r"Invalid hparams: \['gam'\]"):
        run_demo("unused", optimizers=["sgd"], hparams={"gam": {"rho": 0.1}})
