"""Training with any optimizer of :mod:`optimizers`, resumable checkpoints and torchrun DDP.

:func:`train` is the library function behind ``landscape train``. One run folder
(``out``) holds::

    RUN/config.json              # the run's configuration (checked when resuming)
    RUN/metrics.jsonl            # one JSON object per epoch (epoch 0 = initialisation)
    RUN/checkpoints/epoch_0000.pt, epoch_0005.pt, ...   # every save_every epochs
    RUN/final.pt                 # the last epoch

Re-running the same call (or command) on an existing run folder resumes from its last
checkpoint: the model, the optimizer state (including a wrapped base optimizer's), the LR
schedule, the RNG states of torch, numpy and Python and the generator of the data order
are restored, so the continuation is bit-identical to an uninterrupted run on the CPU.

A non-finite training loss (a learning rate far too large) stops the run at once with
:class:`NonFiniteLoss` (``nonfinite="stop"``, the default; ``landscape train`` exits
with status 3): the run folder keeps the checkpoints written before, and no checkpoint
of non-finite weights is written. ``nonfinite="continue"`` (``--allow-nonfinite``) warns
and trains on.

Under ``torchrun --nproc_per_node=K`` the same call trains with DistributedDataParallel
(gloo on the CPU, nccl on CUDA): each epoch's seeded permutation is padded to a multiple
of K and dealt round-robin (as ``DistributedSampler`` does), ``batch_size`` is the global
batch (``batch_size / K`` per process), and only rank 0 evaluates and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import random
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset
from tqdm.auto import tqdm

from landscape._io import check_output, write_atomically
from landscape._version import __version__
from landscape.checkpoint import (
    load_state_dict_strict,
    read_checkpoint,
    run_checkpoints,
    save_checkpoint,
)
from landscape.data import DataBundle, as_bundle, load_data, take_batch
from landscape.distributed import (
    DistContext,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
)
from landscape.models import build_model, model_spec

__all__ = [
    "NONFINITE_MODES",
    "NonFiniteLoss",
    "TrainResult",
    "cosine_factor",
    "random_crop_flip",
    "train",
]

log = logging.getLogger(__name__)

# What train(nonfinite=...) accepts: stop at the first non-finite loss, or warn and go on.
NONFINITE_MODES = ("stop", "continue")

# Configuration entries that must match for a run folder to be resumed.
_RESUME_KEYS = (
    "model",
    "data",
    "optimizer",
    "hparams",
    "epochs",
    "batch_size",
    "seed",
    "amp",
    "augment",
)


@dataclass
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        model: the trained model (unwrapped from DDP), in eval mode.
        metrics: one dict per epoch, epoch 0 being the initialisation.
        data: the data bundle trained on.
        run_dir: the run folder, or ``None`` when nothing was written.
        final_checkpoint: ``RUN/final.pt`` or ``None``.
        resumed_from: the epoch the run resumed from, or ``None`` for a fresh start.
        completed: whether all epochs ran (``False`` after ``stop_after_epoch``).
        config: the run's configuration (as in ``config.json``).
        rank: this process's rank (metrics are only collected on rank 0).
    """

    model: nn.Module
    metrics: list[dict[str, Any]]
    data: DataBundle
    run_dir: Path | None = None
    final_checkpoint: Path | None = None
    resumed_from: int | None = None
    completed: bool = True
    config: dict[str, Any] = field(default_factory=dict)
    rank: int = 0


class NonFiniteLoss(FloatingPointError):
    """Training met a non-finite loss and stopped (``train(nonfinite="stop")``).

    Nothing of the non-finite weights is saved: the run folder keeps the checkpoints
    written before (``last_checkpoint`` is the newest of them).

    Attributes:
        epoch: the epoch it happened in (1-based).
        step: the step within that epoch (1-based), or ``None`` when the evaluation at
            the end of the epoch found it.
        value: the loss (``nan``, ``inf`` or ``-inf``).
        run_dir: the run folder, or ``None`` when nothing is written.
        last_checkpoint: the newest checkpoint written before, or ``None``.
    """

    def __init__(
        self,
        epoch: int,
        step: int | None,
        steps: int,
        value: float,
        run_dir: Path | None,
        last_checkpoint: Path | None,
    ) -> None:
        """Record where it happened; the message is the one the CLI prints."""
        self.epoch, self.step, self.value = epoch, step, value
        self.run_dir, self.last_checkpoint = run_dir, last_checkpoint
        where = (
            f"at epoch {epoch}, step {step} of {steps}"
            if step is not None
            else f"in the evaluation after epoch {epoch}"
        )
        if run_dir is None:
            kept = "nothing was saved"
        elif last_checkpoint is None:
            kept = f"{run_dir} holds no checkpoint"
        else:
            kept = f"{run_dir} keeps the checkpoints written before ({last_checkpoint})"
        super().__init__(
            f"non-finite training loss ({value}) {where}: training stopped, {kept}; "
            "lower the learning rate (--lr), or train on with --allow-nonfinite "
            "(nonfinite='continue')"
        )


