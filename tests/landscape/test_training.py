"""Training: exact resume, run folder layout, determinism, CLI, kill-and-rerun, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

import optimizers
from landscape import load_checkpoint
from landscape.checkpoint import run_checkpoints
from landscape.cli import main
from landscape.training import cosine_factor, random_crop_flip, train

SCRIPTS = Path(__file__).parent / "scripts"
REPO = Path(__file__).resolve().parents[2]

# A tiny CNN on 100 digits: an epoch takes milliseconds.
DIGITS = dict(
    model="cnn",
    data="digits",
    n_per_class=10,
    model_kwargs={"width": 4, "hidden": 16},
    batch_size=32,
    lr=0.05,
    progress=False,
)
# An even tinier MLP on synthetic data, for the sweep over all optimizers.
SYNTH = dict(
    model="mlp",
    data="synthetic",
    data_kwargs={"n_train": 48, "n_test": 16, "dim": 5, "classes": 3},
    model_kwargs={"hidden": [8]},
    batch_size=16,
    lr=0.05,
    progress=False,
)


def _assert_same_weights(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def _losses(rows):
    return [(r["epoch"], r["train_loss"], r.get("test_loss")) for r in rows]


def test_resume_after_stop_equals_uninterrupted(tmp_path):
    kw = dict(DIGITS, optimizer="sam", epochs=4, label_noise=0.2, val_fraction=0.2, augment=True)
    full = train(out=tmp_path / "full", **kw)
    part = train(out=tmp_path / "cut", stop_after_epoch=2, **kw)
    assert not part.completed and part.final_checkpoint is None
    assert not (tmp_path / "cut" / "final.pt").exists()
    rest = train(out=tmp_path / "cut", **kw)
    assert rest.resumed_from == 2 and rest.completed
    _assert_same_weights(full.model, rest.model)
    assert _losses(full.metrics) == _losses(rest.metrics)
    assert {"train_clean_acc", "val_acc", "test_acc"} <= set(full.metrics[-1])
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [0, 1, 2, 3, 4]
    # a finished run is not trained again
    again = train(out=tmp_path / "cut", **kw)
    assert again.resumed_from == 4
    _assert_same_weights(full.model, again.model)


@pytest.mark.parametrize("name", optimizers.OPTIMIZER_NAMES)
def test_every_optimizer_trains_and_resumes_bit_identically(tmp_path, name):
    kw = dict(SYNTH, optimizer=name, epochs=2)
    full = train(out=tmp_path / "full", **kw)
    train(out=tmp_path / "cut", stop_after_epoch=1, **kw)
    rest = train(out=tmp_path / "cut", **kw)
    assert rest.resumed_from == 1
    _assert_same_weights(full.model, rest.model)
    assert full.metrics[-1]["train_loss"] < full.metrics[0]["train_loss"]
    ck = load_checkpoint(tmp_path / "full" / "final.pt")
    assert ck.meta["optimizer"] == name
    assert ck.meta["hparams"] == {
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 5e-4,
        "base": "sgd",
        **optimizers.optimizer_hparams(name),
    }


def test_run_folder_layout_metrics_and_schedule(tmp_path):
    res = train(out=tmp_path, epochs=3, save_every=2, val_fraction=0.2, **DIGITS)
    names = [p.relative_to(tmp_path).as_posix() for p in run_checkpoints(tmp_path)]
    assert names == ["checkpoints/epoch_0000.pt", "checkpoints/epoch_0002.pt", "final.pt"]
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
    for key in ("train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc"):
        assert all(math.isfinite(r[key]) for r in rows), key
    assert all("lr" in r and "time" in r for r in rows)
    # cosine schedule per step: 80 examples, batches of 32 -> 3 steps per epoch
    steps = 3
    for r in rows:
        expect = 0.05 * cosine_factor(r["epoch"] * steps, 3 * steps)
        assert r["lr"] == pytest.approx(expect, abs=1e-12)
    assert rows[-1]["lr"] == pytest.approx(0.0, abs=1e-12)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["model"]["name"] == "cnn" and config["data"]["n_per_class"] == 10
    # the final checkpoint: ready model, data spec that rebuilds the data, metrics
    ck = load_checkpoint(tmp_path / "final.pt")
    _assert_same_weights(ck.model, res.model)
    assert ck.epoch == 3 and ck.meta["metrics"]["test_acc"] == rows[-1]["test_acc"]
    data = ck.load_data()
    assert torch.equal(data.train.tensors[0], res.data.train.tensors[0])
    from landscape.objective import Objective

    recomputed = Objective(ck.model, data.test).evaluate()
    assert recomputed["loss"] == pytest.approx(rows[-1]["test_loss"], rel=1e-6)
    ck0 = load_checkpoint(tmp_path / "checkpoints" / "epoch_0000.pt")
    assert ck0.epoch == 0 and ck0.meta["metrics"]["train_loss"] == rows[0]["train_loss"]


def test_random_crop_flip_matches_a_per_example_restatement():
    x = torch.randn(6, 2, 5, 7)
    out = random_crop_flip(x, torch.Generator().manual_seed(3), padding=2)
    g = torch.Generator().manual_seed(3)
    offsets = torch.randint(0, 5, (2, 6), generator=g)
    flips = torch.rand(6, generator=g) < 0.5
    assert 0 < int(flips.sum()) < 6  # both cases are exercised
    padded = torch.zeros(6, 2, 9, 11)
    padded[:, :, 2:7, 2:9] = x
    for i in range(6):
        dy, dx = int(offsets[0, i]), int(offsets[1, i])
        crop = padded[i, :, dy : dy + 5, dx : dx + 7]
        if flips[i]:
            crop = crop.flip(-1)
        assert torch.equal(out[i], crop)
    same = random_crop_flip(x, torch.Generator().manual_seed(0), padding=0)
    assert all(torch.equal(s, x[i]) or torch.equal(s, x[i].flip(-1)) for i, s in enumerate(same))


def test_deterministic_and_global_rng_untouched():
    torch.manual_seed(1234)
    state = torch.get_rng_state()
    a = train(epochs=2, **DIGITS)
    assert torch.equal(torch.get_rng_state(), state)
    b = train(epochs=2, **DIGITS)
    _assert_same_weights(a.model, b.model)
    c = train(epochs=2, seed=1, **DIGITS)
    assert not torch.equal(a.model.state_dict()["head.3.bias"], c.model.state_dict()["head.3.bias"])


def test_amp_on_cpu_warns_and_trains_in_float32(caplog):
    plain = train(epochs=1, **DIGITS)
    with caplog.at_level("WARNING", logger="landscape.training"):
        amp = train(epochs=1, amp=True, **DIGITS)
    assert "autocast applies on CUDA only" in caplog.text
    _assert_same_weights(plain.model, amp.model)


def test_other_configuration_in_run_folder_is_refused(tmp_path):
    train(out=tmp_path, epochs=1, **DIGITS)
    with pytest.raises(ValueError, match=r"different configuration \(epochs: 1 there, 2 now\)"):
        train(out=tmp_path, epochs=2, **DIGITS)
    res = train(out=tmp_path, epochs=2, resume=False, **DIGITS)
    assert res.resumed_from is None and (tmp_path / "final.pt").is_file()
    assert load_checkpoint(tmp_path / "final.pt").epoch == 2


def test_user_model_and_tensor_data(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 3, generator=g)
    y = (x[:, 0] > 0).long()
    net = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    res = train(net, (x, y), epochs=3, batch_size=10, lr=0.1, out=tmp_path, progress=False)
    assert res.model is net and res.metrics[-1]["train_loss"] < res.metrics[0]["train_loss"]
    with pytest.raises(ValueError, match=r"plain state_dict|no model description"):
        load_checkpoint(tmp_path / "final.pt")
    fresh = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 2))
    ck = load_checkpoint(tmp_path / "final.pt", model=fresh)
    _assert_same_weights(ck.model, net)
    assert ck.data_spec is None


class _PairDataset(torch.utils.data.Dataset):
    """A map-style dataset that is not a TensorDataset."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def test_any_dataset_trains_like_the_same_tensors():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, generator=g)
    y = (x[:, 1] > 0).long()
    kw = dict(epochs=2, batch_size=8, lr=0.1, progress=False)
    torch.manual_seed(0)
    a = train(nn.Linear(4, 2), _PairDataset(x, y), **kw)
    torch.manual_seed(0)
    b = train(nn.Linear(4, 2), (x, y), **kw)
    _assert_same_weights(a.model, b.model)
    assert a.metrics[-1]["train_loss"] == b.metrics[-1]["train_loss"]


