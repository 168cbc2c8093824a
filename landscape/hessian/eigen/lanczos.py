"""Extreme Hessian eigenpairs by Lanczos with full re-orthogonalisation.

Each step costs one Hessian-vector product; the Krylov basis is kept (``steps × dim``
numbers in the operator's dtype, on its device, unless ``basis_device``/``basis_dtype``
say otherwise: memory ``steps · dim · bytes``, e.g. 100 steps of a 25M-parameter model in
float32 take 10 GB) and every new vector is orthogonalised against all of it (twice), so
no spurious copies of converged eigenvalues appear.

Stopping: the run stops when each of the ``k`` wanted Ritz pairs has residual
``‖H v − λ v‖ ≤ tol·|λ|`` (the residual is ``|β_m s_{m,i}|``, free of extra products) or
after ``max_products``. ``criterion="eigenvalue"`` bounds the eigenvalue alone, by the
a-posteriori estimate ``min(r, r²/gap) ≤ tol·|λ|`` (Parlett, *The Symmetric Eigenvalue
Problem*, §11.7; ``gap`` is the distance to the nearest other Ritz value, so the estimate
is optimistic while that Ritz value is still far from its eigenvalue, or while an
eigenvalue just below the wanted ones has no Ritz value near it yet): one product in five
fewer along the benchmark training run for a 1e-3 eigenvalue, every result within 1e-3
from the random start. For ``k > 1`` it is less safe: on the six benchmark checkpoints ×
3 seeds the top 5 took 238 products against the residual rule's 271, but one run stopped
at 2.5e-3 (λ6 = 0.90 λ5 was not yet seen; ``benchmarks/lanczos_stopping.py``).

Repeated eigenvalues: when the Krylov space becomes invariant a fresh random start vector
continues the run in the orthogonal complement, so repeated eigenvalues are found too: for
``k > 1`` the run does not stop at such a breakdown (an invariant Krylov space holds one
vector per distinct eigenvalue) but restarts, and stops once the restarted space's own
extreme pair has converged as well. A single Krylov space cannot see multiplicities it
never broke down on: with no breakdown, a repeated eigenvalue appears once.

Start vector: a Gaussian vector by default, so every eigenvector starts with a comparable
share. ``v0="gradient"`` (the unit gradient plus a unit Gaussian vector) uses that a
trained network's gradient leans towards the top eigenvectors (Gur-Ari et al. 2018),
which saved one product in seven along a training run; but when it leans towards the
*second* one, as when the top two eigenvalues are close, Lanczos settles on λ2 for
several steps and a stopping rule judged then returns λ2: with
``criterion="eigenvalue"`` it returned λ2, 8–9 % low, on 2 of 21 checkpoints of
``benchmarks/lanczos_trajectory.py``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import numpy as np
import torch

from landscape.hessian._checks import check_integers, check_real
from landscape.hessian._krylov import LanczosState, lanczos_run, ritz
from landscape.hessian.eigen._result import EigenResult
from landscape.hessian.operator import HessianOperator

__all__ = ["lanczos_eigen"]

logger = logging.getLogger(__name__)

_WHICH = ("largest", "smallest", "magnitude")
_STARTS = ("gradient", "random")
_CRITERIA = ("residual", "eigenvalue")


def _gaps(values: np.ndarray) -> np.ndarray:
    """Distance of each Ritz value (ascending) to its nearest neighbour (``inf`` if alone)."""
    if values.size < 2:
        return np.full(values.shape, np.inf)
    d = np.diff(values)
    return np.minimum(np.concatenate([[np.inf], d]), np.concatenate([d, [np.inf]]))


def error_estimates(values: np.ndarray, res: np.ndarray, criterion: str) -> np.ndarray:
    """What ``criterion`` compares with ``tol·|λ|`` for each Ritz pair (``values`` ascending).

    ``"residual"``: the residual ``r = ‖Hv − λv‖``; ``"eigenvalue"``: the a-posteriori
    eigenvalue error ``min(r, r²/gap)`` with ``gap`` the distance to the nearest other
    Ritz value.
    """
    if criterion == "residual":
        return res
    return np.minimum(res, res**2 / _gaps(values))


def _wanted(values: np.ndarray, k: int, which: str) -> np.ndarray:
    """Indices of the ``k`` wanted Ritz values (``values`` ascending), in output order."""
    if which == "largest":
        return np.arange(len(values))[::-1][:k]
    if which == "smallest":
        return np.arange(len(values))[:k]
    return np.argsort(-np.abs(values), kind="stable")[:k]


def _start_vector(op: HessianOperator, kind: str, gen: torch.Generator) -> torch.Tensor:
    """A random start vector, or the unit gradient plus a unit random vector."""
    if kind not in _STARTS:
        raise ValueError(f"Invalid v0: {kind!r} (expected one of {_STARTS} or a vector)")
    r = op.random_vector(gen)
    r = r / torch.linalg.vector_norm(r)
    if kind == "random":
        return r
    g = op.to_flat(op.gradient())
    norm = torch.linalg.vector_norm(g)
    if not (torch.isfinite(norm) and norm > 0):
        return r  # at a stationary point (or a non-finite gradient) the random half alone
    return g / norm + r


def _check_arguments(
    op: HessianOperator, k: int, which: str, tol: float, max_products: int, criterion: str
) -> None:
    """Raise ``ValueError`` for a bad option of :func:`lanczos_eigen` (before any product)."""
    check_integers(k=k, max_products=max_products)
    check_real("tol", tol)
    if k < 1:
        raise ValueError(f"Invalid k: {k} (must be >= 1)")
    if k > op.dim:
        raise ValueError(f"Invalid k: {k} exceeds the dimension {op.dim}")
    if which not in _WHICH:
        raise ValueError(f"Invalid which: {which!r} (expected one of {_WHICH})")
    if not tol > 0:
        raise ValueError(f"Invalid tol: {tol} (must be > 0)")
    if max_products < k:
        raise ValueError(f"Invalid max_products: {max_products} (must be >= k={k})")
    if criterion not in _CRITERIA:
        raise ValueError(f"Invalid criterion: {criterion!r} (expected one of {_CRITERIA})")


def _first_vector(
    op: HessianOperator, v0: str | torch.Tensor | list[torch.Tensor] | None, gen: torch.Generator
) -> torch.Tensor:
    """The flat start vector that ``v0`` names or gives (never the zero vector)."""
    if v0 is None or isinstance(v0, str):
        start = _start_vector(op, "random" if v0 is None else v0, gen)
    elif isinstance(v0, list | tuple):
        start = op.to_flat(v0)
    else:
        start = op.to_flat(op.to_list(v0))
    if float(torch.linalg.vector_norm(start)) == 0.0:
        raise ValueError("Invalid v0: the zero vector")
    return start


def _converged(
    values: np.ndarray, res: np.ndarray, idx: np.ndarray, tol: float, criterion: str
) -> bool:
    """Whether the Ritz pairs ``idx`` meet ``tol`` by ``criterion``."""
    err = error_estimates(values, res, criterion)
    return bool(np.all(err[idx] <= tol * np.abs(values[idx])))


def _stopping_rule(
    k: int, which: str, tol: float, criterion: str, dim: int
) -> Callable[[LanczosState], bool]:
    """When a run may stop: the ``k`` wanted pairs converged, and no restart still owed."""

    def stop(state: LanczosState) -> bool:
        if state.steps < min(k + 1, dim):
            return False
        if k > 1 and state.breakdown and state.steps - state.block_starts[-1] > 1:
            # An invariant Krylov space holds one vector per distinct eigenvalue: a wanted
            # eigenvalue's other copies can only show after the restart that follows.
            return False
        if k > 1 and len(state.block_starts) > 1:
            # ... and only once the restarted space has converged its own extreme pair.
            values, _, res = ritz(state, state.block_starts[-1])
            if not _converged(values, res, _wanted(values, 1, which), tol, criterion):
                return False
        values, _, res = ritz(state)
        return _converged(values, res, _wanted(values, k, which), tol, criterion)

    return stop


def _ritz_vectors(
    op: HessianOperator, state: LanczosState, vectors: np.ndarray, idx: np.ndarray
) -> list[list[torch.Tensor]]:
    """The unit-norm Ritz vectors ``idx`` as tensor lists in the operator's dtype and device."""
    s = torch.as_tensor(vectors[:, idx], dtype=state.basis.dtype, device=state.basis.device)
    flat = (state.basis.T @ s).T  # (k, dim)
    flat = flat / torch.linalg.vector_norm(flat, dim=1, keepdim=True)
    flat = flat.to(device=op.device, dtype=op.dtype)
    return [[t.clone() for t in op.to_list(row)] for row in flat]


