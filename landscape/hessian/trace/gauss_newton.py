r"""Trace by the Gauss–Newton split: ``Tr H = Tr G`` from per-sample Jacobians plus ``Tr R``.

With per-sample outputs ``f_i(θ)`` (flattened to ``C`` numbers) and a loss that is the
exactly weighted mean of per-sample losses,

.. math::

    H = G + R, \quad G = \sum_i J_i^\top \Lambda_i J_i, \quad
    R = \sum_i \sum_c r_{ic} \nabla^2 f_{ic},

where ``Λ_i`` is the output Hessian of sample ``i``'s weighted loss and ``r_i = ∂L/∂f_i``.
``Tr G = Σ_i Σ_k λ_ik ‖J_iᵀ q_ik‖²`` (``Λ_i = Σ_k λ_ik q_ik q_ikᵀ``) comes from
per-sample gradient norms (closed forms for linear, convolution and BatchNorm layers,
``torch.func.vmap`` otherwise), without any Hessian-vector product; ``R`` is the Hessian of
``φ(θ) = Σ_i ⟨r_i, f_i(θ)⟩`` with ``r`` fixed, and only its diagonal blocks (one per
module) are probed: ``Tr R = Σ_l Tr R_ll``. When the output is linear in each module's
parameters (convolution, linear, ReLU, pooling, eval-mode BatchNorm, residual sums),
``R_ll = 0`` and the estimate is exact.

:func:`ggn_trace` runs three stages:

1. ``Tr G = Σ_i Σ_k λ_ik ‖J_iᵀ q_ik‖²`` from per-sample gradients of ``⟨f_i, q_ik⟩`` for
   every eigenpair of ``Λ_i`` (computed in float64) that is not negligible for some
   sample (negative eigenvalues keep their sign). The squared norms are never formed
   from per-sample gradients for ``nn.Linear`` (``‖δ_i‖²‖a_i‖²``, or a Gram form over
   positions), ``nn.Conv1d``/``nn.Conv2d`` (unfolded inputs, Gram or per-sample weight
   gradients, whichever is cheaper) and eval-mode BatchNorm: one backward to the module
   outputs per column, by hooks, checked against ``vmap`` on the first two samples (a
   module called twice, a weight also used elsewhere: ``vmap`` for all). Other
   parameters: ``torch.func.vmap`` of ``vjp`` in chunks. With ``output_probes=k``, ``k``
   Rademacher probes ``u`` per sample instead (``E⟨J_iᵀ A_i u, J_iᵀ A_i S_i u⟩ =
   Tr(J_iᵀ Λ_i J_i)`` with ``Λ_i = A_i S_i A_iᵀ``): unbiased, with variance ``Σ_i s_i²/k``
   from each sample's spread ``s_i²`` over its ``k`` probes (so ``k ≥ 2``), added to the
   standard error.
2. ``R`` is the Hessian of ``φ(θ) = Σ_b w_b ⟨r_b, f_b(θ)⟩`` with ``r`` fixed, a
   :class:`HessianOperator` on a twin objective (same model, inputs, weights, parameters
   and product method).
3. ``Tr R = Σ_l Tr R_ll`` over the diagonal blocks of :func:`block_trace`'s grouping. One
   Gaussian probe per block first: ``R_ll v = 0`` exactly means ``R_ll = 0`` (with
   probability 1), the block's value is 0 with no error: so for networks whose output is
   linear in each module's parameters the whole estimate is exact. The remaining budget
   goes to the other blocks in proportion to the square root of their sizes (Rademacher
   Hutchinson probes; a block given its size in products is traced exactly by a Krylov
   run), interleaved so that ``target_rel_stderr`` can stop them.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from landscape.batches import logits_of
from landscape.hessian._blocks import group_blocks, validate_grouping
from landscape.hessian._checks import check_integers
from landscape.hessian._krylov import progress_bar
from landscape.hessian.operator import HessianOperator, _cast_floating
from landscape.hessian.trace._result import (
    TraceResult,
    mean_cumulant3,
    mean_stderr,
    satterthwaite,
)
from landscape.hessian.trace.block import _allocate, _BlockView, exact_block_trace
from landscape.objective import Objective

__all__ = ["ggn_trace"]

logger = logging.getLogger(__name__)

_CHUNK_BYTES = 256 * 2**20  # per-sample gradients held at once by default
_LOSS_RTOL = 1e-5


def _logits(outputs: Any) -> Any:
    """The logits of a ``ModelOutput`` (``.logits``) or dict (``["logits"]``), else ``outputs``.

    What the loss of the outputs reads (:func:`~landscape.batches.logits_of`); other
    non-tensor outputs (tuples) are left for :func:`_check_batch` to refuse.
    """
    if isinstance(getattr(outputs, "logits", None), Tensor) or (
        isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor)
    ):
        return logits_of(outputs)
    return outputs


class _Outputs(nn.Module):
    """``forward(inputs) -> outputs`` of an objective's model, for ``torch.func``."""

    def __init__(self, objective: Objective) -> None:
        super().__init__()
        self.inner = objective.model
        self._objective = objective

    def forward(self, inputs: Any) -> Any:
        return _logits(self._objective.outputs(inputs))


