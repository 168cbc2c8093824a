"""Seeds' claims: does each seed optimizer lower the quantity its paper says it lowers?

    .venv/bin/python benchmarks/seeds.py [--seeds 3] [--data digits,mnist1d] [--noise 0.2] ...

The four seed papers' claims (definitions: the spec's "seed papers' own quantities"):

- GAM (Zhang et al., CVPR 2023) lowers the first-order flatness
  ``R¹_ρ = ρ·max_{‖ε‖≤ρ} ‖∇L(θ+ε)‖`` (metric ``first_order_flatness``).
- CR-SAM (Wu et al., AAAI 2024) lowers the normalised trace ``Tr(H)/‖∇L‖``
  (``normalized_trace``).
- FAD (Zhang et al., ICCV 2023) lowers the zeroth-order flatness
  ``R⁰_ρ = max_{‖ε‖≤ρ} L(θ+ε) − L(θ)`` (``sam_sharpness``) and the first-order flatness
  together.
- Agnostic-SAM (Nguyen et al. 2024) raises the cosine between the gradients of training
  and validation data (``grad_cosine``).

Protocol. For each data set and seed, ``load_data(name, seed=seed, label_noise=--noise,
val_fraction=--val-fraction)`` is loaded once: symmetric label noise on the training split
(exactly that fraction of labels replaced by a different class drawn uniformly, chosen by
the seed) and a seeded stratified validation split with clean labels, held out of
training. SGD, SAM, GAM, CR-SAM, FAD and Agnostic-SAM then train on that same bundle with
``landscape.training.train``: the same model and initialisation (the seed), data order,
batch size, epochs, peak LR with the per-step cosine schedule, momentum and weight decay;
each optimizer at its own defaults (``optimizers.optimizer_hparams(name)``) unless
``--hparam`` says otherwise. Agnostic-SAM splits each mini-batch itself (its
``val_fraction`` of the batch); the held-out validation split is never trained on.

Measurement, at the final weights, with ``landscape.compare.compare_models``: on the
**whole training split with the noisy labels the runs were trained on** (``--max-samples``
takes the first N instead), ``lambda_max`` (Lanczos), ``trace`` and ``normalized_trace``
(Hutchinson, ``--num-products``), ``grad_norm``, ``sam_sharpness`` at ``--sharpness-rho``
and ``first_order_flatness`` at ``--flatness-rho``, each with ``--sharpness-steps`` projected ascent
steps and with one step (the optimizers' own one-step estimate; see the science check for
why one step can mislead), and ``grad_cosine`` between the gradient of the whole training
split and that of the **held-out validation split** (clean labels), at θ. Clean test
accuracy comes from the training record.

Verdicts: for each claim, the seed optimizer against SGD and against SAM separately, paired
by seed: "holds" when it goes the claimed way in every seed, "does not hold" in none,
"mixed" otherwise, with the mean of the paired ratios (the difference for the cosine).
Tables give mean ± sd over seeds.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from typing import Any

import torch
from _science_common import (
    HOLDS,
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

import optimizers
from landscape.compare import compare_models
from landscape.data import DataBundle, load_data
from landscape.training import train

# Run label -> optimizer name.
RUNS = {
    "SGD": "sgd",
    "SAM": "sam",
    "GAM": "gam",
    "CR-SAM": "crsam",
    "FAD": "fad",
    "Agnostic-SAM": "agnostic_sam",
}
BASELINES = ("SGD", "SAM")
# Per data set: batch size, epochs, peak LR (each overridable for all data sets by a flag).
DATA_SETTINGS = {
    "digits": {"batch_size": 32, "epochs": 40, "lr": 0.05},
    "mnist1d": {"batch_size": 128, "epochs": 30, "lr": 0.1},
}
# A run counts as trained when its final training loss is below this fraction of the loss
# at the initialisation.
TRAINED_FRACTION = 0.5


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(p, seeds=3)
    p.add_argument(
        "--data",
        default="digits,mnist1d",
        help="built-in data sets, comma-separated (batch, epochs and LR of DATA_SETTINGS; "
        "digits' for any other)",
    )
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: per data set)")
    p.add_argument("--batch-size", type=int, default=None, help="batch (default: per data set)")
    p.add_argument("--lr", type=float, default=None, help="peak LR, cosine to 0 (per data set)")
    p.add_argument("--noise", type=float, default=0.2, help="symmetric label-noise fraction")
    p.add_argument("--val-fraction", type=float, default=0.1, help="held-out validation split")
    p.add_argument(
        "--hparam",
        action="append",
        default=[],
        metavar="OPT:KEY=JSON",
        help="override an optimizer's default, e.g. gam:rho=0.1",
    )
    p.add_argument("--flatness-rho", type=float, default=0.2, help="rho of first_order_flatness")
    args = p.parse_args(argv)
    args.data = [d.strip() for d in args.data.split(",") if d.strip()]
    args.model_kwargs = model_kwargs(p, args)
    hparams: dict[str, dict[str, Any]] = {name: {} for name in RUNS.values()}
    for item in args.hparam:
        opt, sep1, rest = item.partition(":")
        key, sep2, value = rest.partition("=")
        if not (sep1 and sep2) or opt not in hparams:
            p.error(f"--hparam expects OPT:KEY=JSON with OPT one of {', '.join(hparams)}")
        hparams[opt][key] = json.loads(value)
    args.hparams = {
        label: optimizers.optimizer_hparams(name) | hparams[name] for label, name in RUNS.items()
    }
    return args


def settings(args: argparse.Namespace, data: str) -> dict[str, Any]:
    """Batch size, epochs and LR for ``data``: the flags, else the data set's defaults."""
    out = dict(DATA_SETTINGS.get(data, DATA_SETTINGS["digits"]))
    for key in out:
        if getattr(args, key) is not None:
            out[key] = getattr(args, key)
    return out


