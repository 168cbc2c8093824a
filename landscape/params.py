"""Which parameters an analysis spans: one selection for surfaces, curvature and metrics.

By default an analysis spans the parameters with ``requires_grad=True``: on a fine-tuned
model with a frozen backbone, surfaces move and Hessians differentiate the trained part
only. A selection by name picks a subset the same way in every entry point (``params=``
in Python, ``--params`` on the command line):

- an exact parameter name (``"classifier.weight"``);
- a module prefix (``"encoder.layer.1"`` selects every ``encoder.layer.1.*``);
- a glob pattern (``"*lora_*"``, ``"*.bias"``), as :mod:`fnmatch` reads it;
- a parameter tensor of the model;
- a comma-separated string of the above (``"classifier,*lora_*"``);
- a list (or any iterable, ``model.classifier.parameters()``) of the above.

The selection keeps the model's parameter order. For curvature and metrics (which need
gradients) a prefix or pattern skips frozen parameters and naming one is an error; a
surface may move frozen weights when they are selected.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterator, Sequence

from torch import Tensor, nn

__all__ = ["ParamSelection", "as_selection", "select_parameters", "selection_text"]

ParamSelection = str | Tensor | Sequence[str | Tensor] | None


def _items(params: ParamSelection) -> list[str | Tensor]:
    if params is None:
        return []
    if isinstance(params, str):
        return [s.strip() for s in params.split(",") if s.strip()]
    if isinstance(params, Tensor):
        return [params]
    out: list[str | Tensor] = []
    for item in params:
        if isinstance(item, str):
            out.extend(_items(item))
        elif isinstance(item, Tensor):
            out.append(item)
        else:
            raise ValueError(f"Invalid params: an item of type {type(item).__name__}")
    return out


def as_selection(params: ParamSelection) -> ParamSelection:
    """``params`` made reusable: a one-shot iterable becomes a list.

    ``model.fc.parameters()`` is a generator: read once, it would select nothing the
    second time (a plane draws two directions, each reading the selection). Other
    iterables are left as they are (they can be read again; a DataLoader passed by
    mistake is not read here).
    """
    if isinstance(params, Iterator):  # generators, filter(), iter(...): read once
        return list(params)
    return params


def selection_text(params: ParamSelection) -> str:
    """A selection as text for a file's attributes or settings (tensors as ``<tensor>``)."""
    if isinstance(params, str):
        return params
    if isinstance(params, Tensor):
        return "<tensor>"
    return ",".join(p if isinstance(p, str) else "<tensor>" for p in params or [])


def select_parameters(
    model: nn.Module, params: ParamSelection = None, *, require_grad: bool = True
) -> list[tuple[str, Tensor]]:
    """The ``(name, parameter)`` pairs of ``model`` an analysis spans, in model order.

    Args:
        model: the network.
        params: None (every parameter with ``requires_grad=True``) or a selection (see the
            module docstring).
        require_grad: refuse an explicitly named parameter that does not require grad
            (curvature needs gradients; surfaces may move frozen weights).

    Raises:
        ValueError: a name or pattern matches nothing, a tensor is not the model's, a
            named parameter is frozen (with ``require_grad``), or nothing is selected.
    """
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise ValueError("Invalid params: the model has no parameter with requires_grad=True")
        return chosen
    items = _items(params)
    if not items:
        raise ValueError(f"Invalid params: {params!r} selects nothing")
    # Names are matched against every name a parameter has: a tied weight (a language
    # model's lm_head.weight, shared with the embedding) is found under either name.
    every_name = list(model.named_parameters(remove_duplicate=False))
    keep: set[int] = set()
    for item in items:
        if isinstance(item, Tensor):
            hits = [(n, p) for n, p in named if p is item]
            if not hits:
                raise ValueError("Invalid params: a tensor that is not a parameter of the model")
            explicit = True
        elif any(c in item for c in "*?["):
            hits = [(n, p) for n, p in every_name if fnmatch.fnmatchcase(n, item)]
            explicit = False
        else:
            exact = [(n, p) for n, p in every_name if n == item]
            explicit = bool(exact)
            hits = exact or [(n, p) for n, p in every_name if n.startswith(item + ".")]
        if not explicit and require_grad:
            hits = [(n, p) for n, p in hits if p.requires_grad]
        if not hits:
            raise ValueError(
                f"Invalid params: {item!r} matches no parameter"
                + (" requiring grad" if require_grad else "")
                + " (an exact name, a module prefix or a glob pattern)"
            )
        for n, p in hits:
            if require_grad and not p.requires_grad:
                raise ValueError(
                    f"Invalid params: {n} does not require grad (set requires_grad=True to "
                    "measure its curvature)"
                )
            keep.add(id(p))
    return [(n, p) for n, p in named if id(p) in keep]
