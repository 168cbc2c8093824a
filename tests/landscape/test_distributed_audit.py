"""Audit of the multi-process paths: bad torchrun environments, one failing rank, odd data.

The torchrun cases start two gloo processes on the CPU (each test well under 30 s) and
use a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import landscape
from landscape.distributed import cleanup_distributed, init_distributed

ROOT = Path(landscape.__file__).resolve().parents[1]

_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


def _environment(monkeypatch, **values):
    for key in _ENV:
        monkeypatch.delenv(key, raising=False)
    for key, value in values.items():
        monkeypatch.setenv(key, value)


@pytest.mark.parametrize(
    ("env", "match"),
    [
        ({"WORLD_SIZE": "abc"}, r"Invalid WORLD_SIZE: 'abc'"),
        ({"WORLD_SIZE": "2", "RANK": "x"}, r"Invalid RANK: 'x'"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "zz"}, r"Invalid LOCAL_RANK: 'zz'"),
        ({"WORLD_SIZE": "0"}, r"Invalid WORLD_SIZE: 0"),
        # A rank outside [0, WORLD_SIZE) waited for ever at the rendezvous.
        ({"WORLD_SIZE": "2", "RANK": "5"}, r"Invalid RANK: 5 .*0 to WORLD_SIZE - 1 = 1"),
        ({"WORLD_SIZE": "2", "RANK": "-1"}, r"Invalid RANK: -1"),
        ({"WORLD_SIZE": "1", "RANK": "1"}, r"Invalid RANK: 1"),
        ({"WORLD_SIZE": "2", "RANK": "0", "LOCAL_RANK": "-1"}, r"Invalid LOCAL_RANK: -1"),
    ],
)
def test_init_distributed_refuses_a_bad_environment_at_once(monkeypatch, env, match):
    _environment(monkeypatch, MASTER_ADDR="127.0.0.1", MASTER_PORT="1", **env)
    with pytest.raises(ValueError, match=match):
        init_distributed(device="cpu")


def test_init_distributed_without_cuda_computes_on_the_cpu(monkeypatch):
    _environment(monkeypatch, WORLD_SIZE="1", RANK="0", LOCAL_RANK="0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    ctx = init_distributed()
    assert ctx.device == torch.device("cpu") and not ctx.distributed
    assert init_distributed(device="auto").device == torch.device("cpu")
    with pytest.raises(ValueError, match="CUDA is not available"):
        init_distributed(device="cuda")
    _environment(monkeypatch, WORLD_SIZE="", RANK="")  # empty values: one process
    assert init_distributed(device="cpu").world_size == 1


def test_a_loader_with_a_distributed_sampler_is_read_whole():
    from torch.utils.data import DataLoader, TensorDataset
    from torch.utils.data.distributed import DistributedSampler

    from landscape.objective import Objective

    data = TensorDataset(torch.randn(8, 4), torch.randint(0, 3, (8,)))
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=True, seed=0)
    loader = DataLoader(data, batch_size=3, sampler=sampler)  # the usual DDP loader
    obj = Objective(torch.nn.Linear(4, 3), loader)
    assert obj.n_samples == 8  # 4: rank 1's half, in a shuffled order


# --------------------------------------------------------------------------- torchrun
def _torchrun(job: str, *args: object, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run ``job`` of this file's ``__main__`` on two gloo processes (a hang: a failure)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    for key in _ENV:
        env.pop(key, None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += [__file__, job, *map(str, args)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _job_rejoin(out: str) -> None:
    """Join and leave the group several times, rank 1 slower to leave and to join."""
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    for _ in range(4):
        ctx = init_distributed(device="cpu")
        total = torch.ones(1)
        dist.all_reduce(total)
        assert total.item() == 2
        if rank == 1:
            time.sleep(0.3)
        cleanup_distributed(ctx)
        if rank == 1:
            time.sleep(0.3)
    Path(out, f"rank{rank}").write_text("ok")


@pytest.mark.distributed
def test_processes_join_and_leave_the_group_again_and_again(tmp_path):
    # Each library call joins torchrun's group and leaves it (hessian_summary, then
    # compute_metrics...): a group joined again read the last one's stale addresses.
    res = _torchrun("rejoin", tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rank0", "rank1"]


_SURFACE = {"x": "-1:1:5", "y": "-1:1:4", "batch_size": 16, "seed": 3, "progress": False}


def _surface_problem():
    sys.path.insert(0, str(Path(__file__).parent / "surface"))
    from _surface_problem import make_problem

    model, x, y = make_problem(40)
    return model, (x, y), (x[:16], y[:16])


def _job_surface(out: str, die_after: str) -> None:
    """A surface into ``out``; rank 1 dies after ``die_after`` batches (-1: never)."""
    from landscape.surface import compute_surface

    calls = [0]

    def loss_fn(outputs, targets):
        calls[0] += 1
        if os.environ["RANK"] == "1" and calls[0] == int(die_after):
            os._exit(3)  # the process dies (a node lost), no clean-up
        return torch.nn.functional.cross_entropy(outputs, targets)

    model, data, test = _surface_problem()
    compute_surface(
        model, data, test_data=test, loss_fn=loss_fn, out=out, flush_seconds=0.0, **_SURFACE
    )


@pytest.mark.distributed
def test_a_surface_interrupted_by_a_dead_rank_resumes_to_one_process_values(tmp_path):
    import numpy as np

    from landscape.store import read_surface
    from landscape.surface import compute_surface

    out = tmp_path / "surf.h5"
    # 4 loss calls a point, 4 points a round: rank 1 dies as its 3rd round starts, when
    # process 0 has written round 1 at least (round 2 too unless it was stopped first).
    died = _torchrun("surface", out, 33)
    assert died.returncode != 0
    part = read_surface(out)  # readable, with the points of the finished rounds
    assert 8 <= part.done.sum() < part.done.size
    res = _torchrun("surface", out, -1)
    assert res.returncode == 0, res.stderr[-3000:]
    got = read_surface(out)
    model, data, test = _surface_problem()
    ref = compute_surface(model, data, test_data=test, **_SURFACE)
    assert got.complete and set(got.values) == set(ref.values)
    for name in ref.values:
        np.testing.assert_array_equal(got.values[name], ref.values[name])


def _job_own_group(out: str) -> None:
    """The caller's own process group (as ``mp.spawn`` makes: no torchrun variables)."""
    import torch.distributed as dist

    from landscape.surface import compute_surface

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    for key in _ENV:
        os.environ.pop(key)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.initialized_here) == (rank, 2, False), ctx
    model, data, test = _surface_problem()
    surface = compute_surface(model, data, test_data=test, out=out, **_SURFACE)
    cleanup_distributed(ctx)  # not ours: left joined
    assert dist.is_initialized()
    dist.destroy_process_group()
    np = pytest.importorskip("numpy")
    np.save(Path(out).with_name(f"rank{rank}.npy"), surface.values["train_loss"])


