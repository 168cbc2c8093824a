"""Eigen-solvers for Hessian operators: Lanczos (default) and power iteration (baseline)."""

from landscape.hessian.eigen._result import EigenResult
from landscape.hessian.eigen.lanczos import lanczos_eigen
from landscape.hessian.eigen.power import power_iteration

__all__ = ["EigenResult", "lanczos_eigen", "power_iteration"]
