"""``landscape demo``: train, measure and compare the optimizers; write the report."""

from __future__ import annotations

import argparse

from landscape.cli._args import comma_list


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    from landscape.demo import DEMO_METRICS, DEMO_OPTIMIZERS, DEMO_TRAJECTORY_METRICS

    p = subparsers.add_parser(
        "demo",
        help="train SGD and the sharpness-aware optimizers on built-in data, compare, report",
        description=(
            "On built-in data (digits by default): train SGD and each sharpness-aware "
            "optimizer briefly, compute their loss surfaces (random and PCA planes), "
            "curvature and sharpness metrics and Hessian spectra, print the comparison "
            "table and write an offline HTML report. Reruns resume from --out."
        ),
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--optimizers", type=comma_list, default=list(DEMO_OPTIMIZERS),
                   help=f"comma-separated (default {','.join(DEMO_OPTIMIZERS)})")  # fmt: skip
    p.add_argument("--data", default="digits", help="built-in data set (default digits)")
    p.add_argument("--model", default="mlp", help="model name (default mlp, 64 hidden units)")
    p.add_argument("--epochs", type=int, default=8, help="epochs per optimizer (default 8)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument("--lr", type=float, default=0.05, help="peak learning rate (default 0.05)")
    p.add_argument("--label-noise", type=float, default=0.0, help="corrupted label fraction")
    p.add_argument("--grid", type=int, default=21, help="random-plane grid side (default 21)")
    p.add_argument("--span", type=float, default=1.0, help="random plane covers [-span, span]²")
    p.add_argument("--pca-grid", type=int, default=15, help="PCA-plane grid side (0: none)")
    p.add_argument("--metrics", type=comma_list, default=list(DEMO_METRICS),
                   help=f"comma-separated (default {','.join(DEMO_METRICS)})")  # fmt: skip
    p.add_argument("--trajectory-metrics", type=comma_list, default=list(DEMO_TRAJECTORY_METRICS),
                   help="metrics at every epoch of every run (default "
                        f"{','.join(DEMO_TRAJECTORY_METRICS)}; '' for none)")  # fmt: skip
    p.add_argument("--max-samples", type=int, default=1024,
                   help="samples for surfaces, metrics, spectra (0: all)")  # fmt: skip
    p.add_argument("--spectrum-runs", type=int, default=2, help="SLQ runs per spectrum (0: none)")
    p.add_argument("--spectrum-steps", type=int, default=30, help="Lanczos steps per SLQ run")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: CUDA if present)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads while running (default 1; 0: keep torch's)")  # fmt: skip
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the demo and print the comparison table."""
    from landscape._io import check_output
    from landscape.demo import run_demo

    check_output(args.out, folder=True)
    res = run_demo(
        args.out,
        optimizers=args.optimizers,
        data=args.data,
        model=args.model,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        label_noise=args.label_noise,
        grid=args.grid,
        span=args.span,
        pca_grid=args.pca_grid,
        metrics=args.metrics,
        trajectory_metrics=args.trajectory_metrics,
        max_samples=args.max_samples or None,
        spectrum_runs=args.spectrum_runs,
        spectrum_steps=args.spectrum_steps,
        seed=args.seed,
        device=args.device,
        threads=args.threads or None,
        progress=False if args.no_progress else None,
    )
    print(res.comparison.format_table())
    print()
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    print(f"stages: {timing}")
    print(f"report: {res.report}")
    return 0
