"""CR-SAM's finite-difference trace: second differences of the loss, or of the gradient.

Both forms are checked probe by probe: finite differences across ReLU/max-pool kinks are
biased, and the bias does not shrink with the step (the number of kinks crossed grows
like ``h`` while each adds ``O(1/h)``); on a trained ReLU MLP the unchecked loss form at
its former default step gave 48× the exact trace in float64. A probe is verified when its
segment ``θ ± h û`` crosses no kink, which shows in the symmetry of the gradient's two
one-sided differences (see :class:`~landscape.hessian.operator.HessianOperator`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import progress_bar
from landscape.hessian.operator import FiniteDifferenceWarning, HessianOperator
from landscape.hessian.trace._result import TraceResult, mean_stderr, reached
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.objective import Objective
from optimizers._foreach import tl_add_, tl_clone, tl_copy_

__all__ = ["FiniteDifferenceError", "default_loss_step", "fd_trace"]

_FORMS = ("loss", "gradient")
_ON_FAILURE = ("warn", "raise")
_LOSS_RELATIVE_STEP = {torch.float64: 1e-4, torch.float32: 3e-2}
_LOSS_RETRIES = {torch.float64: 3}  # smaller steps only where rounding allows them


class FiniteDifferenceError(RuntimeError):
    """Finite-difference probes failed their check and ``on_failure="raise"``."""


def default_loss_step(dtype: torch.dtype, params: Sequence[Tensor] | None = None) -> float:
    """Default step of the loss form along the unit probe direction: ``δ · max(‖θ‖, 1)``.

    The second difference ``h² uᵀHu`` must stand well above the rounding of the loss
    (``uᵀHu = Tr(H)/d`` is small for a random unit ``u``), whose error in ``L(θ)`` enters
    every probe alike (a bias ``∝ 1/h²``): ``δ = 3e-2`` in float32 (bias 0.3–0.5 % on a
    tanh MLP and a GELU conv net, 1.6–10 % at ``1e-2``), ``1e-4`` in float64 (per-probe
    error below 2e-6 on those; on a trained ReLU MLP kinks made ``1e-4`` 56× too large, and
    the check's retries go down to ``1e-7``, where the per-probe error is still ~2 %).
    """
    delta = _LOSS_RELATIVE_STEP.get(dtype, 3e-2)
    if params is None:
        return delta
    norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))
    if not math.isfinite(norm):  # non-finite weights: the products say so, not the step
        return delta
    return delta * max(norm, 1.0)


def _loss_value(obj: Objective, where: str = "at these weights") -> float:
    """The exactly weighted mean loss, accumulated in float64, without autograd.

    Raises ``ValueError`` when it is not finite (a second difference of it would be NaN
    or infinite, not a curvature).
    """
    total = 0.0
    with obj.eval_mode(), torch.inference_mode():
        for batch in obj.batches():
            total += float(obj.batch_loss(batch).double()) * batch.weight
    total = obj.all_reduce_float(total)
    if not math.isfinite(total):
        raise ValueError(
            f"Invalid value: the loss is not finite ({total}) {where}; the finite-difference "
            "trace needs a finite loss"
        )
    return total


def _loss_at(
    obj: Objective, work: Sequence[Tensor], vs: Sequence[Tensor], step: float, saved: list[Tensor]
) -> float:
    with torch.no_grad():
        tl_add_(work, vs, alpha=step)
    try:
        return _loss_value(obj, f"at a probe's perturbed weights (step {step:.3g})")
    finally:
        with torch.no_grad():
            tl_copy_(work, saved)


@dataclass
class _LossCounts:
    """What the loss form's probes cost, and how many stayed unverified."""

    passes: int = 0
    check_passes: int = 0
    retried: int = 0
    unverified: int = 0


def _check_arguments(form: str, num_probes: int, h: float | None, on_failure: str) -> None:
    """Raise ``ValueError`` for a bad option of :func:`fd_trace` (before any pass)."""
    if form not in _FORMS:
        raise ValueError(f"Invalid form: {form!r} (expected one of {_FORMS})")
    check_integers(num_probes=num_probes)
    if num_probes < 1:
        raise ValueError(f"Invalid num_probes: {num_probes} (must be >= 1)")
    if h is not None and not h > 0:
        raise ValueError(f"Invalid h: {h} (must be > 0)")
    if on_failure not in _ON_FAILURE:
        raise ValueError(f"Invalid on_failure: {on_failure!r} (expected one of {_ON_FAILURE})")


def _gradient_form(
    op: HessianOperator,
    num_probes: int,
    target_rel_stderr: float | None,
    seed: int,
    min_samples: int,
    check: bool,
    progress: bool | None,
) -> TraceResult:
    """Hutchinson's trace on the finite-difference operator ``op`` (which counts failures)."""
    with warnings.catch_warnings():  # one warning for the whole trace, by the caller
        warnings.simplefilter("ignore", FiniteDifferenceWarning)
        res = hutchinson_trace(
            op, num_probes, target_rel_stderr, seed, min_samples=min_samples, progress=progress
        )
    res.info.update(
        {
            "method": "fd_gradient",
            "h": op.h,
            "passes": 2 * (res.products + op.fd_retried),
            "check_passes": 1 if check else 0,
            "retried": op.fd_retried,
        }
    )
    return res


def _loss_probe(
    op: HessianOperator,
    vs: list[Tensor],
    step: float,
    retries: int,
    check: bool,
    base_loss: float,
    saved: list[Tensor],
    counts: _LossCounts,
) -> float:
    """One probe's ``vᵀHv`` by the loss form, retried at smaller steps until verified.

    The value at the first verified step, else at the least asymmetric one (counted
    unverified).
    """
    obj, work = op._obj, op._work
    s, best = step, None
    for attempt in range(retries + 1):
        plus = _loss_at(obj, work, vs, s, saved)
        minus = _loss_at(obj, work, vs, -s, saved)
        counts.passes += 2
        value = op.dim * (plus + minus - 2.0 * base_loss) / s**2
        asym = math.inf
        if check:
            _, asym = op._fd_product(vs, s, saved, check=True)
            counts.check_passes += 2
        if best is None or asym < best[0]:
            best = (asym, value)
        if asym <= op.fd_check_rtol or attempt == retries:
            break
        s /= 10.0
        counts.retried += 1
    assert best is not None
    counts.unverified += int(best[0] > op.fd_check_rtol)
    return best[1]


def _loss_form(
    op: HessianOperator,
    h: float | None,
    num_probes: int,
    seed: int,
    target_rel_stderr: float | None,
    min_samples: int,
    check: bool,
    progress: bool | None,
) -> tuple[TraceResult, int]:
    """CR-SAM's second differences of the loss along each probe; and the unverified probes."""
    step = h if h is not None else default_loss_step(op.dtype, op._work)
    retries = _LOSS_RETRIES.get(op.dtype, 0) if check else 0
    saved = tl_clone(op._work)
    base_loss = _loss_value(op._obj)
    gen = torch.Generator().manual_seed(seed)
    samples: list[float] = []
    counts = _LossCounts()
    with progress_bar(num_probes, "fd trace", progress) as bar:
        for _ in range(num_probes):
            v = op.random_vector(gen, "rademacher")
            vs = op.to_list(v / float(np.sqrt(op.dim)))
            samples.append(_loss_probe(op, vs, step, retries, check, base_loss, saved, counts))
            bar.update(1)
            if reached(samples, target_rel_stderr, min_samples):
                break
    arr = np.asarray(samples)
    value, stderr = mean_stderr(arr)
    res = TraceResult(
        value=value,
        stderr=stderr,
        products=len(samples),
        samples=arr,
        converged=None if target_rel_stderr is None else reached(samples, target_rel_stderr, 2),
        info={
            "method": "fd_loss",
            "h": step,
            "passes": counts.passes + 1,
            "check_passes": counts.check_passes + (1 if check else 0),
            "retried": counts.retried,
        },
    )
    return res, counts.unverified


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
    check: bool = True,
    on_failure: str = "warn",
    progress: bool | None = None,
) -> TraceResult:
    """Hutchinson's trace with finite-difference curvature along each Rademacher probe ``v``.

    - ``form="loss"`` (CR-SAM): ``vᵀHv ≈ ‖v‖² (L(θ+hû) + L(θ−hû) − 2L(θ)) / h²`` with
      ``û = v/‖v‖``: two forward passes per probe (``L(θ)`` is computed once), plus two
      gradients for the check.
    - ``form="gradient"``: ``vᵀHv ≈ vᵀ(g(θ+hv̂) − g(θ−hv̂)) ‖v‖ / 2h``, two gradients per
      probe (the finite-difference :class:`HessianOperator` under Hutchinson), checked
      for free.

    Weights are restored exactly by copy after every perturbation. ``h`` is the step
    length along the unit direction (default :func:`default_loss_step` for the loss form,
    :func:`~landscape.hessian.operator.default_fd_step` for the gradient form, both
    scaled by the weights' norm).

    With ``check`` (default) every probe is verified: the segment ``θ ± hû`` must cross
    no kink, i.e. ``‖g₊ + g₋ − 2g₀‖ ≤ rtol·‖g₊ − g₋‖`` (``rtol = 0.05``). A probe that
    fails is retried at ``h/10``, ``h/100`` (the gradient form; the loss form also at
    ``h/1000``, in float64 only: in float32 a smaller step of the loss form trades the kink
    bias for a rounding bias) and, failing again, is kept
    but counted in ``info["unverified"]``: the estimate is then biased by an unknown
    amount (on ReLU networks in float32 no step is right), the result says
    ``info["verified"] = False`` and ``converged = False``, and a
    :class:`~landscape.hessian.operator.FiniteDifferenceWarning` is raised, or
    :class:`FiniteDifferenceError` with ``on_failure="raise"``. Without ``check`` every
    probe counts as unverified.

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
        check: verify every probe (see above).
        on_failure: ``"warn"`` or ``"raise"`` when probes stay unverified.
        progress: progress bar (``None``: only on a terminal).

    Returns:
        A :class:`TraceResult` whose ``products`` counts probes, ``info["passes"]`` the
        forward (loss form) or gradient (gradient form) passes, ``info["check_passes"]``
        the gradients of the checks, ``info["unverified"]`` the probes that failed (or
        skipped) the check and ``info["retried"]`` the retries at a smaller step.

    Raises:
        ValueError: a bad option (before any pass).
        FiniteDifferenceError: probes stayed unverified and ``on_failure="raise"``.
    """
    _check_arguments(form, num_probes, h, on_failure)
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
        fd_check="always" if check else "never",
        h=h if form == "gradient" else None,
    )
    if form == "gradient":
        res = _gradient_form(op, num_probes, target_rel_stderr, seed, min_samples, check, progress)
        return _verdict(res, op.unverified_products, op.dtype, on_failure)
    res, unverified = _loss_form(
        op, h, num_probes, seed, target_rel_stderr, min_samples, check, progress
    )
    return _verdict(res, unverified, op.dtype, on_failure)


def _verdict(res: TraceResult, unverified: int, dtype: torch.dtype, on_failure: str) -> TraceResult:
    """Record how many probes were unverified; warn (or raise) when any was."""
    n = len(res.samples)
    res.info["unverified"] = unverified
    res.info["verified"] = unverified == 0
    if unverified == 0:
        return res
    res.converged = False
    hint = (
        "compute in dtype=torch.float64"
        if dtype != torch.float64
        else "use an exact trace (hutchinson_trace on method='exact')"
    )
    msg = (
        f"fd_trace ({res.info['method']}): {unverified} of {n} probes unverified (their "
        "finite differences cross ReLU/max-pool kinks or drown in rounding, or were not "
        f"checked); the trace {res.value:.4g} ± {res.stderr:.2g} may be biased far beyond "
        f"its standard error: {hint}"
    )
    if on_failure == "raise":
        raise FiniteDifferenceError(msg)
    warnings.warn(msg, FiniteDifferenceWarning, stacklevel=3)
    return res
