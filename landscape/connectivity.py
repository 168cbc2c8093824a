"""Mode connectivity: is there a low-loss path between two minima?

:func:`linear_barrier` evaluates the loss (and accuracy) along the straight line
``θ(α) = (1 − α)·θ_A + α·θ_B`` and reports the barrier (Frankle et al. 2020; Entezari et
al. 2022)::

    B = max_α [ L(θ(α)) − ((1 − α)·L(θ_A) + α·L(θ_B)) ]

on a grid of α in [0, 1] (25 points by default), and the same for the error rate when the
accuracy applies.

:func:`fit_curve` looks for a better path (Garipov et al., NeurIPS 2018, arXiv
1802.10026): the quadratic Bezier curve ``φ(t) = (1 − t)²·θ_A + 2t(1 − t)·θ_C + t²·θ_B``
or the polygonal chain ``θ_A → θ_C → θ_B``, whose bend θ_C starts at the midpoint and is
trained (θ_A and θ_B fixed) to minimise ``E_{t ~ U(0,1)} L(φ(t))`` with one t drawn per
mini-batch. The fitted curve is then evaluated like the line (:func:`curve_profile`), its
barrier defined as the line's, and stored in HDF5 with its loss profile, the line's and the
bend's weights (:meth:`CurveResult.save`, :func:`read_curve`).

One mechanism serves every path: a point is ``w_A(t)·θ_A + w_C(t)·θ_C + w_B(t)·θ_B``
(:func:`path_weights`; the line has ``w_C = 0``), set on the model's own tensors and
evaluated with :class:`~landscape.objective.Objective` (exact weights, any batch form);
the ends are copied, never computed, so t = 0 and t = 1 are exactly the two networks. A
network with BatchNorm gets its running statistics recomputed on the training data at each
point before it is evaluated (Garipov et al.): the interpolated statistics of two networks
are not the statistics of the interpolated network. While the bend is trained BatchNorm
uses the batch's statistics (training mode). The models are left exactly as given
(weights, every buffer, modes).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.directions import StateLike, _state_tensors, direction_targets
from landscape.metrics._base import progress_bar
from landscape.objective import (
    Objective,
    WeightedBatch,
    eval_mode,
    make_objective,
    move_to_device,
)
from optimizers._foreach import tl_add_, tl_axpby_, tl_clone, tl_copy_

__all__ = [
    "CURVE_KINDS",
    "BarrierResult",
    "CurveResult",
    "as_curve",
    "curve_profile",
    "fit_curve",
    "is_curve_file",
    "linear_barrier",
    "path_weights",
    "read_curve",
    "recompute_batchnorm",
]

#: The fitted paths: the quadratic Bezier curve and the polygonal chain through θ_C.
CURVE_KINDS = ("bezier", "polychain")
_PATH_KINDS = ("line", *CURVE_KINDS)
_SCHEDULES = ("cosine", "constant")


@dataclass
class BarrierResult:
    """The loss along a path between two networks and its barrier.

    Attributes:
        alphas: the grid of α (or t) on the path (0 is network A, 1 network B).
        loss: the loss at each α.
        acc: the accuracy (percent) at each α, or None when it does not apply.
        barrier: ``max_α [L(α) − ((1−α) L(0) + α L(1))]`` (≥ 0 up to rounding at the ends;
            NaN when the loss is NaN at some α).
        alpha_max: the α where the barrier is reached.
        error_barrier: the same for the error rate ``100 − acc`` (percentage points), or
            None.
        info: how it was computed (``bn_recomputed``, ``num``, ``n_samples``, ``path``).
    """

    alphas: np.ndarray
    loss: np.ndarray
    acc: np.ndarray | None
    barrier: float
    alpha_max: float
    error_barrier: float | None
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_values(
        cls, alphas: np.ndarray, loss: np.ndarray, acc: np.ndarray | None, **info: Any
    ) -> BarrierResult:
        """The result of a profile: the barriers computed from the values."""
        alphas = np.asarray(alphas, dtype=np.float64)
        loss = np.asarray(loss, dtype=np.float64)
        if acc is not None:
            acc = np.asarray(acc, dtype=np.float64)
            if not np.isfinite(acc).all():
                acc = None
        barrier, alpha_max = _barrier(alphas, loss)
        error_barrier = None if acc is None else _barrier(alphas, 100.0 - acc)[0]
        return cls(alphas, loss, acc, barrier, alpha_max, error_barrier, dict(info))

    @property
    def max_loss(self) -> float:
        """The highest loss on the path."""
        return float(np.nanmax(self.loss))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable)."""
        return {
            "alphas": self.alphas.tolist(),
            "loss": self.loss.tolist(),
            "acc": None if self.acc is None else self.acc.tolist(),
            "barrier": self.barrier,
            "alpha_max": self.alpha_max,
            "error_barrier": self.error_barrier,
            "info": dict(self.info),
        }


