"""``landscape sweep``: train a grid of configurations, then correlate them with the gap."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from landscape.cli._args import positive_int
from landscape.cli.train import _key_value
from landscape.data import DATA_NAMES
from landscape.models import MODEL_NAMES

# Fixed training options with flags of their own: (flag dest, type, help).
_FIXED_FLAGS = (
    ("optimizer", str, "optimizer of every run (sgd)"),
    ("base_optimizer", str, "base of the sharpness-aware optimizers (sgd)"),
    ("epochs", int, "epochs of every run (10)"),
    ("batch_size", int, "batch size (128)"),
    ("lr", float, "peak learning rate, cosine to 0 (0.1)"),
    ("momentum", float, "SGD momentum (0.9)"),
    ("weight_decay", float, "weight decay (5e-4)"),
    ("label_noise", float, "fraction of symmetric label noise (0)"),
    ("n_per_class", int, "training examples per class (all)"),
    ("seed", int, "seed of init, data order and noise (0)"),
    ("save_every", int, "checkpoint every N epochs (1)"),
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``sweep`` subcommand."""
    p = subparsers.add_parser(
        "sweep",
        help="train a grid of configurations, then correlate metrics with the gap",
        description=(
            "Train every combination of the --grid values (one run folder each, "
            "OUT/runs/AXIS=VALUE,...), --jobs at a time, then measure the final checkpoints "
            "and correlate the metrics with the generalisation gap (landscape correlate: "
            "Kendall's tau with a bootstrap interval, psi per axis, Psi), writing "
            "OUT/correlation.json and OUT/correlation.png. Rerunning the same command "
            "skips finished runs, resumes unfinished ones from their last checkpoint and "
            "reuses the measurements. --example NAME runs a built-in sweep."
        ),
    )
    p.add_argument("--out", required=True, metavar="DIR", help="sweep folder (resumed)")
    p.add_argument(
        "--grid",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help="an axis of the grid (repeatable): optimizer, lr, batch_size, label_noise, seed, "
        "momentum, weight_decay, epochs, n_per_class, an optimizer hyper-parameter (rho), "
        "model.KEY or data.KEY",
    )
    p.add_argument(
        "--example",
        default=None,
        metavar="NAME",
        help="a built-in sweep instead of --grid (batch-noise: sharpness vs gap over batch "
        "size, label noise and SGD/SAM on digits, 16 runs)",
    )
    g = p.add_argument_group("options of every run")
    g.add_argument("--data", default=None, choices=DATA_NAMES, help="dataset (digits)")
    g.add_argument("--model", default=None, choices=MODEL_NAMES, help="model (cnn)")
    g.add_argument("--data-dir", default=None, help="folder of the CIFAR python batches")
    for dest, typ, text in _FIXED_FLAGS:
        g.add_argument("--" + dest.replace("_", "-"), dest=dest, type=typ, default=None, help=text)
    for flag, what in (("--model-arg", "model"), ("--data-arg", "dataset")):
        g.add_argument(
            flag,
            type=_key_value,
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help=f"{what} option (repeatable; JSON values), e.g. hidden=[64]",
        )
    g.add_argument(
        "--hparam",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="optimizer hyper-parameter of every run that takes it, e.g. rho=0.1 (repeatable)",
    )
    g = p.add_argument_group("running")
    g.add_argument("--jobs", type=positive_int, default=1, metavar="N", help="runs at once (1)")
    g.add_argument(
        "--threads", type=positive_int, default=None, metavar="N", help="torch threads per run"
    )
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, auto")
    g.add_argument("--no-progress", action="store_true", help="hide progress bars")
    g = p.add_argument_group("correlation")
    g.add_argument(
        "--metrics",
        default=None,
        help="comma-separated metric names (default lambda_max,trace,sam_sharpness); "
        "'none' trains only",
    )
    g.add_argument("--gap", default=None, choices=("acc", "loss"), help="acc (default) or loss")
    g.add_argument("--seeds", default=None, choices=("replicate", "axis"), help="replicate")
    g.add_argument("--max-samples", type=positive_int, default=None, metavar="N")
    g.add_argument("--draws", type=positive_int, default=None, metavar="N", help="bootstrap (1000)")
    g.add_argument(
        "--set",
        dest="assignments",
        action="append",
        default=[],
        metavar="[METRIC.]KEY=VALUE",
        help="a metric option, e.g. --set steps=5 --set sam_sharpness.rho=0.1",
    )
    g.add_argument(
        "--plot",
        default="correlation.png",
        metavar="NAME",
        help="plot file in OUT ('none': no plot)",
    )
    p.set_defaults(func=run)


def _spec_of(args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The spec and the run_sweep defaults (of the example, when one is named)."""
    from landscape.sweep import EXAMPLES, SweepSpec

    fixed: dict[str, Any] = {}
    for dest in ("data", "model", "data_dir", *(d for d, _, _ in _FIXED_FLAGS)):
        if getattr(args, dest) is not None:
            fixed[dest] = getattr(args, dest)
    if args.model_arg:
        fixed["model_kwargs"] = dict(args.model_arg)
    if args.data_arg:
        fixed["data_kwargs"] = dict(args.data_arg)
    fixed.update(dict(args.hparam))
    if args.example is None:
        if not args.grid:
            raise ValueError("no grid: give --grid KEY=V1,V2,... (repeatable) or --example NAME")
        return SweepSpec.parse(args.grid, fixed), {}
    if args.example not in EXAMPLES:
        raise ValueError(
            f"Invalid --example: {args.example!r} (choose among {', '.join(EXAMPLES)})"
        )
    if args.grid or fixed:
        raise ValueError("--example takes no --grid or run options (it fixes them)")
    ex = EXAMPLES[args.example]
    return SweepSpec.parse(ex["grid"], ex["fixed"]), ex


def run(args: argparse.Namespace) -> int:
    """Run ``landscape sweep``."""
    from landscape.metrics import parse_option_assignments
    from landscape.sweep import SweepInterrupted, run_sweep

    spec, example = _spec_of(args)
    metrics = args.metrics or example.get("metrics", "lambda_max,trace,sam_sharpness")
    options, per_metric = parse_option_assignments(args.assignments)
    correlation = {**example.get("correlation", {}), **options}
    for key in ("gap", "seeds", "max_samples", "draws"):
        if getattr(args, key) is not None:
            correlation[key] = getattr(args, key)
    if per_metric:
        correlation["per_metric"] = per_metric
    plot = None if args.plot.lower() == "none" else args.plot
    if plot is not None and Path(plot).name != plot:
        raise ValueError(f"Invalid --plot: {plot!r} (a file name in --out, e.g. correlation.png)")
    try:
        result = run_sweep(
            spec,
            args.out,
            metrics=None if metrics.lower() == "none" else metrics,
            jobs=args.jobs,
            threads=args.threads,
            device=None if args.device == "auto" else args.device,
            correlation=correlation,
            plot=plot,
            progress=False if args.no_progress else None,
        )
    except SweepInterrupted as exc:
        print(f"landscape sweep: {exc}", file=sys.stderr)
        return 130
    print(result.summary())
    for name, error in result.errors.items():
        print(f"failed: {name}: {error}")
    if result.correlation is not None:
        print(result.correlation.summary())
        print(result.correlation.format_table())
    for path in result.files:
        print(f"wrote {path}")
    return 0
