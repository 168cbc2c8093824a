"""Where a compiled grid point's time goes, and which compile settings lower it.

A grid point of a compiled surface is one :meth:`Objective.evaluate` after the weights are
set: for ResNet-20 on 1,024 images, four compiled forwards of 256 plus the loss, accuracy
and bookkeeping around them. This benchmark times, interleaved and on the process's CPU
clock (which other jobs on a shared machine disturb far less than the wall clock), one
pass over the data by:

- ``eager``: the model's eager forward and the loss (the floor of ``benchmarks/surface.py``);
- ``compiled forward``: the compiled module (``compile=True``'s, channels-last inputs)
  called directly on the four batches, with the loss;
- ``evaluate``: ``Objective.evaluate()`` with that compiled module (what a point costs,
  without moving the weights);
- ``point``: the weights set to ``θ + δ`` (a new point), then ``evaluate()``.

With ``--variants`` it also compiles the forward with other settings, each timed
interleaved with the eager forward: one batch of 1,024 instead of four of 256,
inductor's ``cpp_wrapper`` (C++ instead of Python calling the kernels) and
``mode="max-autotune-no-cudagraphs"``. Compile times are wall seconds, cold (caches off).

Run: ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/compiled_point.py [--variants]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse
import sys
import time
from pathlib import Path

import torch
import torch._dynamo
import torch._inductor.config as inductor_config
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))

from _timing import interleaved_clocks, median, ratio_to, steady_allocator
from surface import problem

from landscape._compile import CompileSpec
from landscape.objective import Objective

VARIANTS = {  # name: (inductor settings, torch.compile mode, batch size)
    "batch 1024": ({}, None, 1024),
    "cpp_wrapper": ({"cpp_wrapper": True}, None, 256),
    "max-autotune": ({}, "max-autotune-no-cudagraphs", 256),
}


def print_table(title: str, clocks: dict[str, dict[str, list[float]]]) -> None:
    cpu, wall = clocks["cpu"], clocks["wall"]
    print(title)
    print(f"{'candidate':<22} {'cpu s':>7} {'x eager':>8} {'wall s':>7} {'x eager':>8}")
    rc, rw = ratio_to(cpu, "eager"), ratio_to(wall, "eager")
    for name in cpu:
        print(
            f"{name:<22} {median(cpu[name]):7.3f} {rc[name]:8.3f} "
            f"{median(wall[name]):7.3f} {rw[name]:8.3f}"
        )
    print(f"load average: {os.getloadavg()}", flush=True)


def point_breakdown(repeats: int) -> None:
    model, x, y = problem(1024)
    obj = Objective(model, (x, y), batch_size=256, compile=CompileSpec("on"))
    report = obj.prepare_compile(1)
    print(
        f"compile=True: {report['compile_seconds']:.1f} s to compile (cold); "
        f"channels-last {report['channels_last']}"
    )
    compiled = obj._compiled.module
    batches = [(x[i : i + 256], y[i : i + 256]) for i in range(0, len(x), 256)]
    params = list(model.parameters())
    start = [p.detach().clone() for p in params]
    step = [1e-3 * torch.randn_like(p) for p in params]

    def over_data(module: torch.nn.Module) -> None:
        with torch.inference_mode():
            for xb, yb in batches:
                F.cross_entropy(module(xb), yb)

    def point() -> None:
        with torch.no_grad():
            torch._foreach_add_(torch._foreach_copy_(params, start), step)
        obj.evaluate()

    clocks = interleaved_clocks(
        {
            "eager": lambda: over_data(model),
            "compiled forward": lambda: over_data(compiled),
            "evaluate": obj.evaluate,
            "point": point,
        },
        repeats=repeats,
    )
    print_table(f"ResNet-20, 1024 images in batches of 256, median of {repeats}", clocks)


def variant(name: str, repeats: int) -> None:
    settings, mode, batch = VARIANTS[name]
    model, x, _ = problem(1024)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch._dynamo.reset()
    with inductor_config.patch(settings), torch.inference_mode():
        compiled = torch.compile(model, mode=mode, dynamic=False)
        start = time.perf_counter()
        compiled(x_cl[:batch])
        seconds = time.perf_counter() - start

        def run(module: torch.nn.Module, inputs: torch.Tensor, size: int) -> None:
            for i in range(0, len(inputs), size):
                module(inputs[i : i + size])

        clocks = interleaved_clocks(
            {
                "eager": lambda: run(model, x, 256),
                name: lambda: run(compiled, x_cl, batch),
            },
            repeats=repeats,
        )
    print_table(f"variant {name}: {seconds:.1f} s to compile (cold)", clocks)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variants", action="store_true", help="also the compile variants")
    args = parser.parse_args()
    torch.set_num_threads(1)
    steady_allocator()
    point_breakdown(args.repeats)
    if args.variants:
        for name in VARIANTS:
            variant(name, args.repeats)


if __name__ == "__main__":
    main()
