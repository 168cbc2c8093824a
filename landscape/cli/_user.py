"""``--model``/``--data``/``--weights``: a user's own model and data, shared by the commands.

Every command that takes a checkpoint also takes ``--model PKG.MODULE:ATTR`` (or a
Hugging Face ``save_pretrained`` folder) with ``--data PKG.MODULE:ATTR`` and an optional
``--weights FILE`` in its place, and ``--loss-fn``/``--compute-loss PKG.MODULE:ATTR`` for
its loss; ``--params`` restricts the parameters analysed. The
import paths are read as ``python -m`` reads them: the current folder comes first on
``sys.path``. See :mod:`landscape.user`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

USAGE = "a checkpoint, or --model PKG.MODULE:ATTR --data PKG.MODULE:ATTR"


def add_user_arguments(
    p: argparse.ArgumentParser, *, several_weights: bool = False, params: bool = True
) -> None:
    """Add ``--model``, ``--data``, ``--weights``, the loss and ``--params`` to a command.

    Args:
        p: the command's parser.
        several_weights: ``--weights`` may repeat (one row each, for ``compare``).
        params: add ``--params`` (the parameters analysed).
    """
    g = p.add_argument_group(
        "your own model and data (in place of a checkpoint)",
        "Import paths are read from the current folder first, as `python -m` reads them.",
    )
    g.add_argument(
        "--model",
        metavar="PKG.MODULE:ATTR",
        help="an nn.Module, or a callable returning one (called with no arguments), e.g. "
        "mypkg.models:make_model; or a Hugging Face save_pretrained folder (config.json, "
        "local files only; needs transformers)",
    )
    g.add_argument(
        "--data",
        metavar="PKG.MODULE:ATTR",
        help="a callable returning the data (or the data): a DataLoader, Dataset, (inputs, "
        "targets) tensors or a list of batches (the train split), a tuple (train, test), "
        "or a dict with keys train/val/test",
    )
    if several_weights:
        g.add_argument(
            "--weights",
            action="append",
            default=[],
            metavar="FILE",
            help="a state_dict file (.safetensors, or torch.save read with weights_only) "
            "loaded into --model; repeat it for one row per file (default: one row, the "
            "model as built)",
        )
    else:
        g.add_argument(
            "--weights",
            metavar="FILE",
            help="a state_dict file (.safetensors, or torch.save read with weights_only) "
            "loaded into --model (default: the model as built)",
        )
    loss = g.add_mutually_exclusive_group()
    loss.add_argument(
        "--loss-fn",
        metavar="PKG.MODULE:ATTR",
        help="loss_fn(outputs, targets) returning the batch's mean loss, e.g. "
        "torch.nn.functional:mse_loss (default: the model's own loss for Hugging Face "
        "batches, else cross-entropy)",
    )
    loss.add_argument(
        "--compute-loss",
        metavar="PKG.MODULE:ATTR",
        help="compute_loss(model, batch) returning the batch's mean loss, or (mean loss, "
        "number of items it averages), for batches no other rule reads",
    )
    if not params:
        return
    p.add_argument(
        "--params",
        default=None,
        metavar="NAMES",
        help="the parameters analysed: comma-separated exact names, module prefixes or "
        "globs, e.g. 'classifier,*lora_*' or 'transformer.h.11' (default: those with "
        "requires_grad=True)",
    )


def _import_from_cwd() -> None:
    """Put the current folder first on ``sys.path``, as ``python -m`` does."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


def user_models(args: argparse.Namespace, given: Any) -> list[Any]:
    """The :class:`~landscape.user.UserModel` s of ``--model`` (none without it).

    Args:
        args: the parsed arguments.
        given: the positional checkpoint argument(s) (excluded by ``--model``).

    Raises:
        ValueError: ``--model`` with a checkpoint, ``--data``/``--weights``/the loss
            without ``--model``, ``--model`` without ``--data``, a bad loss path.
    """
    from landscape.user import UserModel

    weights = args.weights if isinstance(args.weights, list) else [args.weights]
    weights = [w for w in weights if w is not None]
    loss = {"loss_fn": args.loss_fn, "compute_loss": args.compute_loss}
    if args.model is None:
        named = [k for k, v in (("--data", args.data), ("--weights", weights)) if v]
        named += ["--" + k.replace("_", "-") for k, v in loss.items() if v is not None]
        if named:
            raise ValueError(f"{named[0]} goes with --model PKG.MODULE:ATTR (give the model too)")
        return []
    if given:
        raise ValueError(f"give {USAGE}, not both")
    if args.data is None:
        raise ValueError(f"--model {args.model}: no --data PKG.MODULE:ATTR to measure on")
    _import_from_cwd()
    users = [UserModel(args.model, args.data, w, **loss) for w in weights or [None]]
    users[0].objective_options()  # a bad loss path is refused before any work
    return users