def measure(
    models: dict[str, torch.nn.Module], bundle: DataBundle, args: argparse.Namespace, seed: int
) -> dict[str, dict[str, float]]:
    """The targeted quantities and the context curvature of every model; ``label -> figures``."""
    common = {"max_samples": args.max_samples, "seed": seed, "progress": False}
    cmp = compare_models(
        models,
        bundle.train,  # the noisy labels trained on
        [
            "lambda_max",
            "trace",
            "normalized_trace",
            "grad_norm",
            "sam_sharpness",
            "first_order_flatness",
            "grad_cosine",
        ],
        per_metric={
            "sam_sharpness": {"rho": args.sharpness_rho, "steps": args.sharpness_steps},
            "first_order_flatness": {"rho": args.flatness_rho, "steps": args.sharpness_steps},
            "grad_cosine": {"other_data": bundle.val},
            "trace": {"num_products": args.num_products},
            "normalized_trace": {"num_products": args.num_products},
        },
        **common,
    )
    one = compare_models(
        models,
        bundle.train,
        ["sam_sharpness", "first_order_flatness"],
        per_metric={
            "sam_sharpness": {"rho": args.sharpness_rho},
            "first_order_flatness": {"rho": args.flatness_rho},
        },
        steps=1,
        **common,
    )
    out: dict[str, dict[str, float]] = {}
    for label in models:
        out[label] = {name: cmp.value(label, name) for name in cmp.metrics}
        for name in one.metrics:
            out[label][f"{name}_1"] = one.value(label, name)
    return out


