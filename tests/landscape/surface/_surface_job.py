"""Subprocess job: compute a surface of the tiny problem into OUT (for kill/resume and torchrun).

Usage: python _surface_job.py OUT NX NY N_SAMPLES [--slow]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from _surface_problem import make_problem

from landscape.surface import compute_surface


def main() -> None:
    torch.set_num_threads(1)
    out, nx, ny, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    slow = "--slow" in sys.argv
    model, x, y = make_problem(n)
    loss_fn = torch.nn.functional.cross_entropy
    if slow:  # give the parent time to kill us mid-run

        def loss_fn(out, target):
            time.sleep(0.01)
            return torch.nn.functional.cross_entropy(out, target)

    compute_surface(
        model,
        (x, y),
        x=f"-1:1:{nx}",
        y=f"-1:1:{ny}",
        test_data=(x[:16], y[:16]),
        loss_fn=loss_fn,
        out=out,
        batch_size=16,
        seed=3,
        flush_seconds=0.0,
        progress=False,
    )


if __name__ == "__main__":
    main()
