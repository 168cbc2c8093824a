import csv
import json
import logging
import math

import pytest
import torch
from _metrics_helpers import classification_data, mlp

from landscape.checkpoint import save_checkpoint
from landscape.cli import main
from landscape.compare import Comparison, compare_checkpoints, compare_models
from landscape.data import load_data
from landscape.metrics import compute_metrics
from landscape.models import build_model

DATA_SPEC = {"name": "synthetic", "seed": 0, "n_train": 40, "n_test": 30, "dim": 5, "classes": 3}
MODEL_SPEC = {"name": "mlp", "in_channels": 1, "num_classes": 3, "input_size": [5], "hidden": [6]}


def write_checkpoint(path, seed, epoch, record=None):
    """A small MLP checkpoint with its data spec; weights drawn from ``seed``."""
    torch.manual_seed(seed)
    spec = dict(MODEL_SPEC)
    model = build_model(spec.pop("name"), **spec)
    meta = {"epoch": epoch} if record is None else {"epoch": epoch, "metrics": record}
    return save_checkpoint(path, model, model_spec=MODEL_SPEC, data_spec=DATA_SPEC, meta=meta)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpts")
    return [write_checkpoint(root / f"run{i}" / "final.pt", 10 + i, 3 + i) for i in range(2)]


def _reference(path, names, split="train", **options):
    from landscape.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    data = getattr(load_data(**DATA_SPEC), split)
    return compute_metrics(ckpt.model, data, names, progress=False, **options)


