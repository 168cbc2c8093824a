"""Spectral density of Hessian operators by stochastic Lanczos quadrature."""

from landscape.hessian.density.slq import SpectralDensity, slq_density

__all__ = ["SpectralDensity", "slq_density"]
