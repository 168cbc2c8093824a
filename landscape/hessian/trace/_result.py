"""The result type shared by the trace estimators, and their stopping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TraceResult", "mean_stderr", "reached"]


def mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error (``nan`` with fewer than two samples)."""
    n = samples.shape[0]
    mean = float(samples.mean(axis=0)) if samples.ndim == 1 else samples.mean(axis=0)
    if n < 2:
        return mean, math.nan
    std = samples.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, float(std) if samples.ndim == 1 else std


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
    """

    value: float
    stderr: float
    products: int
    samples: np.ndarray
    blocks: dict[str, tuple[float, float]] | None = None
    converged: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)

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
        }
        if self.blocks is not None:
            out["blocks"] = {k: {"value": v, "stderr": s} for k, (v, s) in self.blocks.items()}
        out.update({k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool)})
        return out
