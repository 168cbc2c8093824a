"""The result type shared by the trace estimators, and their stopping rule."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

__all__ = ["TraceResult", "mean_cumulant3", "mean_stderr", "reached", "satterthwaite"]


def mean_stderr(samples: np.ndarray) -> tuple[float, float]:
    """Sample mean and its standard error (``nan`` with fewer than two samples)."""
    n = samples.shape[0]
    mean = float(samples.mean(axis=0)) if samples.ndim == 1 else samples.mean(axis=0)
    if n < 2:
        return mean, math.nan
    std = samples.std(axis=0, ddof=1) / math.sqrt(n)
    return mean, float(std) if samples.ndim == 1 else std


def mean_cumulant3(samples: np.ndarray) -> float:
    """Unbiased estimate of the third cumulant of the sample mean, ``k₃/n²``.

    ``k₃ = n Σ(x − x̄)³ / ((n−1)(n−2))`` is Fisher's k-statistic (unbiased for the third
    cumulant of one sample); the mean of ``n`` independent samples has third cumulant
    ``κ₃/n²``. Zero with fewer than three samples (no estimate: the interval is then
    Student's ``t``).
    """
    samples = np.asarray(samples, dtype=np.float64)
    n = samples.shape[0]
    if n < 3:
        return 0.0
    dev = samples - samples.mean()
    k3 = n * float(np.sum(dev**3)) / ((n - 1) * (n - 2))
    return k3 / n**2


def _hall_inverse(y: float, kappa: float) -> float:
    """``g⁻¹(y)`` for Hall's (1992) transformation ``g(x) = ((1 + κx/3)³ − 1)/κ + κ/6``."""
    if abs(kappa) < 1e-9:
        return y
    return 3.0 * (float(np.cbrt(1.0 + kappa * (y - kappa / 6.0))) - 1.0) / kappa


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
        cumulant3: estimated third cumulant of ``value``'s sampling distribution
            (``None``: :func:`mean_cumulant3` of ``samples`` when ``dof`` is ``None``,
            i.e. when ``samples`` are the per-probe values averaged into ``value``;
            otherwise zero), for :meth:`interval`.
    """

    value: float
    stderr: float
    products: int
    samples: np.ndarray
    blocks: dict[str, tuple[float, float]] | None = None
    converged: bool | None = None
    info: dict[str, Any] = field(default_factory=dict)
    dof: float | None = None
    cumulant3: float | None = None

    @property
    def degrees_of_freedom(self) -> float:
        """``dof``, or one less than the number of samples when it was not set."""
        if self.dof is not None:
            return float(self.dof)
        return float(len(self.samples) - 1) if len(self.samples) > 1 else math.nan

    @property
    def third_cumulant(self) -> float:
        """The third cumulant of ``value``: ``cumulant3`` when set.

        Otherwise :func:`mean_cumulant3` of the samples when ``dof`` was not set either
        (the samples are then the per-probe values), else zero.
        """
        if self.cumulant3 is not None:
            return float(self.cumulant3)
        return mean_cumulant3(self.samples) if self.dof is None else 0.0

    @property
    def skewness(self) -> float:
        """Estimated skewness of ``value``'s sampling distribution: ``κ₃ / stderr³``."""
        if not (math.isfinite(self.stderr) and self.stderr > 0):
            return 0.0
        kappa = self.third_cumulant / self.stderr**3
        return kappa if math.isfinite(kappa) else 0.0

    def interval(self, level: float = 0.95, *, skew: bool = True) -> tuple[float, float]:
        """The ``level`` confidence interval for ``Tr(H)``: skewness-corrected Student ``t``.

        A probe's ``vᵀHv`` is skewed when a few eigenvalues dominate ``H`` (a trained
        network: skewness 1.7 on a trained ReLU MLP, ``2√2`` for one eigenvalue), and the
        mean of few such probes makes the symmetric ``value ± t·stderr`` too short on the
        side of the long tail: a low mean comes with a low spread. With ``n`` probes its
        coverage error is of order ``n^{-1/2}``; the interval here removes that term by
        Hall's (1992) monotone transformation of the studentised estimate
        ``T = (value − Tr H)/stderr``, the Edgeworth correction of Johnson (1978) made
        invertible: with ``κ`` the estimated skewness of ``value`` (:attr:`skewness`,
        from the unbiased third cumulant of the probes, summed over independent blocks),
        ``g(T) = T + κT²/3 + κ²T³/27 + κ/6`` is ``t``-distributed to order ``1/n``, so
        ``Tr H ∈ [value − stderr·g⁻¹(q), value − stderr·g⁻¹(−q)]`` with ``q`` the
        ``t_ν`` quantile (``ν`` = :attr:`degrees_of_freedom`: Welch–Satterthwaite for
        block and GGN sums, one less than the number of probes otherwise). With ``κ = 0``
        (symmetric probes, fewer than three probes, or ``skew=False``) it is the plain
        ``value ± t_ν·stderr``; as probes grow ``κ → 0`` like ``n^{-1/2}`` and the interval
        tends to it.

        Assumptions: independent, identically distributed probes per block (blocks
        independent) with finite third moment, and an unbiased estimator (the
        finite-difference trace only where every probe is verified). With very few probes
        (≤ 5) of a strongly skewed distribution the sample skewness is itself too small
        on average and the coverage stays below nominal (20,000 simulated estimates of 5
        probes: 93.0 % on a trained ReLU MLP, where the symmetric ``t`` gives 91.6 %;
        90.8 % for χ²₁ probes, ``t`` 82.7 %); use more probes where the interval matters.

        Args:
            level: the confidence level, in ``(0, 1)``.
            skew: apply the skewness correction (``False``: the symmetric ``t`` interval).

        Returns:
            ``(low, high)``; ``(value, value)`` for an exact value, ``nan`` without a
            standard error.
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
        kappa = self.skewness if skew else 0.0
        low = self.value - self.stderr * _hall_inverse(q, kappa)
        high = self.value - self.stderr * _hall_inverse(-q, kappa)
        return low, high

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
