"""SAM: sharpness-aware minimisation (Foret et al., ICLR 2021)."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._validate import check_nonneg

__all__ = ["SAM"]


class SAM(SharpnessAwareOptimizer):
    r"""Sharpness-aware minimisation: step with the gradient at the worst nearby point.

    .. math::
        \begin{aligned}
            &\textbf{input}: \rho \ge 0,\ \text{base optimizer},\ \theta_0 \\
            &\textbf{for}\ t = 1, 2, \ldots \\
            &\quad g_0 \leftarrow \nabla L_B(\theta) \\
            &\quad e \leftarrow \rho\, g_0 / (\lVert g_0 \rVert_2 + 10^{-12}) \\
            &\quad d \leftarrow \nabla L_B(\theta + e)
                \quad \text{(BatchNorm statistics frozen)} \\
            &\quad \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `Sharpness-Aware Minimization for Efficiently Improving Generalization
    <https://arxiv.org/abs/2010.01412>`_.  Two passes per step.

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class, e.g. ``torch.optim.SGD``.
        rho: Radius of the neighbourhood (``rho=0`` is the base optimizer, bit for bit:
            one pass per step, the gradient at θ).
        model: The trained module (freezes BatchNorm statistics in the second pass; DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer (``lr``, ``momentum``, ...).

    Example:
        >>> opt = SAM(model.parameters(), torch.optim.SGD, rho=0.05, model=model,
        ...           lr=0.1, momentum=0.9)
        >>> loss = opt.step(closure)  # closure: zero_grad, forward, backward, return loss
    """

    passes = 2
    hyperparameters: ClassVar[dict[str, float]] = {"rho": 0.05}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.05,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        super().__init__(
            params, base_optimizer, {"rho": rho}, model=model, foreach=foreach, **base_kwargs
        )

    def _check_hparams(self, group: dict[str, Any]) -> None:
        group["rho"] = check_nonneg("rho", group["rho"])

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(ctx.hparam("rho")):  # no perturbation: d = g(θ), one (synced) pass
            return (yield Pass(final=True))
        g0 = yield Pass()
        ctx.ascend(g0, ctx.hparam("rho"))  # (after the first pass: the tensors with a gradient)
        return (yield Pass(final=True))
