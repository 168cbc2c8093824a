"""Gradient metrics: the gradient norm and the alignment of two data subsets' gradients."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from landscape._tree import rebuild
from landscape.metrics._base import (
    MetricCache,
    MetricResult,
    check_positive,
    get_cache,
    saved_weights,
    set_weights_,
)
from landscape.metrics.registry import register_metric
from landscape.objective import Objective
from optimizers._foreach import tl_copy_, tl_dot, tl_norm

__all__ = ["grad_cosine", "grad_norm", "split_objective"]


@register_metric("grad_norm")
def grad_norm(
    objective: Objective,
    *,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    """Gradient norm ‖∇L(θ)‖₂ over the whole data (exact sample weights).

    Args:
        objective: model, loss and data.
        cache: base-point cache shared with other metrics (optional).
        progress: unused (one gradient pass).
    """
    loss, grad = get_cache(objective, cache).loss_and_gradient()
    return MetricResult(float(tl_norm(grad)), None, {"loss": loss})


def _per_sample_list(obj: Any) -> bool:
    """A list of plain values (a batch's ids or raw text), one per sample."""
    return isinstance(obj, list) and all(
        isinstance(v, str | bytes | int | float | bool) or v is None for v in obj
    )


def _index(obj: Any, idx: Tensor) -> Any:
    if isinstance(obj, Tensor):
        return obj[idx.to(obj.device)]
    if _per_sample_list(obj):
        return [obj[i] for i in idx.tolist()]
    if isinstance(obj, Mapping):
        return {k: _index(v, idx) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return rebuild(obj, (_index(v, idx) for v in obj))
    raise ValueError(f"Invalid data: cannot index inputs of type {type(obj).__name__}")


def _concat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts)
    if all(_per_sample_list(p) for p in parts):
        return [v for p in parts for v in p]
    if isinstance(first, Mapping):
        return {k: _concat([p[k] for p in parts]) for k in first}
    if isinstance(first, tuple | list):
        return rebuild(first, (_concat([p[i] for p in parts]) for i in range(len(first))))
    raise ValueError(f"Invalid data: cannot concatenate inputs of type {type(first).__name__}")


def split_objective(objective: Objective, indices: Sequence[int] | Tensor) -> Objective:
    """An objective with the same model and loss over the samples ``indices`` of the data.

    The samples are gathered from ``objective.batches()`` in order (index ``i`` is the
    ``i``-th sample the objective sees). When processes share the data (``dist``), each
    keeps the subset's samples it holds and the new objective shares them the same way.
    """
    idx = torch.as_tensor(indices, dtype=torch.long).reshape(-1)
    n = objective.n_samples
    if idx.numel() == 0:
        raise ValueError("Invalid subsets: an empty subset")
    if int(idx.min()) < 0 or int(idx.max()) >= n:
        raise ValueError(f"Invalid subsets: indices must lie in [0, {n}) for this data")
    batches = list(objective.batches())
    chunks = []
    if batches:
        try:
            whole = _concat([b.data for b in batches])
        except (RuntimeError, ValueError) as exc:
            raise ValueError(
                "Invalid subsets: the batches cannot be joined into one set of samples "
                f"({exc}); pass other_data= (the second data set) instead"
            ) from None
        # where each sample of the data is in ``whole`` (-1: not held here)
        position = torch.full((n,), -1, dtype=torch.long)
        held = 0
        for b in batches:
            position[b.start : b.start + b.size] = torch.arange(held, held + b.size)
            held += b.size
        local = position[idx]
        local = local[local >= 0]
        sub = _index(whole, local)
        bs = objective.batch_size
        chunks = [
            _index(sub, torch.arange(i, min(i + bs, local.numel())))
            for i in range(0, local.numel(), bs)
        ]
    return objective.derive(chunks, accuracy=False, max_cache_bytes=2**62, sharded=True)


def _subset_objectives(
    objective: Objective, subsets: Any, other_data: Any, seed: int
) -> tuple[Objective, Objective]:
    if other_data is not None:
        if subsets is not None:
            raise ValueError("Invalid subsets: give either subsets or other_data, not both")
        return objective, objective.derive(other_data, accuracy=False)
    n = objective.n_samples
    if subsets is None or (isinstance(subsets, float | int) and not isinstance(subsets, bool)):
        fraction = 0.5 if subsets is None else float(subsets)
        if not 0.0 < fraction < 1.0:
            raise ValueError(f"Invalid subsets: a fraction must lie in (0, 1), got {subsets!r}")
        if n < 2:
            raise ValueError("Invalid subsets: the data has fewer than 2 samples to split")
        gen = torch.Generator().manual_seed(int(seed))
        perm = torch.randperm(n, generator=gen)
        cut = min(max(round(fraction * n), 1), n - 1)
        return split_objective(objective, perm[:cut]), split_objective(objective, perm[cut:])
    if isinstance(subsets, tuple | list) and len(subsets) == 2:
        return split_objective(objective, subsets[0]), split_objective(objective, subsets[1])
    raise ValueError(
        "Invalid subsets: expected None, a fraction in (0, 1) or a pair of index sequences"
    )


def _cosine(a: Sequence[Tensor], b: Sequence[Tensor]) -> float:
    na, nb = float(tl_norm(a)), float(tl_norm(b))
    if na == 0.0 or nb == 0.0:
        return math.nan
    return float(tl_dot(a, b)) / (na * nb)


def _layer_of(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else name


_PERTURB = ("own", "full")


@register_metric("grad_cosine")
def grad_cosine(
    objective: Objective,
    *,
    subsets: Any = None,
    other_data: Any = None,
    rho: float = 0.0,
    perturb: str = "own",
    seed: int = 0,
    cache: MetricCache | None = None,
    progress: bool | None = None,
) -> MetricResult:
    r"""Cosine similarity of the gradients of two data subsets, whole-model and per layer.

    As in Agnostic-SAM's Figure 1 (train part vs validation part). ``info["per_layer"]``
    holds the cosine per module (parameters grouped by name prefix) and
    ``info["per_param"]`` per parameter tensor.

    Args:
        objective: model, loss and data.
        subsets: ``None`` (a random half split), a fraction ``f`` (random split, the first
            subset gets ``f`` of the samples) or a pair ``(indices_a, indices_b)`` of
            sample indices in the order the data is read.
        other_data: instead of ``subsets``: compare the gradient on the objective's data
            with the gradient on this data.
        rho: when > 0, take the gradients at perturbed points ``θ + ρ·ĝ``: with
            ``perturb="own"`` each subset at its own SAM point (the gradients SAM would
            use), with ``perturb="full"`` both at the SAM point of the whole data.
        perturb: ``"own"`` or ``"full"`` (see ``rho``).
        seed: seed of the random split.
        cache: base-point cache shared with other metrics (optional).
        progress: unused.
    """
    check_positive("rho", rho, allow_zero=True)
    objective.require_params()
    if perturb not in _PERTURB:
        raise ValueError(f"Invalid perturb: {perturb!r} (expected one of {', '.join(_PERTURB)})")
    obj_a, obj_b = _subset_objectives(objective, subsets, other_data, seed)
    grads = []
    if rho == 0.0:
        grads = [obj_a.gradient(), obj_b.gradient()]
    else:
        params = objective.params
        with saved_weights(params) as theta:
            full = get_cache(objective, cache).loss_and_gradient()[1] if perturb == "full" else None
            for obj in (obj_a, obj_b):
                g0 = full if full is not None else obj.gradient()
                norm = float(tl_norm(g0))
                set_weights_(params, theta, g0, rho / norm if norm > 0 else 0.0)
                grads.append(obj.gradient())
                with torch.no_grad():
                    tl_copy_(params, theta)  # back to θ for the next subset's direction
    ga, gb = grads
    names = objective.param_names
    per_param = {n: _cosine([a], [b]) for n, a, b in zip(names, ga, gb, strict=True)}
    layers: dict[str, list[int]] = {}
    for i, n in enumerate(names):
        layers.setdefault(_layer_of(n), []).append(i)
    per_layer = {
        layer: _cosine([ga[i] for i in idx], [gb[i] for i in idx]) for layer, idx in layers.items()
    }
    return MetricResult(
        _cosine(ga, gb),
        None,
        {
            "per_layer": per_layer,
            "per_param": per_param,
            "norm_a": float(tl_norm(ga)),
            "norm_b": float(tl_norm(gb)),
            "samples_a": obj_a.n_samples,
            "samples_b": obj_b.n_samples,
            "rho": rho,
            "perturb": perturb,
        },
    )
