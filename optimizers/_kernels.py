"""The arithmetic kernels of the sharpness-aware optimizers, in two interchangeable forms.

Every update rule is written once against the small interface below (copy, scaled add,
linear combination, dot product, norm); :data:`FOREACH` runs it with grouped
``torch._foreach_*`` kernels (a handful of launches per call), :data:`SINGLE_TENSOR`
with one plain op per tensor (the reference, and the fallback for exotic tensors).
``tests/optimizers`` checks that both give the same steps.

A *coefficient* is a Python float, a 0-d tensor (e.g. ``rho / ‖g‖``, kept on the device
so that no step synchronises), or a per-tensor list of floats (a hyper-parameter that
differs between parameter groups).  Reductions accumulate in float32 at least.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from optimizers._foreach import group_by_device_dtype, tl_copy_, tl_dot, tl_norm

Coef = float | Tensor | Sequence[float]

__all__ = ["FOREACH", "SINGLE_TENSOR", "Coef", "Kernels", "get_kernels", "one_minus"]


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _is_list(c: Coef) -> bool:
    return not isinstance(c, (float, int, Tensor))


def _fold(coefs: Sequence[Coef]) -> list[Coef]:
    """Multiply the scalar coefficients together (floats into one float, or into a tensor)."""
    scalar: float | Tensor = 1.0
    lists = []
    for c in coefs:
        if _is_list(c):
            lists.append(c)
        else:
            scalar = scalar * c  # type: ignore[operator]
    return lists if isinstance(scalar, float) and scalar == 1.0 else [scalar, *lists]


def _foreach_scaled(src: list[Tensor], coefs: Sequence[Coef]) -> list[Tensor]:
    """Return ``src * prod(coefs)`` as a new list (``src`` is one device/dtype group)."""
    out = None
    for c in coefs:
        if isinstance(c, Tensor):
            c = c.to(src[0].device)
        out = torch._foreach_mul(src if out is None else out, c)
    return list(src) if out is None else out


def _split(coefs: Sequence[Coef], n: int) -> list[Coef]:
    """Placeholder lists so that per-tensor coefficients travel through the grouping."""
    return [c if _is_list(c) else [c] * n for c in coefs]


def _foreach_add_(dst: Sequence[Tensor], src: Sequence[Tensor], *coefs: Coef) -> None:
    if not dst:
        return
    coefs = _fold(coefs)
    if not coefs or (len(coefs) == 1 and isinstance(coefs[0], float)):
        alpha = coefs[0] if coefs else 1.0
        for gd, gs in group_by_device_dtype(dst, src):
            torch._foreach_add_(gd, gs, alpha=alpha)
        return
    lists = _split(coefs, len(dst))
    for gd, gs, *gc in group_by_device_dtype(dst, src, *lists):
        cs = [c if _is_list(orig) else orig for c, orig in zip(gc, coefs)]
        torch._foreach_add_(gd, _foreach_scaled(gs, cs))


def _foreach_mul_(dst: Sequence[Tensor], *coefs: Coef) -> None:
    if not dst:
        return
    coefs = _fold(coefs)
    lists = _split(coefs, len(dst))
    for gd, *gc in group_by_device_dtype(dst, *lists):
        for c, orig in zip(gc, coefs):
            c = c if _is_list(orig) else orig
            torch._foreach_mul_(gd, c.to(gd[0].device) if isinstance(c, Tensor) else c)


def _foreach_sub(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    out: list[Tensor | None] = [None] * len(a)
    idx = list(range(len(a)))
    for ga, gb, gi in group_by_device_dtype(a, b, idx):
        for i, t in zip(gi, torch._foreach_sub(ga, gb)):
            out[i] = t
    return out  # type: ignore[return-value]


def _foreach_mul(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    out: list[Tensor | None] = [None] * len(a)
    idx = list(range(len(a)))
    for ga, gb, gi in group_by_device_dtype(a, b, idx):
        for i, t in zip(gi, torch._foreach_mul(ga, gb)):
            out[i] = t
    return out  # type: ignore[return-value]


def _foreach_abs_add(a: Sequence[Tensor], eta: float) -> list[Tensor]:
    out: list[Tensor | None] = [None] * len(a)
    idx = list(range(len(a)))
    for ga, gi in group_by_device_dtype(a, idx):
        t = torch._foreach_abs(ga)
        if eta:
            torch._foreach_add_(t, eta)
        for i, x in zip(gi, t):
            out[i] = x
    return out  # type: ignore[return-value]


def _single_coef(c: Coef, i: int, t: Tensor) -> float | Tensor:
    if isinstance(c, Tensor):
        return c.to(t.device)
    return c[i] if _is_list(c) else c  # type: ignore[index]


def _single_add_(dst: Sequence[Tensor], src: Sequence[Tensor], *coefs: Coef) -> None:
    for i, (d, s) in enumerate(zip(dst, src)):
        for c in coefs:
            s = s * _single_coef(c, i, s)
        d.add_(s)


def _single_mul_(dst: Sequence[Tensor], *coefs: Coef) -> None:
    for i, d in enumerate(dst):
        for c in coefs:
            d.mul_(_single_coef(c, i, d))


def _single_copy_(dst: Sequence[Tensor], src: Sequence[Tensor]) -> None:
    for d, s in zip(dst, src):
        d.copy_(s)


def _single_dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    if not a:
        return torch.zeros(())
    acc = _acc_dtype(a[0].dtype)
    return sum((x.to(acc) * y.to(acc)).sum() for x, y in zip(a, b))  # type: ignore[return-value]


def _single_norm(a: Sequence[Tensor]) -> Tensor:
    if not a:
        return torch.zeros(())
    acc = _acc_dtype(a[0].dtype)
    return sum(x.to(acc).square().sum() for x in a).sqrt()  # type: ignore[union-attr]


@dataclass(frozen=True)
class Kernels:
    """One implementation of the tensor-list operations the update rules use.

    Attributes:
        name: ``"foreach"`` or ``"single_tensor"``.
        copy_: ``dst_i <- src_i`` (exact).
        add_: ``dst_i <- dst_i + src_i · Π coefs``.
        mul_: ``dst_i <- dst_i · Π coefs``.
        sub: new list ``a_i - b_i``.
        mul: new list ``a_i * b_i``.
        abs_add: new list ``|a_i| + eta``.
        dot: ``Σ_i <a_i, b_i>`` as a 0-d tensor (float32 or float64).
        norm: Euclidean norm of the concatenation, float32 or float64.
    """

    name: str
    copy_: Callable[[Sequence[Tensor], Sequence[Tensor]], None]
    add_: Callable[..., None]
    mul_: Callable[..., None]
    sub: Callable[[Sequence[Tensor], Sequence[Tensor]], list[Tensor]]
    mul: Callable[[Sequence[Tensor], Sequence[Tensor]], list[Tensor]]
    abs_add: Callable[[Sequence[Tensor], float], list[Tensor]]
    dot: Callable[[Sequence[Tensor], Sequence[Tensor]], Tensor]
    norm: Callable[[Sequence[Tensor]], Tensor]


FOREACH = Kernels(
    name="foreach",
    copy_=tl_copy_,
    add_=_foreach_add_,
    mul_=_foreach_mul_,
    sub=_foreach_sub,
    mul=_foreach_mul,
    abs_add=_foreach_abs_add,
    dot=tl_dot,
    norm=tl_norm,
)

SINGLE_TENSOR = Kernels(
    name="single_tensor",
    copy_=_single_copy_,
    add_=_single_add_,
    mul_=_single_mul_,
    sub=lambda a, b: [x - y for x, y in zip(a, b)],
    mul=lambda a, b: [x * y for x, y in zip(a, b)],
    abs_add=lambda a, eta: [x.abs() + eta if eta else x.abs() for x in a],
    dot=_single_dot,
    norm=_single_norm,
)


def get_kernels(foreach: bool | None, tensors: Sequence[Tensor] = ()) -> Kernels:
    """Pick the kernels: ``foreach=None`` means foreach unless a tensor is sparse."""
    if foreach is None:
        foreach = not any(t.is_sparse for t in tensors)
    return FOREACH if foreach else SINGLE_TENSOR


def one_minus(c: float | Sequence[float]) -> float | list[float]:
    """``1 - c`` for a float or a per-tensor list of floats."""
    return 1.0 - c if isinstance(c, (float, int)) else [1.0 - x for x in c]
