"""One ResNet-20 forward (batch 256, CPU, one thread): eager vs compiled layouts and freezing.

Isolates what ``compile=`` can gain per batch, without the grid around it: the eager
forward (NCHW, and channels-last inputs), the compiled module as ``compile=True`` uses it
(weights stay graph inputs) with inputs as given and in channels-last, and inductor's
``freezing`` (BatchNorm folded into the convolutions, weights prepacked: faster, but it
keeps the weights it compiled with, so surfaces cannot use it). Candidates interleaved,
medians of ``--repeats``; compile times are wall seconds (the first is cold: caches off).

Run: ``.venv/bin/python benchmarks/compiled_forward.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse
import copy
import sys
import time
from pathlib import Path

import torch
import torch._inductor.config as inductor_config

sys.path.insert(0, str(Path(__file__).parent))

from _timing import interleaved, median, ratio_to

from landscape.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model("resnet20", in_channels=3, num_classes=10, input_size=32).eval()
    x = torch.randn(256, 3, 32, 32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = model(x)
        compiled = torch.compile(model, dynamic=False)
        frozen_model = copy.deepcopy(model)
        frozen = torch.compile(frozen_model, dynamic=False)
        for name, fn, inp in (
            ("compiled", compiled, x),
            ("compiled channels-last", compiled, x_cl),
            ("compiled frozen", frozen, x),
        ):
            inductor_config.freezing = name == "compiled frozen"
            start = time.perf_counter()
            out = fn(inp)
            err = float((out - ref).abs().max())
            print(f"{name}: {time.perf_counter() - start:.1f} s to compile; max |diff| {err:.1e}")
        inductor_config.freezing = False
        cands = {
            "eager": lambda: model(x),
            "eager channels-last": lambda: model(x_cl),
            "compiled": lambda: compiled(x),
            "compiled channels-last": lambda: compiled(x_cl),
            "compiled frozen": lambda: frozen(x),
        }
        times = interleaved(cands, repeats=args.repeats, warmup=1)
    ratios = ratio_to(times, "eager")
    print(f"ResNet-20, batch 256, CPU, 1 thread, median of {args.repeats}")
    print(f"{'forward':<24} {'s/batch':>8} {'x eager':>8}")
    for name, ts in times.items():
        print(f"{name:<24} {median(ts):8.3f} {ratios[name]:8.3f}")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