@pytest.mark.parametrize("n", [12, 11])
def test_distributed_sharding_like_distributed_sampler(n):
    from landscape.distributed import DistContext
    from landscape.training import _batches_of_epoch

    shares = []
    for rank in range(2):
        ctx = DistContext(rank=rank, world_size=2)
        batches = _batches_of_epoch(n, 4, torch.Generator().manual_seed(5), ctx)
        assert all(len(b) == 2 for b in batches[:-1])  # 4 / 2 processes
        shares.append(torch.cat(batches))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(5))
    padded = torch.cat([perm, perm[: (-n) % 2]])
    assert torch.equal(shares[0], padded[0::2]) and torch.equal(shares[1], padded[1::2])
    assert set(torch.cat(shares).tolist()) == set(range(n))
    one = _batches_of_epoch(n, 4, torch.Generator().manual_seed(5), DistContext())
    assert torch.equal(torch.cat(one), perm)
    # a last batch of a single example is skipped (BatchNorm cannot train on it)
    nine = _batches_of_epoch(9, 4, torch.Generator().manual_seed(5), DistContext())
    assert [len(b) for b in nine] == [4, 4]


def test_bad_names_and_values():
    with pytest.raises(ValueError, match="sgd, adam, sam"):
        train(optimizer="lion", **DIGITS)
    with pytest.raises(ValueError, match="Invalid hparams for optimizer 'sam': eta"):
        train(optimizer="sam", hparams={"eta": 0.1}, **DIGITS)
    with pytest.raises(ValueError, match="Unknown model 'vgg'"):
        train(**{**DIGITS, "model": "vgg"})
    with pytest.raises(ValueError, match="Unknown dataset 'svhn'"):
        train(**{**DIGITS, "data": "svhn"})
    with pytest.raises(ValueError, match="Invalid epochs"):
        train(epochs=0, **DIGITS)
    with pytest.raises(ValueError, match=r"Invalid augment: .* not inputs of shape \(5,\)"):
        train(**{**SYNTH, "augment": True})
    with pytest.raises(ValueError, match="built-in dataset names only"):
        train("mlp", (torch.randn(4, 2), torch.zeros(4).long()), label_noise=0.1)


