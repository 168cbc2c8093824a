"""Loss-surface speed: seconds per grid point vs the forward-pass floor and vs loss-landscapes.

ResNet-20, CIFAR-shaped random data (1,024 evaluation images, batch 256), CPU, one
thread per process. Per repeat (interleaved), each candidate evaluates the same 2-D grid:

- floor: the bare forward passes of a grid point (the same model over the same cached
  batches under ``inference_mode``, no loss, no weight update) — the cost no surface tool
  can go below;
- sharpscape loop / vmap: ``compute_surface`` (directions, foreach point setting, loss and
  accuracy, HDF5 writes with flushes: everything, setup included) divided by the points;
- sharpscape compiled: the loop with ``compile=True`` (``torch.compile`` of the model,
  inductor, on-disk caches disabled so that the first run compiles cold); its figure per
  point is a run's time without its one-off costs, divided by the points, plus the cold
  compile (and the two timed batches of the decision) divided by 441: the cost per point
  of a 21×21 grid; "compiled, NCHW" is the same with the images as given instead of in
  the channels-last memory format;
- loss-landscapes: ``random_plane`` over the same batches, with a metric giving it the
  same advantages (no_grad, eval mode, cached batches). Its ``filter`` normalisation
  crashes on ResNet-20 (ZeroDivisionError: a zero BatchNorm bias zeroes the 1-D direction,
  whose elements it then divides by as "filters"), so it runs with ``layer``
  normalisation (same per-point work).

Then the 2-process ``torchrun`` speed-up of the same surface (wall time of 1 vs 2 ranks).

Run: ``.venv/bin/python benchmarks/surface.py`` (``--quick`` for a smoke run,
``--no-torchrun`` to skip the 2-process part, ``--no-vmap`` to skip vmap).
"""

from __future__ import annotations

import os

# Every compile of the "compiled" candidate is a cold one (no inductor cache on disk).
os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from _timing import interleaved, median, ratio_to

from landscape._compile import CompileSpec
from landscape.models import build_model
from landscape.surface import compute_surface


def problem(n: int, seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = build_model("resnet20", in_channels=3, num_classes=10, input_size=32).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    return model, x, y


def worker(args: argparse.Namespace) -> None:
    """One torchrun rank: compute the surface, rank 0 prints the wall time as JSON."""
    torch.set_num_threads(1)
    model, x, y = problem(args.samples)
    from landscape.distributed import barrier, init_distributed

    ctx = init_distributed(device="cpu")
    barrier(ctx)
    start = time.perf_counter()
    compute_surface(
        model,
        (x, y),
        x=f"-1:1:{args.steps}",
        y=f"-1:1:{args.steps}",
        batch_size=256,
        out=args.out,
        overwrite=True,
        progress=False,
        dist=ctx,
    )
    barrier(ctx)
    if ctx.is_main:
        print(json.dumps({"seconds": time.perf_counter() - start}), flush=True)


def flush_cost(repeats: int = 200) -> float:
    """Seconds to put one finished point on disk (values, done cell, two flushes)."""
    import numpy as np

    from landscape.store import open_surface_file

    model, _, _ = problem(1)
    params = [p.detach() for p in model.parameters()]
    grid = np.linspace(-1, 1, 51)
    with tempfile.TemporaryDirectory() as tmp:
        w = open_surface_file(
            Path(tmp) / "f.h5",
            x=grid,
            y=grid,
            fields=["train_loss", "train_acc"],
            identity={},
            x_direction=params,
            y_direction=params,
            names=[str(i) for i in range(len(params))],
        )
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            w.write([i * 7], [{"train_loss": 1.0, "train_acc": 50.0}])
            times.append(time.perf_counter() - start)
        w.close()
    return median(times)


def torchrun_seconds(nproc: int, steps: int, samples: int, out: str) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        __file__,
        "--worker",
        "--steps",
        str(steps),
        "--samples",
        str(samples),
        "--out",
        out,
    ]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("{")][-1]
    return float(json.loads(line)["seconds"])


