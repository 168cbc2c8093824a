"""Sharpness-aware optimizers for PyTorch: SAM and its descendants on one mechanism.

Every optimizer wraps a base optimizer (class + keyword arguments) and follows torch's
closure convention; see :class:`SharpnessAwareOptimizer` for the shared mechanism.
"""

from optimizers._base import BatchPart, Pass, SharpnessAwareOptimizer, disable_running_stats
from optimizers._registry import OPTIMIZER_NAMES, OPTIMIZERS, build_optimizer, optimizer_hparams
from optimizers.agnostic_sam import AgnosticSAM
from optimizers.asam import ASAM, asam_perturbation
from optimizers.crsam import CRSAM, crsam_direction
from optimizers.fad import FAD, fad_direction
from optimizers.gam import GAM, gam_direction
from optimizers.gsam import GSAM, gsam_direction
from optimizers.momentum_sam import MomentumSAM
from optimizers.sam import SAM

__all__ = [  # noqa: RUF022 (grouped by role)
    # --- the optimizers ------------------------------------------------------
    "ASAM",
    "CRSAM",
    "FAD",
    "GAM",
    "GSAM",
    "SAM",
    "AgnosticSAM",
    "MomentumSAM",
    # --- building them by name -----------------------------------------------
    "OPTIMIZERS",
    "OPTIMIZER_NAMES",
    "build_optimizer",
    "optimizer_hparams",
    # --- functional forms of the update rules --------------------------------
    "asam_perturbation",
    "crsam_direction",
    "fad_direction",
    "gam_direction",
    "gsam_direction",
    # --- the shared mechanism ------------------------------------------------
    "BatchPart",
    "Pass",
    "SharpnessAwareOptimizer",
    "disable_running_stats",
]
