"""Helpers shared by the science benchmarks (``science.py``, ``seeds.py``).

Per-seed results are ``list[dict[label, dict[key, float]]]``: one dict per seed, mapping a
run's label to its figures. The helpers read columns from it, print Markdown tables of
mean ± sd over seeds, and compare two runs paired by seed.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

PerSeed = list[dict[str, dict[str, float]]]

# Figures of the last epoch of a ``TrainResult`` that the tables report, when present.
FINAL_KEYS = ("train_loss", "train_acc", "train_clean_acc", "val_acc", "test_loss", "test_acc")


class VerdictWords(NamedTuple):
    """The verdict for a claim that holds in every seed, most, some, or none."""

    every: str
    most: str
    some: str
    none: str


# science.py: a known finding is reproduced, or not.
REPRODUCED = VerdictWords(
    "reproduced", "mostly (not every seed)", "NOT reproduced", "NOT reproduced"
)
# seeds.py: a paper's claim holds, holds in some seeds only, or does not hold.
HOLDS = VerdictWords("holds", "mixed", "mixed", "does not hold")


def add_common_arguments(p: argparse.ArgumentParser, *, seeds: int) -> None:
    """The flags the science benchmarks share (seeds, model, base SGD, metrics, machine)."""
    p.add_argument("--seeds", type=int, default=seeds, help="number of seeds (0, 1, ...)")
    p.add_argument("--model", default="mlp", help="model name of landscape.models")
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="model option (default for mlp: hidden=[128,128])",
    )
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=0.0)
    p.add_argument("--sharpness-rho", type=float, default=0.05, help="rho of sam_sharpness")
    p.add_argument("--sharpness-steps", type=int, default=10, help="projected ascent steps")
    p.add_argument("--num-products", type=int, default=100, help="Hutchinson products")
    p.add_argument("--max-samples", type=int, default=None, help="metric samples (all)")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None, help="write per-seed numbers here")


def model_kwargs(p: argparse.ArgumentParser, args: argparse.Namespace) -> dict[str, Any]:
    """The ``--model-arg KEY=JSON`` options (for ``mlp`` without any: two layers of 128)."""
    kwargs: dict[str, Any] = {}
    for item in args.model_arg:
        key, sep, value = item.partition("=")
        if not sep:
            p.error(f"--model-arg expects KEY=JSON, got {item!r}")
        kwargs[key] = json.loads(value)
    if not kwargs and args.model == "mlp":
        kwargs = {"hidden": [128, 128]}
    return kwargs


def final_row(res: Any) -> dict[str, float]:
    """The figures of :data:`FINAL_KEYS` at the last epoch of a ``TrainResult``."""
    last = res.metrics[-1]
    return {k: float(last[k]) for k in FINAL_KEYS if k in last}


def steps_per_epoch(n: int, batch_size: int) -> int:
    """Optimizer steps per epoch of ``train`` (a last batch of one example is dropped)."""
    full, rest = divmod(n, batch_size)
    return full + (1 if rest >= 2 or full == 0 else 0)


def column(per_seed: PerSeed, label: str, key: str) -> list[float]:
    """The figure ``key`` of run ``label``, one value per seed."""
    return [s[label][key] for s in per_seed]


def mean_sd(values: Sequence[float]) -> str:
    """``mean ± sd`` (sample standard deviation; 0 for one value), 4 and 2 digits."""
    m = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.4g} ± {sd:.2g}"


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown pipe table (printed as is and pasted into BENCHMARKS.md)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join(
        [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
        + [line(r) for r in rows]
    )


def runs_table(per_seed: PerSeed, labels: Sequence[str], cols: Sequence[tuple[str, str]]) -> str:
    """One row per run label, one ``mean ± sd`` column per ``(key, heading)``."""
    return table(
        ["run", *[heading for _, heading in cols]],
        [[label, *[mean_sd(column(per_seed, label, key)) for key, _ in cols]] for label in labels],
    )


def holds_count(a: Sequence[float], b: Sequence[float], *, lower: bool, ties: bool = False) -> int:
    """Seeds where ``a`` is below ``b`` (``lower``) or above it; ``ties`` count if asked.

    ``a`` and ``b`` are paired by seed (the same index).
    """
    if len(a) != len(b) or not a:
        raise ValueError(f"paired values need equal, non-zero lengths, got {len(a)} and {len(b)}")
    if lower:
        return sum(x < y or (ties and x == y) for x, y in zip(a, b))
    return sum(x > y or (ties and x == y) for x, y in zip(a, b))


def paired_ratio(a: Sequence[float], b: Sequence[float], *, lower: bool) -> tuple[int, float]:
    """:func:`holds_count` (ties do not hold) and the mean of the paired ratios ``a/b``."""
    return holds_count(a, b, lower=lower), statistics.fmean(x / y for x, y in zip(a, b))


def paired_diff(
    a: Sequence[float], b: Sequence[float], *, lower: bool, ties: bool = False
) -> tuple[int, float]:
    """:func:`holds_count` and the mean of the paired differences ``a − b``."""
    return holds_count(a, b, lower=lower, ties=ties), statistics.fmean(x - y for x, y in zip(a, b))


def verdict(holds: int, n: int, words: VerdictWords = REPRODUCED) -> str:
    """The verdict for a comparison that goes the expected way in ``holds`` of ``n`` seeds."""
    if not 0 <= holds <= n or n < 1:
        raise ValueError(f"Invalid count: holds {holds} of n {n}")
    if holds == n:
        return words.every
    if holds == 0:
        return words.none
    return words.most if 2 * holds > n else words.some


def write_json(path: Path, args: Any, per_seed: Any) -> None:
    """Write the arguments and the per-seed numbers as JSON."""
    path.write_text(
        json.dumps(
            {"args": vars(args) | {"json": str(path)}, "per_seed": per_seed},
            indent=1,
            default=str,
        )
    )
