"""``--model``/``--data``/``--weights``: a user's own model and data, shared by the commands.

Every command that takes a checkpoint also takes ``--model PKG.MODULE:ATTR`` (or a
Hugging Face ``save_pretrained`` folder) with ``--data PKG.MODULE:ATTR`` and an optional
``--weights FILE`` in its place; ``--params`` restricts the parameters analysed. The
import paths are read as ``python -m`` reads them: the current folder comes first on
``sys.path``. See :mod:`landscape.user`.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any

USAGE = "a checkpoint, or --model PKG.MODULE:ATTR --data PKG.MODULE:ATTR"


def add_user_arguments(p: argparse.ArgumentParser, *, several_weights: bool = False) -> None:
    """Add ``--model``, ``--data``, ``--weights`` and ``--params`` to a command.

    Args:
        p: the command's parser.
        several_weights: ``--weights`` may repeat (one row each, for ``compare``).
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
        ValueError: ``--model`` with a checkpoint, ``--data``/``--weights`` without
            ``--model``, ``--model`` without ``--data``.
    """
    from landscape.user import UserModel

    weights = args.weights if isinstance(args.weights, list) else [args.weights]
    weights = [w for w in weights if w is not None]
    if args.model is None:
        if args.data is not None or weights:
            flag = "--data" if args.data is not None else "--weights"
            raise ValueError(f"{flag} goes with --model PKG.MODULE:ATTR (give the model too)")
        return []
    if given:
        raise ValueError(f"give {USAGE}, not both")
    if args.data is None:
        raise ValueError(f"--model {args.model}: no --data PKG.MODULE:ATTR to measure on")
    _import_from_cwd()
    return [UserModel(args.model, args.data, w) for w in weights or [None]]
