"""Hutchinson's stochastic trace estimator (Rademacher probes), with per-block traces."""

from __future__ import annotations

import numpy as np
import torch

from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import progress_bar
from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace._result import TraceResult, mean_stderr, reached

__all__ = ["hutchinson_trace"]


def hutchinson_trace(
    op: HessianOperator,
    num_products: int = 100,
    target_rel_stderr: float | None = None,
    seed: int = 0,
    *,
    min_samples: int = 10,
    per_block: bool = False,
    distribution: str = "rademacher",
    progress: bool | None = None,
) -> TraceResult:
    """``Tr(H) ≈ mean_i v_iᵀ H v_i`` over random probes ``v_i`` (one product each).

    Unbiased for any symmetric ``H``; the standard error is the sample standard deviation
    over ``√n``. With Rademacher probes the per-parameter-tensor traces
    ``Σ_{j∈block} v_j (Hv)_j`` come from the same products (``per_block=True``).

    Args:
        op: the Hessian operator.
        num_products: number of probes (the maximum when ``target_rel_stderr`` is set).
        target_rel_stderr: stop as soon as ``stderr ≤ target·|estimate|`` (after
            ``min_samples`` probes).
        seed: seed of the probes.
        min_samples: probes before the stopping rule may fire.
        per_block: also estimate the trace of each parameter tensor's diagonal block.
        distribution: ``"rademacher"`` (default, least variance) or ``"gaussian"``.
        progress: progress bar (``None``: only on a terminal).
    """
    check_integers(num_products=num_products, min_samples=min_samples)
    if num_products < 1:
        raise ValueError(f"Invalid num_products: {num_products} (must be >= 1)")
    if target_rel_stderr is not None and not target_rel_stderr > 0:
        raise ValueError(f"Invalid target_rel_stderr: {target_rel_stderr}")
    gen = torch.Generator().manual_seed(seed)
    blocks = list(op.blocks()) if per_block else []
    samples: list[float] = []
    block_samples: list[list[float]] = []
    with progress_bar(num_products, "hutchinson trace", progress) as bar:
        for _ in range(num_products):
            v = op.random_vector(gen, distribution)
            hv = op.matvec(v)
            prod = (v.double() * hv.double()) if blocks else None
            samples.append(float(torch.dot(v.double(), hv.double())))
            if prod is not None:
                block_samples.append([float(prod[sl].sum()) for _, sl in blocks])
            bar.update(1)
            if reached(samples, target_rel_stderr, min_samples):
                break
    arr = np.asarray(samples)
    value, stderr = mean_stderr(arr)
    per: dict[str, tuple[float, float]] | None = None
    if blocks:
        bm, bs = mean_stderr(np.asarray(block_samples))
        per = {
            name: (float(m), float(s))
            for (name, _), m, s in zip(blocks, np.atleast_1d(bm), np.atleast_1d(bs), strict=True)
        }
    return TraceResult(
        value=value,
        stderr=stderr,
        products=len(samples),
        samples=arr,
        blocks=per,
        converged=None if target_rel_stderr is None else reached(samples, target_rel_stderr, 2),
        info={"method": "hutchinson", "distribution": distribution},
    )
