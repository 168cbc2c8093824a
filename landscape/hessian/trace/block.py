"""Trace as the sum of the traces of diagonal blocks (layers), each by its own estimator.

``Tr(H) = Σ_l Tr(H_ll)``: probing each block separately never sees the off-diagonal
(cross-layer) blocks. For networks of ReLU, max-pool, convolution and linear layers the
within-layer blocks of the second-order term vanish (the output is linear in each layer's
weights), so ``H_ll`` is the positive semi-definite Gauss–Newton block with a few dominant
eigenvalues, while the cross-layer blocks carry large indefinite mass that makes
whole-vector Hutchinson probes noisy. Splitting by blocks is unbiased for any ``H``.

**The pilot split** (:func:`block_trace`'s default ``allocation="pilot"``): 35 % of the
stochastic blocks' products build their Hutch++ sketches, in proportion to the square
roots of the sizes; one pilot residual probe per block then estimates how widely its
residual probes spread (and, with one more product, adds its direction and its image to
the sketch), and the remaining probes go in proportion to that spread (Neyman's
allocation), at least ``min_probes`` per block. A block whose sketch leaves little behind
(a layer whose few dominant eigenvalues the sketch caught) gets few probes; the block
that carries most of the remaining variance gets most, so its skewed probes are averaged
over more samples and the Welch–Satterthwaite degrees of freedom of the sum grow. On the
trained ReLU MLP of ``benchmarks/coverage.py`` (30 products, 3,000 seeds) it narrows the
median 95 % interval from ±27 % to ±16 % at the same coverage (94 %).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from landscape.hessian._blocks import group_blocks, validate_grouping
from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import progress_bar
from landscape.hessian.operator import HessianOperator, random_vector
from landscape.hessian.trace._result import (
    TraceResult,
    mean_cumulant3,
    mean_stderr,
    satterthwaite,
)
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.hessian.trace.hutchpp import hutchpp_trace, residual_probe, sketch_basis

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


_MIN_PROBES = 4  # residual probes per block of the size split, when its budget allows
_PILOT_SKETCH = 0.35  # share of the stochastic blocks' products in their sketches (pilot split)
_ALLOCATIONS = ("pilot", "size")


def _sketch_size(n: int, sketch: str) -> int | None:
    """Hutch++'s sketch in a block of ``n`` products, leaving ``_MIN_PROBES`` probes."""
    per_col = 2 if sketch == "rademacher" else 1
    probes = max(_MIN_PROBES, n // 3)
    k = (n - probes) // per_col
    return k if k >= 1 else None


class _PilotBlock:
    """One stochastic block of the pilot split: its sketch, its pilot, then its probes.

    The pilot is one residual probe ``g ⊥ Q``: ``‖(I−QQᵀ) H g‖²`` is an unbiased estimate
    of ``‖R‖_F²``, the squared Frobenius norm of the residual ``R = (I−QQᵀ) H (I−QQᵀ)``,
    whose probes have a standard deviation of about ``√2·‖R‖_F``. Then the pilot joins
    the sketch, so that its product is not lost: ``g`` (whose ``gᵀHg / ‖g‖²`` comes with
    the product) and ``R g`` (one more product), a range-finder column that catches the
    dominant direction a single-vector Krylov sketch can miss (a pair of nearly equal
    top eigenvalues, or a start vector nearly orthogonal to one of them). The probes
    drawn afterwards are independent of the sketch and of the allocation, so
    ``Tr(QᵀHQ)`` plus their mean is unbiased whatever the pilots said; a pilot counted
    among the probes would not be (a block whose pilot spreads widely gets more probes,
    which would dilute that pilot's value).
    """

    def __init__(self, view: _BlockView, seed: int, columns: int, sketch: str) -> None:
        self.view, self.gen = view, torch.Generator().manual_seed(seed)
        sk = sketch_basis(view, columns, sketch, self.gen)
        self.basis, self.trace, self.products = sk.basis, sk.trace, sk.products
        self.exhausted, self.spread = sk.exhausted, 0.0
        self.samples: list[float] = []

    def _join(self, v: Tensor, hv: Tensor | None = None) -> None:
        """Add ``v``'s direction orthogonal to the basis to it, with its Rayleigh quotient."""
        for _ in range(2):
            v = v - self.basis @ (self.basis.T @ v)
        norm = float(torch.linalg.vector_norm(v))
        if norm == 0:
            return
        v = v / norm
        if hv is None:
            hv = self.view.matvec(v)
            self.products += 1
        else:
            hv = hv / norm
        self.trace += float(torch.dot(v.double(), hv.double()))
        self.basis = torch.cat([self.basis, v[:, None]], dim=1)

    def pilot(self) -> None:
        """The pilot probe: the residual's spread; then ``g`` and ``R g`` join the sketch."""
        g = self.view.random_vector(self.gen, "rademacher")
        for _ in range(2):  # g ⊥ Q to rounding: its product is then that of its direction
            g = g - self.basis @ (self.basis.T @ g)
        hg = self.view.matvec(g)
        self.products += 1
        rg = hg - self.basis @ (self.basis.T @ hg)
        self.spread = float(torch.linalg.vector_norm(rg))
        self._join(g, hg)
        if self.spread > 1e-12 * float(torch.linalg.vector_norm(hg)):
            self._join(rg)

    def probe(self) -> None:
        self.samples.append(residual_probe(self.view, self.basis, self.gen))
        self.products += 1

    def result(self) -> TraceResult:
        arr = np.asarray(self.samples)
        if self.exhausted:
            return TraceResult(self.trace, 0.0, self.products, arr, dof=math.inf, cumulant3=0.0)
        rest, stderr = mean_stderr(arr)
        return TraceResult(
            self.trace + rest,
            stderr,
            self.products,
            arr,
            dof=len(arr) - 1,
            cumulant3=mean_cumulant3(arr),
        )


def _pilot_split(
    views: list[_BlockView],
    seeds: list[int],
    budget: int,
    sketch: str,
    min_probes: int,
    bar: Any,
) -> list[TraceResult]:
    """Sketch every block, take one pilot probe each, then split the probes by the pilots.

    The sketches get ``_PILOT_SKETCH`` of the budget in proportion to the square roots of
    the block sizes (at least one column each); each pilot costs two products (see
    :class:`_PilotBlock`). The remaining probes go in proportion to the pilots' residual
    spreads (Neyman's allocation, which minimises the variance of a sum of independent
    means for a given number of probes), at least ``min_probes`` each.
    """
    per_col = 2 if sketch == "rademacher" else 1
    dims = np.array([v.dim for v in views])
    columns = _allocate(np.sqrt(dims), round(_PILOT_SKETCH * budget) // per_col, 1, dims - 1)
    parts = []
    for view, seed, k in zip(views, seeds, columns, strict=True):
        parts.append(_PilotBlock(view, seed, int(k), sketch))
        bar.update(parts[-1].products)
    live = [p for p in parts if not p.exhausted]
    for p in live:
        before = p.products
        p.pilot()
        bar.update(p.products - before)
    free = budget - sum(p.products for p in parts)
    floor = min(min_probes, free // max(len(live), 1))
    probes = _allocate(np.array([p.spread for p in live]), free, floor, np.full(len(live), free))
    for p, m in zip(live, probes, strict=True):
        for _ in range(int(m)):
            p.probe()
            bar.update(1)
    return [p.result() for p in parts]


def _check_arguments(blocks: str, estimator: str, allocation: str, min_probes: Any) -> None:
    validate_grouping(blocks)
    if estimator not in _ESTIMATORS:
        raise ValueError(f"Invalid estimator: {estimator!r} (expected one of {_ESTIMATORS})")
    if allocation not in _ALLOCATIONS:
        raise ValueError(f"Invalid allocation: {allocation!r} (expected one of {_ALLOCATIONS})")
    if isinstance(min_probes, bool) or not isinstance(min_probes, int) or min_probes < 2:
        raise ValueError(f"Invalid min_probes: {min_probes!r} (must be an integer >= 2)")


def _split_of(
    stochastic: list[int], rest: int, estimator: str, allocation: str, min_probes: int
) -> str:
    """``"exact"`` (no stochastic block), ``"pilot"`` when the budget allows it, else ``"size"``."""
    if not stochastic:
        return "exact"
    enough = rest >= (2 * min_probes + 3) * len(stochastic)
    return "pilot" if estimator == "hutchpp" and allocation == "pilot" and enough else "size"


def _size_block(
    view: _BlockView, n: int, seed: int, estimator: str, sketch: str, progress: bool | None
) -> TraceResult:
    """One block's trace with its own share ``n`` of the budget (the ``"size"`` split)."""
    if estimator == "hutchinson":
        return hutchinson_trace(view, n, seed=seed, progress=progress)
    return hutchpp_trace(
        view, n, seed=seed, sketch=sketch, sketch_size=_sketch_size(n, sketch), progress=progress
    )


def block_trace(
    op: HessianOperator,
    num_products: int = 60,
    seed: int = 0,
    *,
    blocks: str = "module",
    estimator: str = "hutchpp",
    sketch: str = "lanczos",
    allocation: str = "pilot",
    min_probes: int = 3,
    progress: bool | None = None,
) -> TraceResult:
    """``Tr(H) = Σ_l Tr(H_ll)`` with the budget split over the diagonal blocks.

    The budget is first split over the blocks in proportion to the square root of their
    sizes (at least 3 each); a block no larger than its share is traced exactly by a full
    Krylov run. The other blocks share the rest (``allocation``):

    - ``"pilot"`` (default; Hutch++ with at least ``2·min_probes + 3`` products per
      stochastic block): 35 % of the products build the sketches, one pilot probe per
      block measures its residual spread, and the remaining probes go in proportion to
      it, at least ``min_probes`` per block (see the module docstring);
    - ``"size"``: each block keeps its share, Hutch++ within it with two thirds of it in
      the sketch and at least 4 residual probes (also used when the budget is too small
      for the pilot split, and always with ``estimator="hutchinson"``).

    Each block's trace is unbiased (the probes are drawn after the allocation and are
    independent of it), so the sum is.

    Args:
        op: the Hessian operator.
        num_products: total budget (at least 3 per block).
        seed: seed of all probes.
        blocks: ``"module"`` (the parameters of one module together, e.g. a layer's weight
            and bias) or ``"tensor"`` (each parameter tensor).
        estimator: ``"hutchpp"`` or ``"hutchinson"`` within each block.
        sketch: the Hutch++ sketch (``"lanczos"`` or ``"rademacher"``).
        allocation: ``"pilot"`` or ``"size"``, see above.
        min_probes: residual probes per stochastic block at least, with the pilot split
            (at least 2; more give each block's standard error more degrees of freedom).
        progress: progress bars (``None``: only on a terminal).

    Returns:
        A :class:`TraceResult`; ``blocks`` maps each block to ``(value, stderr)``,
        ``samples`` holds the block values, ``info["allocation"]`` the products per
        block, ``info["block_probes"]`` its residual probes (0 for an exact block),
        ``info["block_dof"]`` their degrees of freedom and ``info["split"]`` the split
        used (``"pilot"``, ``"size"``, or ``"exact"`` when every block was exact).
    """
    _check_arguments(blocks, estimator, allocation, min_probes)
    check_integers(num_products=num_products)
    groups = group_blocks(op, blocks)
    if num_products < 3 * len(groups):
        raise ValueError(
            f"Invalid num_products: {num_products} < 3 per block for {len(groups)} blocks "
            "(use more products or blocks='module')"
        )
    gen = torch.Generator().manual_seed(seed)
    views = [_BlockView(op, sl, name) for name, sl in groups]
    seeds = [int(torch.randint(0, 2**31 - 1, (1,), generator=gen)) for _ in views]
    caps = np.array([v.dim if estimator == "hutchpp" else 10**12 for v in views])
    alloc = _allocate(np.sqrt([v.dim for v in views]), num_products, 3, caps)
    results: dict[int, TraceResult] = {}
    if estimator == "hutchpp":
        for i, (view, n) in enumerate(zip(views, alloc, strict=True)):
            if n >= view.dim:
                results[i] = exact_block_trace(view, seeds[i], progress)
    stochastic = [i for i in range(len(views)) if i not in results]
    rest = num_products - sum(r.products for r in results.values())
    split = _split_of(stochastic, rest, estimator, allocation, min_probes)
    if split == "pilot":
        with progress_bar(rest, "block trace", progress) as bar:
            found = _pilot_split(
                [views[i] for i in stochastic],
                [seeds[i] for i in stochastic],
                rest,
                sketch,
                min_probes,
                bar,
            )
        results.update(zip(stochastic, found, strict=True))
    if split == "size":
        for i in stochastic:
            results[i] = _size_block(views[i], int(alloc[i]), seeds[i], estimator, sketch, progress)
    per: dict[str, tuple[float, float]] = {}
    dofs: list[float] = []
    cumulant3 = 0.0  # third cumulants of independent blocks add
    for i, view in enumerate(views):
        res = results[i]
        se = 0.0 if i not in stochastic else res.stderr
        per[view.name] = (res.value, se)
        cumulant3 += res.third_cumulant if se > 0 else 0.0
        dofs.append(res.degrees_of_freedom if se > 0 else np.inf)
        alloc[i] = res.products
    values = np.array([v for v, _ in per.values()])
    stderr = math.sqrt(sum(s**2 for _, s in per.values()))
    return TraceResult(
        value=float(values.sum()),
        stderr=stderr,
        products=int(alloc.sum()),
        samples=values,
        blocks=per,
        dof=satterthwaite([(se, nu) for (_, se), nu in zip(per.values(), dofs, strict=True)]),
        cumulant3=cumulant3,
        info={
            "method": f"block_{estimator}",
            "sketch": sketch,
            "grouping": blocks,
            "split": split,
            "allocation": {v.name: int(n) for v, n in zip(views, alloc, strict=True)},
            "block_probes": {
                v.name: 0 if i not in stochastic else len(results[i].samples)
                for i, v in enumerate(views)
            },
            "block_dof": {v.name: float(nu) for v, nu in zip(views, dofs, strict=True)},
        },
    )