# ------------------------------------------------------------------ command line


def _cli(out, *extra):
    return [
        "train",
        "--data",
        "digits",
        "--n-per-class",
        "10",
        "--model",
        "cnn",
        "--model-arg",
        "width=4",
        "--model-arg",
        "hidden=16",
        "--batch-size",
        "32",
        "--lr",
        "0.05",
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def test_cli_trains_with_optimizer_hparams(tmp_path, capsys):
    assert main(_cli(tmp_path, "--optimizer", "asam", "--rho", "0.3", "--epochs", "1")) == 0
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["optimizer"] == "asam"
    assert config["hparams"]["rho"] == 0.3 and config["hparams"]["eta"] == 0.01
    assert config["model"]["width"] == 4 and config["model"]["hidden"] == 16
    assert "epoch 1:" in capsys.readouterr().out
    # the same run through the API resumes the finished run (same configuration)
    res = train(epochs=1, optimizer="asam", hparams={"rho": 0.3}, out=tmp_path, **DIGITS)
    assert res.resumed_from == 1


def test_cli_cifar_folder_resnet_augment(tmp_path):
    import pickle

    import numpy as np

    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {
            b"data": rng.integers(0, 256, size=(4, 3072), dtype=np.uint8),
            b"labels": [int(v) for v in rng.integers(0, 10, size=4)],
        }
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    out = tmp_path / "run"
    argv = ["train", "--data", "cifar10", "--data-dir", str(tmp_path / "data"), "--augment"]
    argv += ["--model", "resnet20", "--model-arg", "width=2", "--epochs", "1"]
    argv += ["--batch-size", "10", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    ck = load_checkpoint(out / "final.pt")
    assert ck.model_spec["input_size"] == [32, 32] and ck.model_spec["in_channels"] == 3
    assert ck.data_spec["data_dir"] == str(tmp_path / "data")
    assert len(ck.load_data().train) == 20
    assert json.loads((out / "config.json").read_text())["augment"] is True


def test_cli_errors(tmp_path, capsys):
    assert main(_cli(tmp_path, "--optimizer", "sgd", "--rho", "0.1")) == 2
    err = capsys.readouterr().err
    assert "--rho does not apply to --optimizer sgd" in err and "\n" == err[-1]
    assert main(_cli(tmp_path, "--optimizer", "agnostic_sam", "--opt-val-fraction", "2")) == 2
    with pytest.raises(SystemExit):
        main(_cli(tmp_path, "--data", "imagenet"))
    assert "invalid choice" in capsys.readouterr().err


def _env():
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    return env


def test_killed_run_resumes_to_the_same_weights(tmp_path, capsys):
    args = ["--epochs", "20", "--optimizer", "sam", "--seed", "3"]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "landscape", *_cli(out, *args)]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    target = out / "checkpoints" / "epoch_0003.pt"
    deadline = time.monotonic() + 120
    while not target.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_mid_run = not (out / "final.pt").exists()
    assert killed_mid_run, "the run finished before it could be killed"
    first = out / "checkpoints" / "epoch_0001.pt"
    stamp = first.stat().st_mtime_ns
    # re-run the same command (in this process, to save a start-up)
    assert main(_cli(out, *args)) == 0
    assert "epoch 20:" in capsys.readouterr().out
    assert first.stat().st_mtime_ns == stamp  # resumed, not started over
    ref = train(epochs=20, optimizer="sam", seed=3, **DIGITS)
    _assert_same_weights(load_checkpoint(out / "final.pt").model, ref.model)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == list(range(21))


@pytest.mark.distributed
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(SCRIPTS / "ddp_train.py"),
        str(out),
        str(weights),
    ]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "of world 2 done" in done.stdout
    r0 = torch.load(weights / "rank0.pt", weights_only=True)
    r1 = torch.load(weights / "rank1.pt", weights_only=True)
    assert list(r0) == list(r1)
    for k in r0:
        assert torch.equal(r0[k], r1[k]), k
    ck = load_checkpoint(out / "final.pt")
    for k, v in ck.state_dict.items():
        assert torch.equal(v, r0[k]), k
    assert ck.epoch == 2 and json.loads((out / "config.json").read_text())["world_size"] == 2
    rows = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in rows] == [0, 1, 2]  # written once (rank 0)
    # the weights changed from the initialisation, identically on both ranks
    init = load_checkpoint(out / "checkpoints" / "epoch_0000.pt").state_dict
    assert any(not torch.equal(init[k], r0[k]) for k in r0)
