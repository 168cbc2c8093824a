"""Subprocess job: write points of a 40x50 surface one by one, resuming FILE, until done."""

from __future__ import annotations

import sys

import numpy as np

from landscape.store import open_surface_file


def main() -> None:
    path = sys.argv[1]
    x, y = np.linspace(-1, 1, 50), np.linspace(-1, 1, 40)
    with open_surface_file(
        path,
        x=x,
        y=y,
        fields=["train_loss", "train_acc"],
        identity={"job": 1},
        x_direction=[np.ones((64, 64), dtype=np.float32)],
        names=["w"],
    ) as w:
        pending = w.pending
        for i in range(0, len(pending), 3):
            chunk = pending[i : i + 3]
            w.write(chunk, [{"train_loss": 0.5 * j - 3, "train_acc": j % 100} for j in chunk])


if __name__ == "__main__":
    main()
