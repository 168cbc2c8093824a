"""Mode connectivity: is the straight line between two minima a low-loss path?

:func:`linear_barrier` evaluates the loss (and accuracy) along
``θ(α) = (1 − α)·θ_A + α·θ_B`` and reports the barrier (Frankle et al. 2020; Entezari et
al. 2022)::

    B = max_α [ L(θ(α)) − ((1 − α)·L(θ_A) + α·L(θ_B)) ]

on a grid of α in [0, 1] (25 points by default), and the same for the error rate when the
accuracy applies. Every point is evaluated with :class:`~landscape.objective.Objective`
(exact weights, any batch form). A network with BatchNorm gets its running statistics
recomputed at each point of the path before it is evaluated (Garipov et al. 2018): the
interpolated statistics of two networks are not the statistics of the interpolated
network. The model is left exactly as given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from landscape.directions import StateLike, direction_targets, interpolation_directions
from landscape.metrics._base import progress_bar
from landscape.objective import Objective, eval_mode, make_objective
from optimizers._foreach import tl_add_, tl_clone, tl_copy_

__all__ = ["BarrierResult", "linear_barrier", "recompute_batchnorm"]


@dataclass
class BarrierResult:
    """The loss along the line between two networks and its barrier.

    Attributes:
        alphas: the grid of α (0 is network A, 1 network B).
        loss: the loss at each α.
        acc: the accuracy (percent) at each α, or None when it does not apply.
        barrier: ``max_α [L(α) − ((1−α) L(0) + α L(1))]`` (≥ 0 up to rounding at the ends).
        alpha_max: the α where the barrier is reached.
        error_barrier: the same for the error rate ``100 − acc`` (percentage points), or
            None.
        info: how it was computed (``bn_recomputed``, ``num``, ``n_samples``).
    """

    alphas: np.ndarray
    loss: np.ndarray
    acc: np.ndarray | None
    barrier: float
    alpha_max: float
    error_barrier: float | None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "alphas": self.alphas.tolist(),
            "loss": self.loss.tolist(),
            "acc": None if self.acc is None else self.acc.tolist(),
            "barrier": self.barrier,
            "alpha_max": self.alpha_max,
            "error_barrier": self.error_barrier,
            "info": dict(self.info),
        }


def _barrier(alphas: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    line = (1.0 - alphas) * values[0] + alphas * values[-1]
    gap = values - line
    i = int(np.nanargmax(gap))
    return float(gap[i]), float(alphas[i])


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


@torch.no_grad()
def recompute_batchnorm(objective: Objective) -> bool:
    """Re-estimate every BatchNorm's running statistics on the objective's data.

    The statistics are reset and accumulated over all batches with the momentum
    ``n_b / (n_seen + n_b)`` (as Garipov et al.'s code does), so the running mean is the
    exact mean over the data and the running variance the sample-weighted mean of the
    batches' variances, with only the BatchNorm layers in training mode (dropout stays
    off). Modes and momenta are restored. Returns whether the model has BatchNorm.
    """
    bns = _batchnorms(objective.model)
    if not bns:
        return False
    momenta = [bn.momentum for bn in bns]
    with eval_mode(objective.model):
        for bn in bns:
            bn.reset_running_stats()
            bn.train()
        try:
            seen = 0
            for batch in objective.batches():
                for bn in bns:
                    bn.momentum = batch.size / (seen + batch.size)
                seen += batch.size
                if objective.adapter.compute_loss is None:
                    objective.batch_outputs(batch)
                else:
                    objective.batch_loss(batch)
        finally:
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
    return True


def linear_barrier(
    model: nn.Module | Objective,
    other: StateLike,
    data: Any = None,
    *,
    num: int = 25,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    recompute_bn: bool | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool | None = None,
    **reading: Any,
) -> BarrierResult:
    """The loss barrier on the straight line from ``model`` (α = 0) to ``other`` (α = 1).

    Args:
        model: network A (its current weights), or an :class:`~landscape.objective.Objective`
            on it (then ``data``, ``loss_fn`` and the batch options are left unset).
        other: network B: a model, a state dict or a checkpoint file.
        data: the data the loss is measured on (any form ``Objective`` takes).
        num: grid points on [0, 1] (at least 3; 25 by default).
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy, or the model's own
            loss for Hugging Face-style dict batches.
        recompute_bn: recompute BatchNorm statistics at every point (default: when the
            model has BatchNorm); otherwise the statistics are interpolated too.
        batch_size: evaluation batch size.
        max_samples: use only the first samples.
        progress: progress bar (``None``: only on a terminal).
        **reading: ``forward``, ``compute_loss``, ``count_items``, ``input_key``,
            ``target_key`` (see :class:`~landscape.objective.Objective`).

    Returns:
        A :class:`BarrierResult`; the model's weights, buffers and modes are left as found.
    """
    if num < 3:
        raise ValueError(f"Invalid num: {num} (at least 3 points)")
    obj = make_objective(
        model, data, loss_fn, batch_size=batch_size, max_samples=max_samples, **reading
    )
    net = obj.model
    has_bn = bool(_batchnorms(net))
    recompute = has_bn if recompute_bn is None else bool(recompute_bn)
    directions = interpolation_directions(net, other, states=True)
    _, targets = direction_targets(net, states=True)
    saved = tl_clone(targets)
    origin = [t.to(s.dtype) for t, s in zip(directions.origin or saved, saved, strict=True)]
    step = [d.to(s.dtype) for d, s in zip(directions.x, saved, strict=True)]
    alphas = np.linspace(0.0, 1.0, num)
    losses, accs = [], []
    try:
        with progress_bar(list(alphas), desc="linear barrier", progress=progress) as bar:
            for a in bar:
                with torch.no_grad():
                    tl_copy_(targets, origin)
                    if a != 0.0:
                        tl_add_(targets, step, float(a))
                if recompute:
                    recompute_batchnorm(obj)
                res = obj.evaluate()
                losses.append(res["loss"])
                accs.append(res.get("acc", np.nan))
    finally:
        with torch.no_grad():
            tl_copy_(targets, saved)
    loss = np.asarray(losses, dtype=np.float64)
    acc = np.asarray(accs, dtype=np.float64)
    barrier, alpha_max = _barrier(alphas, loss)
    has_acc = bool(np.isfinite(acc).all())
    error_barrier = _barrier(alphas, 100.0 - acc)[0] if has_acc else None
    info = {"num": num, "bn_recomputed": recompute, "n_samples": obj.n_samples}
    return BarrierResult(
        alphas, loss, acc if has_acc else None, barrier, alpha_max, error_barrier, info
    )
