"""``landscape report``: one offline HTML page of runs, surfaces, spectra and tables."""

from __future__ import annotations

import argparse

from landscape.cli._args import comma_list
from landscape.cli._user import add_user_arguments, user_models


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``report`` subcommand."""
    p = subparsers.add_parser(
        "report",
        help="write one self-contained HTML page from runs and result files",
        description=(
            "Gather run folders (metrics.jsonl, checkpoints, files below them), surface "
            ".h5 files, comparison JSON (landscape compare --out) and spectral density "
            "JSON (landscape hessian --out) into one offline HTML page. With --compute, "
            "your own model (--model, --data, --weights) is measured too."
        ),
    )
    p.add_argument("inputs", nargs="*", metavar="RUN_OR_FILE", help="run folders and files")
    p.add_argument("--out", required=True, help="HTML file (.html) to write")
    p.add_argument("--title", default="sharpscape report", help="page title")
    p.add_argument("--metric", default="train_loss", help="surface metric drawn in 3-D")
    p.add_argument("--log", action="store_true", help="draw surfaces as log10 of the metric")
    p.add_argument(
        "--compute",
        type=comma_list,
        default=None,
        metavar="METRICS",
        help="comma-separated sharpness metrics to compute on the inputs' checkpoints "
        "(e.g. lambda_max,trace); default: read comparison JSON files only",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars (--compute)")
    add_user_arguments(p, several_weights=True)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Build the report page."""
    from landscape._io import check_output
    from landscape.report import build_report

    check_output(args.out, suffixes=(".html", ".htm"))
    compute = args.compute or None
    models = user_models(args, None)
    if models and not compute:
        raise ValueError(f"--model {args.model}: say what to measure with --compute METRICS")
    if not args.inputs and not models:
        raise ValueError("nothing to report: give run folders and files, or --model with --compute")
    options: dict[str, object] = {"progress": False} if args.no_progress else {}
    if args.params is not None:
        options["params"] = args.params
    out = build_report(
        args.inputs,
        args.out,
        title=args.title,
        metric=args.metric,
        log=args.log,
        compute_metrics=compute,
        compare_options=options,
        models=models,
    )
    print(f"wrote {out}")
    return 0
