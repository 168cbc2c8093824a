"""One registry of metrics: a name selects a metric in Python and on the command line.

A metric is a function ``fn(objective, *, cache=None, progress=None, **options) ->
MetricResult`` registered under its name with :func:`register_metric`. Its keyword
options (with their defaults) are its documented knobs; :func:`metric_options` lists them.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn

from landscape.distributed import DistContext, cleanup_distributed, init_distributed
from landscape.metrics._base import MetricCache, MetricResult, progress_bar
from landscape.objective import Objective, make_objective
from landscape.params import ParamSelection, as_selection

__all__ = [
    "METRICS",
    "MetricFn",
    "compute_metrics",
    "metric_description",
    "metric_options",
    "parse_option_assignments",
    "register_metric",
    "validate_metric_names",
]

logger = logging.getLogger(__name__)

MetricFn = Callable[..., MetricResult]

#: name -> metric function, in the order of the spec's table.
METRICS: dict[str, MetricFn] = {}

# Keyword arguments every metric takes that are not options of the metric itself.
_PLUMBING = ("cache", "progress")
# Shared options that are not an error when no selected metric is stochastic.
_GENERIC = ("seed",)


def register_metric(name: str) -> Callable[[MetricFn], MetricFn]:
    """Decorator registering ``fn`` in :data:`METRICS` under ``name``."""

    def deco(fn: MetricFn) -> MetricFn:
        if name in METRICS:
            raise ValueError(f"Invalid metric name: {name!r} is already registered")
        METRICS[name] = fn
        return fn

    return deco


def metric_options(name: str) -> dict[str, Any]:
    """The options of metric ``name`` with their defaults."""
    fn = METRICS[validate_metric_names([name])[0]]
    sig = inspect.signature(fn)
    return {
        p.name: p.default
        for p in sig.parameters.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _PLUMBING
    }


def metric_description(name: str) -> str:
    """The first line of metric ``name``'s docstring."""
    doc = inspect.getdoc(METRICS[validate_metric_names([name])[0]]) or ""
    return doc.splitlines()[0] if doc else ""


def validate_metric_names(names: str | Iterable[str]) -> list[str]:
    """Return the metric names as a list, checked against :data:`METRICS`.

    Args:
        names: a comma-separated string (``"lambda_max,trace"``) or a sequence of names.
            Duplicates are dropped, order kept.

    Raises:
        ValueError: when a name is unknown (the message lists the registry) or none given.
    """
    if isinstance(names, str):
        names = names.split(",")
    out: list[str] = []
    for raw in names:
        name = str(raw).strip()
        if not name:
            continue
        if name not in METRICS:
            raise ValueError(f"Invalid metric: {name!r}; known metrics: {', '.join(METRICS)}")
        if name not in out:
            out.append(name)
    if not out:
        raise ValueError(f"Invalid metrics: none given; known metrics: {', '.join(METRICS)}")
    return out


