"""``landscape hessian``: top eigenvalues, trace and spectral density of a checkpoint."""

from __future__ import annotations

import argparse
import logging
import re
import sys
from typing import Any

from landscape.cli._args import positive_float, positive_int
from landscape.cli._user import USAGE, add_user_arguments, user_models

log = logging.getLogger(__name__)

_NONFINITE = re.compile(r"\b(nan|nans|inf|infs|infinity|non-finite)\b", re.IGNORECASE)


def register(subparsers: Any) -> None:
    """Add the ``hessian`` subcommand."""
    from landscape.hessian.summary import TRACE_METHODS

    p = subparsers.add_parser(
        "hessian",
        help="Hessian top eigenvalues, trace and spectral density of a checkpoint",
        description=(
            "Lanczos eigenvalues (full re-orthogonalisation, residual stopping), the trace "
            "(Hutch++, Hutchinson, per-layer diagonal blocks or CR-SAM finite "
            "differences) and the spectral density (stochastic Lanczos quadrature) of the "
            "loss Hessian at a checkpoint, on a split of its data, or at your own model "
            "on your data (--model PKG.MODULE:ATTR --data PKG.MODULE:ATTR [--weights FILE]). "
            "Under torchrun (torchrun --nproc_per_node=N -m landscape hessian ...) each "
            "process takes its share of the data; the results equal one process's and "
            "process 0 writes them."
        ),
    )
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint file written by `landscape train` (or --model/--data below)",
    )
    _add_spectrum_arguments(p, TRACE_METHODS)
    _add_run_arguments(p)
    add_user_arguments(p)
    p.set_defaults(func=run)


def _add_spectrum_arguments(p: argparse.ArgumentParser, trace_methods: tuple[str, ...]) -> None:
    """What to compute: eigenvalues, trace, density and their budgets."""
    p.add_argument("--top-k", type=int, default=5, help="eigenvalues to compute (0: none)")
    p.add_argument("--which", choices=("largest", "smallest", "magnitude"), default="largest")
    p.add_argument(
        "--tol",
        type=positive_float,
        default=1e-3,
        help="relative tolerance: of the residual ‖Hv−λv‖ ≤ tol·|λ| (default 1e-3), or "
        "of the eigenvalue with --criterion eigenvalue",
    )
    p.add_argument(
        "--criterion",
        choices=("residual", "eigenvalue"),
        default="residual",
        help="what --tol bounds: the residual (eigenvectors accurate too; default) or the "
        "eigenvalue's a-posteriori error min(r, r²/gap) (fewer products)",
    )
    p.add_argument(
        "--max-products",
        type=positive_int,
        default=100,
        help="cap on Hessian-vector products for the eigenvalues (default 100)",
    )
    p.add_argument("--trace", action="store_true", help="estimate the trace")
    p.add_argument(
        "--trace-method",
        choices=trace_methods,
        default=None,
        help="with --trace: the estimator (default hutchpp)",
    )
    p.add_argument(
        "--trace-products",
        type=positive_int,
        default=None,
        help="with --trace: products (probes for fd) for the trace (default 60)",
    )
    p.add_argument(
        "--target-rel-stderr",
        type=positive_float,
        default=None,
        help="with --trace: stop the trace at this relative standard error",
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="also per-layer traces and per-layer top eigenvalues",
    )
    p.add_argument("--density", action="store_true", help="spectral density (SLQ)")
    p.add_argument(
        "--density-runs", type=positive_int, default=None, help="with --density: SLQ runs (5)"
    )
    p.add_argument(
        "--density-steps",
        type=positive_int,
        default=None,
        help="with --density: Lanczos steps per SLQ run (60)",
    )


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """On what and how: data, products, precision, devices, files."""
    p.add_argument("--split", choices=("train", "val", "test"), default="train")
    p.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help="use only the first N samples of the split",
    )
    p.add_argument(
        "--batch-size",
        type=positive_int,
        default=256,
        help="batch size; data in one batch keeps the first-order graph",
    )
    p.add_argument(
        "--method",
        choices=("exact", "forward", "fd", "auto"),
        default="exact",
        help="Hessian-vector products (default exact double backward; auto: the kept graph "
        "for one batch, else the faster of exact and forward on the first product)",
    )
    p.add_argument("--float64", action="store_true", help="compute in float64")
    p.add_argument("--device", default=None, help="cpu, cuda, ... (default: auto)")
    p.add_argument(
        "--basis-device",
        default=None,
        metavar="DEVICE",
        help="where the Krylov basis of the Lanczos runs (eigenvalues, per-layer eigenvalues, "
        "density) is kept: cpu, cuda, ... (default: with the model); it holds steps × "
        "parameters numbers, so cpu keeps a large model's basis off the accelerator (two "
        "vector copies per step)",
    )
    p.add_argument(
        "--basis-dtype",
        choices=("float32", "float64"),
        default=None,
        help="dtype of that basis (default: the computation's); float64 orthogonalises "
        "more exactly, float32 halves a float64 run's basis memory",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default=None,
        metavar="FILE.json",
        help="write the results as JSON, after each finished part (eigenvalues, trace, "
        "density); an existing FILE.json of the same checkpoint and settings is resumed",
    )
    p.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="do not reuse the finished parts of an existing --out FILE.json: overwrite it",
    )
    p.add_argument(
        "--save-eigenvectors",
        default=None,
        metavar="PT",
        help="save eigenvalues and eigenvectors (tensor lists) with torch.save",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


# The options of the trace and of the density, with their defaults (None on the parser,
# so that one given without its --trace / --density is refused instead of ignored).
_NEEDS_SWITCH = {
    "trace_method": ("trace", "hutchpp"),
    "trace_products": ("trace", 60),
    "target_rel_stderr": ("trace", None),
    "density_runs": ("density", 5),
    "density_steps": ("density", 60),
}


def _options_need_their_switch(args: argparse.Namespace) -> None:
    """Refuse a trace or density option without ``--trace``/``--density``; fill defaults."""
    for key, (switch, default) in _NEEDS_SWITCH.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
        elif not getattr(args, switch):
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"Invalid options: {flag} without --{switch} (nothing to apply it to)")


