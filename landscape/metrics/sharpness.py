r"""Sharpness and flatness metrics of the SAM family, measured by perturbing the weights.

One mechanism, :func:`ball_ascent`, maximises a function of the weights over a (scaled)
ball by normalised projected ascent; the recipes differ in the function and the ball:

- ``sam_sharpness``: :math:`\max_{\|ε\|_2≤ρ} L(θ+ε) − L(θ)` (Foret et al. 2021);
- ``adaptive_sharpness``: the same over :math:`\|ε/T\|_2 ≤ ρ`, :math:`T = |θ| + η`
  (Kwon et al. 2021, ASAM);
- ``first_order_flatness``: :math:`ρ\max_{\|ε\|≤ρ}\|∇L(θ+ε)\|` (Zhang et al. 2023, GAM),
  ascending on the gradient norm, whose gradient :math:`H∇L/\|∇L\|` costs one
  Hessian-vector product.

Two more perturb the weights without ascent: ``average_sharpness`` (Gaussian noise, with a
standard error) and ``eps_sharpness`` (Keskar et al. 2017, box-constrained L-BFGS-B).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from landscape.metrics._base import (
    MetricCache,
    MetricResult,
    check_int,
    check_positive,
    flatten,
    get_cache,
    hessian_vector_product,
    progress_bar,
    saved_weights,
    set_weights_,
    unflatten,
)
from landscape.metrics.registry import register_metric
from landscape.objective import Objective
from optimizers._foreach import tl_add_, tl_norm, tl_scale_, tl_zeros_like

__all__ = [
    "adaptive_scale",
    "adaptive_sharpness",
    "average_sharpness",
    "ball_ascent",
    "eps_sharpness",
    "first_order_flatness",
    "sam_sharpness",
]

ValueAndGrad = Callable[[], tuple[float, list[Tensor]]]


def ball_ascent(
    objective: Objective,
    start: tuple[float, Sequence[Tensor]],
    value_and_grad: ValueAndGrad,
    value: Callable[[], float],
    *,
    rho: float,
    steps: int,
    step_size: float | None = None,
    scale: Sequence[Tensor] | None = None,
    progress: bool | None = None,
    desc: str = "ascent",
) -> list[float]:
    r"""Maximise :math:`f(θ + T∘δ)` over :math:`\|δ\|_2 ≤ ρ` by normalised projected ascent.

    From :math:`δ_0 = 0`, each step is :math:`δ ← Π_ρ(δ + α\,u/\|u\|)` with
    :math:`u = T∘∇f(θ+T∘δ)` (the gradient with respect to δ) and :math:`Π_ρ` the
    projection on the ball; the weights are set to :math:`θ + T∘δ` afresh from the saved θ
    and restored exactly at the end. With one step and :math:`α = ρ` this is SAM's (ASAM's)
    own perturbation.

    Args:
        objective: the objective whose parameters are perturbed.
        start: ``(f(θ), ∇f(θ))`` at the unperturbed weights.
        value_and_grad: ``f`` and its gradient (a tensor list) at the current weights.
        value: ``f`` alone at the current weights (used after the last step).
        rho: radius of the ball (in δ).
        steps: number of ascent steps K.
        step_size: α; default ``rho``.
        scale: the diagonal scaling T (tensor list); default the identity.
        progress: progress bar (``None``: only on a terminal).
        desc: progress bar label.

    Returns:
        ``[f(θ), f(θ+ε_1), …, f(θ+ε_K)]``; shorter when the gradient vanishes (no ascent
        direction) before K steps.
    """
    params = objective.params
    f0, grad = start
    values = [float(f0)]
    alpha = rho if step_size is None else step_size
    with saved_weights(params) as theta:
        delta = tl_zeros_like(theta)
        eps = tl_zeros_like(theta)
        for k in progress_bar(range(steps), desc=desc, progress=progress):
            u = list(grad) if scale is None else [g * t for g, t in zip(grad, scale, strict=True)]
            norm = float(tl_norm(u))
            if not math.isfinite(norm) or norm == 0.0:
                break
            tl_add_(delta, u, alpha=alpha / norm)
            dnorm = float(tl_norm(delta))
            if dnorm > rho:
                tl_scale_(delta, rho / dnorm)
            if scale is None:
                eps = delta
            else:
                eps = [d * t for d, t in zip(delta, scale, strict=True)]
            set_weights_(params, theta, eps)
            if k == steps - 1:
                values.append(float(value()))
            else:
                f, grad = value_and_grad()
                values.append(float(f))
    return values


def _loss_only(objective: Objective) -> Callable[[], float]:
    return lambda: objective.evaluate()["loss"]


def _best(values: list[float]) -> float:
    """The largest value at the iterates after the first step (NaN when none is finite).

    Every iterate is a feasible point, so this is a lower bound on the maximum; with one
    step it is SAM's (ASAM's, GAM's) own estimate. No step taken (zero gradient): the
    base value.
    """
    if len(values) == 1:
        return values[0]
    finite = [v for v in values[1:] if math.isfinite(v)]
    return max(finite) if finite else math.nan


def _ascent_result(values: list[float], *, rho: float, steps: int, **info: object) -> MetricResult:
    base = values[0]
    best = _best(values)
    return MetricResult(
        best - base,
        None,
        {
            "rho": rho,
            "steps": steps,
            "steps_taken": len(values) - 1,
            "loss": base,
            "max_loss": best,
            "losses": values,
            **info,
        },
    )


@register_metric("sam_sharpness")
def sam_sharpness(
    objective: Objective,
    *,
    rho: float = 0.05,
    steps: int = 1,
    step_size: float | None = None,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    r"""SAM sharpness max_{‖ε‖≤ρ} L(θ+ε) − L(θ), by K steps of projected ascent.

    ``steps=1`` is SAM's estimate :math:`L(θ + ρ\,∇L/\|∇L\|) − L(θ)`; more steps climb
    towards the true maximum from below (the value is the best loss met on the ball).

    Args:
        objective: model, loss and data.
        rho: radius ρ of the ball.
        steps: number K of normalised ascent steps (one gradient each); reported in
            ``info["steps"]``.
        step_size: length of each step; default ρ.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    check_positive("rho", rho)
    check_int("steps", steps)
    if step_size is not None:
        check_positive("step_size", step_size)
    start = get_cache(objective, cache).loss_and_gradient()
    values = ball_ascent(
        objective,
        start,
        objective.loss_and_gradient,
        _loss_only(objective),
        rho=rho,
        steps=steps,
        step_size=step_size,
        progress=progress,
        desc="sam_sharpness",
    )
    return _ascent_result(values, rho=rho, steps=steps)