class _ResidualData:
    """Re-iterable ``(inputs, residual)`` batches: an objective's inputs, fixed targets."""

    def __init__(self, objective: Objective, residuals: list[Tensor]) -> None:
        self.objective, self.residuals = objective, residuals

    def __iter__(self) -> Iterator[tuple[Any, Tensor]]:
        for batch, r in zip(self.objective.batches(), self.residuals, strict=True):
            yield batch.inputs, r


def _inner_product(outputs: Tensor, residuals: Tensor) -> Tensor:
    """``⟨f_b, r_b⟩``: the twin objective's batch loss (``r_b`` = gradient of the batch mean)."""
    return (outputs * residuals).sum()


def _in_dims(tree: Any, n: int) -> Any:
    """0 for tensor leaves with a leading dimension ``n`` (per sample), ``None`` otherwise."""
    return tree_map(
        lambda t: 0 if isinstance(t, Tensor) and t.dim() > 0 and t.shape[0] == n else None, tree
    )


def _take(tree: Any, dims: Any, sl: slice | int) -> Any:
    return tree_map(lambda t, d: t[sl] if d == 0 else t, tree, dims)


def _unsqueeze(tree: Any, dims: Any) -> Any:
    return tree_map(lambda t, d: t.unsqueeze(0) if d == 0 else t, tree, dims)


def _check_batch(objective: Objective, out: Any, targets: Any, size: int) -> None:
    """The requirements: tensor outputs per sample, a loss that is the mean over samples."""
    if not isinstance(out, Tensor) or out.dim() < 1 or out.shape[0] != size:
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"Invalid model outputs: {shape}; ggn_trace needs a tensor with a leading "
            f"batch dimension of {size}"
        )
    dims = _in_dims(targets, size)
    with torch.no_grad():
        whole = objective.output_loss_fn(out, targets)
        if not isinstance(whole, Tensor) or whole.numel() != 1:
            raise ValueError("Invalid loss_fn: ggn_trace needs a scalar batch loss")
        parts = [
            float(objective.output_loss_fn(out[i : i + 1], _take(targets, dims, slice(i, i + 1))))
            for i in range(size)
        ]
    mean, value = math.fsum(parts) / size, float(whole)
    if abs(value - mean) > _LOSS_RTOL * max(abs(value), abs(mean), 1e-30):
        raise ValueError(
            f"Invalid loss_fn: the batch loss {value:.6g} is not the mean of the per-sample "
            f"losses ({mean:.6g}); ggn_trace needs a mean-reduced loss"
        )


def _output_hessians(loss_fn: Callable, out: Tensor, targets: Any, scale: float) -> Tensor:
    """``scale·∇²_f ℓ(f_i, y_i)`` per sample, ``(n, C, C)`` for outputs flattened to ``C``.

    In float64 (outputs and floating targets cast): in float32 the output Hessian of a
    confident softmax is mostly rounding error (``p(1 − p)`` with ``p ≈ 1``).
    """
    from torch.func import jacrev, vmap

    n, shape = out.shape[0], out.shape[1:]
    flat = out.detach().double().reshape(n, -1)
    targets = _cast_floating(targets, torch.float64)
    dims = _in_dims(targets, n)

    def loss_of(f: Tensor, y: Any) -> Tensor:
        return loss_fn(f.reshape(1, *shape), _unsqueeze(y, dims))

    hessian = jacrev(jacrev(loss_of))  # reverse over reverse: no forward-mode rules needed
    try:
        hess = vmap(hessian, in_dims=(0, dims))(flat, targets)
    except RuntimeError:  # a loss vmap cannot batch: one sample at a time
        hess = torch.stack([hessian(flat[i], _take(targets, dims, i)) for i in range(n)])
    return hess * scale


