"""From "a batch" to "a loss": the one adapter every entry point uses.

A researcher's data comes in many shapes and their model may compute its own loss.
:class:`BatchAdapter` turns any of them into the three things an analysis needs of a batch:
the model's outputs, the batch's mean loss, and the number of items that mean is over.

Batch forms, in the order they are recognised:

1. ``compute_loss`` given: ``compute_loss(model, batch)`` returns the batch's mean loss,
   or ``(mean_loss, n_items)``. Anything goes (contrastive losses, several models, ...).
2. A tuple/list ``(inputs, targets, ...)``: ``outputs = model(inputs)`` (``model(**inputs)``
   for a dict of inputs), ``loss = loss_fn(outputs, targets)`` (default cross-entropy).
3. A dict with an inputs/targets pair of keys (``input_key``/``target_key``, else the first
   of ``inputs/targets``, ``x/y``, ``input/target``, ``image/label``): as a tuple.
4. Any other dict — a Hugging Face batch such as ``{"input_ids", "attention_mask",
   "labels"}`` — is passed as ``model(**batch)``:

   - without ``loss_fn``, the model computes its own loss: an output with ``.loss``
     (``ModelOutput``), a dict with ``"loss"``, a tuple whose first item is the loss, or
     a scalar tensor;
   - with ``loss_fn``, the labels (``labels``, ``label``, ``label_ids`` or ``target_key``)
     are taken out of the batch, the model runs on the rest, and ``loss_fn(logits,
     labels)`` is the loss;
   - values that are not tensors under keys the model's ``forward`` does not name (ids,
     raw text) are left out of the call, as the Hugging Face Trainer leaves out unused
     columns, and ``label``/``label_ids`` are passed as ``labels`` when the forward names
     that (as Hugging Face's data collators rename them); a tensor under a key the
     forward does not name goes to its ``**kwargs``, or is refused before any work when
     it has none.

Outputs that carry ``logits`` (``ModelOutput`` or dict) are given to ``loss_fn`` and to the
accuracy as their logits; of a tuple output (``(logits, aux)``) its first tensor of at
least one dimension is (use ``compute_loss`` for a loss of the whole output).

**The loss of the data** is the mean over its counted items, exact over batches of any
size: ``L = Σ_b n_b · L_b / Σ_b n_b`` where ``L_b`` is batch ``b``'s mean loss and ``n_b`` the
number of items it averages:

- integer targets with a cross-entropy (the default, ``F.cross_entropy``, ``F.nll_loss``,
  ``nn.CrossEntropyLoss``/``nn.NLLLoss``, or a model computing its own loss): the targets
  not equal to the ignore index (-100, or the loss module's ``ignore_index``); for a
  causal language model (``*ForCausalLM``, ``*LMHeadModel``) the labels shifted by one, as
  the model does;
- otherwise the samples of the batch (its first dimension);
- ``count_items(batch)``, or the ``n_items`` returned by ``compute_loss``, when given.

Batches with no counted item (every token ignored) carry no weight and are skipped.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "BatchAdapter",
    "BatchParts",
    "batch_size_of",
    "logits_of",
    "math_attention",
    "model_loss_of",
]

LossFn = Callable[[Any, Any], Tensor]
ForwardFn = Callable[[nn.Module, Any], Any]
ComputeLossFn = Callable[[nn.Module, Any], "Tensor | tuple[Tensor, Any]"]
CountFn = Callable[[Any], "int | Tensor"]

# Keys tried, in order, to find inputs and targets in dict batches.
DICT_KEYS = (("inputs", "targets"), ("x", "y"), ("input", "target"), ("image", "label"))
# Keys holding the labels of a model-style (Hugging Face) batch.
LABEL_KEYS = ("labels", "label", "label_ids")
_IGNORE_INDEX = -100  # the ignore index of F.cross_entropy / nll_loss and of HF models
_CE_FUNCTIONS = (F.cross_entropy, F.nll_loss)

PAIR = "pair"  # (inputs, targets): outputs = model(inputs), loss = loss_fn(outputs, targets)
MODEL = "model"  # model(**batch) computes its own loss (or loss_fn on its logits)
CUSTOM = "custom"  # compute_loss(model, batch)


@dataclass
class BatchParts:
    """A batch as the adapter reads it.

    Attributes:
        style: ``"pair"``, ``"model"`` or ``"custom"`` (see the module docstring).
        inputs: what the model is called with (a dict is passed as keyword arguments in
            the ``"model"`` style and when ``inputs`` is a dict).
        targets: the targets or labels (None when the batch has none).
    """

    style: str
    inputs: Any
    targets: Any


def batch_size_of(obj: Any) -> int:
    """The number of samples of a batch: the first dimension of its first tensor."""
    if isinstance(obj, Tensor):
        return int(obj.shape[0]) if obj.dim() > 0 else 1
    if isinstance(obj, Mapping):
        for v in obj.values():
            with contextlib.suppress(ValueError):
                return batch_size_of(v)
    if isinstance(obj, tuple | list):
        for v in obj:
            with contextlib.suppress(ValueError):
                return batch_size_of(v)
    raise ValueError(f"cannot tell the batch size of a {type(obj).__name__}")


def logits_of(outputs: Any) -> Any:
    """The logits of a model's output.

    ``.logits`` of a ``ModelOutput``, ``["logits"]`` of a dict, the first tensor of at
    least one dimension of a tuple or list (``(logits, aux)``; Hugging Face's
    ``return_dict=False`` tuples, whose leading scalar is the loss), else the output.
    """
    if isinstance(outputs, Tensor):
        return outputs
    logits = getattr(outputs, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(outputs, Mapping) and isinstance(outputs.get("logits"), Tensor):
        return outputs["logits"]
    if isinstance(outputs, tuple | list):
        for item in outputs:
            if isinstance(item, Tensor) and item.dim() > 0:
                return item
    return outputs


def model_loss_of(outputs: Any) -> Tensor | None:
    """The loss a model returned: ``.loss``, ``["loss"]``, a tuple's first item or a scalar."""
    if isinstance(outputs, Tensor):
        return outputs if outputs.dim() == 0 else None
    loss = getattr(outputs, "loss", None)
    if isinstance(loss, Tensor):
        return loss
    if isinstance(outputs, Mapping):
        loss = outputs.get("loss")
        return loss if isinstance(loss, Tensor) else None
    if isinstance(outputs, tuple | list) and outputs:
        first = outputs[0]
        if isinstance(first, Tensor) and first.dim() == 0:
            return first
    return None


