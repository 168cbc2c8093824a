r"""Curvature metrics: thin calls into :mod:`landscape.hessian` at the current weights.

- ``lambda_max``: top Hessian eigenvalue (Lanczos);
- ``trace``: :math:`\mathrm{Tr}(H)` with its standard error (Hutchinson, Hutch++,
  CR-SAM's finite differences or the Gauss–Newton split);
- ``normalized_trace``: :math:`\mathrm{Tr}(H)/\|∇L\|_2` (CR-SAM's curvature measure);
- ``grad_curvature``: :math:`g^⊤Hg/\|g\|^2`, the curvature along the gradient (one
  Hessian-vector product).
"""

from __future__ import annotations

import math
from typing import Any

from landscape.metrics._base import (
    MetricCache,
    MetricResult,
    check_int,
    check_positive,
    get_cache,
    hessian_vector_product,
)
from landscape.metrics.registry import register_metric
from landscape.objective import Objective
from optimizers._foreach import tl_dot, tl_norm

__all__ = ["grad_curvature", "lambda_max", "normalized_trace", "trace"]


@register_metric("lambda_max")
def lambda_max(
    objective: Objective,
    *,
    tol: float = 1e-3,
    criterion: str = "residual",
    max_products: int = 100,
    seed: int = 0,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """Top (largest algebraic) Hessian eigenvalue, by Lanczos.

    Args:
        objective: model, loss and data.
        tol: relative tolerance: of the residual ``‖Hv − λv‖ ≤ tol·|λ|``, or of the
            eigenvalue with ``criterion="eigenvalue"``.
        criterion: ``"residual"`` or ``"eigenvalue"`` (see :func:`lanczos_eigen`).
        max_products: cap on Hessian-vector products.
        seed: seed of the start vector.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    from landscape.hessian import lanczos_eigen

    check_positive("tol", tol)
    check_int("max_products", max_products)
    op = get_cache(objective, cache).operator()
    res = lanczos_eigen(
        op,
        k=1,
        which="largest",
        tol=tol,
        criterion=criterion,
        max_products=max_products,
        seed=seed,
        progress=progress,
    )
    return MetricResult(
        float(res.eigenvalues[0]),
        None,
        {
            "products": int(res.products),
            "residual": float(res.residuals[0]),
            "converged": bool(res.converged),
            "tol": tol,
            "criterion": criterion,
        },
    )


def _trace(
    objective: Objective,
    cache: MetricCache | None,
    *,
    method: str,
    num_products: int,
    target_rel_stderr: float | None,
    seed: int,
    progress: bool | None,
    per_layer: bool = False,
) -> Any:
    """The trace estimate, computed once per settings within one ``compute_metrics`` call."""
    from landscape.hessian.trace.select import TRACE_METHODS, estimate_trace

    if method not in TRACE_METHODS:  # before any work; estimate_trace checks the rest
        raise ValueError(
            f"Invalid trace_method: {method!r} (expected one of {', '.join(TRACE_METHODS)})"
        )
    check_int("num_products", num_products)
    if target_rel_stderr is not None:
        check_positive("target_rel_stderr", target_rel_stderr)
    base = get_cache(objective, cache)

    def compute() -> Any:
        return estimate_trace(
            base.operator(),
            method,
            num_products,
            target_rel_stderr,
            seed,
            per_block=per_layer,
            progress=progress,
        )

    # Same probes with or without per-block sums: one key for both.
    key = ("trace", method, num_products, target_rel_stderr, seed)
    tr = base.memo(key, compute)
    if per_layer and tr.blocks is None:  # cached without blocks: recompute with them
        tr = compute()
        base.memo(key, lambda: tr)
    return tr


def _trace_info(tr: Any, method: str) -> dict[str, Any]:
    return {
        "method": method,
        "products": int(tr.products),
        "num_samples": len(tr.samples),
    }


@register_metric("trace")
def trace(
    objective: Objective,
    *,
    trace_method: str = "hutchinson",
    num_products: int = 100,
    target_rel_stderr: float | None = None,
    seed: int = 0,
    per_layer: bool = False,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """Hessian trace Tr(H) with its standard error (Hutchinson, Hutch++, fd or Gauss–Newton).

    Args:
        objective: model, loss and data.
        trace_method: ``"hutchinson"`` (Rademacher probes), ``"hutchpp"`` (Hutch++),
            ``"block"`` (per-layer blocks), ``"fd"`` (CR-SAM's finite differences,
            ``num_products`` probes) or ``"ggn"``
            (:func:`~landscape.hessian.ggn_trace`: the Gauss–Newton part exactly from
            per-sample gradients, the residual's diagonal blocks probed; needs a
            mean-reduced loss and tensor outputs, or a ``ModelOutput``/dict with
            ``logits``, with ``loss_fn``).
        num_products: Hessian-vector products (the maximum with a target).
        target_rel_stderr: stop once ``stderr ≤ target·|Tr|``.
        seed: seed of the probes.
        per_layer: also estimate the trace of each parameter tensor's diagonal block from
            the same probes (Hutchinson only): ``info["per_param"][name] = {"value",
            "stderr"}``.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    tr = _trace(
        objective,
        cache,
        method=trace_method,
        num_products=num_products,
        target_rel_stderr=target_rel_stderr,
        seed=seed,
        progress=progress,
        per_layer=per_layer,
    )
    info = _trace_info(tr, trace_method)
    if per_layer:
        info["per_param"] = {
            name: {"value": float(v), "stderr": float(s)} for name, (v, s) in tr.blocks.items()
        }
    return MetricResult(float(tr.value), float(tr.stderr), info)


@register_metric("normalized_trace")
def normalized_trace(
    objective: Objective,
    *,
    trace_method: str = "hutchinson",
    num_products: int = 100,
    target_rel_stderr: float | None = None,
    seed: int = 0,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """CR-SAM's normalised trace Tr(H) / ‖∇L‖₂, with its standard error.

    The standard error is the trace's divided by ``‖∇L‖`` (the gradient is exact).

    Args:
        objective: model, loss and data.
        trace_method: ``"hutchinson"``, ``"hutchpp"``, ``"block"``, ``"fd"`` or ``"ggn"``
            (see ``trace``).
        num_products: Hessian-vector products for the trace.
        target_rel_stderr: stop once ``stderr ≤ target·|Tr|``.
        seed: seed of the probes.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    base = get_cache(objective, cache)
    gnorm = float(tl_norm(base.loss_and_gradient()[1]))
    tr = _trace(
        objective,
        base,
        method=trace_method,
        num_products=num_products,
        target_rel_stderr=target_rel_stderr,
        seed=seed,
        progress=progress,
    )
    info = {**_trace_info(tr, trace_method), "trace": float(tr.value), "grad_norm": gnorm}
    if gnorm == 0.0:
        return MetricResult(math.nan, math.nan, info)
    return MetricResult(float(tr.value) / gnorm, float(tr.stderr) / gnorm, info)


@register_metric("grad_curvature")
def grad_curvature(
    objective: Objective,
    *,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """Curvature along the gradient gᵀHg / ‖g‖² (one Hessian-vector product).

    Args:
        objective: model, loss and data.
        cache: base-point cache shared with other metrics (optional).
        progress: unused.
    """
    base = get_cache(objective, cache)
    g = base.loss_and_gradient()[1]
    gg = float(tl_dot(g, g))
    if gg == 0.0:
        return MetricResult(math.nan, None, {"grad_norm": 0.0, "products": 0})
    hg = hessian_vector_product(base.operator(), g)
    return MetricResult(
        float(tl_dot(g, hg)) / gg, None, {"grad_norm": math.sqrt(gg), "products": 1}
    )
