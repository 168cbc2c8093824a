"""``landscape connect``: a low-loss curve between two checkpoints, stored in HDF5."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from landscape.cli._args import positive_float, positive_int
from landscape.cli._user import add_user_arguments, user_models

# What --out may end in: a curve file extends the 1-D surface layout.
CURVE_SUFFIXES = (".h5", ".hdf5")


def register(subparsers: Any) -> None:
    """Add the ``connect`` subcommand."""
    p = subparsers.add_parser(
        "connect",
        help="fit a low-loss curve between two checkpoints (mode connectivity, HDF5)",
        description=(
            "Fit a quadratic Bezier curve (or a polygonal chain) from checkpoint A (t=0) to "
            "checkpoint B (t=1) by training its bend on E_t L(φ(t)) (Garipov et al. 2018), "
            "then store the loss and accuracy along the curve and along the straight line, "
            "their barriers and the bend's weights in HDF5 (a 1-D surface file: `landscape "
            "plot` and `landscape report` draw it). Both checkpoints are measured on A's "
            "dataset. Your own model: --model M --data D --weights A --weights B in place of "
            "the two checkpoints."
        ),
    )
    p.add_argument("checkpoint_a", nargs="?", help="checkpoint of network A (t = 0)")
    p.add_argument("checkpoint_b", nargs="?", help="checkpoint of network B (t = 1)")
    p.add_argument("--out", required=True, help="HDF5 file (.h5, .hdf5) to write")
    p.add_argument(
        "--kind",
        choices=("bezier", "polychain"),
        default="bezier",
        help="quadratic Bezier curve (default) or polygonal chain through the bend",
    )
    p.add_argument("--epochs", type=positive_int, default=20, help="epochs of the fit (20)")
    p.add_argument("--lr", type=positive_float, default=0.05, help="SGD learning rate (0.05)")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="SGD weight decay (0)")
    p.add_argument(
        "--schedule",
        choices=("cosine", "constant"),
        default="cosine",
        help="learning-rate schedule (default cosine)",
    )
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    p.add_argument("--seed", type=int, default=0, help="seed of t, the data order and dropout")
    p.add_argument("--num", type=positive_int, default=25, help="points of t evaluated (25)")
    p.add_argument(
        "--split",
        choices=("train", "both"),
        default=None,
        help="profile on the train split, or on train and test (default: both when the "
        "data has a test split, else train)",
    )
    p.add_argument(
        "--max-samples",
        type=positive_int,
        default=None,
        help="evaluate on the first N samples of each split (the fit uses all)",
    )
    p.add_argument(
        "--eval-batch-size", type=positive_int, default=256, help="evaluation batch size"
    )
    p.add_argument("--data-dir", default=None, help="folder of the dataset files (CIFAR)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_user_arguments(p, several_weights=True, params=False)
    p.set_defaults(func=run)


def _open_pair(args: argparse.Namespace) -> tuple[Any, Any, Any, dict[str, Any]]:
    """Networks A and B (checkpoints or the user's model twice), A's data, the file's info."""
    from landscape.checkpoint import check_readable, load_checkpoint

    given = [p for p in (args.checkpoint_a, args.checkpoint_b) if p is not None]
    users = user_models(args, given)
    if users:
        if len(users) != 2:
            raise ValueError(
                f"--model {args.model}: give two --weights files, A (t = 0) then B (t = 1)"
            )
        if args.data_dir:
            raise ValueError("Invalid options: --data-dir is for built-in datasets, not --data")
        ckpt, other = (u.open(map_location="cpu", finite=True) for u in users)
        bundle = ckpt.load_data()
        names = [str(u.weights) for u in users]
        info: dict[str, Any] = {"data": users[0].data, **ckpt.attrs()}
    else:
        if len(given) != 2:
            raise ValueError(
                "give two checkpoints, A (t = 0) and B (t = 1), or --model PKG.MODULE:ATTR "
                "--data PKG.MODULE:ATTR --weights A --weights B"
            )
        for path in given:
            check_readable(path)
        ckpt = load_checkpoint(given[0], map_location="cpu", finite=True)
        other = load_checkpoint(given[1], map_location="cpu", finite=True)
        bundle = ckpt.load_data(**({"data_dir": args.data_dir} if args.data_dir else {}))
        names = [str(Path(p)) for p in given]
        info = {"data": bundle.spec}
    info.update(
        checkpoint_a=names[0],
        checkpoint_a_sha256=ckpt.sha256,
        checkpoint_b=names[1],
        checkpoint_b_sha256=other.sha256,
    )
    return ckpt, other, bundle, info


def run(args: argparse.Namespace) -> int:
    """Fit the curve the arguments describe and write it."""
    from landscape._device import resolve_device
    from landscape._io import check_output
    from landscape.connectivity import fit_curve

    out = check_output(args.out, suffixes=CURVE_SUFFIXES)
    if out.exists() and not args.overwrite:
        raise ValueError(f"{out}: the file exists; choose another --out or add --overwrite")
    if args.num < 3:
        raise ValueError(f"Invalid --num: {args.num} (at least 3 points)")
    device = resolve_device(args.device)
    ckpt, other, bundle, info = _open_pair(args)
    split = args.split or ("train" if bundle.test is None else "both")
    test = bundle.test if split == "both" else None
    if split == "both" and test is None:
        raise ValueError(f"Invalid --split both: {info['checkpoint_a']}'s data has no test split")
    result = fit_curve(
        ckpt.model.to(device),
        other.model.to(device),
        bundle.train,
        kind=args.kind,
        epochs=args.epochs,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        batch_size=args.batch_size,
        schedule=args.schedule,
        seed=args.seed,
        num=args.num,
        test_data=test,
        eval_batch_size=args.eval_batch_size,
        max_samples=args.max_samples,
        progress=False if args.no_progress else None,
        **ckpt.objective_options(),
    )
    result.info.update(info)
    result.save(out, overwrite=args.overwrite)
    print(
        f"{out}: {result.kind} curve, barrier {result.barrier:.6g} "
        f"(line {result.line_barrier:.6g}), max loss {result.curve.max_loss:.6g} "
        f"(line {result.line.max_loss:.6g})"
    )
    return 0
