"""Momentum-SAM: sharpness-aware minimisation at no extra cost (Becker et al., 2024)."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import Pass, SharpnessAwareOptimizer, StepContext
from optimizers._validate import check_nonneg, check_positive

__all__ = ["MomentumSAM"]


class MomentumSAM(SharpnessAwareOptimizer):
    r"""Momentum-SAM: perturb along the SGD momentum buffer, one pass per step.

    .. math::
        \begin{aligned}
            &\textbf{input}: \rho \ge 0,\ \text{SGD with momentum } \mu > 0 \\
            &\quad g \leftarrow \nabla L_B(\theta - \rho\, \hat v) \\
            &\quad v \leftarrow \mu v + g + \lambda \theta,\qquad
                \theta \leftarrow \theta - \eta\, v \quad \text{(the SGD step)}
        \end{aligned}

    Paper: `Momentum-SAM: Sharpness Aware Minimization without Computational Overhead
    <https://arxiv.org/abs/2401.12033>`_.  One pass per step; the good ``rho`` is large
    (3.0 with an SGD ``lr`` of about 0.5).

    The weights are at θ (not at the perturbed point) outside ``step``, so evaluating or
    saving the model between steps sees θ.  In the explicit protocol, call
    :meth:`first_step` *before* the forward pass (it moves to ``θ − rho·v̂``) and
    :meth:`second_step` after ``backward``.

    .. note::
        Before the first step the momentum buffer is empty, so the first step is a plain
        SGD step.  ``rho=0`` is SGD bit for bit.

    Args:
        params: Parameters or parameter groups.
        base_optimizer: ``torch.optim.SGD`` (or a subclass keeping ``momentum_buffer``).
        rho: Radius of the perturbation along the momentum.
        model: The trained module (DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of SGD; ``momentum`` must be ``> 0``.
    """

    passes = 1
    hyperparameters: ClassVar[dict[str, float]] = {"rho": 3.0}
    _perturbs_first = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        rho: float = 3.0,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        check_nonneg("rho", rho)
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.SGD)):
            raise ValueError(
                f"Invalid base_optimizer: {base_optimizer!r} (MomentumSAM reads SGD's "
                "momentum buffer: pass torch.optim.SGD)"
            )
        check_positive("momentum", base_kwargs.get("momentum", 0.0))
        super().__init__(
            params, base_optimizer, {"rho": rho}, model=model, foreach=foreach, **base_kwargs
        )

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        held = [(p, self.state[p].get("momentum_buffer")) for p in ctx.params]
        held = [(p, v) for p, v in held if v is not None]
        if held:
            params, bufs = [p for p, _ in held], [v for _, v in held]
            inv = ctx.inv_norm(bufs)
            ctx.move(bufs, -1.0, ctx.hparam("rho", params), inv, params=params)
        return (yield Pass(final=True))
