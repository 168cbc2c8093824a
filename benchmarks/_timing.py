"""Timing helpers shared by the benchmarks: interleaved repeats, medians, ratios.

The machine is shared and noisy, so a benchmark compares candidates measured in the same
run: each repeat times every candidate once, in turn (interleaved), and a ratio is the
median over repeats of the per-repeat ratio to a reference candidate.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return float(statistics.median(values))


def time_call(fn: Callable[[], object], number: int = 1) -> float:
    """Wall time of ``number`` calls of ``fn`` divided by ``number`` (seconds)."""
    start = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - start) / number


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 5,
    number: int = 1,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time every candidate once per repeat, in turn; returns name -> per-call seconds per repeat.

    The order rotates between repeats so that no candidate always runs after the same one.
    """
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            out[name].append(time_call(candidates[name], number))
    return out


def ratio_to(times: Mapping[str, list[float]], ref: str) -> dict[str, float]:
    """Median over repeats of ``times[name][r] / times[ref][r]`` for every name."""
    base = times[ref]
    return {name: median([t / b for t, b in zip(ts, base)]) for name, ts in times.items()}