def _columns(
    lam: Tensor, gen: torch.Generator | None, probes: int | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    """Vectors to pull back per sample: ``(n, M, C)`` and, when indefinite, their partners.

    Exact: ``a_k = |λ_k|^½ q_k`` (partners ``sign(λ_k)·a_k``, columns negligible for every
    sample dropped). Eigenvalues within ``C·eps(dtype)`` of the sample's largest count as
    zero. Probes: ``a_j = Q|Λ|^½ u_j``, partners ``Q sign(Λ)|Λ|^½ u_j`` with
    Rademacher ``u_j``, so that ``E⟨Jᵀa_j, Jᵀb_j⟩ = Tr(JᵀΛJ)``.
    """
    evals, evecs = torch.linalg.eigh(lam)  # (n, C), (n, C, C)
    tol = lam.shape[-1] * torch.finfo(dtype).eps * evals.abs().amax(-1, keepdim=True)
    evals = torch.where(evals.abs() <= tol, torch.zeros_like(evals), evals)
    root = evecs * evals.abs().sqrt().unsqueeze(-2)  # columns |λ_k|^½ q_k
    sign = evals.sign()
    if probes is None:
        order = evals.abs().argsort(dim=-1, descending=True)
        root = root.gather(-1, order.unsqueeze(-2).expand_as(root))
        sign = sign.gather(-1, order)
        keep = int((sign != 0).any(0).sum())
        cols = root[..., :keep].transpose(-1, -2)  # (n, M, C)
        if bool((sign[:, :keep] < 0).any()):
            return cols.to(dtype), (cols * sign[:, :keep].unsqueeze(-1)).to(dtype)
        return cols.to(dtype), None
    assert gen is not None
    n, c = evals.shape
    u = torch.randint(0, 2, (n, c, probes), generator=gen).to(torch.float64) * 2 - 1
    u = u.to(lam.device)
    cols = (root @ u).transpose(-1, -2)  # (n, k, C)
    if bool((sign < 0).any()):
        return cols.to(dtype), ((root * sign.unsqueeze(-2)) @ u).transpose(-1, -2).to(dtype)
    return cols.to(dtype), None


class _Unsupported(Exception):
    """The hooked per-sample products do not apply (the model uses a module unusually)."""


_CONVS = (nn.Conv1d, nn.Conv2d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def _hookable(model: nn.Module, names: list[str]) -> dict[str, tuple[nn.Module, list[int]]]:
    """Modules whose per-sample products have closed forms, with their selected parameters.

    ``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d`` (one group, zero padding given as numbers)
    and BatchNorm with running statistics (in eval mode), exactly these types (a subclass
    may change ``forward``). Each entry lists the indices in ``names`` of the module's own
    ``weight`` and ``bias``, in that order.
    """
    index = {n: i for i, n in enumerate(names)}
    out: dict[str, tuple[nn.Module, list[int]]] = {}
    for prefix, m in model.named_modules():
        if type(m) not in (nn.Linear, *_CONVS, *_NORMS):
            continue
        if isinstance(m, _CONVS) and (
            m.groups != 1 or m.padding_mode != "zeros" or isinstance(m.padding, str)
        ):
            continue
        if isinstance(m, _NORMS) and (m.running_mean is None or m.running_var is None):
            continue
        full = [f"{prefix}.{k}" if prefix else k for k in ("weight", "bias")]
        if any(
            getattr(m, k) is not None and f not in index
            for k, f in zip(("weight", "bias"), full, strict=True)
        ):
            continue  # a parameter of the module outside the selection: leave it to vmap
        owned = [index[f] for f in full if f in index]
        if owned:
            out[prefix] = (m, owned)
    return out


def _positions(m: nn.Module, a: Tensor, d: Tensor | None = None) -> Tensor:
    """Inputs (or, given ``d``, output gradients) as ``(n, T, K)`` per position ``t``.

    ``∂W_i = Σ_t d_itᵀ u_it`` for the unfolded inputs ``u`` (``K_in``) and output
    gradients ``d`` (``K_out``) of a linear or convolution layer.
    """
    n = a.shape[0]
    if isinstance(m, nn.Linear):
        return a.reshape(n, -1, a.shape[-1]) if d is None else d.reshape(n, -1, d.shape[-1])
    if d is not None:
        return d.flatten(2).transpose(1, 2)
    if isinstance(m, nn.Conv1d):
        return F.unfold(
            a.unsqueeze(2),
            (1, *m.kernel_size),
            dilation=(1, *m.dilation),
            padding=(0, *m.padding),
            stride=(1, *m.stride),
        ).transpose(1, 2)
    u = F.unfold(a, m.kernel_size, dilation=m.dilation, padding=m.padding, stride=m.stride)
    return u.transpose(1, 2)


def _module_terms(
    m: nn.Module, a: Tensor, da: Tensor, db: Tensor, cache: dict[str, Tensor]
) -> list[Tensor]:
    """Per-sample ``⟨∂_a θ, ∂_b θ⟩`` of a module's weight and bias from its input and ``δ``s.

    ``cache`` keeps what depends on the input only (unfolded input, its Gram matrix)
    across the columns.
    """
    terms = []
    if isinstance(m, _NORMS):
        shape = (1, -1) + (1,) * (a.dim() - 2)
        if "xhat" not in cache:
            mean, var = m.running_mean.view(shape), m.running_var.view(shape)
            cache["xhat"] = (a - mean) * torch.rsqrt(var + m.eps)

        def per_channel(t: Tensor) -> Tensor:
            return t.flatten(2).sum(-1) if t.dim() > 2 else t

        if m.weight is not None:
            xhat = cache["xhat"]
            terms.append((per_channel(da * xhat) * per_channel(db * xhat)).sum(-1))
        if m.bias is not None:
            terms.append((per_channel(da) * per_channel(db)).sum(-1))
        return terms
    if "u" not in cache:
        cache["u"] = _positions(m, a)
    u = cache["u"]
    pa = _positions(m, a, da)
    pb = pa if db is da else _positions(m, a, db)
    if u.shape[1] <= u.shape[2]:  # Gram form: Σ_{t,s} (d_t·d_s)(u_t·u_s), ∂W never formed
        if "gram" not in cache:
            cache["gram"] = u @ u.transpose(1, 2)
        terms.append(((pa @ pb.transpose(1, 2)) * cache["gram"]).sum((1, 2)))
    else:
        ga = pa.transpose(1, 2) @ u  # (n, K_out, K_in)
        gb = ga if pb is pa else pb.transpose(1, 2) @ u
        terms.append((ga * gb).sum((1, 2)))
    if m.bias is not None:
        terms.append((pa.sum(1) * pb.sum(1)).sum(-1))
    return terms


def _hooked_terms(
    obj: Objective,
    mods: dict[str, tuple[nn.Module, list[int]]],
    inputs: Any,
    cols: Tensor,
    partners: Tensor | None,
    n_params: int,
) -> Tensor:
    """``(n, k, params)`` per-sample ``⟨J_iᵀa, J_iᵀb⟩`` of the hooked modules' parameters.

    One batched forward (each module's input kept, its output cloned so that in-place
    operations downstream leave it intact) and one backward to the module outputs per
    column: the per-sample parameter gradients are never formed.
    """
    captured: dict[str, tuple[Tensor, int, Tensor]] = {}

    def hook(name: str) -> Callable:
        def fn(module: nn.Module, args: tuple, output: Any) -> Any:
            if name in captured or not args or not isinstance(args[0], Tensor):
                raise _Unsupported(f"module {name!r} called more than once or without a tensor")
            captured[name] = (args[0], args[0]._version, output)
            return output.clone()

        return fn

    handles = [m.register_forward_hook(hook(name)) for name, (m, _) in mods.items()]
    try:
        with torch.enable_grad():
            out = _logits(obj.outputs(inputs))
    finally:
        for h in handles:
            h.remove()
    if set(captured) != set(mods):
        raise _Unsupported("a module was not called")
    names = list(mods)
    ys = [captured[n][2] for n in names]
    n, k = cols.shape[0], cols.shape[1]
    terms = torch.zeros(n, k, n_params, dtype=torch.float64, device=cols.device)
    caches: dict[str, dict[str, Tensor]] = {name: {} for name in names}

    def deltas(c: Tensor) -> list[Tensor]:
        parts = torch.autograd.grad(
            out, ys, grad_outputs=c.reshape(out.shape), retain_graph=True, allow_unused=True
        )
        return [torch.zeros_like(y) if g is None else g for g, y in zip(parts, ys, strict=True)]

    with torch.no_grad():
        for j in range(k):
            da = deltas(cols[:, j])
            db = da if partners is None else deltas(partners[:, j])
            for name, ga, gb in zip(names, da, db, strict=True):
                m, owned = mods[name]
                a, version, _ = captured[name]
                if a._version != version:
                    raise _Unsupported(f"the input of {name!r} was modified in place")
                for idx, t in zip(owned, _module_terms(m, a, ga, gb, caches[name]), strict=True):
                    terms[:, j, idx] = t.double()
    return terms


def _group_matrix(op: HessianOperator, groups: list[tuple[str, slice]]) -> Tensor:
    """``(tensors, groups)`` 0/1 matrix: which group each parameter tensor belongs to."""
    starts = [sl.start for _, sl in op.blocks()]
    owner = torch.tensor(
        [next(g for g, (_, s) in enumerate(groups) if s.start <= a < s.stop) for a in starts]
    )
    to_group = torch.zeros(len(starts), len(groups), dtype=torch.float64)
    to_group[torch.arange(len(starts)), owner] = 1.0
    return to_group


def _batch_outputs(
    obj: Objective, batch: Any, loss_of_outputs: Callable, *, check: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """One batch's outputs, residuals ``r = ∂L_b/∂f`` and output Hessians (weighted).

    The requirements (:func:`_check_batch`) are checked on the first batch and whenever
    the outputs lose their per-sample shape.
    """
    with torch.no_grad():
        out = _logits(obj.outputs(batch.inputs))
    per_sample = isinstance(out, Tensor) and out.dim() >= 1 and out.shape[0] == batch.size
    if check or not per_sample:
        _check_batch(obj, out, batch.targets, batch.size)
    with torch.enable_grad():
        leaf = out.detach().requires_grad_(True)
        (r,) = torch.autograd.grad(loss_of_outputs(leaf, batch.targets), leaf)
    lam = _output_hessians(loss_of_outputs, out, batch.targets, batch.weight / batch.size)
    if not all(bool(torch.isfinite(t).all()) for t in (out, r, lam)):
        raise ValueError(
            "Invalid value: the model's outputs, or the loss's derivatives in them, hold nan "
            "or inf (the loss is not finite at these weights on this data)"
        )
    return out, r.detach(), lam


def _check_closed_forms(got: Tensor, ref: Tensor, dtype: torch.dtype) -> None:
    """The hooks' closed-form per-sample terms must equal ``vmap``'s (else fall back)."""
    tol = 1e3 * torch.finfo(dtype).eps * float(ref.abs().max())
    if float((got - ref).abs().max()) > tol:
        raise _Unsupported("closed forms differ from vmap")


class _PerSampleTerms:
    """Per-sample ``⟨J_iᵀa, J_iᵀb⟩`` of each parameter tensor, by hooks or by ``vmap``.

    Hooks (:func:`_hooked_terms`) for the parameters of linear, convolution and BatchNorm
    modules, checked against ``vmap`` on the first two samples (any mismatch, or a
    module the hooks cannot follow, falls back to ``vmap`` for all parameters from then
    on); ``torch.func.vmap`` of ``vjp`` for the others, in chunks.
    """

    def __init__(self, op: HessianOperator, chunk_size: int | None) -> None:
        self.op, self.obj, self.chunk_size = op, op._obj, chunk_size
        self.module = _Outputs(self.obj)
        self.keys = [f"inner.{n}" for n in op.param_names]
        self.elem = torch.finfo(op.dtype).bits // 8
        self.mods = _hookable(self.obj.model, op.param_names)
        self.hooked = sorted(i for _, owned in self.mods.values() for i in owned)
        self.verified = False

    @property
    def engine(self) -> str:
        """``"hooks"``, ``"hooks+vmap"`` or ``"vmap"``: what computed the terms."""
        if self.hooked and len(self.hooked) == len(self.keys):
            return "hooks"
        return "hooks+vmap" if self.hooked else "vmap"

    def samples_per_chunk(self) -> int:
        """Samples per hooked forward: ``chunk_size``, or as many as fit the byte budget."""
        hooked_dim = sum(self.op.numels[i] for i in self.hooked)
        return self.chunk_size or max(1, _CHUNK_BYTES // max(1, 2 * hooked_dim * self.elem))

    def __call__(self, x: Any, c: Tensor, p: Tensor | None, dims: Any, batched: Tensor) -> Tensor:
        """``(n, k, params)`` terms of the samples ``x`` for columns ``c`` (partners ``p``).

        ``batched``: the samples' flattened outputs from the batch, which the per-sample
        outputs of ``vmap`` must equal.
        """
        terms = None
        if self.hooked:
            try:
                terms = _hooked_terms(self.obj, self.mods, x, c, p, len(self.keys))
                if not self.verified:  # the closed forms against vmap on two samples
                    two = None if p is None else p[:2]
                    first = _take(x, dims, slice(0, 2))
                    ref = self.vmapped(self.hooked, first, c[:2], two, dims, batched[:2])
                    _check_closed_forms(terms[:2], ref, self.op.dtype)
                    self.verified = True
            except _Unsupported as err:
                logger.info("ggn_trace: per-sample products by vmap only (%s)", err)
                self.hooked, self.mods, terms = [], {}, None
        rest = [i for i in range(len(self.keys)) if i not in set(self.hooked)]
        if rest:
            more = self.vmapped(rest, x, c, p, dims, batched)
            terms = more if terms is None else terms + more
        assert terms is not None
        return terms

    def _pulled_back(
        self, params: dict[str, Tensor], x_i: Any, cols: Tensor, dims: Any
    ) -> tuple[Tensor, Any]:
        """One sample's flat output and the pull-backs ``J_iᵀc`` of its columns."""
        from torch.func import functional_call, vjp, vmap

        def f(ps: dict[str, Tensor]) -> Tensor:
            return functional_call(self.module, ps, (_unsqueeze(x_i, dims),))

        out, back = vjp(f, params)
        shape = out.shape
        (grads,) = vmap(lambda c: back(c.reshape(shape)))(cols)
        return out.reshape(-1), grads

    def vmapped(
        self, which: list[int], x: Any, c: Tensor, p: Tensor | None, dims: Any, batched: Tensor
    ) -> Tensor:
        """``(n, k, params)`` terms of the parameters ``which`` by ``vmap``, in chunks."""
        from torch.func import vmap

        op, keys = self.op, self.keys
        n, k = c.shape[0], c.shape[1]
        terms = torch.zeros(n, k, len(keys), dtype=torch.float64, device=c.device)
        primals = {keys[i]: op._work[i].detach() for i in which}
        dim = sum(op.numels[i] for i in which)
        m = k if p is None else 2 * k
        per = self.chunk_size or max(1, _CHUNK_BYTES // max(1, 2 * m * dim * self.elem))
        scale = float(batched.abs().max()) if batched.numel() else 0.0
        for s in range(0, n, per):
            xs = _take(x, dims, slice(s, s + per))
            both = c[s : s + per] if p is None else torch.cat([c[s : s + per], p[s : s + per]], 1)
            with torch.no_grad():
                outs, grads = vmap(self._pulled_back, in_dims=(None, dims, 0, None))(
                    primals, xs, both, dims
                )
            _check_independent(outs, batched[s : s + per], scale)
            for i in which:
                g = grads[keys[i]]
                prod = g[:, :k] * g[:, k:] if p is not None else g.pow(2)
                terms[s : s + per, :, i] = prod.flatten(2).sum(-1).double()
        return terms


def _gauss_newton(
    op: HessianOperator,
    groups: list[tuple[str, slice]],
    probes: int | None,
    seed: int,
    chunk_size: int | None,
    progress: bool | None,
) -> dict[str, Any]:
    """``Tr G`` per group (and its variance with output probes) and the residuals.

    Per sample, the columns of its output Hessian (or ``probes`` probes) are pulled back
    by :class:`_PerSampleTerms` and summed per group.
    """
    obj = op._obj
    per_sample = _PerSampleTerms(op, chunk_size)
    to_group = _group_matrix(op, groups)
    gen = torch.Generator().manual_seed(seed) if probes is not None else None
    values = torch.zeros(len(groups), dtype=torch.float64)
    variance = torch.zeros(len(groups) + 1, dtype=torch.float64)  # groups, then the total
    residuals: list[Tensor] = []
    passes = 0
    checked = False
    loss_of_outputs = obj.output_loss_fn
    with obj.eval_mode(), progress_bar(obj.n_samples, "ggn trace: Gauss-Newton", progress) as bar:
        for batch in obj.batches():
            out, r, lam = _batch_outputs(obj, batch, loss_of_outputs, check=not checked)
            checked = True
            residuals.append(r)
            cols, partners = _columns(lam, gen, probes, op.dtype)
            m = cols.shape[1] + (0 if partners is None else cols.shape[1])
            passes = max(passes, m)
            if m == 0:  # the loss is linear in the outputs here: no Gauss–Newton part
                bar.update(batch.size)
                continue
            dims = _in_dims(batch.inputs, batch.size)
            flat_out = out.reshape(batch.size, -1)
            per = per_sample.samples_per_chunk()
            for s in range(0, batch.size, per):
                x = _take(batch.inputs, dims, slice(s, s + per))
                c = cols[s : s + per]
                p = None if partners is None else partners[s : s + per]
                terms = per_sample(x, c, p, dims, flat_out[s : s + per])
                per_group = terms.cpu() @ to_group  # (chunk, k, groups)
                if probes is None:
                    values += per_group.sum(dim=(0, 1))
                else:
                    values += per_group.mean(dim=1).sum(0)
                    both_terms = torch.cat([per_group, per_group.sum(-1, keepdim=True)], -1)
                    variance += both_terms.var(dim=1, correction=1).sum(0) / probes
                bar.update(int(c.shape[0]))
    if obj.distributed:  # this process's samples only: sum over the processes
        values, variance = obj.all_reduce([values, variance])
        passes = int(obj.all_reduce([torch.tensor(passes)], op="max")[0])
    return {
        "values": values.numpy(),
        "variance": variance.numpy(),
        "residuals": residuals,
        "passes": passes,
        "engine": per_sample.engine,
    }


def _check_independent(per_sample: Tensor, batched: Tensor, scale: float) -> None:
    """Per-sample outputs must equal the batch's: samples independent in eval mode."""
    tol = 1e3 * torch.finfo(batched.dtype).eps * max(scale, 1.0)
    if per_sample.shape != batched.shape or float((per_sample - batched).abs().max()) > tol:
        raise ValueError(
            "Invalid model: outputs computed one sample at a time differ from the batch's "
            "(samples are not independent in eval mode); ggn_trace cannot split the batch"
        )


def _residual_operator(op: HessianOperator, residuals: list[Tensor]) -> HessianOperator:
    """The Hessian ``R`` of ``Σ_b w_b ⟨f_b, r_b⟩`` on the operator's parameters and data."""
    obj = op._obj
    twin = Objective(
        obj.model,
        _ResidualData(obj, residuals),
        _inner_product,
        device=obj.device,
        max_cache_bytes=obj.max_cache_bytes,
        accuracy=False,
        forward=obj.forward_fn,
        params=obj.param_names,
        dist=obj.dist,
        sharded=True,  # this process's batches, as its residuals
    )
    return op.like(twin)


def _check_arguments(
    target_rel_stderr: float | None, output_probes: int | None, chunk_size: int | None
) -> None:
    """Raise ``ValueError`` for a bad option of :func:`ggn_trace` (before any pass)."""
    if target_rel_stderr is not None and not target_rel_stderr > 0:
        raise ValueError(f"Invalid target_rel_stderr: {target_rel_stderr}")
    if output_probes is not None and (not isinstance(output_probes, int) or output_probes < 2):
        raise ValueError(
            f"Invalid output_probes: {output_probes!r} (an integer >= 2, for a variance)"
        )
    if chunk_size is not None and (not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"Invalid chunk_size: {chunk_size!r}")


def _combined(
    groups: list[tuple[str, slice]],
    ggn: dict[str, Any],
    res: dict[str, Any],
    target_rel_stderr: float | None,
    products: int,
    info: dict[str, Any],
) -> TraceResult:
    """The trace ``Tr G + Tr R`` (per group and in all) from its two parts."""
    g_values, g_var = ggn["values"], ggn["variance"]
    per: dict[str, tuple[float, float]] = {}
    for j, (name, _) in enumerate(groups):
        r_value, r_se = res["blocks"][j]
        per[name] = (float(g_values[j] + r_value), math.sqrt(g_var[j] + r_se**2))
    g_total, g_se = float(g_values.sum()), math.sqrt(float(g_var[-1]))
    r_total, r_se = res["value"], res["stderr"]
    value, stderr = g_total + r_total, math.hypot(g_se, r_se)
    return TraceResult(
        value=value,
        stderr=stderr,
        products=products,
        samples=np.array([v for v, _ in per.values()]),
        blocks=per,
        converged=None if target_rel_stderr is None else stderr <= target_rel_stderr * abs(value),
        # the Gauss–Newton part's variance sums over every sample's probes: many dof
        dof=satterthwaite([*res["dof"], (g_se, math.inf)]),
        cumulant3=res["cumulant3"],  # the residual probes' (the Gauss–Newton part: many)
        info={
            "method": "ggn",
            "grouping": info["grouping"],
            "output_probes": info["output_probes"],
            "ggn_trace": g_total,
            "ggn_stderr": g_se,
            "residual_trace": r_total,
            "residual_stderr": r_se,
            "seconds_ggn": info["seconds_ggn"],
            "seconds_residual": info["seconds_residual"],
            "gradient_passes": ggn["passes"],
            "per_sample": ggn["engine"],
            "zero_blocks": res["zero_blocks"],
            "allocation": res["allocation"],
        },
    )


def ggn_trace(
    op: HessianOperator,
    num_products: int = 60,
    target_rel_stderr: float | None = None,
    seed: int = 0,
    *,
    output_probes: int | None = None,
    blocks: str = "module",
    chunk_size: int | None = None,
    progress: bool | None = None,
) -> TraceResult:
    r"""``Tr H = Tr G + Σ_l Tr R_ll``: the Gauss–Newton part exactly, the rest by block probes.

    ``H = G + R`` with ``G = Σ_i J_iᵀ Λ_i J_i`` (``Λ_i`` the output Hessian of sample
    ``i``'s weighted loss) and ``R = Σ_i Σ_c r_ic ∇²f_ic`` (``r_i = ∂L/∂f_i``). Unbiased for
    any model and mean-reduced loss: ``Tr G`` from per-sample gradient norms (closed forms
    by hooks for linear, convolution and eval-mode BatchNorm layers, ``vmap`` otherwise;
    or ``output_probes`` Rademacher probes per sample), ``Tr R`` from probes of ``R``'s
    diagonal blocks, a block found zero by one Gaussian probe counting exactly 0: on
    networks whose output is linear in each module's parameters (convolution, linear,
    ReLU, pooling, eval-mode BatchNorm, residual sums) the estimate is exact. The module
    docstring gives the three stages in full.

    The products are those of ``R`` (each costs what one of ``H`` costs); they are also
    added to ``op.products``. The per-sample part costs about ``M`` backward passes over
    the data (``M`` the columns per sample: at most the output size, or ``k`` probes,
    twice that for a loss with a non-convex output Hessian).

    Args:
        op: the Hessian operator (its parameters, dtype, data and product method are used).
        num_products: budget of ``R`` products (at least one per block).
        target_rel_stderr: stop the residual probes once the standard error of the whole
            estimate is within ``target·|estimate|``.
        seed: seed of the output probes and of the residual probes.
        output_probes: Rademacher probes per sample for ``Tr G`` (``None``: exact).
        blocks: ``"module"`` or ``"tensor"``: the diagonal blocks of ``R`` (and the
            grouping of ``blocks`` in the result).
        chunk_size: samples per forward (hooks) and per ``vmap`` call; default: as many
            as keep the per-sample gradients (or Gram matrices) within 256 MiB.
        progress: progress bars (``None``: only on a terminal).

    Returns:
        A :class:`TraceResult`: ``products`` the ``R`` products, ``blocks`` the per-block
        totals ``{name: (value, stderr)}``, ``samples`` the block totals, and ``info`` with
        ``ggn_trace``, ``ggn_stderr``, ``residual_trace``, ``residual_stderr``,
        ``seconds_ggn``, ``seconds_residual``, ``gradient_passes`` (columns per sample),
        ``per_sample`` (``"hooks"``, ``"hooks+vmap"`` or ``"vmap"``), ``zero_blocks`` and
        the ``allocation`` of residual products per block.

    Raises:
        ValueError: bad arguments; model outputs that are not a tensor (or a
            ``ModelOutput``/dict whose ``logits`` are one) with a leading batch dimension;
            a loss that is not the mean of per-sample losses; samples that are not
            independent in eval mode.
    """
    validate_grouping(blocks)
    _check_arguments(target_rel_stderr, output_probes, chunk_size)
    check_integers(num_products=num_products)
    groups = group_blocks(op, blocks)
    if num_products < len(groups):
        raise ValueError(
            f"Invalid num_products: {num_products} < one per block for {len(groups)} blocks"
        )

    start = time.perf_counter()
    ggn = _gauss_newton(op, groups, output_probes, seed, chunk_size, progress)
    seconds_ggn = time.perf_counter() - start

    start = time.perf_counter()
    with _residual_operator(op, ggn["residuals"]) as rop:
        res = _residual_blocks(
            rop, groups, num_products, target_rel_stderr, ggn, seed + 1, progress
        )
        products = rop.products
    seconds_residual = time.perf_counter() - start
    op.products += products
    info = {
        "grouping": blocks,
        "output_probes": output_probes,
        "seconds_ggn": seconds_ggn,
        "seconds_residual": seconds_residual,
    }
    return _combined(groups, ggn, res, target_rel_stderr, products, info)


def _residual_blocks(
    rop: HessianOperator,
    groups: list[tuple[str, slice]],
    budget: int,
    target: float | None,
    ggn: dict[str, Any],
    seed: int,
    progress: bool | None,
) -> dict[str, Any]:
    """``Σ_l Tr R_ll``: zero blocks detected by one Gaussian probe, Hutchinson on the rest."""
    gen = torch.Generator().manual_seed(seed)
    views = [_BlockView(rop, sl, name) for name, sl in groups]
    gens = [
        torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        for _ in views
    ]
    samples: list[list[float]] = [[] for _ in views]
    used = [0] * len(views)
    exact: dict[int, float] = {}
    g_total = float(ggn["values"].sum())
    g_var = float(ggn["variance"][-1])

    def probe(i: int, kind: str) -> Tensor:
        v = views[i].random_vector(gens[i], kind)
        rv = views[i].matvec(v)
        used[i] += 1
        samples[i].append(float(torch.dot(v.double(), rv.double())))
        return rv

    with progress_bar(budget, "ggn trace: residual", progress) as bar:
        for i in range(len(views)):
            if not bool(probe(i, "gaussian").any()):  # R_ll v = 0 for a Gaussian v: R_ll = 0
                exact[i] = 0.0
            bar.update(1)
        zero_blocks = len(exact)
        active = [i for i in range(len(views)) if i not in exact]
        plan: dict[int, int] = {}
        if active:
            dims = np.array([views[i].dim for i in active])
            free = budget - len(views)
            alloc = _allocate(np.sqrt(dims), free, 1 if free >= len(active) else 0, dims)
            plan = {i: int(n) for i, n in zip(active, alloc, strict=True)}
        for i in [i for i in active if plan[i] >= views[i].dim]:
            # the whole block by one Krylov run: exact (its first probe is not used)
            before = rop.products
            sub_seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gens[i]))
            exact[i] = exact_block_trace(views[i], sub_seed, False).value
            used[i] += rop.products - before
            bar.update(rop.products - before)
            active.remove(i)
        # the probes of the other blocks, interleaved in proportion to their allocations
        order = sorted((j / plan[i], i) for i in active for j in range(1, plan[i] + 1))

        def total() -> tuple[float, float]:
            value, var = g_total + sum(exact.values()), g_var
            for i in active:
                mean, se = mean_stderr(np.asarray(samples[i]))
                value, var = value + mean, var + se**2
            return value, math.sqrt(var)

        for _, i in order:
            if target is not None and all(len(samples[j]) >= 2 for j in active):
                value, se = total()
                if se <= target * abs(value):
                    break
            probe(i, "rademacher")
            bar.update(1)

    per = [
        (exact[i], 0.0) if i in exact else mean_stderr(np.asarray(samples[i]))
        for i in range(len(views))
    ]
    if any(not math.isfinite(se) for _, se in per):
        logger.warning("ggn_trace: a residual block has one probe only; its stderr is nan")
    dofs = [math.inf if i in exact else len(samples[i]) - 1.0 for i in range(len(views))]
    return {
        "value": float(sum(v for v, _ in per)),
        "stderr": math.sqrt(sum(se**2 for _, se in per)),
        "dof": [(se, nu) for (_, se), nu in zip(per, dofs, strict=True)],
        "cumulant3": sum(
            mean_cumulant3(np.asarray(samples[i])) for i in range(len(views)) if i not in exact
        ),
        "blocks": per,
        "zero_blocks": zero_blocks,
        "allocation": {view.name: n for view, n in zip(views, used, strict=True)},
    }
