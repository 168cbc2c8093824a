"""The Hessian of a loss as a linear operator: exact, finite-difference and forward-over-reverse.

:class:`HessianOperator` wraps an :class:`~landscape.objective.Objective` (a model, a loss
and data) and multiplies the Hessian ``H = ∇²L(θ)`` of the exactly weighted mean loss by
vectors, without ever forming ``H``. Vectors are flat tensors of length ``op.dim`` or
tensor lists aligned with ``op.params``.

Products:

- ``method="exact"`` (default): double backward. With a single batch the first-order
  graph ``g = ∇L`` is built once and reused for every product (one backward per product);
  with several batches every product recomputes each batch's gradient graph and
  accumulates ``Σ_b (n_b/N) H_b v`` (exact sample weights).
- ``method="forward"``: forward-over-reverse, ``torch.func.jvp`` of ``torch.func.grad``
  per batch (no graph kept between products). Not with an embedding that has a
  ``padding_idx`` among the parameters (autograd freezes its padding row, forward mode
  does not, so the products would not be symmetric): ``"exact"`` is used, with a warning
  (``"auto"``: silently).
- ``method="auto"``: forward-over-reverse where it is faster. With a single batch the
  kept graph (``"exact"``) is used, since one backward per product beats any recomputation;
  with several batches the first product computes its first two batches both ways
  (the first as a warm-up), times the second, and the operator keeps the faster method
  (``op.method`` becomes ``"exact"`` or ``"forward"``; ``op.method_seconds`` holds the
  timings). The two agree to rounding, so a run differs from ``"exact"`` at that level.
- ``method="fd"``: central differences of the gradient,
  ``Hv ≈ ‖v‖ (g(θ + h v̂) − g(θ − h v̂)) / 2h`` with ``v̂ = v/‖v‖`` (two gradients, the
  memory of one). Weights are restored exactly by copy. The step ``h`` defaults to a
  fraction of the weights' norm that depends on the dtype (:func:`default_fd_step`).
  Every product is checked (``fd_check="always"``) by the symmetry of its two one-sided
  differences: ``‖g₊ + g₋ − 2g₀‖ / ‖g₊ − g₋‖`` is ``O(h)`` for a smooth loss but of order
  one when the segment ``θ ± h v̂`` crosses ReLU/max-pool kinks or when rounding dominates
  (``g₀ = ∇L(θ)`` is computed once, so the check is free). A product that fails is
  retried at ``h/10`` and ``h/100``; one that still fails is counted in
  ``op.fd_failed`` and warned about with :class:`FiniteDifferenceWarning`.
  ``op.unverified_products`` counts failed and unchecked products (eigen-solvers report
  ``converged=False`` when a run used any).

Under ``torchrun`` an objective built with ``dist=`` gives each process its share of the
batches: every product (and gradient) is this process's partial sum, all-reduced once, so
that every process holds the same ``H v`` and an estimator on top (Lanczos, Hutchinson...)
runs identically on all of them.

The model's train/eval mode and every parameter's ``.grad`` are left as found; parameters
the loss does not depend on get zero rows. ``dtype=torch.float64`` works on a float64 twin
of the model (a snapshot of the weights when the operator is built).
"""

from __future__ import annotations

import copy
import logging
import math
import time
import warnings
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape._tree import rebuild
from landscape.batches import math_attention
from landscape.distributed import DistContext, broadcast_object
from landscape.objective import Objective, make_objective, move_to_device
from landscape.params import ParamSelection, as_selection, select_parameters
from optimizers._foreach import tl_add_, tl_clone, tl_copy_, tl_norm

__all__ = ["FiniteDifferenceWarning", "HessianOperator", "default_fd_step"]

logger = logging.getLogger(__name__)

_METHODS = ("exact", "forward", "fd", "auto")
_AUTO_TRIAL_BATCHES = 2  # batches of the first product computed both ways by method="auto"
_FD_CHECKS = ("always", "first", "never")


class FiniteDifferenceWarning(UserWarning):
    """Finite differences that failed their check (kinks of ReLU/max-pool, or rounding)."""


