"""Per-step wall time of every sharpness-aware optimizer vs plain SGD (and pytorch-optimizer's SAM).

CIFAR-shaped ResNet-20 (0.27 M parameters), batch 128 of random data, CPU, glibc heap
trimming off unless ``--glibc-defaults`` (``faults``: minor page faults per step).  Each repeat
times ``--steps`` steps of every optimizer in turn (interleaved); the table gives the
median step time (wall clock and this process's CPU time) and the median over repeats
of the ratio to SGD, beside the floor (``passes``: forward+backward passes per step).
Target: ratio within 5 % of the floor; SAM not slower than pytorch-optimizer's SAM.

    .venv/bin/python benchmarks/optimizer_step.py --repeats 7 --steps 1 --threads 1
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _timing import interleaved_clocks, median, ratio_to, steady_allocator

import optimizers
from landscape.models import build_model


def make_step(name, model, x, y, lr=0.05, freeze_bn=True):
    """Return a callable that performs one optimisation step, and the floor in passes.

    ``freeze_bn=False`` builds ours without ``model=`` (no BatchNorm freezing in the
    second pass, as pytorch-optimizer's SAM does).
    """
    if name == "pytorch_optimizer.SAM":
        from pytorch_optimizer import SAM as PeerSAM

        opt = PeerSAM(model.parameters(), torch.optim.SGD, rho=0.05, lr=lr, momentum=0.9)

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        def step():
            closure()  # its first pass is the caller's
            opt.step(closure)

        return step, 2.0
    opt = optimizers.build_optimizer(
        name, model.parameters(), model=model if freeze_bn else None, lr=lr
    )

    def closure(part=None):
        opt.zero_grad()
        xb, yb = (x, y) if part is None else (x[part], y[part])
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        return loss

    if name in ("sgd", "adam"):
        return (lambda: opt.step(closure)), 1.0
    return (lambda: opt.step(closure)), float(opt.passes)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2, help="steps per timing")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--only", nargs="*", default=None, help="subset of optimizer names")
    ap.add_argument(
        "--glibc-defaults",
        action="store_true",
        help="keep glibc's heap trimming (page faults every step; see _timing.py)",
    )
    args = ap.parse_args(argv)
    steady = False if args.glibc_defaults else steady_allocator()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    base = build_model("resnet20", in_channels=3, num_classes=10, input_size=32)
    x = torch.randn(args.batch, 3, 32, 32)
    y = torch.randint(0, 10, (args.batch,))
    names = ["sgd", *optimizers.OPTIMIZER_NAMES[2:], "pytorch_optimizer.SAM"]
    if args.only:
        names = ["sgd", *[n for n in names if n in args.only and n != "sgd"]]
    steps, floors = {}, {}
    for name in names:
        model = copy.deepcopy(base).train()
        steps[name], floors[name] = make_step(name, model, x, y)
    times = interleaved_clocks(steps, repeats=args.repeats, number=args.steps, warmup=1)
    print(
        f"ResNet-20, batch {args.batch}, CPU, {torch.get_num_threads()} thread(s), "
        f"{args.repeats} interleaved repeats x {args.steps} steps, torch {torch.__version__}, "
        f"allocator: {'steady (no trimming)' if steady else 'glibc defaults'}"
    )
    print("ratio = median over repeats of (step time / SGD step time in the same repeat)")
    wall, cpu = ratio_to(times["wall"], "sgd"), ratio_to(times["cpu"], "sgd")
    print(
        f"{'optimizer':<24}{'wall ms':>9}{'cpu ms':>9}{'floor':>7}"
        f"{'wall/SGD':>10}{'cpu/SGD':>9}{'cpu/floor':>11}{'faults':>9}"
    )
    for name in names:
        print(
            f"{name:<24}{median(times['wall'][name]) * 1e3:>9.1f}"
            f"{median(times['cpu'][name]) * 1e3:>9.1f}{floors[name]:>7.0f}"
            f"{wall[name]:>10.3f}{cpu[name]:>9.3f}{cpu[name] / floors[name]:>11.3f}"
            f"{median(times['faults'][name]):>9.0f}"
        )
    if "sam" in steps and "pytorch_optimizer.SAM" in steps:
        for clock in ("wall", "cpu"):
            ts = times[clock]
            vs = median([a / b for a, b in zip(ts["sam"], ts["pytorch_optimizer.SAM"])])
            print(f"SAM / pytorch_optimizer.SAM ({clock}): {vs:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
