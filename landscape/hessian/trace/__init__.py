"""Trace estimators for Hessian operators: Hutchinson, Hutch++, blocks, fd, Gauss–Newton."""

from landscape.hessian.trace._result import TraceResult
from landscape.hessian.trace.block import block_trace
from landscape.hessian.trace.finite_difference import FiniteDifferenceError, fd_trace
from landscape.hessian.trace.gauss_newton import ggn_trace
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.hessian.trace.hutchpp import hutchpp_trace
from landscape.hessian.trace.select import TRACE_METHODS, estimate_trace

__all__ = [
    "TRACE_METHODS",
    "FiniteDifferenceError",
    "TraceResult",
    "block_trace",
    "estimate_trace",
    "fd_trace",
    "ggn_trace",
    "hutchinson_trace",
    "hutchpp_trace",
]
