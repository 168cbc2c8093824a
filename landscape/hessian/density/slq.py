"""Spectral density of the Hessian by stochastic Lanczos quadrature (Ghorbani et al. 2019)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import lanczos_run, ritz
from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace._result import TraceResult, mean_stderr

__all__ = ["NEGATIVE_RTOL", "SpectralDensity", "slq_density"]

NEGATIVE_RTOL = 1e-4
"""Ritz values within this fraction of the largest ``|λ|`` count as zero, not negative."""


@dataclass
class SpectralDensity:
    """A smoothed eigenvalue density ``ρ(t) = Σ_i w_i N(t; λ_i, σ²)``.

    Attributes:
        grid: ``(G,)`` points ``t``.
        density: ``(G,)`` values of ``ρ`` (integrates to ~1 over the grid).
        nodes: quadrature nodes (Ritz values) of all runs, concatenated.
        weights: their weights (squared first components / number of runs; sum 1).
        lambda_min: smallest Ritz value over the runs (estimate of ``λ_min``).
        lambda_max: largest Ritz value over the runs (estimate of ``λ_max``).
        sigma: the Gaussian broadening.
        products: Hessian-vector products used.
        info: run details.
    """

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    lambda_min: float
    lambda_max: float
    sigma: float
    products: int
    info: dict[str, Any] = field(default_factory=dict)

    def evaluate(self, t: np.ndarray | float) -> np.ndarray:
        """The broadened density at points ``t``."""
        t = np.atleast_1d(np.asarray(t, dtype=np.float64))
        z = (t[:, None] - self.nodes[None, :]) / self.sigma
        return (np.exp(-0.5 * z**2) @ self.weights) / (self.sigma * math.sqrt(2 * math.pi))

    def negative_mass(self, rtol: float = NEGATIVE_RTOL) -> float:
        """The quadrature weight of the eigenvalues below ``−rtol·max|λ|``.

        Ritz values at rounding level (``≈ −1e-5`` against ``λ_max ≈ 1``) are zero
        eigenvalues, not negative curvature.
        """
        return negative_mass(self.nodes, self.weights, rtol)

    def trace_estimate(self) -> TraceResult:
        """``Tr(H)`` from the runs: ``d·q₀ᵀHq₀ = vᵀHv`` of each Rademacher start ``v``.

        Hutchinson's estimate with one probe per run; its standard error has
        ``num_runs − 1`` degrees of freedom (see :meth:`TraceResult.interval`).
        """
        runs = np.asarray(self.info.get("run_traces", []), dtype=np.float64)
        value, stderr = mean_stderr(runs)
        return TraceResult(
            value=value,
            stderr=stderr,
            products=self.products,
            samples=runs,
            info={"method": "slq", "num_runs": len(runs)},
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form."""
        return {
            "grid": self.grid.tolist(),
            "density": self.density.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
            "lambda_min": float(self.lambda_min),
            "lambda_max": float(self.lambda_max),
            "sigma": float(self.sigma),
            "products": int(self.products),
            **self.info,
        }


def negative_mass(nodes: np.ndarray, weights: np.ndarray, rtol: float = NEGATIVE_RTOL) -> float:
    """Weight of the ``nodes`` below ``−rtol·max|nodes|`` (rounding-level ones are zero)."""
    nodes, weights = np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64)
    if nodes.size == 0:
        return 0.0
    return float(weights[nodes < -rtol * float(np.abs(nodes).max())].sum())


def slq_density(
    op: HessianOperator,
    num_runs: int = 5,
    num_steps: int = 80,
    seed: int = 0,
    *,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    grid_size: int = 1000,
    progress: bool | None = None,
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
) -> SpectralDensity:
    """Stochastic Lanczos quadrature: ``num_runs`` Lanczos runs of ``num_steps`` products.

    Each run starts from a random unit Rademacher vector ``v`` and its tridiagonal
    ``T = S Θ Sᵀ`` gives the Gauss quadrature ``vᵀ f(H) v ≈ Σ_i S_{0i}² f(θ_i)``; the
    density is that quadrature for the Gaussian kernel, averaged over runs. The extreme
    Ritz values of the same runs estimate ``λ_min`` and ``λ_max``.

    Args:
        op: the Hessian operator.
        num_runs: independent runs averaged.
        num_steps: Lanczos steps (products) per run.
        seed: seed of the start vectors.
        sigma: Gaussian broadening; default ``sigma_rel · (λ_max − λ_min)``.
        sigma_rel: broadening relative to the spectral range when ``sigma`` is not given.
        grid_size: number of grid points, spanning ``[λ_min − 5σ, λ_max + 5σ]``.
        progress: progress bar (``None``: only on a terminal).
        basis_device: where each run's Krylov basis (``num_steps × dim``) lives (default
            the operator's device); ``"cpu"`` keeps it off the accelerator, as in
            :func:`~landscape.hessian.lanczos_eigen`.
        basis_dtype: the basis's dtype (default the operator's).

    Returns:
        A :class:`SpectralDensity` on the grid, with the runs' nodes and weights.

    Raises:
        ValueError: a bad option (before any product).
    """
    check_integers(num_runs=num_runs, num_steps=num_steps, grid_size=grid_size)
    if num_runs < 1:
        raise ValueError(f"Invalid num_runs: {num_runs} (must be >= 1)")
    if num_steps < 1:
        raise ValueError(f"Invalid num_steps: {num_steps} (must be >= 1)")
    if sigma is not None and not sigma > 0:
        raise ValueError(f"Invalid sigma: {sigma} (must be > 0)")
    if not sigma_rel > 0:
        raise ValueError(f"Invalid sigma_rel: {sigma_rel} (must be > 0)")
    if grid_size < 2:
        raise ValueError(f"Invalid grid_size: {grid_size} (must be >= 2)")
    gen = torch.Generator().manual_seed(seed)
    all_nodes, all_weights, run_traces = [], [], []
    products = 0
    for r in range(num_runs):
        state = lanczos_run(
            op.matvec,
            op.random_vector(gen, "rademacher"),
            num_steps,
            progress=progress,
            desc=f"slq run {r + 1}/{num_runs}",
            basis_device=basis_device,
            basis_dtype=basis_dtype,
        )
        products += state.products
        values, vectors, _ = ritz(state)
        all_nodes.append(values)
        all_weights.append(vectors[0, :] ** 2 / num_runs)
        run_traces.append(op.dim * state.alphas[0])
    nodes = np.concatenate(all_nodes)
    weights = np.concatenate(all_weights)
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        span = hi - lo
        sigma = sigma_rel * span if span > 0 else 1e-3 * max(abs(hi), 1.0)
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size)
    out = SpectralDensity(
        grid=grid,
        density=np.zeros_like(grid),
        nodes=nodes,
        weights=weights,
        lambda_min=lo,
        lambda_max=hi,
        sigma=float(sigma),
        products=products,
        info={
            "num_runs": num_runs,
            "num_steps": num_steps,
            "method": "slq",
            "run_traces": [float(t) for t in run_traces],
        },
    )
    out.density = out.evaluate(grid)
    return out
