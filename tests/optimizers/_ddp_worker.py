"""Run under ``torchrun --nproc_per_node=2``: sharpness-aware steps of a DDP model (gloo).

Each rank trains on its own batches; writes its weights and the number of all-reduces
per step to ``OUT/rank<r>.pt``.  Usage: ``_ddp_worker.py OUT NAME [NAME ...]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _optim_helpers import make_batches, make_closure, make_model
from optim_db import CONFIGS

import optimizers._base as base_mod


def main() -> None:
    out, names = Path(sys.argv[1]), sys.argv[2:]
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    counts = {"hook": 0, "explicit": 0}

    def hook(state, bucket):
        counts["hook"] += 1
        t = bucket.buffer()
        t.div_(dist.get_world_size())
        fut = dist.all_reduce(t, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])

    real = base_mod._all_reduce_mean_

    def counting(tensors):
        counts["explicit"] += 1
        real(tensors)

    base_mod._all_reduce_mean_ = counting
    result = {}
    for name in names:
        cfg = next(c for c in CONFIGS if c.name == name)
        model = torch.nn.parallel.DistributedDataParallel(make_model())
        model.register_comm_hook(None, hook)
        opt = cfg.cls(
            model.parameters(), torch.optim.SGD, model=model, **cfg.hparams, **cfg.base_kwargs
        )
        batches = make_batches(2 * 2)[rank::2]  # rank r: batches r, r+2
        per_step = []
        for x, y in batches:
            counts.update(hook=0, explicit=0)
            opt.step(make_closure(model, opt, x, y))
            per_step.append(dict(counts))
        result[name] = {
            "params": [p.detach().clone() for p in model.module.parameters()],
            "reduces": per_step,
        }
    torch.save(result, out / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
