"""``landscape compare`` under torchrun: two gloo processes write one process's file.

The checkpoints are dealt round-robin to the processes (each measures its own alone on
the whole data), or with ``--shard data`` every process measures every checkpoint on its
share of the batches; process 0 alone writes ``--out``, after every round, and a rerun
resumes from it.
"""

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_compare import DATA_SPEC, MODEL_SPEC, write_checkpoint

import landscape
import landscape.compare as compare_module
from landscape.checkpoint import save_checkpoint
from landscape.cli import main
from landscape.compare import compare_checkpoints
from landscape.distributed import DistContext
from landscape.models import build_model

ROOT = Path(landscape.__file__).resolve().parents[1]
# Batches of 10: the 40 training samples are 4 batches, 2 per process with --shard data.
FLAGS = ["--metrics", "loss,grad_norm,lambda_max,trace,sam_sharpness", "--num-products", "8"]
FLAGS += ["--set", "max_products=20", "--batch-size", "10", "--device", "cpu", "--no-progress"]
# The rendezvous of the multi-node guide, on one machine: c10d on the loopback address.
C10D = ["--nnodes=1", "--rdzv-backend=c10d", "--rdzv-endpoint=127.0.0.1:0"]


def _torchrun(*args, launch=("--standalone",), check=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", *launch, "--nproc_per_node=2"]
    cmd += ["-m", "landscape", "compare", *map(str, args), *FLAGS]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def _measured(res):
    """The checkpoints measured, as the processes logged them (``a``, ``b``, ...)."""
    return sorted(line.rsplit("(", 1)[1].rstrip(")") for line in _lines(res, "measuring "))


def _lines(res, text):
    return [line for line in res.stderr.splitlines() if text in line]


def assert_same_rows(got, ref, rel=1e-12, skip=()):
    """Same columns, settings, labels in the same order, values to ``rel``."""
    assert got["metrics"] == ref["metrics"] and got["settings"] == ref["settings"]
    assert [r["label"] for r in got["rows"]] == [r["label"] for r in ref["rows"]]
    for g, r in zip(got["rows"], ref["rows"], strict=True):
        assert g["epoch"] == r["epoch"]
        for name in ref["metrics"]:
            if (r["label"], name) in skip:
                continue
            for key in ("value", "stderr"):
                a, b = g[name][key], r[name][key]
                assert (a is None) == (b is None), (r["label"], name, key)
                if b is not None:
                    assert math.isfinite(a) and a == pytest.approx(b, rel=rel), (r["label"], name)


@pytest.fixture(scope="module")
def four(tmp_path_factory):
    """Checkpoints a, b, c, d (their file stems label them)."""
    root = tmp_path_factory.mktemp("ckpts")
    return [write_checkpoint(root / f"{n}.pt", 20 + i, i) for i, n in enumerate("abcd")]


@pytest.fixture(scope="module")
def reference(four, tmp_path_factory):
    """The comparison file one process writes."""
    out = tmp_path_factory.mktemp("one") / "one.json"
    assert main(["compare", *map(str, four), *FLAGS, "--out", str(out)]) == 0
    return json.loads(out.read_text())


def test_each_checkpoint_measured_with_a_context_of_its_own(four, monkeypatch):
    """The metrics never join torchrun's group by themselves (dist= is always given)."""
    seen = []
    real = compare_module.compute_metrics

    def spy(*args, **kwargs):
        seen.append(kwargs["dist"])
        return real(*args, **kwargs)

    monkeypatch.setattr(compare_module, "compute_metrics", spy)
    dist = DistContext()
    for shard in ("checkpoints", "data"):  # nothing to share in one process
        compare_checkpoints(four[:2], "loss", device="cpu", progress=False, shard=shard, dist=dist)
    assert len(seen) == 4 and not any(d.distributed for d in seen)
    with pytest.raises(ValueError, match="Invalid shard: 'rows'"):
        compare_checkpoints(four[:1], "loss", device="cpu", shard="rows")


@pytest.mark.distributed
def test_two_processes_share_the_checkpoints_and_write_one_process_json(four, reference, tmp_path):
    out = tmp_path / "two.json"
    res = _torchrun(*four, "--out", out, launch=C10D)
    # each checkpoint measured once (two per process); process 0 printed and wrote
    assert _measured(res) == ["a", "b", "c", "d"]
    assert res.stdout.count("sam_sharpness") == 1 and res.stdout.count(f"wrote {out}") == 1
    assert_same_rows(json.loads(out.read_text()), reference)


def _rows(obj, labels):
    return {**obj, "rows": [r for r in obj["rows"] if r["label"] in labels]}


@pytest.mark.distributed
def test_failed_run_keeps_its_rows_and_a_shard_data_rerun_resumes(four, reference, tmp_path):
    paths = [shutil.copy(p, tmp_path / p.name) for p in four[:3]]
    d = tmp_path / "d.pt"  # a model of 5 inputs saved with data of 6 features: fails
    torch.manual_seed(0)
    spec = dict(MODEL_SPEC)
    bad = {**DATA_SPEC, "dim": 6}
    save_checkpoint(d, build_model(spec.pop("name"), **spec), model_spec=MODEL_SPEC, data_spec=bad)
    out = tmp_path / "cmp.json"
    res = _torchrun(*paths, d, "--out", out, check=False)
    # round 1: a and b; round 2: c, and d failed: both processes stop with its error
    assert res.returncode != 0
    assert _lines(res, f"RuntimeError: {d}: RuntimeError:")
    held = json.loads(out.read_text())
    assert [r["label"] for r in held["rows"]] == ["a", "b", "c"]

    write_checkpoint(d, 23, 3)  # fixed; the rows on disk are marked to show their reuse
    for k, row in enumerate(held["rows"]):
        row["loss"]["value"] = 100.0 + k
    out.write_text(json.dumps(held))
    # resumed with the other way of sharing: every process measures d on half its batches
    res = _torchrun(*paths, d, "--out", out, "--shard", "data")
    assert _measured(res) == ["d", "d"]
    got = json.loads(out.read_text())
    assert [r["loss"]["value"] for r in got["rows"][:3]] == [100.0, 101.0, 102.0]
    marked = {(label, "loss") for label in "abc"}
    assert_same_rows(_rows(got, "abc"), _rows(reference, "abc"), skip=marked)
    # the batches' sums add up in another order: equal to float32 rounding
    assert_same_rows(_rows(got, "d"), _rows(reference, "d"), rel=1e-5)
