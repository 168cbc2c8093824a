"""``landscape train``: train a built-in model on built-in data into a resumable run folder."""

from __future__ import annotations

import argparse
import json
from typing import Any

from landscape.data import DATA_NAMES
from landscape.models import MODEL_NAMES

# Flags of the training command itself; an optimizer hyper-parameter whose flag would
# collide with one of them is spelled --opt-NAME instead.
_OWN_FLAGS = {
    "data",
    "model",
    "optimizer",
    "base_optimizer",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "label_noise",
    "n_per_class",
    "val_fraction",
    "data_dir",
    "data_arg",
    "model_arg",
    "seed",
    "device",
    "amp",
    "save_every",
    "out",
    "resume",
    "eval_batch_size",
    "progress",
    "stop_after_epoch",
    "augment",
    "allow_nonfinite",
}


def _optimizer_table() -> tuple[tuple[str, ...] | None, dict[str, dict[str, Any]]]:
    """``(OPTIMIZER_NAMES, {hparam: {optimizer: default}})`` or ``(None, {})``."""
    try:
        from optimizers import OPTIMIZER_NAMES, optimizer_hparams
    except ImportError:  # pragma: no cover - optimizers package incomplete
        return None, {}
    table: dict[str, dict[str, Any]] = {}
    for name in OPTIMIZER_NAMES:
        for key, default in optimizer_hparams(name).items():
            table.setdefault(key, {})[name] = default
    return tuple(OPTIMIZER_NAMES), table


def _flag_dest(key: str) -> str:
    return f"opt_{key}" if key in _OWN_FLAGS else key


def _flag(key: str) -> str:
    return "--" + _flag_dest(key).replace("_", "-")


def _key_value(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, value = text.split("=", 1)
    try:
        parsed = json.loads(value)
    except json.JSONDecodeError:
        parsed = value
    return key.strip().replace("-", "_"), parsed


def register(subparsers: Any) -> None:
    """Add the ``train`` subcommand."""
    names, table = _optimizer_table()
    p = subparsers.add_parser(
        "train",
        help="train a model with SGD/Adam or a sharpness-aware optimizer",
        description=(
            "Train a built-in model on built-in data with a cosine LR schedule, writing "
            "OUT/config.json, OUT/metrics.jsonl, OUT/checkpoints/epoch_XXXX.pt and "
            "OUT/final.pt. Re-running the same command resumes from the last checkpoint; "
            "under torchrun it trains with DistributedDataParallel. A non-finite loss stops "
            "the run (exit status 3), keeping the checkpoints written before, unless "
            "--allow-nonfinite."
        ),
    )
    g = p.add_argument_group("data")
    g.add_argument("--data", default="digits", choices=DATA_NAMES, help="dataset (digits)")
    g.add_argument("--data-dir", default=None, help="folder of the CIFAR python batches")
    g.add_argument(
        "--label-noise", type=float, default=0.0, help="fraction of symmetric label noise"
    )
    g.add_argument("--n-per-class", type=int, default=None, help="training examples per class")
    g.add_argument(
        "--val-fraction", type=float, default=0.0, help="fraction held out for validation"
    )
    g.add_argument(
        "--augment",
        action="store_true",
        help="random 4-pixel crop and horizontal flip of image batches (CIFAR standard)",
    )
    g.add_argument(
        "--data-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="dataset option, e.g. n_train=500 for synthetic (repeatable; JSON values)",
    )
    g = p.add_argument_group("model")
    g.add_argument("--model", default="cnn", choices=MODEL_NAMES, help="model (cnn)")
    g.add_argument(
        "--model-arg",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. width=8 or hidden=[64,64] (repeatable; JSON values)",
    )
    g = p.add_argument_group("optimization")
    g.add_argument(
        "--optimizer",
        default="sgd",
        choices=names,
        metavar="NAME",
        help=f"optimizer: {', '.join(names or ('sgd', 'adam'))} (sgd)",
    )
    g.add_argument(
        "--base-optimizer",
        default="sgd",
        choices=("sgd", "adam", "adamw"),
        help="base of the sharpness-aware optimizers (sgd)",
    )
    g.add_argument("--epochs", type=int, default=10, help="number of epochs (10)")
    g.add_argument("--batch-size", type=int, default=128, help="global batch size (128)")
    g.add_argument("--lr", type=float, default=0.1, help="peak learning rate, cosine to 0 (0.1)")
    g.add_argument("--momentum", type=float, default=0.9, help="SGD momentum (0.9)")
    g.add_argument("--weight-decay", type=float, default=5e-4, help="weight decay (5e-4)")
    g.add_argument("--seed", type=int, default=0, help="seed of init, data order, noise (0)")
    if table:
        h = p.add_argument_group(
            "optimizer hyper-parameters (default: the chosen optimizer's own default)"
        )
        for key in sorted(table):
            defaults = table[key]
            sample = next(iter(defaults.values()))
            used = ", ".join(f"{n}: {d}" for n, d in defaults.items())
            kwargs: dict[str, Any] = {"dest": _flag_dest(key), "default": None}
            if isinstance(sample, bool):
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                kwargs["type"] = int if isinstance(sample, int) else float
                if not isinstance(sample, (int, float)):
                    kwargs["type"] = str
            h.add_argument(_flag(key), help=f"{key} ({used})", **kwargs)
    g = p.add_argument_group("run")
    g.add_argument("--out", required=True, help="run folder (resumed when it exists)")
    g.add_argument("--save-every", type=int, default=1, help="checkpoint every N epochs (1)")
    g.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="delete the checkpoints in --out and start over",
    )
    g.add_argument(
        "--stop-after-epoch",
        type=int,
        default=None,
        help="stop after this epoch (0: the initialisation only); re-run without it, or "
        "with a later epoch, to continue",
    )
    g.add_argument(
        "--allow-nonfinite",
        action="store_true",
        help="train on past a non-finite loss (nan/inf), with a warning; by default the run "
        "stops there with exit status 3, keeping the checkpoints written before",
    )
    g.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, ...")
    g.add_argument("--amp", action="store_true", help="bf16 autocast on CUDA")
    g.add_argument("--eval-batch-size", type=int, default=1024, help="evaluation batch (1024)")
    g.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars (default: on a terminal)",
    )
    p.set_defaults(func=run, _hparam_table=table)