def _unwrap(model: nn.Module) -> nn.Module:
    """The user's module inside DDP/FSDP (``.module``) or ``torch.compile`` (``_orig_mod``)."""
    for _ in range(4):
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            break
        model = inner
    return model


def _forward_keys(model: nn.Module) -> tuple[frozenset[str], bool] | None:
    """The named arguments of ``model.forward`` and whether it takes ``**kwargs``.

    Read once per forward function (it is asked for every batch, in the grid and
    Hessian-product loops).
    """
    inner = _unwrap(model)
    forward = inner.__dict__.get("forward") or getattr(type(inner), "forward", None)
    try:
        return _signature_keys(forward)
    except TypeError:  # not hashable: read it each time
        return _signature_keys.__wrapped__(forward)


@functools.lru_cache(maxsize=256)
def _signature_keys(forward: Any) -> tuple[frozenset[str], bool] | None:
    try:
        sig = inspect.signature(forward)
    except (TypeError, ValueError):
        return None
    params = list(sig.parameters.values())
    if params and params[0].name == "self":  # the function of the class, unbound
        params = params[1:]
    named = frozenset(p.name for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD)
    return named, any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params)


def _call_kwargs(model: nn.Module, batch: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``model(**kwargs)``'s arguments from a dict batch, and the tensors it cannot take.

    ``label``/``label_ids`` become ``labels`` when the forward names that and not them;
    values that are not tensors under keys the forward does not name are left out (a
    forward with ``**kwargs`` gets every tensor).
    """
    keys = _forward_keys(model)
    if keys is None:
        return dict(batch), []
    named, var_kw = keys
    kwargs: dict[str, Any] = {}
    unknown = []
    for key, value in batch.items():
        if key in named:
            kwargs[key] = value
        elif key in ("label", "label_ids") and "labels" in named and "labels" not in batch:
            kwargs["labels"] = value
        elif isinstance(value, Tensor):
            if var_kw:
                kwargs[key] = value
            else:
                unknown.append(key)
    return kwargs, sorted(unknown)


def shifts_labels(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model that predicts ``labels[..., 1:]``."""
    model = _unwrap(model)
    if getattr(model, "loss_type", None) == "ForCausalLM":
        return True
    name = type(model).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return True
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except Exception:  # transformers absent or reorganised
        return False
    return name in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Select the math kernel of ``scaled_dot_product_attention`` within this block.

    The fused (flash / memory-efficient) attention kernels have no double backward and no
    forward-mode derivative; the math kernel has both. Second-order computations
    (Hessian products, Gauss-Newton products) run their forward passes inside this block;
    nothing outside it changes.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # torch < 2.3
        yield
        return
    with sdpa_kernel([SDPBackend.MATH]):
        yield


def _scalar_loss(value: Any, what: str) -> Tensor:
    """``value`` if it is a one-element tensor (a batch's mean loss), else a clear error."""
    if isinstance(value, Tensor) and value.numel() == 1:
        return value
    got = (
        f"a tensor of shape {tuple(value.shape)}"
        if isinstance(value, Tensor)
        else (f"a {type(value).__name__}")
    )
    raise ValueError(
        f"Invalid {what}: it returned {got}; expected the batch's mean loss as a one-element "
        "tensor (a reduction='none' loss needs .mean(); a Python float has no gradient)"
    )


class BatchAdapter:
    """Reads a batch, runs the model on it and gives its mean loss and item count.

    Args:
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch *mean*. Default:
            cross-entropy for ``(inputs, targets)`` batches, the model's own loss for
            Hugging Face-style dict batches.
        forward: ``forward(model, inputs) -> outputs``; default ``model(inputs)`` (or
            ``model(**inputs)`` for a dict).
        compute_loss: ``compute_loss(model, batch)`` returning the batch's mean loss or
            ``(mean_loss, n_items)``; replaces everything else for any batch form.
        count_items: ``count_items(batch)``: the number of items the batch's loss
            averages (default: see the module docstring).
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (or labels) in dict batches.
    """

    def __init__(
        self,
        loss_fn: LossFn | None = None,
        *,
        forward: ForwardFn | None = None,
        compute_loss: ComputeLossFn | None = None,
        count_items: CountFn | None = None,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> None:
        for name, fn in (
            ("loss_fn", loss_fn),
            ("forward", forward),
            ("compute_loss", compute_loss),
            ("count_items", count_items),
        ):
            if fn is not None and not callable(fn):
                raise ValueError(f"Invalid {name}: a {type(fn).__name__}, expected a callable")
        if compute_loss is not None and (loss_fn is not None or forward is not None):
            raise ValueError(
                "Invalid arguments: compute_loss replaces loss_fn and forward; give one or the "
                "other"
            )
        self.loss_fn = loss_fn
        self.forward = forward
        self.compute_loss = compute_loss
        self.count_items = count_items
        self.input_key = input_key
        self.target_key = target_key

    @property
    def default_loss(self) -> bool:
        """Whether no loss was given (cross-entropy, or the model's own loss)."""
        return self.loss_fn is None and self.compute_loss is None

    # ------------------------------------------------------------------ reading
    def parts(self, batch: Any) -> BatchParts:
        """Split ``batch`` into its style, the model's inputs and the targets."""
        if self.compute_loss is not None:
            return BatchParts(CUSTOM, batch, None)
        if isinstance(batch, Mapping):
            if self.input_key is not None:
                if self.input_key not in batch:
                    raise ValueError(
                        f"Invalid batch: keys {sorted(batch)} lack input_key={self.input_key!r}"
                    )
                tk = self.target_key
                if tk is not None and tk not in batch:
                    raise ValueError(f"Invalid batch: keys {sorted(batch)} lack target_key={tk!r}")
                return BatchParts(PAIR, batch[self.input_key], batch[tk] if tk else None)
            for ik, tk in DICT_KEYS:
                if ik in batch and tk in batch:
                    return BatchParts(PAIR, batch[ik], batch[tk])
            label_keys = (self.target_key,) if self.target_key is not None else LABEL_KEYS
            label_key = next((k for k in label_keys if k in batch), None)
            if self.loss_fn is None:
                labels = batch[label_key] if label_key is not None else None
                return BatchParts(MODEL, batch, labels)
            if label_key is None:
                raise ValueError(
                    f"Invalid batch: dict with keys {sorted(batch)} has no labels for loss_fn "
                    f"(looked for {', '.join(label_keys)}); pass target_key="
                )
            rest = {k: v for k, v in batch.items() if k != label_key}
            return BatchParts(MODEL, rest, batch[label_key])
        if isinstance(batch, tuple | list) and len(batch) >= 2:
            return BatchParts(PAIR, batch[0], batch[1])
        raise ValueError(
            f"Invalid batch: a {type(batch).__name__}; expected (inputs, targets), a dict, "
            "or pass compute_loss=(model, batch) -> loss"
        )

    def size(self, batch: Any) -> int:
        """The number of samples in ``batch``."""
        parts = self.parts(batch)
        if parts.targets is not None:
            with contextlib.suppress(ValueError):
                return batch_size_of(parts.targets)
        return batch_size_of(parts.inputs)

    def _ignore_index(self, style: str) -> int | None:
        fn = self.loss_fn
        if fn is None:
            return _IGNORE_INDEX
        if isinstance(fn, nn.CrossEntropyLoss | nn.NLLLoss):
            return int(fn.ignore_index)
        if fn in _CE_FUNCTIONS:
            return _IGNORE_INDEX
        return None

    def count(self, model: nn.Module, batch: Any, parts: BatchParts | None = None) -> int | None:
        """The number of items the batch's mean loss is over; None: ask ``compute_loss``."""
        if self.count_items is not None:
            return int(self.count_items(batch))
        parts = self.parts(batch) if parts is None else parts
        if parts.style == CUSTOM:
            return None
        targets = parts.targets
        ignore = self._ignore_index(parts.style)
        if (
            ignore is None
            or not isinstance(targets, Tensor)
            or targets.is_floating_point()
            or targets.is_complex()
        ):
            return self.size(batch)
        if parts.style == MODEL and self.loss_fn is None and targets.dim() >= 2:
            if shifts_labels(model):
                targets = targets[..., 1:]
        return int((targets != ignore).sum())

    def check(self, model: nn.Module, parts: BatchParts) -> None:
        """Refuse, before any work, a dict batch with tensors the model's forward does not take.

        Other values under keys the forward does not take (strings, lists: a data set's
        ids or raw text left in the batch) are left out of the call, as the Hugging Face
        Trainer leaves out unused columns; ``label``/``label_ids`` are passed as ``labels``
        to a forward that takes ``labels`` (as Hugging Face's data collators rename them).
        """
        if parts.style == PAIR:
            self._check_pair(model, parts)
        if parts.style != MODEL or self.forward is not None:
            return
        _, unknown = _call_kwargs(model, parts.inputs)
        if unknown:
            raise ValueError(
                f"Invalid batch: dict with keys {sorted(parts.inputs)} but "
                f"{type(_unwrap(model)).__name__}.forward takes no {', '.join(unknown)}; pass "
                "input_key= and target_key=, forward= or compute_loss="
            )

    def _check_pair(self, model: nn.Module, parts: BatchParts) -> None:
        """Refuse int32 labels for the default cross-entropy.

        It fails deep inside torch otherwise (``expected scalar type Long``). Inputs of
        another floating dtype than the model's are not refused here (a model may cast
        them itself): :meth:`outputs` explains the error when the forward fails on them.
        """
        targets = parts.targets
        if (
            self.loss_fn is None
            and isinstance(targets, Tensor)
            and not targets.is_floating_point()
            and not targets.is_complex()
            and targets.dtype not in (torch.int64, torch.uint8)
        ):
            raise ValueError(
                f"Invalid batch: targets of {targets.dtype}; the default cross-entropy needs "
                "int64 class labels (targets.long() in the data), or pass loss_fn="
            )

    # ------------------------------------------------------------------ computing
    def outputs(self, model: nn.Module, parts: BatchParts) -> Any:
        """Run ``model`` on the batch's inputs."""
        if parts.style == CUSTOM:
            raise ValueError("Invalid call: compute_loss batches have no separate outputs")
        if self.forward is not None:
            return self.forward(model, parts.inputs)
        if isinstance(parts.inputs, Mapping):
            if parts.style != MODEL:
                return model(**parts.inputs)
            return model(**_call_kwargs(model, parts.inputs)[0])
        try:
            return model(parts.inputs)
        except RuntimeError as exc:
            hint = _dtype_mismatch(model, parts.inputs)
            if hint is None:
                raise
            raise ValueError(hint) from exc

    def loss_of(self, outputs: Any, parts: BatchParts) -> Tensor:
        """The batch's mean loss from the model's outputs."""
        if parts.style == MODEL and self.loss_fn is None:
            loss = model_loss_of(outputs)
            if loss is None:
                raise ValueError(
                    "Invalid batch: the model returned no loss for this dict batch (no .loss, "
                    "'loss' or leading scalar); give it labels, or pass loss_fn= or compute_loss="
                )
            return loss
        logits = logits_of(outputs)
        if self.loss_fn is None:
            if not isinstance(logits, Tensor):
                what = type(outputs).__name__
                if isinstance(outputs, Mapping):
                    what += f" with keys {sorted(map(str, outputs))}"
                raise ValueError(
                    f"Invalid model output: a {what}, no logits for the default cross-entropy "
                    "(return a tensor, a tuple starting with one, or a dict or ModelOutput "
                    "with 'logits'; or pass loss_fn= or compute_loss=)"
                )
            return F.cross_entropy(logits, parts.targets)
        return _scalar_loss(self.loss_fn(logits, parts.targets), "loss_fn")

    def loss(self, model: nn.Module, parts: BatchParts) -> Tensor:
        """The (differentiable) mean loss of one batch."""
        if parts.style == CUSTOM:
            assert self.compute_loss is not None
            res = self.compute_loss(model, parts.inputs)
            return _scalar_loss(res[0] if isinstance(res, tuple | list) else res, "compute_loss")
        return self.loss_of(self.outputs(model, parts), parts)

    def custom_count(self, model: nn.Module, parts: BatchParts) -> int | None:
        """``n_items`` as returned by ``compute_loss`` (None when it returns a bare loss)."""
        assert self.compute_loss is not None
        with torch.inference_mode():
            res = self.compute_loss(model, parts.inputs)
        if isinstance(res, tuple | list):
            if len(res) != 2:
                raise ValueError(
                    "Invalid compute_loss: it must return a loss or (loss, n_items), "
                    f"not a {len(res)}-tuple"
                )
            try:
                return int(res[1])
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(
                    f"Invalid compute_loss: its n_items is {res[1]!r}, not an integer"
                ) from None
        return None


def _dtype_mismatch(model: nn.Module, inputs: Any) -> str | None:
    """Why a forward failed, when its floating inputs are of another dtype than the model's.

    ``mat1 and mat2 must have the same dtype`` from deep inside torch becomes a sentence
    saying what to convert; None when the dtypes agree (the error is something else).
    """
    if not (isinstance(inputs, Tensor) and inputs.is_floating_point()):
        return None
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    if len(dtypes) != 1 or inputs.dtype in dtypes:
        return None
    (dtype,) = dtypes
    return (
        f"Invalid batch: inputs of {inputs.dtype} but the model's parameters are {dtype}; "
        f"convert one to the other (e.g. inputs.to({dtype}) in the data, or "
        f"model.to({inputs.dtype}))"
    )