def _barrier(alphas: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """``max_α [v(α) − ((1 − α) v(0) + α v(1))]`` and its α; NaN when a value is NaN.

    A point whose loss is NaN (diverged) leaves the maximum undefined: the barrier of the
    other points would understate it. An infinite loss gives an infinite barrier.
    """
    line = (1.0 - alphas) * values[0] + alphas * values[-1]
    gap = values - line
    if np.isnan(gap).any():
        return math.nan, math.nan
    i = int(np.argmax(gap))
    return float(gap[i]), float(alphas[i])


def _batchnorms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
    ]


def _single_value(exc: ValueError) -> bool:
    """Whether ``exc`` is BatchNorm refusing to train on one value per channel."""
    return "Expected more than 1 value per channel" in str(exc)


@torch.no_grad()
def recompute_batchnorm(objective: Objective) -> bool:
    """Re-estimate every BatchNorm's running statistics on the objective's data.

    The statistics are reset and accumulated over all batches with the momentum
    ``n_b / (n_seen + n_b)`` (as Garipov et al.'s code does), so the running mean is the
    exact mean over the data and the running variance the sample-weighted mean of the
    batches' variances, with only the BatchNorm layers in training mode (dropout stays
    off). Modes and momenta are restored. Returns whether the model has BatchNorm.

    A batch BatchNorm cannot train on (one sample of a flat layer: a smaller last batch)
    is left out. Data in such batches only is refused.

    Raises:
        ValueError: no batch could be used.
    """
    bns = _batchnorms(objective.model)
    if not bns:
        return False
    momenta = [bn.momentum for bn in bns]
    with eval_mode(objective.model):
        for bn in bns:
            bn.reset_running_stats()
            bn.train()
        try:
            seen = 0
            for batch in objective.batches():
                before = [(bn.running_mean.clone(), bn.running_var.clone()) for bn in bns]
                for bn in bns:
                    bn.momentum = batch.size / (seen + batch.size)
                try:
                    if objective.adapter.compute_loss is None:
                        objective.batch_outputs(batch)
                    else:
                        objective.batch_loss(batch)
                except ValueError as exc:
                    if not _single_value(exc):
                        raise
                    for bn, (mean, var) in zip(bns, before, strict=True):
                        bn.running_mean.copy_(mean)  # the layers before the failing one
                        bn.running_var.copy_(var)
                    continue
                seen += batch.size
        finally:
            for bn, momentum in zip(bns, momenta, strict=True):
                bn.momentum = momentum
    if not seen:
        raise ValueError(
            "Invalid data: recomputing BatchNorm statistics needs a batch of at least 2 "
            "samples (raise the batch size, or pass recompute_bn=False)"
        )
    return True


# --------------------------------------------------------------------------- the path
def path_weights(kind: str, t: float) -> tuple[float, float, float]:
    """The weights ``(w_A, w_C, w_B)`` of the point ``t`` of a path: θ = Σ w·θ.

    - ``line``: ``(1 − t, 0, t)``;
    - ``bezier``: ``((1 − t)², 2t(1 − t), t²)``;
    - ``polychain``: ``(1 − 2t, 2t, 0)`` for t ≤ ½, ``(0, 2 − 2t, 2t − 1)`` after.
    """
    if kind == "line":
        return 1.0 - t, 0.0, t
    if kind == "bezier":
        return (1.0 - t) ** 2, 2.0 * t * (1.0 - t), t * t
    if kind == "polychain":
        return (1.0 - 2.0 * t, 2.0 * t, 0.0) if t <= 0.5 else (0.0, 2.0 - 2.0 * t, 2.0 * t - 1.0)
    raise ValueError(f"Invalid kind: {kind!r}; expected one of {_PATH_KINDS}")


