"""Audit of the multi-process paths: bad torchrun environments, one failing rank, odd data.

The torchrun cases start two gloo processes on the CPU (each test well under 30 s) and
use a timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import pytest
import torch

from landscape.distributed import init_distributed

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