def _hparams(args: argparse.Namespace) -> dict[str, Any]:
    table: dict[str, dict[str, Any]] = args._hparam_table
    chosen: dict[str, Any] = {}
    for key, defaults in table.items():
        value = getattr(args, _flag_dest(key), None)
        if value is None:
            continue
        if args.optimizer not in defaults:
            takes = sorted(k for k, d in table.items() if args.optimizer in d)
            raise ValueError(
                f"{_flag(key)} does not apply to --optimizer {args.optimizer} (it takes: "
                f"{', '.join(_flag(k) for k in takes) or 'no extra options'})"
            )
        chosen[key] = value
    return chosen


def run(args: argparse.Namespace) -> int:
    """Run ``landscape train``."""
    from landscape.training import train

    result = train(
        args.model,
        args.data,
        optimizer=args.optimizer,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        momentum=args.momentum,
        weight_decay=args.weight_decay,
        base_optimizer=args.base_optimizer,
        hparams=_hparams(args),
        label_noise=args.label_noise,
        n_per_class=args.n_per_class,
        val_fraction=args.val_fraction,
        data_dir=args.data_dir,
        data_kwargs=dict(args.data_arg),
        model_kwargs=dict(args.model_arg),
        seed=args.seed,
        device=args.device,
        amp=args.amp,
        save_every=args.save_every,
        out=args.out,
        resume=args.resume,
        eval_batch_size=args.eval_batch_size,
        progress=args.progress,
        stop_after_epoch=args.stop_after_epoch,
        augment=args.augment,
        nonfinite="continue" if args.allow_nonfinite else "stop",
    )
    if result.rank == 0 and result.metrics:
        last = result.metrics[-1]
        summary = ", ".join(
            f"{k} {last[k]:.4g}"
            for k in ("train_loss", "train_acc", "val_acc", "test_loss", "test_acc")
            if k in last
        )
        where = result.final_checkpoint or result.run_dir
        print(f"epoch {last['epoch']}: {summary} -> {where}")
    return 0
