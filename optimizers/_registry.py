"""Build any optimizer of the package by name (for the CLI, configs and checkpoints)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import SharpnessAwareOptimizer
from optimizers.agnostic_sam import AgnosticSAM
from optimizers.asam import ASAM
from optimizers.crsam import CRSAM
from optimizers.fad import FAD
from optimizers.gam import GAM
from optimizers.gsam import GSAM
from optimizers.momentum_sam import MomentumSAM
from optimizers.sam import SAM

__all__ = ["BASE_NAMES", "OPTIMIZERS", "OPTIMIZER_NAMES", "build_optimizer", "optimizer_hparams"]

OPTIMIZERS: dict[str, type[SharpnessAwareOptimizer]] = {
    "sam": SAM,
    "asam": ASAM,
    "gsam": GSAM,
    "agnostic_sam": AgnosticSAM,
    "gam": GAM,
    "fad": FAD,
    "crsam": CRSAM,
    "momentum_sam": MomentumSAM,
}
"""The sharpness-aware optimizers by name."""

OPTIMIZER_NAMES: tuple[str, ...] = ("sgd", "adam", *OPTIMIZERS)
"""Every name :func:`build_optimizer` accepts."""

BASE_NAMES: tuple[str, ...] = ("sgd", "adam", "adamw")
"""Base optimizers by name: ``momentum`` is SGD's momentum, or Adam's ``beta1``."""


def optimizer_hparams(name: str) -> dict[str, Any]:
    """Return the optimizer's own hyper-parameters and their defaults (``{}`` for sgd/adam)."""
    if name in ("sgd", "adam"):
        return {}
    try:
        return dict(OPTIMIZERS[name].hyperparameters)
    except KeyError:
        raise ValueError(
            f"Invalid optimizer name: {name!r} (expected one of {', '.join(OPTIMIZER_NAMES)})"
        ) from None


def _base(base: str, lr: float, momentum: float, weight_decay: float) -> tuple[type, dict]:
    if base == "sgd":
        return torch.optim.SGD, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay}
    if base in ("adam", "adamw"):
        cls = torch.optim.Adam if base == "adam" else torch.optim.AdamW
        return cls, {"lr": lr, "betas": (momentum, 0.999), "weight_decay": weight_decay}
    raise ValueError(f"Invalid base: {base!r} (expected one of {', '.join(BASE_NAMES)})")


def build_optimizer(
    name: str,
    params: Iterable[Tensor] | Iterable[dict[str, Any]],
    *,
    model: nn.Module | None = None,
    base: str = "sgd",
    lr: float,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    **hparams: Any,
) -> Optimizer:
    """Build an optimizer by name.

    Args:
        name: One of :data:`OPTIMIZER_NAMES`; ``"sgd"`` and ``"adam"`` are the plain
            torch optimizers (``base`` is then ignored).
        params: Parameters or parameter groups.
        model: The trained module (BatchNorm freezing, DDP ``no_sync``).
        base: The base optimizer of a sharpness-aware one: ``"sgd"``, ``"adam"`` or
            ``"adamw"`` (Momentum-SAM needs ``"sgd"``).
        lr: Learning rate.
        momentum: SGD momentum (Adam's ``beta1``).
        weight_decay: Weight decay of the base optimizer.
        **hparams: The optimizer's own hyper-parameters (see :func:`optimizer_hparams`);
            unset ones take their defaults.

    Returns:
        The optimizer.

    Raises:
        ValueError: Unknown name, base or hyper-parameter, or an invalid value.

    Example:
        >>> opt = build_optimizer("sam", model.parameters(), model=model, lr=0.1, rho=0.05)
    """
    known = optimizer_hparams(name)  # validates the name
    unknown = sorted(set(hparams) - set(known) - {"adaptive_all", "lr_max", "lr_min", "foreach"})
    if unknown:
        raise ValueError(
            f"Invalid hyper-parameter for {name}: {', '.join(unknown)} "
            f"(expected {', '.join(known) or 'none'})"
        )
    if name in ("sgd", "adam"):
        if hparams:
            raise ValueError(f"Invalid hyper-parameter for {name}: {', '.join(sorted(hparams))}")
        cls, kwargs = _base(name, lr, momentum, weight_decay)
        return cls(params, **kwargs)
    if name == "momentum_sam" and base != "sgd":
        raise ValueError(f"Invalid base: {base!r} (momentum_sam needs 'sgd')")
    base_cls, base_kwargs = _base(base, lr, momentum, weight_decay)
    return OPTIMIZERS[name](params, base_cls, model=model, **hparams, **base_kwargs)
