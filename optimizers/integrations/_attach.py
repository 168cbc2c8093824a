"""Give an optimizer built without ``model=`` the module a trainer found for it."""

from __future__ import annotations

from torch import nn

from optimizers._base import SharpnessAwareOptimizer
from optimizers.asam import ASAM


def attach_model(opt: SharpnessAwareOptimizer, model: nn.Module) -> None:
    """Set ``opt.model`` as ``model=`` at construction would have.

    ASAM reads its parameter names from the model when built: they are read again, so
    that its ``T`` follows the authors' names rule (LayerNorm/BatchNorm scales are
    "weight"s) instead of the ``dim`` fallback it warned about.
    """
    opt.model = model
    if isinstance(opt, ASAM):
        opt._names = opt._parameter_names()