def adaptive_scale(
    params: Sequence[Tensor],
    eta: float = 0.01,
    *,
    adaptive_all: bool = False,
    names: Sequence[str] | None = None,
    weights_by: str = "name",
) -> list[Tensor]:
    """ASAM's scaling ``T``: ``|θ| + η`` on weights, 1 on the other tensors.

    Which tensors are weights follows :class:`optimizers.ASAM`: ``weights_by="name"`` (the
    authors' code, SamsungLabs/ASAM) takes every parameter whose name contains ``weight``
    (BatchNorm/LayerNorm scales included) and needs ``names``; ``weights_by="dim"`` takes
    tensors with ``dim > 1``. With ``adaptive_all=True`` every tensor gets ``|θ| + η``.
    """
    if weights_by not in ("name", "dim"):
        raise ValueError(f"Invalid weights_by: {weights_by!r} (expected 'name' or 'dim')")
    if weights_by == "name" and names is None:
        raise ValueError("Invalid names: weights_by='name' needs the parameters' names")
    if weights_by == "name":
        assert names is not None
        weight = ["weight" in n for n in names]
    else:
        weight = [p.dim() > 1 for p in params]
    return [
        p.detach().abs() + eta if (adaptive_all or w) else torch.ones_like(p)
        for p, w in zip(params, weight, strict=True)
    ]


