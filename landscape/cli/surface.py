"""``landscape surface``: the loss surface of a checkpoint, stored in HDF5."""

from __future__ import annotations

import argparse
import logging
import os
import re
from typing import Any

import numpy as np

from landscape.cli._args import positive_int
from landscape.cli._user import USAGE, add_user_arguments, user_models
from landscape.surface import EVALUATION_MODES, SPLITS, parse_grid

log = logging.getLogger(__name__)

# What --out may end in: the HDF5 file of the paper's layout.
SURFACE_SUFFIXES = (".h5", ".hdf5")


def _grid(spec: str) -> Any:
    try:
        return parse_grid(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def register(subparsers: Any) -> None:
    """Add the ``surface`` subcommand."""
    p = subparsers.add_parser(
        "surface",
        help="1-D/2-D loss surface of a checkpoint (HDF5, resumable, torchrun-aware)",
        description=(
            "Evaluate L(θ* + αδ + βη) on a grid around a checkpoint and store it in HDF5 "
            "(the layout of Li et al. 2018). Rerunning the same command resumes an "
            "interrupted file. Under `torchrun --nproc_per_node=N -m landscape surface ...` "
            "the grid points are shared between the processes. In place of a checkpoint: "
            "your own model and data, --model PKG.MODULE:ATTR --data PKG.MODULE:ATTR "
            "[--weights FILE]."
        ),
    )
    # Grid specs such as "-1:1:51" (or a mistaken "-inf:1:3") start with "-": let argparse
    # read them as values, so that parse_grid can judge them (no option holds a ":").
    # (This widens a private matcher of argparse, which Python >= 3.12 widens itself.)
    p._negative_number_matcher = re.compile(r"^-\d+$|^-\d*\.\d+$|^-[^-=][^=]*:")
    p.add_argument(
        "checkpoint",
        nargs="?",
        help="checkpoint file written by `landscape train` (or --model/--data below)",
    )
    p.add_argument(
        "--out", required=True, help="HDF5 file (.h5, .hdf5) to write (resumed if it exists)"
    )
    p.add_argument(
        "--dim",
        type=int,
        choices=(1, 2),
        default=None,
        help="1-D or 2-D (default 2; --interpolate is 1-D, --pca 2-D)",
    )
    p.add_argument(
        "--x",
        type=_grid,
        default="-1:1:51",
        metavar="START:STOP:NUM",
        help="grid along the first direction (default -1:1:51)",
    )
    p.add_argument(
        "--y",
        type=_grid,
        default=None,
        metavar="START:STOP:NUM",
        help="grid along the second direction of a 2-D surface (default -1:1:51)",
    )
    p.add_argument(
        "--norm",
        choices=("filter", "layer", "model", "none"),
        default="filter",
        help="normalisation of the random directions (default filter)",
    )
    p.add_argument(
        "--ignore",
        choices=("biasbn", "none"),
        default="biasbn",
        help="biasbn: no movement of biases and BatchNorm scales (default)",
    )
    p.add_argument(
        "--states",
        action="store_true",
        help="also move BatchNorm running statistics (Li's states mode)",
    )
    p.add_argument("--orthogonalize", action="store_true", help="make η orthogonal to δ")
    p.add_argument("--seed", type=int, default=0, help="seed of the random directions")
    p.add_argument(
        "--interpolate", metavar="OTHER.pt", help="1-D line from CHECKPOINT (α=0) to OTHER.pt (α=1)"
    )
    p.add_argument(
        "--pca", metavar="RUN_DIR", help="plane of the top-2 PCA directions of a run's checkpoints"
    )
    p.add_argument(
        "--split", choices=SPLITS, default="train", help="data split(s) to evaluate (default train)"
    )
    p.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help="evaluate on the first N samples of each split",
    )
    p.add_argument("--batch-size", type=positive_int, default=256, help="evaluation batch size")
    p.add_argument("--data-dir", default=None, help="folder of the dataset files (CIFAR)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument(
        "--evaluation",
        choices=EVALUATION_MODES,
        default="loop",
        help="loop (default), vmap (batched grid points) or auto (measure both)",
    )
    p.add_argument(
        "--compile",
        choices=("off", "on", "auto"),
        default="off",
        help="torch.compile the forward: off (default), on, or auto (only when the grid "
        "pays for the compile time; the decision is logged and stored in the file)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out file from a different computation",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_user_arguments(p)
    p.set_defaults(func=run)


def _dimension(args: argparse.Namespace) -> int:
    """The surface's dimension, from ``--dim``, ``--interpolate`` (1-D) and ``--pca`` (2-D).

    Conflicting flags are refused: a ``--y`` of a 1-D surface was silently ignored.
    """
    if args.interpolate is not None and args.pca is not None:
        raise ValueError("Invalid options: --interpolate and --pca exclude each other")
    if args.params is not None and (args.interpolate is not None or args.pca is not None):
        raise ValueError(
            "Invalid options: --params selects what random directions move, not "
            "--interpolate or --pca directions"
        )
    implied = 1 if args.interpolate is not None else 2 if args.pca is not None else None
    flag = "--interpolate" if args.interpolate is not None else "--pca"
    if implied is not None and args.dim is not None and args.dim != implied:
        raise ValueError(f"Invalid options: --dim {args.dim} with {flag} (it is {implied}-D)")
    dim = implied or args.dim or 2
    if dim == 1 and args.y is not None:
        why = f"{flag} draws a line" if implied == 1 else "--dim 1"
        raise ValueError(f"Invalid options: --y with {why} (a 1-D surface has no y grid)")
    return dim


def run(args: argparse.Namespace) -> int:
    """Compute the surface the arguments describe."""
    from landscape._io import check_output
    from landscape.distributed import is_main_process
    from landscape.surface import surface_from_checkpoint

    if is_main_process():  # under torchrun process 0 alone writes (on its node)
        check_output(args.out, suffixes=SURFACE_SUFFIXES)
    users = user_models(args, args.checkpoint)
    if not users and args.checkpoint is None:
        raise ValueError(f"no checkpoint given ({USAGE})")
    dim = _dimension(args)

    surface = surface_from_checkpoint(
        users[0] if users else args.checkpoint,
        out=args.out,
        dim=dim,
        x=args.x,
        y=parse_grid("-1:1:51") if args.y is None else args.y,
        norm=args.norm,
        ignore=None if args.ignore == "none" else args.ignore,
        states=args.states,
        orthogonalize=args.orthogonalize,
        seed=args.seed,
        interpolate=args.interpolate,
        pca=args.pca,
        split=args.split,
        max_samples=args.max_samples,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        device=args.device,
        evaluation=args.evaluation,
        overwrite=args.overwrite,
        progress=False if args.no_progress else None,
        params=args.params,
        compile=args.compile,
    )
    if os.environ.get("RANK", "0") == "0":
        first = next(iter(surface.values))
        vals = surface.values[first][surface.done]
        lo = float(np.nanmin(vals)) if np.isfinite(vals).any() else float("nan")
        hi = float(np.nanmax(vals)) if np.isfinite(vals).any() else float("nan")
        shape = "x".join(map(str, surface.shape))
        print(f"{args.out}: {shape} surface, {first} min {lo:.6g} max {hi:.6g}")
    return 0
