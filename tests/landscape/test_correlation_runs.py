"""``correlate_runs`` and ``landscape correlate`` on four tiny training runs."""

import json

import pytest

import landscape.compare as compare_module
from landscape.cli import main
from landscape.compare import Comparison, compare_checkpoints
from landscape.correlation import Correlation, correlate_runs, granulated_tau, kendall_tau
from landscape.training import train

METRICS = "grad_norm,lambda_max"
MEASURE = {"max_samples": 40, "device": "cpu", "progress": False, "max_products": 20}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """sgd and sam × lr 0.2 and 0.05: one epoch of a tiny MLP on synthetic data."""
    root = tmp_path_factory.mktemp("runs")
    folders = []
    for optimizer in ("sgd", "sam"):
        for lr in (0.2, 0.05):
            out = root / f"{optimizer}-{lr}"
            train(
                "mlp",
                "synthetic",
                optimizer=optimizer,
                lr=lr,
                epochs=1,
                batch_size=50,
                model_kwargs={"hidden": (8,)},
                data_kwargs={"n_train": 100, "n_test": 100, "dim": 5, "classes": 3},
                out=out,
                device="cpu",
                progress=False,
            )
            folders.append(out)
    return folders


class Calls:
    """Counts ``compute_metrics`` calls; ``fail_on``: raise ``KeyboardInterrupt`` there."""

    def __init__(self, monkeypatch, fail_on=None):
        self.n = 0
        real = compare_module.compute_metrics

        def wrapper(*args, **kwargs):
            self.n += 1
            if self.n == fail_on:
                raise KeyboardInterrupt
            return real(*args, **kwargs)

        monkeypatch.setattr(compare_module, "compute_metrics", wrapper)


def _last_record(run):
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def test_correlate_runs_measures_final_checkpoints_and_ranks_them(runs, tmp_path):
    out = tmp_path / "corr.json"
    corr = correlate_runs(runs, METRICS, out=out, draws=200, **MEASURE)
    assert corr.axes == {"optimizer": ["optimizer", "hparams.rho"], "lr": ["hparams.lr"]}
    assert [m["label"] for m in corr.models] == ["sgd-0.2", "sgd-0.05", "sam-0.2", "sam-0.05"]
    assert corr.models[2]["hparams"] == {"optimizer": ["sam", 0.05], "lr": 0.2}
    direct = compare_checkpoints(
        [r / "final.pt" for r in runs], METRICS, **{**MEASURE, "progress": False}
    )
    gaps = []
    for model, run, row in zip(corr.models, runs, direct.rows):
        record = _last_record(run)
        assert model["gap"] == pytest.approx(record["train_acc"] - record["test_acc"])
        assert model["test_loss"] == pytest.approx(record["test_loss"])
        assert model["measures"]["lambda_max"] == row["lambda_max"]["value"]
        gaps.append(model["gap"])
    for m in ("grad_norm", "lambda_max"):
        mu = [model["measures"][m] for model in corr.models]
        hp = [{"optimizer": o, "lr": lr} for o in ("sgd", "sam") for lr in (0.2, 0.05)]
        assert corr.tau(m) == kendall_tau(mu, gaps)
        gran = granulated_tau(mu, gaps, hp, draws=200)
        assert corr.psi(m, "lr") == gran.psi["lr"].value and corr.psi(m) == gran.value
        assert corr.results[m]["n"] == 4 and corr.results[m]["psi"]["lr"]["groups"] == 2
    table = corr.format_table().splitlines()
    assert table[0].split() == [
        "metric",
        "n",
        "tau",
        "tau",
        "CI",
        "psi[optimizer]",
        "psi[lr]",
        "Psi",
    ]
    assert [line.split()[0] for line in table[2:]] == ["grad_norm", "lambda_max"]
    assert "gap = train_acc − test_acc" in corr.summary() and "seeds: replicates" in corr.summary()

    # the file: a comparison with a correlation section
    again = Correlation.read_json(out)
    assert again.to_dict() == json.loads(json.dumps(corr.to_dict()))
    assert len(Comparison.read_json(out).rows) == 4

    fig = corr.plot()
    shown = [ax for ax in fig.axes if ax.get_visible()]
    assert len(shown) == 2 and shown[1].get_title().startswith("lambda_max: τ = ")
    # a colour per optimizer (both axes have 2 values: the first wins); a merged axis
    # (optimizer with hparams.rho) is shown by its first key
    assert len(shown[0].collections) == 2
    legend = [t.get_text() for t in shown[0].get_legend().get_texts()]
    assert legend == ["optimizer=sgd", "optimizer=sam"]


