"""The result type shared by the eigen-solvers."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

__all__ = ["EigenResult"]


@dataclass
class EigenResult:
    """Eigenpairs of a Hessian operator.

    Attributes:
        eigenvalues: ``(k,)`` float64 tensor, ordered as requested (largest first for
            ``which="largest"``, smallest first for ``"smallest"``).
        eigenvectors: ``k`` unit-norm tensor lists aligned with the operator's ``params``
            (usable as surface directions).
        products: Hessian-vector products used.
        residuals: ``(k,)`` float64 tensor of ``‖H v − λ v‖``.
        converged: ``True`` when every requested pair met ``‖H v − λ v‖ ≤ tol·|λ|``.
        converged_each: the same flag per eigenpair.
        info: method details (method, which, tol, steps).
    """

    eigenvalues: Tensor
    eigenvectors: list[list[Tensor]]
    products: int
    residuals: Tensor
    converged: bool
    converged_each: list[bool] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the eigenvectors)."""
        return {
            "eigenvalues": [float(x) for x in self.eigenvalues],
            "residuals": [float(x) for x in self.residuals],
            "converged": bool(self.converged),
            "converged_each": [bool(c) for c in self.converged_each],
            "products": int(self.products),
            **{k: v for k, v in self.info.items() if isinstance(v, str | int | float | bool)},
        }

    def __post_init__(self) -> None:
        self.eigenvalues = torch.as_tensor(self.eigenvalues, dtype=torch.float64)
        self.residuals = torch.as_tensor(self.residuals, dtype=torch.float64)
