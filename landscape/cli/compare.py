"""``landscape compare``: a table of metrics, one row per checkpoint."""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from landscape.cli._args import comma_list, positive_int
from landscape.cli._user import USAGE, add_user_arguments, user_models

logger = logging.getLogger(__name__)

# Shorthand flags for common metric options: (flag, option, type, help).
_OPTION_FLAGS = (
    ("--rho", "rho", float, "radius of the sharpness balls (sam/adaptive/first_order)"),
    ("--steps", "steps", int, "ascent steps K of the sharpness metrics (1 = SAM's estimate)"),
    ("--num-products", "num_products", int, "Hessian-vector products of the trace"),
    ("--sigma", "sigma", float, "noise scale of average_sharpness"),
    ("--num-samples", "num_samples", int, "noise draws of average_sharpness"),
    ("--eps", "eps", float, "box size of eps_sharpness"),
    ("--seed", "seed", int, "seed of the stochastic metrics"),
)


def add_metric_option_arguments(p: argparse.ArgumentParser) -> None:
    """The shorthand metric-option flags and ``--set`` (shared by compare and correlate)."""
    for flag, dest, typ, text in _OPTION_FLAGS:
        metavar = dest.split("_")[-1].upper() if typ is int else "X"
        p.add_argument(flag, dest=f"opt_{dest}", type=typ, default=None, metavar=metavar, help=text)
    p.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="[METRIC.]KEY=VALUE",
        help="any metric option, e.g. --set sam_sharpness.steps=5 --set scale=filter",
    )


def add_measurement_arguments(p: argparse.ArgumentParser, what: str) -> None:
    """Add ``--split``, ``--max-samples``, ``--batch-size``, ``--device`` and ``--labels``.

    Args:
        p: the command's parser.
        what: what a label names in the help (``"row"``, ``"run"``).
    """
    p.add_argument("--split", default="train", choices=("train", "val", "test"))
    p.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        metavar="N",
        help="use the first N samples",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, metavar="N")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: auto)")
    p.add_argument("--labels", type=comma_list, default=None, help=f"comma-separated {what} labels")


def metric_options(args: argparse.Namespace) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The shared and per-metric options of :func:`add_metric_option_arguments`' flags."""
    from landscape.metrics import parse_option_assignments

    seen: dict[str, str] = {}
    for item in args.assignments:  # a KEY given twice: one value would be dropped
        key, _, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if seen.setdefault(key, value) != value:
            raise ValueError(f"Invalid options: --set {key}={seen[key]} and {key}={value} disagree")
    options, per_metric = parse_option_assignments(args.assignments)
    for flag, dest, _, _ in _OPTION_FLAGS:
        value = getattr(args, f"opt_{dest}")
        if value is None:
            continue
        if dest in options and options[dest] != value:  # one of them was silently dropped
            raise ValueError(
                f"Invalid options: {flag} {value} and --set {dest}={options[dest]} disagree"
            )
        options[dest] = value
    return options, per_metric


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``compare`` subcommand."""
    p = subparsers.add_parser(
        "compare",
        help="compare checkpoints on curvature and sharpness metrics",
        description=(
            "Compute metrics for each checkpoint and print a table (one row per checkpoint, "
            "mean ± standard error). Metrics: lambda_max, trace, normalized_trace, "
            "grad_norm, grad_curvature, sam_sharpness, adaptive_sharpness, "
            "first_order_flatness, average_sharpness, eps_sharpness, grad_cosine, loss, "
            "accuracy (--list-metrics shows their options); --recorded adds values of each "
            "checkpoint's training record (e.g. test_acc). With --out the comparison so far is "
            "written after every checkpoint; rerunning the same command on an existing "
            ".json file resumes it (only checkpoints not measured yet, or changed since, "
            "are computed). Your own model: --model PKG.MODULE:ATTR --data PKG.MODULE:ATTR, "
            "one row per --weights FILE (or one row of the model as built)."
        ),
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        metavar="CKPT",
        help="checkpoint files, or run folders (each: its checkpoints in epoch order)",
    )
    p.add_argument(
        "--metrics",
        default="lambda_max,trace,sam_sharpness",
        help="comma-separated metric names (default: %(default)s)",
    )
    add_measurement_arguments(p, "row")
    p.add_argument(
        "--recorded",
        type=comma_list,
        default=[],
        metavar="NAMES",
        help="columns read from each checkpoint's training record, not recomputed "
        "(e.g. train_loss,test_acc: what landscape train measured at that epoch)",
    )
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE",
        help="write the comparison to FILE.json or FILE.csv after every checkpoint "
        "(an existing FILE.json with the same metrics and settings is resumed)",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="do not reuse the rows of an existing --out FILE.json: overwrite it",
    )
    add_metric_option_arguments(p)
    p.add_argument(
        "--shard",
        default="checkpoints",
        choices=("checkpoints", "data"),
        help="under torchrun: deal the checkpoints round-robin to the processes, each "
        "measuring its own on the whole data (default: scales with many checkpoints), or "
        "measure each checkpoint with every process reading a share of its data (one big "
        "model); process 0 alone writes --out",
    )
    p.add_argument("--list-metrics", action="store_true", help="list the metrics and exit")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    add_user_arguments(p, several_weights=True)
    p.set_defaults(func=run)


def _list_metrics() -> str:
    from landscape.metrics import METRICS, metric_description, metric_options

    lines = []
    for name in METRICS:
        lines.append(f"{name}: {metric_description(name)}")
        opts = ", ".join(f"{k}={v!r}" for k, v in metric_options(name).items())
        lines.append(f"    options: {opts or '-'}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Run ``landscape compare``."""
    from landscape._io import check_output
    from landscape.compare import CompareInterrupted, compare_checkpoints
    from landscape.distributed import is_main_process

    if args.list_metrics:
        print(_list_metrics())
        return 0
    users = user_models(args, args.checkpoints)
    if not args.checkpoints and not users:
        raise ValueError(f"no checkpoints given (landscape compare A.pt B.pt ..., or {USAGE})")
    main = is_main_process()  # under torchrun: process 0 writes and reports
    if args.out is not None and main:  # (compare_checkpoints checks it too; here first)
        check_output(args.out, suffixes=(".json", ".csv"))
    options, per_metric = metric_options(args)
    try:
        comparison = compare_checkpoints(
            users or args.checkpoints,
            args.metrics,
            split=args.split,
            max_samples=args.max_samples,
            labels=args.labels,
            device=args.device,
            batch_size=args.batch_size,
            per_metric=per_metric,
            progress=False if args.no_progress else None,
            out=args.out,
            resume=args.resume,
            recorded=args.recorded,
            params=args.params,
            shard=args.shard,
            **options,
        )
    except CompareInterrupted as exc:
        # The file already holds the finished rows; say so (the dispatcher would only
        # print "interrupted").
        print(f"landscape compare: {exc}", file=sys.stderr)
        return 130
    if not main:
        return 0
    print(comparison.format_table())
    if args.out is not None:
        print(f"wrote {args.out}")
    return 0
