"""Run under ``torchrun --nproc_per_node=2``: train, then each rank saves its own weights."""

from __future__ import annotations

import os
import sys

import torch

from landscape.training import train

out, weights_dir = sys.argv[1], sys.argv[2]
torch.set_num_threads(1)
result = train(
    "resnet20",
    "digits",
    optimizer="sam",
    hparams={"rho": 0.05},
    epochs=2,
    batch_size=20,
    lr=0.05,
    n_per_class=5,
    model_kwargs={"width": 4},
    device="cpu",
    out=out,
    progress=False,
)
rank = int(os.environ["RANK"])
torch.save(result.model.state_dict(), os.path.join(weights_dir, f"rank{rank}.pt"))
print(f"rank {rank} of world {result.config['world_size']} done", flush=True)
