"""Hutch++ (Meyer, Musco, Musco, Woodruff 2021): exact trace on a sketch, Hutchinson on the rest."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import lanczos_run, progress_bar
from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace._result import TraceResult, mean_stderr

__all__ = ["hutchpp_trace"]

_SKETCHES = ("rademacher", "lanczos")


def hutchpp_trace(
    op: HessianOperator,
    num_products: int = 60,
    target_rel_stderr: float | None = None,
    seed: int = 0,
    *,
    sketch: str = "rademacher",
    sketch_size: int | None = None,
    min_samples: int = 5,
    progress: bool | None = None,
) -> TraceResult:
    """``Tr(H) = Tr(QᵀHQ) + Tr((I−QQᵀ) H (I−QQᵀ))``, the second term by Hutchinson.

    ``sketch="rademacher"`` (Hutch++ as published): ``Q`` is an orthonormal basis of
    ``H S`` for a Rademacher sketch ``S`` of ``sketch_size`` columns (default
    ``num_products // 3``); ``sketch_size`` products build it, ``sketch_size`` more give
    ``Tr(QᵀHQ)`` exactly, and the rest are Hutchinson probes projected off ``Q``.

    ``sketch="lanczos"`` (Krylov-aware Hutch++, Chen & Hallman 2023): ``Q`` is the basis of
    ``sketch_size`` Lanczos steps from a Gaussian start (default: all products but
    ``max(2, num_products // 3)``), and ``Tr(QᵀHQ) = Σ α_j`` comes free with it; a Krylov
    space captures the dominant eigenvectors far better than one multiplication of a random
    sketch. If the Krylov space becomes invariant the trace of ``H`` restricted to it is exact.

    Either way the estimate is unbiased (the probes are independent of ``Q``) and its
    variance is far below Hutchinson's when a few large eigenvalues dominate ``H`` (as in
    trained networks). The standard error is that of the Hutchinson part.

    Args:
        op: the Hessian operator.
        num_products: total budget of products (the maximum with a target).
        target_rel_stderr: stop the Hutchinson part once ``stderr ≤ target·|estimate|``.
        seed: seed of the sketch and the probes.
        sketch: ``"rademacher"`` or ``"lanczos"``.
        sketch_size: columns of the sketch (Lanczos steps for ``"lanczos"``).
        min_samples: residual probes before the stopping rule may fire.
        progress: progress bar (``None``: only on a terminal).
    """
    if sketch not in _SKETCHES:
        raise ValueError(f"Invalid sketch: {sketch!r} (expected one of {_SKETCHES})")
    check_integers(num_products=num_products, min_samples=min_samples)
    if sketch_size is not None:
        check_integers(sketch_size=sketch_size)
    if num_products < 3:
        raise ValueError(f"Invalid num_products: {num_products} (must be >= 3)")
    if target_rel_stderr is not None and not target_rel_stderr > 0:
        raise ValueError(f"Invalid target_rel_stderr: {target_rel_stderr}")
    per_col = 2 if sketch == "rademacher" else 1
    if sketch_size is None:
        k = (
            num_products // 3
            if sketch == "rademacher"
            else num_products - max(2, num_products // 3)
        )
    else:
        k = sketch_size
    if k < 1 or per_col * k >= num_products:
        raise ValueError(
            f"Invalid sketch_size: {k} (need 1 <= sketch_size < num_products/{per_col})"
        )
    k = min(k, op.dim)
    gen = torch.Generator().manual_seed(seed)
    with progress_bar(num_products, "hutch++ trace", progress) as bar:
        sk = sketch_basis(op, k, sketch, gen)
        bar.update(sk.products)
        exact, exhausted, used = sk.trace, sk.exhausted, sk.products
        samples: list[float] = []
        for _ in range(0 if exhausted else num_products - used):
            samples.append(residual_probe(op, sk.basis, gen))
            bar.update(1)
            if target_rel_stderr is not None and len(samples) >= max(min_samples, 2):
                mean, se = mean_stderr(np.asarray(samples))
                if se <= target_rel_stderr * abs(exact + mean):
                    break
    arr = np.asarray(samples)
    if exhausted:
        rest, stderr = 0.0, 0.0
    else:
        rest, stderr = mean_stderr(arr)
    value = exact + rest
    conv = None
    if target_rel_stderr is not None:
        conv = bool(stderr <= target_rel_stderr * abs(value))
    return TraceResult(
        value=value,
        stderr=stderr,
        products=used + len(samples),
        samples=arr,
        converged=conv,
        info={"method": "hutchpp", "sketch": sketch, "sketch_size": k, "sketch_trace": exact},
    )


@dataclass
class Sketch:
    """The exact part of Hutch++: an orthonormal basis ``Q`` and ``Tr(QᵀHQ)``.

    Attributes:
        basis: ``(dim, k)`` orthonormal columns.
        trace: ``Tr(QᵀHQ)``.
        products: the products it cost.
        exhausted: ``Q`` spans the whole space (``trace`` is ``Tr(H)``).
    """

    basis: Tensor
    trace: float
    products: int
    exhausted: bool = False


def sketch_basis(op: HessianOperator, k: int, sketch: str, gen: torch.Generator) -> Sketch:
    """Hutch++'s sketch of ``k`` columns: ``2k`` products (Rademacher) or ``k`` (Lanczos)."""
    if sketch == "rademacher":
        ys = [op.matvec(op.random_vector(gen, "rademacher")) for _ in range(k)]
        q, _ = torch.linalg.qr(torch.stack(ys, dim=1))
        trace = sum(float(torch.dot(col.double(), op.matvec(col).double())) for col in q.T)
        return Sketch(q, trace, 2 * k)
    state = lanczos_run(
        op.matvec, op.random_vector(gen), k, new_start=lambda: op.random_vector(gen), progress=False
    )
    exhausted = state.invariant and state.steps == op.dim
    return Sketch(state.basis.T, float(np.sum(state.alphas)), state.products, exhausted)


def residual_probe(op: HessianOperator, basis: Tensor, gen: torch.Generator) -> float:
    """One Hutchinson probe of the residual ``(I−QQᵀ) H (I−QQᵀ)``: ``gᵀHg``, ``g ⊥ Q``."""
    g = op.random_vector(gen, "rademacher")
    g = g - basis @ (basis.T @ g)
    return float(torch.dot(g.double(), op.matvec(g).double()))