_FD_RELATIVE_STEP = {torch.float64: 1e-7, torch.float32: 1e-3, torch.float16: 3e-2}
_FD_RETRIES = 2  # a failed product is retried at h/10, h/100
_FD_SHRINK = 10.0


def default_fd_step(dtype: torch.dtype, params: Sequence[Tensor] | None = None) -> float:
    """Default finite-difference step (length along the unit direction) for ``dtype``.

    ``δ · max(‖θ‖, 1)`` with ``θ`` the parameters (``‖θ‖ = 1`` when not given): a unit
    direction moves each weight by ``δ`` of its typical size, so the rounding of the
    perturbed weights costs ``≈ eps/δ`` whatever the model's scale. ``δ = 1e-3`` in
    float32 (the relative error of a product was 1e-4 on a tanh MLP and a GELU conv net,
    against 7e-3 at 1e-5 and 5e-2 at 1e-6), ``1e-7`` in float64 (1e-8 on the same nets
    and on a trained ReLU MLP, whose kinks made 1e-5 wrong by 150×), ``3e-2`` in half
    precision (``benchmarks/coverage.py --fd``). On ReLU networks in float32 no step is
    right: kinks dominate where rounding does not; the per-product check reports it.
    """
    delta = _FD_RELATIVE_STEP.get(torch.float16 if dtype == torch.bfloat16 else dtype, 1e-3)
    if params is None:
        return delta
    norm = math.sqrt(sum(float(p.detach().double().pow(2).sum()) for p in params))
    if not math.isfinite(norm):  # non-finite weights: the products say so, not the step
        return delta
    return delta * max(norm, 1.0)


