"""Loss surfaces: evaluate ``L(θ* + αδ + βη)`` on a grid, fast, resumable, distributed.

:func:`compute_surface` is the one grid loop. Each point is set afresh from the saved θ*
with grouped foreach operations (``θ ← θ*``, ``θ += αδ``, ``θ += βη``: no drift however
many points), evaluated with :class:`landscape.objective.Objective` (data cached on the
device once, exact sample weights, eval mode, ``inference_mode``), and written to HDF5
(:mod:`landscape.store`) a chunk at a time. Under ``torchrun`` the points are shared
round-robin between ranks and rank 0 alone writes the file. The user's model is left
exactly as given (weights, buffers and train/eval modes).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map

from landscape._compile import CompileSpec, parse_compile
from landscape._io import check_output
from landscape.directions import Directions, custom_directions, direction_targets, random_directions
from landscape.distributed import (
    DistContext,
    all_gather_object,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    joined,
    shard,
)
from landscape.objective import Objective, make_objective
from landscape.params import ParamSelection, as_selection
from landscape.store import (
    Surface,
    SurfaceWriter,
    directions_sha256,
    open_surface_file,
    read_surface,
)
from landscape.user import UserCheckpoint, UserModel
from optimizers._foreach import tl_add_, tl_clone, tl_copy_

__all__ = [
    "EVALUATION_MODES",
    "SPLITS",
    "GridSpec",
    "compute_surface",
    "parse_grid",
    "surface_from_checkpoint",
]

log = logging.getLogger(__name__)

EVALUATION_MODES = ("loop", "vmap", "auto")


# --------------------------------------------------------------------------- grid specs
@dataclass(frozen=True)
class GridSpec:
    """An evenly spaced grid ``numpy.linspace(start, stop, num)``, written ``start:stop:num``."""

    start: float
    stop: float
    num: int

    def values(self) -> np.ndarray:
        """The grid coordinates (float64)."""
        return np.linspace(self.start, self.stop, self.num, dtype=np.float64)

    def __str__(self) -> str:
        return f"{self.start:g}:{self.stop:g}:{self.num}"


def parse_grid(spec: str | GridSpec, *, name: str = "grid") -> GridSpec:
    """Parse ``"start:stop:num"`` (e.g. ``"-1:1:51"``) into a :class:`GridSpec`.

    Raises:
        ValueError: for anything else (the message names ``name`` and the bad spec).
    """
    if isinstance(spec, GridSpec):
        return spec
    parts = str(spec).strip().split(":")
    if len(parts) != 3:
        raise ValueError(f"Invalid {name}: {spec!r} (expected start:stop:num, e.g. -1:1:51)")
    try:
        start, stop = float(parts[0]), float(parts[1])
        num = int(parts[2])
    except ValueError:
        raise ValueError(
            f"Invalid {name}: {spec!r} (start and stop must be numbers, num an integer)"
        ) from None
    if not (math.isfinite(start) and math.isfinite(stop)):
        raise ValueError(f"Invalid {name}: {spec!r} (start and stop must be finite)")
    if num < 1:
        raise ValueError(f"Invalid {name}: {spec!r} (num must be at least 1)")
    if num > 1 and start == stop:
        raise ValueError(f"Invalid {name}: {spec!r} (start equals stop with {num} points)")
    return GridSpec(start, stop, num)


def _coords(grid: Any, name: str) -> tuple[np.ndarray, str]:
    if isinstance(grid, str | GridSpec):
        g = parse_grid(grid, name=name)
        return g.values(), str(g)
    arr = np.asarray(grid, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.isfinite(arr).all():
        raise ValueError(f"Invalid {name}: coordinates must be finite and non-empty")
    return arr, "[" + ",".join(f"{v:g}" for v in arr) + "]"


# --------------------------------------------------------------------------- evaluation
class _Evaluator:
    """Sets grid points on the model and evaluates them (loop or vmap)."""

    def __init__(
        self,
        model: nn.Module,
        targets: list[Tensor],
        names: list[str],
        origin: list[Tensor],
        dx: list[Tensor],
        dy: list[Tensor] | None,
        objectives: Mapping[str, Objective],
    ) -> None:
        self.model = model
        self.targets = targets
        self.names = names
        self.origin = origin
        self.dx = dx
        self.dy = dy
        self.objectives = objectives

    @torch.no_grad()
    def set_point(self, a: float, b: float) -> None:
        """θ ← θ* + a δ + b η, computed afresh from θ*."""
        tl_copy_(self.targets, self.origin)
        if a != 0.0:
            tl_add_(self.targets, self.dx, a)
        if b != 0.0 and self.dy is not None:
            tl_add_(self.targets, self.dy, b)

    def prepare_compile(self, points: int) -> dict[str, Any] | None:
        """Compile (or, ``compile="auto"``, decide) each split's forward for ``points`` points.

        Returns what was decided, per split (None when ``compile`` is off).
        """
        reports = {}
        for split, obj in self.objectives.items():
            if obj.compile_spec.enabled:
                reports[split] = obj.prepare_compile(points)
        return reports or None

    def loop(self, points: Sequence[tuple[float, float]]) -> list[dict[str, float]]:
        out = []
        for a, b in points:
            self.set_point(a, b)
            res: dict[str, float] = {}
            for split, obj in self.objectives.items():
                res.update({f"{split}_{k}": v for k, v in obj.evaluate().items()})
            out.append(res)
        return out

    def vmap(self, points: Sequence[tuple[float, float]]) -> list[dict[str, float]]:
        """Evaluate several points in one batched forward (``torch.func`` + ``vmap``)."""
        from torch.func import functional_call, vmap

        stacked = {}
        for i, name in enumerate(self.names):
            rows = []
            for a, b in points:
                t = self.origin[i]
                if a != 0.0:
                    t = torch.add(t, self.dx[i], alpha=a)
                if b != 0.0 and self.dy is not None:
                    t = torch.add(t, self.dy[i], alpha=b)
                rows.append(t)
            stacked[f"inner.{name}"] = torch.stack(rows)
        k = len(points)
        out: list[dict[str, float]] = [{} for _ in range(k)]
        for split, obj in self.objectives.items():
            sums: list[dict[str, Tensor]] = [{} for _ in range(k)]
            custom = obj.adapter.compute_loss is not None
            call = _BatchCall(self.model, obj)
            with obj.eval_mode(), torch.inference_mode():
                for batch in obj.batches():

                    def fwd(
                        params: dict[str, Tensor], batch: Any = batch, call: nn.Module = call
                    ) -> Any:
                        return functional_call(call, params, (batch,), strict=False)

                    outs = vmap(fwd)(stacked)
                    for j in range(k):
                        one = tree_map(lambda t, j=j: t[j] if isinstance(t, Tensor) else t, outs)
                        if custom:
                            obj.accumulate(sums[j], None, batch, loss=one)
                        else:
                            obj.accumulate(sums[j], one, batch)
            for j in range(k):
                for mname, f in obj.finalize(sums[j]).items():
                    out[j][f"{split}_{mname}"] = f
        return out


class _BatchCall(nn.Module):
    """``forward(batch)``: the model's outputs on a batch (the loss with ``compute_loss``).

    The model is its ``inner`` submodule, so ``functional_call`` can swap its weights for
    a stack of grid points under ``vmap``; the batch is read by the objective's adapter
    (dict inputs, Hugging Face batches, a user ``compute_loss``).
    """

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.inner = model
        self._objective = objective

    def forward(self, batch: Any) -> Any:
        if self._objective.adapter.compute_loss is not None:
            return self._objective.batch_loss(batch, self.inner)
        outputs = self._objective.batch_outputs(batch, self.inner)
        # vmap returns tensors only: other leaves (a key-value cache...) become None
        return tree_map(lambda t: t if isinstance(t, Tensor) else None, outputs)


def _tensor_sha256(tensors: Sequence[Tensor]) -> str:
    return directions_sha256(tensors)


def _data_sha256(objective: Objective) -> str:
    """Content hash of the data evaluated, whatever the batch size.

    Each tensor of a batch (by its position among the batch's tensors) is hashed along
    the data: every batch when the data is cached, else the first sample only (streamed
    data is not read twice). Non-tensor leaves (strings, a user's batch object) do not
    count. So a rerun on other data of the same size is refused, one with another batch
    size is not.
    """
    from torch.utils._pytree import tree_leaves

    hashers: list[Any] = []
    batches = objective.batches()
    try:
        for wb in batches:
            tensors = [t for t in tree_leaves(wb.data) if isinstance(t, Tensor)]
            if not objective.cached:
                tensors = [t[:1] if t.dim() else t for t in tensors]
            for i, t in enumerate(tensors):
                if i == len(hashers):
                    hashers.append(hashlib.sha256(f"{t.dtype}{tuple(t.shape[1:])}".encode()))
                arr = t.detach().cpu().contiguous().reshape(-1)
                hashers[i].update(arr.view(torch.uint8).numpy().tobytes())
            if not objective.cached:
                break
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()
    return hashlib.sha256("".join(h.hexdigest() for h in hashers).encode()).hexdigest()


# --------------------------------------------------------------------------- main loop
def compute_surface(
    model: nn.Module | Objective,
    data: Any = None,
    *,
    x: str | GridSpec | Sequence[float] | np.ndarray,
    y: str | GridSpec | Sequence[float] | np.ndarray | None = None,
    directions: Directions
    | Sequence[Tensor]
    | tuple[Sequence[Tensor], Sequence[Tensor]]
    | None = None,
    test_data: Any = None,
    loss_fn: Callable[[Any, Any], Tensor] | None = None,
    metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    compute_loss: Callable[[nn.Module, Any], Any] | None = None,
    count_items: Callable[[Any], Any] | None = None,
    input_key: str | None = None,
    target_key: str | None = None,
    params: ParamSelection = None,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    states: bool = False,
    orthogonalize: bool = False,
    seed: int = 0,
    out: str | Path | None = None,
    overwrite: bool = False,
    batch_size: int = 256,
    max_samples: int | None = None,
    max_cache_bytes: int = 2**30,
    device: str | torch.device | None = None,
    evaluation: str = "loop",
    points_per_batch: int = 4,
    flush_seconds: float = 1.0,
    progress: bool | None = None,
    attrs: Mapping[str, Any] | None = None,
    dist: DistContext | None = None,
    compile: bool | str | CompileSpec = False,
) -> Surface:
    """Evaluate the loss (and accuracy, metrics, test split) on a 1-D or 2-D grid.

    Point ``(α, β)`` is ``θ* + α δ + β η`` with θ* the model's current weights (or the
    ``origin`` of ``directions``). Values are returned as a :class:`~landscape.store.Surface`
    and, with ``out``, written to HDF5 as they are computed; rerunning with the same
    arguments resumes an interrupted file.

    Args:
        model: any ``nn.Module``; it is moved nowhere (data goes to its device) and is
            left exactly as given. Or a ready :class:`~landscape.objective.Objective`
            (its model, data and reading of batches; ``data`` and the batch options are
            then left unset, and ``test_data`` is read the same way).
        data: evaluation data for the ``train_*`` fields (any form :class:`Objective`
            takes: tensor pair, Dataset, DataLoader, iterable of tuple/dict batches,
            Hugging Face batches); None to evaluate ``test_data`` only.
        x: grid along δ: ``"start:stop:num"``, a :class:`GridSpec` or coordinates.
        y: grid along η for a 2-D surface (None: 1-D).
        directions: a :class:`Directions`, a tensor list (δ), or a pair (δ, η) aligned with
            ``list(model.parameters())``; None draws random ones (``norm``, ``ignore``,
            ``states``, ``orthogonalize``, ``seed``).
        test_data: optional data for the ``test_*`` fields.
        loss_fn: ``loss_fn(outputs, targets)`` returning the batch mean (default
            cross-entropy, or the model's own loss for Hugging Face-style dict batches).
        metrics: extra ``name -> fn(outputs, targets)`` batch-mean metrics.
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``, or
            ``model(**inputs)`` for a dict).
        compute_loss: ``compute_loss(model, batch)`` returning the batch's mean loss or
            ``(mean_loss, n_items)``, for batches no other rule reads.
        count_items: ``count_items(batch)``: the number of items a batch's loss averages
            (default: tokens not ignored, or samples).
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (labels) in dict batches.
        params: the parameters that move (random and custom directions): those with
            ``requires_grad=True`` (default; a frozen backbone stays put) or a selection
            by name, prefix or glob (:func:`~landscape.params.select_parameters`).
        norm: normalisation of random directions (``filter``, ``layer``, ``model``, ``none``).
        ignore: ``"biasbn"`` zeroes random directions of tensors with ``dim ≤ 1``.
        states: random directions also move BatchNorm running statistics.
        orthogonalize: make the random η orthogonal to δ.
        seed: seed of the random directions.
        out: HDF5 file to write (and resume: grid, directions, θ*, data content, splits
            and metrics must agree; not the batch size, nor ``loss_fn``, ``forward``...).
        overwrite: replace an existing ``out`` from a different computation.
        batch_size: evaluation batch size.
        max_samples: use only the first samples of each split.
        max_cache_bytes: data up to this size is cached on the device, else streamed.
        device: where the data lives (default: the model's device).
        evaluation: ``"loop"`` (one point at a time), ``"vmap"`` (``points_per_batch``
            points per batched forward with ``torch.func``) or ``"auto"`` (times both on
            the first points and keeps the faster).
        points_per_batch: points per vmap call, and per gather round under torchrun.
        flush_seconds: results are written to disk at least this often (and at the end).
        progress: show a tqdm bar (None: only on a terminal).
        attrs: extra metadata stored in the file (checkpoint path and hash, data spec…).
        dist: a :class:`~landscape.distributed.DistContext`; default from ``torchrun``'s
            environment (a single process otherwise).
        compile: compile the forward with ``torch.compile`` (loop evaluation): ``False``,
            ``True``, ``"auto"`` (only when the points pay for the compile time) or a
            :class:`~landscape._compile.CompileSpec`; the decision is stored in the
            attribute ``compile``. With an :class:`Objective`, pass it to the Objective.

    Returns:
        The surface (on every rank).
    """
    args = dict(locals())  # this call's arguments by name, grouped by the specs below
    _check_call(model, evaluation, points_per_batch)
    compile_spec = _compile_spec(compile, evaluation, model)
    reading, loading = _BatchReading.of(args), _Loading.of(args)
    base, model, params = _objective_argument(model, data, test_data, reading, params)
    grid = _grid(x, y)
    directions = _resolve_directions(model, directions, grid, _RandomSpec.of(args), params)
    placed = _Placed.on(model, directions, grid)
    with joined(dist, device) as ctx:
        objectives = _objectives(model, base, data, test_data, reading, loading, compile_spec)
        file_kw = _file_header(grid, placed, objectives, loading, evaluation, attrs, out)
        run = _SurfaceRun(grid, file_kw, _Output.of(args), ctx)  # checks (resumes) the file
        ev = placed.evaluator(model, objectives)
        with placed.restored(), run:
            _prepare_compile(ev, run)
            _run_points(run, ev, evaluation, points_per_batch, ctx)
        return run.finish()


# --------------------------------------------------------------------------- stages
_S = TypeVar("_S", bound="_Spec")


class _Spec:
    """A group of :func:`compute_surface`'s arguments: a frozen dataclass, fields by name."""

    @classmethod
    def of(cls: type[_S], args: Mapping[str, Any]) -> _S:
        """The group's values from a call's arguments by name."""
        return cls(**{f.name: args[f.name] for f in fields(cls)})  # type: ignore[arg-type]

    def kwargs(self) -> dict[str, Any]:
        """The fields as keyword arguments (values as given, not copied)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]


@dataclass(frozen=True)
class _BatchReading(_Spec):
    """How batches are read (the batch options of :class:`Objective`)."""

    loss_fn: Callable[[Any, Any], Tensor] | None
    forward: Callable[[nn.Module, Any], Any] | None
    compute_loss: Callable[[nn.Module, Any], Any] | None
    count_items: Callable[[Any], Any] | None
    input_key: str | None
    target_key: str | None


@dataclass(frozen=True)
class _Loading(_Spec):
    """Where and how much of the data is evaluated, and the extra metrics."""

    device: str | torch.device | None
    batch_size: int
    max_samples: int | None
    max_cache_bytes: int
    metrics: Mapping[str, Callable[[Any, Any], Any]] | None


@dataclass(frozen=True)
class _RandomSpec(_Spec):
    """How random directions are drawn (:func:`random_directions`)."""

    norm: str
    ignore: str | None
    states: bool
    orthogonalize: bool
    seed: int


@dataclass(frozen=True)
class _Output(_Spec):
    """Where results go: the file, how often it is written, the progress bar."""

    out: str | Path | None
    overwrite: bool
    flush_seconds: float
    progress: bool | None


@dataclass(frozen=True, eq=False)
class _Grid:
    """The grid's coordinates (``ys`` None for a line) and their text for the file."""

    xs: np.ndarray
    xspec: str
    ys: np.ndarray | None
    yspec: str | None

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return 1 if self.ys is None else 2

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of the value arrays: ``(nx,)`` or ``(ny, nx)``."""
        return (len(self.xs),) if self.ys is None else (len(self.ys), len(self.xs))

    def coords(self, flat: int) -> tuple[float, float]:
        """``(α, β)`` of the point at flat index ``flat`` (β is 0 on a line)."""
        if self.ys is None:
            return float(self.xs[flat]), 0.0
        iy, ix = divmod(flat, len(self.xs))
        return float(self.xs[ix]), float(self.ys[iy])


def _check_evaluation(evaluation: str, points_per_batch: int) -> None:
    """Refuse an unknown evaluation mode or fewer than one point per batch."""
    if evaluation not in EVALUATION_MODES:
        raise ValueError(f"Invalid evaluation: {evaluation!r}; expected one of {EVALUATION_MODES}")
    if points_per_batch < 1:
        raise ValueError(f"Invalid points_per_batch: {points_per_batch}")


def _check_call(model: Any, evaluation: str, points_per_batch: int | None) -> None:
    """Refuse, before any work, a model that is not a module and an unknown evaluation."""
    if not isinstance(model, nn.Module | Objective):
        raise ValueError(
            f"Invalid model: a {type(model).__name__}; expected a torch.nn.Module or an Objective"
        )
    _check_evaluation(evaluation, points_per_batch)


def _objective_argument(
    model: nn.Module | Objective,
    data: Any,
    test_data: Any,
    reading: _BatchReading,
    params: ParamSelection,
) -> tuple[Objective | None, nn.Module, ParamSelection]:
    """A given :class:`Objective` (checked), and the model and parameters it moves."""
    if isinstance(model, Objective):
        base = make_objective(model, data, **reading.kwargs(), params=params)
        if base.distributed:
            raise ValueError(
                "Invalid objective: its processes share the data (dist=), but surfaces share "
                "the grid points among processes; pass an Objective without dist"
            )
        return base, base.model, base.param_selection
    if data is None and test_data is None:
        raise ValueError("Invalid data: give data, test_data or both")
    return None, model, as_selection(params)


def _grid(x: Any, y: Any) -> _Grid:
    """The grid of ``x`` and (for a plane) ``y``, checked."""
    xs, xspec = _coords(x, "x")
    ys, yspec = (None, None) if y is None else _coords(y, "y")
    return _Grid(xs, xspec, ys, yspec)


def _resolve_directions(
    model: nn.Module,
    directions: Directions | Sequence[Any] | None,
    grid: _Grid,
    randoms: _RandomSpec,
    params: ParamSelection,
) -> Directions:
    """The directions given (tensor lists made a :class:`Directions`), or random ones."""
    if directions is None:
        directions = random_directions(model, ndim=grid.ndim, **randoms.kwargs(), params=params)
    elif not isinstance(directions, Directions):
        seq = list(directions)
        if len(seq) == 2 and all(isinstance(d, list | tuple) for d in seq):
            directions = custom_directions(model, seq[0], seq[1], params=params)
        else:
            directions = custom_directions(model, seq, params=params)
    if grid.ys is not None and directions.y is None:
        raise ValueError("Invalid directions: a 2-D grid (y given) needs two directions")
    if grid.ys is None and directions.y is not None:
        log.info("1-D grid: the second direction is not used")
    return directions


@dataclass
class _Placed:
    """The tensors the directions move, their saved values, and δ, η, θ* placed like them."""

    directions: Directions
    names: list[str]
    targets: list[Tensor]
    dx: list[Tensor]
    dy: list[Tensor] | None
    origin: list[Tensor]
    saved: list[Tensor]
    n_own: int  # the directions' own tensors come first; then ``fixed`` buffers

    @classmethod
    def on(cls, model: nn.Module, directions: Directions, grid: _Grid) -> _Placed:
        """Match ``directions`` to ``model``'s tensors and move them to their devices.

        Buffers ``directions.fixed`` are appended with zero directions: set at the origin,
        held on the whole plane, restored at the end like the rest.
        """
        names, targets = direction_targets(model, directions.states)
        if names != list(directions.names):
            raise ValueError("Invalid directions: they do not match the model's parameters")
        n_own = len(names)
        fixed = {k: v for k, v in (directions.fixed or {}).items() if k not in names}
        buffers = dict(model.named_buffers())
        missing = [k for k in fixed if k not in buffers]
        if missing:
            raise ValueError(f"Invalid directions: the model has no buffer {missing[0]!r}")
        names, targets = names + list(fixed), targets + [buffers[k] for k in fixed]

        def place(ts: Sequence[Tensor], like: Sequence[Tensor]) -> list[Tensor]:
            return [
                d.detach().to(device=t.device, dtype=t.dtype) for d, t in zip(ts, like, strict=True)
            ]

        own, extra = targets[:n_own], targets[n_own:]
        zeros = [torch.zeros_like(t) for t in extra]
        dx = place(directions.x, own) + zeros
        two_d = grid.ys is not None and directions.y is not None
        dy = place(directions.y, own) + zeros if two_d else None  # type: ignore[arg-type]
        saved = tl_clone(targets)
        start = place(directions.origin, own) if directions.origin is not None else saved[:n_own]
        origin = start + place(list(fixed.values()), extra)
        return cls(directions, names, targets, dx, dy, origin, saved, n_own)

    def evaluator(self, model: nn.Module, objectives: Mapping[str, Objective]) -> _Evaluator:
        """An evaluator of grid points around the origin."""
        return _Evaluator(
            model, self.targets, self.names, self.origin, self.dx, self.dy, objectives
        )

    @contextlib.contextmanager
    def restored(self) -> Iterator[None]:
        """Give the model its own weights back at the end (θ ← the saved θ*)."""
        try:
            yield
        finally:
            with torch.no_grad():
                tl_copy_(self.targets, self.saved)


def _compile_spec(compile: Any, evaluation: str, model: Any) -> CompileSpec:
    """The ``compile`` option, checked (the compiled forward serves the loop)."""
    spec = parse_compile(compile)
    if spec.enabled and evaluation == "vmap":
        raise ValueError("Invalid compile: the compiled forward serves evaluation='loop'")
    if spec.enabled and isinstance(model, Objective):
        raise ValueError("Invalid compile: pass compile= to the Objective")
    return spec


def _prepare_compile(ev: _Evaluator, run: _SurfaceRun) -> None:
    """Compile (or decide to) for this rank's points; a new file records the decision."""
    if run.mine:
        compiled = ev.prepare_compile(len(run.mine))
        if compiled is not None:
            run.file_kw["attrs"]["compile"] = compiled  # the file is created with the results


def _objectives(
    model: nn.Module,
    base: Objective | None,
    data: Any,
    test_data: Any,
    reading: _BatchReading,
    loading: _Loading,
    compile_spec: CompileSpec,
) -> dict[str, Objective]:
    """The objective of each split (``train``: ``data``, ``test``: ``test_data``)."""
    okw = loading.kwargs()
    if compile_spec.enabled:
        okw["compile"] = compile_spec
    objectives: dict[str, Objective] = {}
    if base is not None:
        objectives["train"] = base
        if test_data is not None:
            objectives["test"] = base.derive(test_data, **okw)
    else:
        if data is not None:
            objectives["train"] = Objective(model, data, **okw, **reading.kwargs())
        if test_data is not None:
            objectives["test"] = Objective(model, test_data, **okw, **reading.kwargs())
    return objectives


def _file_header(
    grid: _Grid,
    placed: _Placed,
    objectives: Mapping[str, Objective],
    loading: _Loading,
    evaluation: str,
    attrs: Mapping[str, Any] | None,
    out: str | Path | None,
) -> dict[str, Any]:
    """What the file holds besides the values: the identity resuming compares, metadata.

    The data's content hash is taken only for a file (``out``): resuming compares it.
    """
    from landscape._version import __version__

    directions, names, n = placed.directions, placed.names[: placed.n_own], placed.n_own
    dx, dy = placed.dx[:n], None if placed.dy is None else placed.dy[:n]
    identity = {
        "origin_sha256": _tensor_sha256(placed.origin),
        "directions_sha256": directions.sha256()
        if dy is not None
        else directions_sha256(dx, [*names, "ndim=1"]),
        "n_samples": {s: o.n_samples for s, o in objectives.items()},
        "data_sha256": {s: _data_sha256(o) for s, o in objectives.items()} if out else None,
        "states": bool(directions.states),
        "splits": list(objectives),
        "metrics": sorted(loading.metrics or {}),
    }
    if attrs and "checkpoint_sha256" in attrs:
        identity["checkpoint_sha256"] = attrs["checkpoint_sha256"]
    meta = {
        **{k: v for k, v in directions.attrs.items()},
        "grid_x": grid.xspec,
        "grid_y": grid.yspec,
        "ndim": grid.ndim,
        "n_samples": {s: o.n_samples for s, o in objectives.items()},
        "batch_size": loading.batch_size,
        "max_samples": loading.max_samples,
        "package_version": __version__,
        "evaluation": evaluation,
        "param_names": names,
        **dict(attrs or {}),
    }
    return {
        "x": grid.xs,
        "y": grid.ys,
        "identity": identity,
        "attrs": meta,
        "x_direction": dx,
        "y_direction": dy,
        "names": names,
        "trajectory": directions.trajectory,
    }


def _open_existing(
    output: _Output, file_kw: Mapping[str, Any], shape: tuple[int, ...], ctx: DistContext
) -> tuple[SurfaceWriter | None, np.ndarray]:
    """Rank 0 checks (and resumes) an existing file; every rank learns the points done."""
    writer: SurfaceWriter | None = None
    err = None
    done = np.zeros(shape, dtype=bool)
    out = output.out
    if ctx.is_main and out is not None:
        try:
            check_output(out, what="out")  # a folder, a read-only place: before any work
            if Path(out).exists() and not output.overwrite:
                writer = open_surface_file(out, fields=None, **file_kw)
                done = writer.done.copy()
        except (ValueError, OSError) as exc:
            err = exc
    if ctx.distributed:
        err_msg = broadcast_object(None if err is None else str(err), ctx)
        if err is None and err_msg is not None:
            err = ValueError(err_msg)
        done = broadcast_object(done, ctx)
    if err is not None:
        raise err if isinstance(err, ValueError) else ValueError(str(err))
    return writer, done


_Items = list[tuple[int, dict[str, float]]]  # (flat index, results) of evaluated points


class _SurfaceRun:
    """The results of one run: in memory, on the progress bar and (rank 0) in the file.

    An existing file is checked (and resumed) on opening, before any work; a new one is
    created when the first results arrive (their keys are its fields). As a context
    manager it writes what is buffered and closes the file on the way out, so the finished
    points of an interrupted run are kept.
    """

    def __init__(
        self, grid: _Grid, file_kw: Mapping[str, Any], output: _Output, ctx: DistContext
    ) -> None:
        """Open (resume) the file; the points still to do, this rank's share of them."""
        from tqdm.auto import tqdm

        self.grid, self.file_kw, self.output, self.ctx = grid, file_kw, output, ctx
        self.writer, done = _open_existing(output, file_kw, grid.shape, ctx)
        self.fields: list[str] = list(self.writer.fields) if self.writer is not None else []
        self.values: dict[str, np.ndarray] = {}
        self.pending = [int(i) for i in np.flatnonzero(~done.ravel())]
        self.mine = shard(self.pending, ctx)
        self.nonfinite = 0
        if not ctx.is_main or output.progress is False:
            disable: bool | None = True
        else:
            disable = None if output.progress is None else False
        self.bar = tqdm(
            total=done.size,
            initial=int(done.sum()),
            unit="pt",
            desc="surface",
            disable=disable,
            smoothing=0.1,
        )
        self.buffer: _Items = []
        self.last_flush = time.perf_counter()

    def record(self, items: _Items) -> None:
        """Keep the results of evaluated points (every rank's, under torchrun)."""
        shape = self.grid.shape
        if items and not self.fields:
            self.fields.extend(items[0][1])
        for flat, res in items:
            idx = np.unravel_index(flat, shape)
            for f in self.fields:
                if f not in self.values:
                    self.values[f] = np.full(shape, np.nan)
                self.values[f][idx] = res.get(f, math.nan)
            if not math.isfinite(res.get(self.fields[0], math.nan)):
                self.nonfinite += 1
        self.buffer.extend(items)
        self.bar.update(len(items))

    def flush(self, force: bool = False) -> None:
        """Write the buffered results when ``flush_seconds`` have passed (or ``force``)."""
        out = self.output.out
        if self.writer is None and self.buffer and out is not None and self.ctx.is_main:
            self.writer = open_surface_file(out, fields=self.fields, overwrite=True, **self.file_kw)
        if (
            self.writer is not None
            and self.buffer
            and (force or time.perf_counter() - self.last_flush >= self.output.flush_seconds)
        ):
            self.writer.write([i for i, _ in self.buffer], [r for _, r in self.buffer])
            self.buffer.clear()
            self.last_flush = time.perf_counter()
        elif self.writer is None:
            self.buffer.clear()

    def __enter__(self) -> _SurfaceRun:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()
        if self.writer is not None:
            if self.buffer:  # finished points of an interrupted run are kept
                self.writer.write([i for i, _ in self.buffer], [r for _, r in self.buffer])
            self.writer.close()

    def finish(self) -> Surface:
        """Warn about non-finite points; the surface (read back from the file), every rank."""
        if self.nonfinite:
            log.warning(
                "%d of %d grid points gave a non-finite loss (stored as NaN)",
                self.nonfinite,
                len(self.pending),
            )
        surface: Surface | None = None
        if self.ctx.is_main:
            if self.output.out is not None:
                surface = read_surface(self.output.out)
            else:
                surface = Surface(
                    x=self.grid.xs,
                    y=self.grid.ys,
                    values=self.values,
                    done=np.ones(self.grid.shape, dtype=bool),
                    attrs=self.file_kw["attrs"],
                    trajectory=self.file_kw["trajectory"],
                )
        if self.ctx.distributed:
            surface = broadcast_object(surface, self.ctx)
        assert surface is not None
        return surface


def _gathered(items: _Items, ctx: DistContext) -> _Items:
    """Every rank's items, in rank order."""
    return [it for part in all_gather_object(items, ctx) for it in part]


def _run_points(
    run: _SurfaceRun, ev: _Evaluator, mode: str, points_per_batch: int, ctx: DistContext
) -> None:
    """Evaluate this rank's points (``auto`` first times both modes) and record them.

    Under torchrun every rank runs the same number of rounds and all record every result.
    """

    def evaluate(batch_idx: list[int], how: str) -> _Items:
        pts = [run.grid.coords(i) for i in batch_idx]
        res = ev.vmap(pts) if how == "vmap" else ev.loop(pts)
        return list(zip(batch_idx, res, strict=True))

    mine = run.mine
    pos = 0
    if mode == "auto":
        mode, pos, items = _choose_mode(mine, evaluate, points_per_batch, ctx)
        run.record(_gathered(items, ctx))
        run.flush()
    if ctx.distributed:
        left = max(all_gather_object(len(mine) - pos, ctx))
        rounds = math.ceil(left / points_per_batch)
        for r in range(rounds):
            chunk = mine[pos + r * points_per_batch : pos + (r + 1) * points_per_batch]
            items = evaluate(chunk, mode) if chunk else []
            run.record(_gathered(items, ctx))
            run.flush()
    else:
        step = points_per_batch if mode == "vmap" else 1
        while pos < len(mine):
            run.record(evaluate(mine[pos : pos + step], mode))
            pos += step
            run.flush()
    run.flush(force=True)


def _choose_mode(
    mine: list[int],
    run: Callable[[list[int], str], list[tuple[int, dict[str, float]]]],
    k: int,
    ctx: DistContext,
) -> tuple[str, int, list[tuple[int, dict[str, float]]]]:
    """Time the loop and vmap on the first real points.

    Returns the faster mode, the number of points used and their results.
    """
    pos = 0
    timing = {}
    done: list[tuple[int, dict[str, float]]] = []
    for how in ("loop", "vmap"):
        chunk = mine[pos : pos + k]
        if not chunk:
            break
        start = time.perf_counter()
        try:
            items = run(chunk, how)
        except Exception as exc:  # vmap may not support every model
            log.info("vmap evaluation unavailable for this model (%s); using the loop", exc)
            timing[how] = math.inf
            continue
        timing[how] = (time.perf_counter() - start) / len(chunk)
        done.extend(items)
        pos += len(chunk)
    loop_t = timing.get("loop", math.inf)
    vmap_t = timing.get("vmap", math.inf)
    if ctx.distributed:
        # Every rank must take the same decision: use the slowest rank's view.
        views = all_gather_object((loop_t, vmap_t), ctx)
        loop_t = max(v[0] for v in views)
        vmap_t = max(v[1] for v in views)
    mode = "vmap" if vmap_t < loop_t else "loop"
    log.info("evaluation auto: loop %.4g s/point, vmap %.4g s/point -> %s", loop_t, vmap_t, mode)
    return mode, pos, done


# --------------------------------------------------------------------------- checkpoints
SPLITS = ("train", "test", "both")


def surface_from_checkpoint(
    checkpoint: str | Path | UserModel,
    *,
    out: str | Path | None,
    dim: int = 2,
    x: str | GridSpec = "-1:1:51",
    y: str | GridSpec | None = "-1:1:51",
    norm: str = "filter",
    ignore: str | None = "biasbn",
    states: bool = False,
    orthogonalize: bool = False,
    seed: int = 0,
    interpolate: str | Path | None = None,
    pca: str | Path | None = None,
    split: str = "train",
    max_samples: int | None = None,
    batch_size: int = 256,
    data_dir: str | Path | None = None,
    device: str | torch.device | None = None,
    evaluation: str = "loop",
    overwrite: bool = False,
    progress: bool | None = None,
    params: ParamSelection = None,
    compile: bool | str = False,
) -> Surface:
    """The surface of a saved checkpoint on its own data (what ``landscape surface`` runs).

    Args:
        checkpoint: a sharpscape checkpoint (``landscape train`` output), or a user's
            model and data (:class:`~landscape.user.UserModel`: import paths, a Hugging
            Face folder, a weights file); the file then records its import paths, the
            weights file's sha256 and, as ``checkpoint_sha256``, the digest resuming
            compares.
        out: the HDF5 file to write (and resume).
        dim: 1 or 2 (random directions; ``interpolate`` is always 1-D, ``pca`` 2-D).
        x: grid along the first direction, ``start:stop:num``.
        y: grid along the second direction (2-D only).
        norm: direction normalisation (``filter``, ``layer``, ``model``, ``none``).
        ignore: ``"biasbn"`` or None.
        states: random directions also move BatchNorm running statistics.
        orthogonalize: make η orthogonal to δ.
        seed: seed of the random directions.
        interpolate: a second checkpoint: the line from ``checkpoint`` (α=0) to it (α=1).
        pca: a run folder: the plane of the top-2 PCA directions of its checkpoints.
        split: ``"train"``, ``"test"`` or ``"both"``.
        max_samples: evaluate on the first samples of each split only.
        batch_size: evaluation batch size.
        data_dir: where the dataset files are (CIFAR).
        device: ``cpu``, ``cuda``, ``auto``; under torchrun each rank uses its own GPU.
        evaluation: ``loop``, ``vmap`` or ``auto``.
        overwrite: replace an ``out`` file from a different computation.
        progress: progress bar (None: on a terminal).
        params: the parameters random directions move: those with ``requires_grad=True``
            (default) or a selection by name, module prefix or glob
            (:func:`~landscape.params.select_parameters`); not with ``interpolate`` or
            ``pca``.
        compile: compile the forward (``False``, ``True`` or ``"auto"``: only when the
            grid pays for the compile time); see :func:`compute_surface`.
    """
    dim, xg, yg = _check_checkpoint_arguments(
        checkpoint, dim, x, y, split, interpolate, pca, params, data_dir
    )
    ctx = init_distributed(device=device)
    try:
        model, train, test, attrs, loss = _checkpoint_and_data(checkpoint, split, data_dir, ctx)
        directions = _checkpoint_directions(model, interpolate, pca, ignore, attrs)
        return compute_surface(
            model,
            train,
            test_data=test,
            x=xg,
            y=yg,
            directions=directions,
            norm=norm,
            ignore=ignore,
            states=states,
            orthogonalize=orthogonalize,
            seed=seed,
            out=out,
            overwrite=overwrite,
            batch_size=batch_size,
            max_samples=max_samples,
            device=ctx.device,
            evaluation=evaluation,
            progress=progress,
            attrs=attrs,
            dist=ctx,
            params=params,
            compile=compile,
            **loss,
        )
    finally:
        cleanup_distributed(ctx)


def _check_checkpoint_arguments(
    checkpoint: str | Path | UserModel,
    dim: int,
    x: str | GridSpec,
    y: str | GridSpec | None,
    split: str,
    interpolate: str | Path | None,
    pca: str | Path | None,
    params: ParamSelection,
    data_dir: str | Path | None,
) -> tuple[int, GridSpec, GridSpec | None]:
    """Check everything about the arguments before any work; the dimension and grids."""
    if dim not in (1, 2):
        raise ValueError(f"Invalid dim: {dim} (expected 1 or 2)")
    if split not in SPLITS:
        raise ValueError(f"Invalid split: {split!r}; expected one of {SPLITS}")
    if interpolate is not None and pca is not None:
        raise ValueError("Invalid options: --interpolate and --pca exclude each other")
    if params is not None and (interpolate is not None or pca is not None):
        raise ValueError(
            "Invalid options: --params selects what random directions move, not "
            "--interpolate or --pca directions"
        )
    if interpolate is not None:
        dim = 1
    if pca is not None:
        dim = 2
    xg = parse_grid(x, name="x")
    yg = parse_grid(y, name="y") if dim == 2 else None
    if dim == 2 and y is None:
        raise ValueError("Invalid y: a 2-D surface needs --y start:stop:num")
    if isinstance(checkpoint, UserModel):
        if data_dir is not None:
            raise ValueError("Invalid options: --data-dir is for built-in datasets, not --data")
        checkpoint.check()
    ckpt_path = None if isinstance(checkpoint, UserModel) else Path(checkpoint)
    for p, what in ((ckpt_path, "checkpoint"), (interpolate, "checkpoint"), (pca, "run folder")):
        if p is not None and not Path(p).exists():
            raise FileNotFoundError(f"{p}: no such {what}")
    return dim, xg, yg


def _checkpoint_and_data(
    checkpoint: str | Path | UserModel,
    split: str,
    data_dir: str | Path | None,
    ctx: DistContext,
) -> tuple[nn.Module, Any, Any, dict[str, Any], dict[str, Any]]:
    """The checkpoint's model (on the device), train and test data, attrs and own loss."""
    from landscape.checkpoint import load_checkpoint

    if isinstance(checkpoint, UserModel):
        ckpt = checkpoint.open(map_location="cpu")
        bundle = ckpt.load_data()
    else:
        ckpt = load_checkpoint(checkpoint, map_location="cpu")
        bundle = ckpt.load_data(**({"data_dir": str(data_dir)} if data_dir is not None else {}))
    model = ckpt.model.to(ctx.device)
    train = bundle.train if split in ("train", "both") else None
    test = bundle.test if split in ("test", "both") else None
    if split != "train" and bundle.test is None:
        raise ValueError(f"Invalid split: {split!r} but the dataset has no test split")
    if split != "test" and bundle.train is None:
        raise ValueError(f"Invalid split: {split!r} but the data has no train split")
    attrs: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "checkpoint_sha256": ckpt.sha256,
        "model_spec": ckpt.model_spec,
        "data_spec": ckpt.data_spec,
        "dataset": bundle.name,
        "split": split,
    }
    if isinstance(ckpt, UserCheckpoint):
        attrs.update(ckpt.attrs())
    return model, train, test, attrs, ckpt.objective_options()


def _checkpoint_directions(
    model: nn.Module,
    interpolate: str | Path | None,
    pca: str | Path | None,
    ignore: str | None,
    attrs: dict[str, Any],
) -> Directions | None:
    """The line to a second checkpoint or a run's PCA plane (noted in ``attrs``); else None."""
    from landscape.checkpoint import file_sha256
    from landscape.directions import interpolation_directions, pca_directions

    directions: Directions | None = None
    if interpolate is not None:
        directions = interpolation_directions(model, interpolate)
        attrs["other_checkpoint"] = str(interpolate)
        attrs["other_checkpoint_sha256"] = file_sha256(interpolate)
    elif pca is not None:
        directions = pca_directions(model, pca, ignore=ignore)
        attrs["pca_run"] = str(pca)
    return directions
