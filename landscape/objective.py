"""The evaluation core: a model, a loss and data, evaluated exactly and fast.

Every analysis in sharpscape (surface grid points, Hessian-vector products, sharpness
metrics, gradient alignment) asks the same three questions of a model at its current
weights: what is the loss (and accuracy) over the data, what is its gradient, and how do
I loop over the batches with the right weights. :class:`Objective` answers them once:

- data of any common form (a tensor pair, a ``Dataset``, a ``DataLoader``, an iterable of
  tuple or dict batches) is cached on the device once, under a memory cap, and streamed
  when it does not fit;
- batch results are combined with exact sample weights ``n_b / N`` (never an average of
  batch averages when the last batch is smaller);
- the model runs in ``eval()`` mode (BatchNorm uses its running statistics, dropout is
  off) and every module's mode is restored afterwards; ``.grad`` fields are never
  touched.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = ["Objective", "WeightedBatch", "eval_mode", "move_to_device"]

LossFn = Callable[[Any, Any], Tensor]
MetricFn = Callable[[Any, Any], Tensor | float]
ForwardFn = Callable[[nn.Module, Any], Any]

# Keys tried, in order, to find inputs and targets in dict batches.
_DICT_KEYS = (("inputs", "targets"), ("x", "y"), ("input", "target"), ("image", "label"))


@dataclass
class WeightedBatch:
    """One batch on the device, with its share ``weight = n_b / N`` of the whole data."""

    inputs: Any
    targets: Any
    weight: float
    size: int


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples, lists and dicts) to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, tuple | list):
        return sum(_nbytes(v) for v in obj)
    return 0


def _batch_size_of(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return int(obj.shape[0]) if obj.dim() > 0 else 1
    if isinstance(obj, Mapping):
        return _batch_size_of(next(iter(obj.values())))
    if isinstance(obj, tuple | list) and obj:
        return _batch_size_of(obj[0])
    raise ValueError(f"cannot tell the batch size of a {type(obj).__name__}")


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every module's own mode afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


class Objective:
    """A model, a loss function and data: loss, accuracy and gradients at the current weights.

    Args:
        model: the network. It is not moved: data goes to the device of its parameters
            (or to ``device``, which must then match the model's).
        data: a ``(inputs, targets)`` tensor pair, a ``Dataset``, a ``DataLoader`` or any
            re-iterable collection of batches. A batch is a tuple/list ``(inputs,
            targets)`` or a dict (see ``input_key``/``target_key``).
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch *mean*; default
            cross-entropy.
        device: where the data lives; default the model's device.
        batch_size: batch size used to split tensor pairs and ``Dataset``s.
        max_cache_bytes: data up to this size is cached on the device once; larger data is
            streamed from its source at every pass.
        max_samples: use only the first ``max_samples`` samples.
        accuracy: ``"auto"`` reports top-1 accuracy (percent) when outputs are ``(N, C)``
            logits and targets integer class labels; ``True`` requires it, ``False`` skips.
        metrics: extra ``name -> fn(outputs, targets)`` batch-mean metrics to evaluate.
        forward: ``forward(model, inputs) -> outputs``; default ``model(inputs)`` (or
            ``model(**inputs)`` when inputs are a dict).
        input_key: key of the inputs in dict batches (default: first of inputs/x/input/image
            present).
        target_key: key of the targets in dict batches.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any,
        loss_fn: LossFn | None = None,
        *,
        device: str | torch.device | None = None,
        batch_size: int = 256,
        max_cache_bytes: int = 2**30,
        max_samples: int | None = None,
        accuracy: bool | str = "auto",
        metrics: Mapping[str, MetricFn] | None = None,
        forward: ForwardFn | None = None,
        input_key: str | None = None,
        target_key: str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"Invalid max_samples: {max_samples}")
        if accuracy not in (True, False, "auto"):
            raise ValueError(f"Invalid accuracy: {accuracy!r} (expected True, False or 'auto')")
        self.model = model
        self.loss_fn: LossFn = loss_fn if loss_fn is not None else F.cross_entropy
        self.metrics = dict(metrics or {})
        for name in self.metrics:
            if name in ("loss", "acc"):
                raise ValueError(f"Invalid metrics: the name {name!r} is reserved")
        self.forward_fn = forward
        self.batch_size = batch_size
        self.max_cache_bytes = max_cache_bytes
        self.max_samples = max_samples
        self.accuracy = accuracy
        self.input_key = input_key
        self.target_key = target_key

        model_device = next((p.device for p in model.parameters()), torch.device("cpu"))
        self.device = torch.device(device) if device is not None else model_device
        if self.device.type != model_device.type or (
            self.device.index is not None
            and model_device.index is not None
            and self.device.index != model_device.index
        ):
            raise ValueError(
                f"Invalid device: {self.device} but the model is on {model_device}; "
                "move the model first (model.to(device))"
            )
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[Tensor] = [p for _, p in named]

        self._source = self._make_source(data)
        self._cache: list[tuple[Any, Any, int]] | None = None
        self.n_samples = 0
        self._prepare()

    # ------------------------------------------------------------------ data handling
    def _make_source(self, data: Any) -> Callable[[], Iterable[Any]]:
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            inputs, targets = data
            if inputs.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"Invalid data: {inputs.shape[0]} inputs but {targets.shape[0]} targets"
                )
            bs = self.batch_size

            def tensor_batches() -> Iterator[tuple[Tensor, Tensor]]:
                for i in range(0, inputs.shape[0], bs):
                    yield inputs[i : i + bs], targets[i : i + bs]

            return tensor_batches
        if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            loader = DataLoader(data, batch_size=self.batch_size, shuffle=False)
            return lambda: loader
        if isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
            if iter(data) is data:
                # A one-shot iterator: materialise it once (it cannot be re-read).
                batches = list(data)
                return lambda: batches
            return lambda: data
        raise ValueError(
            f"Invalid data: a {type(data).__name__}; expected a (inputs, targets) tensor pair, "
            "a Dataset, a DataLoader or an iterable of batches"
        )

    def _split(self, batch: Any) -> tuple[Any, Any]:
        if isinstance(batch, Mapping):
            if self.input_key is not None or self.target_key is not None:
                if self.input_key not in batch or self.target_key not in batch:
                    raise ValueError(
                        f"Invalid batch: keys {sorted(batch)} lack input_key={self.input_key!r}"
                        f" or target_key={self.target_key!r}"
                    )
                return batch[self.input_key], batch[self.target_key]
            for ik, tk in _DICT_KEYS:
                if ik in batch and tk in batch:
                    return batch[ik], batch[tk]
            raise ValueError(
                f"Invalid batch: dict with keys {sorted(batch)}; pass input_key= and target_key="
            )
        if isinstance(batch, tuple | list) and len(batch) >= 2:
            return batch[0], batch[1]
        raise ValueError(
            f"Invalid batch: a {type(batch).__name__}; expected (inputs, targets) or a dict"
        )

    def _raw_batches(self) -> Iterator[tuple[Any, Any, int]]:
        """Yield ``(inputs, targets, n)`` on the device, honouring ``max_samples``."""
        seen = 0
        for batch in self._source():
            inputs, targets = self._split(batch)
            n = _batch_size_of(targets)
            if self.max_samples is not None and seen + n > self.max_samples:
                keep = self.max_samples - seen
                inputs = _take(inputs, keep)
                targets = _take(targets, keep)
                n = keep
            if n > 0:
                yield move_to_device(inputs, self.device), move_to_device(targets, self.device), n
            seen += n
            if self.max_samples is not None and seen >= self.max_samples:
                break

    def _prepare(self) -> None:
        cache: list[tuple[Any, Any, int]] = []
        total_bytes = 0
        n = 0
        streaming = False
        for inputs, targets, size in self._raw_batches():
            n += size
            if not streaming:
                total_bytes += _nbytes(inputs) + _nbytes(targets)
                if total_bytes > self.max_cache_bytes:
                    streaming = True
                    cache.clear()
                else:
                    cache.append((inputs, targets, size))
        if n == 0:
            raise ValueError("Invalid data: it holds no samples")
        self.n_samples = n
        self._cache = None if streaming else cache

    @property
    def cached(self) -> bool:
        """Whether the data is held on the device (else it is streamed at every pass)."""
        return self._cache is not None

    def batches(self) -> Iterator[WeightedBatch]:
        """Yield the batches on the device with their exact weights ``n_b / N``."""
        source = self._cache if self._cache is not None else self._raw_batches()
        for inputs, targets, size in source:
            yield WeightedBatch(inputs, targets, size / self.n_samples, size)

    # ------------------------------------------------------------------ computation
    def eval_mode(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Context manager: the model in eval mode, every module's mode restored after."""
        return eval_mode(self.model)

    def outputs(self, inputs: Any) -> Any:
        """Run the model on a batch of inputs."""
        if self.forward_fn is not None:
            return self.forward_fn(self.model, inputs)
        if isinstance(inputs, Mapping):
            return self.model(**inputs)
        return self.model(inputs)

    def batch_loss(self, batch: WeightedBatch) -> Tensor:
        """The (differentiable) mean loss of one batch; call inside :meth:`eval_mode`."""
        return self.loss_fn(self.outputs(batch.inputs), batch.targets)

    def loss(self, create_graph: bool = False) -> Tensor:
        """The exactly weighted mean loss over all the data, differentiable.

        For gradients prefer :meth:`gradient`, which keeps one batch's graph at a time.
        """
        with self.eval_mode(), torch.set_grad_enabled(True):
            total: Tensor | None = None
            for batch in self.batches():
                term = self.batch_loss(batch) * batch.weight
                total = term if total is None else total + term
        assert total is not None
        return total

    def gradient(
        self, params: Sequence[Tensor] | None = None, *, create_graph: bool = False
    ) -> list[Tensor]:
        """``∇L`` over all the data with exact weights; every ``.grad`` is left untouched.

        Parameters the loss does not depend on get zero gradients.
        """
        params = list(self.params if params is None else params)
        grads = [torch.zeros_like(p) for p in params]
        with self.eval_mode(), torch.enable_grad():
            for batch in self.batches():
                loss = self.batch_loss(batch) * batch.weight
                parts = torch.autograd.grad(
                    loss, params, allow_unused=True, create_graph=create_graph
                )
                for g, part in zip(grads, parts, strict=True):
                    if part is not None:
                        g.add_(part.detach() if not create_graph else part)
        return grads

    def loss_and_gradient(
        self, params: Sequence[Tensor] | None = None
    ) -> tuple[float, list[Tensor]]:
        """The weighted mean loss and its gradient in one pass over the data."""
        params = list(self.params if params is None else params)
        grads = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        with self.eval_mode(), torch.enable_grad():
            for batch in self.batches():
                loss = self.batch_loss(batch)
                total += loss.detach().double() * batch.weight
                parts = torch.autograd.grad(loss * batch.weight, params, allow_unused=True)
                for g, part in zip(grads, parts, strict=True):
                    if part is not None:
                        g.add_(part)
        return float(total), grads

    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy (percent, when it applies) and user metrics over all the data.

        Runs under ``torch.inference_mode()`` in eval mode. A non-finite loss is returned
        as NaN, never raised.
        """
        sums: dict[str, Tensor] = {}
        with self.eval_mode(), torch.inference_mode():
            for batch in self.batches():
                self.accumulate(sums, self.outputs(batch.inputs), batch)
        return self.finalize(sums)

    def accumulate(self, sums: dict[str, Tensor], outputs: Any, batch: WeightedBatch) -> None:
        """Add one batch's weighted loss, accuracy and metrics (from its outputs) to ``sums``.

        The running sums stay device tensors (no synchronisation per batch); turn them
        into numbers with :meth:`finalize`. Shared by every evaluation loop (one model,
        or several grid points batched with ``vmap``).
        """
        values = {"loss": self.loss_fn(outputs, batch.targets)}
        if self._wants_accuracy(outputs, batch.targets):
            correct = (outputs.argmax(dim=-1) == batch.targets).sum()
            values["acc"] = correct.double() * (100.0 / batch.size)
        for name, fn in self.metrics.items():
            values[name] = torch.as_tensor(fn(outputs, batch.targets), device=self.device)
        for name, v in values.items():
            term = v.detach().double() * batch.weight
            sums[name] = sums[name] + term if name in sums else term

    @staticmethod
    def finalize(sums: dict[str, Tensor]) -> dict[str, float]:
        """Turn :meth:`accumulate`'s sums into floats, non-finite values into NaN."""
        result = {name: float(v) for name, v in sums.items()}
        return {k: (v if math.isfinite(v) else math.nan) for k, v in result.items()}

    def _wants_accuracy(self, outputs: Any, targets: Any) -> bool:
        if self.accuracy is False:
            return False
        ok = (
            isinstance(outputs, Tensor)
            and isinstance(targets, Tensor)
            and outputs.dim() == 2
            and targets.dim() == 1
            and not targets.is_floating_point()
            and outputs.shape[0] == targets.shape[0]
        )
        if self.accuracy is True and not ok:
            raise ValueError(
                "Invalid accuracy=True: outputs must be (N, C) logits and targets (N,) labels"
            )
        return ok


def _take(obj: Any, n: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[:n]
    if isinstance(obj, Mapping):
        return {k: _take(v, n) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return type(obj)(_take(v, n) for v in obj)
    return obj