def _cast_floating(obj: Any, dtype: torch.dtype) -> Any:
    if isinstance(obj, Tensor):
        return obj.to(dtype) if obj.is_floating_point() else obj
    if isinstance(obj, dict):
        return {k: _cast_floating(v, dtype) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return rebuild(obj, (_cast_floating(v, dtype) for v in obj))
    return obj


def random_vector(
    n: int, generator: torch.Generator, kind: str, dtype: torch.dtype, device: torch.device
) -> Tensor:
    """``n`` Gaussian or Rademacher entries drawn on the CPU from ``generator`` (reproducible)."""
    if kind == "gaussian":
        v = torch.randn(n, generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        v = torch.randint(0, 2, (n,), generator=generator).to(torch.float64) * 2 - 1
    else:
        raise ValueError(f"Invalid kind: {kind!r} (expected 'gaussian' or 'rademacher')")
    return move_to_device(v.to(dtype), device)


class _BatchLoss(nn.Module):
    """``forward(batch) -> weighted batch loss`` of an objective, for ``torch.func``."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.inner = objective.model
        self._objective = objective

    def forward(self, batch: Any) -> Tensor:
        return self._objective.batch_loss(batch, self.inner) * batch.weight


def _looks_like_data(model: nn.Module, params: Any) -> bool:
    """Whether ``params`` is data passed where the parameter selection goes."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(params, DataLoader | Dataset):
        return True
    if isinstance(params, tuple | list) and params:
        own = {id(p) for p in model.parameters()}
        return any(isinstance(t, Tensor) and id(t) not in own for t in params) or any(
            isinstance(t, tuple | list | Mapping) for t in params
        )
    return False


class HessianOperator:
    """Hessian of an objective's loss w.r.t. (a subset of) its parameters, as a linear operator.

    Args:
        objective: an :class:`~landscape.objective.Objective`, or a ``nn.Module`` (then
            ``data`` is required and an ``Objective`` is built from ``data``, ``loss_fn``,
            ``batch_size`` and ``device``).
        params: the parameters spanning the operator (a block of the Hessian): tensors of
            the model, parameter names, module prefixes (``"layer1"`` selects every
            parameter named ``layer1.*``) or glob patterns (``"*lora_*"``), see
            :func:`~landscape.params.select_parameters`. Default: the objective's
            parameters (every parameter requiring grad unless it selected fewer).
        data: the data when ``objective`` is a module.
        loss_fn: the loss when ``objective`` is a module (default cross-entropy, or the
            model's own loss for Hugging Face-style dict batches).
        batch_size: batch size when ``objective`` is a module.
        device: device when ``objective`` is a module.
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``, or
            ``model(**inputs)`` for a dict).
        compute_loss: ``compute_loss(model, batch)`` returning the batch's mean loss or
            ``(mean_loss, n_items)``, for batches no other rule reads.
        count_items: ``count_items(batch)``: the number of items a batch's loss averages
            (default: tokens not ignored, or samples).
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (labels) in dict batches.
        method: ``"exact"`` (double backward), ``"forward"`` (forward-over-reverse),
            ``"auto"`` (the kept graph with one batch; otherwise whichever of the two is
            faster on the first product, see the module docstring) or ``"fd"`` (finite
            differences of gradients).
        dtype: compute in this dtype (``torch.float64`` builds a float64 twin of the
            model and data); default the parameters' own dtype.
        h: finite-difference step along the unit direction (``method="fd"``); default
            :func:`default_fd_step`.
        fd_check: which finite-difference products to check (the symmetry of the two
            one-sided differences, free after one gradient at ``θ``): ``"always"``
            (default), ``"first"`` or ``"never"``; unchecked products count as unverified.
        fd_check_rtol: the asymmetry ``‖g₊ + g₋ − 2g₀‖ / ‖g₊ − g₋‖`` above which a product
            fails (and is retried at a smaller step).
        reuse_graph: keep the first-order graph(s) between products (one per batch: the
            memory of the whole data's graph, fixed across products); default: when the
            data is one batch and ``method="exact"``.
        dist: when ``objective`` is a module: processes sharing the data (see
            :class:`~landscape.objective.Objective`); default this process reads it all.

    Use it as a context manager (or call :meth:`close`) to release a kept graph.
    """

    def __init__(
        self,
        objective: Objective | nn.Module,
        params: ParamSelection = None,
        *,
        data: Any = None,
        loss_fn: Any = None,
        batch_size: int = 256,
        device: str | torch.device | None = None,
        forward: Any = None,
        compute_loss: Any = None,
        count_items: Any = None,
        input_key: str | None = None,
        target_key: str | None = None,
        method: str = "exact",
        dtype: torch.dtype | None = None,
        h: float | None = None,
        fd_check: str = "always",
        fd_check_rtol: float = 0.05,
        reuse_graph: bool | None = None,
        dist: DistContext | None = None,
    ) -> None:
        params = as_selection(params)  # a generator is read once
        if isinstance(objective, nn.Module):
            if data is None:
                if _looks_like_data(objective, params):
                    raise ValueError(
                        f"Invalid params: a {type(params).__name__} that looks like data; the "
                        "second argument is the parameter selection: pass the data by keyword, "
                        "HessianOperator(model, data=...)"
                    )
                raise ValueError("Invalid data: None; a model needs data= (or pass an Objective)")
            objective = make_objective(
                objective,
                data,
                loss_fn,
                batch_size=batch_size,
                device=device,
                forward=forward,
                compute_loss=compute_loss,
                count_items=count_items,
                input_key=input_key,
                target_key=target_key,
                params=params,
                dist=dist,
            )
        elif not isinstance(objective, Objective):
            raise ValueError(
                f"Invalid objective: a {type(objective).__name__}; expected an Objective or a "
                "nn.Module with data="
            )
        if method not in _METHODS:
            raise ValueError(f"Invalid method: {method!r} (expected one of {_METHODS})")
        if fd_check not in _FD_CHECKS:
            raise ValueError(f"Invalid fd_check: {fd_check!r} (expected one of {_FD_CHECKS})")
        if h is not None and not h > 0:
            raise ValueError(f"Invalid h: {h} (must be > 0)")
        if not fd_check_rtol > 0:
            raise ValueError(f"Invalid fd_check_rtol: {fd_check_rtol}")
        self.objective = objective
        self.method = method
        self.params: list[Tensor] = self._select(objective, params)
        names = {id(p): n for n, p in objective.model.named_parameters()}
        self.param_names: list[str] = [
            names.get(id(p), f"param{i}") for i, p in enumerate(self.params)
        ]
        if not self.params:
            raise ValueError("Invalid params: no parameter requiring grad was selected")
        first = self.params[0]
        self.dtype = dtype if dtype is not None else first.dtype
        if not self.dtype.is_floating_point:
            raise ValueError(f"Invalid dtype: {self.dtype}")
        self.device = first.device

        # The objective and parameters the products are computed on.
        if any(p.dtype != self.dtype for p in self.params):
            self._obj, self._work = self._twin(objective, self.param_names, self.dtype)
        else:
            self._obj, self._work = objective, self.params
        self.shapes = [p.shape for p in self.params]
        self.numels = [p.numel() for p in self.params]
        self.dim = int(sum(self.numels))
        self.h = float(h) if h is not None else default_fd_step(self.dtype, self._work)
        self.fd_check = fd_check
        self.fd_check_rtol = fd_check_rtol
        n_batches = sum(1 for _ in self._obj.batches()) if self._obj.cached else 2
        graph_ok = method in ("exact", "auto")
        self.reuse_graph = (
            (n_batches == 1 and graph_ok) if reuse_graph is None else bool(reuse_graph)
        )
        if self.reuse_graph and not graph_ok:
            raise ValueError(f"Invalid reuse_graph: True needs method='exact', not {method!r}")
        self._auto = method == "auto"  # what was asked for; ``method`` is what runs
        if self.reuse_graph:
            self.method = "exact"
        self.method_seconds: dict[str, float] = {}
        if self.reuse_graph and not self._obj.cached:
            raise ValueError("Invalid reuse_graph: True needs data cached on the device")
        self.products = 0
        self._graph: list[list[Tensor | None]] | None = None
        self._graph_versions: list[int] | None = None
        self._fd_checked = False
        self._forward_ok = False  # method="forward" worked on a first product
        self.fd_failed = 0  # checked finite-difference products that failed
        self.fd_unchecked = 0
        self.fd_retried = 0
        self._fd_base: tuple[list[Tensor], list[Tensor]] | None = None  # θ, ∇L(θ)
        self._agreed = False  # method="auto" under dist: the processes agreed on one
        if self.method in ("forward", "auto"):
            self._refuse_forward_on_padding_rows()

    # ------------------------------------------------------------------ construction
    def _refuse_forward_on_padding_rows(self) -> None:
        """Use ``"exact"`` when an embedding with ``padding_idx`` is among the parameters.

        Autograd treats an embedding's padding row as frozen (its gradient is always zero
        and nothing flows back into it), but forward mode does not: ``jvp`` of the
        gradient then gives a non-symmetric "Hessian" (zero rows, non-zero columns for
        the padding row), unlike the double backward. The exact products are kept.
        """
        work = {id(p) for p in self._work}
        padded = [
            name
            for name, m in self._obj.model.named_modules()
            if isinstance(m, nn.Embedding | nn.EmbeddingBag)
            and m.padding_idx is not None
            and id(m.weight) in work
        ]
        if not padded:
            return
        message = (
            f"forward-over-reverse Hessian products differ from the double backward on the "
            f"padding row of the embedding {padded[0]!r} (padding_idx, frozen by autograd); "
            "using method='exact'"
        )
        if self.method == "forward":
            warnings.warn(message, UserWarning, stacklevel=3)
        else:
            logger.info(message)
        self.method = "exact"

    @staticmethod
    def _select(objective: Objective, params: ParamSelection) -> list[Tensor]:
        if params is None:
            return list(objective.params)
        return [p for _, p in select_parameters(objective.model, params)]

    @staticmethod
    def _twin(
        objective: Objective, names: list[str], dtype: torch.dtype
    ) -> tuple[Objective, list[Tensor]]:
        """A copy of the objective's model and (cached) data in ``dtype``."""
        model = copy.deepcopy(objective.model).to(dtype)
        batches = [_cast_floating(b.data, dtype) for b in objective.batches()]
        twin = objective.derive(
            batches, model=model, max_cache_bytes=2**62, params=names, sharded=True
        )
        lookup = dict(model.named_parameters())
        return twin, [lookup[n] for n in names]

    def like(
        self, objective: Objective | None = None, params: Sequence[Tensor | str] | None = None
    ) -> HessianOperator:
        """An operator with this one's product settings on another objective or block.

        Args:
            objective: default the objective the products run on (the dtype twin, if
                any, so that no further copy of the model is made).
            params: default the same parameters (by name).

        ``method="auto"`` is passed on as ``"auto"`` (the new operator times its own
        products); the graph is kept when this one keeps it and the data is cached.
        """
        obj = self._obj if objective is None else objective
        return HessianOperator(
            obj,
            params=self.param_names if params is None else params,
            method="auto" if self._auto else self.method,
            h=self.h,
            fd_check=self.fd_check,
            fd_check_rtol=self.fd_check_rtol,
            reuse_graph=self.reuse_graph and obj.cached,
        )

    # ------------------------------------------------------------------ vector layout
    def to_list(self, v: Tensor) -> list[Tensor]:
        """Split a flat vector into tensors shaped like ``params`` (views when possible)."""
        v = torch.as_tensor(v).to(self.device, self.dtype)
        if v.shape != (self.dim,):
            raise ValueError(f"Invalid vector: shape {tuple(v.shape)}, expected ({self.dim},)")
        return [c.view(s) for c, s in zip(v.split(self.numels), self.shapes, strict=True)]

    def to_flat(self, vs: Sequence[Tensor]) -> Tensor:
        """Concatenate a tensor list aligned with ``params`` into a flat vector."""
        if len(vs) != len(self.params):
            raise ValueError(f"Invalid vector: {len(vs)} tensors, expected {len(self.params)}")
        return torch.cat([t.reshape(-1).to(self.device, self.dtype) for t in vs])

    def blocks(self) -> Iterator[tuple[str, slice]]:
        """Yield ``(name, slice)`` of each parameter tensor in the flat layout."""
        start = 0
        for name, n in zip(self.param_names, self.numels, strict=True):
            yield name, slice(start, start + n)
            start += n

    # ------------------------------------------------------------------ products
    def matvec(self, v: Tensor | np.ndarray) -> Tensor:
        """``H v`` for a flat vector ``v`` (returned flat, in ``op.dtype``)."""
        vs = self.to_list(torch.as_tensor(v))
        return self.to_flat(self.hvp(vs))

    def matmat(self, vs: Tensor) -> Tensor:
        """``H V`` for a ``(dim, k)`` matrix, one product per column."""
        if vs.dim() != 2 or vs.shape[0] != self.dim:
            raise ValueError(f"Invalid matrix: shape {tuple(vs.shape)}, expected ({self.dim}, k)")
        return torch.stack([self.matvec(vs[:, j]) for j in range(vs.shape[1])], dim=1)

    def __matmul__(self, v: Any) -> Any:
        if isinstance(v, list | tuple):
            return self.hvp(v)
        v = torch.as_tensor(v)
        return self.matvec(v) if v.dim() == 1 else self.matmat(v)

    def hvp(self, vs: Sequence[Tensor]) -> list[Tensor]:
        """``H v`` for a tensor list aligned with ``params`` (returned as a tensor list)."""
        if len(vs) != len(self.params):
            raise ValueError(f"Invalid vector: {len(vs)} tensors, expected {len(self.params)}")
        vs = [t.detach().to(self.device, self.dtype) for t in vs]
        for t, s in zip(vs, self.shapes, strict=True):
            if t.shape != s:
                raise ValueError(f"Invalid vector: a tensor of shape {tuple(t.shape)}, not {s}")
        if self.method == "fd":  # its gradients are summed over processes already
            out = self._hvp_fd(vs)
        else:
            out = self._hvp_local(vs)
            if self._obj.distributed:
                out = self._obj.all_reduce(out)
                if self._auto and not self._agreed:
                    self._agree_on_method()
        self.products += 1
        if not bool(torch.stack([torch.isfinite(t).all() for t in out]).all()):
            raise ValueError(
                "Invalid value: a Hessian-vector product holds nan or inf (the loss or its "
                "gradient is not finite at these weights on this data)"
            )
        return out

    def _agree_on_method(self) -> None:
        """``method="auto"`` under ``dist``: every process takes process 0's choice."""
        method, seconds = broadcast_object((self.method, self.method_seconds), self._obj.dist)
        if method != "auto":  # process 0 held no batch: each keeps its own
            self.method, self.method_seconds = method, seconds
        self._agreed = True

    def _hvp_local(self, vs: list[Tensor]) -> list[Tensor]:
        """``Σ_b w_b H_b v`` over this process's batches (all of them without ``dist``)."""
        if self.reuse_graph:
            return self._hvp_reused(vs)
        if self.method == "auto":
            return self._hvp_auto(vs)
        if self.method == "forward" and not self._forward_ok:
            return self._hvp_forward_first(vs)
        each = self._per_batch()
        return self._accumulate(vs, lambda batch, _i: each(batch, vs))

    @staticmethod
    def _double_backward(
        grads: Sequence[Tensor | None], params: list[Tensor], vs: Sequence[Tensor], retain: bool
    ) -> list[Tensor]:
        pairs = [
            (g, v) for g, v in zip(grads, vs, strict=True) if g is not None and g.requires_grad
        ]
        if not pairs:
            return [torch.zeros_like(p) for p in params]
        parts = torch.autograd.grad(
            [g for g, _ in pairs],
            params,
            grad_outputs=[v for _, v in pairs],
            retain_graph=retain,
            allow_unused=True,
        )
        return [torch.zeros_like(p) if h is None else h for h, p in zip(parts, params, strict=True)]

    def _first_order(self) -> list[list[Tensor | None]]:
        """The kept first-order graphs, one per batch (rebuilt if the weights moved)."""
        versions = [p._version for p in self._work]
        if self._graph is None or versions != self._graph_versions:
            self._graph = None
            graphs = []
            with self._obj.eval_mode(), torch.enable_grad(), math_attention():
                for batch in self._obj.batches():
                    loss = self._obj.batch_loss(batch) * batch.weight
                    graphs.append(
                        list(
                            torch.autograd.grad(
                                loss, self._work, create_graph=True, allow_unused=True
                            )
                        )
                    )
            self._graph = graphs
            self._graph_versions = versions
        return self._graph

    def _hvp_reused(self, vs: list[Tensor]) -> list[Tensor]:
        graphs = self._first_order()
        if not graphs:  # a process without batches
            return [torch.zeros_like(p) for p in self._work]
        out = self._double_backward(graphs[0], self._work, vs, retain=True)
        for grads in graphs[1:]:
            tl_add_(out, self._double_backward(grads, self._work, vs, retain=True))
        return out

    def _accumulate(self, vs: list[Tensor], product: Any) -> list[Tensor]:
        """``Σ_b product(batch_b, b)`` over the objective's batches (weights inside)."""
        out = [torch.zeros_like(p) for p in self._work]
        with self._obj.eval_mode():
            for i, batch in enumerate(self._obj.batches()):
                tl_add_(out, product(batch, i))
        return out

    def _per_batch(self) -> Any:
        """The per-batch product of the (resolved) method."""
        return self._batch_forward if self.method == "forward" else self._batch_exact

    def _batch_exact(self, batch: Any, vs: list[Tensor]) -> list[Tensor]:
        """One batch's weighted ``H_b v`` by double backward on a fresh graph."""
        with torch.enable_grad(), math_attention():
            loss = self._obj.batch_loss(batch) * batch.weight
            grads = torch.autograd.grad(loss, self._work, create_graph=True, allow_unused=True)
            return self._double_backward(grads, self._work, vs, retain=False)

    def _batch_forward(self, batch: Any, vs: list[Tensor]) -> list[Tensor]:
        """One batch's weighted ``H_b v`` by forward-over-reverse (``jvp`` of ``grad``)."""
        from torch.func import functional_call, grad, jvp

        module = _BatchLoss(self._obj)
        keys = [f"inner.{n}" for n in self.param_names]
        primals = tuple(p.detach() for p in self._work)

        def loss_of(*ps: Tensor) -> Tensor:
            return functional_call(module, dict(zip(keys, ps, strict=True)), (batch,))

        # torch.func differentiates under no_grad; no_grad keeps autograd from recording a
        # graph through the parameters outside a subset (which still require grad)
        with torch.no_grad(), math_attention():
            _, hv = jvp(grad(loss_of, argnums=tuple(range(len(primals)))), primals, tuple(vs))
        return list(hv)

    def _timed(self, fn: Any, *args: Any) -> tuple[list[Tensor], float]:
        sync = torch.cuda.synchronize if self.device.type == "cuda" else (lambda *_: None)
        sync(self.device)
        start = time.perf_counter()
        out = fn(*args)
        sync(self.device)
        return out, time.perf_counter() - start

    def _hvp_auto(self, vs: list[Tensor]) -> list[Tensor]:
        """The first product of ``method="auto"``: time both methods, keep the faster.

        The first two batches are computed both ways; the first warms both up (the first
        ``torch.func`` call alone can cost several products) and only the second is
        compared, unless there is a single batch.
        """
        trials: list[dict[str, float]] = []

        def product(batch: Any, i: int) -> list[Tensor]:
            if self.method != "auto":
                return self._per_batch()(batch, vs)
            try:
                _, t_fwd = self._timed(self._batch_forward, batch, vs)
            except RuntimeError as exc:  # no forward-mode rule for some operation
                self._forward_failed(exc, warn=False)
                return self._batch_exact(batch, vs)
            out, t_exact = self._timed(self._batch_exact, batch, vs)
            trials.append({"exact": t_exact, "forward": t_fwd})
            if i + 1 == _AUTO_TRIAL_BATCHES:
                self._choose(trials[-1])
            return out

        out = self._accumulate(vs, product)
        if self.method == "auto" and trials:  # a single batch
            self._choose(trials[-1])
        return out

    def _hvp_forward_first(self, vs: list[Tensor]) -> list[Tensor]:
        """The first product of ``method="forward"``: exact instead where torch.func fails."""
        try:
            out = self._accumulate(vs, lambda batch, _i: self._batch_forward(batch, vs))
        except RuntimeError as exc:
            self._forward_failed(exc, warn=True)
            return self._accumulate(vs, lambda batch, _i: self._batch_exact(batch, vs))
        self._forward_ok = True
        return out

    def _forward_failed(self, exc: RuntimeError, *, warn: bool) -> None:
        """Forward-over-reverse failed on this model/loss: every product is exact from now on."""
        message = (
            "forward-over-reverse Hessian products fail on this model or loss "
            f"({str(exc).splitlines()[0][:160]}); using method='exact'"
        )
        if warn:
            warnings.warn(message, UserWarning, stacklevel=4)
        else:
            logger.info(message)
        self.method = "exact"
        self.method_seconds = {}

    def _choose(self, seconds: dict[str, float]) -> None:
        self.method = "forward" if seconds["forward"] < seconds["exact"] else "exact"
        self.method_seconds = dict(seconds)
        logger.info(
            "HessianOperator(method='auto'): %s (one batch: exact %.3g s, forward %.3g s)",
            self.method,
            seconds["exact"],
            seconds["forward"],
        )

    # ------------------------------------------------------------------ finite differences
    @property
    def unverified_products(self) -> int:
        """Finite-difference products that failed their check or were not checked."""
        return self.fd_failed + self.fd_unchecked

    def _gradient_at(self, vs: Sequence[Tensor], step: float, saved: list[Tensor]) -> list[Tensor]:
        """``∇L(θ + step·v)``; weights are restored from ``saved`` by copy afterwards."""
        with torch.no_grad():
            tl_add_(self._work, vs, alpha=step)
        try:
            return self._obj.gradient(self._work)
        finally:
            with torch.no_grad():
                tl_copy_(self._work, saved)

    def _base_gradient(self, saved: list[Tensor]) -> list[Tensor]:
        """``∇L(θ)`` at the weights ``saved``, kept while they stay the same."""
        kept = self._fd_base
        if kept is None or not all(torch.equal(a, b) for a, b in zip(kept[0], saved, strict=True)):
            kept = self._fd_base = ([t.clone() for t in saved], self._obj.gradient(self._work))
        return kept[1]

    def _fd_product(
        self, vs: Sequence[Tensor], h: float, saved: list[Tensor], check: bool = False
    ) -> tuple[list[Tensor], float]:
        """``H v`` by central differences at step ``h`` along ``v̂``, and its asymmetry.

        The asymmetry ``‖g₊ + g₋ − 2g₀‖ / ‖g₊ − g₋‖`` (``0`` without ``check``): the two
        one-sided differences agree to ``O(h)`` on a smooth loss, and a kink crossed on one
        side, or rounding, shows in it at its full size.
        """
        norm = float(tl_norm(vs))
        if norm == 0.0:
            return [torch.zeros_like(p) for p in self._work], 0.0
        step = h / norm
        base = self._base_gradient(saved) if check else None
        plus = self._gradient_at(vs, step, saved)
        minus = self._gradient_at(vs, -step, saved)
        diff = [a - b for a, b in zip(plus, minus, strict=True)]
        asym = 0.0
        if base is not None:
            curv = float(
                tl_norm([a + b - 2 * c for a, b, c in zip(plus, minus, base, strict=True)])
            )
            scale = float(tl_norm(diff))
            asym = curv / scale if scale > 0 else (0.0 if curv == 0 else math.inf)
        return [d / (2 * step) for d in diff], asym

    def _hvp_fd(self, vs: list[Tensor]) -> list[Tensor]:
        saved = tl_clone(self._work)
        check = self.fd_check == "always" or (self.fd_check == "first" and not self._fd_checked)
        self._fd_checked = True
        out, asym = self._fd_product(vs, self.h, saved, check)
        if not check:
            self.fd_unchecked += 1
            return out
        h, best = self.h, (asym, out, self.h)
        for _ in range(_FD_RETRIES):
            if best[0] <= self.fd_check_rtol:
                break
            h /= _FD_SHRINK
            self.fd_retried += 1
            out, asym = self._fd_product(vs, h, saved, check)
            if asym < best[0]:
                best = (asym, out, h)
        asym, out, h = best
        if asym > self.fd_check_rtol:
            self.fd_failed += 1
        if asym > self.fd_check_rtol and self.fd_failed & (self.fd_failed - 1) == 0:
            warnings.warn(  # the 1st, 2nd, 4th, 8th ... failure
                f"finite-difference Hessian product unverified: its one-sided differences "
                f"differ by {100 * asym:.0f}% even at h={h:g} (kinks of ReLU/max-pool or "
                f"rounding; {self.fd_failed} of {self.products + 1} products so far); the "
                "product may be wrong by as much: use method='exact' or dtype=torch.float64",
                FiniteDifferenceWarning,
                stacklevel=3,
            )
        return out

    # ------------------------------------------------------------------ other views
    def gradient(self) -> list[Tensor]:
        """``∇L`` w.r.t. ``params`` as a tensor list (from the kept graph when there is one)."""
        if self.reuse_graph:
            out = [torch.zeros_like(p) for p in self._work]
            for grads in self._first_order():
                tl_add_(
                    out,
                    [
                        torch.zeros_like(p) if g is None else g.detach()
                        for g, p in zip(grads, self._work, strict=True)
                    ],
                )
            return self._obj.all_reduce(out) if self._obj.distributed else out
        return self._obj.gradient(self._work)

    def to_scipy(self) -> Any:
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 numpy vectors in and out)."""
        from scipy.sparse.linalg import LinearOperator

        def mv(x: np.ndarray) -> np.ndarray:
            x = np.asarray(x).reshape(-1)
            y = self.matvec(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)))
            return y.detach().to("cpu", torch.float64).numpy()

        return LinearOperator((self.dim, self.dim), matvec=mv, rmatvec=mv, dtype=np.float64)

    def to_dense(self) -> Tensor:
        """The full ``(dim, dim)`` Hessian by ``dim`` products (small problems only)."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def random_vector(self, generator: torch.Generator, kind: str = "gaussian") -> Tensor:
        """A flat random vector (``"gaussian"`` or ``"rademacher"``) from ``generator``."""
        return random_vector(self.dim, generator, kind, self.dtype, self.device)

    def close(self) -> None:
        """Release the kept first-order graph (it is rebuilt if the operator is used again)."""
        self._graph = None
        self._graph_versions = None

    def __enter__(self) -> HessianOperator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"HessianOperator(dim={self.dim}, params={len(self.params)}, method={self.method!r}, "
            f"dtype={self.dtype}, products={self.products})"
        )
