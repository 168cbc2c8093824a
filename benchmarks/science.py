"""Science check: does the toolkit reproduce three known findings on built-in data?

    .venv/bin/python benchmarks/science.py [--seeds 5] [--data digits] [--model mlp] ...

Everything goes through the public API: ``landscape.training.train`` trains every run,
``landscape.compare.compare_models`` / ``landscape.metrics.compute_metrics`` measure them
(on the whole training set, clean labels, at the final weights).

1. Large-batch SGD ends sharper than small-batch SGD (Keskar et al. 2017, ICLR).
   Protocol: the same model, initialisation (seed), peak LR, momentum, weight decay and
   cosine schedule; the large batch gets the SAME NUMBER OF OPTIMIZER STEPS as the small
   batch (so ``epochs × steps_per_epoch(small) / steps_per_epoch(large)`` epochs), which
   brings both to a similar low training loss (reported alongside, so the reader can check
   that the comparison is at comparable loss).
2. SAM ends flatter than SGD (Foret et al. 2021, ICLR): SAM (SGD base, ``--rho``) vs the
   small-batch SGD run of finding 1 (same batch, epochs, LR, seed).
3. With symmetric label noise (``--noise``, exact count, each corrupted label a uniformly
   drawn different class), SAM's accuracy on the clean test labels is not below SGD's
   (Foret et al. 2021, Sec. 3.3). Both train on the same noisy labels for
   ``--noise-epochs`` epochs (long enough for SGD to start memorising the noise).

Sharpness measures: the top Hessian eigenvalue (``lambda_max``, Lanczos), the Hessian
trace (``trace``, Hutchinson), and the SAM sharpness ``max_{‖ε‖≤ρ} L(θ+ε) − L(θ)`` twice:
with ``--sharpness-steps`` projected ascent steps (a good estimate of the max) and with
one step (SAM's own estimate ``L(θ + ρ g/‖g‖) − L(θ)``, dominated by the first-order term
ρ‖g‖ near a minimum). Each figure is mean ± sd over seeds; a finding "holds" in a seed
when the paired comparison (same seed) goes the expected way.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time

import torch
from _science_common import (
    add_common_arguments,
    column,
    final_row,
    model_kwargs,
    paired_diff,
    paired_ratio,
    runs_table,
    steps_per_epoch,
    table,
    verdict,
    write_json,
)

from landscape.compare import compare_models
from landscape.data import load_data
from landscape.metrics import compute_metrics
from landscape.training import train

SB, LB, SAM = "SGD small batch", "SGD large batch", "SAM"
NSGD, NSAM = "SGD, noisy labels", "SAM, noisy labels"
CURV = ("lambda_max", "trace", "sam_sharpness")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, seeds=5)
    p.add_argument("--data", default="digits", help="built-in data set (digits, mnist1d, ...)")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the small-batch runs")
    p.add_argument("--small-batch", type=int, default=32)
    p.add_argument("--large-batch", type=int, default=512)
    p.add_argument("--lr", type=float, default=0.05, help="peak LR (cosine to 0), all runs")
    p.add_argument("--rho", type=float, default=0.05, help="SAM's rho (finding 2)")
    p.add_argument("--noise", type=float, default=0.4, help="label-noise fraction (finding 3)")
    p.add_argument("--noise-epochs", type=int, default=60)
    p.add_argument("--noise-rho", type=float, default=0.1, help="SAM's rho (finding 3)")
    args = p.parse_args(argv)
    args.model_kwargs = model_kwargs(p, args)
    return args


def run_seed(seed: int, args: argparse.Namespace, lb_epochs: int) -> dict[str, dict[str, float]]:
    """Train the five runs of one seed and measure them; ``label -> figures``."""
    common = {
        "model": args.model,
        "data": args.data,
        "model_kwargs": args.model_kwargs,
        "lr": args.lr,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "seed": seed,
        "device": args.device,
        "progress": False,
    }
    plans = {
        SB: {"optimizer": "sgd", "batch_size": args.small_batch, "epochs": args.epochs},
        LB: {"optimizer": "sgd", "batch_size": args.large_batch, "epochs": lb_epochs},
        SAM: {
            "optimizer": "sam",
            "batch_size": args.small_batch,
            "epochs": args.epochs,
            "hparams": {"rho": args.rho},
        },
        NSGD: {
            "optimizer": "sgd",
            "batch_size": args.small_batch,
            "epochs": args.noise_epochs,
            "label_noise": args.noise,
        },
        NSAM: {
            "optimizer": "sam",
            "batch_size": args.small_batch,
            "epochs": args.noise_epochs,
            "label_noise": args.noise,
            "hparams": {"rho": args.noise_rho},
        },
    }
    out: dict[str, dict[str, float]] = {}
    models = {}
    train_data = None
    for label, plan in plans.items():
        t0 = time.perf_counter()
        res = train(**common, **plan)
        out[label] = final_row(res)
        out[label]["train_seconds"] = time.perf_counter() - t0
        if label in (SB, LB, SAM):
            models[label] = res.model
            train_data = res.data.train  # clean labels: the same for the three runs
    t0 = time.perf_counter()
    cmp = compare_models(
        models,
        train_data,
        list(CURV),
        max_samples=args.max_samples,
        rho=args.sharpness_rho,
        steps=args.sharpness_steps,
        num_products=args.num_products,
        seed=seed,
        progress=False,
    )
    for label, model in models.items():
        for name in CURV:
            out[label][name] = cmp.value(label, name)
        one = compute_metrics(
            model,
            train_data,
            ["sam_sharpness", "grad_norm"],
            max_samples=args.max_samples,
            rho=args.sharpness_rho,
            steps=1,
            progress=False,
        )
        out[label]["sam_sharpness_1"] = one["sam_sharpness"].value
        out[label]["grad_norm"] = one["grad_norm"].value
    out[SB]["metric_seconds"] = time.perf_counter() - t0
    return out


def report(per_seed: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    n = len(per_seed)
    k = args.sharpness_steps
    cols = [
        ("train_loss", "train loss"),
        ("train_acc", "train acc %"),
        ("test_acc", "test acc %"),
        ("lambda_max", "λ_max"),
        ("trace", "Tr H"),
        ("sam_sharpness", f"SAM sharpness ({k} steps)"),
        ("sam_sharpness_1", "SAM sharpness (1 step)"),
        ("grad_norm", "‖∇L‖"),
    ]
    t1 = runs_table(per_seed, (SB, LB, SAM), cols)
    ncols = [
        ("train_loss", "train loss (noisy labels)"),
        ("train_acc", "train acc % (noisy labels)"),
        ("train_clean_acc", "train acc % (clean labels)"),
        ("test_acc", "test acc % (clean)"),
    ]
    t2 = runs_table(per_seed, (NSGD, NSAM), ncols)
    rows = []
    for finding, sharp, flat in (("1. large batch sharper", LB, SB), ("2. SAM flatter", SB, SAM)):
        for key, name in cols[3:7]:
            holds, ratio = paired_ratio(
                column(per_seed, sharp, key), column(per_seed, flat, key), lower=False
            )
            rows.append(
                [
                    finding,
                    f"{name}: {sharp} / {flat}",
                    f"{ratio:.3g}",
                    f"{holds}/{n}",
                    verdict(holds, n),
                ]
            )
    holds, diff = paired_diff(
        column(per_seed, NSAM, "test_acc"),
        column(per_seed, NSGD, "test_acc"),
        lower=False,
        ties=True,
    )
    rows.append(
        [
            f"3. SAM ≥ SGD under {args.noise:.0%} noise",
            "test acc: SAM − SGD (points)",
            f"{diff:+.3g}",
            f"{holds}/{n}",
            verdict(holds, n),
        ]
    )
    t3 = table(["finding", "measure", "mean paired ratio / diff", "holds", "verdict"], rows)
    return "\n\n".join([t1, t2, t3])


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    n_train = len(load_data(args.data, seed=0).train)
    spe_s = steps_per_epoch(n_train, args.small_batch)
    spe_l = steps_per_epoch(n_train, args.large_batch)
    lb_epochs = max(1, round(args.epochs * spe_s / spe_l))
    cmd = "python benchmarks/science.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"command: {cmd.strip()}")
    print(
        f"data {args.data} ({n_train} training examples), model {args.model} "
        f"{json.dumps(args.model_kwargs)}, lr {args.lr} (cosine), momentum {args.momentum}, "
        f"weight decay {args.weight_decay}, seeds 0..{args.seeds - 1}, {args.threads} thread(s)"
    )
    print(
        f"small batch {args.small_batch}: {args.epochs} epochs = {args.epochs * spe_s} steps; "
        f"large batch {args.large_batch}: {lb_epochs} epochs = {lb_epochs * spe_l} steps; "
        f"SAM rho {args.rho}; noise {args.noise:.0%}: {args.noise_epochs} epochs, "
        f"SAM rho {args.noise_rho}"
    )
    subset = "" if args.max_samples is None else f", first {args.max_samples}"
    print(
        f"metrics on the training set (clean labels{subset}): "
        f"lambda_max (Lanczos), trace (Hutchinson, {args.num_products} products), "
        f"sam_sharpness rho {args.sharpness_rho} ({args.sharpness_steps} steps and 1 step)",
        flush=True,
    )
    t0 = time.perf_counter()
    per_seed = []
    for seed in range(args.seeds):
        ts = time.perf_counter()
        per_seed.append(run_seed(seed, args, lb_epochs))
        print(f"seed {seed} done in {time.perf_counter() - ts:.0f} s", flush=True)
    print()
    print(report(per_seed, args))
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        write_json(args.json, args, per_seed)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
