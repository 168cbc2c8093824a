"""Extreme eigenpairs of each layer's diagonal Hessian block ``H_ll``.

Each block runs :func:`lanczos_eigen` on a :class:`HessianOperator` restricted to the
block's parameters. Autograd then prunes the double backward to the part of the network
the block needs, so the products of late layers are cheap (the alternative, a full
product restricted to the block's coordinates, costs a full product for every block).
On the benchmark CNN (``benchmarks/hessian.py``, BENCHMARKS.md: 105 k parameters, one
batch of 256, CPU, one thread), where a full product took 30 ms, a block product took
24 ms for the first convolution, 8.7 ms for the second, 1.7 ms for the 98 k-parameter
hidden linear layer and 0.4 ms for the output layer.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.hessian._blocks import block_param_names, validate_grouping
from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import progress_bar
from landscape.hessian.eigen._result import EigenResult
from landscape.hessian.eigen.lanczos import lanczos_eigen
from landscape.hessian.operator import HessianOperator
from landscape.objective import Objective

__all__ = ["LayerEigenResult", "layer_eigenvalues"]

logger = logging.getLogger(__name__)


@dataclass
class LayerEigenResult(Mapping[str, EigenResult]):
    """Eigenpairs of each diagonal block, a read-only mapping ``block name -> EigenResult``.

    Attributes:
        layers: ``{block name: EigenResult}`` in the order of the parameters; each
            result's eigenvectors are tensor lists aligned with ``param_names[name]``.
        param_names: ``{block name: [parameter names]}``, the parameters of each block.
        dims: ``{block name: number of coordinates}``.
        products: block products over all blocks (each at most the cost of one full
            product, far less for late layers).
        seconds: wall time of all blocks.
        info: settings (grouping, which, tol, criterion, k).
    """

    layers: dict[str, EigenResult]
    param_names: dict[str, list[str]]
    dims: dict[str, int]
    products: int
    seconds: float
    info: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, name: str) -> EigenResult:
        return self.layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable summary (without the eigenvectors).

        ``{"layers": {name: {"eigenvalues", "residuals", "products", "converged", "dim",
        "param_names", ...}}, "products", "seconds", **info}``.
        """
        return {
            "layers": {
                name: {
                    **res.to_dict(),
                    "dim": self.dims[name],
                    "param_names": list(self.param_names[name]),
                }
                for name, res in self.layers.items()
            },
            "products": int(self.products),
            "seconds": float(self.seconds),
            **self.info,
        }


def layer_eigenvalues(
    op_or_objective: HessianOperator | Objective,
    k: int = 1,
    which: str = "largest",
    tol: float = 1e-3,
    max_products: int = 100,
    seed: int = 0,
    *,
    blocks: str = "module",
    criterion: str = "residual",
    progress: bool | None = None,
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
) -> LayerEigenResult:
    """Extreme eigenpairs of every diagonal block ``H_ll`` (one per layer or per tensor).

    Each block's eigenpairs come from :func:`lanczos_eigen` (same ``which``, ``tol``,
    ``criterion``, ``seed`` and ``max_products`` for every block) on the operator
    restricted to the block's parameters. A block product costs one double backward
    through the part of the network between the block and the loss: about a full product
    for the first layer, a small fraction of one for the last layers. Each run also builds
    the block's first-order graph once (one forward and backward; with several batches
    every product recomputes them). Parameters the loss does not use form a zero block
    (eigenvalues 0).

    .. note:: The output layer's block under cross-entropy has a multiple zero
       eigenvalue (shifting all logits by the same amount changes nothing). On a small
       block the Krylov space closes on it and :func:`lanczos_eigen` restarts to find the
       other copies (``which="smallest"``, ``k=2`` is tested against dense blocks); a
       large block's run can stop before its Krylov space closes and then returns such
       an eigenvalue once.

    Args:
        op_or_objective: a :class:`HessianOperator` (its parameters, dtype and product
            method are used; the block products are added to its ``products``) or an
            :class:`~landscape.objective.Objective` (all its parameters, exact products).
        k: eigenpairs per block, clipped to each block's dimension (a bias of 3 entries
            gives at most 3).
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"``.
        tol: relative tolerance (see ``criterion``).
        max_products: cap on products per block (at least ``k``).
        seed: seed of every block's start vector (the same for each block).
        blocks: ``"module"`` (the parameters of one module together, e.g. a layer's weight
            and bias) or ``"tensor"`` (each parameter tensor); the grouping of
            :func:`block_trace`.
        criterion: ``"residual"`` or ``"eigenvalue"`` (see :func:`lanczos_eigen`).
        progress: one progress bar over the blocks (``None``: only on a terminal).
        basis_device: where each block's Krylov basis lives (see :func:`lanczos_eigen`).
        basis_dtype: the dtype of each block's Krylov basis (see :func:`lanczos_eigen`).

    Returns:
        A :class:`LayerEigenResult`: a mapping from block name (``"features.0"`` for
        ``blocks="module"``, ``"features.0.weight"`` for ``"tensor"``) to an
        :class:`EigenResult` whose eigenvectors are unit-norm tensor lists aligned with
        that block's parameters (``result.param_names[name]``), plus the total products.
    """
    validate_grouping(blocks)
    if isinstance(op_or_objective, Objective):
        op = HessianOperator(op_or_objective)
    elif isinstance(op_or_objective, HessianOperator):
        op = op_or_objective
    else:
        raise ValueError(
            f"Invalid op_or_objective: a {type(op_or_objective).__name__}; expected a "
            "HessianOperator or an Objective"
        )
    check_integers(k=k, max_products=max_products)
    if k < 1:
        raise ValueError(f"Invalid k: {k} (must be >= 1)")
    if max_products < k:
        raise ValueError(f"Invalid max_products: {max_products} (must be >= k={k})")
    start = time.perf_counter()
    layers: dict[str, EigenResult] = {}
    param_names: dict[str, list[str]] = {}
    dims: dict[str, int] = {}
    total = 0
    groups = block_param_names(op, blocks)
    with progress_bar(len(groups), "layer eigenvalues", progress) as bar:
        for name, names in groups:
            with op.like(params=names) as block:
                res = lanczos_eigen(
                    block,
                    k=min(k, block.dim),
                    which=which,
                    tol=tol,
                    max_products=max_products,
                    seed=seed,
                    criterion=criterion,
                    progress=False,
                    basis_device=basis_device,
                    basis_dtype=basis_dtype,
                )
            layers[name], param_names[name], dims[name] = res, names, block.dim
            total += res.products
            op.products += res.products
            bar.set_postfix_str(f"{name}: λ={float(res.eigenvalues[0]):.4g}")
            bar.update()
    return LayerEigenResult(
        layers=layers,
        param_names=param_names,
        dims=dims,
        products=total,
        seconds=time.perf_counter() - start,
        info={"grouping": blocks, "k": k, "which": which, "tol": tol, "criterion": criterion},
    )
