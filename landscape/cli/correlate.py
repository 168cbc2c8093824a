"""``landscape correlate``: how measures of a population of runs rank with their gap."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from landscape.cli._args import positive_int
from landscape.cli.compare import (
    add_measurement_arguments,
    add_metric_option_arguments,
    metric_options,
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``correlate`` subcommand."""
    p = subparsers.add_parser(
        "correlate",
        help="correlate metrics of many runs with their generalisation gap",
        description=(
            "Measure the final checkpoint of each run folder (landscape train's), read its "
            "generalisation gap from its training record and its hyper-parameters from its "
            "config.json, and print per metric Kendall's tau (tau-a) with the gap, its "
            "bootstrap interval, the granulated psi per hyper-parameter axis (the entries "
            "of config.json that differ between runs) and their mean Psi (Jiang et al. "
            "2020). With --out the measurement so far is written after every run; rerunning "
            "the same command resumes it."
        ),
    )
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders of landscape train")
    p.add_argument(
        "--metrics",
        default="lambda_max,trace,sam_sharpness",
        help="comma-separated metric names (default: %(default)s; "
        "landscape compare --list-metrics lists them)",
    )
    p.add_argument(
        "--gap",
        default="acc",
        choices=("acc", "loss"),
        help="acc: train_acc - test_acc (default); loss: test_loss - train_loss",
    )
    p.add_argument(
        "--seeds",
        default="replicate",
        choices=("replicate", "axis"),
        help="replicate (default): runs differing only in seed are replicates, not an axis; "
        "axis: the seed is an axis with its own psi",
    )
    add_measurement_arguments(p, "run")
    p.add_argument(
        "--draws",
        type=positive_int,
        default=1000,
        metavar="N",
        help="bootstrap draws (default: %(default)s)",
    )
    p.add_argument("--bootstrap-seed", type=int, default=0, metavar="S")
    p.add_argument("--confidence", type=float, default=0.95, metavar="C")
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE.json",
        help="write the measurement after every run and the correlation at the end "
        "(an existing FILE.json of the same measurement is resumed)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="do not reuse the rows of an existing --out FILE.json: overwrite it",
    )
    p.add_argument(
        "--plot",
        default=None,
        metavar="FILE",
        help="scatter of each metric against the gap: FILE.png (.pdf, .svg) or FILE.html",
    )
    add_metric_option_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run ``landscape correlate``."""
    from landscape._io import check_output
    from landscape.compare import CompareInterrupted
    from landscape.correlation import correlate_runs
    from landscape.plotting.files import STATIC_FORMATS

    if args.out is not None:
        check_output(args.out, suffixes=(".json",))
    if args.plot is not None:
        allowed = (*STATIC_FORMATS, ".html", ".htm")
        if Path(args.plot).suffix.lower() not in allowed:
            raise ValueError(
                f"--plot must end in one of {', '.join(allowed)}, got {Path(args.plot).name!r}"
            )
        check_output(args.plot, suffixes=allowed, what="--plot")
    options, per_metric = metric_options(args)
    try:
        corr = correlate_runs(
            args.runs,
            args.metrics,
            gap=args.gap,
            seeds=args.seeds,
            split=args.split,
            max_samples=args.max_samples,
            labels=args.labels,
            device=args.device,
            batch_size=args.batch_size,
            per_metric=per_metric,
            draws=args.draws,
            bootstrap_seed=args.bootstrap_seed,
            confidence=args.confidence,
            progress=False if args.no_progress else None,
            out=args.out,
            resume=args.resume,
            **options,
        )
    except CompareInterrupted as exc:
        print(f"landscape correlate: {exc}", file=sys.stderr)
        return 130
    print(corr.summary())
    print(corr.format_table())
    if args.out is not None:
        print(f"wrote {args.out}")
    if args.plot is not None:
        from landscape.plotting.files import plot_correlation_file

        plot_correlation_file(corr, args.plot)
        print(f"wrote {args.plot}")
    return 0