@register_metric("adaptive_sharpness")
def adaptive_sharpness(
    objective: Objective,
    *,
    rho: float = 0.5,
    eta: float = 0.01,
    steps: int = 1,
    step_size: float | None = None,
    adaptive_all: bool = False,
    weights_by: str = "name",
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    r"""ASAM's adaptive sharpness max_{‖ε/T‖≤ρ} L(θ+ε) − L(θ), T = |θ| + η.

    ``T = |θ| + η`` on weights and 1 elsewhere, as :class:`optimizers.ASAM` does: by
    default (``weights_by="name"``, the authors' code) every parameter whose name contains
    ``weight``, normalisation scales included; ``weights_by="dim"`` takes tensors with
    ``dim > 1``; ``adaptive_all=True`` scales every tensor. ``steps=1`` is ASAM's
    perturbation :math:`ε = ρ\,T^2∇L/\|T∇L\|`.

    Args:
        objective: model, loss and data.
        rho: radius ρ of the scaled ball.
        eta: η added to ``|θ|``.
        steps: number K of ascent steps.
        step_size: length of each step in the scaled coordinates; default ρ.
        adaptive_all: scale biases and normalisation parameters too.
        weights_by: ``"name"`` (the authors') or ``"dim"`` (tensors with ``dim > 1``).
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    check_positive("rho", rho)
    check_positive("eta", eta, allow_zero=True)
    check_int("steps", steps)
    if step_size is not None:
        check_positive("step_size", step_size)
    scale = adaptive_scale(
        objective.params,
        eta,
        adaptive_all=adaptive_all,
        names=objective.param_names,
        weights_by=weights_by,
    )
    start = get_cache(objective, cache).loss_and_gradient()
    values = ball_ascent(
        objective,
        start,
        objective.loss_and_gradient,
        _loss_only(objective),
        rho=rho,
        steps=steps,
        step_size=step_size,
        scale=scale,
        progress=progress,
        desc="adaptive_sharpness",
    )
    return _ascent_result(
        values, rho=rho, steps=steps, eta=eta, adaptive_all=adaptive_all, weights_by=weights_by
    )


def _grad_norm_and_direction(objective: Objective, operator: object = None) -> tuple[float, list]:
    """``‖∇L‖`` and its gradient ``H∇L/‖∇L‖`` at the current weights (one HVP)."""
    from landscape.hessian import HessianOperator

    op = operator if operator is not None else HessianOperator(objective)
    try:
        g = op.gradient()
        norm = float(tl_norm(g))
        if norm == 0.0 or not math.isfinite(norm):
            return norm, tl_zeros_like(g)
        hg = hessian_vector_product(op, g)
        tl_scale_(hg, 1.0 / norm)
        return norm, hg
    finally:
        if operator is None and hasattr(op, "close"):
            op.close()


@register_metric("first_order_flatness")
def first_order_flatness(
    objective: Objective,
    *,
    rho: float = 0.2,
    steps: int = 1,
    step_size: float | None = None,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    r"""GAM's first-order flatness ρ·max_{‖ε‖≤ρ} ‖∇L(θ+ε)‖, by ascent on the gradient norm.

    Maximised by K steps of normalised projected ascent on the gradient norm, whose
    gradient :math:`H∇L/\|∇L\|` costs one Hessian-vector product per step; ``steps=1`` is
    GAM's own point :math:`θ + ρ\,\widehat{H∇L}`. The value is ρ times the largest
    gradient norm met on the ball (a lower bound on the maximum, from the iterates
    after the first step).

    Args:
        objective: model, loss and data.
        rho: radius ρ of the ball.
        steps: number K of ascent steps (a gradient and an HVP each).
        step_size: length of each step; default ρ.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    check_positive("rho", rho)
    check_int("steps", steps)
    if step_size is not None:
        check_positive("step_size", step_size)
    base = get_cache(objective, cache)
    start = _grad_norm_and_direction(objective, base.operator())
    values = ball_ascent(
        objective,
        start,
        lambda: _grad_norm_and_direction(objective),
        lambda: float(tl_norm(objective.gradient())),
        rho=rho,
        steps=steps,
        step_size=step_size,
        progress=progress,
        desc="first_order_flatness",
    )
    best = _best(values)
    return MetricResult(
        rho * best,
        None,
        {
            "rho": rho,
            "steps": steps,
            "steps_taken": len(values) - 1,
            "grad_norm": values[0],
            "max_grad_norm": best,
            "grad_norms": values,
        },
    )


def _filter_scaled(noise: list[Tensor], theta: Sequence[Tensor]) -> None:
    """Rescale noise in place so that each filter's noise has the norm of its weights.

    A filter is a slice along dim 0 of a tensor with dim > 1; a tensor with dim ≤ 1 is one
    filter (the surfaces' ``filter`` normalisation with ``ignore=None``).
    """
    for u, w in zip(noise, theta, strict=True):
        if w.dim() > 1:
            u2, w2 = u.view(u.shape[0], -1), w.reshape(w.shape[0], -1)
            ratio = torch.linalg.vector_norm(w2, dim=1, keepdim=True) / torch.linalg.vector_norm(
                u2, dim=1, keepdim=True
            ).clamp_min(torch.finfo(u.dtype).tiny)
            u2.mul_(ratio)
        else:
            u.mul_(
                torch.linalg.vector_norm(w)
                / torch.linalg.vector_norm(u).clamp_min(torch.finfo(u.dtype).tiny)
            )


_SCALES = ("none", "filter")


@register_metric("average_sharpness")
def average_sharpness(
    objective: Objective,
    *,
    sigma: float = 0.01,
    num_samples: int = 20,
    scale: str = "none",
    antithetic: bool = True,
    seed: int = 0,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    r"""Average sharpness E_{ε∼N(0,σ²I)} L(θ+ε) − L(θ), with its standard error.

    Monte Carlo over ``num_samples`` draws from a private seeded generator (the global RNG
    is not touched). With ``antithetic=True`` each draw evaluates ``±ε`` and scores
    :math:`(L(θ+ε)+L(θ−ε))/2 − L(θ)`: same mean, the first-order term cancels.

    Args:
        objective: model, loss and data.
        sigma: noise scale σ.
        num_samples: number of draws (two forward passes each when antithetic).
        scale: ``"none"``: ε ∼ N(0, σ²I); ``"filter"``: each filter's noise is a random
            direction of norm ``σ·‖θ_filter‖`` (Li et al.'s filter normalisation; tensors
            with dim ≤ 1 count as one filter).
        antithetic: evaluate ``θ ± ε`` pairs.
        seed: seed of the noise.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    check_positive("sigma", sigma)
    check_int("num_samples", num_samples)
    if scale not in _SCALES:
        raise ValueError(f"Invalid scale: {scale!r} (expected one of {', '.join(_SCALES)})")
    params = objective.params
    base = get_cache(objective, cache).loss_and_gradient()[0]
    gen = torch.Generator(device=objective.device)
    gen.manual_seed(int(seed))
    samples = []
    with saved_weights(params) as theta:
        for _ in progress_bar(range(num_samples), desc="average_sharpness", progress=progress):
            noise = [
                torch.randn(t.shape, generator=gen, device=gen.device, dtype=t.dtype).to(t.device)
                for t in theta
            ]
            if scale == "filter":
                _filter_scaled(noise, theta)
            set_weights_(params, theta, noise, sigma)
            value = objective.evaluate()["loss"]
            if antithetic:
                set_weights_(params, theta, noise, -sigma)
                value = 0.5 * (value + objective.evaluate()["loss"])
            samples.append(value - base)
    arr = np.asarray(samples, dtype=np.float64)
    stderr = float(arr.std(ddof=1) / math.sqrt(arr.size)) if arr.size > 1 else math.nan
    return MetricResult(
        float(arr.mean()),
        stderr,
        {
            "sigma": sigma,
            "num_samples": num_samples,
            "scale": scale,
            "antithetic": antithetic,
            "seed": seed,
            "loss": base,
        },
    )


@register_metric("eps_sharpness")
def eps_sharpness(
    objective: Objective,
    *,
    eps: float = 1e-3,
    max_iter: int = 10,
    restarts: int = 0,
    seed: int = 0,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    r"""Keskar et al.'s ε-sharpness 100·(max_{y∈C} L(θ+y) − L(θ))/(1+L(θ)), box C.

    :math:`100\,(\max_{y∈C} L(θ+y) − L(θ)) / (1 + L(θ))` over the box
    :math:`C = \{y : |y_i| ≤ ε(|θ_i|+1)\}` of the full parameter space, maximised with
    scipy's L-BFGS-B from ``y = 0`` (one loss-and-gradient pass per function evaluation;
    the value is the largest loss evaluated, a lower bound on the maximum: L-BFGS-B is a
    local method, so ``restarts`` adds runs from random points of the box). Keskar et
    al. used ε ∈ {1e-3, 5e-4} and 10 iterations.

    Args:
        objective: model, loss and data.
        eps: relative size ε of the box.
        max_iter: L-BFGS-B iterations per run.
        restarts: extra runs from uniform random points of the box.
        seed: seed of the restart points.
        cache: base-point cache shared with other metrics (optional).
        progress: progress bar (``None``: only on a terminal).
    """
    from scipy.optimize import Bounds, minimize

    check_positive("eps", eps)
    check_int("max_iter", max_iter)
    check_int("restarts", restarts, minimum=0)
    params = objective.params
    base = get_cache(objective, cache).loss_and_gradient()[0]
    best = [base]
    evaluations = [0]
    with saved_weights(params) as theta:
        flat_theta = flatten(theta).detach().to("cpu", torch.float64).numpy()
        half_width = eps * (np.abs(flat_theta) + 1.0)

        def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
            step = unflatten(torch.from_numpy(np.ascontiguousarray(y)), theta)
            set_weights_(params, theta, step)
            loss, grad = objective.loss_and_gradient()
            evaluations[0] += 1
            if math.isfinite(loss):
                best[0] = max(best[0], loss)
            return -loss, -flatten(grad).detach().to("cpu", torch.float64).numpy()

        rng = np.random.default_rng(seed)
        starts = [np.zeros_like(flat_theta)] + [
            rng.uniform(-half_width, half_width) for _ in range(restarts)
        ]
        iterations = 0
        total = max_iter * len(starts)
        with progress_bar(total=total, desc="eps_sharpness", progress=progress) as bar:
            for y0 in starts:
                res = minimize(
                    fun,
                    y0,
                    jac=True,
                    method="L-BFGS-B",
                    bounds=Bounds(-half_width, half_width),
                    options={"maxiter": max_iter},
                    callback=lambda *_: bar.update(1),
                )
                iterations += int(res.nit)
    value = 100.0 * (best[0] - base) / (1.0 + base)
    return MetricResult(
        float(value),
        None,
        {
            "eps": eps,
            "max_iter": max_iter,
            "restarts": restarts,
            "iterations": iterations,
            "evaluations": evaluations[0],
            "loss": base,
            "max_loss": best[0],
            "message": str(res.message),
        },
    )
