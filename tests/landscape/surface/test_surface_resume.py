import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from _surface_problem import make_problem

from landscape.store import read_surface
from landscape.surface import compute_surface

HERE = Path(__file__).parent
JOB = HERE / "_surface_job.py"
NX, NY, N = 7, 6, 64


def _reference(tmp_path):
    model, x, y = make_problem(N)
    return compute_surface(
        model,
        (x, y),
        x=f"-1:1:{NX}",
        y=f"-1:1:{NY}",
        test_data=(x[:16], y[:16]),
        batch_size=16,
        seed=3,
        out=tmp_path / "ref.h5",
        progress=False,
    )


def _done_count(path):
    try:
        with h5py.File(path, "r", locking=False) as f:
            return int(f["done"][()].sum())
    except (OSError, KeyError):
        return 0


def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    out = tmp_path / "killed.h5"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(JOB), str(out), str(NX), str(NY), str(N), "--slow"]
    proc = subprocess.Popen(cmd, env=env)
    try:
        deadline = time.monotonic() + 60
        while _done_count(out) < 5 and time.monotonic() < deadline:
            assert proc.poll() is None, "the job ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    partial = read_surface(out)  # still a readable file after a SIGKILL
    n_done = int(partial.done.sum())
    assert 5 <= n_done < NX * NY
    # Rerun (in this process, without the sleep): resumes the remaining points only.
    model, x, y = make_problem(N)
    resumed = compute_surface(
        model,
        (x, y),
        x=f"-1:1:{NX}",
        y=f"-1:1:{NY}",
        test_data=(x[:16], y[:16]),
        batch_size=16,
        seed=3,
        out=out,
        progress=False,
    )
    ref = _reference(tmp_path)
    assert resumed.complete
    for name, ref_values in ref.values.items():
        np.testing.assert_array_equal(resumed.values[name], ref_values)
    # values computed before the kill were kept, not recomputed
    np.testing.assert_array_equal(
        partial.values["train_loss"][partial.done], ref.values["train_loss"][partial.done]
    )


def test_rerun_of_a_complete_file_computes_nothing(tmp_path, monkeypatch):
    ref = _reference(tmp_path)
    calls = []
    from landscape.objective import Objective

    original = Objective.evaluate
    monkeypatch.setattr(Objective, "evaluate", lambda self: calls.append(1) or original(self))
    model, x, y = make_problem(N)
    again = compute_surface(
        model,
        (x, y),
        x=f"-1:1:{NX}",
        y=f"-1:1:{NY}",
        test_data=(x[:16], y[:16]),
        batch_size=16,
        seed=3,
        out=tmp_path / "ref.h5",
        progress=False,
    )
    assert calls == []
    np.testing.assert_array_equal(again.values["train_loss"], ref.values["train_loss"])
    torch.testing.assert_close(torch.tensor(again.x), torch.tensor(ref.x))


def test_repeated_sigkill_of_a_writer_never_damages_the_file(tmp_path):
    """Kill a process writing and flushing in a tight loop at random instants."""
    out = tmp_path / "w.h5"
    job = HERE / "_store_writer_job.py"
    rng = np.random.default_rng(0)
    mid_write_kills = 0
    for _ in range(6):
        before = _done_count(out) if out.exists() else 0
        proc = subprocess.Popen([sys.executable, str(job), str(out)])
        deadline = time.monotonic() + 60
        while _done_count(out) <= before and proc.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        time.sleep(float(rng.uniform(0, 0.05)))  # now it is writing and flushing
        proc.kill()
        proc.wait(timeout=30)
        s = read_surface(out)  # readable after every kill
        n = int(s.done.sum())
        mid_write_kills += proc.returncode == -signal.SIGKILL and before < n < 2000
        flat = np.flatnonzero(s.done.ravel())
        np.testing.assert_array_equal(s.values["train_loss"].ravel()[flat], 0.5 * flat - 3)
        np.testing.assert_array_equal(s.values["train_acc"].ravel()[flat], flat % 100)
        if n == 2000:
            break
    assert mid_write_kills >= 3
    # finish the job and check every cell
    subprocess.run([sys.executable, str(job), str(out)], check=True, timeout=60)
    s = read_surface(out)
    assert s.complete
    np.testing.assert_array_equal(s.values["train_loss"].ravel(), 0.5 * np.arange(2000) - 3)