class _Path:
    """The two ends (and the bend) of a path, and a model whose tensors walk along it.

    The tensors moved are the parameters, then the floating-point buffers (BatchNorm
    running statistics), as :func:`~landscape.directions.direction_targets` lists them.
    """

    def __init__(self, model: nn.Module, other: StateLike, bend: Any = None) -> None:
        self.names, self.targets = direction_targets(model, states=True)
        self.a = tl_clone(self.targets)
        self.b = _state_tensors(other, self.names, self.targets)
        if bend is None:  # the midpoint
            self.c = tl_clone(self.a)
            tl_axpby_(self.c, 0.5, self.a, 0.5, self.b)
        else:
            self.c = _bend_tensors(bend, self.names, self.targets)

    def set(self, kind: str, t: float) -> None:
        """Put the model's tensors at the point ``t`` of the path ``kind``."""
        with torch.no_grad():
            if t == 0.0:
                tl_copy_(self.targets, self.a)
                return
            if t == 1.0:
                tl_copy_(self.targets, self.b)
                return
            wa, wc, wb = path_weights(kind, t)
            tl_axpby_(self.targets, wa, self.a, wb, self.b)
            if wc != 0.0:
                tl_add_(self.targets, self.c, wc)


def _bend_tensors(bend: Any, names: Sequence[str], like: Sequence[Tensor]) -> list[Tensor]:
    if isinstance(bend, str | Path):
        stored = read_curve(bend)
        bend = dict(zip(stored.names, stored.bend, strict=True))
    if isinstance(bend, Mapping):
        return _state_tensors(bend, names, like)
    bend = list(bend)
    if len(bend) != len(like):
        raise ValueError(f"Invalid bend: {len(bend)} tensors for {len(like)} in the model")
    return _state_tensors(dict(zip(names, bend, strict=True)), names, like)


@contextlib.contextmanager
def _left_as_found(model: nn.Module) -> Iterator[None]:
    """Restore every parameter and buffer of ``model`` (values, in place) on exit."""
    saved = [(t, t.detach().clone()) for t in (*model.parameters(), *model.buffers())]
    try:
        yield
    finally:
        with torch.no_grad():
            for t, v in saved:
                t.copy_(v)


def _profile(
    objectives: Mapping[str, Objective],
    path: _Path,
    kind: str,
    ts: np.ndarray,
    *,
    recompute: bool,
    progress: bool | None,
) -> dict[str, BarrierResult]:
    """Evaluate every objective along the path (the caller restores the model)."""
    values: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in objectives}
    train = next(iter(objectives.values()))
    with progress_bar(list(ts), desc=f"{kind} profile", progress=progress) as bar:
        for t in bar:
            path.set(kind, float(t))
            if recompute:
                recompute_batchnorm(train)
            for split, obj in objectives.items():
                res = obj.evaluate()
                values[split][0].append(res["loss"])
                values[split][1].append(res.get("acc", math.nan))
    info = {"num": len(ts), "bn_recomputed": recompute, "path": kind}
    return {
        split: BarrierResult.from_values(
            ts, np.asarray(loss), np.asarray(acc), n_samples=objectives[split].n_samples, **info
        )
        for split, (loss, acc) in values.items()
    }


def _check_num(num: int) -> None:
    if num < 3:
        raise ValueError(f"Invalid num: {num} (at least 3 points)")


def linear_barrier(
    model: nn.Module | Objective,
    other: StateLike,
    data: Any = None,
    *,
    num: int = 25,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    recompute_bn: bool | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool | None = None,
    **reading: Any,
) -> BarrierResult:
    """The loss barrier on the straight line from ``model`` (α = 0) to ``other`` (α = 1).

    Args:
        model: network A (its current weights), or an :class:`~landscape.objective.Objective`
            on it (then ``data``, ``loss_fn`` and the batch options are left unset).
        other: network B: a model, a state dict or a checkpoint file.
        data: the data the loss is measured on (any form ``Objective`` takes).
        num: grid points on [0, 1] (at least 3; 25 by default).
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy, or the model's own
            loss for Hugging Face-style dict batches.
        recompute_bn: recompute BatchNorm statistics at every point (default: when the
            model has BatchNorm); otherwise the statistics are interpolated too.
        batch_size: evaluation batch size.
        max_samples: use only the first samples.
        progress: progress bar (``None``: only on a terminal).
        **reading: ``forward``, ``compute_loss``, ``count_items``, ``input_key``,
            ``target_key`` (see :class:`~landscape.objective.Objective`).

    Returns:
        A :class:`BarrierResult`; the model's weights, buffers and modes are left as found.
    """
    _check_num(num)
    obj = make_objective(
        model, data, loss_fn, batch_size=batch_size, max_samples=max_samples, **reading
    )
    net = obj.model
    recompute = bool(_batchnorms(net)) if recompute_bn is None else bool(recompute_bn)
    ts = np.linspace(0.0, 1.0, num)
    with _left_as_found(net):
        path = _Path(net, other)
        profiles = _profile(
            {"train": obj}, path, "line", ts, recompute=recompute, progress=progress
        )
    return profiles["train"]


