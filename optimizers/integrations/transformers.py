"""Sharpness-aware training in the Hugging Face ``Trainer``.

``Trainer`` calls ``optimizer.step()`` without a closure, after clipping the gradient of
one backward pass; a sharpness-aware optimizer needs gradients at several points for the
same batch.  :class:`SharpnessAwareTrainer` keeps the Trainer's loop and fills the gap:

1. ``training_step`` (per micro-batch) runs the Trainer's own forward+backward at the
   weights θ, which is the first pass of the step, and keeps the micro-batch;
2. when the Trainer calls ``optimizer.step()``, the optimizer receives a closure that
   replays the Trainer's ``training_step`` over every kept micro-batch (same inputs,
   same loss scaling, same autocast) for each further pass;
3. gradient clipping (``max_grad_norm``) applies to the final direction ``d``, just
   before the base optimizer steps, and the logged ``grad_norm`` is ``‖d‖`` before
   clipping.  (Clipping the first pass's gradient instead would change GSAM, GAM and FAD.)

Supported: gradient accumulation (each pass is the gradient of the whole accumulated
batch at one point; Agnostic-SAM's parts are the parts of that whole batch, so
micro-batches of one sample work), ``bf16=True`` (autocast, no loss scaling), a learning-rate
scheduler, ``max_grad_norm``.  Refused at construction with a ``ValueError``: ``fp16=True``
(the Trainer's GradScaler unscales the first pass's gradient in place before the other
passes run), DeepSpeed and FSDP (they own the optimizer step).  Under DDP the first pass
is the synchronised Trainer backward; later passes follow the optimizer's own DDP rules
(not tested here).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

try:
    from transformers import Trainer
except ImportError as err:  # pragma: no cover - exercised only without transformers
    raise ImportError(
        "optimizers.integrations.transformers needs Hugging Face transformers: "
        "pip install sharpscape[hf]"
    ) from err

from optimizers._base import BatchPart, SharpnessAwareOptimizer
from optimizers._registry import OPTIMIZERS, build_optimizer
from optimizers.agnostic_sam import AgnosticSAM
from optimizers.integrations._attach import attach_model

__all__ = ["SharpnessAwareTrainer"]


@contextlib.contextmanager
def _without_backward(accelerator: Any) -> Iterator[None]:
    """Make ``accelerator.backward`` a no-op inside the block (for a loss-only forward)."""
    accelerator.backward = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del accelerator.backward


class _Rows(BatchPart):
    """Fixed rows of one micro-batch: the share of a :class:`BatchPart` of the window."""

    def __init__(self, part: BatchPart, rows: slice) -> None:
        super().__init__(part.fraction, part.which)
        self.rows = rows

    def slice(self, n: int) -> slice:
        """The rows, whatever ``n``."""
        return self.rows


def _rows(inputs: dict[str, Any]) -> int:
    """The number of samples of a micro-batch (the first dimension of its tensors)."""
    for value in inputs.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return value.shape[0]
    raise ValueError(
        "Invalid batch: AgnosticSAM splits the batch along the first dimension of its "
        f"tensors, and this one has none (keys: {', '.join(map(str, inputs))})"
    )


def _check_args(args: Any) -> None:
    if getattr(args, "fp16", False):
        raise ValueError(
            "Invalid TrainingArguments: fp16=True is not supported by SharpnessAwareTrainer "
            "(the Trainer's GradScaler unscales the first pass only); use bf16=True or float32"
        )
    if getattr(args, "deepspeed", None):
        raise ValueError(
            "Invalid TrainingArguments: SharpnessAwareTrainer does not support DeepSpeed"
        )
    if getattr(args, "fsdp", None):
        raise ValueError("Invalid TrainingArguments: SharpnessAwareTrainer does not support FSDP")
    if getattr(args, "max_grad_norm", 0) and not hasattr(Trainer, "_clip_grad_norm"):
        raise ValueError(
            "Invalid TrainingArguments: this transformers version clips the first pass's "
            "gradient; set max_grad_norm=0 (or upgrade transformers)"
        )


_SET_BY_TRAINER = {
    "params": "the Trainer's parameter groups",
    "model": "the Trainer's model",
    "lr": "TrainingArguments(learning_rate=...)",
    "weight_decay": "TrainingArguments(weight_decay=...)",
}


def _check_sam_request(name: str | None, kwargs: dict[str, Any] | None) -> None:
    """Refuse, at construction, a ``sam_optimizer``/``sam_kwargs`` pair that cannot build.

    ``lr`` and ``weight_decay`` come from the ``TrainingArguments`` (a ``weight_decay``
    in ``sam_kwargs`` would be overridden by the parameter groups' own, silently).
    """
    if name is None:
        if kwargs:
            raise ValueError("Invalid arguments: sam_kwargs without sam_optimizer")
        return
    if name not in OPTIMIZERS:
        raise ValueError(
            f"Invalid sam_optimizer: {name!r} (expected one of {', '.join(OPTIMIZERS)})"
        )
    clash = sorted(set(kwargs or {}) & set(_SET_BY_TRAINER))
    if clash:
        raise ValueError(
            f"Invalid sam_kwargs: {clash[0]!r} is set by the Trainer ({_SET_BY_TRAINER[clash[0]]})"
        )


def _mark_causal_lm(model: Any) -> bool:
    """Tell the Trainer that a ``*LMHeadModel`` shifts its labels, as ``*ForCausalLM`` do.

    transformers (5.25) leaves ``loss_type`` unset for classes named ``*LMHeadModel``
    (GPT-2); the Trainer then counts the items of a batch without the causal shift and
    scales the loss and gradients by ``(n − rows) / n`` (3.51 logged against 3.92 on a tiny
    GPT-2). The model computes the same loss either way.
    """
    if model is None or getattr(model, "loss_type", "unset") is not None:
        return False
    if type(model).__name__.endswith(("LMHeadModel", "ForCausalLM")):
        model.loss_type = "ForCausalLM"
        return True
    return False


class SharpnessAwareTrainer(Trainer):
    """A ``transformers.Trainer`` that trains with a sharpness-aware optimizer.

    Pass the optimizer as ``optimizers=(SAM(model.parameters(), torch.optim.SGD, lr=...),
    None)``, or name it: ``sam_optimizer="gam"`` builds it with
    :func:`~optimizers.build_optimizer` on the Trainer's two parameter groups (weight decay
    / none), with ``lr=args.learning_rate``, ``weight_decay=args.weight_decay`` and
    ``sam_kwargs`` (``base``, ``momentum`` and the optimizer's own hyper-parameters).

    Every optimizer of the family works: the first pass at θ is the Trainer's own
    backward (Momentum-SAM moves the weights before it, Agnostic-SAM, whose first pass is
    part of the batch, gets a loss-only forward there instead), the other passes replay
    the Trainer's ``training_step`` on the same micro-batches (see the module docstring).
    The logged ``loss`` is that of the first forward (at θ; at the perturbed point for
    Momentum-SAM).

    Args:
        *args: As for ``transformers.Trainer``.
        sam_optimizer: Build the optimizer by name (one of
            :data:`~optimizers.OPTIMIZERS`) unless ``optimizers`` gives one.
        sam_kwargs: Keyword arguments of :func:`~optimizers.build_optimizer` besides the
            parameters, ``model``, ``lr`` and ``weight_decay``.
        **kwargs: As for ``transformers.Trainer``.

    Raises:
        ValueError: ``fp16=True``, DeepSpeed, FSDP, an optimizer that is not
            sharpness-aware, a ``sam_optimizer`` name that is not one, or ``sam_kwargs``
            giving what the Trainer sets (``lr``, ``weight_decay``, ``model``).

    Example:
        >>> opt = SAM(model.parameters(), torch.optim.SGD, lr=0.05, momentum=0.9, rho=0.05)
        >>> trainer = SharpnessAwareTrainer(
        ...     model=model, args=args, train_dataset=ds, optimizers=(opt, None)
        ... )
        >>> trainer.train()
    """

    def __init__(
        self,
        *args: Any,
        sam_optimizer: str | None = None,
        sam_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        _check_args(self.args)
        if _mark_causal_lm(self.model) and hasattr(self, "_loss_shifts_labels"):
            self._loss_shifts_labels = True  # read by the Trainer's item count
        if sam_optimizer is not None and self.optimizer is not None:
            raise ValueError("Invalid arguments: give sam_optimizer or optimizers, not both")
        _check_sam_request(sam_optimizer, sam_kwargs)
        self.sam_optimizer = sam_optimizer
        self.sam_kwargs = dict(sam_kwargs or {})
        self._window: list[tuple[nn.Module, dict[str, Any], Any]] = []
        self._direction_norm = torch.zeros((), device=self.args.device)
        if self.optimizer is not None:
            self._adopt(self.optimizer)

    # ------------------------------------------------------------------ the optimizer
    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        """Build the named optimizer (or take the given one) and connect it to the loop."""
        if self.optimizer is None and self.sam_optimizer is not None:
            opt_model = self.model if model is None else model
            decay = set(self.get_decay_parameter_names(opt_model))
            named = [(n, p) for n, p in opt_model.named_parameters() if p.requires_grad]
            groups = [
                {
                    "params": [p for n, p in named if n in decay],
                    "weight_decay": self.args.weight_decay,
                },
                {"params": [p for n, p in named if n not in decay], "weight_decay": 0.0},
            ]
            self.optimizer = build_optimizer(
                self.sam_optimizer,
                [g for g in groups if g["params"]],
                model=opt_model,
                lr=self.args.learning_rate,
                **self.sam_kwargs,
            )
        super().create_optimizer(model)
        self._adopt(self.optimizer)
        return self.optimizer

    def _adopt(self, opt: Any) -> None:
        """Check the optimizer, hook clipping before its base step, feed its ``step``."""
        opt = getattr(opt, "optimizer", opt)  # an accelerate-wrapped optimizer
        if not isinstance(opt, SharpnessAwareOptimizer):
            raise ValueError(
                f"Invalid optimizer: {type(opt).__name__} is not sharpness-aware (pass "
                "optimizers=(SAM(...), None) or sam_optimizer='sam')"
            )
        previous = getattr(opt.step, "_sharpness_aware_trainer", None)
        if previous is self:
            return
        inner = opt.step
        if previous is not None:  # a Trainer built before on this optimizer: unhook it
            previous._clip_hook.remove()
            inner = inner.__wrapped__
        self._sam = opt
        self._clip_hook = opt.base_optimizer.register_step_pre_hook(self._clip_direction)

        @functools.wraps(inner)
        def step(closure: Callable[..., Any] | None = None, **kwargs: Any) -> Any:
            if closure is not None:
                return inner(closure, **kwargs)
            return self._sharpness_aware_step(inner, **kwargs)

        step._sharpness_aware_trainer = self  # type: ignore[attr-defined]
        opt.step = step

    # ------------------------------------------------------------------ the loop
    def training_step(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        num_items_in_batch: Tensor | int | None = None,
    ) -> Tensor:
        """The first pass of the step on one micro-batch; the micro-batch is kept.

        Override ``compute_loss`` rather than this method: the further passes replay
        ``Trainer.training_step``.
        """
        opt = self._sam
        if opt.model is None or isinstance(model, nn.parallel.DistributedDataParallel):
            attach_model(opt, model)
        try:
            if not self._window and opt._perturbs_first:
                opt.first_step()  # Momentum-SAM: its only pass runs at the perturbed point
            self._window.append((model, dict(inputs), num_items_in_batch))
            if not isinstance(opt, AgnosticSAM):
                return super().training_step(model, inputs, num_items_in_batch)
            # Agnostic-SAM's first pass is a part of the batch: here only the loss, at θ
            with torch.no_grad(), _without_backward(self.accelerator):
                return super().training_step(model, inputs, num_items_in_batch)
        except BaseException:
            self._abandon_step()
            raise

    def _abandon_step(self) -> None:
        """After an exception (an interrupt, OOM) inside a step: back to θ, nothing kept.

        The micro-batches of the step are dropped (the next step must not replay them),
        and Momentum-SAM's move to the perturbed point is undone, so that evaluating or
        saving after the exception sees θ.
        """
        self._window = []
        opt = self._sam
        pending, opt._pending = opt._pending, None
        if pending is not None:
            pending.freeze.close()
            opt._restore()

    def _replay(self, window: list[tuple[nn.Module, dict[str, Any], Any]]) -> Callable[..., Any]:
        """The closure of one step: the Trainer's ``training_step`` over the window."""

        def closure(part: BatchPart | None = None) -> Tensor:
            self._sam.zero_grad()
            total = torch.zeros((), device=self.args.device)
            items = window if part is None else self._window_part(window, part)
            for i, (model, inputs, n) in enumerate(items):
                last = i == len(items) - 1
                sync = contextlib.nullcontext() if last else self.accelerator.no_sync(model)
                with sync:
                    total = total + Trainer.training_step(self, model, inputs, n)
            return total

        return closure

    def _window_part(
        self, window: list[tuple[nn.Module, dict[str, Any], Any]], part: BatchPart
    ) -> list[tuple[nn.Module, dict[str, Any], Any]]:
        """Agnostic-SAM's part of the whole accumulated batch, micro-batch by micro-batch.

        The rows of the window are counted end to end and ``part`` splits them (so a
        micro-batch of one sample is fine); each micro-batch contributes the rows of the
        part it holds, and the part's loss is its mean over its counted items, as for the
        whole window.
        """
        sizes = [_rows(inputs) for _, inputs, _ in window]
        if sum(sizes) < 2:
            raise ValueError(
                f"Invalid batch size: {sum(sizes)} (AgnosticSAM splits the batch of a step "
                "into a train and a validation part: raise per_device_train_batch_size or "
                "gradient_accumulation_steps, or set dataloader_drop_last=True for a last "
                "batch of one)"
            )
        whole = part.slice(sum(sizes))
        out, start = [], 0
        for (model, inputs, _), n in zip(window, sizes):
            lo, hi = max(whole.start - start, 0), min(whole.stop - start, n)
            start += n
            if lo < hi:
                out.append((model, _Rows(part, slice(lo, hi)).select(inputs)))
        count_items = getattr(self, "_get_num_items_in_batch", None)
        n_items = (
            None if count_items is None else count_items([i for _, i in out], self.args.device)
        )
        return [(model, inputs, n_items) for model, inputs in out]

    def _sharpness_aware_step(self, inner: Callable[..., Any], **kwargs: Any) -> Any:
        """What ``optimizer.step()`` does when the Trainer calls it: the further passes."""
        window, self._window = self._window, []
        if not window:
            raise ValueError("Invalid call: optimizer.step() without a training_step before it")
        closure = self._replay(window)
        if self._sam._pending is not None:  # Momentum-SAM, after first_step()
            try:
                while not self._sam.second_step(**kwargs):
                    closure()
            except BaseException:
                self._abandon_step()
                raise
            return None
        return inner(closure, **kwargs)

    # ------------------------------------------------------------------ clipping
    def _clip_direction(self, base: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        """Base-optimizer pre-step hook: record ``‖d‖`` and clip ``d`` to ``max_grad_norm``."""
        params = [p for g in base.param_groups for p in g["params"] if p.grad is not None]
        if not params:
            return
        total = torch.nn.utils.get_total_norm([p.grad for p in params])
        max_norm = self.args.max_grad_norm
        if max_norm is not None and max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_(params, max_norm, total)
        self._direction_norm.copy_(total.detach())

    def _clip_grad_norm(self, model: nn.Module) -> None:
        """The first pass's gradient is not clipped: the direction is (see the hook)."""
        return None

    def _get_grad_norm(self, model: nn.Module, grad_norm: Any = None) -> Tensor:
        """``‖d‖`` before clipping, filled in by the optimizer step that follows."""
        return self._direction_norm