def run_seed(data: str, seed: int, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Train the six runs of one data set and seed and measure them; ``label -> figures``."""
    bundle = load_data(data, seed=seed, label_noise=args.noise, val_fraction=args.val_fraction)
    common = {
        "model": args.model,
        "data": bundle,
        "model_kwargs": args.model_kwargs,
        "momentum": args.momentum,
        "weight_decay": args.weight_decay,
        "seed": seed,
        "device": args.device,
        "progress": False,
        **settings(args, data),
    }
    out: dict[str, dict[str, float]] = {}
    models = {}
    for label, name in RUNS.items():
        t0 = time.perf_counter()
        res = train(**common, optimizer=name, hparams=args.hparams[label])
        out[label] = final_row(res)
        out[label]["init_loss"] = float(res.metrics[0]["train_loss"])
        out[label]["train_seconds"] = time.perf_counter() - t0
        models[label] = res.model
    t0 = time.perf_counter()
    for label, figures in measure(models, bundle, args, seed).items():
        out[label].update(figures)
    out["SGD"]["metric_seconds"] = time.perf_counter() - t0
    return out


def claims(args: argparse.Namespace) -> list[tuple[str, str, str, bool]]:
    """``(run, key, heading, lower)`` of each claim: ``lower`` when the claim is a decrease."""
    k, r0, r1 = args.sharpness_steps, args.sharpness_rho, args.flatness_rho
    return [
        ("GAM", "first_order_flatness", f"R¹ ρ={r1} ({k} steps)", True),
        ("GAM", "first_order_flatness_1", f"R¹ ρ={r1} (1 step)", True),
        ("CR-SAM", "normalized_trace", "Tr H / ‖∇L‖", True),
        ("FAD", "sam_sharpness", f"R⁰ ρ={r0} ({k} steps)", True),
        ("FAD", "sam_sharpness_1", f"R⁰ ρ={r0} (1 step)", True),
        ("FAD", "first_order_flatness", f"R¹ ρ={r1} ({k} steps)", True),
        ("FAD", "first_order_flatness_1", f"R¹ ρ={r1} (1 step)", True),
        ("Agnostic-SAM", "grad_cosine", "cos(∇L_train, ∇L_val)", False),
    ]


def claim_rows(per_seed: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> list:
    """One verdict row per claim and baseline."""
    n = len(per_seed)
    rows = []
    for run, key, heading, lower in claims(args):
        for base in BASELINES:
            a, b = column(per_seed, run, key), column(per_seed, base, key)
            if key == "grad_cosine":
                holds, stat = paired_diff(a, b, lower=lower)
                shown = f"{stat:+.3g} (diff)"
            else:
                holds, stat = paired_ratio(a, b, lower=lower)
                shown = f"{stat:.3g}"
            claim = f"{run} {'lowers' if lower else 'raises'} {heading}"
            rows.append([claim, f"vs {base}", shown, f"{holds}/{n}", verdict(holds, n, HOLDS)])
    return rows


def untrained(per_seed: list[dict[str, dict[str, float]]]) -> dict[str, list[int]]:
    """``label -> seeds`` of the runs whose loss did not fall below the trained fraction."""
    bad: dict[str, list[int]] = {}
    for seed, runs in enumerate(per_seed):
        for label, fig in runs.items():
            if not fig["train_loss"] < TRAINED_FRACTION * fig["init_loss"]:
                bad.setdefault(label, []).append(seed)
    return bad


def report(per_seed: list[dict[str, dict[str, float]]], args: argparse.Namespace) -> str:
    """The three tables of one data set and the trained-run check."""
    k = args.sharpness_steps
    training = [
        ("train_loss", "train loss (noisy)"),
        ("train_acc", "train acc % (noisy)"),
        ("train_clean_acc", "train acc % (clean)"),
        ("test_acc", "test acc % (clean)"),
        ("train_seconds", "train s"),
    ]
    curvature = [
        ("lambda_max", "λ_max"),
        ("trace", "Tr H"),
        ("normalized_trace", "Tr H / ‖∇L‖"),
        ("grad_norm", "‖∇L‖"),
        ("sam_sharpness", f"R⁰ ({k} steps)"),
        ("sam_sharpness_1", "R⁰ (1 step)"),
        ("first_order_flatness", f"R¹ ({k} steps)"),
        ("first_order_flatness_1", "R¹ (1 step)"),
        ("grad_cosine", "cos(train, val)"),
    ]
    bad = untrained(per_seed)
    check = (
        f"trained: every run's final training loss < {TRAINED_FRACTION} × its initial loss"
        if not bad
        else f"NOT TRAINED (final loss ≥ {TRAINED_FRACTION} × initial): "
        + "; ".join(f"{label} (seeds {', '.join(map(str, s))})" for label, s in bad.items())
    )
    verdicts = table(
        ["claim", "baseline", "mean paired ratio / diff", "holds", "verdict"],
        claim_rows(per_seed, args),
    )
    return "\n\n".join(
        [
            runs_table(per_seed, list(RUNS), training),
            check,
            runs_table(per_seed, list(RUNS), curvature),
            verdicts,
        ]
    )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    cmd = "python benchmarks/seeds.py " + shlex.join(sys.argv[1:] if argv is None else argv)
    print(f"command: {cmd.strip()}")
    print(
        f"model {args.model} {json.dumps(args.model_kwargs)}, momentum {args.momentum}, "
        f"weight decay {args.weight_decay}, {args.noise:.0%} symmetric label noise, "
        f"validation split {args.val_fraction:.0%} (clean, held out), "
        f"seeds 0..{args.seeds - 1}, {args.threads} thread(s)"
    )
    for label, hp in args.hparams.items():
        print(f"  {label}: {json.dumps(hp)}")
    subset = "all" if args.max_samples is None else f"first {args.max_samples}"
    print(
        f"metrics on the training split ({subset}, noisy labels): lambda_max, trace and "
        f"normalized_trace ({args.num_products} products), sam_sharpness rho "
        f"{args.sharpness_rho} and first_order_flatness rho {args.flatness_rho} "
        f"({args.sharpness_steps} steps and 1 step); grad_cosine of the training split vs "
        "the validation split",
        flush=True,
    )
    t0 = time.perf_counter()
    results: dict[str, list[dict[str, dict[str, float]]]] = {}
    for data in args.data:
        s = settings(args, data)
        n_train = len(load_data(data, seed=0, val_fraction=args.val_fraction).train)
        spe = steps_per_epoch(n_train, s["batch_size"])
        print(
            f"\n## {data}: {n_train} training examples, batch {s['batch_size']}, "
            f"{s['epochs']} epochs = {s['epochs'] * spe} steps, peak LR {s['lr']} (cosine)",
            flush=True,
        )
        results[data] = []
        for seed in range(args.seeds):
            ts = time.perf_counter()
            results[data].append(run_seed(data, seed, args))
            print(f"{data} seed {seed} done in {time.perf_counter() - ts:.0f} s", flush=True)
        print()
        print(report(results[data], args), flush=True)
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    if args.json is not None:
        write_json(args.json, args, results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