def test_rerun_reuses_the_rows_and_an_interrupted_one_resumes(runs, tmp_path, monkeypatch):
    out = tmp_path / "corr.json"
    calls = Calls(monkeypatch, fail_on=3)
    with pytest.raises(KeyboardInterrupt, match="2 of 4 checkpoints saved"):
        correlate_runs(runs, METRICS, out=out, draws=200, **MEASURE)
    assert len(Comparison.read_json(out).rows) == 2
    calls = Calls(monkeypatch)
    first = correlate_runs(runs, METRICS, out=out, draws=200, **MEASURE)
    assert calls.n == 2  # the two runs not saved
    calls = Calls(monkeypatch)
    loss = correlate_runs(runs, METRICS, out=out, gap="loss", draws=300, **MEASURE)
    assert calls.n == 0  # another gap and bootstrap: nothing measured again
    assert loss.models[0]["gap"] == pytest.approx(
        first.models[0]["test_loss"] - first.models[0]["train_loss"]
    )
    assert Correlation.read_json(out).settings["draws"] == 300
    with pytest.raises(ValueError, match="different settings"):
        correlate_runs(runs, METRICS, out=out, **{**MEASURE, "max_samples": 30})


def test_cli_prints_the_table_writes_json_and_plots_and_resumes(runs, tmp_path, capsys):
    out, png, page = tmp_path / "c.json", tmp_path / "c.png", tmp_path / "c.html"
    argv = ["correlate", *map(str, runs), "--metrics", METRICS, "--max-samples", "40"]
    argv += ["--device", "cpu", "--no-progress", "--draws", "200", "--set", "max_products=20"]
    assert main([*argv, "--out", str(out), "--plot", str(png)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("4 runs; gap = train_acc − test_acc; axes: optimizer")
    assert printed[1].split()[:3] == ["metric", "n", "tau"]
    assert printed[3].split()[0] == "grad_norm" and f"wrote {png}" in printed
    assert png.stat().st_size > 0
    before = Comparison.read_json(out).rows
    assert main([*argv, "--out", str(out), "--plot", str(page), "--gap", "loss"]) == 0
    assert "gap = test_loss − train_loss" in capsys.readouterr().out
    assert Comparison.read_json(out).rows == before  # reused, not measured again
    assert "plotly" in page.read_text()


def test_bad_inputs_are_one_line_errors_before_any_work(runs, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    good = [str(r) for r in runs[:2]]
    cases = [
        ([*good, str(tmp_path / "empty")], "not a landscape train run folder"),
        ([*good, str(runs[0] / "final.pt")], "not a run folder"),
        ([*good, str(tmp_path / "missing")], "no such run folder"),
        ([*good, "--metrics", "lambda_max,sharpnes"], "sharpnes"),
        ([*good, "--out", str(tmp_path / "c.csv")], ".json"),
        ([*good, "--plot", str(tmp_path / "c.txt")], "--plot must end in one of"),
        ([good[0]], "needs two or more"),
        ([*good, "--confidence", "2"], "Invalid confidence"),
    ]
    for args, message in cases:
        assert main(["correlate", *args, "--device", "cpu"]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith("landscape correlate: error: ") and message in err, (args, err)
        assert err.count("\n") == 1
    assert not list(tmp_path.glob("c.*"))