def parse_option_assignments(
    items: Iterable[str],
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Parse ``KEY=VALUE`` / ``METRIC.KEY=VALUE`` strings into shared and per-metric options.

    Values are read as JSON when they parse (``0.1``, ``5``, ``true``, ``null``,
    ``[1, 2]``), else kept as strings (``filter``).

    Returns:
        ``(options, per_metric)`` for :func:`compute_metrics`.
    """
    shared: dict[str, Any] = {}
    per_metric: dict[str, dict[str, Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"Invalid option {item!r}: expected KEY=VALUE or METRIC.KEY=VALUE")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        if "." in key:
            metric, _, opt = key.partition(".")
            validate_metric_names([metric])
            per_metric.setdefault(metric, {})[opt] = value
        else:
            shared[key] = value
    return shared, per_metric


def route_options(
    names: list[str],
    options: Mapping[str, Any],
    per_metric: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Split options among the metrics that accept them; reject options nobody takes.

    A shared option (``rho=0.1``) goes to every selected metric that has it (``seed`` is
    accepted even when no selected metric is random); ``per_metric={"sam_sharpness":
    {"rho": 0.1}}`` targets one metric and wins.
    """
    accepted = {name: metric_options(name) for name in names}
    routed: dict[str, dict[str, Any]] = {name: {} for name in names}
    for key, value in options.items():
        takers = [name for name in names if key in accepted[name]]
        if not takers and key not in _GENERIC:
            raise ValueError(
                f"Invalid option {key!r}: none of the metrics {', '.join(names)} takes it"
            )
        for name in takers:
            routed[name][key] = value
    for name, opts in (per_metric or {}).items():
        if name not in routed:
            raise ValueError(
                f"Invalid per_metric entry {name!r}: not among the selected metrics "
                f"({', '.join(names)})"
            )
        for key, value in opts.items():
            if key not in accepted[name]:
                raise ValueError(
                    f"Invalid option {key!r} for metric {name!r}; its options: "
                    f"{', '.join(accepted[name]) or 'none'}"
                )
            routed[name][key] = value
    return routed


def compute_metrics(
    model: nn.Module | Objective,
    data: Any = None,
    names: str | Iterable[str] = ("lambda_max", "trace", "sam_sharpness"),
    *,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    per_metric: Mapping[str, Mapping[str, Any]] | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    compute_loss: Callable[[nn.Module, Any], Any] | None = None,
    count_items: Callable[[Any], Any] | None = None,
    input_key: str | None = None,
    target_key: str | None = None,
    params: ParamSelection = None,
    progress: bool | None = None,
    dist: DistContext | None = None,
    compile: bool | str = False,
    **options: Any,
) -> dict[str, MetricResult]:
    """Compute the named metrics of a model at its current weights.

    Args:
        model: the network, or a ready :class:`~landscape.objective.Objective` (then
            ``data``, ``loss_fn``, ``batch_size`` and ``max_samples`` must be left unset).
        data: anything :class:`~landscape.objective.Objective` accepts (a tensor pair,
            a ``Dataset``, a ``DataLoader``, an iterable of batches).
        names: metric names (a list or ``"a,b,c"``); see :data:`METRICS`.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch mean; default
            cross-entropy, or the model's own loss for Hugging Face-style dict batches.
        per_metric: options for one metric only, e.g. ``{"sam_sharpness": {"steps": 5}}``.
        batch_size: batch size used to split tensor pairs and datasets.
        max_samples: use only the first ``max_samples`` samples.
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``, or
            ``model(**inputs)`` for a dict).
        compute_loss: ``compute_loss(model, batch)`` returning the batch's mean loss or
            ``(mean_loss, n_items)``, for batches no other rule reads.
        count_items: ``count_items(batch)``: the number of items a batch's loss averages
            (default: tokens not ignored, or samples).
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (labels) in dict batches.
        params: the parameters measured: those with ``requires_grad=True`` (default) or a
            selection by name, prefix or glob (:func:`~landscape.params.select_parameters`).
        progress: progress bars (``None``: only on a terminal).
        dist: processes sharing the data, each reading its share of the batches (see
            :class:`~landscape.objective.Objective`); every metric is then exact and the
            same on every process. Default: ``torchrun``'s processes when run under it
            (the process group is joined here), else this process alone. With a ready
            ``Objective`` its own ``dist`` is used.
        compile: compile the model's forward for the loss evaluations at perturbed
            weights (``sam_sharpness``, ``random_sharpness``, ...; gradients and Hessian
            products stay eager): ``False``, ``True`` or ``"auto"`` (compiled once the
            evaluations run would have paid for it); see
            :class:`~landscape.objective.Objective`. With a ready ``Objective``, pass it
            there.
        **options: options shared by every selected metric that accepts them (``rho``,
            ``steps``, ``sigma``, ``num_samples``, ``seed``, ...); an option that no
            selected metric takes is an error (except ``seed``). See
            :func:`metric_options`.

    Returns:
        ``name -> MetricResult`` in the order of ``names``. The model's weights, its
        train/eval mode and every ``.grad`` are left exactly as found.

    Raises:
        ValueError: for unknown metric names or options (before any computation).
    """
    params = as_selection(params)  # a generator is read once
    selected = validate_metric_names(names)
    routed = route_options(selected, options, per_metric)
    own_ctx = dist is None and isinstance(model, nn.Module)
    if own_ctx:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
        dist = init_distributed(device=device.type)
    try:
        objective = make_objective(
            model,
            data,
            loss_fn,
            batch_size=batch_size,
            max_samples=max_samples,
            forward=forward,
            compute_loss=compute_loss,
            count_items=count_items,
            input_key=input_key,
            target_key=target_key,
            params=params,
            dist=dist,
            compile=None if compile in (False, "off") else compile,
        )
        return _compute(objective, selected, routed, progress)
    finally:
        if own_ctx and dist is not None:
            cleanup_distributed(dist)


def _compute(
    objective: Objective,
    selected: list[str],
    routed: dict[str, dict[str, Any]],
    progress: bool | None,
) -> dict[str, MetricResult]:
    """The selected metrics of ``objective``, sharing one base-point cache."""
    cache = MetricCache(objective)
    results: dict[str, MetricResult] = {}
    try:
        with progress_bar(selected, desc="metrics", progress=progress) as bar:
            for name in bar:
                bar.set_postfix_str(name)
                logger.debug("computing %s with %s", name, routed[name])
                results[name] = METRICS[name](
                    objective, cache=cache, progress=progress, **routed[name]
                )
    finally:
        cache.close()
    return results
