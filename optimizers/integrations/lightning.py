"""Sharpness-aware training in PyTorch Lightning.

**Automatic optimization works as it is.**  Lightning calls
``optimizer.step(closure=closure)`` with a closure that runs ``training_step``,
``zero_grad`` and ``backward``; the optimizers of this package call it once per pass, so
returning one from ``configure_optimizers`` is all it takes::

    class Module(L.LightningModule):
        def configure_optimizers(self):
            return SAM(self.parameters(), torch.optim.SGD, model=self, lr=0.05, rho=0.05)

    L.Trainer(max_steps=1000, callbacks=[SharpnessAwareCallback()]).fit(Module(), loader)

Because the closure runs once per pass, ``training_step`` (and any ``self.log`` in it,
and the ``on_before_optimizer_step`` hook) runs ``passes`` times per step; the loss that
Lightning reports is the last pass's (at the perturbed weights, not at θ).

What Lightning's closure cannot do, :class:`SharpnessAwareCallback` refuses at the start
of ``fit`` with a ``ValueError`` (:func:`check_lightning_trainer` does the same checks):

- ``accumulate_grad_batches > 1``: Lightning steps with the closure of the last
  micro-batch only, so the extra passes would see one micro-batch (also refused when a
  ``GradientAccumulationScheduler`` turns it on later in the run, at the first batch
  of that epoch);
- ``gradient_clip_val``: Lightning clips inside the closure, i.e. every pass's gradient
  separately (which changes GSAM, GAM, FAD); clip in the base optimizer instead;
- a precision plugin with a GradScaler (``"16-mixed"``): it runs the closure itself and
  then calls ``step()`` without one.  ``"bf16-mixed"`` (autocast only) works;
- Agnostic-SAM without a validation closure: it calls ``closure(part)`` and Lightning's
  closure takes no argument.  Use manual optimization with ``val_closure``::

      def training_step(self, batch, batch_idx):
          opt = self.optimizers()
          x, y = batch
          def closure():
              opt.zero_grad()
              loss = F.cross_entropy(self(x), y)
              self.manual_backward(loss)
              return loss
          def val_closure():  # e.g. the last half of the batch, or a held-out batch
              opt.zero_grad()
              loss = F.cross_entropy(self(x[len(x) // 2 :]), y[len(y) // 2 :])
              self.manual_backward(loss)
              return loss
          opt.step(closure=closure, val_closure=val_closure)

  Manual optimization works for every optimizer in the same way (``opt.step(closure=...)``
  on the ``LightningOptimizer``, ``self.manual_backward`` in the closure).

The callback also gives each optimizer built without ``model=`` the module (or, under
DDP, the wrapped module) so that BatchNorm statistics are frozen in the extra passes
(and ASAM's ``T`` follows the parameter names, as with ``model=``).
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
except ImportError:  # pragma: no cover - the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError as err:
        raise ImportError(
            "optimizers.integrations.lightning needs Lightning: pip install sharpscape[lightning]"
        ) from err

from torch import nn

from optimizers._base import SharpnessAwareOptimizer
from optimizers.agnostic_sam import AgnosticSAM
from optimizers.integrations._attach import attach_model

__all__ = ["SharpnessAwareCallback", "check_lightning_trainer"]


def _sharpness_aware(trainer: Any) -> list[SharpnessAwareOptimizer]:
    return [o for o in trainer.optimizers if isinstance(o, SharpnessAwareOptimizer)]


def _check_accumulation(trainer: Any, names: str) -> None:
    if trainer.accumulate_grad_batches > 1:
        raise ValueError(
            f"Invalid accumulate_grad_batches: {trainer.accumulate_grad_batches} ({names} "
            "would run its extra passes on the last micro-batch only); use 1"
        )


def check_lightning_trainer(trainer: Any, module: Any) -> None:
    """Refuse what a Lightning run cannot do with a sharpness-aware optimizer.

    Also sets ``optimizer.model`` (BatchNorm freezing, DDP ``no_sync``) where it is unset.

    Args:
        trainer: The ``lightning.pytorch.Trainer`` (its optimizers set up).
        module: The ``LightningModule`` being fitted.

    Raises:
        ValueError: Gradient accumulation, gradient clipping or Agnostic-SAM under
            automatic optimization, or a precision plugin with a GradScaler.
    """
    opts = _sharpness_aware(trainer)
    if not opts:
        return
    names = ", ".join(sorted({type(o).__name__ for o in opts}))
    if getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            f"Invalid precision: {trainer.precision!r} uses a GradScaler, which steps {names} "
            "without a closure; use precision='bf16-mixed' or 32"
        )
    if module.automatic_optimization:
        _check_accumulation(trainer, names)
        if trainer.gradient_clip_val:
            raise ValueError(
                f"Invalid gradient_clip_val: {trainer.gradient_clip_val} (Lightning would clip "
                f"each pass of {names} separately); clip in the base optimizer instead"
            )
        if any(isinstance(o, AgnosticSAM) for o in opts):
            raise ValueError(
                "Invalid optimizer: AgnosticSAM splits the batch, which Lightning's closure "
                "cannot; use manual optimization with opt.step(closure=..., val_closure=...)"
            )
    wrapped = getattr(trainer.strategy, "model", None)
    target = wrapped if isinstance(wrapped, nn.parallel.DistributedDataParallel) else module
    for o in opts:
        if o.model is None:
            attach_model(o, target)


class SharpnessAwareCallback(pl.Callback):
    """Check the run at the start of ``fit`` (see :func:`check_lightning_trainer`).

    Example:
        >>> trainer = L.Trainer(max_steps=100, callbacks=[SharpnessAwareCallback()])
        >>> trainer.fit(module, loader)  # module.configure_optimizers returns SAM(...)
    """

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Run :func:`check_lightning_trainer`."""
        check_lightning_trainer(trainer, pl_module)

    def on_train_batch_start(
        self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int
    ) -> None:
        """Refuse gradient accumulation switched on during the run.

        (``GradientAccumulationScheduler`` sets ``accumulate_grad_batches`` at an epoch's
        start, after :meth:`on_fit_start`.)
        """
        opts = _sharpness_aware(trainer)
        if opts and pl_module.automatic_optimization:
            _check_accumulation(trainer, ", ".join(sorted({type(o).__name__ for o in opts})))
