"""``landscape demo``: train, measure and compare the optimizers; write the report."""

from __future__ import annotations

import argparse

from landscape.cli._args import comma_list, finite_float, positive_float


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``demo`` subcommand."""
    from landscape.demo import DEMO_METRICS, DEMO_OPTIMIZERS, DEMO_TRAJECTORY_METRICS

    p = subparsers.add_parser(
        "demo",
        help="train SGD and the sharpness-aware optimizers on built-in data, compare, report",
        description=(
            "On built-in data (digits by default, 40 % of the training labels noised): "
            "train SGD and each sharpness-aware optimizer, compute their loss surfaces "
            "(random and PCA planes), curvature and sharpness metrics and Hessian spectra, "
            "print the comparison table and the finding (how flatness ranks with the clean "
            "test accuracy) and write an offline HTML report. Reruns resume from --out."
        ),
    )
    p.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    p.add_argument("--optimizers", type=comma_list, default=list(DEMO_OPTIMIZERS),
                   help=f"comma-separated (default {','.join(DEMO_OPTIMIZERS)})")  # fmt: skip
    p.add_argument("--data", default="digits", help="built-in data set (default digits)")
    p.add_argument("--model", default="mlp", help="model name (default mlp, 64 hidden units)")
    p.add_argument("--epochs", type=int, default=60, help="epochs per optimizer (default 60)")
    p.add_argument("--batch-size", type=int, default=64, help="batch size (default 64)")
    p.add_argument(
        "--lr", type=positive_float, default=0.05, help="peak learning rate (default 0.05)"
    )
    p.add_argument(
        "--weight-decay", type=finite_float, default=0.0, help="weight decay (default 0)"
    )
    p.add_argument("--label-noise", type=finite_float, default=0.4,
                   help="fraction of training labels replaced by another class (default 0.4; "
                        "test labels are never noised)")  # fmt: skip
    p.add_argument("--n-per-class", type=int, default=50,
                   help="training images per class (default 50; 0: all)")  # fmt: skip
    p.add_argument("--save-every", type=int, default=None,
                   help="checkpoint every N epochs, which the PCA paths and the "
                        "trajectory metrics use (default epochs // 10, at least 1)")  # fmt: skip
    p.add_argument("--grid", type=int, default=21, help="random-plane grid side (default 21)")
    p.add_argument(
        "--span", type=positive_float, default=1.0, help="random plane covers [-span, span]²"
    )
    p.add_argument("--pca-grid", type=int, default=15, help="PCA-plane grid side (0: none)")
    p.add_argument("--metrics", type=comma_list, default=list(DEMO_METRICS),
                   help=f"comma-separated (default {','.join(DEMO_METRICS)})")  # fmt: skip
    p.add_argument("--trajectory-metrics", type=comma_list, default=list(DEMO_TRAJECTORY_METRICS),
                   help="metrics at every checkpoint of every run (default "
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
    """Run the demo; print the comparison table and the finding."""
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
        weight_decay=args.weight_decay,
        label_noise=args.label_noise,
        n_per_class=args.n_per_class or None,
        save_every=args.save_every,
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
    comp = res.comparison
    first = [m for m in ("lambda_max", "trace", "test_acc") if m in comp.metrics]
    print(comp.format_table(columns=first + [m for m in comp.metrics if m not in first]))
    if args.label_noise:
        print(
            f"train_loss, train_acc: on the noisy training labels ({args.label_noise:.0%} "
            "replaced by another class)\ntrain_clean_acc: the same images with their clean "
            "labels; test_acc: the test labels, never noised"
        )
    print()
    if res.finding is not None:
        print(res.finding.sentence)
        print()
    timing = ", ".join(f"{k} {v:.0f} s" for k, v in res.seconds.items())
    print(f"stages: {timing}")
    print(f"report: {res.report}")
    return 0