def _converged_each(
    values: np.ndarray, err: np.ndarray, idx: np.ndarray, k: int, tol: float, unverified: int
) -> list[bool]:
    """Each of the ``k`` pairs converged: within ``tol``, found at all, all products verified."""
    conv = [bool(err[i] <= tol * abs(values[i])) for i in idx]
    if len(idx) < k:
        conv += [False] * (k - len(idx))
    if unverified:  # finite-difference products that failed (or skipped) their check
        conv = [False] * len(conv)
    return conv


def lanczos_eigen(
    op: HessianOperator,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-3,
    max_products: int = 100,
    seed: int = 0,
    *,
    v0: str | torch.Tensor | list[torch.Tensor] | None = "random",
    criterion: str = "residual",
    progress: bool | None = None,
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
) -> EigenResult:
    """Top-``k`` eigenpairs of a Hessian operator by Lanczos with full re-orthogonalisation.

    One Hessian-vector product per step; the Krylov basis (``steps × dim``) is kept and
    every new vector orthogonalised against all of it. The run stops when each wanted
    Ritz pair meets ``tol`` or after ``max_products``; on a closed (invariant) Krylov space
    it restarts from a fresh random vector, so repeated eigenvalues are found too (one
    copy only when the space never closes). The stopping rules, restarts and start
    vectors, and the benchmarks behind the defaults, are in the curvature guide.

    Args:
        op: the Hessian operator.
        k: number of eigenpairs.
        which: ``"largest"`` (algebraic), ``"smallest"`` (algebraic) or ``"magnitude"``.
        tol: relative residual tolerance.
        max_products: cap on Hessian-vector products (a warning is logged when the pairs
            have not converged by then; they are returned flagged ``converged=False``).
            Pairs computed with any finite-difference product that failed or skipped its
            check (``op.unverified_products``) are flagged ``converged=False`` too.
        seed: seed of the Gaussian start vector (and of restart vectors).
        v0: the start vector: ``"random"`` (default; ``None`` too: a Gaussian vector),
            ``"gradient"`` (the unit gradient plus a unit Gaussian vector: fewer products
            along a training run, but it can settle on λ2 when the top two eigenvalues
            are close), or an explicit vector (flat or a tensor list), e.g. the previous
            checkpoint's eigenvector.
        criterion: what ``tol`` bounds. ``"residual"`` (default): ``‖Hv − λv‖ ≤ tol·|λ|``,
            which also makes the eigenvector accurate. ``"eigenvalue"``: the eigenvalue
            alone, by the a-posteriori estimate ``min(r, r²/gap) ≤ tol·|λ|`` (``gap`` the
            distance to the nearest other Ritz value; fewer products, but optimistic
            while that Ritz value is far from its eigenvalue: less safe for ``k > 1``).
        progress: progress bar (``None``: only on a terminal).
        basis_device: where the Krylov basis lives (default the operator's device);
            ``"cpu"`` keeps a large model's basis off the accelerator (two vector copies
            between the devices per step). Memory: ``steps · dim · bytes``, e.g. 100
            steps of a 25M-parameter model in float32 take 10 GB.
        basis_dtype: the basis's dtype (default the operator's).

    Returns:
        An :class:`EigenResult`; eigenvectors are unit-norm tensor lists aligned with
        ``op.params``.

    Raises:
        ValueError: a bad option, or a zero start vector (before any product).
    """
    _check_arguments(op, k, which, tol, max_products, criterion)
    gen = torch.Generator().manual_seed(seed)
    start = _first_vector(op, v0, gen)
    unverified = getattr(op, "unverified_products", 0)
    state = lanczos_run(
        op.matvec,
        start,
        max_products,
        new_start=lambda: op.random_vector(gen),
        stop=_stopping_rule(k, which, tol, criterion, op.dim),
        progress=progress,
        desc=f"lanczos top-{k}",
        basis_device=basis_device,
        basis_dtype=basis_dtype,
    )
    values, vectors, res = ritz(state)
    idx = _wanted(values, min(k, len(values)), which)
    eigvecs = _ritz_vectors(op, state, vectors, idx)
    err = error_estimates(values, res, criterion)
    unverified = getattr(op, "unverified_products", 0) - unverified
    conv = _converged_each(values, err, idx, k, tol, unverified)
    result = EigenResult(
        eigenvalues=torch.as_tensor(values[idx]),
        eigenvectors=eigvecs,
        products=state.products,
        residuals=torch.as_tensor(res[idx]),
        converged=all(conv),
        converged_each=conv,
        info={
            "method": "lanczos",
            "which": which,
            "tol": tol,
            "criterion": criterion,
            "v0": "random" if v0 is None else v0 if isinstance(v0, str) else "vector",
            "steps": state.steps,
            "error_estimates": [float(err[i]) for i in idx],
            "unverified_products": unverified,
        },
    )
    if unverified:
        logger.warning(
            "lanczos_eigen: %d of %d products were unverified finite differences; "
            "the eigenpairs are reported not converged",
            unverified,
            state.products,
        )
    elif not result.converged:
        logger.warning(
            "lanczos_eigen: %d of %d eigenpairs not converged to tol=%g after %d products",
            k - sum(conv),
            k,
            tol,
            state.products,
        )
    return result
