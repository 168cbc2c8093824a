"""CR-SAM: curvature-regularised SAM (Wu et al., AAAI 2024)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._kernels import Coef, get_kernels
from optimizers._validate import check_nonneg

__all__ = ["CRSAM", "crsam_direction"]


def crsam_direction(
    g0: Sequence[Tensor],
    gp: Sequence[Tensor],
    gm: Sequence[Tensor],
    *,
    gamma: Coef,
    beta: Coef,
    foreach: bool | None = None,
) -> list[Tensor]:
    r"""CR-SAM's ``d = g+ + gamma·(g+ + g− − 2 g0) + beta·(g+ − g−)``, written into ``gp``.

    ``gm`` is overwritten too.  Written term by term so that ``g+ = g− = g0`` (``rho=0``)
    gives ``d = g0`` exactly.
    """
    k = get_kernels(foreach, g0)
    diff = k.sub(gp, gm)  # g+ − g−
    k.add_(gm, gp)  # g+ + g−
    k.add_(gm, g0, -2.0)  # g+ + g− − 2 g0
    k.add_(gp, gm, gamma)
    k.add_(gp, diff, beta)
    return list(gp)


class CRSAM(SharpnessAwareOptimizer):
    r"""Curvature-regularised SAM: SAM plus a finite-difference curvature penalty.

    .. math::
        \begin{aligned}
            &g_0 \leftarrow \nabla L(\theta),\quad e \leftarrow \rho\, \hat g_0 \\
            &g_+ \leftarrow \nabla L(\theta + e),\quad g_- \leftarrow \nabla L(\theta - e) \\
            &d \leftarrow g_+ + \gamma\, (g_+ + g_- - 2 g_0) + \beta\, (g_+ - g_-),
                \quad \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    The ``gamma`` term is the gradient of ``L(θ+e) + L(θ−e) − 2L(θ) ≈ ρ² ĝᵀHĝ``, the
    ``beta`` term ≈ ``2ρ·∇‖∇L‖``.  The paper's metric is the normalised Hessian trace
    ``Tr(∇²L) / ‖∇L‖``.  Three passes per step.

    Paper: `CR-SAM: Curvature Regularized Sharpness-Aware Minimization
    <https://arxiv.org/abs/2312.13555>`_.

    .. note::
        Follows the finite-difference form of the project's spec; the passes at ``θ+e``
        and ``θ−e`` are independent but run one after the other.  ``rho=0`` is the base
        optimizer bit for bit (one pass per step).

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho: Radius of the perturbation.
        gamma: Weight of the curvature term, ``>= 0``.
        beta: Weight of the gradient-norm term, ``>= 0``.
        model: The trained module (BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.
    """

    passes = 3
    hyperparameters: ClassVar[dict[str, float]] = {"rho": 0.1, "gamma": 0.1, "beta": 0.01}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.1,
        gamma: float = 0.1,
        beta: float = 0.01,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        gamma = check_nonneg("gamma", gamma)
        beta = check_nonneg("beta", beta)
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "gamma": gamma, "beta": beta},
            model=model,
            foreach=foreach,
            **base_kwargs,
        )

    def _check_hparams(self, group: dict[str, Any]) -> None:
        for name in ("rho", "gamma", "beta"):
            group[name] = check_nonneg(name, group[name])

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(ctx.hparam("rho")):  # g+ = g− = g0: d = g(θ), one (synced) pass
            return (yield Pass(final=True))
        g0 = yield Pass()
        rho = ctx.hparam("rho")  # per tensor of those that got a gradient
        inv = ctx.ascend(g0, rho)
        gp = yield Pass()
        ctx.reset()
        ctx.move(g0, -1.0, rho, inv)
        gm = yield Pass()
        return crsam_direction(
            g0,
            gp,
            gm,
            gamma=ctx.hparam("gamma"),
            beta=ctx.hparam("beta"),
            foreach=ctx.k.name == "foreach",
        )
