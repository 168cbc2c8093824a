"""CR-SAM's finite-difference trace: second differences of the loss, or of the gradient."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.hessian._krylov import progress_bar
from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace._result import TraceResult, mean_stderr, reached
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.objective import Objective
from optimizers._foreach import tl_add_, tl_clone, tl_copy_

__all__ = ["default_loss_step", "fd_trace"]

_FORMS = ("loss", "gradient")


def default_loss_step(dtype: torch.dtype) -> float:
    """Default step of the loss form along the unit probe direction.

    The second difference ``h² uᵀHu`` must stand well above the rounding of the loss
    (``uᵀHu = Tr(H)/d`` is small for a random unit ``u``): ``0.1`` in float32, ``1e-3``
    in float64.
    """
    return 1e-3 if dtype == torch.float64 else 1e-1


def _loss_value(obj: Objective) -> float:
    """The exactly weighted mean loss, accumulated in float64, without autograd."""
    total = 0.0
    with obj.eval_mode(), torch.inference_mode():
        for batch in obj.batches():
            total += float(obj.batch_loss(batch).double()) * batch.weight
    return obj.all_reduce_float(total)


def _loss_at(
    obj: Objective, work: Sequence[Tensor], vs: Sequence[Tensor], step: float, saved: list[Tensor]
) -> float:
    with torch.no_grad():
        tl_add_(work, vs, alpha=step)
    try:
        return _loss_value(obj)
    finally:
        with torch.no_grad():
            tl_copy_(work, saved)


def fd_trace(
    objective: Objective | HessianOperator,
    h: float | None = None,
    num_probes: int = 100,
    seed: int = 0,
    *,
    form: str = "loss",
    params: Sequence[Tensor | str] | None = None,
    target_rel_stderr: float | None = None,
    min_samples: int = 10,
    dtype: torch.dtype | None = None,
    progress: bool | None = None,
) -> TraceResult:
    """Hutchinson's trace with finite-difference curvature along each Rademacher probe ``v``.

    - ``form="loss"`` (CR-SAM): ``vᵀHv ≈ ‖v‖² (L(θ+hû) + L(θ−hû) − 2L(θ)) / h²`` with
      ``û = v/‖v‖``: forward passes only (two per probe; ``L(θ)`` is computed once).
    - ``form="gradient"``: ``vᵀHv ≈ vᵀ(g(θ+hv̂) − g(θ−hv̂)) ‖v‖ / 2h``, two gradients per
      probe (the finite-difference :class:`HessianOperator` under Hutchinson).

    Weights are restored exactly by copy after every perturbation. ``h`` is the step
    length along the unit direction (default :func:`default_loss_step` for the loss form,
    :func:`~landscape.hessian.operator.default_fd_step` for the gradient form).

    Args:
        objective: an :class:`~landscape.objective.Objective`, or a
            :class:`HessianOperator` whose objective, parameters and dtype are used.
        h: step length.
        num_probes: number of probes (the maximum with a target).
        seed: seed of the probes.
        form: ``"loss"`` or ``"gradient"``.
        params: restrict to these parameters (a block), as for :class:`HessianOperator`.
        target_rel_stderr: stop once ``stderr ≤ target·|estimate|``.
        min_samples: probes before the stopping rule may fire.
        dtype: compute in this dtype (e.g. ``torch.float64``).
        progress: progress bar (``None``: only on a terminal).

    Returns:
        A :class:`TraceResult` whose ``products`` counts probes and ``info["passes"]`` the
        forward (loss form) or gradient (gradient form) passes.
    """
    if form not in _FORMS:
        raise ValueError(f"Invalid form: {form!r} (expected one of {_FORMS})")
    if num_probes < 1:
        raise ValueError(f"Invalid num_probes: {num_probes} (must be >= 1)")
    if h is not None and not h > 0:
        raise ValueError(f"Invalid h: {h} (must be > 0)")
    if isinstance(objective, HessianOperator):
        base = objective
        objective = base.objective
        params = base.params if params is None else params
        dtype = base.dtype if dtype is None else dtype
    op = HessianOperator(
        objective,
        params,
        method="fd",
        dtype=dtype,
        fd_check="never",
        h=h if form == "gradient" else None,
    )
    if form == "gradient":
        res = hutchinson_trace(
            op, num_probes, target_rel_stderr, seed, min_samples=min_samples, progress=progress
        )
        res.info.update({"method": "fd_gradient", "h": op.h, "passes": 2 * res.products})
        return res

    step = h if h is not None else default_loss_step(op.dtype)
    obj, work = op._obj, op._work
    saved = tl_clone(work)
    base_loss = _loss_value(obj)
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    with progress_bar(num_probes, "fd trace", progress) as bar:
        for _ in range(num_probes):
            v = op.random_vector(gen, "rademacher")
            vs = op.to_list(v / float(np.sqrt(op.dim)))
            plus = _loss_at(obj, work, vs, step, saved)
            minus = _loss_at(obj, work, vs, -step, saved)
            samples.append(op.dim * (plus + minus - 2.0 * base_loss) / step**2)
            bar.update(1)
            if reached(samples, target_rel_stderr, min_samples):
                break
    arr = np.asarray(samples)
    value, stderr = mean_stderr(arr)
    return TraceResult(
        value=value,
        stderr=stderr,
        products=len(samples),
        samples=arr,
        converged=None if target_rel_stderr is None else reached(samples, target_rel_stderr, 2),
        info={"method": "fd_loss", "h": step, "passes": 2 * len(samples) + 1},
    )
