"""ASAM: adaptive sharpness-aware minimisation (Kwon et al., ICML 2021)."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import EPS, Pass, SharpnessAwareOptimizer, StepContext
from optimizers._kernels import Coef, get_kernels
from optimizers._validate import check_nonneg

__all__ = ["ASAM", "asam_perturbation"]


def asam_perturbation(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    rho: Coef,
    eta: float,
    adaptive_all: bool = False,
    foreach: bool | None = None,
) -> list[Tensor]:
    r"""Return ASAM's perturbation ``e = rho · T² g / ‖T g‖`` (functional form).

    ``T = |θ| + eta`` on weight tensors (``dim > 1``) and ``T = 1`` elsewhere; with
    ``adaptive_all`` ``T = |θ|`` on every tensor.  A zero ``T g`` gives ``e = 0``.
    """
    k = get_kernels(foreach, params)
    idx = [i for i, p in enumerate(params) if adaptive_all or p.dim() > 1]
    t_w = k.abs_add([params[i] for i in idx], 0.0 if adaptive_all else eta)
    tg_w = k.mul(t_w, [grads[i] for i in idx])
    tg = list(grads)
    for i, t in zip(idx, tg_w):
        tg[i] = t
    inv = 1.0 / (k.norm(tg) + EPS)
    e = list(grads)  # T = 1 entries: e = g (copied below), weight entries: T·(T g)
    for i, t in zip(idx, k.mul(t_w, tg_w)):
        e[i] = t
    weights = set(idx)
    e = [t if i in weights else t.clone() for i, t in enumerate(e)]
    k.mul_(e, rho, inv)
    return e


class ASAM(SharpnessAwareOptimizer):
    r"""Adaptive SAM: a neighbourhood scaled by the weights' magnitudes.

    .. math::
        \begin{aligned}
            &\textbf{input}: \rho \ge 0,\ \eta \ge 0,\ \text{base optimizer} \\
            &\quad g_0 \leftarrow \nabla L_B(\theta),\qquad
                T \leftarrow |\theta| + \eta \ \text{(weights)},\ 1 \ \text{(biases, norms)} \\
            &\quad e \leftarrow \rho\, T^2 g_0 / \lVert T g_0 \rVert_2 \\
            &\quad d \leftarrow \nabla L_B(\theta + e) \\
            &\quad \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of
    Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_.  Two passes per step.

    .. note::
        ``T = |θ| + eta`` acts on weight tensors (``dim > 1``) and ``T = 1`` on biases and
        normalisation parameters, as in the authors' code.  ``adaptive_all=True`` gives the
        widely copied variant ``T = |θ|`` on every tensor (whose good ``rho`` is ~2.0).

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho: Radius of the adaptive neighbourhood.
        eta: Offset of ``T`` (keeps zero weights perturbable).
        adaptive_all: Use ``T = |θ|`` on every tensor (davda54's "adaptive" SAM).
        model: The trained module (BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.
    """

    passes = 2
    hyperparameters: ClassVar[dict[str, float]] = {"rho": 0.5, "eta": 0.01}

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.5,
        eta: float = 0.01,
        adaptive_all: bool = False,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        check_nonneg("rho", rho)
        check_nonneg("eta", eta)
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "eta": eta, "adaptive_all": bool(adaptive_all)},
            model=model,
            foreach=foreach,
            **base_kwargs,
        )

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        g0 = yield Pass()
        eta, adaptive_all = ctx.hparam("eta"), ctx.hparam("adaptive_all")
        if not isinstance(eta, float) or not isinstance(adaptive_all, float):
            raise ValueError("Invalid param_groups: ASAM needs one eta and adaptive_all")
        e = asam_perturbation(
            ctx.params,
            g0,
            rho=ctx.hparam("rho"),
            eta=eta,
            adaptive_all=bool(adaptive_all),
            foreach=ctx.k.name == "foreach",
        )
        ctx.move(e)
        return (yield Pass(final=True))
