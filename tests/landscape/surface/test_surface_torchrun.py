import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from _surface_problem import make_problem

from landscape.store import read_surface
from landscape.surface import compute_surface

JOB = Path(__file__).parent / "_surface_job.py"


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
