"""``run_sweep`` and ``landscape sweep`` on a 2 × 2 grid of one-epoch runs on tiny data."""

import json

import pytest
import torch

import landscape.sweep as sweep_module
from landscape.checkpoint import read_checkpoint
from landscape.cli import main
from landscape.correlation import Correlation
from landscape.sweep import EXAMPLES, SweepInterrupted, SweepSpec, run_sweep

FIXED = {
    "data": "synthetic",
    "data_kwargs": {"n_train": 100, "n_test": 100, "dim": 5, "classes": 3},
    "model": "mlp",
    "model_kwargs": {"hidden": [8]},
    "epochs": 1,
    "batch_size": 50,
}
GRID = ["optimizer=sgd,sam", "lr=0.05,0.2"]
NAMES = [
    "optimizer=sgd,lr=0.05",
    "optimizer=sgd,lr=0.2",
    "optimizer=sam,lr=0.05",
    "optimizer=sam,lr=0.2",
]
CORR = {"max_samples": 40, "draws": 200, "max_products": 20}
METRICS = "grad_norm,lambda_max"


class Trains:
    """Counts (in this process) the runs ``run_sweep`` trains; ``fail_on``: Ctrl-C there."""

    def __init__(self, monkeypatch, fail_on=None):
        self.names = []
        real = sweep_module._train_one

        def wrapper(kwargs, run_dir):
            self.names.append(run_dir)
            if len(self.names) == fail_on:
                raise KeyboardInterrupt
            return real(kwargs, run_dir)

        monkeypatch.setattr(sweep_module, "_train_one", wrapper)


def _weights(path):
    return read_checkpoint(path, map_location="cpu")["state_dict"]


def test_spec_expands_to_named_runs_and_drops_hyperparameters_an_optimizer_lacks():
    spec = SweepSpec.parse(["optimizer=sgd,sam", "rho=0.05,0.1", "seed=0,1"], FIXED)
    runs = spec.runs()
    assert [r.name for r in runs] == [
        "optimizer=sgd,seed=0",
        "optimizer=sgd,seed=1",
        "optimizer=sam,rho=0.05,seed=0",
        "optimizer=sam,rho=0.05,seed=1",
        "optimizer=sam,rho=0.1,seed=0",
        "optimizer=sam,rho=0.1,seed=1",
    ]
    assert runs[2].kwargs["hparams"] == {"rho": 0.05} and runs[0].kwargs["hparams"] == {}
    assert runs[3].values == {"optimizer": "sam", "rho": 0.05, "seed": 1}
    # a mapping gives the same spec; model./data. axes reach model_kwargs / data_kwargs
    same = SweepSpec.parse({"optimizer": ["sgd", "sam"], "rho": "0.05,0.1", "seed": [0, 1]}, FIXED)
    assert [r.name for r in same.runs()] == [r.name for r in runs]
    wide = SweepSpec.parse(["model.hidden=4,16", "data.dim=5"], {**FIXED, "model_kwargs": {}})
    assert [r.kwargs["model_kwargs"] for r in wide.runs()] == [{"hidden": 4}, {"hidden": 16}]
    assert wide.runs()[0].kwargs["data_kwargs"]["dim"] == 5
    assert wide.runs()[0].name == "model.hidden=4,data.dim=5"
    # agnostic_sam's val_fraction is spelled hparams.val_fraction (train has its own)
    ag = SweepSpec.parse(["hparams.val_fraction=0.3,0.5"], {"optimizer": "agnostic_sam"})
    assert [r.kwargs["hparams"] for r in ag.runs()] == [
        {"val_fraction": 0.3},
        {"val_fraction": 0.5},
    ]
    assert "val_fraction" not in ag.runs()[0].kwargs


@pytest.mark.parametrize(
    ("grid", "fixed", "match"),
    [
        (["lr"], {}, r"Invalid grid 'lr': expected KEY=V1,V2"),
        (["lr="], {}, r"Invalid grid lr=: an empty value"),
        (["lr=0.1,,0.2"], {}, r"an empty value"),
        (["lrr=0.1"], {}, r"unknown axis 'lrr'"),
        (["lr=fast"], {}, r"Invalid lr: 'fast' is not a number"),
        (["batch_size=1.5"], {}, r"Invalid batch_size: 1.5 is not an integer"),
        (["lr=0.1,0.10"], {}, r"Invalid grid lr: 0.1 is given twice"),
        (["lr=0.1", "lr=0.2"], {}, r"Invalid grid: lr is given twice"),
        (["lr=0.1,0.2"], {"lr": 0.1}, r"lr is both a grid axis and a fixed option"),
        (["model=mlp,cnn"], {}, r"model cannot vary within a sweep"),
        (["optimizer=sgd,adam", "rho=0.1"], {}, r"rho is a hyper-parameter of no optimizer"),
        (["optimizer=sgd,nadam"], {}, r"Invalid optimizer: 'nadam'"),
        (["optimizer=a/b"], {}, r"cannot be part of a folder name"),
        (["seed=0,1"], {"width": 3}, r"Invalid sweep option: 'width'"),
        ([], {}, r"no axis"),
    ],
)
def test_bad_grid_specs_are_one_line_errors(grid, fixed, match):
    with pytest.raises(ValueError, match=match) as info:
        SweepSpec.parse(grid, fixed)
    assert "\n" not in str(info.value)


