"""Eigen-solvers for Hessian operators: Lanczos (default), power iteration (baseline), per layer."""

from landscape.hessian.eigen._result import EigenResult
from landscape.hessian.eigen.blocks import LayerEigenResult, layer_eigenvalues
from landscape.hessian.eigen.lanczos import lanczos_eigen
from landscape.hessian.eigen.power import power_iteration

__all__ = [
    "EigenResult",
    "LayerEigenResult",
    "lanczos_eigen",
    "layer_eigenvalues",
    "power_iteration",
]
