"""Momentum-SAM: sharpness-aware minimisation at no extra cost (Becker et al., 2024)."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import Pass, SharpnessAwareOptimizer, StepContext
from optimizers._kernels import Coef
from optimizers._validate import check_choice, check_nonneg, check_positive, describe

__all__ = ["MomentumSAM"]

DECAY_AT = ("perturbed", "theta")
"""Where Momentum-SAM takes the weight decay: at ``θ − rho·v̂`` or at θ."""


class MomentumSAM(SharpnessAwareOptimizer):
    r"""Momentum-SAM: perturb along the SGD momentum buffer, one pass per step.

    .. math::
        \begin{aligned}
            &\textbf{input}: \rho \ge 0,\ \text{SGD with momentum } \mu > 0,
                \text{ weight decay } \lambda \\
            &\quad \tilde\theta \leftarrow \theta - \rho\, \hat v,\qquad
                g \leftarrow \nabla L_B(\tilde\theta) \\
            &\quad v \leftarrow \mu v + g + \lambda \tilde\theta,\qquad
                \theta \leftarrow \theta - \eta\, v \quad \text{(the SGD step)}
        \end{aligned}

    Paper: `Momentum-SAM: Sharpness Aware Minimization without Computational Overhead
    <https://arxiv.org/abs/2401.12033>`_.  One pass per step.  The default ``rho = 3`` is
    the authors' for ResNets on CIFAR (with an SGD ``lr`` of about 0.5); it is too large
    for small models: the demo's MLP on digits trains with ``rho = 0.3`` and not with 3.

    Where the weight decay is taken (``decay_at``):

    - ``"perturbed"`` (default, the authors' code, MarlonBecker/MSAM
      ``optimizer/msam.py``): SGD's weight decay ``λ θ̃`` at the perturbed point
      ``θ̃ = θ − rho·v̂``, where the gradient is taken (their weights rest at θ̃ between
      steps).  The base SGD adds ``λ θ``; this class adds ``λ (θ̃ − θ) = −λ rho v̂`` to the
      gradient, so the step is the authors'.
    - ``"theta"``: the base SGD's weight decay ``λ θ`` at the unperturbed weights (decay
      and gradient at different points).

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
        decay_at: ``"perturbed"`` (the authors') or ``"theta"``, see above.
        model: The trained module (DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of SGD; ``momentum`` must be ``> 0``.
    """

    passes = 1
    hyperparameters: ClassVar[dict[str, Any]] = {"rho": 3.0, "decay_at": "perturbed"}
    _perturbs_first = True
    _shared = ("decay_at",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer] = torch.optim.SGD,
        *,
        rho: float = 3.0,
        decay_at: str = "perturbed",
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        check_choice("decay_at", decay_at, DECAY_AT)
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.SGD)):
            raise ValueError(
                f"Invalid base_optimizer: {describe(base_optimizer)} (MomentumSAM reads SGD's "
                "momentum buffer: pass torch.optim.SGD)"
            )
        check_positive("momentum", base_kwargs.get("momentum", 0.0))
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "decay_at": decay_at},
            model=model,
            foreach=foreach,
            **base_kwargs,
        )

    def _check_hparams(self, group: dict[str, Any]) -> None:
        group["rho"] = check_nonneg("rho", group["rho"])
        check_choice("decay_at", group["decay_at"], DECAY_AT)

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        held = [(p, self.state[p].get("momentum_buffer")) for p in ctx.params]
        held = [(p, v) for p, v in held if v is not None]
        params, bufs = [p for p, _ in held], [v for _, v in held]
        rho = ctx.hparam("rho", params)
        inv = ctx.inv_norm(bufs) if held else None
        if held:
            ctx.move(bufs, -1.0, rho, inv, params=params)
        g = yield Pass(final=True)
        if inv is None or ctx.option("decay_at") != "perturbed":
            return g
        # SGD adds wd·θ; the authors' decay is wd·θ̃ = wd·θ − wd·rho·v̂ (scaled like g).
        # Only tensors that got a gradient (SGD leaves the others alone).
        where = {id(p): i for i, p in enumerate(ctx.params)}
        held = [(p, v) for p, v in held if id(p) in where]
        params, bufs = [p for p, _ in held], [v for _, v in held]
        rho, wd = ctx.hparam("rho", params), ctx.hparam("weight_decay", params)
        if params and not _all_zero(rho, wd):
            g_held = [g[where[id(p)]] for p in params]
            ctx.k.add_(g_held, bufs, -1.0, wd, rho, inv, ctx.grad_scale())
        return g


def _all_zero(*coefs: Coef) -> bool:
    """Is any of the coefficients zero for every tensor (so that their product is)?"""
    return any(all(v == 0 for v in ([c] if isinstance(c, float) else c)) for c in coefs)