def test_compare_checkpoints_rows_equal_direct_metrics(checkpoints, tmp_path):
    names = ["grad_norm", "sam_sharpness", "average_sharpness", "lambda_max", "trace"]
    opts = {"num_samples": 4, "num_products": 10, "max_products": 30}
    cmp = compare_checkpoints(
        checkpoints, names, split="test", device="cpu", progress=False, **opts
    )
    assert cmp.metrics == names
    assert [r["label"] for r in cmp.rows] == ["run0/final", "run1/final"]
    assert [r["epoch"] for r in cmp.rows] == [3, 4]
    for row, path in zip(cmp.rows, checkpoints):
        ref = _reference(path, names, split="test", **opts)
        for n in names:
            assert row[n]["value"] == pytest.approx(ref[n].value, rel=1e-6)
            if ref[n].stderr is None:
                assert row[n]["stderr"] is None
            else:
                assert row[n]["stderr"] == pytest.approx(ref[n].stderr, rel=1e-6)
    assert cmp.rows[0]["grad_norm"]["value"] != cmp.rows[1]["grad_norm"]["value"]

    # JSON round trip in the contract's layout
    cmp.to_json(tmp_path / "cmp.json")
    obj = json.loads((tmp_path / "cmp.json").read_text())
    assert obj["metrics"] == names
    assert set(obj["rows"][0]) >= {"checkpoint", "label", *names}
    assert set(obj["rows"][0]["sam_sharpness"]) >= {"value", "stderr"}
    back = Comparison.read_json(tmp_path / "cmp.json")
    assert back.value("run1/final", "grad_norm") == cmp.value("run1/final", "grad_norm")

    # CSV: one line per checkpoint, value and stderr columns
    cmp.to_csv(tmp_path / "cmp.csv")
    with open(tmp_path / "cmp.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert len(lines) == 2
    assert float(lines[1]["average_sharpness"]) == cmp.rows[1]["average_sharpness"]["value"]
    assert float(lines[1]["average_sharpness_stderr"]) == pytest.approx(
        cmp.rows[1]["average_sharpness"]["stderr"]
    )
    assert lines[0]["grad_norm_stderr"] == ""

    table = cmp.format_table()
    assert table.splitlines()[0].split() == ["checkpoint", *names]
    assert "±" in table and "run1/final" in table
    assert "<table>" in cmp._repr_html_()
    # some columns, in the order asked
    picked = cmp.format_table(columns=[names[-1], names[0]])
    assert picked.splitlines()[0].split() == ["checkpoint", names[-1], names[0]]
    with pytest.raises(ValueError, match=r"Invalid columns: \['nope'\]"):
        cmp.format_table(columns=["nope"])


def test_compare_validates_before_any_work(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="known metrics: lambda_max"):
        compare_checkpoints([tmp_path / "missing.pt"], "lambda_max,bogus")
    with pytest.raises(ValueError, match="Invalid option 'sigma'"):
        compare_checkpoints([tmp_path / "missing.pt"], "trace", sigma=0.1)
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        compare_checkpoints([checkpoints[0], tmp_path / "missing.pt"], "grad_norm")
    with pytest.raises(ValueError, match="split"):
        compare_checkpoints(checkpoints, "grad_norm", split="validation")
    with pytest.raises(ValueError, match="labels"):
        compare_checkpoints(checkpoints, "grad_norm", labels=["a"])


def test_compare_models_in_memory():
    x, y = classification_data(n=20)
    models = {"a": mlp(seed=1), "b": mlp(seed=2)}
    cmp = compare_models(models, (x, y), ["grad_norm", "grad_curvature"], progress=False)
    for row in cmp.rows:
        ref = compute_metrics(models[row["label"]], (x, y), ["grad_norm", "grad_curvature"])
        assert row["grad_norm"]["value"] == ref["grad_norm"].value
        assert row["grad_curvature"]["value"] == pytest.approx(ref["grad_curvature"].value)
    assert (
        Comparison(["m"], [{"label": "z", "m": {"value": math.nan, "stderr": None}}]).to_dict()[
            "rows"
        ][0]["m"]["value"]
        is None
    )


def test_cli_compare_prints_table_and_writes_json_and_csv(checkpoints, tmp_path, capsys):
    out = tmp_path / "cmp.json"
    argv = [
        "compare",
        *map(str, checkpoints),
        "--metrics",
        "grad_norm,sam_sharpness",
        "--max-samples",
        "16",
        "--rho",
        "0.1",
        "--set",
        "sam_sharpness.steps=2",
        "--labels",
        "first,second",
        "--out",
        str(out),
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "first" in printed and "second" in printed and "sam_sharpness" in printed
    obj = json.loads(out.read_text())
    assert obj["rows"][1]["label"] == "second"
    assert obj["rows"][0]["sam_sharpness"]["info"]["steps"] == 2
    assert obj["rows"][0]["sam_sharpness"]["info"]["rho"] == 0.1
    ref = _reference(checkpoints[0], ["sam_sharpness"], rho=0.1, steps=2, max_samples=16)
    assert obj["rows"][0]["sam_sharpness"]["value"] == pytest.approx(
        ref["sam_sharpness"].value, rel=1e-6
    )

    csv_out = tmp_path / "cmp.csv"
    assert (
        main(
            [
                "compare",
                str(checkpoints[0]),
                "--metrics",
                "grad_norm",
                "--out",
                str(csv_out),
                "--no-progress",
            ]
        )
        == 0
    )
    assert csv_out.read_text().splitlines()[0] == "checkpoint,label,grad_norm,grad_norm_stderr"


def test_cli_compare_errors_are_one_line(checkpoints, capsys):
    assert main(["compare", str(checkpoints[0]), "--metrics", "nope", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "Invalid metric: 'nope'" in err and "lambda_max" in err and len(err.splitlines()) == 1
    assert main(["compare", str(checkpoints[0]), "--out", "x.txt"]) == 2
    assert main(["compare", "--list-metrics"]) == 0
    assert "eps_sharpness" in capsys.readouterr().out


def test_a_run_folder_stands_for_its_checkpoints_in_epoch_order(tmp_path):
    run = tmp_path / "runs" / "sgd"
    # written out of order; final.pt repeats the last epoch, so it is not listed twice
    for epoch in (2, 0, 1):
        write_checkpoint(run / "checkpoints" / f"epoch_{epoch:04d}.pt", epoch, epoch)
    write_checkpoint(run / "final.pt", 2, 2)
    other = write_checkpoint(tmp_path / "other.pt", 7, 9)
    cmp = compare_checkpoints([run, other], "grad_norm", device="cpu", progress=False)
    assert [r["epoch"] for r in cmp.rows] == [0, 1, 2, 9]
    assert [r["checkpoint"] for r in cmp.rows[:3]] == [
        str(run / "checkpoints" / f"epoch_{e:04d}.pt") for e in range(3)
    ]
    assert [r["label"] for r in cmp.rows] == ["epoch_0000", "epoch_0001", "epoch_0002", "other"]
    twin = tmp_path / "runs" / "sam" / "checkpoints" / "epoch_0000.pt"
    write_checkpoint(twin, 0, 0)
    both = compare_checkpoints([run, twin], "grad_norm", device="cpu", progress=False)
    assert [r["label"] for r in both.rows] == [
        "sgd/epoch_0000",
        "sgd/epoch_0001",
        "sgd/epoch_0002",
        "sam/epoch_0000",
    ]
    direct = compare_checkpoints(
        [run / "checkpoints" / "epoch_0001.pt"], "grad_norm", device="cpu", progress=False
    )
    assert cmp.rows[1]["grad_norm"]["value"] == direct.rows[0]["grad_norm"]["value"]
    with pytest.raises(ValueError, match="4 checkpoints"):
        compare_checkpoints([run, other], "grad_norm", labels=["a", "b"], progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        compare_checkpoints([tmp_path / "runs"], "grad_norm", progress=False)


def test_recorded_columns_come_from_each_checkpoint_training_record(tmp_path, capsys, caplog):
    a = write_checkpoint(tmp_path / "a.pt", 1, 2, {"train_loss": 0.5, "test_acc": 81.25})
    b = write_checkpoint(tmp_path / "b.pt", 2, 3, {"train_loss": 0.25, "lr": None})
    out = tmp_path / "cmp.json"
    cmp = compare_checkpoints(
        [a, b],
        "loss,accuracy",
        recorded="train_loss, test_acc",
        split="test",
        device="cpu",
        progress=False,
        out=out,
    )
    assert cmp.metrics == ["loss", "accuracy", "train_loss", "test_acc"]
    for row, path in zip(cmp.rows, (a, b)):  # the metrics are measured, on the test split
        ref = _reference(path, ["loss", "accuracy"], split="test")
        assert row["loss"]["value"] == pytest.approx(ref["loss"].value, rel=1e-6)
        assert row["accuracy"]["value"] == pytest.approx(ref["accuracy"].value, rel=1e-6)
    assert cmp.value("a", "test_acc") == 81.25 and cmp.value("b", "train_loss") == 0.25
    assert math.isnan(cmp.value("b", "test_acc"))  # b's record lacks it
    assert cmp.rows[0]["test_acc"]["info"] == {"source": "training record", "epoch": 2}
    assert cmp.rows[1]["test_acc"]["info"] == {"source": "not recorded"}
    table = cmp.format_table()
    assert table.splitlines()[0].split() == ["checkpoint", *cmp.metrics]
    assert "81.25" in table
    assert Comparison.read_json(out).settings["recorded"] == ["train_loss", "test_acc"]
    cmp.to_csv(tmp_path / "cmp.csv")
    with open(tmp_path / "cmp.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert lines[0]["test_acc"] == "81.25" and lines[1]["test_acc"] == ""

    # another column list is another comparison: refused, not mixed into the file
    with pytest.raises(ValueError, match="different settings"):
        compare_checkpoints([a, b], "loss,accuracy", split="test", progress=False, out=out)
    with pytest.raises(ValueError, match="'loss' is also a metric"):
        compare_checkpoints([a], "loss", recorded=["loss"], progress=False)
    with pytest.raises(ValueError, match="Invalid recorded"):
        compare_checkpoints([a], "loss", recorded=[""], progress=False)

    # a name no record holds is most likely a typo: said, with what the records hold
    with caplog.at_level(logging.WARNING, logger="landscape.compare"):
        typo = compare_checkpoints([a, b], "loss", recorded="test_accuracy", progress=False)
    assert math.isnan(typo.value("a", "test_accuracy"))
    assert "test_accuracy: in no checkpoint's training record" in caplog.text
    assert "(they hold: lr, test_acc, train_loss)" in caplog.text

    argv = ["compare", str(a), str(b), "--metrics", "loss", "--recorded", "test_acc"]
    assert main([*argv, "--split", "test", "--no-progress", "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == ["checkpoint", "loss", "test_acc"]
    assert "81.25" in printed