@pytest.mark.distributed
def test_a_process_group_of_the_callers_own_is_used_and_one_process_writes(tmp_path):
    # init_distributed read the world from torchrun's variables only: under a group the
    # caller made (mp.spawn, tcp:// init), each process computed the whole surface alone
    # and every one of them wrote the same file.
    import numpy as np

    from landscape.store import read_surface
    from landscape.surface import compute_surface

    out = tmp_path / "surf.h5"
    res = _torchrun("own_group", out)
    assert res.returncode == 0, res.stderr[-3000:]
    model, data, test = _surface_problem()
    ref = compute_surface(model, data, test_data=test, **_SURFACE)
    got = read_surface(out)
    assert got.complete
    for name in ref.values:
        np.testing.assert_array_equal(got.values[name], ref.values[name])
    for rank in (0, 1):
        np.testing.assert_array_equal(
            np.load(tmp_path / f"rank{rank}.npy"), ref.values["train_loss"]
        )


class _FailsOnRank1(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        if os.environ["RANK"] == "1":
            raise RuntimeError("the model fails on rank 1")
        return self.fc(x)


def _job_one_rank_fails(kind: str, out: str) -> None:
    """An error on one rank only: the model on rank 1, or ``out`` on rank 0."""
    from landscape.hessian.summary import hessian_summary
    from landscape.metrics import compute_metrics
    from landscape.surface import compute_surface

    x, y = torch.randn(6, 4), torch.randint(0, 3, (6,))
    model = _FailsOnRank1() if kind != "out" else torch.nn.Linear(4, 3)
    if kind == "metrics":
        compute_metrics(model, (x, y), ["lambda_max", "sam_sharpness"], batch_size=2)
    elif kind == "summary":
        hessian_summary(model, (x, y), top_k=1, batch_size=2, progress=False)
    else:  # a folder where process 0 (the writer) looks for the file
        where = out if os.environ["RANK"] == "0" else str(Path(out, "surf.h5"))
        compute_surface(model, (x, y), x="-1:1:3", batch_size=2, out=where, progress=False)


@pytest.mark.distributed
@pytest.mark.parametrize("kind", ["metrics", "summary", "out"])
def test_an_error_on_one_rank_ends_every_rank_with_its_message(tmp_path, kind):
    start = time.perf_counter()
    res = _torchrun("one_rank_fails", kind, tmp_path, timeout=60)  # a hang: TimeoutExpired
    assert res.returncode != 0 and time.perf_counter() - start < 60
    if kind == "out":  # process 0 checks out and every process raises its error
        assert res.stderr.count("ValueError: Invalid out") >= 2, res.stderr[-3000:]
        assert not Path(tmp_path, "surf.h5").exists()
    else:
        assert "RuntimeError: the model fails on rank 1" in res.stderr, res.stderr[-3000:]


_JOBS = {
    "rejoin": _job_rejoin,
    "surface": _job_surface,
    "own_group": _job_own_group,
    "one_rank_fails": _job_one_rank_fails,
}

if __name__ == "__main__":
    torch.set_num_threads(1)
    _JOBS[sys.argv[1]](*sys.argv[2:])
