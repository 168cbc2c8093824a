"""Timing helpers shared by the benchmarks: interleaved repeats, medians, ratios.

The machine is shared and noisy, so a benchmark compares candidates measured in the same
run: each repeat times every candidate once, in turn (interleaved), and a ratio is the
median over repeats of the per-repeat ratio to a reference candidate.  Two clocks are
read at once: wall time and this process's CPU time (``time.process_time``), which other
processes on the machine disturb much less than the wall clock.

The allocator matters as much as the code on a CPU.  With glibc's defaults, freeing a
training step's activations gives the top of the heap back to the kernel (the trim
threshold adapts to the largest freed block), so the next step faults every page in
again: a ResNet-20 SGD step at batch 128 took 20–70 k minor page faults, how many
depending on the heap layout left by everything else in the process, so that two
candidates timed in one process disturbed each other by more than the 5 % being
measured.  :func:`steady_allocator` turns trimming off (``mallopt``), as the usual
advice for CPU training does; :func:`minor_faults` counts the faults so that tables
can show them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import statistics
import time
from collections.abc import Callable, Mapping


def minor_faults() -> int:
    """Minor page faults of this process so far (fresh pages handed out by the kernel)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


CLOCKS: dict[str, Callable[[], float]] = {
    "wall": time.perf_counter,
    "cpu": time.process_time,
    "faults": lambda: float(minor_faults()),  # a counter read like a clock: faults per call
}


def steady_allocator() -> bool:
    """Keep freed memory in the process (glibc): no trimming, no ``mmap`` up to 32 MiB.

    Returns whether the settings took (``False`` off glibc).  Call before timing.
    """
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    ok = mallopt(m_trim_threshold, 2**31 - 1) == 1
    return mallopt(m_mmap_threshold, 32 * 2**20) == 1 and ok


def median(values: list[float]) -> float:
    """The median of a non-empty list."""
    return float(statistics.median(values))


def time_call(fn: Callable[[], object], number: int = 1) -> float:
    """Wall time of ``number`` calls of ``fn`` divided by ``number`` (seconds)."""
    return time_call_clocks(fn, number)["wall"]


def time_call_clocks(fn: Callable[[], object], number: int = 1) -> dict[str, float]:
    """Seconds per call of ``fn`` over ``number`` calls, on every clock of :data:`CLOCKS`."""
    start = {k: clock() for k, clock in CLOCKS.items()}
    for _ in range(number):
        fn()
    return {k: (clock() - start[k]) / number for k, clock in CLOCKS.items()}


def interleaved(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 5,
    number: int = 1,
    warmup: int = 1,
) -> dict[str, list[float]]:
    """Time every candidate once per repeat, in turn; returns name -> wall seconds per repeat.

    The order rotates between repeats so that no candidate always runs after the same one.
    """
    return interleaved_clocks(candidates, repeats=repeats, number=number, warmup=warmup)["wall"]


def interleaved_clocks(
    candidates: Mapping[str, Callable[[], object]],
    *,
    repeats: int = 5,
    number: int = 1,
    warmup: int = 1,
) -> dict[str, dict[str, list[float]]]:
    """Like :func:`interleaved`, on every clock: ``{clock: {name: [seconds per call]}}``."""
    names = list(candidates)
    for name in names:
        for _ in range(warmup):
            candidates[name]()
    out: dict[str, dict[str, list[float]]] = {k: {n: [] for n in names} for k in CLOCKS}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            for k, t in time_call_clocks(candidates[name], number).items():
                out[k][name].append(t)
    return out


def ratio_to(times: Mapping[str, list[float]], ref: str) -> dict[str, float]:
    """Median over repeats of ``times[name][r] / times[ref][r]`` for every name."""
    base = times[ref]
    return {name: median([t / b for t, b in zip(ts, base)]) for name, ts in times.items()}