def test_sweep_trains_each_run_once_and_correlates(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    trains = Trains(monkeypatch)
    res = run_sweep(
        SweepSpec.parse(GRID, FIXED), out, metrics=METRICS, correlation=CORR, progress=False
    )
    assert [r.name for r in res.runs] == NAMES and len(trains.names) == 4
    assert res.status == dict.fromkeys(NAMES, "trained")
    for name in NAMES:
        assert (out / "runs" / name / "final.pt").is_file()
    config = json.loads((out / "runs" / NAMES[3] / "config.json").read_text())
    assert config["optimizer"] == "sam" and config["hparams"]["lr"] == 0.2
    corr = Correlation.read_json(out / "correlation.json")
    assert corr.metrics == ["grad_norm", "lambda_max"]
    assert corr.axes == {"optimizer": ["optimizer", "hparams.rho"], "lr": ["hparams.lr"]}
    assert [m["label"] for m in corr.models] == NAMES
    assert all(corr.results[m]["n"] == 4 for m in corr.metrics)
    assert (out / "correlation.png").stat().st_size > 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["status"] for r in sweep["runs"]] == ["trained"] * 4
    assert sweep["spec"]["grid"] == {"optimizer": ["sgd", "sam"], "lr": [0.05, 0.2]}

    # a rerun trains nothing, measures nothing again, and gives the same numbers
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")}
    measured = []
    monkeypatch.setattr(
        "landscape.compare.compute_metrics", lambda *a, **k: measured.append(1) or {}
    )
    again = run_sweep({"grid": GRID, "fixed": FIXED}, out, metrics=METRICS, correlation=CORR)
    assert len(trains.names) == 4 and not measured
    assert again.status == dict.fromkeys(NAMES, "done")
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.pt")} == mtimes
    assert again.correlation.results == corr.results

    # another value on an axis: only the new runs train
    more = run_sweep(
        SweepSpec.parse(["optimizer=sgd,sam", "lr=0.05,0.2,0.1"], FIXED), out, metrics=None
    )
    assert len(trains.names) == 6 and more.correlation is None
    assert [more.status[n] for n in ("optimizer=sgd,lr=0.1", NAMES[0])] == ["trained", "done"]


def test_sweep_folder_of_other_fixed_options_or_axes_is_refused_before_work(tmp_path):
    out = tmp_path / "sweep"
    run_sweep(SweepSpec.parse(["seed=0,1"], FIXED), out, metrics=None, progress=False)
    with pytest.raises(ValueError, match=r"other fixed options \(epochs: 1 there, 2 now\)"):
        run_sweep(SweepSpec.parse(["seed=0,1"], {**FIXED, "epochs": 2}), out, metrics=None)
    with pytest.raises(ValueError, match=r"other axes \(seed there, lr now\)"):
        run_sweep(SweepSpec.parse(["lr=0.1,0.2"], FIXED), out, metrics=None)


def test_bad_run_values_and_options_are_refused_before_any_training(tmp_path, monkeypatch):
    trains = Trains(monkeypatch)
    with pytest.raises(ValueError, match=r"run lr=-0.1: Invalid lr: -0.1"):
        run_sweep(SweepSpec.parse(["lr=0.1,-0.1"], FIXED), tmp_path / "a", metrics=None)
    with pytest.raises(ValueError, match=r"Invalid label_noise: 1.5"):
        run_sweep(SweepSpec.parse(["label_noise=0,1.5"], FIXED), tmp_path / "b", metrics=None)
    with pytest.raises(ValueError, match=r"Invalid metric: .flatness."):
        run_sweep(SweepSpec.parse(GRID, FIXED), tmp_path / "c", metrics="flatness")
    with pytest.raises(ValueError, match=r"Invalid option 'stepz'"):
        run_sweep(SweepSpec.parse(GRID, FIXED), tmp_path / "d", correlation={"stepz": 3})
    with pytest.raises(ValueError, match=r"Invalid gap: 'width'"):
        run_sweep(SweepSpec.parse(GRID, FIXED), tmp_path / "e", correlation={"gap": "width"})
    with pytest.raises(ValueError, match=r"Invalid jobs: 0"):
        run_sweep(SweepSpec.parse(GRID, FIXED), tmp_path / "f", jobs=0)
    assert not trains.names and not (tmp_path / "a").exists()


