"""Tensor-list arithmetic shared by the optimizers and the analysis layer.

A "tensor list" is a ``list[Tensor]`` laid out like ``model.parameters()`` (a
parameter vector kept in pieces).  Every operation groups the tensors by
``(device, dtype)`` and uses the ``torch._foreach_*`` kernels, so one call launches
a handful of kernels instead of one per tensor.  Reductions (dot products, norms)
accumulate in float32 at least, whatever the tensors' dtype.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = [
    "group_by_device_dtype",
    "tl_add_",
    "tl_axpby_",
    "tl_clone",
    "tl_copy_",
    "tl_dot",
    "tl_norm",
    "tl_scale_",
    "tl_zeros_like",
]


def group_by_device_dtype(*lists: Sequence[Tensor]) -> list[tuple[list[Tensor], ...]]:
    """Split parallel tensor lists into groups sharing the first list's device and dtype.

    Returns one tuple of lists per group; the i-th tuple holds the matching slices of
    every input list, in their original order.
    """
    first = lists[0]
    for other in lists[1:]:
        if len(other) != len(first):
            raise ValueError(f"tensor lists differ in length: {len(first)} vs {len(other)}")
    index: dict[tuple[torch.device, torch.dtype], list[int]] = defaultdict(list)
    for i, t in enumerate(first):
        index[(t.device, t.dtype)].append(i)
    return [tuple([lst[i] for i in idx] for lst in lists) for idx in index.values()]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def tl_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    """Return ``sum_i <a_i, b_i>`` as a 0-d tensor (float32, or float64 for float64 input)."""
    if not a:
        return torch.zeros(())
    total = None
    for ga, gb in group_by_device_dtype(a, b):
        acc = _acc_dtype(ga[0].dtype)
        if ga[0].dtype == acc:
            parts = torch._foreach_mul(ga, gb)
        else:
            parts = torch._foreach_mul([t.to(acc) for t in ga], [t.to(acc) for t in gb])
        s = torch.stack([p.sum() for p in parts]).sum()
        total = s if total is None else total + s.to(total.device, total.dtype)
    return total


def tl_norm(a: Sequence[Tensor]) -> Tensor:
    """Return the Euclidean norm of the concatenation of ``a`` (accumulated in float32+)."""
    if not a:
        return torch.zeros(())
    total = None
    for (ga,) in group_by_device_dtype(a):
        acc = _acc_dtype(ga[0].dtype)
        norms = torch._foreach_norm(ga if ga[0].dtype == acc else [t.to(acc) for t in ga])
        s = torch.stack(norms).square().sum()
        total = s if total is None else total + s.to(total.device, total.dtype)
    return total.sqrt()


def tl_clone(a: Sequence[Tensor]) -> list[Tensor]:
    """Return detached copies of ``a``."""
    return [t.detach().clone() for t in a]


def tl_zeros_like(a: Sequence[Tensor]) -> list[Tensor]:
    """Return zeros shaped like ``a``."""
    return [torch.zeros_like(t) for t in a]


def tl_copy_(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    """``dst_i <- src_i`` in place (exact: a copy, never arithmetic)."""
    for gd, gs in group_by_device_dtype(dst, src):
        torch._foreach_copy_(gd, gs)


def tl_add_(dst: Sequence[Tensor], src: Sequence[Tensor], alpha: float | Tensor = 1.0) -> None:
    """``dst_i <- dst_i + alpha * src_i`` in place."""
    for gd, gs in group_by_device_dtype(dst, src):
        if isinstance(alpha, Tensor):
            torch._foreach_add_(gd, torch._foreach_mul(gs, alpha.to(gd[0].device)))
        else:
            torch._foreach_add_(gd, gs, alpha=alpha)


def tl_scale_(dst: Sequence[Tensor], alpha: float | Tensor) -> None:
    """``dst_i <- alpha * dst_i`` in place."""
    for (gd,) in group_by_device_dtype(dst):
        torch._foreach_mul_(gd, alpha.to(gd[0].device) if isinstance(alpha, Tensor) else alpha)


def tl_axpby_(
    dst: Sequence[Tensor], a: float, x: Sequence[Tensor], b: float, y: Sequence[Tensor]
) -> None:
    """``dst_i <- a * x_i + b * y_i`` in place (``dst`` may alias ``x`` or ``y``)."""
    for gd, gx, gy in group_by_device_dtype(dst, x, y):
        tmp = torch._foreach_mul(gx, a)
        torch._foreach_add_(tmp, gy, alpha=b)
        torch._foreach_copy_(gd, tmp)
