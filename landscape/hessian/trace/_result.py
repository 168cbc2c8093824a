"""The result type shared by the trace estimators, and their stopping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TraceResult", "mean_stderr", "reached", "satterthwaite"]


def mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error (``nan`` with fewer than two samples)."""
    n = samples.shape[0]
    mean = float(samples.mean(axis=0)) if samples.ndim == 1 else samples.mean(axis=0)
    if n < 2:
        return mean, math.nan
    std = samples.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, float(std) if samples.ndim == 1 else std


def satterthwaite(parts: list[tuple[float, float]]) -> float:
    """Degrees of freedom of a sum of independent estimates, from ``(stderr, dof)`` each.

    Welch–Satterthwaite: ``(Σ s²)² / Σ s⁴/ν``; exact parts (``s = 0``) do not count, and
    ``inf`` when every part is exact.
    """
    live = [(s, nu) for s, nu in parts if s > 0]
    if not live:
        return math.inf
    num = sum(s**2 for s, _ in live) ** 2
    den = sum(s**4 / nu for s, nu in live if math.isfinite(nu))
    return num / den if den > 0 else math.inf


def reached(samples: list[float], target_rel_stderr: float | None, min_samples: int) -> bool:
    """Whether the standard error of the mean is within ``target_rel_stderr·|mean|``."""
    if target_rel_stderr is None or len(samples) < max(min_samples, 2):
        return False
    mean, se = mean_stderr(np.asarray(samples))
    return se <= target_rel_stderr * abs(mean)


@dataclass
class TraceResult:
    """A stochastic trace estimate.

    Attributes:
        value: the estimate of ``Tr(H)``.
        stderr: its standard error (from the spread of the stochastic part).
        products: Hessian-vector products used (finite-difference trace: probes).
        samples: the per-probe estimates of the stochastic part.
        blocks: per-parameter-tensor ``{name: (value, stderr)}`` when requested.
        converged: whether the target relative standard error was reached (``None``
            when no target was set).
        info: method details.
        dof: degrees of freedom of ``stderr`` (``None``: one less than the number of
            samples; ``inf`` for an exact value), for :meth:`interval`.
    """

    value: float
    stderr: float
    products: int
    samples: np.ndarray
    blocks: dict[str, tuple[float, float]] | None = None
    converged: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)
    dof: float | None = None

    @property
    def degrees_of_freedom(self) -> float:
        """``dof``, or one less than the number of samples when it was not set."""
        if self.dof is not None:
            return float(self.dof)
        return float(len(self.samples) - 1) if len(self.samples) > 1 else math.nan

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """The ``level`` confidence interval ``value ± t_{ν}·stderr`` (Student's ``t``).

        With few probes (a block traced with three, a handful of SLQ runs) the normal
        quantile 1.96 gives far less than the nominal coverage; ``ν`` is
        :attr:`degrees_of_freedom`.
        """
        if not 0 < level < 1:
            raise ValueError(f"Invalid level: {level} (must be in (0, 1))")
        if self.stderr == 0:
            return self.value, self.value
        nu = self.degrees_of_freedom
        if not (math.isfinite(self.stderr) and nu > 0):
            return math.nan, math.nan
        from scipy.stats import norm, t

        q = float(norm.ppf(0.5 + level / 2) if math.isinf(nu) else t.ppf(0.5 + level / 2, nu))
        return self.value - q * self.stderr, self.value + q * self.stderr

    @property
    def rel_stderr(self) -> float:
        """``stderr / |value|``."""
        return self.stderr / abs(self.value) if self.value != 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary."""
        out: dict[str, Any] = {
            "value": float(self.value),
            "stderr": float(self.stderr),
            "products": int(self.products),
            "num_samples": len(self.samples),
            "converged": self.converged,
            "dof": self.degrees_of_freedom if math.isfinite(self.degrees_of_freedom) else None,
        }
        if self.blocks is not None:
            out["blocks"] = {k: {"value": v, "stderr": s} for k, (v, s) in self.blocks.items()}
        out.update({k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool)})
        return out
