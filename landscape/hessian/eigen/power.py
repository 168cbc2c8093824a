"""Power iteration with deflation: the baseline the Lanczos solver is measured against."""

from __future__ import annotations

import logging

import torch

from landscape.hessian._checks import check_integers, check_real
from landscape.hessian._krylov import progress_bar
from landscape.hessian.eigen._result import EigenResult
from landscape.hessian.operator import HessianOperator

__all__ = ["power_iteration"]

logger = logging.getLogger(__name__)

_NULL = 1e-12  # ``‖(I − UUᵀ) H v‖ ≤ _NULL·max(|λ|, tiny)``: nothing left to iterate on


def power_iteration(
    op: HessianOperator,
    k: int = 1,
    tol: float = 1e-3,
    max_products: int = 100,
    seed: int = 0,
    *,
    progress: bool | None = None,
) -> EigenResult:
    """Eigenpairs of largest magnitude by power iteration, one after the other (PyHessian's way).

    Each eigenvector is iterated orthogonally to those already found, until the Rayleigh
    quotient changes by less than ``tol`` relatively between two products. Kept as a
    baseline: it needs many more products than :func:`lanczos_eigen` for the same
    accuracy. ``max_products`` caps the products per eigenpair. ``converged`` reports the
    Rayleigh-quotient rule; ``residuals`` are ``‖H v − λ v‖`` of the last iterate.
    """
    check_integers(k=k, max_products=max_products)
    check_real("tol", tol)
    if k < 1 or k > op.dim:
        raise ValueError(f"Invalid k: {k} (must be in [1, {op.dim}])")
    if not tol > 0:
        raise ValueError(f"Invalid tol: {tol} (must be > 0)")
    if max_products < 1:
        raise ValueError(f"Invalid max_products: {max_products}")
    gen = torch.Generator().manual_seed(seed)
    found: list[torch.Tensor] = []
    values: list[float] = []
    residuals: list[float] = []
    conv: list[bool] = []
    products = 0
    unverified = getattr(op, "unverified_products", 0)

    def orthogonal(v: torch.Tensor) -> torch.Tensor:
        for u in found:
            v = v - torch.dot(u, v) * u
        return v

    def deflate(v: torch.Tensor) -> torch.Tensor:
        v = orthogonal(v)
        return v / torch.linalg.vector_norm(v)

    with progress_bar(k * max_products, "power iteration", progress) as bar:
        for _ in range(k):
            v = deflate(op.random_vector(gen))
            lam: float | None = None
            ok = False
            for step in range(max_products):
                hv = op.matvec(v)
                products += 1
                bar.update(1)
                new = float(torch.dot(v, hv))
                res = float(torch.linalg.vector_norm(hv - new * v))
                if lam is not None and abs(new - lam) <= tol * (abs(lam) + 1e-12):
                    lam, ok = new, True
                    break
                lam = new
                if step + 1 < max_products:
                    w = orthogonal(hv)
                    if float(torch.linalg.vector_norm(w)) <= _NULL * max(abs(new), 1e-300):
                        # H v has nothing left outside the pairs found (H v = 0 on the
                        # null space): v is an eigenvector, its eigenvalue ``new`` (0)
                        ok = True
                        break
                    v = w / torch.linalg.vector_norm(w)
            assert lam is not None
            values.append(lam)
            residuals.append(res)
            conv.append(ok)
            found.append(v)
    vecs = [[t.clone() for t in op.to_list(v)] for v in found]
    unverified = getattr(op, "unverified_products", 0) - unverified
    if unverified:  # finite-difference products that failed (or skipped) their check
        conv = [False] * len(conv)
    if not all(conv):
        logger.warning(
            "power_iteration: not converged to tol=%g within %d products per pair",
            tol,
            max_products,
        )
    return EigenResult(
        eigenvalues=torch.tensor(values),
        eigenvectors=vecs,
        products=products,
        residuals=torch.tensor(residuals),
        converged=all(conv),
        converged_each=conv,
        info={
            "method": "power",
            "which": "magnitude",
            "tol": tol,
            "unverified_products": unverified,
        },
    )
