"""Shared mechanism of the metrics: results, the base-point cache, perturb-and-restore.

Every metric evaluates an :class:`~landscape.objective.Objective` at its current weights
θ and, for the sharpness family, at perturbed weights θ + ε. Perturbed weights are always
written afresh from a saved copy of θ (``θ + ε`` computed from θ, never by accumulating
steps) and θ is restored at the end by an exact copy, so a metric leaves the weights
bit-for-bit as it found them. The objective keeps the model's train/eval mode and every
``.grad`` as found.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from landscape.hessian._checks import check_integers
from landscape.objective import Objective
from optimizers._foreach import tl_axpby_, tl_clone, tl_copy_

__all__ = [
    "MetricCache",
    "MetricResult",
    "flatten",
    "hessian_vector_product",
    "progress_bar",
    "saved_weights",
    "set_weights_",
    "unflatten",
]


@dataclass(frozen=True)
class MetricResult:
    """The value of one metric.

    Attributes:
        value: the metric's value (a float; NaN when it could not be computed).
        stderr: the standard error of ``value`` for stochastic estimators, else ``None``.
        info: JSON-serialisable details (products used, steps, the base loss, ...).
    """

    value: float
    stderr: float | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """``{"value": v, "stderr": s, "info": {...}}`` (plain Python types)."""
        return {"value": self.value, "stderr": self.stderr, "info": dict(self.info)}

    def __str__(self) -> str:
        if self.stderr is None or not math.isfinite(self.stderr):
            return f"{self.value:.6g}"
        return f"{self.value:.6g} ± {self.stderr:.2g}"


class MetricCache:
    """Quantities at the base point θ shared by several metrics of one call.

    :func:`~landscape.metrics.compute_metrics` builds one per model so that, e.g.,
    ``grad_norm``, ``normalized_trace`` and ``sam_sharpness`` compute ``L(θ)`` and
    ``∇L(θ)`` once. Valid only while the weights stay at θ (every metric restores them).

    Args:
        objective: the model, loss and data.
    """

    def __init__(self, objective: Objective) -> None:
        self.objective = objective
        self._loss_grad: tuple[float, list[Tensor]] | None = None
        self._operator: Any = None
        self._memo: dict[Any, Any] = {}

    def loss_and_gradient(self) -> tuple[float, list[Tensor]]:
        """``(L(θ), ∇L(θ))`` computed once (the gradient list must not be modified)."""
        if self._loss_grad is None:
            self._loss_grad = self.objective.loss_and_gradient()
        return self._loss_grad

    def operator(self) -> Any:
        """The :class:`~landscape.hessian.HessianOperator` at θ, built once."""
        if self._operator is None:
            from landscape.hessian import HessianOperator

            self._operator = HessianOperator(self.objective)
        return self._operator

    def memo(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` (e.g. a trace estimate shared by two metrics)."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def close(self) -> None:
        """Drop the cached gradient and release the operator's kept graph."""
        if self._operator is not None and hasattr(self._operator, "close"):
            self._operator.close()
        self._operator = None
        self._loss_grad = None
        self._memo.clear()


def get_cache(objective: Objective, cache: MetricCache | None) -> MetricCache:
    """Return ``cache`` when it belongs to ``objective``, else a fresh one."""
    if cache is not None and cache.objective is objective:
        return cache
    return MetricCache(objective)


@contextlib.contextmanager
def saved_weights(params: Sequence[Tensor]) -> Iterator[list[Tensor]]:
    """Yield a detached copy of ``params`` (θ) and copy it back into them on exit."""
    theta = tl_clone(params)
    try:
        yield theta
    finally:
        with torch.no_grad():
            tl_copy_(params, theta)


def set_weights_(
    params: Sequence[Tensor], theta: Sequence[Tensor], eps: Sequence[Tensor], alpha: float = 1.0
) -> None:
    """Write ``params ← θ + alpha·ε`` computed afresh from ``θ``."""
    with torch.no_grad():
        tl_axpby_(params, 1.0, theta, alpha, eps)


def flatten(tensors: Sequence[Tensor]) -> Tensor:
    """Concatenate a tensor list into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(flat: Tensor, like: Sequence[Tensor]) -> list[Tensor]:
    """Split a flat vector into tensors shaped (and typed) like ``like``."""
    out, offset = [], 0
    for t in like:
        n = t.numel()
        out.append(flat[offset : offset + n].view_as(t).to(device=t.device, dtype=t.dtype))
        offset += n
    if offset != flat.numel():
        raise ValueError(f"Invalid vector: {flat.numel()} entries for {offset} parameters")
    return out


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str | None = None,
    progress: bool | None = None,
) -> Any:
    """A tqdm bar; ``progress=None`` shows it only on a terminal, ``False`` never."""
    return tqdm(
        iterable,
        total=total,
        desc=desc,
        leave=False,
        disable=None if progress is None else not progress,
    )


def check_positive(name: str, value: float, *, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is a positive finite number."""
    ok = isinstance(value, int | float) and math.isfinite(value)
    ok = ok and (value >= 0 if allow_zero else value > 0)
    if not ok:
        raise ValueError(f"Invalid {name}: {value!r}")


def check_int(name: str, value: int, minimum: int = 1) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``value`` is an integer ≥ ``minimum``."""
    check_integers(**{name: value})
    if value < minimum:
        raise ValueError(f"Invalid {name}: {value!r} (expected an integer ≥ {minimum})")


def hessian_vector_product(operator: Any, v: Sequence[Tensor]) -> list[Tensor]:
    """``H v`` as a tensor list, whatever form ``operator @ v`` returns."""
    out = operator @ list(v)
    if isinstance(out, Tensor):
        return unflatten(out, v)
    return list(out)