# --------------------------------------------------------------------------- curves
@dataclass
class CurveResult:
    """A curve fitted between two networks, its loss profile and the line's.

    Attributes:
        kind: ``"bezier"`` or ``"polychain"``.
        curve: the profile along the curve on the training data (``alphas`` are the t).
        line: the profile along the straight line, on the same grid and data.
        test_curve: the curve's profile on the test data, or None.
        test_line: the line's profile on the test data, or None.
        bend: θ_C, the bend's tensors (on the CPU), aligned with ``names``.
        names: the tensors' names (parameters, then floating-point buffers).
        history: the mean training loss on the curve in each epoch of the fit.
        info: how it was fitted and evaluated (epochs, lr, seed, hashes of the ends...).
    """

    kind: str
    curve: BarrierResult
    line: BarrierResult
    test_curve: BarrierResult | None
    test_line: BarrierResult | None
    bend: list[Tensor]
    names: list[str]
    history: np.ndarray
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def t(self) -> np.ndarray:
        """The grid of t."""
        return self.curve.alphas

    @property
    def barrier(self) -> float:
        """The curve's loss barrier (train)."""
        return self.curve.barrier

    @property
    def line_barrier(self) -> float:
        """The straight line's loss barrier (train)."""
        return self.line.barrier

    def profiles(self) -> Iterator[tuple[str, str, BarrierResult]]:
        """``(path, split, profile)`` for each profile present: path is the kind or "line"."""
        for split, pair in (("train", (self.curve, self.line)),
                            ("test", (self.test_curve, self.test_line))):  # fmt: skip
            for name, prof in zip((self.kind, "line"), pair, strict=True):
                if prof is not None:
                    yield name, split, prof

    def bend_state(self) -> dict[str, Tensor]:
        """θ_C as a state dict (name to tensor), e.g. for ``plane_directions``."""
        return dict(zip(self.names, self.bend, strict=True))

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-serialisable; the bend's tensors left out)."""
        return {
            "kind": self.kind,
            "curve": self.curve.to_dict(),
            "line": self.line.to_dict(),
            "test_curve": None if self.test_curve is None else self.test_curve.to_dict(),
            "test_line": None if self.test_line is None else self.test_line.to_dict(),
            "history": self.history.tolist(),
            "info": dict(self.info),
        }

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the curve to an HDF5 file (see :func:`read_curve` for the layout).

        Raises:
            ValueError: when the file exists and ``overwrite`` is False.
        """
        return _write_curve(self, Path(path), overwrite=overwrite)


class _TrainBatches:
    """The training batches of the fit, one epoch at a time in a seeded random order.

    Tensor pairs and map-style datasets are shuffled per sample, a ``DataLoader`` is read
    as it samples, other iterables of batches are shuffled per batch.
    """

    def __init__(self, data: Any, batch_size: int) -> None:
        from torch.utils.data import DataLoader, Dataset, IterableDataset

        self.data, self.batch_size = data, batch_size
        self.style = "batches"
        if (
            isinstance(data, tuple | list)
            and len(data) == 2
            and all(isinstance(t, Tensor) for t in data)
        ):
            self.style = "pair"
            n = data[0].shape[0]
            self.steps = math.ceil(n / batch_size)
            if self.steps > 1 and n - (self.steps - 1) * batch_size < 2:
                self.steps -= 1  # BatchNorm cannot train on a single example
        elif isinstance(data, DataLoader):
            self.style = "loader"
            self.steps = len(data)
        elif isinstance(data, Dataset) and not isinstance(data, IterableDataset):
            self.style = "dataset"
            self.steps = math.ceil(len(data) / batch_size)  # type: ignore[arg-type]
        else:
            self.data = list(data)
            self.steps = len(self.data)
        if self.steps == 0:
            raise ValueError("Invalid data: it holds no batch to fit the curve on")

    def epoch(self, gen: torch.Generator) -> Iterator[Any]:
        """Yield one epoch's batches."""
        from torch.utils.data import DataLoader

        data = self.data
        if self.style == "pair":
            perm = torch.randperm(data[0].shape[0], generator=gen)
            for idx in torch.split(perm, self.batch_size)[: self.steps]:
                yield data[0][idx], data[1][idx]
        elif self.style == "loader":
            yield from data
        elif self.style == "dataset":
            yield from DataLoader(data, batch_size=self.batch_size, shuffle=True, generator=gen)
        else:
            for i in torch.randperm(len(data), generator=gen).tolist():
                yield data[i]


