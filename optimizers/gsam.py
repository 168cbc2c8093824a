"""GSAM: surrogate-gap guided SAM (Zhuang et al., ICLR 2022)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import EPS, Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._kernels import Coef, get_kernels
from optimizers._validate import check_nonneg, check_range

__all__ = ["GSAM", "gsam_direction"]


def gsam_direction(
    g0: Sequence[Tensor], gp: Sequence[Tensor], *, alpha: Coef, foreach: bool | None = None
) -> list[Tensor]:
    r"""GSAM's direction ``d = gp − alpha · (g0 − (g0·ĝp) ĝp)``, written into ``gp``.

    Args:
        g0: Gradient at θ.
        gp: Gradient at the perturbed point (overwritten with ``d`` and returned).
        alpha: Weight of the ascent along the surrogate gap (float or per tensor).
        foreach: Foreach kernels (default) or single-tensor ones.
    """
    k = get_kernels(foreach, gp)
    inv = 1.0 / (k.norm(gp) + EPS)
    c = k.dot(g0, gp) * inv * inv  # (g0·ĝp)/‖gp‖: g⊥ = g0 − c·gp
    k.add_(gp, gp, alpha, c)
    k.add_(gp, g0, -1.0, alpha)
    return list(gp)


class GSAM(SharpnessAwareOptimizer):
    r"""Surrogate-gap guided SAM: SAM plus a descent on the surrogate gap.

    .. math::
        \begin{aligned}
            &\textbf{input}: \rho_{\max} \ge \rho_{\min} \ge 0,\ \alpha \in [0, 1] \\
            &\quad \rho_t \leftarrow \rho_{\min} + (\rho_{\max} - \rho_{\min})
                \frac{\eta_t - \eta_{\min}}{\eta_{\max} - \eta_{\min}}
                \quad (\eta_t \text{ the learning rate}) \\
            &\quad g_0 \leftarrow \nabla L_B(\theta),\qquad
                g_p \leftarrow \nabla L_B(\theta + \rho_t \hat g_0) \\
            &\quad g_\perp \leftarrow g_0 - (g_0 \cdot \hat g_p)\, \hat g_p \\
            &\quad d \leftarrow g_p - \alpha\, g_\perp,\qquad
                \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `Surrogate Gap Minimization Improves Sharpness-Aware Training
    <https://arxiv.org/abs/2203.08065>`_.  Two passes per step.

    .. note::
        ``rho_t`` follows each parameter group's current ``lr`` linearly, with
        ``lr_max`` defaulting to the group's learning rate at construction and ``lr_min``
        to 0, and stays in ``[rho_min, rho_max]`` when the lr leaves ``[lr_min, lr_max]``
        (the authors' ProportionScheduler extrapolates; their lr never leaves it); with
        the default ``rho_min == rho_max`` it is constant.  ``rho_t = 0`` (``rho_max =
        rho_min = 0``) gives the base optimizer bit for bit, whatever ``alpha``
        (``g⊥ = 0`` exactly; one pass per step).

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho_max: Radius at the largest learning rate.
        rho_min: Radius at the smallest learning rate.
        alpha: Weight of the surrogate-gap term, in ``[0, 1]``.
        lr_max: Learning rate mapped to ``rho_max`` (default: the initial ``lr``).
        lr_min: Learning rate mapped to ``rho_min``.
        model: The trained module (BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.
    """

    passes = 2
    hyperparameters: ClassVar[dict[str, float]] = {"rho_max": 0.05, "rho_min": 0.05, "alpha": 0.4}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho_max: float = 0.05,
        rho_min: float = 0.05,
        alpha: float = 0.4,
        lr_max: float | None = None,
        lr_min: float = 0.0,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho_max = check_nonneg("rho_max", rho_max)
        rho_min = check_range("rho_min", rho_min, 0.0, rho_max)
        alpha = check_range("alpha", alpha, 0.0, 1.0)
        lr_min = check_nonneg("lr_min", lr_min)
        if lr_max is not None:
            lr_max = check_nonneg("lr_max", lr_max)
        defaults = {
            "rho_max": rho_max,
            "rho_min": rho_min,
            "alpha": alpha,
            "lr_max": lr_max,
            "lr_min": lr_min,
        }
        super().__init__(
            params, base_optimizer, defaults, model=model, foreach=foreach, **base_kwargs
        )
        for group in self.param_groups:
            if group["lr_max"] is None:
                group["lr_max"] = float(group["lr"])

    def _check_hparams(self, group: dict[str, Any]) -> None:
        group["rho_max"] = check_nonneg("rho_max", group["rho_max"])
        group["rho_min"] = check_range("rho_min", group["rho_min"], 0.0, group["rho_max"])
        group["alpha"] = check_range("alpha", group["alpha"], 0.0, 1.0)
        group["lr_min"] = check_nonneg("lr_min", group["lr_min"])
        if group["lr_max"] is not None:
            group["lr_max"] = check_nonneg("lr_max", group["lr_max"])
        elif "lr" in group:  # a group added after construction: its own initial lr
            group["lr_max"] = float(group["lr"])

    @staticmethod
    def rho_t(group: dict[str, Any]) -> float:
        """The radius for a parameter group at its current learning rate.

        Linear in ``lr`` between ``(lr_min, rho_min)`` and ``(lr_max, rho_max)`` and held
        there outside: a learning rate above ``lr_max`` (a one-cycle peak above the lr
        given at construction) gives ``rho_max``, one below ``lr_min`` gives ``rho_min``
        (never a larger or a negative radius).
        """
        lo, hi = group["lr_min"], group["lr_max"]
        if hi <= lo:
            return float(group["rho_max"])
        frac = min(max((float(group["lr"]) - lo) / (hi - lo), 0.0), 1.0)
        return float(group["rho_min"] + (group["rho_max"] - group["rho_min"]) * frac)

    def _radii(self, ctx: StepContext) -> list[float]:
        """``rho_t`` per tensor of ``ctx.params``."""
        rho = {id(p): self.rho_t(g) for g in self.param_groups for p in g["params"]}
        return [rho[id(p)] for p in ctx.params]

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(self._radii(ctx)):  # rho_t = 0: gp = g0, g⊥ = 0, d = g(θ); one pass
            return (yield Pass(final=True))
        g0 = yield Pass()
        per = self._radii(ctx)  # the tensors that got a gradient
        ctx.ascend(g0, per[0] if len(set(per)) <= 1 else per)
        gp = yield Pass()
        return gsam_direction(g0, gp, alpha=ctx.hparam("alpha"), foreach=ctx.k.name == "foreach")
