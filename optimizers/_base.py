"""The mechanism every sharpness-aware optimizer shares.

A sharpness-aware optimizer is "a base optimizer plus an adversarial step": it asks for
gradients at one or more points near the weights θ, combines them into a *direction*
``d``, writes ``d`` into ``.grad`` at the unperturbed θ and lets the wrapped base
optimizer step.  :class:`SharpnessAwareOptimizer` owns everything but the rule:

- wrapping the base optimizer and sharing its ``param_groups`` and ``state`` (so LR
  schedulers, ``zero_grad`` and ``state_dict`` see one optimizer);
- saving θ, moving the weights, restoring θ by copy (never by subtracting);
- the pass driver: runs the closure under ``torch.enable_grad()``, freezes BatchNorm
  running statistics in every pass but the first, runs the perturbation passes under
  DDP's ``no_sync`` and all-reduces the final direction once;
- GradScaler: one scale serves all passes; an inf/NaN in any pass skips the step;
- the explicit ``first_step``/``second_step`` protocol for hand-written loops.

Each variant implements :meth:`SharpnessAwareOptimizer._rule`, a generator that yields a
:class:`Pass` whenever it needs a gradient and receives that gradient (a tensor list
aligned with :attr:`StepContext.params`), and returns the direction.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.optim import Optimizer

from optimizers._foreach import group_by_device_dtype, tl_copy_
from optimizers._kernels import Coef, Kernels, get_kernels
from optimizers._validate import describe

__all__ = [
    "EPS",
    "BatchPart",
    "Pass",
    "SharpnessAwareOptimizer",
    "StepContext",
    "disable_running_stats",
    "is_zero",
]

EPS = 1e-12
"""The ``ε`` of ``x̂ = x / (‖x‖ + ε)``: a zero vector normalises to zero, never NaN."""


class BatchPart:
    """A part of the mini-batch, given to closures as ``closure(part)``.

    ``x[part]`` works on any tensor whose first dimension is the batch (the part resolves
    itself against ``len(x)`` through ``__torch_function__``), so a closure written as
    ``xb, yb = (x, y) if part is None else (x[part], y[part])`` needs no batch size.
    For other containers use ``x[part.slice(len(x))]``.

    Args:
        fraction: The fraction of the batch that forms the *validation* part (taken from
            the end of the batch).
        which: ``"train"`` (the first ``n - round(fraction·n)`` samples) or ``"val"``
            (the last ``round(fraction·n)`` samples, at least one of each).
    """

    def __init__(self, fraction: float, which: str) -> None:
        if which not in ("train", "val"):
            raise ValueError(f"Invalid which: {which!r} (expected 'train' or 'val')")
        self.fraction = fraction
        self.which = which

    def slice(self, n: int) -> slice:
        """Return the Python slice of this part for a batch of ``n`` samples."""
        if n < 2:
            raise ValueError(
                f"Invalid batch size: {n} (a train/val split needs at least 2: drop a last "
                "batch of one, e.g. DataLoader(drop_last=True), or pass val_closure=)"
            )
        k = min(max(round(self.fraction * n), 1), n - 1)
        return slice(0, n - k) if self.which == "train" else slice(n - k, n)

    def select(self, batch: Any) -> Any:
        """This part of a whole batch: every batch-first tensor in it, sliced.

        Tensors (of at least one dimension) are sliced along their first dimension;
        dicts (Hugging Face ``BatchEncoding`` included), lists and tuples are walked;
        anything else is passed through.  ``part.select((x, y))`` equals
        ``(x[part], y[part])``.

        Args:
            batch: a tensor, or a (nested) dict, list or tuple of them.

        Returns:
            The same structure holding the part's rows.
        """
        if isinstance(batch, Tensor):
            return batch[self.slice(batch.shape[0])] if batch.dim() > 0 else batch
        if isinstance(batch, Mapping):
            items = {k: self.select(v) for k, v in batch.items()}
            try:
                return type(batch)(items)  # dict, OrderedDict, BatchEncoding, ...
            except TypeError:
                return items
        if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple
            return type(batch)(*(self.select(v) for v in batch))
        if isinstance(batch, list | tuple):
            return type(batch)(self.select(v) for v in batch)
        return batch

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is Tensor.__getitem__ and len(args) == 2 and isinstance(args[1], BatchPart):
            x, part = args
            return x[part.slice(x.shape[0])]
        return NotImplemented

    def __repr__(self) -> str:
        return f"BatchPart(fraction={self.fraction}, which={self.which!r})"


@dataclass(frozen=True)
class Pass:
    """A request, yielded by a rule, for one gradient at the current weights.

    Attributes:
        part: ``None`` for the whole batch, else the :class:`BatchPart` handed to the closure.
        val: Compute it with the validation closure instead of the training closure.
        final: The rule returns exactly this gradient as its direction; under DDP this pass
            is the synchronised one (its all-reduce is the step's only one).
    """

    part: BatchPart | None = None
    val: bool = False
    final: bool = False


@contextlib.contextmanager
def disable_running_stats(model: nn.Module | None) -> Iterator[None]:
    """Freeze the model's buffers inside the block (BatchNorm running statistics and others).

    The layers run exactly as usual (training mode: batch statistics, the fast kernel
    that also updates the buffers); on exit every buffer the block changed is put back:
    BatchNorm's ``running_mean``, ``running_var`` and ``num_batches_tracked``, and any
    other buffer a forward updates in place or replaces (spectral norm's power-iteration
    vectors ``_u``/``_v``, counters, moving averages), so that they hold exactly what
    they held on entry.  (Turning ``track_running_stats`` off instead selects a CPU
    kernel ~15 % slower, and would leave the other buffers moving.)
    """
    if model is None:
        yield
        return
    held = [
        (m, name, b)
        for m in model.modules()
        for name, b in m._buffers.items()
        if isinstance(b, Tensor) and not b.is_inference()
    ]
    # Every buffer, not only those whose version moved: BatchNorm's kernel updates its
    # running statistics without bumping their version counter.
    copies: dict[int, tuple[Tensor, Tensor]] = {}
    for _, _, b in held:
        copies.setdefault(id(b), (b, b.detach().clone()))
    try:
        yield
    finally:
        for m, name, b in held:
            if m._buffers.get(name) is not b:  # replaced (``self.x = self.x + 1``)
                m._buffers[name] = b
        if copies:
            buffers, saved = zip(*copies.values())
            with torch.no_grad():
                tl_copy_(list(buffers), list(saved))


def is_zero(c: Coef) -> bool:
    """Is a coefficient (a float or a per-tensor list of floats) zero for every tensor?"""
    return c == 0.0 if isinstance(c, float | int) else all(v == 0.0 for v in c)  # type: ignore[union-attr]


def _clear_autocast_cache() -> None:
    """Forget autocast's low-precision copies of the weights (they moved).

    Inside an autocast region torch casts each weight once and reuses the copy until the
    outermost region exits: a pass at moved weights would otherwise see the copy of θ.
    """
    torch.clear_autocast_cache()


def _takes_one_argument(fn: Callable[..., Any]) -> bool:
    """Can ``fn`` be called with one positional argument (``closure(part)``)?"""
    try:
        inspect.signature(fn).bind(None)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): let the call decide
        return True
    return True


def _is_ddp(model: nn.Module | None) -> bool:
    return isinstance(model, nn.parallel.DistributedDataParallel)


def _all_reduce_mean_(tensors: Sequence[Tensor]) -> None:
    """Average ``tensors`` over the process group: one flat all-reduce per device/dtype."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    world = dist.get_world_size()
    for (group,) in group_by_device_dtype(tensors):
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat.div_(world)
        torch._foreach_copy_(group, list(_unflatten_dense_tensors(flat, group)))


class StepContext:
    """What a rule works with during one step.

    Attributes:
        params: The parameters that take part in the step (those with a gradient after
            the first pass), in ``param_groups`` order.
        k: The tensor kernels (foreach or single-tensor).
        found_inf: 0-d bool tensor, set when a norm taken during the step was not finite.
        has_val_closure: ``step`` received a validation closure.
    """

    def __init__(self, opt: SharpnessAwareOptimizer, params: list[Tensor], k: Kernels) -> None:
        self._opt = opt
        self.params = params
        self.k = k
        self.found_inf: Tensor | None = None
        self.has_val_closure = False
        self.scaler: Any = None

    def hparam(self, name: str, params: Sequence[Tensor] | None = None) -> Coef:
        """A hyper-parameter as a float, or per tensor when parameter groups differ."""
        return self._opt._per_tensor(name, self.params if params is None else params)

    def option(self, name: str) -> Any:
        """A non-numeric option (e.g. a convention's name): one value for all groups."""
        values = {g[name] for g in self._opt.param_groups}
        if len(values) != 1:
            raise ValueError(
                f"Invalid param_groups: {type(self._opt).__name__} needs one {name} "
                f"(got {sorted(values)})"
            )
        return values.pop()

    def grad_scale(self) -> Coef:
        """The factor the closure's gradients carry: GradScaler's scale, else ``1.0``.

        A rule that adds a term of its own to a gradient multiplies it by this factor, so
        that ``scaler.step`` unscales the term with the gradient.
        """
        if self.scaler is None or not self.scaler.is_enabled() or not self.params:
            return 1.0
        return self.scaler.scale(torch.ones((), device=self.params[0].device))

    def inv_norm(self, vec: Sequence[Tensor]) -> Tensor:
        """``1 / (‖vec‖ + ε)`` as a 0-d tensor; records a non-finite norm for GradScaler."""
        norm = self.k.norm(vec)
        bad = ~torch.isfinite(norm)
        self.found_inf = bad if self.found_inf is None else self.found_inf | bad
        return 1.0 / (norm + EPS)

    def move(
        self, vec: Sequence[Tensor], *coefs: Coef, params: Sequence[Tensor] | None = None
    ) -> None:
        """``θ <- θ + vec · Π coefs`` on ``params`` (default: :attr:`params`)."""
        self.k.add_(self.params if params is None else params, vec, *coefs)

    def ascend(
        self, vec: Sequence[Tensor], rho: Coef, params: Sequence[Tensor] | None = None
    ) -> Tensor:
        """``θ <- θ + rho · vec / (‖vec‖ + ε)``; returns ``1 / (‖vec‖ + ε)``."""
        inv = self.inv_norm(vec)
        self.move(vec, rho, inv, params=params)
        return inv

    def reset(self) -> None:
        """Put the saved weights θ back (an exact copy)."""
        self._opt._restore()


class SharpnessAwareOptimizer(Optimizer):
    """Base class: a base optimizer plus an adversarial step (see the module docstring).

    Args:
        params: Parameters or parameter groups, as for any ``torch.optim`` optimizer.
        base_optimizer: The base optimizer **class** (e.g. ``torch.optim.SGD``); it is
            built on this optimizer's ``param_groups`` with ``base_kwargs``.
        defaults: The variant's hyper-parameters (stored in every parameter group).
        model: The module being trained (possibly DDP-wrapped), used to freeze BatchNorm
            statistics during the extra passes and for ``no_sync`` under DDP.
        foreach: Use the grouped foreach kernels (default: yes unless a gradient is
            sparse); ``False`` runs the single-tensor reference kernels.
        **base_kwargs: Keyword arguments of the base optimizer (``lr``, ``momentum``, ...).
    """

    passes: ClassVar[float] = 2
    """Forward+backward passes over the full batch per step (the cost floor)."""

    hyperparameters: ClassVar[dict[str, Any]] = {}
    """The variant's own hyper-parameters and options, and their defaults (see
    ``optimizer_hparams``)."""

    _perturbs_first: ClassVar[bool] = False
    """The rule moves the weights before its first pass (Momentum-SAM)."""

    _shared: ClassVar[tuple[str, ...]] = ()
    """Hyper-parameters and options that must have one value in all parameter groups."""

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        base_optimizer: type[Optimizer],
        defaults: dict[str, Any],
        *,
        model: nn.Module | None = None,
        foreach: bool | None = None,
        **base_kwargs: Any,
    ) -> None:
        if not (isinstance(base_optimizer, type) and issubclass(base_optimizer, Optimizer)):
            raise ValueError(
                f"Invalid base_optimizer: {describe(base_optimizer)} (pass the class, e.g. "
                "torch.optim.SGD, and its arguments as keywords)"
            )
        if model is not None and not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: {type(model).__name__} is not an nn.Module")
        clash = sorted(set(defaults) & set(base_kwargs))
        if clash:
            raise ValueError(f"Invalid base_kwargs: {clash} are this optimizer's own")
        super().__init__(params, dict(defaults))
        try:
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        except (TypeError, ValueError) as err:  # e.g. lr="0.1", an unknown keyword
            given = ", ".join(f"{k}={v!r}" for k, v in base_kwargs.items())
            raise ValueError(
                f"Invalid base_kwargs for {base_optimizer.__name__} ({given}): {err}"
            ) from err
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        self.defaults.update(self.base_optimizer.defaults)
        self.model = model
        self.foreach = foreach
        self._saved: list[Tensor] = []
        self._saved_for: list[Tensor] = []
        self._pending: _Pending | None = None
        self._stale: list[tuple[weakref.ref[Tensor], int]] = []
        # A gradient already in .grad (e.g. left by the optimizer used before this one) is
        # not the first pass of this optimizer's first step.
        self._remember_stale()

    # ---------------------------------------------------------------- the rule
    def _rule(self, ctx: StepContext) -> Generator[Pass, list[Tensor], list[Tensor]]:
        """Yield a :class:`Pass` per gradient needed; return the direction ``d``."""
        raise NotImplementedError

    # ---------------------------------------------------------------- state
    _VOLATILE: ClassVar[tuple[str, ...]] = ("_saved", "_saved_for", "_pending", "_stale")
    """Attributes of one step in progress, left out of a copy or a pickle."""

    def __getstate__(self) -> dict[str, Any]:
        """The state torch keeps plus the wrapper's own (base optimizer, model, options).

        ``torch.optim.Optimizer`` keeps only ``defaults``, ``state`` and ``param_groups``:
        a ``copy.deepcopy`` or pickle of the wrapper would have no base optimizer.
        """
        state = super().__getstate__()
        for name, value in self.__dict__.items():
            if (
                name not in state
                and name not in self._VOLATILE
                and not name.startswith("_optimizer_")
            ):
                state[name] = value
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._saved, self._saved_for, self._pending, self._stale = [], [], None, []

    def state_dict(self) -> dict[str, Any]:
        """The base optimizer's state dict (its ``param_groups`` carry our hyper-parameters)."""
        return self.base_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a dict from :meth:`state_dict` (the base optimizer's state included).

        A dict of the base optimizer alone (e.g. a plain ``torch.optim.SGD`` checkpoint,
        to go on with SAM from it) has no hyper-parameters of this optimizer: each group
        keeps the values it had, the loaded ones take precedence.
        """
        if self._pending is not None:
            raise ValueError("Invalid state: load_state_dict() in the middle of a step")
        before = [dict(g) for g in self.param_groups]
        self.base_optimizer.load_state_dict(state_dict)
        self.param_groups = self.base_optimizer.param_groups
        self.state = self.base_optimizer.state
        for i, (old, new) in enumerate(zip(before, self.param_groups)):
            for name, value in old.items():
                new.setdefault(name, value)
            self._check_group(new, self.param_groups[:i])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a parameter group (to the base optimizer as well, once it exists).

        The group's own hyper-parameters are checked like the constructor's (and stored
        as floats); a bad one raises ``ValueError`` and the group is not added.
        """
        if hasattr(self, "base_optimizer"):
            for name, default in self.defaults.items():
                param_group.setdefault(name, default)
            self._check_group(param_group, self.param_groups)
            self.base_optimizer.add_param_group(param_group)
        else:
            super().add_param_group(param_group)
            self._check_group(self.param_groups[-1], self.param_groups[:-1])

    def _check_group(self, group: dict[str, Any], others: Sequence[dict[str, Any]]) -> None:
        """Check one group's hyper-parameters (in place: floats); ``others``: the groups so far."""
        self._check_hparams(group)
        for name in self._shared:
            values = {g[name] for g in (*others, group) if name in g}
            if len(values) > 1:
                raise ValueError(
                    f"Invalid param_groups: {type(self).__name__} needs one {name} "
                    f"(got {sorted(values, key=repr)})"
                )

    def _check_hparams(self, group: dict[str, Any]) -> None:
        """The variant's checks of a group's hyper-parameters (overridden by each variant)."""

    # ---------------------------------------------------------------- helpers
    def _trainable(self) -> list[Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _per_tensor(self, name: str, params: Sequence[Tensor]) -> Coef:
        values = {id(p): g[name] for g in self.param_groups for p in g["params"]}
        per = [float(values[id(p)]) for p in params]
        if len(set(per)) <= 1:
            return per[0] if per else 0.0
        return per

    def _save(self) -> None:
        params = self._trainable()
        if len(self._saved_for) != len(params) or any(
            a is not b for a, b in zip(self._saved_for, params)
        ):
            self._saved = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
            self._saved_for = params
        with torch.no_grad():
            get_kernels(self.foreach, params).copy_(self._saved, [p.detach() for p in params])

    def _restore(self) -> None:
        with torch.no_grad():
            get_kernels(self.foreach, self._saved_for).copy_(
                [p.detach() for p in self._saved_for], self._saved
            )

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Zero the gradients, as torch does; zeroed (not freed) ones are no gradient.

        With ``set_to_none=False`` the zeros stay in ``.grad``: ``step`` must not take
        them for a first pass already computed.
        """
        super().zero_grad(set_to_none=set_to_none)
        if not set_to_none:
            self._remember_stale()

    def _remember_stale(self) -> None:
        # weak references: a later zero_grad() must be able to free the direction
        self._stale = [
            (weakref.ref(p.grad), p.grad._version) for p in self._trainable() if p.grad is not None
        ]

    def _grads_fresh(self) -> bool:
        """Is there a gradient that the last step (or a zero_grad) did not leave behind?

        A gradient the last step left (the direction) or that ``zero_grad`` zeroed is no
        gradient at the current weights; neither is one that is all zeros (e.g. after
        ``model.zero_grad(set_to_none=False)``): the closure's first pass then runs.
        """
        grads = [(p, p.grad) for p in self._trainable() if p.grad is not None]
        if not grads:
            return False
        if len(grads) == len(self._stale) and not any(
            g is not s() or g._version != v for (_, g), (s, v) in zip(grads, self._stale)
        ):
            return False
        return any(bool(g.any()) for _, g in grads)

    def _take_grads(self, ctx: StepContext | None) -> list[Tensor]:
        """Take the gradients of the pass that just ran (``.grad`` is left ``None``)."""
        params = ctx.params if ctx is not None else self._trainable()
        clone = _is_ddp(self.model) and getattr(self.model, "gradient_as_bucket_view", False)
        out = []
        for p in params:
            g = p.grad
            if g is None:
                g = torch.zeros_like(p)
            elif clone:
                g = g.detach().clone()
            out.append(g)
            p.grad = None
        return out

    # ---------------------------------------------------------------- the driver
    def _run_pass(
        self,
        closure: Callable[..., Any],
        val_closure: Callable[..., Any] | None,
        req: Pass,
        first: bool,
    ) -> Any:
        fn = closure
        if req.val:
            if val_closure is None:
                raise ValueError("Invalid val_closure: this step needs a validation closure")
            fn = val_closure
        if req.part is not None and not _takes_one_argument(fn):
            raise ValueError(
                f"Invalid closure: {describe(fn)} takes no argument; "
                f"{type(self).__name__} calls closure(part) with a BatchPart for the parts "
                "of the batch (write `def closure(part=None)` and select `x[part]`)"
            )
        sync = req.final or not _is_ddp(self.model)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.enable_grad())
            if not first:
                stack.enter_context(disable_running_stats(self.model))
            if not sync:
                stack.enter_context(self.model.no_sync())  # type: ignore[union-attr]
            _clear_autocast_cache()
            out = fn() if req.part is None else fn(req.part)
        # Detached: holding the first pass's graph through the later passes costs time.
        return out.detach() if isinstance(out, Tensor) else out

    def _begin(
        self, has_val: bool = False
    ) -> tuple[Generator[Pass, list[Tensor], list[Tensor]], StepContext, Pass]:
        self._save()
        params = self._trainable()
        ctx = StepContext(self, params, get_kernels(self.foreach, params))
        ctx.has_val_closure = has_val
        gen = self._rule(ctx)
        return gen, ctx, next(gen)

    def _prune(self, ctx: StepContext) -> None:
        """After the first pass: keep the parameters that received a gradient.

        A sparse gradient (``nn.Embedding(sparse=True)``) selects the single-tensor
        kernels unless ``foreach`` was set: the foreach norms take no sparse tensors.
        """
        ctx.params = [p for p in ctx.params if p.grad is not None]
        if self.foreach is None and any(p.grad.is_sparse for p in ctx.params):  # type: ignore[union-attr]
            ctx.k = get_kernels(False)

    def _finish(self, ctx: StepContext, d: list[Tensor], synced: bool, scaler: Any) -> None:
        """Restore θ, write ``d`` into ``.grad``, reduce it under DDP, let the base step.

        ``synced``: ``d`` is the last pass's gradient (DDP reduced it).  Otherwise ``d`` is
        a combination of the passes, defined on :attr:`StepContext.params` only: a tensor
        that had no gradient at θ but got one at a moved point (a branch the moved weights
        switched on) holds a raw, unreduced gradient of the last pass, and is not stepped.
        """
        self._restore()
        if not synced:
            taking_part = {id(p) for p in ctx.params}
            for p in self._trainable():
                if id(p) not in taking_part:
                    p.grad = None
        if _is_ddp(self.model) and not synced:
            _all_reduce_mean_(d)
        for p, g in zip(ctx.params, d):
            p.grad = g
        if scaler is not None and scaler.is_enabled():
            if ctx.found_inf is not None:
                # An inf/NaN in an earlier pass: poison d so that GradScaler skips the step
                # and lowers the scale, exactly as for an inf in a plain backward pass.
                poison = torch.where(ctx.found_inf, float("nan"), 1.0)
                ctx.k.mul_(d, poison)
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        _clear_autocast_cache()
        self._remember_stale()

    @torch.no_grad()
    def step(  # type: ignore[override]
        self,
        closure: Callable[..., Any] | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
        val_closure: Callable[..., Any] | None = None,
    ) -> Any:
        """Perform one optimisation step.

        Args:
            closure: Zeroes the gradients, computes the loss, calls ``backward`` and returns
                the loss; it may take the optional ``part`` argument (a :class:`BatchPart`,
                only Agnostic-SAM passes one).  Required.
            scaler: A ``torch.amp.GradScaler`` whose ``scale(loss).backward()`` the closure
                uses: the one scale serves every pass, the step is skipped (and the scale
                lowered by ``scaler.update()``, which you call after ``step``) when any
                pass produced an inf/NaN.
            val_closure: Agnostic-SAM only: computes the validation gradient (see there).

        Returns:
            The loss the closure returned in the first pass at the unperturbed weights,
            detached (``None`` when the gradient of that pass was already present: a
            ``backward`` since the last step; the direction the last step left in
            ``.grad``, or zeros from ``zero_grad(set_to_none=False)``, are no gradient).

        A rule whose radius is 0 needs no gradient but the first: the step is then one
        pass, the base optimizer's step bit for bit (dropout's random stream included).
        The passes at moved weights run with autocast's weight cache cleared, so a step
        taken inside a ``torch.autocast`` region is the same as one whose closure enters it.
        """
        if closure is None:
            raise ValueError(f"Invalid closure: None ({type(self).__name__}.step needs one)")
        for name, fn in (("closure", closure), ("val_closure", val_closure)):
            if fn is not None and not callable(fn):
                raise ValueError(f"Invalid {name}: {describe(fn)} (expected a callable)")
        if self._pending is not None:
            raise ValueError("Invalid call: step() between first_step() and second_step()")
        gen, ctx, req = self._begin(has_val=val_closure is not None)
        ctx.scaler = scaler
        reuse = (
            not self._perturbs_first and req.part is None and not req.val and self._grads_fresh()
        )
        loss = None
        first = True
        try:
            while True:
                if not (first and reuse):
                    out = self._run_pass(closure, val_closure, req, first)
                    if first:
                        loss = out
                if first:
                    self._prune(ctx)
                    first = False
                final = req.final
                req = gen.send(self._take_grads(ctx))
        except StopIteration as stop:
            self._finish(ctx, stop.value, final, scaler)
        except BaseException:
            self._restore()
            raise
        return loss

    # ---------------------------------------------------------------- explicit calls
    @torch.no_grad()
    def first_step(self) -> None:
        """Explicit protocol, step 1: call it after ``loss.backward()`` at the weights θ.

        Saves θ and moves the weights to the first point where the rule needs a gradient
        (for Momentum-SAM, which needs no gradient at θ, call it *before* the forward
        pass).  BatchNorm statistics are frozen until the step completes.  Under DDP, run
        the following backward passes inside ``model.no_sync()`` except the last.
        """
        if self._pending is not None:
            raise ValueError("Invalid call: first_step() twice without second_step()")
        gen, ctx, req = self._begin()
        if req.part is not None or req.val:
            raise ValueError(
                f"Invalid call: {type(self).__name__} splits the batch; use step(closure)"
            )
        freeze = contextlib.ExitStack()
        done = None
        try:
            if not self._perturbs_first:
                self._prune(ctx)
                if not ctx.params:
                    raise ValueError(
                        "Invalid call: first_step() found no gradient at θ (call "
                        "loss.backward() before first_step())"
                    )
                try:
                    req = gen.send(self._take_grads(ctx))
                except StopIteration as stop:  # no perturbation (rho = 0): d is known
                    done = stop.value
                freeze.enter_context(disable_running_stats(self.model))
        except BaseException:
            freeze.close()
            self._restore()
            raise
        _clear_autocast_cache()
        self._pending = _Pending(gen, ctx, req, freeze, first=self._perturbs_first, done=done)

    @torch.no_grad()
    def second_step(self, *, scaler: torch.amp.GradScaler | None = None) -> bool:
        """Explicit protocol, step 2: call it after each further ``loss.backward()``.

        Returns ``True`` when the step is complete (weights back at θ, base optimizer
        stepped), ``False`` when the rule needs another gradient at the new weights
        (GAM, FAD, CR-SAM): compute it and call ``second_step`` again.
        """
        pend = self._pending
        if pend is None:
            raise ValueError("Invalid call: second_step() without first_step()")
        if pend.done is not None:  # the rule needed no further gradient: this one is unused
            self._pending = None
            pend.freeze.close()
            self._take_grads(pend.ctx)
            self._finish(pend.ctx, pend.done, True, scaler)
            return True
        try:
            if pend.first:
                self._prune(pend.ctx)
                pend.first = False
            final = pend.req.final
            pend.ctx.scaler = scaler
            pend.req = pend.gen.send(self._take_grads(pend.ctx))
        except StopIteration as stop:
            self._pending = None
            pend.freeze.close()
            self._finish(pend.ctx, stop.value, final, scaler)
            return True
        except BaseException:
            self._pending = None
            pend.freeze.close()
            self._restore()
            raise
        if pend.req.part is not None or pend.req.val:
            raise ValueError(f"Invalid call: {type(self).__name__} needs step(closure)")
        _clear_autocast_cache()
        return False


@dataclass
class _Pending:
    gen: Generator[Pass, list[Tensor], list[Tensor]]
    ctx: StepContext
    req: Pass
    freeze: contextlib.ExitStack
    first: bool
    done: list[Tensor] | None = None