def _fit_bend(
    obj: Objective,
    path: _Path,
    data: Any,
    *,
    kind: str,
    epochs: int,
    lr: float,
    momentum: float,
    weight_decay: float,
    batch_size: int,
    schedule: str,
    seed: int,
    progress: bool | None,
) -> np.ndarray:
    """Train the bend θ_C on ``E_t L(φ(t))``; returns the mean loss of each epoch.

    The model's tensors are never written: each step calls it with the curve point's
    weights (``torch.func.functional_call``) and scratch copies of its buffers.
    """
    from torch.func import functional_call

    from landscape.surface import _BatchCall
    from landscape.training import cosine_factor

    net = obj.model
    call = _BatchCall(net, obj)
    trainable = {id(p) for p in net.parameters() if p.requires_grad}
    grads = [id(t) in trainable for t in path.targets]
    bend = [c.clone().requires_grad_(g) for c, g in zip(path.c, grads, strict=True)]
    fitted = [c for c, g in zip(bend, grads, strict=True) if g]
    if not fitted:
        raise ValueError("Invalid model: no parameter requires a gradient, nothing to fit")
    opt = torch.optim.SGD(fitted, lr=lr, momentum=momentum, weight_decay=weight_decay)
    moved = set(path.names)
    others = [(n, b) for n, b in net.named_buffers() if n not in moved]
    batches = _TrainBatches(data, batch_size)
    gen = torch.Generator().manual_seed(seed)
    total, step = epochs * batches.steps, 0
    history = []
    devices = [obj.device] if obj.device.type == "cuda" else []
    with eval_mode(net), torch.random.fork_rng(devices=devices), torch.enable_grad():
        torch.manual_seed(seed)  # dropout; the caller's RNG state is restored afterwards
        net.train()
        with progress_bar(range(epochs), desc=f"{kind} fit", progress=progress) as bar:
            for _ in bar:
                losses, sizes = [], []
                for raw in batches.epoch(gen):
                    batch = move_to_device(raw, obj.device)
                    parts = obj.adapter.parts(batch)
                    size = obj.adapter.size(batch)
                    t = float(torch.rand((), generator=gen))
                    wa, wc, wb = path_weights(kind, t)
                    point = {
                        f"inner.{n}": wa * a + wc * c + wb * b
                        for n, a, b, c in zip(path.names, path.a, path.b, bend, strict=True)
                    }
                    point.update({f"inner.{n}": b.clone() for n, b in others})
                    try:
                        out = functional_call(
                            call, point, (WeightedBatch(batch, parts, 1.0, size, size, 1.0),)
                        )
                    except ValueError as exc:  # BatchNorm on one sample (a last batch)
                        if not _single_value(exc):
                            raise
                        continue
                    loss = out if obj.adapter.compute_loss is not None else None
                    if loss is None:
                        loss = obj.adapter.loss_of(out, parts)
                    for g in opt.param_groups:
                        g["lr"] = lr * (cosine_factor(step, total) if schedule == "cosine" else 1.0)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    step += 1
                    losses.append(float(loss.detach()))
                    sizes.append(size)
                if not losses:
                    raise ValueError(
                        "Invalid data: no batch BatchNorm can train on (one sample per batch; "
                        "raise batch_size)"
                    )
                mean = float(np.average(losses, weights=sizes))
                if not math.isfinite(mean):
                    raise FloatingPointError(
                        f"non-finite loss on the curve ({mean}); lower the learning rate (lr)"
                    )
                history.append(mean)
    path.c = [c.detach() for c in bend]
    return np.asarray(history, dtype=np.float64)


def _check_fit_options(
    kind: str, epochs: int, lr: float, momentum: float, weight_decay: float, schedule: str
) -> None:
    if kind not in CURVE_KINDS:
        raise ValueError(f"Invalid kind: {kind!r}; expected one of {CURVE_KINDS}")
    if epochs < 1:
        raise ValueError(f"Invalid epochs: {epochs} (at least 1)")
    if not lr > 0:
        raise ValueError(f"Invalid lr: {lr}")
    if not 0 <= momentum < 1:
        raise ValueError(f"Invalid momentum: {momentum}")
    if weight_decay < 0:
        raise ValueError(f"Invalid weight_decay: {weight_decay}")
    if schedule not in _SCHEDULES:
        raise ValueError(f"Invalid schedule: {schedule!r}; expected one of {_SCHEDULES}")


