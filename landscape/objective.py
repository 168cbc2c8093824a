"""The evaluation core: a model, a loss and data, evaluated exactly and fast.

Every analysis in sharpscape (surface grid points, Hessian-vector products, sharpness
metrics, gradient alignment) asks the same three questions of a model at its current
weights: what is the loss (and accuracy) over the data, what is its gradient, and how do
I loop over the batches with the right weights. :class:`Objective` answers them once:

- data of any common form (a tensor pair, a ``Dataset``, a ``DataLoader``, an iterable of
  tuple or dict batches, Hugging Face batches) is cached on the device once, under a
  memory cap, and streamed when it does not fit;
- every batch goes through one :class:`~landscape.batches.BatchAdapter` (``(inputs,
  targets)``, dicts, models that compute their own loss, a user ``compute_loss``);
- the loss of the data is the mean over its counted items (samples, or tokens not
  ignored), exact over batches of any size: batch ``b`` weighs ``n_b / Σ n``;
- batches are read in a fixed order: a ``DataLoader`` that shuffles is read in dataset
  order (same batch size, collate function and workers), so a fixed seed gives the same
  numbers on every call;
- the parameters analysed are those with ``requires_grad=True``, or a selection by name
  (:func:`landscape.params.select_parameters`);
- the model runs in ``eval()`` mode (BatchNorm uses its running statistics, dropout is
  off) and every module's mode is restored afterwards; ``.grad`` fields are never
  touched;
- under ``torchrun`` (``dist=``, a :class:`~landscape.distributed.DistContext`) each
  process reads its share of the batches (round-robin by batch index, or the data it was
  given with ``sharded=True``) while the weights stay those of the *whole* data (sample
  and item totals are summed over the processes once); every sum over batches is then a
  partial sum, and :meth:`gradient`, :meth:`loss_and_gradient` and :meth:`evaluate`
  return the exact total on every process (one all-reduce each). Estimators that sum
  over :meth:`batches` themselves finish with :meth:`all_reduce`.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from landscape._compile import CompiledForward, CompileSpec, parse_compile
from landscape._tree import rebuild
from landscape.batches import (
    BatchAdapter,
    BatchParts,
    ComputeLossFn,
    CountFn,
    ForwardFn,
    LossFn,
    logits_of,
)
from landscape.distributed import DistContext, all_gather_object, all_reduce
from landscape.params import ParamSelection, as_selection, select_parameters

__all__ = [
    "OBJECTIVE_OPTIONS",
    "Objective",
    "WeightedBatch",
    "eval_mode",
    "make_objective",
    "move_to_device",
]

MetricFn = Callable[[Any, Any], Tensor | float]

# The keyword arguments that describe how a batch becomes a loss, shared by every entry
# point that builds an Objective (compute_surface, compute_metrics, HessianOperator, ...).
OBJECTIVE_OPTIONS = (
    "forward",
    "compute_loss",
    "count_items",
    "input_key",
    "target_key",
    "params",
)


@dataclass
class WeightedBatch:
    """One batch on the device with its share of the whole data.

    Attributes:
        data: the batch as given (moved to the device).
        parts: the adapter's reading of it (style, inputs, targets).
        weight: ``n_items / N_items``: its share of the loss of the data.
        size: the number of samples.
        count: the number of items its mean loss is over.
        sample_weight: ``size / N_samples``: its share of per-sample means (accuracy).
        start: the index of its first sample in the whole data (in reading order; with
            ``sharded=True`` data, process 0's samples first, then process 1's, ...).
    """

    data: Any
    parts: BatchParts
    weight: float
    size: int
    count: int
    sample_weight: float
    start: int = 0

    @property
    def inputs(self) -> Any:
        """What the model is called with."""
        return self.parts.inputs

    @property
    def targets(self) -> Any:
        """The targets (labels), or None."""
        return self.parts.targets


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move tensors (also inside tuples, named tuples, lists and dicts) to ``device``."""
    if isinstance(obj, Tensor):
        return obj.to(device, non_blocking=True)
    if isinstance(obj, Mapping):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return rebuild(obj, (move_to_device(v, device) for v in obj))
    return obj


def _nbytes(obj: Any) -> int:
    if isinstance(obj, Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, Mapping):
        return sum(_nbytes(v) for v in obj.values())
    if isinstance(obj, tuple | list):
        return sum(_nbytes(v) for v in obj)
    return 0


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