def cosine_factor(step: int, total: int) -> float:
    """Cosine LR multiplier ``(1 + cos(π·step/total)) / 2`` (1 at the start, 0 at the end)."""
    if total <= 0:
        return 1.0
    return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


def random_crop_flip(x: torch.Tensor, gen: torch.Generator, padding: int = 4) -> torch.Tensor:
    """Random crop of the zero-padded images and random horizontal flip, per example.

    Args:
        x: images ``(N, C, H, W)``.
        gen: CPU generator of the offsets and flips (seeded, part of the resume state).
        padding: zero padding on each side before cropping back to ``(H, W)``.
    """
    if x.dim() != 4:
        raise ValueError(f"Invalid augment: needs image batches (N, C, H, W), got {tuple(x.shape)}")
    n, c, h, w = x.shape
    offsets = torch.randint(0, 2 * padding + 1, (2, n), generator=gen).to(x.device)
    flips = (torch.rand(n, generator=gen) < 0.5).to(x.device)
    padded = F.pad(x, [padding] * 4)
    rows = offsets[0][:, None] + torch.arange(h, device=x.device)  # (N, H)
    cols = offsets[1][:, None] + torch.arange(w, device=x.device)  # (N, W)
    cols = torch.where(flips[:, None], cols.flip(1), cols)
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


# --------------------------------------------------------------------------- RNG state


@contextlib.contextmanager
def _rng_scope(device: torch.device) -> Iterator[None]:
    """Let training seed the global RNGs, restoring the caller's states afterwards."""
    np_state = np.random.get_state()  # noqa: NPY002 - the legacy global state is restored
    py_state = random.getstate()
    devices = [device] if device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - inside _rng_scope
    random.seed(seed)


