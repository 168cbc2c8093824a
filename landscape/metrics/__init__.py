"""Sharpness, flatness and curvature metrics behind one registry.

``METRICS`` maps each name of the spec's table to its function; :func:`compute_metrics`
computes a selection of them for a model and data::

    from landscape.metrics import compute_metrics
    res = compute_metrics(model, (x, y), ["lambda_max", "trace", "sam_sharpness"], rho=0.05)
    res["trace"].value, res["trace"].stderr

Each metric is also a plain function of an :class:`~landscape.objective.Objective`
(``sam_sharpness(objective, rho=0.05, steps=5)``). Every metric leaves the model's
weights, its train/eval mode and every ``.grad`` exactly as found.
"""

from landscape.metrics._base import MetricCache, MetricResult
from landscape.metrics.curvature import (
    grad_curvature,
    lambda_max,
    normalized_trace,
    trace,
)
from landscape.metrics.evaluation import accuracy, loss
from landscape.metrics.gradients import grad_cosine, grad_norm, split_objective
from landscape.metrics.registry import (
    METRICS,
    compute_metrics,
    metric_description,
    metric_options,
    parse_option_assignments,
    register_metric,
    validate_metric_names,
)
from landscape.metrics.sharpness import (
    adaptive_scale,
    adaptive_sharpness,
    average_sharpness,
    ball_ascent,
    eps_sharpness,
    first_order_flatness,
    sam_sharpness,
)

# The order of the spec's table (listings, default table columns), then loss and accuracy.
for _name in (
    "lambda_max",
    "trace",
    "normalized_trace",
    "grad_norm",
    "grad_curvature",
    "sam_sharpness",
    "adaptive_sharpness",
    "first_order_flatness",
    "average_sharpness",
    "eps_sharpness",
    "grad_cosine",
    "loss",
    "accuracy",
):
    METRICS[_name] = METRICS.pop(_name)

__all__ = [
    "METRICS",
    "MetricCache",
    "MetricResult",
    "accuracy",
    "adaptive_scale",
    "adaptive_sharpness",
    "average_sharpness",
    "ball_ascent",
    "compute_metrics",
    "eps_sharpness",
    "first_order_flatness",
    "grad_cosine",
    "grad_curvature",
    "grad_norm",
    "lambda_max",
    "loss",
    "metric_description",
    "metric_options",
    "normalized_trace",
    "parse_option_assignments",
    "register_metric",
    "sam_sharpness",
    "split_objective",
    "trace",
    "validate_metric_names",
]
