"""The loss and accuracy at θ, so that a comparison shows flatness beside performance.

A flat minimum is only interesting next to how well the model does: a checkpoint that has
not fitted its data can look flat (small λmax) for that very reason. These two metrics
evaluate the model once over the measured data (eval mode, exact sample weights; the
pass is shared by both through the metric cache) and put that beside the sharpness
columns of :func:`~landscape.compare.compare_checkpoints`.
"""

from __future__ import annotations

from landscape.metrics._base import MetricCache, MetricResult, get_cache
from landscape.metrics.registry import register_metric
from landscape.objective import Objective

__all__ = ["accuracy", "loss"]


def _evaluation(objective: Objective, cache: MetricCache | None) -> dict[str, float]:
    return get_cache(objective, cache).memo("evaluation", objective.evaluate)


@register_metric("loss")
def loss(
    objective: Objective,
    *,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """Loss L(θ) over the data (eval mode, exact sample weights).

    Args:
        objective: model, loss and data.
        cache: base-point cache shared with other metrics (optional).
        progress: unused (one forward pass).
    """
    ev = _evaluation(objective, cache)
    return MetricResult(ev["loss"], None, {"samples": objective.n_samples})


@register_metric("accuracy")
def accuracy(
    objective: Objective,
    *,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """Accuracy in percent (0–100) over the data: argmax of (N, C) logits against (N,) labels.

    Args:
        objective: model, loss and data.
        cache: base-point cache shared with other metrics (optional).
        progress: unused (one forward pass).

    Raises:
        ValueError: the outputs are not (N, C) logits with (N,) integer labels.
    """
    ev = _evaluation(objective, cache)
    if "acc" not in ev:
        raise ValueError(
            "Invalid metric 'accuracy' for this model and data: it needs (N, C) logits "
            "and (N,) integer labels"
        )
    return MetricResult(ev["acc"], None, {"samples": objective.n_samples})