def run(args: argparse.Namespace) -> int:
    """Run ``landscape hessian``."""
    import torch

    from landscape._io import check_output
    from landscape.checkpoint import atomic_save
    from landscape.distributed import is_main_process
    from landscape.hessian.summary import (
        SummaryInterrupted,
        format_summary,
        hessian_summary_checkpoint,
    )

    # The outputs are checked before any work (a refused path otherwise shows up after
    # minutes of Lanczos).
    if args.out is not None:
        check_output(args.out, suffixes=(".json",))
    if args.save_eigenvectors is not None:
        check_output(args.save_eigenvectors, what="--save-eigenvectors")
    users = user_models(args, args.checkpoint)
    if not users and args.checkpoint is None:
        raise ValueError(f"no checkpoint given ({USAGE})")
    source = users[0] if users else args.checkpoint
    _options_need_their_switch(args)
    try:
        summary = hessian_summary_checkpoint(
            source,
            split=args.split,
            device=args.device,
            out=args.out,
            resume=args.resume,
            top_k=args.top_k,
            which=args.which,
            tol=args.tol,
            criterion=args.criterion,
            max_products=args.max_products,
            trace=args.trace,
            trace_method=args.trace_method,
            trace_products=args.trace_products,
            target_rel_stderr=args.target_rel_stderr,
            per_layer=args.per_layer,
            density=args.density,
            density_runs=args.density_runs,
            density_steps=args.density_steps,
            method=args.method,
            dtype=torch.float64 if args.float64 else None,
            basis_device=args.basis_device,
            basis_dtype=None if args.basis_dtype is None else getattr(torch, args.basis_dtype),
            batch_size=args.batch_size,
            max_samples=args.max_samples,
            seed=args.seed,
            return_eigenvectors=args.save_eigenvectors is not None,
            progress=False if args.no_progress else None,
            params=args.params,
        )
    except ValueError as exc:
        # A non-finite loss or gradient at finite weights surfaces deep in the numerics
        # ("array must not contain infs or NaNs"): say which checkpoint it was.
        if _NONFINITE.search(str(exc)) and str(source) not in str(exc):
            raise ValueError(
                f"{source}: {exc} (the loss or its gradient is not finite at these weights?)"
            ) from exc
        raise
    except SummaryInterrupted as exc:
        # The file already holds the finished parts; say so (the dispatcher would only
        # print "interrupted").
        if is_main_process():
            print(f"landscape hessian: {exc}", file=sys.stderr)
        return 130
    if not is_main_process():  # under torchrun: process 0 reports and writes
        return 0
    vectors = summary.pop("eigenvectors", None)
    print(format_summary(summary))
    if args.out is not None:
        print(f"wrote {args.out}")
    if args.save_eigenvectors is not None and vectors is not None:
        atomic_save(
            {
                "eigenvalues": summary["eigen"]["eigenvalues"],
                "eigenvectors": [[t.cpu() for t in v] for v in vectors],
                "param_names": summary["param_names"],
                "checkpoint": summary["checkpoint"],
            },
            args.save_eigenvectors,
        )
        print(f"wrote {args.save_eigenvectors}")
    return 0
