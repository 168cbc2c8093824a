"""Hessian curvature: the Hessian as a linear operator and estimators that take it.

- :class:`HessianOperator`: Hessian-vector products (exact double backward with the
  first-order graph reused, forward-over-reverse, or finite differences) over any model,
  loss and data, optionally restricted to a block of parameters.
- Eigenpairs: :func:`lanczos_eigen` (Lanczos, full re-orthogonalisation, residual
  stopping), :func:`power_iteration` (baseline), :func:`layer_eigenvalues` (each layer's
  diagonal block).
- Traces: :func:`hutchinson_trace` (with per-block traces), :func:`hutchpp_trace`,
  :func:`block_trace` (per-layer blocks), :func:`fd_trace` (CR-SAM's finite
  differences), :func:`ggn_trace` (Gauss–Newton part exactly, residual blocks probed);
  :func:`estimate_trace` picks one by name.
- Spectral density: :func:`slq_density` (stochastic Lanczos quadrature).
"""

from landscape.hessian.density import SpectralDensity, slq_density
from landscape.hessian.eigen import (
    EigenResult,
    LayerEigenResult,
    lanczos_eigen,
    layer_eigenvalues,
    power_iteration,
)
from landscape.hessian.operator import FiniteDifferenceWarning, HessianOperator, default_fd_step
from landscape.hessian.trace import (
    TraceResult,
    block_trace,
    estimate_trace,
    fd_trace,
    ggn_trace,
    hutchinson_trace,
    hutchpp_trace,
)

__all__ = [
    "EigenResult",
    "FiniteDifferenceWarning",
    "HessianOperator",
    "LayerEigenResult",
    "SpectralDensity",
    "TraceResult",
    "block_trace",
    "default_fd_step",
    "estimate_trace",
    "fd_trace",
    "ggn_trace",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos_eigen",
    "layer_eigenvalues",
    "power_iteration",
    "slq_density",
]