def test_interrupted_sweep_keeps_finished_runs_and_continues(tmp_path, monkeypatch):
    out = tmp_path / "sweep"
    trains = Trains(monkeypatch, fail_on=3)
    with pytest.raises(SweepInterrupted, match=r"2 of 4 runs finished"):
        run_sweep(SweepSpec.parse(GRID, FIXED), out, metrics=None, progress=False)
    assert not (out / "correlation.json").exists()
    res = run_sweep(SweepSpec.parse(GRID, FIXED), out, metrics=None, progress=False)
    assert [res.status[n] for n in NAMES] == ["done", "done", "trained", "trained"]
    assert len(trains.names) == 5


def test_jobs_2_gives_the_weights_of_jobs_1(tmp_path):
    spec = SweepSpec.parse(["optimizer=sgd,sam"], {**FIXED, "lr": 0.2})
    one = run_sweep(spec, tmp_path / "one", metrics=None, progress=False)
    two = run_sweep(spec, tmp_path / "two", metrics=None, jobs=2, progress=False)
    names = ["optimizer=sgd", "optimizer=sam"]
    assert two.status == one.status == dict.fromkeys(names, "trained")
    for name in names:
        a = _weights(one.run_dir(name) / "final.pt")
        b = _weights(two.run_dir(name) / "final.pt")
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-6, atol=1e-7)


def test_a_diverging_run_fails_alone_and_is_left_out(tmp_path):
    # lr=1e6 overflows in the second epoch (as in test_nonfinite)
    spec = SweepSpec.parse(["lr=0.05,1e6", "seed=0,1"], {**FIXED, "epochs": 3, "batch_size": 16})
    corr = {"max_samples": 40, "draws": 200}
    res = run_sweep(spec, tmp_path / "s", metrics="grad_norm", correlation=corr, progress=False)
    assert res.status["lr=1000000.0,seed=0"] == "failed"
    assert "non-finite training loss" in res.errors["lr=1000000.0,seed=0"]
    assert [m["label"] for m in res.correlation.models] == ["lr=0.05,seed=0", "lr=0.05,seed=1"]
    sweep = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert "non-finite" in sweep["runs"][2]["error"]


def test_cli_sweep_and_its_errors(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--out",
        str(out),
        "--grid",
        "optimizer=sgd,sam",
        "--grid",
        "lr=0.05,0.2",
        "--data",
        "synthetic",
        *("--data-arg", "n_train=100", "--data-arg", "n_test=100", "--data-arg", "dim=5"),
        *("--data-arg", "classes=3", "--model", "mlp", "--model-arg", "hidden=[8]"),
        *("--epochs", "1", "--batch-size", "50", "--hparam", "rho=0.1"),
        *("--metrics", METRICS, "--max-samples", "40", "--draws", "200"),
        *("--set", "max_products=20", "--no-progress"),
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "4 runs in" in printed and "4 trained" in printed and "psi[lr]" in printed
    assert (out / "correlation.json").is_file() and (out / "correlation.png").is_file()
    assert (
        json.loads((out / "runs" / NAMES[2] / "config.json").read_text())["hparams"]["rho"] == 0.1
    )
    assert main(argv) == 0
    assert "0 trained, 4 finished before" in capsys.readouterr().out

    for bad, message in [
        (["--grid", "lr"], "Invalid grid 'lr': expected KEY=V1,V2"),
        (["--grid", "lrr=1,2"], "unknown axis 'lrr'"),
        ([], "no grid: give --grid"),
        (["--example", "nope"], "Invalid --example: 'nope'"),
        (["--example", "batch-noise", "--epochs", "3"], "--example takes no --grid"),
        (["--grid", "seed=0,1", "--set", "stepz=2"], "Invalid option 'stepz'"),
    ]:
        assert main(["sweep", "--out", str(tmp_path / "x"), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("landscape sweep: error: ") and message in err
        assert err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_the_builtin_example_is_a_valid_spec():
    ex = EXAMPLES["batch-noise"]
    runs = SweepSpec.parse(ex["grid"], ex["fixed"]).runs()
    assert len(runs) == 16
    assert runs[-1].name == "optimizer=sam,batch_size=256,label_noise=0.2,seed=1"
    for run in runs:
        sweep_module._check_run(run)