def _ends_info(path: _Path, other: StateLike) -> dict[str, Any]:
    from landscape.store import directions_sha256

    info: dict[str, Any] = {
        "weights_a_sha256": directions_sha256(path.a, path.names),
        "weights_b_sha256": directions_sha256(path.b, path.names),
    }
    if isinstance(other, str | Path):
        from landscape.checkpoint import file_sha256

        info["checkpoint_b"] = str(other)
        info["checkpoint_b_sha256"] = file_sha256(other)
    return info


def _objectives(
    model: nn.Module,
    data: Any,
    test_data: Any,
    loss_fn: Any,
    batch_size: int,
    max_samples: int | None,
    reading: Mapping[str, Any],
) -> dict[str, Objective]:
    obj = make_objective(
        model, data, loss_fn, batch_size=batch_size, max_samples=max_samples, **reading
    )
    objectives = {"train": obj}
    if test_data is not None:
        objectives["test"] = obj.derive(test_data, max_samples=max_samples)
    return objectives


def fit_curve(
    model: nn.Module,
    other: StateLike,
    data: Any,
    *,
    kind: str = "bezier",
    epochs: int = 20,
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 0.0,
    batch_size: int = 128,
    schedule: str = "cosine",
    seed: int = 0,
    num: int = 25,
    test_data: Any = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    recompute_bn: bool | None = None,
    eval_batch_size: int = 256,
    max_samples: int | None = None,
    out: str | Path | None = None,
    overwrite: bool = False,
    progress: bool | None = None,
    **reading: Any,
) -> CurveResult:
    """Fit a low-loss curve from ``model`` (t = 0) to ``other`` (t = 1) and profile it.

    The bend θ_C starts at the midpoint ``(θ_A + θ_B)/2`` and is trained with SGD on
    ``E_{t ~ U(0,1)} L(φ(t))``, one t per mini-batch (Garipov et al. 2018); the
    parameters that do not require a gradient stay at the midpoint. Then the loss and
    accuracy along the curve and along the line are evaluated at ``num`` points of t on
    the (whole) training data, and on ``test_data`` when given.

    Args:
        model: network A (its current weights).
        other: network B: a model, a state dict or a checkpoint file.
        data: the training data: a ``(inputs, targets)`` tensor pair or a ``Dataset``
            (shuffled per sample with ``seed``), a ``DataLoader`` (read as it samples),
            or an iterable of batches (shuffled per batch); evaluated in order.
        kind: ``"bezier"`` (quadratic Bezier curve) or ``"polychain"`` (θ_A → θ_C → θ_B).
        epochs: passes over the data to fit the bend.
        lr: the SGD learning rate of the bend.
        momentum: SGD momentum.
        weight_decay: SGD weight decay of the bend.
        batch_size: training batch size (tensor pairs and datasets).
        schedule: ``"cosine"`` (to 0 over all steps) or ``"constant"`` learning rate.
        seed: seed of the t drawn, the data order and dropout (the caller's random
            state is left as it was).
        num: points of t evaluated (at least 3).
        test_data: data to profile the paths on as well (any form ``Objective`` takes).
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy, or the model's own
            loss for Hugging Face-style dict batches.
        recompute_bn: recompute BatchNorm statistics on the training data at every point
            evaluated (default: when the model has BatchNorm).
        eval_batch_size: evaluation batch size.
        max_samples: evaluate on the first samples only (the fit uses all).
        out: an HDF5 file to write the result to (:meth:`CurveResult.save`).
        overwrite: replace an existing ``out``.
        progress: progress bars (``None``: only on a terminal).
        **reading: ``forward``, ``compute_loss``, ``count_items``, ``input_key``,
            ``target_key`` (see :class:`~landscape.objective.Objective`).

    Returns:
        A :class:`CurveResult`; both models are left exactly as found.

    Raises:
        ValueError: for an invalid option, or an ``out`` that exists (without
            ``overwrite``), checked before any work.
        FloatingPointError: when the loss on the curve is not finite (lower ``lr``).
    """
    _check_fit_options(kind, epochs, lr, momentum, weight_decay, schedule)
    _check_num(num)
    if batch_size < 1:
        raise ValueError(f"Invalid batch_size: {batch_size}")
    if out is not None:
        _check_out(Path(out), overwrite)
    if isinstance(model, Objective):
        raise ValueError(
            "Invalid model: fit_curve takes the network and its data, not an Objective"
        )
    objectives = _objectives(model, data, test_data, loss_fn, eval_batch_size, max_samples, reading)
    net = objectives["train"].model
    recompute = bool(_batchnorms(net)) if recompute_bn is None else bool(recompute_bn)
    ts = np.linspace(0.0, 1.0, num)
    with _left_as_found(net):
        path = _Path(net, other)
        options = {
            "epochs": epochs,
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "schedule": schedule,
            "seed": seed,
        }
        history = _fit_bend(
            objectives["train"], path, data, kind=kind, progress=progress, **options
        )
        curve = _profile(objectives, path, kind, ts, recompute=recompute, progress=progress)
        line = _profile(objectives, path, "line", ts, recompute=recompute, progress=progress)
        info = {"kind": kind, **options, **_ends_info(path, other)}
        info.update(num=num, bn_recomputed=recompute, n_samples=objectives["train"].n_samples)
        result = CurveResult(
            kind=kind,
            curve=curve["train"],
            line=line["train"],
            test_curve=curve.get("test"),
            test_line=line.get("test"),
            bend=[c.detach().cpu().clone() for c in path.c],
            names=list(path.names),
            history=history,
            info=info,
        )
    if out is not None:
        result.save(out, overwrite=overwrite)
    return result


