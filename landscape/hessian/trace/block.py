"""Trace as the sum of the traces of diagonal blocks (layers), each by its own estimator.

``Tr(H) = Σ_l Tr(H_ll)``: probing each block separately never sees the off-diagonal
(cross-layer) blocks. For networks of ReLU, max-pool, convolution and linear layers the
within-layer blocks of the second-order term vanish (the output is linear in each layer's
weights), so ``H_ll`` is the positive semi-definite Gauss–Newton block with a few dominant
eigenvalues, while the cross-layer blocks carry large indefinite mass that makes
whole-vector Hutchinson probes noisy. Splitting by blocks is unbiased for any ``H``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.hessian._blocks import group_blocks, validate_grouping
from landscape.hessian.operator import HessianOperator, random_vector
from landscape.hessian.trace._result import TraceResult, satterthwaite
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.hessian.trace.hutchpp import hutchpp_trace

__all__ = ["block_trace"]

_ESTIMATORS = ("hutchpp", "hutchinson")


class _BlockView:
    """The diagonal block ``H_ll`` of an operator, as the trace estimators use it.

    Products are counted on the parent operator.
    """

    def __init__(self, op: HessianOperator, sl: slice, name: str) -> None:
        self.op, self.sl, self.name = op, sl, name
        self.dim = sl.stop - sl.start
        self.dtype, self.device = op.dtype, op.device

    def matvec(self, u: Tensor) -> Tensor:
        v = torch.zeros(self.op.dim, dtype=self.dtype, device=self.device)
        v[self.sl] = u
        return self.op.matvec(v)[self.sl]

    def random_vector(self, generator: torch.Generator, kind: str = "gaussian") -> Tensor:
        return random_vector(self.dim, generator, kind, self.dtype, self.device)

    def blocks(self) -> Any:
        yield self.name, slice(0, self.dim)


def exact_block_trace(view: _BlockView, seed: int, progress: bool | None) -> TraceResult:
    """The trace of a small block, exactly, by one Krylov run over its whole space.

    Costs at most ``view.dim`` products (fewer when the Krylov space becomes invariant).
    """
    return hutchpp_trace(
        view, view.dim + 1, seed=seed, sketch="lanczos", sketch_size=view.dim, progress=progress
    )


def _allocate(weights: np.ndarray, budget: int, floor: int, caps: np.ndarray) -> np.ndarray:
    """Integers ``≥ floor`` (or the cap), ``≤ caps``, summing to ``≤ budget``, ∝ ``weights``."""
    alloc = np.minimum(np.full(len(weights), floor), caps)
    free = budget - int(alloc.sum())
    w = np.where(alloc < caps, np.maximum(weights, 1e-30), 0.0)
    while free > 0 and w.sum() > 0:
        share = w / w.sum() * free
        add = np.minimum(np.floor(share).astype(int), caps - alloc)
        if add.sum() == 0:
            add[int(np.argmax(np.where(alloc < caps, share, -1.0)))] = 1
        alloc += add
        free -= int(add.sum())
        w = np.where(alloc < caps, w, 0.0)
    return alloc


_MIN_PROBES = 4  # residual probes per block when its budget allows: the stderr's dof


def _sketch_size(n: int, sketch: str) -> int | None:
    """Hutch++'s sketch in a block of ``n`` products, leaving ``_MIN_PROBES`` probes."""
    per_col = 2 if sketch == "rademacher" else 1
    probes = max(_MIN_PROBES, n // 3)
    k = (n - probes) // per_col
    return k if k >= 1 else None


def block_trace(
    op: HessianOperator,
    num_products: int = 60,
    seed: int = 0,
    *,
    blocks: str = "module",
    estimator: str = "hutchpp",
    sketch: str = "lanczos",
    progress: bool | None = None,
) -> TraceResult:
    """``Tr(H) = Σ_l Tr(H_ll)`` with the budget split over the diagonal blocks.

    The budget is split over the blocks in proportion to the square root of their sizes
    (at least 3 each; a block no larger than its share is traced exactly by a full Krylov
    run). Each block's trace comes from
    :func:`hutchpp_trace` (``sketch="lanczos"`` by default) or :func:`hutchinson_trace`.

    Args:
        op: the Hessian operator.
        num_products: total budget (at least 3 per block).
        seed: seed of all probes.
        blocks: ``"module"`` (the parameters of one module together, e.g. a layer's weight
            and bias) or ``"tensor"`` (each parameter tensor).
        estimator: ``"hutchpp"`` or ``"hutchinson"`` within each block.
        sketch: the Hutch++ sketch (``"lanczos"`` or ``"rademacher"``).
        progress: progress bars (``None``: only on a terminal).

    Returns:
        A :class:`TraceResult`; ``blocks`` maps each block to ``(value, stderr)``,
        ``samples`` holds the block values and ``info["allocation"]`` the products per block.
    """
    validate_grouping(blocks)
    if estimator not in _ESTIMATORS:
        raise ValueError(f"Invalid estimator: {estimator!r} (expected one of {_ESTIMATORS})")
    groups = group_blocks(op, blocks)
    if num_products < 3 * len(groups):
        raise ValueError(
            f"Invalid num_products: {num_products} < 3 per block for {len(groups)} blocks "
            "(use more products or blocks='module')"
        )
    gen = torch.Generator().manual_seed(seed)
    views = [_BlockView(op, sl, name) for name, sl in groups]
    caps = np.array([v.dim if estimator == "hutchpp" else 10**12 for v in views])
    alloc = _allocate(np.sqrt([v.dim for v in views]), num_products, 3, caps)
    per: dict[str, tuple[float, float]] = {}
    dofs: list[float] = []
    cumulant3 = 0.0  # third cumulants of independent blocks add
    used = 0
    for i, (view, n) in enumerate(zip(views, alloc, strict=True)):
        sub_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen))
        if estimator == "hutchinson":
            res = hutchinson_trace(view, int(n), seed=sub_seed, progress=progress)
            value, se = res.value, res.stderr
        elif n >= view.dim:
            res = exact_block_trace(view, sub_seed, progress)
            value, se = res.value, 0.0
        else:
            res = hutchpp_trace(
                view,
                int(n),
                seed=sub_seed,
                sketch=sketch,
                sketch_size=_sketch_size(int(n), sketch),
                progress=progress,
            )
            value, se = res.value, res.stderr
        per[view.name] = (value, se)
        cumulant3 += res.third_cumulant if se > 0 else 0.0
        dofs.append(res.degrees_of_freedom if se > 0 else np.inf)
        used += res.products
        alloc[i] = res.products
    values = np.array([v for v, _ in per.values()])
    stderr = math.sqrt(sum(s**2 for _, s in per.values()))
    return TraceResult(
        value=float(values.sum()),
        stderr=stderr,
        products=used,
        samples=values,
        blocks=per,
        dof=satterthwaite([(se, nu) for (_, se), nu in zip(per.values(), dofs, strict=True)]),
        cumulant3=cumulant3,
        info={
            "method": f"block_{estimator}",
            "sketch": sketch,
            "grouping": blocks,
            "allocation": {v.name: int(n) for v, n in zip(views, alloc, strict=True)},
            "block_dof": {v.name: float(nu) for v, nu in zip(views, dofs, strict=True)},
        },
    )
