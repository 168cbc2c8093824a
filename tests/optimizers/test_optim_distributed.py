"""DDP with 2 CPU processes (gloo, real torchrun): identical weights, one all-reduce per step."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _optim_helpers import Reference, flat, make_batches, make_model
from optim_db import CONFIGS

HERE = Path(__file__).resolve().parent
NAMES = ["sam", "gsam", "crsam"]  # the direction is the last gradient / a combination


@pytest.mark.distributed
def test_ddp_two_processes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(HERE.parents[1])}
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        str(HERE / "_ddp_worker.py"), str(tmp_path), *NAMES,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    batches = make_batches(4)
    for name in NAMES:
        cfg = next(c for c in CONFIGS if c.name == name)
        for a, b in zip(r0[name]["params"], r1[name]["params"]):
            assert torch.equal(a, b), name
        # exactly one all-reduce per step: DDP's own (final pass synced) or ours
        for counts in r0[name]["reduces"]:
            assert counts["hook"] + counts["explicit"] == 1, (name, counts)
        assert r0[name]["reduces"][0]["hook"] == (1 if name == "sam" else 0)
        # each replica perturbs with its own gradient; d is the mean of the local d's
        ref = Reference(make_model(), cfg.base_kwargs)
        for step in range(2):
            (x0, y0), (x1, y1) = batches[2 * step], batches[2 * step + 1]
            th = flat(ref.params)
            info = {"is_weight": ref.is_weight, "momentum": None}
            d = 0.5 * (
                cfg.ref(ref.grad_fn(x0, y0), th, cfg.hparams, info)
                + cfg.ref(ref.grad_fn(x1, y1), th, cfg.hparams, info)
            )
            off = 0
            for p in ref.params:
                p.grad = d[off : off + p.numel()].view_as(p).clone()
                off += p.numel()
            ref.opt.step()
        torch.testing.assert_close(
            flat(r0[name]["params"]), flat(ref.params), rtol=1e-10, atol=1e-12
        )
