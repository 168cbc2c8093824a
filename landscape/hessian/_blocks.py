"""Diagonal blocks of a Hessian operator: its parameters grouped by module or by tensor.

Shared by the per-layer estimators (:func:`block_trace`, :func:`ggn_trace`,
:func:`layer_eigenvalues`) so that they all name and split the layers the same way.
"""

from __future__ import annotations

import itertools

from landscape.hessian.operator import HessianOperator

__all__ = ["GROUPINGS", "block_param_names", "group_blocks", "validate_grouping"]

GROUPINGS = ("module", "tensor")


def validate_grouping(blocks: str) -> None:
    """Raise a ``ValueError`` naming ``blocks`` unless it is one of :data:`GROUPINGS`."""
    if blocks not in GROUPINGS:
        raise ValueError(f"Invalid blocks: {blocks!r} (expected one of {GROUPINGS})")


def group_blocks(op: HessianOperator, grouping: str) -> list[tuple[str, slice]]:
    """``(name, slice)`` of each diagonal block in the operator's flat layout.

    ``"tensor"``: one block per parameter tensor (named like the parameter).
    ``"module"``: the parameters of one module together (named like the module, e.g.
    ``"features.0"`` for ``features.0.weight`` and ``features.0.bias``); a module whose
    parameters are not contiguous in ``op.params`` gives one block per tensor, named
    ``"module[i]"``.
    """
    validate_grouping(grouping)
    if grouping == "tensor":
        return list(op.blocks())
    groups: dict[str, list[slice]] = {}
    for name, sl in op.blocks():
        groups.setdefault(name.rsplit(".", 1)[0] if "." in name else name, []).append(sl)
    out = []
    for name, sls in groups.items():
        # parameters of one module are contiguous when the module's are listed together
        if all(a.stop == b.start for a, b in itertools.pairwise(sls)):
            out.append((name, slice(sls[0].start, sls[-1].stop)))
        else:
            out += [(f"{name}[{i}]", s) for i, s in enumerate(sls)]
    return out


def block_param_names(op: HessianOperator, grouping: str) -> list[tuple[str, list[str]]]:
    """``(name, parameter names)`` of each block of :func:`group_blocks`."""
    layout = list(op.blocks())
    return [
        (name, [n for n, s in layout if sl.start <= s.start and s.stop <= sl.stop])
        for name, sl in group_blocks(op, grouping)
    ]
