"""One dispatch from an estimator's name to the trace estimators (CLI, summaries, metrics)."""

from __future__ import annotations

from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace._result import TraceResult
from landscape.hessian.trace.block import block_trace
from landscape.hessian.trace.finite_difference import fd_trace
from landscape.hessian.trace.gauss_newton import ggn_trace
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.hessian.trace.hutchpp import hutchpp_trace

__all__ = ["TRACE_METHODS", "estimate_trace"]

TRACE_METHODS = ("hutchpp", "hutchinson", "block", "fd", "ggn")
"""The estimators :func:`estimate_trace` knows by name."""


def estimate_trace(
    op: HessianOperator,
    method: str = "hutchpp",
    num_products: int = 60,
    target_rel_stderr: float | None = None,
    seed: int = 0,
    *,
    per_block: bool = False,
    progress: bool | None = None,
) -> TraceResult:
    """``Tr(H)`` by the estimator named ``method``.

    Args:
        op: the Hessian operator.
        method: ``"hutchpp"`` (:func:`hutchpp_trace`, Rademacher sketch),
            ``"hutchinson"``, ``"block"`` (:func:`block_trace`), ``"fd"`` (CR-SAM's loss
            form, :func:`fd_trace`; ``num_products`` probes) or ``"ggn"``
            (:func:`ggn_trace`).
        num_products: the budget (probes for ``"fd"``).
        target_rel_stderr: stop at this relative standard error (not ``"block"``).
        seed: seed of the probes.
        per_block: per-parameter-tensor traces from the same products (``"hutchinson"``).
        progress: progress bars (``None``: only on a terminal).
    """
    if method not in TRACE_METHODS:
        raise ValueError(
            f"Invalid trace_method: {method!r} (expected one of {', '.join(TRACE_METHODS)})"
        )
    if per_block and method != "hutchinson":
        raise ValueError(f"Invalid per_layer: True needs trace_method='hutchinson', not {method!r}")
    if method == "fd":
        return fd_trace(
            op,
            num_probes=num_products,
            seed=seed,
            target_rel_stderr=target_rel_stderr,
            progress=progress,
        )
    if method == "block":
        if target_rel_stderr is not None:
            raise ValueError("Invalid target_rel_stderr: trace_method='block' has no stopping rule")
        return block_trace(op, num_products, seed=seed, progress=progress)
    if method == "hutchinson":
        return hutchinson_trace(
            op, num_products, target_rel_stderr, seed, per_block=per_block, progress=progress
        )
    estimator = ggn_trace if method == "ggn" else hutchpp_trace
    return estimator(op, num_products, target_rel_stderr, seed, progress=progress)
