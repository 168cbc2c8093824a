"""GAM: gradient norm aware minimisation (Zhang et al., CVPR 2023)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import EPS, Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._kernels import Coef, get_kernels, one_minus
from optimizers._validate import check_choice, check_nonneg, check_range

__all__ = ["GAM", "gam_direction"]

H_MINUS = ("authors", "paper")
"""GAM's ``h−``: the authors' code ``g0 + (1−beta)·g2`` or the paper's ``beta·g0 + (1−beta)·g2``."""


def gam_direction(
    g0: Sequence[Tensor],
    g1: Sequence[Tensor],
    g2: Sequence[Tensor],
    g3: Sequence[Tensor],
    *,
    alpha: Coef,
    beta: Coef,
    gamma: Coef,
    h_minus: str = "authors",
    foreach: bool | None = None,
) -> list[Tensor]:
    r"""GAM's direction from its four gradients; overwrites ``g2`` and ``g3``, returns ``d``.

    ``h+ = alpha·g1 + (1−alpha)·g3``, ``h− = g0 + (1−beta)·g2`` (``h_minus="authors"``,
    their code) or ``h− = beta·g0 + (1−beta)·g2`` (``h_minus="paper"``),
    ``h−⊥ = h− − (h−·ĥ+) ĥ+`` and ``d = h+ − gamma·h−⊥``.
    """
    check_choice("h_minus", h_minus, H_MINUS)
    k = get_kernels(foreach, g0)
    hp, hm = g3, g2
    k.mul_(hp, one_minus(alpha))  # type: ignore[arg-type]
    k.add_(hp, g1, alpha)
    k.mul_(hm, one_minus(beta))  # type: ignore[arg-type]
    k.add_(hm, g0, 1.0 if h_minus == "authors" else beta)
    inv = 1.0 / (k.norm(hp) + EPS)
    c = k.dot(hm, hp) * inv * inv
    k.add_(hp, hp, gamma, c)
    k.add_(hp, hm, -1.0, gamma)
    return list(hp)


class GAM(SharpnessAwareOptimizer):
    r"""Gradient norm aware minimisation: penalise first-order flatness.

    First-order flatness ``R¹_ρ(θ) = ρ · max_{‖ε‖≤ρ} ‖∇L(θ+ε)‖``; GAM descends on the SAM
    loss and on ``R¹`` together (the accelerated algorithm, four passes):

    .. math::
        \begin{aligned}
            &g_0 \leftarrow \nabla L(\theta),\quad
                \theta_1 \leftarrow \theta + \rho_{fd}\, \hat g_0,\quad
                g_1 \leftarrow \nabla L(\theta_1) \\
            &h_0 \leftarrow g_1 - g_0,\quad
                \theta_2 \leftarrow \theta + \rho\, \hat h_0,\quad
                g_2 \leftarrow \nabla L(\theta_2) \\
            &\theta_3 \leftarrow \theta_2 + \rho_{fd}\, \hat g_2,\quad
                g_3 \leftarrow \nabla L(\theta_3) \\
            &h_+ \leftarrow \alpha g_1 + (1-\alpha) g_3,\quad
                h_- \leftarrow g_0 + (1-\beta) g_2 \\
            &h_-^\perp \leftarrow h_- - (h_- \cdot \hat h_+)\, \hat h_+,\quad
                d \leftarrow h_+ - \gamma\, h_-^\perp,\quad
                \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `Gradient Norm Aware Minimization Seeks First-Order Flatness and Improves
    Generalization <https://arxiv.org/abs/2303.03108>`_.

    ``h−`` (``h_minus``):

    - ``"authors"`` (default, the authors' code, xxgege/GAM ``gam/gam.py``, which
      produced the paper's numbers): ``h− = g0 + (1−beta)·g2``; their ``grad_beta_0``
      (the paper's ``beta``) enters only through ``grad_beta_2 = 1 − beta``.
    - ``"paper"`` (the paper's Algorithm): ``h− = beta·g0 + (1−beta)·g2``.

    .. note::
        ``rho = rho_fd = 0`` is the base optimizer bit for bit, whatever ``alpha``,
        ``beta`` and ``gamma`` (all four gradients are ``g0``; one pass per step).  The authors'
        ``rho`` is their ``grad_norm_rho``, ``rho_fd`` their ``grad_rho``, ``alpha`` their
        ``grad_beta_1``; the defaults are theirs for CIFAR-10.

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho: Radius of the ascent on the gradient norm.
        rho_fd: Finite-difference radius (the zeroth-order/SAM point).
        alpha: Weight of ``g1`` in ``h+``, in ``[0, 1]``.
        beta: ``1 − beta`` weighs ``g2`` in ``h−`` (and ``beta`` weighs ``g0`` with
            ``h_minus="paper"``), in ``[0, 1]``.
        gamma: Weight of the orthogonal correction, ``>= 0``.
        h_minus: ``"authors"`` or ``"paper"``, see above.
        model: The trained module (BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.
    """

    passes = 4
    hyperparameters: ClassVar[dict[str, Any]] = {
        "rho": 0.2,
        "rho_fd": 0.02,
        "alpha": 0.6,
        "beta": 0.5,
        "gamma": 0.03,
        "h_minus": "authors",
    }
    _shared = ("h_minus",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.2,
        rho_fd: float = 0.02,
        alpha: float = 0.6,
        beta: float = 0.5,
        gamma: float = 0.03,
        h_minus: str = "authors",
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        rho_fd = check_nonneg("rho_fd", rho_fd)
        alpha = check_range("alpha", alpha, 0.0, 1.0)
        beta = check_range("beta", beta, 0.0, 1.0)
        gamma = check_nonneg("gamma", gamma)
        check_choice("h_minus", h_minus, H_MINUS)
        defaults = {
            "rho": rho,
            "rho_fd": rho_fd,
            "alpha": alpha,
            "beta": beta,
            "gamma": gamma,
            "h_minus": h_minus,
        }
        super().__init__(
            params, base_optimizer, defaults, model=model, foreach=foreach, **base_kwargs
        )

    def _check_hparams(self, group: dict[str, Any]) -> None:
        for name in ("rho", "rho_fd", "gamma"):
            group[name] = check_nonneg(name, group[name])
        for name in ("alpha", "beta"):
            group[name] = check_range(name, group[name], 0.0, 1.0)
        check_choice("h_minus", group["h_minus"], H_MINUS)

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(ctx.hparam("rho_fd")) and is_zero(ctx.hparam("rho")):
            return (yield Pass(final=True))  # g1 = g2 = g3 = g0: d = g(θ), one pass
        g0 = yield Pass()
        rho_fd = ctx.hparam("rho_fd")  # per tensor of those that got a gradient
        ctx.ascend(g0, rho_fd)
        g1 = yield Pass()
        ctx.reset()
        ctx.ascend(ctx.k.sub(g1, g0), ctx.hparam("rho"))
        g2 = yield Pass()
        ctx.ascend(g2, rho_fd)
        g3 = yield Pass()
        return gam_direction(
            g0,
            g1,
            g2,
            g3,
            alpha=ctx.hparam("alpha"),
            beta=ctx.hparam("beta"),
            gamma=ctx.hparam("gamma"),
            h_minus=ctx.option("h_minus"),
            foreach=ctx.k.name == "foreach",
        )
