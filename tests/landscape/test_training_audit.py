"""Audit of ``landscape train``: resuming after odd interruptions, option checks."""

from __future__ import annotations

import pytest
import torch

import landscape.training as training
from landscape.cli import main
from landscape.training import train

TINY = dict(
    model="mlp",
    data="synthetic",
    data_kwargs={"n_train": 32, "n_test": 8, "dim": 4, "classes": 3},
    model_kwargs={"hidden": [4]},
    batch_size=16,
    lr=0.05,
    epochs=2,
    progress=False,
)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_killed_before_final_pt_rerun_writes_it(tmp_path, monkeypatch):
    full = train(out=tmp_path / "full", **TINY)
    save = training._Trainer.save

    def killed_at_final(self, path, *args, **kwargs):
        if path.name == "final.pt":
            raise KeyboardInterrupt
        return save(self, path, *args, **kwargs)

    monkeypatch.setattr(training._Trainer, "save", killed_at_final)
    with pytest.raises(KeyboardInterrupt):
        train(out=tmp_path / "cut", **TINY)
    monkeypatch.setattr(training._Trainer, "save", save)
    assert not (tmp_path / "cut" / "final.pt").exists()
    rest = train(out=tmp_path / "cut", **TINY)
    assert rest.completed and rest.final_checkpoint == tmp_path / "cut" / "final.pt"
    assert rest.final_checkpoint.is_file()  # it was announced but never written
    ck = torch.load(rest.final_checkpoint, weights_only=True)
    assert ck["meta"]["epoch"] == 2
    assert all(torch.equal(ck["state_dict"][k], v) for k, v in full.model.state_dict().items())


def test_stop_after_epoch_zero_trains_nothing(tmp_path):
    res = train(out=tmp_path, stop_after_epoch=0, **TINY)
    assert [r["epoch"] for r in res.metrics] == [0]  # epoch 1 was trained
    assert not res.completed
    rest = train(out=tmp_path, **TINY)
    assert rest.resumed_from == 0 and _same(rest.model, train(**TINY).model)


def test_stop_after_epoch_already_reached_trains_nothing_more(tmp_path):
    kw = dict(TINY, epochs=3)
    train(out=tmp_path, stop_after_epoch=1, **kw)
    again = train(out=tmp_path, stop_after_epoch=1, **kw)  # the same command, re-run
    assert [r["epoch"] for r in again.metrics] == [0, 1]


@pytest.mark.parametrize("value", [-1, 1.5])
def test_stop_after_epoch_refuses_bad_values(tmp_path, value, capsys):
    with pytest.raises(ValueError, match="Invalid stop_after_epoch"):
        train(out=tmp_path, stop_after_epoch=value, **TINY)
    argv = ["train", "--data", "synthetic", "--model", "mlp", "--out", str(tmp_path)]
    if value == -1:
        assert main([*argv, "--stop-after-epoch", "-1"]) == 2
        assert "Invalid stop_after_epoch" in capsys.readouterr().err


def test_report_tells_runs_of_one_folder_name_apart(tmp_path):
    from landscape.report import collect_report_inputs

    for seed in ("seed0", "seed1"):
        train(out=tmp_path / seed / "run", stop_after_epoch=0, **TINY)
    runs = collect_report_inputs([tmp_path / "seed0" / "run", tmp_path / "seed1" / "run"]).runs
    assert [name for name, _ in runs] == ["seed0/run", "seed1/run"]  # both were "run"
    single = collect_report_inputs([tmp_path / "seed0" / "run" / "metrics.jsonl"]).runs
    assert [name for name, _ in single] == ["run"]


def test_negative_seed_is_one_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="Invalid seed: -1"):
        train(seed=-1, **TINY)  # was numpy's "expected non-negative integer"
    argv = ["train", "--data", "synthetic", "--model", "mlp", "--out", str(tmp_path / "r")]
    assert main([*argv, "--seed", "-1"]) == 2
    assert "Invalid seed: -1" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("axis", "bad"),
    [("val_fraction", "1.5"), ("model.hidden", "abc"), ("seed", "-1"), ("data.n_train", "0")],
)
def test_sweep_refuses_a_bad_run_before_training_any(tmp_path, axis, bad):
    from landscape.sweep import SweepSpec, run_sweep

    good = {"val_fraction": "0.2", "model.hidden": "4", "seed": "0", "data.n_train": "32"}[axis]
    fixed = {k: v for k, v in TINY.items() if k not in ("progress", "model_kwargs")}
    if axis != "model.hidden":
        fixed["model_kwargs"] = TINY["model_kwargs"]
    if axis == "data.n_train":
        fixed["data_kwargs"] = {"n_test": 8, "dim": 4, "classes": 3}
    spec = SweepSpec.parse([f"{axis}={good},{bad}"], fixed)
    with pytest.raises(ValueError, match=f"run {axis}={bad}"):
        run_sweep(spec, tmp_path, metrics=None, progress=False)
    assert not list((tmp_path / "runs").glob("*/final.pt"))  # the good run was trained first


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("pca_grid", -1),
        ("pca_grid", 1),
        ("spectrum_runs", -1),
        ("spectrum_steps", 0),
        ("threads", -1),
        ("max_samples", 0),
    ],
)
def test_demo_refuses_bad_counts_before_training(tmp_path, option, value, monkeypatch):
    from landscape import demo

    def no_training(*args, **kwargs):
        raise AssertionError("trained before refusing")

    monkeypatch.setattr(demo, "_train_all", no_training)
    kw = dict(epochs=3, save_every=1, optimizers=["sgd"], progress=False, **{option: value})
    with pytest.raises(ValueError, match=f"Invalid {option}: {value}"):
        demo.run_demo(out=tmp_path, **kw)


def test_a_bad_model_option_leaves_no_run_folder(tmp_path):
    """Refused before the run folder is made (built on the meta device first)."""
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="Invalid option for model 'mlp'"):
        train("mlp", "digits", out=out, epochs=1, model_kwargs={"width": 2}, progress=False)
    assert not out.exists()
