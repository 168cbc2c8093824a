"""ASAM: adaptive sharpness-aware minimisation (Kwon et al., ICML 2021)."""

from __future__ import annotations

import warnings
from collections.abc import Generator, Iterable, Sequence
from typing import Any, ClassVar

from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._base import EPS, Pass, SharpnessAwareOptimizer, StepContext, is_zero
from optimizers._kernels import Coef, get_kernels
from optimizers._validate import check_choice, check_nonneg

__all__ = ["ASAM", "asam_perturbation"]

WEIGHTS_BY = ("name", "dim")
"""How ASAM tells weights (``T = |θ| + eta``) from the rest (``T = 1``)."""


def asam_perturbation(
    params: Sequence[Tensor],
    grads: Sequence[Tensor],
    *,
    rho: Coef,
    eta: float,
    scaled: Sequence[bool] | None = None,
    adaptive_all: bool = False,
    foreach: bool | None = None,
) -> list[Tensor]:
    r"""Return ASAM's perturbation ``e = rho · T² g / ‖T g‖`` (functional form).

    ``T = |θ| + eta`` on the tensors that ``scaled`` marks and ``T = 1`` elsewhere; with
    ``adaptive_all`` ``T = |θ|`` on every tensor.  A zero ``T g`` gives ``e = 0``.

    Args:
        params: The weights θ.
        grads: The gradient at θ, aligned with ``params``.
        rho: Radius of the adaptive neighbourhood.
        eta: Offset of ``T`` on the scaled tensors.
        scaled: One flag per tensor: does ``T = |θ| + eta`` apply?  Default: the tensors
            with ``dim > 1``.  The authors' rule is ``["weight" in n for n in names]``
            over the parameter names (what :class:`ASAM` uses when it knows the names).
        adaptive_all: ``T = |θ|`` on every tensor (``scaled`` and ``eta`` unused).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
    """
    k = get_kernels(foreach, params)
    if scaled is None:
        scaled = [p.dim() > 1 for p in params]
    if len(scaled) != len(params):
        raise ValueError(f"Invalid scaled: {len(scaled)} flags for {len(params)} tensors")
    idx = [i for i, p in enumerate(params) if adaptive_all or scaled[i]]
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
                T \leftarrow |\theta| + \eta \ \text{(weights)},\ 1 \ \text{(the rest)} \\
            &\quad e \leftarrow \rho\, T^2 g_0 / \lVert T g_0 \rVert_2 \\
            &\quad d \leftarrow \nabla L_B(\theta + e) \\
            &\quad \theta \leftarrow \text{base.step}(\theta, d)
        \end{aligned}

    Paper: `ASAM: Adaptive Sharpness-Aware Minimization for Scale-Invariant Learning of
    Deep Neural Networks <https://arxiv.org/abs/2102.11600>`_.  Two passes per step.

    Which tensors are *weights* (``weights_by``):

    - ``"name"`` (default, the authors' code, SamsungLabs/ASAM ``asam.py``): every
      parameter whose name contains ``"weight"``: convolution and linear weights *and*
      BatchNorm/LayerNorm scales; biases (and other names) get ``T = 1``.  The names come
      from ``params`` given as ``model.named_parameters()`` (torch >= 2.6), else from
      ``model``, so ``ASAM(model.parameters(), ..., model=model)`` follows the authors.
      A parameter whose name is unknown falls back to the ``"dim"`` rule, with a warning
      at construction (e.g. ``model.parameters()`` without ``model=``).
    - ``"dim"`` (a variant): the tensors with more than one dimension, so normalisation
      scales get ``T = 1``; it needs no names.

    .. note::
        ``adaptive_all=True`` gives the widely copied variant ``T = |θ|`` on every tensor
        (davda54/sam's "adaptive" SAM, whose good ``rho`` is ~2.0); ``weights_by`` and
        ``eta`` then play no part.  The authors add ``1e-16`` to ``‖T g‖``, this class
        ``1e-12`` (as every optimizer of the package).

    Args:
        params: Parameters, named parameters or parameter groups.
        base_optimizer: The base optimizer class.
        rho: Radius of the adaptive neighbourhood.
        eta: Offset of ``T`` (keeps zero weights perturbable).
        weights_by: ``"name"`` (the authors') or ``"dim"`` (``dim > 1``), see above.
        adaptive_all: Use ``T = |θ|`` on every tensor (davda54's "adaptive" SAM).
        model: The trained module (parameter names, BatchNorm freezing, DDP).
        foreach: Foreach kernels (default) or the single-tensor reference kernels.
        **base_kwargs: Arguments of the base optimizer.

    Example:
        >>> opt = ASAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1,
        ...            momentum=0.9)  # the authors' T: the names come from the model
    """

    passes = 2
    hyperparameters: ClassVar[dict[str, Any]] = {"rho": 0.5, "eta": 0.01, "weights_by": "name"}
    _shared = ("eta", "weights_by", "adaptive_all")

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[tuple[str, Tensor]] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        *,
        rho: float = 0.5,
        eta: float = 0.01,
        weights_by: str = "name",
        adaptive_all: bool = False,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        rho = check_nonneg("rho", rho)
        eta = check_nonneg("eta", eta)
        check_choice("weights_by", weights_by, WEIGHTS_BY)
        super().__init__(
            params,
            base_optimizer,
            {"rho": rho, "eta": eta, "weights_by": weights_by, "adaptive_all": bool(adaptive_all)},
            model=model,
            foreach=foreach,
            **base_kwargs,
        )
        self._names = self._parameter_names()
        unnamed = [p for p in self._trainable() if id(p) not in self._names]
        if weights_by == "name" and not adaptive_all and unnamed:
            warnings.warn(
                f"ASAM: {len(unnamed)} of {len(self._trainable())} parameter tensors have no "
                "name (pass model= or model.named_parameters()); they count as weights "
                "when dim > 1, so a normalisation scale among them gets T = 1 instead of the "
                "authors' |θ| + eta",
                UserWarning,
                stacklevel=2,
            )

    _VOLATILE = (*SharpnessAwareOptimizer._VOLATILE, "_names")  # keyed by id: rebuilt

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._names = self._parameter_names()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state dict; the ``param_names`` its groups carry name ASAM's weights."""
        super().load_state_dict(state_dict)
        self._names = self._parameter_names()

    def _check_hparams(self, group: dict[str, Any]) -> None:
        group["rho"] = check_nonneg("rho", group["rho"])
        group["eta"] = check_nonneg("eta", group["eta"])
        check_choice("weights_by", group["weights_by"], WEIGHTS_BY)
        group["adaptive_all"] = bool(group["adaptive_all"])

    def _parameter_names(self) -> dict[int, str]:
        """Parameter names by ``id``: from ``model``, then from the groups' ``param_names``."""
        names: dict[int, str] = {}
        if self.model is not None:
            names.update((id(p), n) for n, p in self.model.named_parameters())
        for group in self.param_groups:
            if "param_names" in group:
                names.update((id(p), n) for p, n in zip(group["params"], group["param_names"]))
        return names

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (its ``param_names``, if any, name ASAM's weights)."""
        super().add_param_group(param_group)
        if hasattr(self, "_names"):
            self._names = self._parameter_names()

    def _scaled(self, params: Sequence[Tensor], weights_by: str) -> list[bool]:
        """Which tensors get ``T = |θ| + eta`` (see the class docstring)."""
        if weights_by == "dim":
            return [p.dim() > 1 for p in params]
        return [
            "weight" in self._names[id(p)] if id(p) in self._names else p.dim() > 1 for p in params
        ]

    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        if is_zero(ctx.hparam("rho")):  # no perturbation: d = g(θ), one (synced) pass
            return (yield Pass(final=True))
        g0 = yield Pass()
        eta, adaptive_all = ctx.hparam("eta"), ctx.hparam("adaptive_all")
        if not isinstance(eta, float) or not isinstance(adaptive_all, float):
            raise ValueError("Invalid param_groups: ASAM needs one eta and adaptive_all")
        e = asam_perturbation(
            ctx.params,
            g0,
            rho=ctx.hparam("rho"),
            eta=eta,
            scaled=self._scaled(ctx.params, ctx.option("weights_by")),
            adaptive_all=bool(adaptive_all),
            foreach=ctx.k.name == "foreach",
        )
        ctx.move(e)
        return (yield Pass(final=True))
