"""Agnostic-SAM: SAM meets MAML (Nguyen et al., 2024)."""

from __future__ import annotations

from collections.abc import Generator, Iterable
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import BatchPart, Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._validate import check_nonneg, check_range

__all__ = ["AgnosticSAM"]


class AgnosticSAM(SharpnessAwareOptimizer):
    r"""Agnostic-SAM: ascend on a training part, descend on a validation part.

    Each mini-batch ``B`` is split into a training part ``B_t`` and a validation part
    ``B_v`` (the last ``val_fraction`` of the batch):

    .. math::
        \begin{aligned}
            &\textbf{input}: \rho \ge 0,\ \rho_v \ge 0,\ f \in (0, 1) \\
            &\quad g_t \leftarrow \nabla L_{B_t}(\theta),\qquad
                g_v \leftarrow \nabla L_{B_v}(\theta) \\
            &\quad \tilde\theta \leftarrow \theta + \rho\, \hat g_t - \rho_v\, \hat g_v \\
            &\quad d \leftarrow \nabla L_B(\tilde\theta)
                \quad \text{(whole batch, BatchNorm frozen)} \\
            &\quad \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `Agnostic Sharpness-Aware Minimization <https://arxiv.org/abs/2406.07107>`_.
    Two half-batch passes and one full pass: 2 full-batch passes of work per step.

    **The split contract.**  ``step(closure)`` calls ``closure(part)`` with ``part`` a
    :class:`~optimizers.BatchPart` for the two half passes and ``closure()`` for the full
    one; ``x[part]`` selects the part of any batch tensor (no batch size needed)::

        def closure(part=None):
            opt.zero_grad()
            xb, yb = (x, y) if part is None else (x[part], y[part])
            loss = F.cross_entropy(model(xb), yb)
            loss.backward()
            return loss

    With ``step(closure, val_closure=vc)`` the validation gradient comes from ``vc()``
    (e.g. a batch of a held-out loader) and ``g_t`` from the whole batch: three
    full-batch passes.  BatchNorm statistics are updated by the first pass only (``B_t``).

    .. note::
        The paper's Algorithm 1 could not be read: this rule is reconstructed from its
        abstract, its Figure 1 (the cosine of ``∇L_{B_t}(θ)`` and ``∇L_{B_v}(θ̃ᵛ)``) and a
        public review of the revision (which sets ``rho = 2·rho_val``, as the defaults
        do).  ``g_v`` is taken at θ, not at a perturbed point.

    Args:
        params: Parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho: Ascent radius along the training-part gradient.
        rho_val: Descent radius along the validation-part gradient.
        val_fraction: Fraction of each batch used as validation part, in ``(0, 1)``.
        model: The trained module (BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.
    """

    passes = 2
    hyperparameters: ClassVar[dict[str, float]] = {"rho": 0.1, "rho_val": 0.05, "val_fraction": 0.5}
    _shared = ("val_fraction",)

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.1,
        rho_val: float = 0.05,
        val_fraction: float = 0.5,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        rho_val = check_nonneg("rho_val", rho_val)
        val_fraction = check_range("val_fraction", val_fraction, 0.0, 1.0, open_ends=True)
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "rho_val": rho_val, "val_fraction": val_fraction},
            model=model,
            foreach=foreach,
            **base_kwargs,
        )

    def _check_hparams(self, group: dict[str, Any]) -> None:
        group["rho"] = check_nonneg("rho", group["rho"])
        group["rho_val"] = check_nonneg("rho_val", group["rho_val"])
        group["val_fraction"] = check_range(
            "val_fraction", group["val_fraction"], 0.0, 1.0, open_ends=True
        )

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(ctx.hparam("rho")) and is_zero(ctx.hparam("rho_val")):
            return (yield Pass(final=True))  # θ̃ = θ: one whole-batch pass, as the base
        fraction = ctx.hparam("val_fraction")
        if not isinstance(fraction, float):
            raise ValueError("Invalid param_groups: AgnosticSAM needs one val_fraction")
        if ctx.has_val_closure:
            g_t = yield Pass()
            g_v = yield Pass(val=True)
        else:
            g_t = yield Pass(part=BatchPart(fraction, "train"))
            g_v = yield Pass(part=BatchPart(fraction, "val"))
        ctx.ascend(g_t, ctx.hparam("rho"))
        inv_v = ctx.inv_norm(g_v)
        ctx.move(g_v, -1.0, ctx.hparam("rho_val"), inv_v)
        return (yield Pass(final=True))
