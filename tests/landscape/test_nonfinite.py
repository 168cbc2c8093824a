"""Non-finite values: training stops (or goes on when asked), compare and hessian say which file."""

from __future__ import annotations

import json
import logging
import math

import pytest
import torch

from landscape.checkpoint import load_checkpoint, run_checkpoints, save_checkpoint
from landscape.cli import main
from landscape.compare import compare_checkpoints
from landscape.data import load_data
from landscape.models import build_model
from landscape.training import NonFiniteLoss, train

# Synthetic data and an MLP: lr=1e6 overflows in the second epoch, in milliseconds.
SYNTH = dict(
    model="mlp",
    data="synthetic",
    data_kwargs={"n_train": 48, "n_test": 16, "dim": 5, "classes": 3},
    model_kwargs={"hidden": [8]},
    batch_size=16,
    epochs=3,
    lr=1e6,
    progress=False,
)
SPEC = {"name": "mlp", "in_channels": 1, "num_classes": 10, "input_size": [8, 8], "hidden": [4]}


def _finite(path):
    return all(bool(torch.isfinite(t).all()) for t in load_checkpoint(path).state_dict.values())


def test_training_stops_at_the_first_nonfinite_loss_keeping_the_checkpoints(tmp_path):
    with pytest.raises(NonFiniteLoss) as info:
        train(out=tmp_path, **SYNTH)
    exc = info.value
    assert math.isnan(exc.value) or math.isinf(exc.value)
    kept = run_checkpoints(tmp_path)
    assert kept and all(_finite(p) for p in kept)  # nothing non-finite was written
    assert not (tmp_path / "final.pt").exists()
    assert exc.last_checkpoint == kept[-1] and exc.run_dir == tmp_path
    assert load_checkpoint(kept[-1]).epoch == exc.epoch - 1
    assert str(kept[-1]) in str(exc) and f"at epoch {exc.epoch}" in str(exc)
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(exc.epoch))


def test_without_a_folder_the_message_says_nothing_was_saved():
    with pytest.raises(NonFiniteLoss, match="nothing was saved"):
        train(**SYNTH)


def test_continue_trains_on_with_one_warning(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="landscape.training"):
        res = train(out=tmp_path, nonfinite="continue", **SYNTH)
    assert res.completed and (tmp_path / "final.pt").is_file()
    warnings = [r for r in caplog.records if "non-finite training loss" in r.getMessage()]
    assert len(warnings) == 1 and "continue" in warnings[0].getMessage()
    assert not math.isfinite(res.metrics[-1]["train_loss"])


def test_a_sane_run_is_untouched_by_the_check(tmp_path):
    res = train(out=tmp_path, **{**SYNTH, "lr": 0.05})
    assert res.completed and all(math.isfinite(r["train_loss"]) for r in res.metrics)


def test_invalid_nonfinite_mode():
    with pytest.raises(ValueError, match="Invalid nonfinite"):
        train(nonfinite="ignore", **SYNTH)


def test_cli_exit_3_and_allow_nonfinite(tmp_path, capsys):
    argv = ["train", "--data", "synthetic", "--model", "mlp", "--model-arg", "hidden=[8]"]
    for kv in ("n_train=48", "n_test=16", "dim=5", "classes=3"):
        argv += ["--data-arg", kv]
    argv += ["--batch-size", "16", "--epochs", "3", "--lr", "1e6", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "non-finite training loss" in err[0] and "--allow-nonfinite" in err[0]
    assert main([*argv, "--out", str(tmp_path / "b"), "--allow-nonfinite"]) == 0
    assert (tmp_path / "b" / "final.pt").is_file()


# ---------------------------------------------------------------- compare and hessian


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("nonfinite")
    data = load_data("digits", n_per_class=3).spec
    spec = dict(SPEC)
    paths = {}
    for name, how in (("good", None), ("nan", "nan"), ("huge", "huge"), ("good2", None)):
        torch.manual_seed(len(paths))
        model = build_model(spec["name"], **{k: v for k, v in spec.items() if k != "name"})
        with torch.no_grad():
            if how == "nan":
                next(model.parameters())[0, 0] = float("nan")
            elif how == "huge":  # finite weights, but the loss overflows
                for p in model.parameters():
                    p.mul_(1e37)
        paths[name] = save_checkpoint(
            root / f"{name}.pt", model, model_spec=SPEC, data_spec=data, meta={"epoch": 0}
        )
    return paths


def test_compare_records_a_nan_row_and_finishes_the_table(ckpts, tmp_path, caplog):
    files = [ckpts["good"], ckpts["nan"], ckpts["huge"], ckpts["good2"]]
    out = tmp_path / "cmp.json"
    with caplog.at_level(logging.WARNING, logger="landscape.compare"):
        cmp = compare_checkpoints(
            files, "lambda_max,grad_norm", max_samples=16, progress=False, out=out
        )
    assert [r["label"] for r in cmp.rows] == ["good", "nan", "huge", "good2"]
    for label in ("good", "good2"):
        assert math.isfinite(cmp.value(label, "lambda_max"))
    for label, why in (("nan", "non-finite weights"), ("huge", "non-finite loss")):
        assert math.isnan(cmp.value(label, "lambda_max")) and math.isnan(
            cmp.value(label, "grad_norm")
        )
        row = next(r for r in cmp.rows if r["label"] == label)
        assert why in row["nonfinite"]
        warned = [r.getMessage() for r in caplog.records if str(ckpts[label]) in r.getMessage()]
        assert len(warned) == 1 and why in warned[0] and "row is nan" in warned[0]
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == 4 and saved["rows"][1]["lambda_max"]["value"] is None
    # resuming reuses every row, the nan rows included
    again = compare_checkpoints(
        files, "lambda_max,grad_norm", max_samples=16, progress=False, out=out
    )
    assert again.rows[1]["nonfinite"] == cmp.rows[1]["nonfinite"]


def test_cli_compare_prints_the_table_with_nan(ckpts, capsys):
    argv = ["compare", str(ckpts["good"]), str(ckpts["nan"]), "--metrics", "grad_norm"]
    assert main([*argv, "--max-samples", "16", "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "nan" in table.splitlines()[-1] and table.splitlines()[-1].startswith("nan")


@pytest.mark.parametrize(
    "name, pattern",
    [("nan", r"nan\.pt: non-finite weights"), ("huge", r"huge\.pt: .*holds nan or inf")],
)
def test_cli_hessian_names_the_file(ckpts, capsys, name, pattern):
    import re

    argv = ["hessian", str(ckpts[name]), "--top-k", "1", "--max-products", "5"]
    assert main([*argv, "--max-samples", "16", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.search(pattern, err[0]), err


def test_load_checkpoint_lists_or_refuses_nonfinite_weights(ckpts):
    ck = load_checkpoint(ckpts["nan"])
    assert ck.nonfinite == ["net.1.weight"]  # the first weight, where the nan was put
    assert load_checkpoint(ckpts["good"]).nonfinite == []
    with pytest.raises(ValueError, match=r"nan\.pt: non-finite weights \(nan or inf in 1 of"):
        load_checkpoint(ckpts["nan"], finite=True)