_REORDERED = (RandomSampler, DistributedSampler)  # samplers read again in dataset order


def ordered_loader(loader: DataLoader) -> DataLoader:
    """``loader`` read in dataset order when its sampler shuffles, else ``loader`` itself.

    The new loader keeps the batch size, collate function, workers, pinning and
    ``drop_last``; only the order changes, so every pass sees the same batches. A
    ``DistributedSampler`` (a DDP training loader) is read whole, in order, too: the
    analyses measure the whole data set, and share it out between processes themselves.
    """
    sampler = loader.sampler
    batch_sampler = loader.batch_sampler
    common = {
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "worker_init_fn": loader.worker_init_fn,
        "timeout": loader.timeout,
    }
    if loader.batch_size is not None and isinstance(sampler, _REORDERED):
        return DataLoader(
            loader.dataset,
            batch_size=loader.batch_size,
            shuffle=False,
            drop_last=loader.drop_last,
            **common,
        )
    if (
        loader.batch_size is None
        and type(batch_sampler) is BatchSampler
        and isinstance(batch_sampler.sampler, _REORDERED)
    ):
        ordered = BatchSampler(
            SequentialSampler(loader.dataset),
            batch_size=batch_sampler.batch_size,
            drop_last=batch_sampler.drop_last,
        )
        return DataLoader(loader.dataset, batch_sampler=ordered, **common)
    return loader


