"""A closure for any batch: the toolkit's batch adapter in a hand-written training loop.

The optimizers follow torch's closure convention, and a closure must know how to turn a
batch into a loss.  :func:`batch_closure` builds it from the same
:class:`~landscape.batches.BatchAdapter` every analysis of sharpscape uses, so the
batches a user measures with are the batches they train with, unchanged:
``(inputs, targets)`` pairs, dicts with an inputs/targets pair of keys, Hugging Face
batches whose model computes its own loss, or anything through ``compute_loss``::

    from optimizers import SAM
    from optimizers.integrations import batch_closure

    opt = SAM(model.parameters(), torch.optim.AdamW, rho=0.05, model=model, lr=1e-4)
    for batch in loader:                        # e.g. {"input_ids", "attention_mask", "labels"}
        loss = opt.step(batch_closure(opt, model, batch))

Agnostic-SAM's ``closure(part)`` gets the part of every batch-first tensor of the batch
(:meth:`optimizers.BatchPart.select`).  Each call's loss is the batch's mean over its
counted items (tokens not ignored, or samples; see :mod:`landscape.batches`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from optimizers._base import BatchPart

__all__ = ["batch_closure"]


def batch_closure(
    optimizer: torch.optim.Optimizer,
    model: nn.Module,
    batch: Any,
    *,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    compute_loss: Callable[[nn.Module, Any], Any] | None = None,
    input_key: str | None = None,
    target_key: str | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> Callable[[BatchPart | None], Tensor]:
    """The closure ``optimizer.step`` needs for one batch, whatever its form.

    ``closure(part=None)`` zeroes the gradients, computes the loss of the batch (or of
    ``part.select(batch)``), back-propagates it (``scaler.scale(loss)`` with a
    ``scaler``) and returns it detached.

    Args:
        optimizer: the optimizer whose gradients the closure zeroes.
        model: the network, in the mode the user trains it in.
        batch: one batch, in any form :class:`~landscape.batches.BatchAdapter` reads.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch mean; default
            cross-entropy, or the model's own loss for Hugging Face dict batches.
        compute_loss: ``compute_loss(model, batch)`` returning the mean loss (or
            ``(mean_loss, n_items)``), for any other batch.
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (or labels) in dict batches.
        scaler: a ``torch.amp.GradScaler`` (AMP): the loss is scaled before backward;
            pass the same scaler to ``optimizer.step(closure, scaler=scaler)``.

    Returns:
        ``closure(part=None) -> loss``.

    Raises:
        ValueError: an ``optimizer`` or ``model`` of the wrong type (e.g. the two
            swapped), a batch the adapter cannot read, or a dict batch whose keys the
            model's ``forward`` does not take (before any pass).
    """
    from landscape.batches import BatchAdapter

    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ValueError(
            f"Invalid optimizer: {type(optimizer).__name__} is not a torch optimizer "
            "(batch_closure(optimizer, model, batch): the optimizer comes first)"
        )
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"Invalid model: {type(model).__name__} is not an nn.Module "
            "(batch_closure(optimizer, model, batch))"
        )
    adapter = BatchAdapter(
        loss_fn, compute_loss=compute_loss, input_key=input_key, target_key=target_key
    )
    adapter.check(model, adapter.parts(batch))

    def closure(part: BatchPart | None = None) -> Tensor:
        optimizer.zero_grad()
        loss = adapter.loss(model, adapter.parts(batch if part is None else part.select(batch)))
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss.detach()

    return closure