def torchrun_speedup(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp())
    one, two = [], []
    for _ in range(args.repeats):  # interleaved: 1 rank, then 2 ranks, per repeat
        one.append(torchrun_seconds(1, args.steps, args.samples, str(tmp / "t1.h5")))
        two.append(torchrun_seconds(2, args.steps, args.samples, str(tmp / "t2.h5")))
    print(
        f"torchrun {args.steps}x{args.steps} grid: 1 rank {median(one):.2f} s, "
        f"2 ranks {median(two):.2f} s, speed-up {median(one) / median(two):.2f}x "
        "(2 cores shared with other jobs)"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=5, help="grid points per axis")
    parser.add_argument("--samples", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--worker", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--flush-only", action="store_true")
    parser.add_argument("--torchrun-only", action="store_true")
    parser.add_argument("--no-torchrun", action="store_true", help="skip the 2-process part")
    parser.add_argument("--no-vmap", action="store_true", help="skip the vmap candidate")
    parser.add_argument(
        "--amortise-over", type=int, default=441, help="grid points the compile is spread over"
    )
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    write_s = flush_cost()
    print(f"HDF5 write + 2 flushes of one point (51x51 file): {write_s * 1e3:.2f} ms")
    if args.flush_only:
        return
    if args.quick:
        args.steps, args.samples, args.repeats = 2, 256, 1
    if args.torchrun_only:
        torchrun_speedup(args)
        return
    torch.set_num_threads(1)
    from loss_landscapes import random_plane
    from loss_landscapes.metrics.metric import Metric

    model, x, y = problem(args.samples)
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    npts = args.steps**2
    tmp = Path(tempfile.mkdtemp())

    def floor() -> None:
        with torch.inference_mode():
            for _ in range(npts):
                for xb, _yb in batches:
                    model(xb)

    def ours(mode: str) -> None:
        compute_surface(
            model,
            (x, y),
            x=f"-1:1:{args.steps}",
            y=f"-1:1:{args.steps}",
            batch_size=256,
            out=tmp / f"{mode}.h5",
            overwrite=True,
            evaluation=mode,
            points_per_batch=4,
            progress=False,
        )

    class BatchedLoss(Metric):
        def __call__(self, wrapper) -> float:
            total = 0.0
            with torch.no_grad():
                for xb, yb in batches:
                    total += float(F.cross_entropy(wrapper.forward(xb), yb)) * len(yb)
            return total / len(x)

    def peer() -> None:
        random_plane(
            model,
            BatchedLoss(),
            distance=1,
            steps=args.steps,
            normalization="layer",
            deepcopy_model=True,
        )

    compiles: dict[str, list[dict]] = {"sharpscape compiled": [], "compiled, NCHW": []}

    def compiled(name: str, channels_last: bool) -> None:
        surface = compute_surface(
            model,
            (x, y),
            x=f"-1:1:{args.steps}",
            y=f"-1:1:{args.steps}",
            batch_size=256,
            out=tmp / "compiled.h5",
            overwrite=True,
            compile=CompileSpec("on", channels_last=channels_last),
            progress=False,
        )
        compiles[name].append(surface.attrs["compile"]["train"])

    cands = {
        "floor": floor,
        "sharpscape loop": lambda: ours("loop"),
        "sharpscape compiled": lambda: compiled("sharpscape compiled", True),
        "compiled, NCHW": lambda: compiled("compiled, NCHW", False),
        "sharpscape vmap": lambda: ours("vmap"),
        "loss-landscapes": peer,
    }
    if args.no_vmap:
        del cands["sharpscape vmap"]
    times = interleaved(cands, repeats=args.repeats, warmup=0 if args.quick else 1)

    # The compiled candidate: the first run compiles cold (caches disabled); later runs of
    # the same model reuse dynamo's compiled code. Each run's own one-off cost (its compile,
    # if any, and the two timed batches of prepare_compile) is replaced by the cold one
    # spread over a 21x21 grid: the cost per point of a whole 441-point surface.
    def one_off(c: dict) -> float:
        return c["compile_seconds"] + c["eager_batch_seconds"] + c["compiled_batch_seconds"]

    for name, reports in compiles.items():
        cold = one_off(reports[0])
        times[name] = [
            t - one_off(c) + cold * npts / args.amortise_over
            for t, c in zip(times[name], reports[-args.repeats :], strict=True)
        ]
    ratios = ratio_to(times, "floor")
    print(
        f"ResNet-20, {args.samples} images (batch 256), {args.steps}x{args.steps} grid, "
        f"CPU, 1 thread, median of {args.repeats}"
    )
    print(f"{'candidate':<20} {'s/point':>9} {'x floor':>8}")
    for name, ts in times.items():
        print(f"{name:<20} {median(ts) / npts:9.4f} {ratios[name]:8.3f}")
    for name, reports in compiles.items():
        c_ratio = median([c["compiled_over_eager"] for c in reports])
        print(
            f"{name}: {reports[0]['compile_seconds']:.1f} s to compile (cold), amortised over "
            f"{args.amortise_over} points; a compiled batch took {c_ratio:.3f}x an eager one "
            "(prepare_compile's check, median of the runs)"
        )
    print(f"load average at the end: {os.getloadavg()}")
    peer_vs_ours = median(
        [p / o for p, o in zip(times["loss-landscapes"], times["sharpscape loop"])]
    )
    print(f"loss-landscapes / sharpscape loop: {peer_vs_ours:.2f}x")
    point_s = median(times["sharpscape loop"]) / npts
    print(f"writing a point costs {100 * write_s / point_s:.3f}% of evaluating it")

    if not args.no_torchrun:
        torchrun_speedup(args)


if __name__ == "__main__":
    main()
