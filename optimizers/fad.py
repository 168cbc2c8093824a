"""FAD: flatness-aware minimisation, zeroth and first order (Zhang et al., ICCV 2023)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._kernels import Coef, get_kernels, one_minus
from optimizers._validate import check_nonneg, check_positive, check_range

__all__ = ["FAD", "fad_direction"]


def _ratio(a: Coef, b: Coef) -> Coef:
    if isinstance(a, float) and isinstance(b, float):
        return a / b
    n = len(a) if not isinstance(a, float) else len(b)  # type: ignore[arg-type]
    la = [a] * n if isinstance(a, float) else a
    lb = [b] * n if isinstance(b, float) else b
    return [x / y for x, y in zip(la, lb)]  # type: ignore[arg-type]


def fad_direction(
    g0: Sequence[Tensor],
    g1: Sequence[Tensor],
    g2: Sequence[Tensor],
    g3: Sequence[Tensor],
    *,
    rho: Coef,
    rho_fd: Coef,
    alpha: Coef,
    beta: Coef,
    foreach: bool | None = None,
) -> list[Tensor]:
    r"""FAD's ``d = (1−alpha)·g0 + alpha·g1 + beta·rho·(g3 − g2)/rho_fd``, written into ``g3``."""
    k = get_kernels(foreach, g0)
    k.add_(g3, g2, -1.0)
    k.mul_(g3, beta, _ratio(rho, rho_fd))
    k.add_(g3, g0, one_minus(alpha))  # type: ignore[arg-type]
    k.add_(g3, g1, alpha)
    return list(g3)


class FAD(SharpnessAwareOptimizer):
    r"""Flatness-aware minimisation of zeroth- and first-order flatness together.

    Minimises ``L(θ) + alpha·R⁰_ρ(θ) + beta·R¹_ρ(θ)`` with
    ``R⁰_ρ = max_{‖ε‖≤ρ} L(θ+ε) − L(θ)`` and ``R¹_ρ = ρ · max_{‖ε‖≤ρ} ‖∇L(θ+ε)‖``:

    .. math::
        \begin{aligned}
            &g_0 \leftarrow \nabla L(\theta),\quad
                g_1 \leftarrow \nabla L(\theta + \rho\, \hat g_0) \\
            &h_v \leftarrow \big(\nabla L(\theta + \rho_{fd}\, \hat g_0) - g_0\big) / \rho_{fd}
                \quad (= H \hat g_0;\ \text{reuses } g_1 \text{ when } \rho_{fd} = \rho) \\
            &\theta_2 \leftarrow \theta + \rho\, \hat h_v,\quad
                g_2 \leftarrow \nabla L(\theta_2),\quad
                g_3 \leftarrow \nabla L(\theta_2 + \rho_{fd}\, \hat g_2) \\
            &d \leftarrow (1-\alpha)\, g_0 + \alpha\, g_1 + \beta \rho\, (g_3 - g_2) / \rho_{fd},
                \quad \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `FAD: Flatness-Aware Minimization for Domain Generalization
    <https://arxiv.org/abs/2307.11108>`_.

    .. note::
        Reconstructed from the paper's stated objective (there is no public code).
        Four passes when ``rho_fd == rho``; five otherwise, which includes the defaults
        (``rho=0.05``, ``rho_fd=0.01``): the instance's :attr:`passes` says which.
        ``rho=0`` is the base optimizer bit for bit, whatever ``alpha`` and ``beta``
        (one pass per step).

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho: Radius of both flatness terms.
        rho_fd: Finite-difference step of the Hessian-vector products, ``> 0``.
        alpha: Weight of the zeroth-order term, in ``[0, 1]``.
        beta: Weight of the first-order term, ``>= 0``.
        model: The trained module (BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.
    """

    passes = 4
    hyperparameters: ClassVar[dict[str, float]] = {
        "rho": 0.05,
        "rho_fd": 0.01,
        "alpha": 1.0,
        "beta": 0.1,
    }

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.05,
        rho_fd: float = 0.01,
        alpha: float = 1.0,
        beta: float = 0.1,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        rho_fd = check_positive("rho_fd", rho_fd)
        alpha = check_range("alpha", alpha, 0.0, 1.0)
        beta = check_nonneg("beta", beta)
        defaults = {"rho": rho, "rho_fd": rho_fd, "alpha": alpha, "beta": beta}
        super().__init__(
            params, base_optimizer, defaults, model=model, foreach=foreach, **base_kwargs
        )
        self.passes = 4 if rho_fd == rho else 5

    def _check_hparams(self, group: dict[str, Any]) -> None:
        group["rho"] = check_nonneg("rho", group["rho"])
        group["rho_fd"] = check_positive("rho_fd", group["rho_fd"])
        group["alpha"] = check_range("alpha", group["alpha"], 0.0, 1.0)
        group["beta"] = check_nonneg("beta", group["beta"])

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(ctx.hparam("rho")):  # g1 = g2 = g0, no beta term: d = g(θ), one pass
            return (yield Pass(final=True))
        g0 = yield Pass()
        rho, rho_fd = ctx.hparam("rho"), ctx.hparam("rho_fd")  # tensors with a gradient
        inv0 = ctx.ascend(g0, rho)
        g1 = yield Pass()
        if rho_fd == rho:
            hv = ctx.k.sub(g1, g0)
        else:
            ctx.reset()
            ctx.move(g0, rho_fd, inv0)
            hv = yield Pass()
            ctx.k.add_(hv, g0, -1.0)
        if not isinstance(rho_fd, float):  # per group: hv = (g(θ + rho_fd·ĝ0) − g0)/rho_fd
            ctx.k.mul_(hv, [1.0 / v for v in rho_fd])  # type: ignore[union-attr]
        ctx.reset()
        ctx.ascend(hv, rho)  # only ĥv matters: one 1/rho_fd scale drops out
        g2 = yield Pass()
        ctx.ascend(g2, rho_fd)
        g3 = yield Pass()
        return fad_direction(
            g0,
            g1,
            g2,
            g3,
            rho=rho,
            rho_fd=rho_fd,
            alpha=ctx.hparam("alpha"),
            beta=ctx.hparam("beta"),
            foreach=ctx.k.name == "foreach",
        )
