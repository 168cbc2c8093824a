"""Curvature under torchrun: two gloo processes give one process's results."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _curvature_job import run_all

import landscape
from landscape.checkpoint import save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.metrics import METRICS
from landscape.models import build_model

JOB = Path(__file__).parent / "_curvature_job.py"
ROOT = Path(landscape.__file__).resolve().parents[1]
# Wall-clock times and the timings of method="auto" differ from run to run.
_TIMINGS = {"seconds", "seconds_ggn", "seconds_residual"}


def _torchrun(*args, timeout=240):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    res = subprocess.run(
        [*cmd, *map(str, args)], env=env, capture_output=True, text=True, timeout=timeout
    )
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def assert_same(got, ref, path="", rtol=1e-6, atol=1e-12):
    """Equal structure, equal ints/strings/flags, floats to ``rtol`` (timings skipped)."""
    if isinstance(ref, dict):
        assert set(got) - _TIMINGS == set(ref) - _TIMINGS, path
        for key in set(ref) - _TIMINGS:
            assert_same(got[key], ref[key], f"{path}/{key}", rtol, atol)
    elif isinstance(ref, list):
        assert len(got) == len(ref), path
        for i, (a, b) in enumerate(zip(got, ref, strict=True)):
            assert_same(a, b, f"{path}[{i}]", rtol, atol)
    elif isinstance(ref, float) and not isinstance(got, bool):
        if math.isnan(ref):
            assert math.isnan(got), path
        else:
            assert got == pytest.approx(ref, rel=rtol, abs=atol), path
    else:
        assert got == ref, path


@pytest.mark.distributed
def test_summary_and_every_metric_under_torchrun_equal_one_process(tmp_path):
    _torchrun(JOB, tmp_path)
    got = json.loads((tmp_path / "results.json").read_text())
    ref = json.loads(json.dumps(run_all()))
    refused = got.pop("refused")
    assert len(refused) == 2 and "loss() is not available" in refused[0]
    assert "surfaces share the grid points" in refused[1]
    # each process held half of the 6 batches; the weights are the whole data's
    assert got["batches"] == [3, 3] and ref["batches"] == [6]
    assert got["n_samples"] == ref["n_samples"] == 42
    assert set(got["metrics"]) == set(METRICS)
    assert_same(got, {**ref, "batches": got["batches"]})
    # process 0 wrote the summary file: the summary itself
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert_same(on_disk, got["summary"])
    eig = got["summary"]["eigen"]["eigenvalues"]
    assert len(eig) == 2 and eig[0] > eig[1] > 0


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    bundle = load_data("digits", n_per_class=5)
    spec = {
        "name": "mlp",
        "in_channels": 1,
        "num_classes": bundle.num_classes,
        "input_size": [8, 8],
        "hidden": [6],
    }
    torch.manual_seed(0)
    model = build_model(**spec)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model, model_spec=spec, data_spec=bundle.spec, meta={"epoch": 0})
    return path


@pytest.mark.distributed
def test_cli_hessian_under_torchrun_writes_one_process_json(checkpoint, tmp_path, capsys):
    args = ["--top-k", "2", "--tol", "1e-8", "--trace", "--trace-products", "10"]
    args += ["--batch-size", "16", "--float64", "--device", "cpu", "--no-progress"]
    dist_out, one_out = tmp_path / "dist.json", tmp_path / "one.json"
    res = _torchrun("-m", "landscape", "hessian", checkpoint, *args, "--out", dist_out)
    assert res.stdout.count("λ1 =") == 1 and res.stdout.count(f"wrote {dist_out}") == 1
    assert main(["hessian", str(checkpoint), *args, "--out", str(one_out)]) == 0
    got, ref = json.loads(dist_out.read_text()), json.loads(one_out.read_text())
    assert got["n_samples"] == ref["n_samples"] == 50
    assert_same(got, ref, atol=1e-15)
