import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _surface_problem import make_problem

import landscape
from landscape.store import read_surface
from landscape.surface import compute_surface

JOB = Path(__file__).parent / "_surface_job.py"
ROOT = Path(landscape.__file__).resolve().parents[1]


@pytest.mark.distributed
def test_torchrun_two_processes_equal_one(tmp_path):
    out = tmp_path / "dist.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(JOB),
        str(out),
        "5",
        "4",
        "40",
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    model, x, y = make_problem(40)
    ref = compute_surface(
        model,
        (x, y),
        x="-1:1:5",
        y="-1:1:4",
        test_data=(x[:16], y[:16]),
        batch_size=16,
        seed=3,
        progress=False,
    )
    got = read_surface(out)
    assert got.complete and set(got.values) == set(ref.values)
    for name in ref.values:
        np.testing.assert_array_equal(got.values[name], ref.values[name])


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.distributed
def test_two_nodes_c10d_rendezvous_on_loopback_equal_one_process(tmp_path):
    """The multi-node commands of docs/guides/distributed.md, two "nodes" on 127.0.0.1.

    Two torchrun agents (``--nnodes=2``, one process each) meet at the c10d rendezvous
    and compute one surface: process 0 writes it, equal to one process's.
    """
    from landscape.checkpoint import save_checkpoint
    from landscape.cli import main
    from landscape.models import build_model

    spec = {"name": "mlp", "in_channels": 1, "num_classes": 3, "input_size": [5], "hidden": [6]}
    data = {"name": "synthetic", "seed": 0, "n_train": 40, "n_test": 30, "dim": 5, "classes": 3}
    ckpt = tmp_path / "final.pt"
    save_checkpoint(ckpt, build_model(**spec), model_spec=spec, data_spec=data)
    args = [str(ckpt), "--x", "-1:1:5", "--y", "-1:1:4", "--device", "cpu", "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    launch = [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1"]
    launch += ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{_free_port()}"]
    launch += [f"--rdzv-id=surface-{os.getpid()}"]
    out = tmp_path / "nodes.h5"
    cmd = [*launch, "-m", "landscape", "surface", *args, "--out", str(out)]
    nodes = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    try:
        logs = [node.communicate(timeout=240) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    for node, (_, err) in zip(nodes, logs, strict=True):
        assert node.returncode == 0, err[-3000:]
    joined = "".join(err for _, err in logs)
    assert "rank 0/2 joined" in joined and "rank 1/2 joined" in joined
    assert sum(stdout.count(str(out)) for stdout, _ in logs) == 1  # process 0 reports
    one = tmp_path / "one.h5"
    assert main(["surface", *args, "--out", str(one)]) == 0
    got, ref = read_surface(out), read_surface(one)
    assert got.complete and set(got.values) == set(ref.values) == {"train_loss", "train_acc"}
    for name in ref.values:
        np.testing.assert_array_equal(got.values[name], ref.values[name])