def curve_profile(
    model: nn.Module | Objective,
    other: StateLike,
    bend: Sequence[Tensor] | Mapping[str, Tensor] | str | Path,
    data: Any = None,
    *,
    kind: str = "bezier",
    num: int = 25,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    recompute_bn: bool | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    progress: bool | None = None,
    **reading: Any,
) -> BarrierResult:
    """The loss along a given curve (e.g. a stored one on other data) and its barrier.

    Args:
        model: network A (t = 0), or an :class:`~landscape.objective.Objective` on it.
        other: network B (t = 1): a model, a state dict or a checkpoint file.
        bend: θ_C: tensors aligned with :attr:`CurveResult.names`, a state dict, or a
            curve file (:func:`read_curve`).
        data: the data the loss is measured on (any form ``Objective`` takes).
        kind: ``"bezier"``, ``"polychain"`` (or ``"line"``, which ignores the bend).
        num: grid points of t on [0, 1] (at least 3).
        loss_fn: ``loss_fn(outputs, targets)``; default cross-entropy.
        recompute_bn: recompute BatchNorm statistics at every point (default: when the
            model has BatchNorm).
        batch_size: evaluation batch size.
        max_samples: use only the first samples.
        progress: progress bar (``None``: only on a terminal).
        **reading: ``forward``, ``compute_loss``, ``count_items``, ``input_key``,
            ``target_key`` (see :class:`~landscape.objective.Objective`).

    Returns:
        A :class:`BarrierResult` over t; the model is left as found.
    """
    path_weights(kind, 0.0)  # checks the kind
    _check_num(num)
    obj = make_objective(
        model, data, loss_fn, batch_size=batch_size, max_samples=max_samples, **reading
    )
    net = obj.model
    recompute = bool(_batchnorms(net)) if recompute_bn is None else bool(recompute_bn)
    ts = np.linspace(0.0, 1.0, num)
    with _left_as_found(net):
        path = _Path(net, other, bend)
        profiles = _profile({"train": obj}, path, kind, ts, recompute=recompute, progress=progress)
    return profiles["train"]


# --------------------------------------------------------------------------- storage
_CURVE_ATTR = "connectivity"  # the root attribute that marks a curve file: its kind