def _rng_state(device: torch.device, gens: Mapping[str, torch.Generator]) -> dict[str, Any]:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": [int(version), [int(v) for v in internal], gauss_next],
        **{name: g.get_state() for name, g in gens.items()},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(
    state: Mapping[str, Any], device: torch.device, gens: Mapping[str, torch.Generator]
) -> None:
    torch.set_rng_state(state["torch"].cpu())
    npst = state["numpy"]
    np.random.set_state(  # noqa: NPY002
        (
            npst["kind"],
            npst["keys"].numpy().astype(np.uint32),
            npst["pos"],
            npst["has_gauss"],
            npst["gauss"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    for name, g in gens.items():
        g.set_state(state[name].cpu())
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"].cpu(), device)


# --------------------------------------------------------------------------- optimizer


def _optimizer_hparams(name: str) -> dict[str, Any]:
    import optimizers

    return dict(optimizers.optimizer_hparams(name))


def _resolve_hparams(name: str, hparams: Mapping[str, Any] | None) -> dict[str, Any]:
    """The optimizer's own hyper-parameters: its defaults updated by ``hparams``."""
    defaults = _optimizer_hparams(name)
    given = dict(hparams or {})
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        allowed = ", ".join(sorted(defaults)) or "none"
        raise ValueError(
            f"Invalid hparams for optimizer {name!r}: {', '.join(unknown)} (it takes: {allowed})"
        )
    return {**defaults, **given}


def _build_optimizer(name: str, params: Any, **kwargs: Any) -> torch.optim.Optimizer:
    import optimizers

    return optimizers.build_optimizer(name, params, **kwargs)


# --------------------------------------------------------------------------- helpers


def _batches_of_epoch(
    n: int, batch_size: int, gen: torch.Generator, ctx: DistContext
) -> list[torch.Tensor]:
    """This rank's index batches for one epoch (seeded permutation, DistributedSampler-like)."""
    perm = torch.randperm(n, generator=gen)
    if ctx.world_size > 1:
        total = math.ceil(n / ctx.world_size) * ctx.world_size
        if total > n:
            perm = torch.cat([perm, perm[: total - n]])
        perm = perm[ctx.rank :: ctx.world_size]
        batch_size = batch_size // ctx.world_size
    batches = list(torch.split(perm, batch_size))
    if len(batches) > 1 and len(batches[-1]) < 2:
        batches.pop()  # BatchNorm cannot train on a single example
    return batches


def _sync_buffers(module: nn.Module) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics drift after the last step)."""
    import torch.distributed as dist

    for buf in module.buffers():
        dist.broadcast(buf, src=0)


def _all_finite(loss: torch.Tensor, ctx: DistContext) -> bool:
    """Whether the loss is finite on every rank (a rank alone stopping would hang the rest)."""
    ok = torch.isfinite(loss.detach()).all()
    if ctx.world_size > 1:
        import torch.distributed as dist

        flag = ok.to(torch.int32).reshape(1)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        ok = flag[0] > 0
    return bool(ok)


def _read_metrics(path: Path, upto: int) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                row = json.loads(line)
                epoch = int(row["epoch"])
            except (ValueError, TypeError, KeyError) as exc:
                raise ValueError(
                    f"{path}: line {number} is not a metrics record ({type(exc).__name__}: "
                    f"{exc}); repair or delete the file, or start over with resume=False "
                    "(--no-resume)"
                ) from None
            if epoch <= upto:
                rows.append(row)
    return rows


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    write_atomically(path, lambda fh: fh.write("".join(json.dumps(r) + "\n" for r in rows)))


def _json_ready(obj: Any) -> Any:
    return json.loads(json.dumps(obj))


def _latest_resumable(run_dir: Path) -> Path | None:
    """The last epoch checkpoint of a run folder (or ``final.pt`` when present)."""
    final = run_dir / "final.pt"
    if final.is_file():
        return final
    try:
        paths = run_checkpoints(run_dir)
    except FileNotFoundError:
        return None
    return paths[-1] if paths else None


def _clear_run(run_dir: Path) -> None:
    for f in [run_dir / "final.pt", run_dir / "metrics.jsonl", run_dir / "config.json"]:
        f.unlink(missing_ok=True)
    ckdir = run_dir / "checkpoints"
    if ckdir.is_dir():
        for f in ckdir.glob("epoch_*.pt"):
            f.unlink()


def _check_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    path = run_dir / "config.json"
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        if not isinstance(old, dict):
            raise TypeError(f"a JSON {type(old).__name__}, not an object")
    except (ValueError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a run configuration ({type(exc).__name__}: {exc}); choose another "
            "output folder or start over with resume=False (--no-resume)"
        ) from None
    for key in _RESUME_KEYS:
        if old.get(key) != config.get(key):
            raise ValueError(
                f"{run_dir}: holds a run with a different configuration ({key}: "
                f"{old.get(key)!r} there, {config.get(key)!r} now); choose another output "
                "folder or start over with resume=False (--no-resume)"
            )


# --------------------------------------------------------------------------- train


def train(
    model: str | nn.Module = "cnn",
    data: str | DataBundle | Any = "digits",
    *,
    optimizer: str = "sgd",
    epochs: int = 10,
    batch_size: int = 128,
    lr: float = 0.1,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    base_optimizer: str = "sgd",
    hparams: Mapping[str, Any] | None = None,
    label_noise: float = 0.0,
    n_per_class: int | None = None,
    val_fraction: float = 0.0,
    data_dir: str | None = None,
    data_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    seed: int = 0,
    device: str | torch.device | None = None,
    amp: bool = False,
    save_every: int = 1,
    out: str | Path | None = None,
    resume: bool = True,
    eval_batch_size: int = 1024,
    progress: bool | None = None,
    stop_after_epoch: int | None = None,
    augment: bool = False,
    max_device_bytes: int = 2**31,
    nonfinite: str = "stop",
) -> TrainResult:
    """Train a classifier with a cosine LR schedule and write a resumable run folder.

    Args:
        model: a name of :data:`landscape.models.MODEL_NAMES` (built for the data, with
            ``model_kwargs``) or your own ``nn.Module`` (trained in place; its checkpoints
            then load with ``load_checkpoint(path, model=...)``).
        data: a name of :data:`landscape.data.DATA_NAMES` (loaded with the data options
            below), a :class:`~landscape.data.DataBundle`, a ``Dataset`` or an
            ``(inputs, targets)`` pair (see :func:`landscape.data.as_bundle`).
        optimizer: a name of ``optimizers.OPTIMIZER_NAMES``.
        epochs: number of epochs.
        batch_size: global batch size (split evenly across torchrun processes).
        lr: peak learning rate; it follows a cosine schedule to 0 over all steps.
        momentum: momentum of the (base) SGD optimizer.
        weight_decay: weight decay of the (base) optimizer.
        base_optimizer: base of the sharpness-aware optimizers (``"sgd"``, ``"adam"``,
            ``"adamw"``; ignored by plain ``sgd``/``adam``).
        hparams: the optimizer's own hyper-parameters (e.g. ``{"rho": 0.05}``); the
            others keep their defaults (``optimizers.optimizer_hparams(name)``).
        label_noise: fraction of training labels corrupted (built-in data only).
        n_per_class: training examples kept per class (built-in data only).
        val_fraction: fraction held out for validation (built-in data only).
        data_dir: folder of the CIFAR files.
        data_kwargs: further options of :func:`landscape.data.load_data`.
        model_kwargs: further options of :func:`landscape.models.build_model`.
        seed: seed of the initialisation, data order and data options.
        device: ``None``/"auto" (CUDA when available), "cpu", "cuda", "cuda:1", ...
        amp: bf16 autocast of the forward passes on CUDA (ignored on the CPU).
        save_every: write ``checkpoints/epoch_XXXX.pt`` every this many epochs (and at
            epoch 0).
        out: run folder; ``None`` writes nothing (and cannot resume).
        resume: continue the run in ``out`` if there is one (its configuration must
            match); ``False`` deletes its checkpoints and starts over.
        eval_batch_size: batch size of the per-epoch evaluation.
        progress: tqdm progress bars (``None``: only on a terminal).
        stop_after_epoch: stop after this epoch as if the process had been killed (for
            time-sliced jobs); call again to continue. ``0`` evaluates and saves the
            initialisation only; an epoch already reached trains nothing more.
        augment: the standard CIFAR augmentation of image batches (random 4-pixel-padded
            crop and horizontal flip, seeded; :func:`random_crop_flip`).
        max_device_bytes: on CUDA, a tensor training set up to this size is moved to the
            GPU once and batches are indexed there.
        nonfinite: what a non-finite loss (of a training batch, or of the evaluation
            after an epoch) does: ``"stop"`` (default) raises :class:`NonFiniteLoss` at
            once, before anything of the non-finite weights is saved; ``"continue"``
            logs a warning (once) and trains on.

    Returns:
        A :class:`TrainResult`.

    Raises:
        ValueError: bad names or values, ``out`` holding a different run, or an ``out``
            that cannot be written (a file, below a file, a read-only place; checked
            before any work).
        NonFiniteLoss: a non-finite loss with ``nonfinite="stop"``.
    """
    args = dict(locals())  # this call's arguments by name (the configuration, the options)
    _check_train_arguments(
        epochs,
        batch_size,
        save_every,
        lr,
        weight_decay,
        nonfinite,
        out,
        momentum=momentum,
        seed=seed,
    )
    _check_run_options(eval_batch_size, stop_after_epoch)
    full_hparams = _resolve_hparams(optimizer, hparams)
    bundle = _train_data(
        data, augment, data_dir, seed, label_noise, n_per_class, val_fraction, data_kwargs
    )
    mspec = _model_spec_of(model, bundle, model_kwargs)
    config = _run_config(args, mspec, bundle, full_hparams)
    ctx = init_distributed(device=device)
    try:
        if ctx.world_size > 1 and batch_size % ctx.world_size:
            raise ValueError(
                f"Invalid batch_size: {batch_size} is not divisible by the {ctx.world_size} "
                "processes"
            )
        config["world_size"] = ctx.world_size
        with _rng_scope(ctx.device):
            return _train(model, mspec, bundle, config, ctx, _run_options(args))
    finally:
        cleanup_distributed(ctx)


def _check_run_options(eval_batch_size: int, stop_after_epoch: int | None) -> None:
    """Refuse an evaluation batch below 1 and a negative or fractional ``stop_after_epoch``."""
    if int(eval_batch_size) < 1:
        raise ValueError(f"Invalid eval_batch_size: {eval_batch_size} (at least 1)")
    if stop_after_epoch is not None and (
        not _is_integer(stop_after_epoch) or int(stop_after_epoch) < 0
    ):
        raise ValueError(f"Invalid stop_after_epoch: {stop_after_epoch} (an epoch >= 0)")


def _is_integer(value: Any) -> bool:
    """Whether ``value`` is a whole number (``1.5`` epochs was read as 1)."""
    try:
        return float(value) == int(value)
    except (TypeError, ValueError, OverflowError):
        return False


def _check_train_arguments(
    epochs: int,
    batch_size: int,
    save_every: int,
    lr: float,
    weight_decay: float,
    nonfinite: str,
    out: str | Path | None,
    *,
    momentum: float = 0.0,
    seed: int = 0,
) -> None:
    """Refuse bad numbers, an unknown ``nonfinite`` mode or an ``out`` that cannot be written."""
    # (a negative seed failed deep in numpy: "expected non-negative integer")
    if isinstance(seed, bool) or not _is_integer(seed) or int(seed) < 0:
        raise ValueError(f"Invalid seed: {seed} (an integer >= 0)")
    for pname, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not _is_integer(value) or int(value) < 1:
            raise ValueError(f"Invalid {pname}: {value} (at least 1)")
    if not _is_integer(save_every) or int(save_every) < 1:
        raise ValueError(f"Invalid save_every: {save_every} (at least 1)")
    # ``not 0 < x`` and ``math.isfinite``: NaN and inf are refused too (they would train
    # a step, then stop at a non-finite loss with the advice to lower the learning rate).
    if not (0 < lr and math.isfinite(lr)):
        raise ValueError(f"Invalid lr: {lr}")
    for pname, value in (("momentum", momentum), ("weight_decay", weight_decay)):
        if not (0 <= value and math.isfinite(value)):
            raise ValueError(f"Invalid {pname}: {value}")
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"Invalid nonfinite: {nonfinite!r} (expected 'stop' or 'continue')")
    if out is not None:
        check_output(out, folder=True)


def _train_data(
    data: str | DataBundle | Any,
    augment: bool,
    data_dir: str | None,
    seed: int,
    label_noise: float,
    n_per_class: int | None,
    val_fraction: float,
    data_kwargs: Mapping[str, Any] | None,
) -> DataBundle:
    """The data to train on: a built-in dataset by name (with its options) or the user's."""
    if isinstance(data, str):
        bundle = load_data(
            data,
            data_dir=data_dir,
            seed=seed,
            label_noise=label_noise,
            n_per_class=n_per_class,
            val_fraction=val_fraction,
            **dict(data_kwargs or {}),
        )
    else:
        if label_noise or n_per_class or val_fraction or data_kwargs:
            raise ValueError(
                "Invalid data options: label_noise, n_per_class, val_fraction and "
                "data_kwargs apply to built-in dataset names only"
            )
        bundle = as_bundle(data)
    if augment and len(bundle.input_shape) != 3:
        raise ValueError(
            f"Invalid augment: random crop and flip need images (C, H, W), not inputs of "
            f"shape {bundle.input_shape}"
        )
    return bundle


def _model_spec_of(
    model: Any, bundle: DataBundle, model_kwargs: Mapping[str, Any] | None
) -> dict[str, Any] | None:
    """The spec of a built-in model (by name, for the data); None for the user's module."""
    if isinstance(model, str):
        spec = model_spec(model, bundle.input_shape, bundle.num_classes, **dict(model_kwargs or {}))
        with torch.device("meta"):  # a bad option refused before the run folder is made
            build_model(**spec)
        return spec
    if isinstance(model, nn.Module):
        if model_kwargs:
            raise ValueError("Invalid model_kwargs: they apply to built-in model names only")
        return None
    raise ValueError(f"Invalid model: expected a name or an nn.Module, got {model!r}")


def _run_config(
    args: Mapping[str, Any],
    mspec: dict[str, Any] | None,
    bundle: DataBundle,
    full_hparams: Mapping[str, Any],
) -> dict[str, Any]:
    """The run's configuration (``config.json``) from :func:`train`'s arguments by name."""
    opt_hparams = {
        "lr": float(args["lr"]),
        "momentum": float(args["momentum"]),
        "weight_decay": float(args["weight_decay"]),
        "base": args["base_optimizer"],
        **full_hparams,
    }
    return _json_ready(
        {
            "model": mspec,
            "data": bundle.spec,
            "optimizer": args["optimizer"],
            "hparams": opt_hparams,
            "epochs": int(args["epochs"]),
            "batch_size": int(args["batch_size"]),
            "seed": int(args["seed"]),
            "amp": bool(args["amp"]),
            "augment": bool(args["augment"]),
            "save_every": int(args["save_every"]),
            "version": __version__,
        }
    )


def _run_options(args: Mapping[str, Any]) -> dict[str, Any]:
    """How :func:`_train` runs (not part of the configuration), from :func:`train`'s arguments."""
    return {
        "out": args["out"],
        "resume": args["resume"],
        "eval_batch_size": int(args["eval_batch_size"]),
        "progress": args["progress"],
        "stop_after_epoch": args["stop_after_epoch"],
        "max_device_bytes": int(args["max_device_bytes"]),
        "nonfinite": args["nonfinite"],
    }


def _train(
    model_in: str | nn.Module,
    mspec: dict[str, Any] | None,
    bundle: DataBundle,
    config: dict[str, Any],
    ctx: DistContext,
    opts: dict[str, Any],
) -> TrainResult:
    """Train in this process (rank 0 evaluates and writes files): :func:`train`'s stages."""
    epochs, stop_after = config["epochs"], opts["stop_after_epoch"]
    run_dir = None if opts["out"] is None else Path(opts["out"])
    use_amp = bool(config["amp"]) and ctx.device.type == "cuda"
    if config["amp"] and not use_amp:
        log.warning(
            "amp: bf16 autocast applies on CUDA only; training in float32 on %s", ctx.device
        )
    resume_path = _prepare_run_dir(run_dir, config, opts["resume"], ctx)
    _seed_all(config["seed"])
    run = _Trainer(model_in, mspec, bundle, config, ctx, opts, run_dir, use_amp)
    if run_dir is not None and ctx.is_main:
        _write_config(run_dir, config)
    start_epoch = run.start(resume_path)
    if start_epoch >= epochs and resume_path is not None and run_dir is not None and ctx.is_main:
        _restore_final(run_dir, resume_path)
    train_ds = _train_set_on_device(bundle.train, ctx.device, opts["max_device_bytes"])

    completed = start_epoch >= epochs
    epoch_bar = tqdm(
        range(start_epoch + 1, epochs + 1),
        desc="epochs",
        unit="epoch",
        disable=run.disable,
        initial=start_epoch,
        total=epochs,
    )
    for epoch in epoch_bar:
        if stop_after is not None and start_epoch >= stop_after:
            break  # (stop_after_epoch=0: the initialisation only)
        t_epoch = time.perf_counter()
        stats = run.train_epoch(epoch, train_ds)
        if ctx.world_size > 1:
            _sync_buffers(run.net_module)
        run.end_epoch(epoch, stats, t_epoch, epoch_bar)
        if epoch == epochs:
            completed = True
        if stop_after is not None and epoch >= stop_after and epoch < epochs:
            break
    epoch_bar.close()

    if start_epoch >= epochs and ctx.is_main and run_dir is not None:
        log.info("%s: already complete (%d epochs)", run_dir, epochs)
    run.net_module.eval()
    final = None if run_dir is None else run_dir / "final.pt"
    return TrainResult(
        model=run.net_module,
        metrics=run.metrics,
        data=bundle,
        run_dir=run_dir,
        final_checkpoint=final if (final is not None and completed) else None,
        resumed_from=None if resume_path is None else start_epoch,
        completed=completed,
        config=copy.deepcopy(config),
        rank=ctx.rank,
    )


def _prepare_run_dir(
    run_dir: Path | None, config: Mapping[str, Any], resume: bool, ctx: DistContext
) -> Path | None:
    """Check (or clear) the run folder; the checkpoint to resume from.

    Rank 0 decides, every rank follows. The config is written by :func:`_write_config`
    once the model and the optimizer are built: a bad option refused there leaves no
    ``config.json`` behind, so the corrected command is not taken for another run.
    """
    resume_path: Path | None = None
    if run_dir is not None and ctx.is_main:
        if resume:
            _check_config(run_dir, config)
            resume_path = _latest_resumable(run_dir)
        else:
            _clear_run(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
    resume_path = broadcast_object(resume_path, ctx)
    barrier(ctx)
    return resume_path


def _restore_final(run_dir: Path, resume_path: Path) -> None:
    """Write a missing ``final.pt`` of a complete run from its last epoch checkpoint.

    A run stopped (killed) between writing the last epoch's checkpoint and ``final.pt``
    resumes at its last epoch with nothing left to train: ``final.pt`` is that checkpoint.
    """
    final = run_dir / "final.pt"
    if final.is_file() or resume_path == final:
        return
    data = resume_path.read_bytes()
    write_atomically(final, lambda fh: fh.write(data), binary=True)
    log.info("%s: final.pt written from %s", run_dir, resume_path.name)


def _write_config(run_dir: Path, config: Mapping[str, Any]) -> None:
    """Write the run's ``config.json`` (what a resumed run is compared with)."""
    (run_dir / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def _build_net(
    model_in: str | nn.Module, mspec: dict[str, Any] | None, ctx: DistContext
) -> tuple[nn.Module, nn.Module]:
    """The model on the device (built from its spec for a name), and what trains it (DDP)."""
    if isinstance(model_in, str):
        assert mspec is not None
        spec = dict(mspec)
        net_module = build_model(spec.pop("name"), **spec)
    else:
        net_module = model_in
    net_module.to(ctx.device)
    if ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel as DDP

        dev = ctx.device
        return net_module, DDP(net_module, device_ids=[dev] if dev.type == "cuda" else None)
    return net_module, net_module


def _optimizer_of(
    config: Mapping[str, Any], net_module: nn.Module, net: nn.Module
) -> torch.optim.Optimizer:
    """The configured optimizer of ``net_module``'s parameters (``net`` for its closures)."""
    hp = dict(config["hparams"])
    return _build_optimizer(
        config["optimizer"],
        net_module.parameters(),
        model=net,
        base=hp.pop("base"),
        lr=hp.pop("lr"),
        momentum=hp.pop("momentum"),
        weight_decay=hp.pop("weight_decay"),
        **hp,
    )


def _evaluators(
    net_module: nn.Module, bundle: DataBundle, ctx: DistContext, batch_size: int
) -> dict[str, Any]:
    """The objective of each split evaluated after every epoch (rank 0 only; none elsewhere)."""
    if not ctx.is_main:
        return {}
    from landscape.objective import Objective

    splits = {"train": bundle.train, "val": bundle.val, "test": bundle.test}
    if bundle.clean_targets is not None:
        splits["train_clean"] = bundle.clean_train()
    return {
        k: Objective(net_module, ds, device=ctx.device, batch_size=batch_size)
        for k, ds in splits.items()
        if ds is not None
    }


def _train_set_on_device(train_ds: Any, dev: torch.device, max_bytes: int) -> Any:
    """On CUDA, a small enough tensor training set moved to the GPU once (else as given)."""
    if dev.type == "cuda" and isinstance(train_ds, TensorDataset):
        nbytes = sum(t.numel() * t.element_size() for t in train_ds.tensors)
        if nbytes <= max_bytes:  # index on the GPU, no host copies per step
            return TensorDataset(*(t.to(dev) for t in train_ds.tensors))
    return train_ds


@dataclass
class _EpochStats:
    """What the training steps of an epoch saw (sums over this rank's batches)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    seen: int
    steps: int


class _Trainer:
    """One process's run: model, optimizer, schedule, evaluation, checkpoints and metrics.

    Built in the order the seeded RNGs are drawn from (model, optimizer, data order), so
    that a resumed run continues bit-identically.
    """

    def __init__(
        self,
        model_in: str | nn.Module,
        mspec: dict[str, Any] | None,
        bundle: DataBundle,
        config: dict[str, Any],
        ctx: DistContext,
        opts: Mapping[str, Any],
        run_dir: Path | None,
        use_amp: bool,
    ) -> None:
        """Build the model, optimizer, LR schedule, generators and evaluators."""
        self.mspec, self.bundle, self.config, self.ctx = mspec, bundle, config, ctx
        self.run_dir, self.use_amp, self.dev = run_dir, use_amp, ctx.device
        seed = config["seed"]
        self.net_module, self.net = _build_net(model_in, mspec, ctx)
        self.opt = _optimizer_of(config, self.net_module, self.net)
        self.n_train = len(bundle.train)  # type: ignore[arg-type]
        self.data_gen = torch.Generator().manual_seed(seed)
        steps_per_epoch = len(
            _batches_of_epoch(self.n_train, config["batch_size"], self.data_gen, ctx)
        )
        self.data_gen.manual_seed(seed)
        self.aug_gen = torch.Generator().manual_seed(seed + 7919)
        self.gens = {"data": self.data_gen, "augment": self.aug_gen}
        total_steps = steps_per_epoch * config["epochs"]
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda step: cosine_factor(step, total_steps)
        )
        self.evals = _evaluators(self.net_module, bundle, ctx, opts["eval_batch_size"])
        self.written: list[Path] = []  # the checkpoints this run folder holds, newest last
        self.metrics: list[dict[str, Any]] = []
        self.elapsed0 = 0.0
        self.t_start = 0.0  # (start() sets it)
        show = opts["progress"]
        self.disable = (None if show is None else not show) if ctx.is_main else True
        self.stop_nonfinite = opts["nonfinite"] == "stop"
        self.warned_nonfinite = False

    # ---- evaluation and checkpoints ----------------------------------------------------
    def evaluate(self, epoch: int, extra: Mapping[str, Any]) -> dict[str, Any]:
        """The metrics row of an epoch: loss (and accuracy) of each split, the LR, ``extra``."""
        row: dict[str, Any] = {"epoch": epoch}
        for split, obj in self.evals.items():
            res = obj.evaluate()
            row[f"{split}_loss"] = res["loss"]
            if "acc" in res:
                row[f"{split}_acc"] = res["acc"]
        row["lr"] = float(self.opt.param_groups[0]["lr"])
        row.update(extra)
        return row

    def save(self, path: Path, epoch: int, row: Mapping[str, Any], elapsed: float) -> None:
        """Write a checkpoint with everything resuming needs (optimizer, schedule, RNGs)."""
        config = self.config
        state = {
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "rng": _rng_state(self.dev, self.gens),
            "elapsed": float(elapsed),
        }
        meta = {
            "optimizer": config["optimizer"],
            "hparams": config["hparams"],
            "seed": config["seed"],
            "epoch": epoch,
            "metrics": dict(row),
            "epochs": config["epochs"],
        }
        save_checkpoint(
            path,
            self.net_module,
            model_spec=self.mspec,
            data_spec=self.bundle.spec,
            meta=meta,
            training_state=state,
        )
        self.written.append(path)

    def nonfinite(self, epoch: int, step: int | None, steps: int, value: Any) -> None:
        """Stop (raise) or warn once about a non-finite loss."""
        value = float(value)
        if self.stop_nonfinite:
            last = self.written[-1] if self.written else None
            raise NonFiniteLoss(epoch, step, steps, value, self.run_dir, last)
        if not self.warned_nonfinite:
            where = f"step {step} of epoch {epoch}" if step else f"the evaluation of epoch {epoch}"
            log.warning(
                "non-finite training loss (%s) at %s; training on (nonfinite='continue')",
                value,
                where,
            )
            self.warned_nonfinite = True

    # ---- start or resume ---------------------------------------------------------------
    def start(self, resume_path: Path | None) -> int:
        """Resume from ``resume_path``, or evaluate (and save) epoch 0; the epoch reached."""
        ctx, run_dir = self.ctx, self.run_dir
        start_epoch = 0
        self.t_start = time.perf_counter()
        if resume_path is not None:
            start_epoch = self._resume(resume_path)
        elif ctx.is_main:
            row = self.evaluate(0, {"time": 0.0, "epoch_time": 0.0})
            self.metrics.append(row)
            if run_dir is not None:
                _write_metrics(run_dir / "metrics.jsonl", self.metrics)
                self.save(run_dir / "checkpoints" / "epoch_0000.pt", 0, row, 0.0)
        if ctx.is_main and run_dir is not None and resume_path is not None:
            _write_metrics(run_dir / "metrics.jsonl", self.metrics)
        barrier(ctx)
        return start_epoch

    def _resume(self, resume_path: Path) -> int:
        """Load the model, optimizer, schedule and RNG states of a checkpoint; its epoch."""
        ck = read_checkpoint(resume_path, map_location="cpu")
        if not isinstance(ck, Mapping) or "training_state" not in ck:
            raise ValueError(f"{resume_path}: has no training state to resume from")
        load_state_dict_strict(self.net_module, ck["state_dict"], resume_path)
        ts = ck["training_state"]
        self.opt.load_state_dict(ts["optimizer"])
        self.sched.load_state_dict(ts["scheduler"])
        _set_rng_state(ts["rng"], self.dev, self.gens)
        start_epoch = int(ck["meta"]["epoch"])
        self.elapsed0 = float(ts.get("elapsed", 0.0))
        if self.run_dir is not None and self.ctx.is_main:
            self.metrics = _read_metrics(self.run_dir / "metrics.jsonl", start_epoch)
        self.written.append(resume_path)
        log.info("resuming %s from epoch %d (%s)", self.run_dir, start_epoch, resume_path)
        return start_epoch

    # ---- an epoch ----------------------------------------------------------------------
    def training_step(
        self, x: torch.Tensor, y: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """One optimizer step on a batch: its loss and the correct predictions of its first pass."""
        first: dict[str, torch.Tensor] = {}

        def closure(part: Any = None) -> torch.Tensor:
            self.opt.zero_grad(set_to_none=True)
            xb, yb = (x, y) if part is None else (x[part], y[part])
            with self._autocast():
                outputs = self.net(xb)
            loss = F.cross_entropy(outputs.float(), yb)
            if part is None and "correct" not in first:
                first["correct"] = (outputs.detach().argmax(-1) == yb).sum()
            loss.backward()
            return loss

        loss = self.opt.step(closure)
        self.sched.step()
        return loss, first.get("correct")

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """bf16 autocast of the forward pass with ``amp`` on CUDA, else nothing."""
        if self.use_amp:
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_epoch(self, epoch: int, train_ds: Any) -> _EpochStats:
        """The training steps of one epoch over this rank's share of the seeded order."""
        dev, ctx = self.dev, self.ctx
        self.net.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
        correct = torch.zeros((), dtype=torch.float64, device=dev)
        seen = 0
        batches = _batches_of_epoch(self.n_train, self.config["batch_size"], self.data_gen, ctx)
        bar = tqdm(batches, desc=f"epoch {epoch}", leave=False, unit="batch", disable=self.disable)
        for i, idx in enumerate(bar):
            x, y = take_batch(train_ds, idx)
            x = x.to(dev, non_blocking=True).float()
            y = y.to(dev, non_blocking=True)
            if self.config["augment"]:
                x = random_crop_flip(x, self.aug_gen)
            loss, first_correct = self.training_step(x, y)
            n_b = len(idx)
            if loss is not None:
                loss_sum += loss.detach().double() * n_b
                check = self.stop_nonfinite or not self.warned_nonfinite
                if check and not _all_finite(loss, ctx):
                    self.nonfinite(epoch, i + 1, len(batches), loss.detach().float().max())
            if first_correct is not None:
                correct += first_correct.double()
            seen += n_b
            if not self.disable and (i % 10 == 0 or i == len(batches) - 1):
                bar.set_postfix(
                    loss=f"{float(loss_sum) / seen:.4f}", acc=f"{100 * float(correct) / seen:.1f}"
                )
        bar.close()
        return _EpochStats(loss_sum, correct, seen, len(batches))

    def end_epoch(self, epoch: int, stats: _EpochStats, t_epoch: float, epoch_bar: Any) -> None:
        """Evaluate (rank 0), stop on a non-finite loss (every rank), log, write and save."""
        ctx, run_dir, epochs = self.ctx, self.run_dir, self.config["epochs"]
        row: dict[str, Any] = {}
        if ctx.is_main:
            t_trained = time.perf_counter()
            extra = {
                "batch_loss": float(stats.loss_sum) / max(stats.seen, 1),
                "batch_acc": 100.0 * float(stats.correct) / max(stats.seen, 1),
            }
            row = self.evaluate(epoch, extra)
            row["epoch_time"] = t_trained - t_epoch  # the training steps of this epoch
            row["time"] = self.elapsed0 + time.perf_counter() - self.t_start  # of the run
        # (rank 0 evaluates; every rank learns the verdict, so all stop together)
        bad = row["train_loss"] if ctx.is_main and not math.isfinite(row["train_loss"]) else None
        bad = broadcast_object(bad, ctx)
        if bad is not None:
            self.nonfinite(epoch, None, stats.steps, bad)
        if ctx.is_main:
            self.metrics.append(row)
            epoch_bar.set_postfix(
                loss=f"{row['train_loss']:.4f}", acc=f"{row.get('train_acc', float('nan')):.1f}"
            )
            log.info(
                "epoch %d/%d: %s",
                epoch,
                epochs,
                ", ".join(f"{k}={v:.4g}" for k, v in row.items() if k != "epoch"),
            )
            if run_dir is not None:
                _write_metrics(run_dir / "metrics.jsonl", self.metrics)
                if epoch % self.config["save_every"] == 0:
                    path = run_dir / "checkpoints" / f"epoch_{epoch:04d}.pt"
                    self.save(path, epoch, row, row["time"])
                if epoch == epochs:
                    self.save(run_dir / "final.pt", epoch, row, row["time"])
        barrier(ctx)
