"""SAM vs pytorch-optimizer's SAM, step by step: alternating pairs, per-pair ratios.

CIFAR-shaped ResNet-20, batch 128 of random data, CPU.  Each pair runs one step of each
optimizer (order alternating), and the table gives the median and quartiles of the
per-pair time ratio ours / peer (process CPU time and wall time).  ``--no-model`` builds
our SAM without ``model=``, i.e. without BatchNorm freezing (what the peer does: it lets
the second pass update the running statistics too).  glibc's heap trimming is turned
off unless ``--glibc-defaults``: with it on, both optimizers fault tens of thousands of
pages per step, how many depending on the heap layout the other one left (see
``_timing.py``), and the table reports the median minor faults per step.

    .venv/bin/python benchmarks/sam_vs_peer.py --pairs 30
    .venv/bin/python benchmarks/sam_vs_peer.py --pairs 30 --no-model
    .venv/bin/python benchmarks/sam_vs_peer.py --pairs 30 --glibc-defaults
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import minor_faults, steady_allocator
from optimizer_step import make_step

from landscape.models import build_model


def make_steps(with_model: bool, batch: int = 128):
    """One step of ours and of the peer, each on its own copy of the same ResNet-20."""
    torch.manual_seed(0)
    x = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))

    def net():
        torch.manual_seed(1)
        return build_model("resnet20", in_channels=3, num_classes=10, input_size=32)

    ours, _ = make_step("sam", net(), x, y, freeze_bn=with_model)
    peer, _ = make_step("pytorch_optimizer.SAM", net(), x, y)
    return {"ours": ours, "peer": peer}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-model", action="store_true", help="our SAM without model=")
    parser.add_argument("--glibc-defaults", action="store_true", help="keep heap trimming")
    args = parser.parse_args(argv)
    steady = False if args.glibc_defaults else steady_allocator()
    torch.set_num_threads(args.threads)
    steps = make_steps(with_model=not args.no_model)
    for fn in steps.values():  # warm-up
        fn()
    cpu, wall, faults = [], [], {"ours": [], "peer": []}
    for i in range(args.pairs):
        order = ["ours", "peer"] if i % 2 == 0 else ["peer", "ours"]
        t = {}
        for name in order:
            w, c, f = time.perf_counter(), time.process_time(), minor_faults()
            steps[name]()
            t[name] = (time.perf_counter() - w, time.process_time() - c)
            faults[name].append(minor_faults() - f)
        wall.append(t["ours"][0] / t["peer"][0])
        cpu.append(t["ours"][1] / t["peer"][1])
    q = statistics.quantiles(cpu, n=4)
    mode = "model=None" if args.no_model else "model=model (BatchNorm frozen in pass 2)"
    print(
        f"SAM ({mode}) / pytorch_optimizer.SAM, ResNet-20 batch 128, {args.threads} thread(s), "
        f"{args.pairs} alternating pairs, torch {torch.__version__}, "
        f"allocator: {'steady (no trimming)' if steady else 'glibc defaults'}"
    )
    print(
        f"median cpu ratio {statistics.median(cpu):.3f} (quartiles {q[0]:.3f}-{q[2]:.3f}), "
        f"median wall ratio {statistics.median(wall):.3f}; minor page faults per step: "
        + ", ".join(f"{k} {statistics.median(v):.0f}" for k, v in faults.items())
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
