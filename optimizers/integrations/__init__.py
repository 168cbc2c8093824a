"""Sharpness-aware training inside other training loops.

The optimizers of this package need a closure (they run several forward+backward passes
per step); these modules connect them to trainers that call ``optimizer.step()``
themselves.  Each imports its framework only when imported itself, so
``import optimizers`` never needs either:

- :mod:`optimizers.integrations.transformers`: :class:`SharpnessAwareTrainer`, a Hugging
  Face ``Trainer`` that runs every pass of the step (``pip install sharpscape[hf]``);
- :mod:`optimizers.integrations.lightning`: :class:`SharpnessAwareCallback`, which checks
  a Lightning run that drives the optimizers through Lightning's own closure
  (``pip install sharpscape[lightning]``);
- :mod:`optimizers.integrations.closure`: :func:`batch_closure`, the closure of a
  hand-written loop for a batch of any form (Hugging Face batches included), read by
  the toolkit's batch adapter.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "SharpnessAwareCallback",
    "SharpnessAwareTrainer",
    "batch_closure",
    "check_lightning_trainer",
]

_HOMES = {
    "SharpnessAwareTrainer": "optimizers.integrations.transformers",
    "SharpnessAwareCallback": "optimizers.integrations.lightning",
    "check_lightning_trainer": "optimizers.integrations.lightning",
    "batch_closure": "optimizers.integrations.closure",
}


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