class Objective:
    """A model, a loss and data: loss, accuracy and gradients at the current weights.

    Args:
        model: the network. It is not moved: data goes to the device of its parameters
            (or to ``device``, which must then match the model's).
        data: a ``(inputs, targets)`` tensor pair, a ``Dataset``, a ``DataLoader`` or any
            re-iterable collection of batches: tuples ``(inputs, targets)``, dicts
            (Hugging Face batches included) or anything ``compute_loss`` reads.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch *mean*; default
            cross-entropy, or the model's own loss for dict batches it computes a loss
            for (see :class:`~landscape.batches.BatchAdapter`).
        device: where the data lives; default the model's device.
        batch_size: batch size used to split tensor pairs and ``Dataset``s.
        max_cache_bytes: data up to this size is cached on the device once; larger data is
            streamed from its source at every pass.
        max_samples: use only the first ``max_samples`` samples.
        accuracy: ``"auto"`` reports top-1 accuracy (percent) when outputs (or their
            ``logits``) are ``(N, C)`` and targets ``(N,)`` integer class labels; ``True``
            requires it, ``False`` skips.
        metrics: extra ``name -> fn(outputs, targets)`` per-sample-mean metrics.
        forward: ``forward(model, inputs) -> outputs``; default ``model(inputs)`` (or
            ``model(**inputs)`` when inputs are a dict).
        compute_loss: ``compute_loss(model, batch)`` returning the batch's mean loss or
            ``(mean_loss, n_items)``, for batches no other rule reads.
        count_items: ``count_items(batch)``: the number of items a batch's loss averages.
        input_key: key of the inputs in dict batches (default: first of inputs/x/input/image
            present).
        target_key: key of the targets in dict batches.
        params: the parameters analysed: None (those with ``requires_grad=True``) or a
            selection by name, prefix or glob (:func:`~landscape.params.select_parameters`).
        dist: a :class:`~landscape.distributed.DistContext` (e.g. from
            :func:`~landscape.distributed.init_distributed` under ``torchrun``): every
            process of the job builds the objective on the same data and reads every
            ``world_size``-th batch; the weights are those of the whole data. Default:
            this process reads all the data (also under ``torchrun``).
        sharded: with ``dist``: ``data`` is already this process's share (no round-robin;
            ``max_samples`` is then refused); the totals are still summed over processes.
        compile: compile the model's forward for :meth:`evaluate` (losses, accuracy and
            metrics at given weights; gradients stay eager): ``False`` (default), ``True``
            (compiled at the first evaluation), ``"auto"`` (compiled when the passes to
            come pay for the compile time; see :meth:`prepare_compile`) or a
            :class:`~landscape._compile.CompileSpec` (backend, mode). Values equal eager
            ones to float rounding; batches of another shape than the first (the last,
            smaller one) run eager, so nothing recompiles. :attr:`compile_report` says
            what was decided and what it cost.
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
        compute_loss: ComputeLossFn | None = None,
        count_items: CountFn | None = None,
        input_key: str | None = None,
        target_key: str | None = None,
        params: ParamSelection = None,
        dist: DistContext | None = None,
        sharded: bool = False,
        compile: bool | str | CompileSpec = False,
    ) -> None:
        params = as_selection(params)  # a generator is read once (derive() reads it again)
        if not isinstance(model, nn.Module):
            raise ValueError(f"Invalid model: a {type(model).__name__}, expected a nn.Module")
        if batch_size < 1:
            raise ValueError(f"Invalid batch_size: {batch_size}")
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"Invalid max_samples: {max_samples}")
        if accuracy not in (True, False, "auto"):
            raise ValueError(f"Invalid accuracy: {accuracy!r} (expected True, False or 'auto')")
        if dist is not None and not isinstance(dist, DistContext):
            raise ValueError(f"Invalid dist: a {type(dist).__name__}, expected a DistContext")
        if sharded and max_samples is not None:
            raise ValueError("Invalid max_samples: not with sharded=True (each process's share)")
        self.dist = dist if dist is not None else DistContext()
        self.sharded = bool(sharded)
        self.model = model
        self.adapter = BatchAdapter(
            loss_fn,
            forward=forward,
            compute_loss=compute_loss,
            count_items=count_items,
            input_key=input_key,
            target_key=target_key,
        )
        self.metrics = dict(metrics or {})
        for name in self.metrics:
            if name in ("loss", "acc"):
                raise ValueError(f"Invalid metrics: the name {name!r} is reserved")
        self.batch_size = batch_size
        self.max_cache_bytes = max_cache_bytes
        self.max_samples = max_samples
        self.accuracy = accuracy
        self.param_selection = params
        self.compile_spec = parse_compile(compile)
        self._compiled = CompiledForward(model, self.compile_spec)

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
        if params is None:  # no error here for a frozen model: only gradients need some
            named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        else:
            named = select_parameters(model, params)
        self.param_names: list[str] = [n for n, _ in named]
        self.params: list[Tensor] = [p for _, p in named]

        self._data = data
        self._one_shot = False  # an iterator, read once (set by _make_source)
        self._source = self._make_source(data)
        self._cache: list[WeightedBatch] | None = None
        self._counts: list[int] = []
        self._custom_counts: bool | None = None  # does compute_loss return (loss, n)?
        self._offset = 0  # samples of the processes before this one (sharded=True)
        self.n_samples = 0
        self.n_items = 0
        self._prepare()

    # The adapter's settings, readable as before.
    @property
    def loss_fn(self) -> LossFn | None:
        """The ``loss_fn`` given (None: the default rule of the adapter)."""
        return self.adapter.loss_fn

    @property
    def forward_fn(self) -> ForwardFn | None:
        """The ``forward`` given, or None."""
        return self.adapter.forward

    @property
    def input_key(self) -> str | None:
        """The ``input_key`` given, or None."""
        return self.adapter.input_key

    @property
    def target_key(self) -> str | None:
        """The ``target_key`` given, or None."""
        return self.adapter.target_key

    @property
    def output_loss_fn(self) -> LossFn:
        """``loss(outputs, targets)``: the batch-mean loss as a function of the outputs.

        Estimators that differentiate the loss in the model's outputs (Gauss-Newton) need
        it; a model that computes its own loss, or ``compute_loss``, does not expose one.
        """
        a = self.adapter
        if a.compute_loss is not None:
            raise ValueError("Invalid objective: compute_loss hides the loss of the outputs")
        if a.loss_fn is not None:
            fn = a.loss_fn
            return lambda outputs, targets: fn(logits_of(outputs), targets)
        if self._styles != {"pair"}:
            raise ValueError(
                "Invalid objective: the model computes its own loss; pass loss_fn= "
                "(e.g. torch.nn.functional.cross_entropy) to use the loss of the outputs"
            )
        return lambda outputs, targets: F.cross_entropy(logits_of(outputs), targets)

    def options(self) -> dict[str, Any]:
        """The keyword arguments that rebuild this objective's reading of batches."""
        a = self.adapter
        return {
            "loss_fn": a.loss_fn,
            "forward": a.forward,
            "compute_loss": a.compute_loss,
            "count_items": a.count_items,
            "input_key": a.input_key,
            "target_key": a.target_key,
            "params": self.param_names,
        }

    @property
    def distributed(self) -> bool:
        """Whether several processes share the data (each holds part of the batches)."""
        return self.dist.distributed

    def all_reduce(self, tensors: Sequence[Tensor], op: str = "sum") -> list[Tensor]:
        """Per-process partial sums over :meth:`batches` made whole: summed over processes.

        Every process must call it (a process without batches passes zeros). Without
        ``dist`` it returns (detached copies of) ``tensors``.

        Args:
            tensors: this process's partial sums.
            op: ``"sum"``, or ``"max"`` for a maximum over processes.
        """
        return all_reduce(tensors, self.dist, op)

    def all_reduce_float(self, value: float) -> float:
        """A float partial sum (computed in float64) summed over the processes."""
        if not self.distributed:
            return float(value)
        return float(self.all_reduce([torch.tensor(value, dtype=torch.float64)])[0])

    def derive(
        self, data: Any = None, *, model: nn.Module | None = None, **overrides: Any
    ) -> Objective:
        """An objective reading batches the same way, on other data and/or another model.

        Args:
            data: the new data (default: this objective's batches, as cached or streamed).
            model: the new model (default this one); parameters are selected by the same
                names.
            **overrides: other :class:`Objective` arguments (``accuracy``, ``batch_size``...).

        The new objective shares this one's ``dist``. Without ``data`` it reads this
        process's batches (``sharded=True``); new ``data`` is shared round-robin unless
        ``sharded=True`` says it is this process's share already.
        """
        kw: dict[str, Any] = {
            **self.options(),
            "device": self.device,
            "batch_size": self.batch_size,
            "max_cache_bytes": self.max_cache_bytes,
            "accuracy": self.accuracy,
            "metrics": self.metrics,
            "dist": self.dist,
            "compile": self.compile_spec,
        }
        if data is None and self.cached:
            data = [b.data for b in self.batches()]
            kw["max_cache_bytes"] = 2**62
            kw["sharded"] = True
        elif data is None:
            data, kw["max_samples"], kw["sharded"] = self._data, self.max_samples, self.sharded
        kw.update(overrides)
        return Objective(self.model if model is None else model, data, **kw)

    # ------------------------------------------------------------------ data handling
    def _make_source(self, data: Any) -> Callable[[], Iterable[Any]]:
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            inputs, targets = data
            if inputs.dim() == 0 or targets.dim() == 0:
                raise ValueError(
                    f"Invalid data: a pair of tensors of shapes {tuple(inputs.shape)} and "
                    f"{tuple(targets.shape)}; both need a leading batch dimension (one sample: "
                    "x[None], y[None], or x[:1], y[:1])"
                )
            if inputs.shape[0] != targets.shape[0]:
                raise ValueError(
                    f"Invalid data: {inputs.shape[0]} inputs but {targets.shape[0]} targets"
                )
            bs = self.batch_size

            def tensor_batches() -> Iterator[tuple[Tensor, Tensor]]:
                for i in range(0, inputs.shape[0], bs):
                    yield inputs[i : i + bs], targets[i : i + bs]

            return tensor_batches
        if isinstance(data, DataLoader):
            loader = ordered_loader(data)
            return lambda: loader
        if isinstance(data, Dataset) and not isinstance(data, torch.utils.data.IterableDataset):
            loader = DataLoader(data, batch_size=self.batch_size, shuffle=False)
            return lambda: loader
        if isinstance(data, Iterable) and not isinstance(data, str | bytes | Mapping):
            if iter(data) is data:
                # A one-shot iterator: materialise it once (it cannot be re-read).
                batches = list(data)
                self._one_shot = True
                return lambda: batches
            return lambda: data
        raise ValueError(
            f"Invalid data: a {type(data).__name__}; expected a (inputs, targets) tensor pair, "
            "a Dataset, a DataLoader or an iterable of batches"
        )

    def _raw_batches(self) -> Iterator[tuple[Any, BatchParts, int, int]]:
        """Yield ``(batch, parts, n_samples, start)`` on the device, honouring ``max_samples``.

        Under ``dist`` (not ``sharded``) only this process's batches (round-robin by batch
        index) are yielded; the others are read for their sizes only.
        """
        seen = 0
        adapter = self.adapter
        ctx = self.dist
        pick = ctx.distributed and not self.sharded
        for i, batch in enumerate(self._source()):
            n = adapter.size(batch)
            if self.max_samples is not None and seen + n > self.max_samples:
                n = self.max_samples - seen
                batch = _take(batch, n)
            if n > 0 and (not pick or i % ctx.world_size == ctx.rank):
                batch = move_to_device(batch, self.device)
                yield batch, adapter.parts(batch), n, seen
            seen += n
            if self.max_samples is not None and seen >= self.max_samples:
                break

    def _count(self, batch: Any, parts: BatchParts, size: int) -> int:
        count = self.adapter.count(self.model, batch, parts)
        if count is None:  # compute_loss: ask it once per batch, or the samples
            if self._custom_counts is None:
                with self.eval_mode():
                    found = self.adapter.custom_count(self.model, parts)
                self._custom_counts = found is not None
                count = found if found is not None else size
            elif self._custom_counts:
                with self.eval_mode():
                    count = self.adapter.custom_count(self.model, parts)
            else:
                count = size
        if count is None or count < 0:
            raise ValueError(f"Invalid count_items: {count!r} for a batch of {size} samples")
        return int(count)

    def _prepare(self) -> None:
        cache: list[tuple[Any, BatchParts, int, int, int]] = []
        counts: list[int] = []
        total_bytes = 0
        n = 0
        streaming = False
        styles = set()
        for batch, parts, size, start in self._raw_batches():
            if not counts:
                self.adapter.check(self.model, parts)
            styles.add(parts.style)
            count = self._count(batch, parts, size)
            counts.append(count)
            n += size
            if not streaming:
                total_bytes += _nbytes(batch)
                if total_bytes > self.max_cache_bytes:
                    streaming = True
                    cache.clear()
                else:
                    cache.append((batch, parts, size, count, start))
        n_items = sum(counts)
        if self.distributed:  # the totals of the whole data, once
            mine = (n, n_items, sorted(styles), self._custom_counts)
            every = all_gather_object(mine, self.dist)
            if self.sharded:
                self._offset = sum(e[0] for e in every[: self.dist.rank])
            n, n_items = sum(e[0] for e in every), sum(e[1] for e in every)
            styles = {s for e in every for s in e[2]}
            if self._custom_counts is None:
                self._custom_counts = next((e[3] for e in every if e[3] is not None), None)
        if n == 0:
            if self._one_shot:
                raise ValueError(
                    "Invalid data: the iterator holds no batches (an iterator or generator "
                    "is read once, and this one is used up or empty; pass a list of batches "
                    "or a DataLoader to measure it more than once)"
                )
            raise ValueError("Invalid data: it holds no samples")
        if n_items == 0:
            raise ValueError(
                "Invalid data: no counted item (every target is the ignore index -100?)"
            )
        self.n_samples = n
        self.n_items = n_items
        self._styles = styles
        self._counts = counts
        self._cache = None if streaming else [self._weighted(*c) for c in cache if c[3] > 0]

    def _weighted(
        self, batch: Any, parts: BatchParts, size: int, count: int, start: int
    ) -> WeightedBatch:
        return WeightedBatch(
            batch,
            parts,
            count / self.n_items,
            size,
            count,
            size / self.n_samples,
            start + self._offset,
        )

    @property
    def cached(self) -> bool:
        """Whether the data is held on the device (else it is streamed at every pass)."""
        return self._cache is not None

    def batches(self) -> Iterator[WeightedBatch]:
        """Yield the batches on the device with their exact weights (see the module doc).

        Batches without counted items are left out. Under ``dist``: this process's share
        only (the weights are those of the whole data).
        """
        if self._cache is not None:
            yield from self._cache
            return
        for i, (batch, parts, size, start) in enumerate(self._raw_batches()):
            count = self._counts[i] if i < len(self._counts) else self._count(batch, parts, size)
            if count > 0:
                yield self._weighted(batch, parts, size, count, start)

    # ------------------------------------------------------------------ computation
    def eval_mode(self) -> contextlib.AbstractContextManager[nn.Module]:
        """Context manager: the model in eval mode, every module's mode restored after."""
        return eval_mode(self.model)

    def outputs(self, inputs: Any) -> Any:
        """Run the model on a batch's inputs (``batch.inputs``)."""
        if self.adapter.compute_loss is not None:
            raise ValueError("Invalid call: with compute_loss the model's outputs are not used")
        style = "model" if isinstance(inputs, Mapping) else "pair"
        return self.adapter.outputs(self.model, BatchParts(style, inputs, None))

    def batch_outputs(self, batch: WeightedBatch, model: nn.Module | None = None) -> Any:
        """Run the model (or ``model``, e.g. a functional wrapper) on one batch."""
        return self.adapter.outputs(self.model if model is None else model, batch.parts)

    def batch_loss(self, batch: WeightedBatch, model: nn.Module | None = None) -> Tensor:
        """The (differentiable) mean loss of one batch; call inside :meth:`eval_mode`."""
        return self.adapter.loss(self.model if model is None else model, batch.parts)

    def loss(self, create_graph: bool = False) -> Tensor:
        """The exactly weighted mean loss over all the data, differentiable.

        For gradients prefer :meth:`gradient`, which keeps one batch's graph at a time.
        Not available under ``dist`` (the graph would span processes).
        """
        if self.distributed:
            raise ValueError(
                "Invalid call: loss() is not available when processes share the data "
                "(dist=); use gradient(), loss_and_gradient() or evaluate()"
            )
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

        Parameters the loss does not depend on get zero gradients. Under ``dist`` the
        gradient is summed over the processes (``create_graph`` is then refused).
        """
        if create_graph and self.distributed:
            raise ValueError("Invalid create_graph: not when processes share the data (dist=)")
        params = self.require_params(params)
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
        return self.all_reduce(grads) if self.distributed else grads

    def require_params(self, params: Sequence[Tensor] | None = None) -> list[Tensor]:
        """``params`` (default the objective's) as a list; ``ValueError`` when empty.

        A model whose parameters are all frozen can be evaluated, but it has no gradient.
        """
        params = list(self.params if params is None else params)
        if not params:
            raise ValueError(
                "Invalid params: no parameter requiring grad (every parameter of the model "
                "is frozen); gradients, curvature and sharpness need some: set "
                "requires_grad=True or select parameters with params="
            )
        return params

    def loss_and_gradient(
        self, params: Sequence[Tensor] | None = None
    ) -> tuple[float, list[Tensor]]:
        """The weighted mean loss and its gradient in one pass over the data."""
        params = self.require_params(params)
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
        if self.distributed:
            total, *grads = self.all_reduce([total, *grads])
        return float(total), grads

    def evaluate(self) -> dict[str, float]:
        """Loss, accuracy (percent, when it applies) and user metrics over all the data.

        Runs under ``torch.inference_mode()`` in eval mode, with the compiled forward when
        ``compile`` asks for it. A non-finite loss is returned as NaN, never raised.
        """
        sums: dict[str, Tensor] = {}
        compiled = self._compiled
        if compiled.spec.when == "on":
            self.prepare_compile()
        start = time.perf_counter()
        with self.eval_mode(), torch.inference_mode():
            for batch in self.batches():
                model = compiled.module_for(batch.inputs)
                if self.adapter.compute_loss is not None:
                    loss = self.batch_loss(batch, model)
                    self.accumulate(sums, None, batch, loss=loss)
                else:
                    self.accumulate(sums, self.batch_outputs(batch, model), batch)
        if not compiled.decided:  # "auto" without a plan: compile once it has paid
            if compiled.count_eager(time.perf_counter() - start):
                self.prepare_compile()
        return self.finalize(self.reduce_sums(sums))

    @property
    def compile_report(self) -> dict[str, Any]:
        """What ``compile`` decided and cost: ``compiled``, ``compile_seconds``, timings."""
        return dict(self._compiled.report)

    def prepare_compile(self, passes: int | None = None) -> dict[str, Any]:
        """Decide whether to compile (``compile="auto"``) and compile now, once.

        The first batch is run eager (timed) and, when compiling, compiled (the compile
        time) and run compiled again (timed). ``"auto"`` compiles when ``passes × batches ×
        (eager batch time) × 0.25`` (the saving expected) exceeds the estimated compile
        time, or with ``passes=None`` when the eager evaluations already run would have
        paid for it; it keeps eager when the compiled batch is not faster. A no-op when
        ``compile`` is off or already decided.

        Args:
            passes: the :meth:`evaluate` calls still to come (None: unknown).

        Returns:
            :attr:`compile_report`.
        """
        compiled = self._compiled
        if compiled.decided:
            return self.compile_report
        batch = next(iter(self.batches()), None)
        if batch is None:  # a process without batches
            compiled.decided = True
            return self.compile_report

        def run(model: nn.Module) -> Any:
            if self.adapter.compute_loss is not None:
                return self.batch_loss(batch, model)
            return self.batch_outputs(batch, model)

        with self.eval_mode(), torch.inference_mode():
            compiled.plan(run, batch.inputs, passes, max(len(self._counts), 1))
        return self.compile_report

    def reduce_sums(self, sums: dict[str, Tensor]) -> dict[str, Tensor]:
        """:meth:`accumulate`'s per-process sums summed over the processes (one all-reduce).

        A name counts when some process has it (a process without batches has none).
        """
        if not self.distributed:
            return sums
        names = ["loss", "acc", *self.metrics]
        zero = torch.zeros((), dtype=torch.float64, device=self.device)
        values = [sums[k].double().reshape(()) if k in sums else zero for k in names]
        present = [zero + (k in sums) for k in names]
        total = self.all_reduce([torch.stack(values + present)])[0]
        return {k: total[i] for i, k in enumerate(names) if total[len(names) + i] > 0}

    def accumulate(
        self,
        sums: dict[str, Tensor],
        outputs: Any,
        batch: WeightedBatch,
        *,
        loss: Tensor | None = None,
    ) -> None:
        """Add one batch's weighted loss, accuracy and metrics (from its outputs) to ``sums``.

        The running sums stay device tensors (no synchronisation per batch); turn them
        into numbers with :meth:`finalize`. Shared by every evaluation loop (one model,
        or several grid points batched with ``vmap``). ``loss`` replaces the loss of the
        outputs when given (``compute_loss`` objectives have no outputs).
        """
        if loss is None:
            loss = self.adapter.loss_of(outputs, batch.parts)
        sums_add(sums, "loss", loss.detach().double() * batch.weight)
        if outputs is None:
            return
        logits, targets = logits_of(outputs), batch.targets
        if self._wants_accuracy(logits, targets):
            correct = (logits.argmax(dim=-1) == targets).sum()
            sums_add(sums, "acc", correct.double() * (100.0 / self.n_samples))
        for name, fn in self.metrics.items():
            v = torch.as_tensor(fn(outputs, targets), device=self.device)
            sums_add(sums, name, v.detach().double() * batch.sample_weight)

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


def sums_add(sums: dict[str, Tensor], name: str, term: Tensor) -> None:
    """``sums[name] += term`` (a new entry when absent)."""
    sums[name] = sums[name] + term if name in sums else term


def make_objective(
    model: nn.Module | Objective,
    data: Any,
    loss_fn: LossFn | None = None,
    *,
    what: str = "data",
    **kwargs: Any,
) -> Objective:
    """An :class:`Objective` from a model and data, or the objective given, checked.

    Every entry point that takes ``model, data`` (or a ready objective) calls this, so the
    same keyword arguments (:data:`OBJECTIVE_OPTIONS`, ``batch_size``, ``max_samples``,
    ``device``) mean the same everywhere. With an objective, ``data``, ``loss_fn`` and the
    batch options must be left unset (they belong to the objective).
    """
    given = {k: v for k, v in kwargs.items() if v is not None and k != "batch_size"}
    if isinstance(model, Objective):
        if data is not None or loss_fn is not None or given.keys() - {"device"}:
            names = sorted({*given.keys() - {"device"}, *(["data"] if data is not None else [])})
            names += ["loss_fn"] if loss_fn is not None else []
            raise ValueError(
                f"Invalid arguments: {', '.join(names)} belong to the Objective; do not pass "
                "them beside an Objective"
            )
        return model
    if data is None:
        raise ValueError(f"Invalid {what}: None (a model needs data to be measured)")
    return Objective(model, data, loss_fn, **{k: v for k, v in kwargs.items() if v is not None})


def _take(obj: Any, n: int) -> Any:
    if isinstance(obj, Tensor):
        return obj[:n]
    if isinstance(obj, Mapping):
        return {k: _take(v, n) for k, v in obj.items()}
    if isinstance(obj, tuple | list):
        return rebuild(obj, (_take(v, n) for v in obj))
    return obj