def _check_out(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise ValueError(
            f"{path}: the file exists; choose another --out or overwrite it "
            "(--overwrite / overwrite=True)"
        )


def _prefix(name: str) -> str:
    return "line_" if name == "line" else ""


def _fields(result: CurveResult) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for name, split, prof in result.profiles():
        out[f"{_prefix(name)}{split}_loss"] = prof.loss
        if prof.acc is not None:
            out[f"{_prefix(name)}{split}_acc"] = prof.acc
    return out


def _write_curve(result: CurveResult, path: Path, *, overwrite: bool) -> Path:
    import h5py

    from landscape._version import __version__
    from landscape.store import _as_numpy, _encode_attr

    _check_out(path, overwrite)
    fields = _fields(result)
    attrs: dict[str, Any] = {
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "version": __version__,
        **{k: v for k, v in result.info.items() if k != "kind"},
        _CURVE_ATTR: result.kind,
        "fields": list(fields),
    }
    for name, split, prof in result.profiles():
        key = f"{_prefix(name)}{split}"
        attrs[f"{key}_barrier"] = prof.barrier
        attrs[f"{key}_t_max"] = prof.alpha_max
        attrs[f"{key}_error_barrier"] = prof.error_barrier
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    with h5py.File(tmp, "w", libver="earliest") as f:
        f.create_dataset("xcoordinates", data=result.t, track_times=False)
        for name, values in fields.items():
            f.create_dataset(name, data=np.asarray(values, dtype=np.float64), track_times=False)
        f.create_dataset("done", data=np.ones(len(result.t), dtype=bool), track_times=False)
        f.create_dataset("history", data=result.history, track_times=False)
        g = f.create_group("bend", track_order=True)
        g.attrs["names"] = _encode_attr(list(result.names))
        for i, t in enumerate(result.bend):
            g.create_dataset(str(i), data=_as_numpy(t), track_times=False)
        for k, v in attrs.items():
            f.attrs[k] = _encode_attr(v)
    tmp.replace(path)
    return path


def is_curve_file(surface: Any) -> bool:
    """Whether a surface (read with :func:`~landscape.store.read_surface`) is a curve."""
    return _CURVE_ATTR in (getattr(surface, "attrs", None) or {})


def as_curve(curve: Any) -> CurveResult:
    """A :class:`CurveResult`: itself, read from its file, or from a surface read from one.

    Raises:
        ValueError: for anything else (or a surface that is not a curve).
    """
    if isinstance(curve, CurveResult):
        return curve
    if isinstance(curve, str | Path) or hasattr(curve, "__fspath__"):
        return read_curve(Path(curve))
    if hasattr(curve, "values") and hasattr(curve, "x") and is_curve_file(curve):
        if getattr(curve, "path", None) is not None and Path(curve.path).exists():
            return read_curve(curve.path)
    raise ValueError(
        f"Invalid curve: a {type(curve).__name__}; expected a CurveResult or a curve file"
    )


def read_curve(path: str | Path) -> CurveResult:
    """Read a curve file written by :meth:`CurveResult.save`.

    The layout extends a 1-D surface file (so ``read_surface`` and the 1-D plots read it):
    ``xcoordinates`` holds t; ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``
    the curve's profile and ``line_train_loss``... the line's; ``done`` (all true);
    ``history`` the mean training loss on the curve per epoch; the group ``bend`` θ_C, one
    dataset per tensor named ``"0"``, ``"1"``, ... (attribute ``names``); root attributes
    ``connectivity`` (the kind), the fit's options, the barriers (``train_barrier``,
    ``line_train_barrier``, ``*_t_max``, ``*_error_barrier``) and the hashes of the ends.

    Raises:
        FileNotFoundError: when the file does not exist.
        ValueError: when it is not a curve file.
    """
    import h5py

    from landscape.store import _decode_attr

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such curve file")
    try:
        with h5py.File(path, "r") as f:
            attrs = {k: _decode_attr(v) for k, v in f.attrs.items()}
            if _CURVE_ATTR not in attrs:
                raise ValueError("no 'connectivity' attribute")
            t = np.asarray(f["xcoordinates"][()], dtype=np.float64)
            values = {n: np.asarray(f[n][()], dtype=np.float64) for n in attrs["fields"]}
            history = np.asarray(f["history"][()], dtype=np.float64)
            g = f["bend"]
            names = list(_decode_attr(g.attrs["names"]))
            bend = [torch.from_numpy(np.asarray(g[str(i)][()])) for i in range(len(names))]
    except (OSError, KeyError, ValueError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a readable curve file ({type(exc).__name__}: {exc})"
        ) from exc
    kind = attrs.pop(_CURVE_ATTR)
    info = {k: v for k, v in attrs.items() if k not in ("fields",)}
    common = {"num": len(t), "bn_recomputed": attrs.get("bn_recomputed")}

    def profile(prefix: str, split: str, path_kind: str) -> BarrierResult | None:
        loss = values.get(f"{prefix}{split}_loss")
        if loss is None:
            return None
        acc = values.get(f"{prefix}{split}_acc")
        return BarrierResult.from_values(t, loss, acc, path=path_kind, **common)

    curve, line = profile("", "train", kind), profile("line_", "train", "line")
    if curve is None or line is None:
        raise ValueError(f"{path}: not a readable curve file (no train_loss or line_train_loss)")
    return CurveResult(
        kind=kind,
        curve=curve,
        line=line,
        test_curve=profile("", "test", kind),
        test_line=profile("line_", "test", "line"),
        bend=bend,
        names=names,
        history=history,
        info={**info, "kind": kind, "path": str(path)},
    )
