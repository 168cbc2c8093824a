"""Process groups for ``torchrun``: one helper set for training, surfaces and curvature.

A single process (no ``torchrun``) is rank 0 of 1 and never initialises a process group,
so every caller can use the same code path with or without distribution.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

from landscape._device import resolve_device

__all__ = [
    "DistContext",
    "all_gather_object",
    "all_reduce",
    "barrier",
    "broadcast_object",
    "cleanup_distributed",
    "init_distributed",
    "is_main_process",
    "joined",
    "shard",
]

log = logging.getLogger(__name__)
T = TypeVar("T")
_TIMEOUT = timedelta(minutes=30)  # torch's default for gloo and for the store


@dataclass(frozen=True)
class DistContext:
    """Where this process stands in the job.

    Attributes:
        rank: global rank.
        world_size: number of processes.
        local_rank: rank on this node (selects the CUDA device).
        device: the device this process computes on.
        initialized_here: whether :func:`init_distributed` created the process group
            (and so :func:`cleanup_distributed` should destroy it).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that writes files and logs)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Whether more than one process takes part."""
        return self.world_size > 1


def init_distributed(
    backend: str | None = None, device: str | torch.device | None = None
) -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment.

    Without ``torchrun`` (no ``WORLD_SIZE`` > 1 in the environment) this returns a
    single-process context and initialises nothing. A process group the caller already
    joined (``torchrun``'s, or its own: ``mp.spawn``, ``init_method="tcp://..."``) is
    used as it is, with its rank and world size (and left joined by
    :func:`cleanup_distributed`); CUDA ranks then use ``cuda:LOCAL_RANK``, or
    ``cuda:RANK`` without ``LOCAL_RANK``.

    Raises:
        ValueError: ``WORLD_SIZE``, ``RANK`` or ``LOCAL_RANK`` is not an integer, or
            ``RANK`` is outside ``[0, WORLD_SIZE)`` (the rendezvous would wait for ever).

    Args:
        backend: ``"nccl"`` or ``"gloo"``; default ``nccl`` on CUDA, ``gloo`` on CPU.
        device: the device type to use (``None``/"auto": CUDA when available). Under
            torchrun, CUDA ranks use ``cuda:LOCAL_RANK``.
    """
    ready = dist.is_available() and dist.is_initialized()
    if ready:  # a group already joined (by torchrun's caller, mp.spawn...): its world
        world_size, rank = dist.get_world_size(), dist.get_rank()
        local = os.environ.get("LOCAL_RANK", "").strip()
        local_rank = int(local) if local.isdigit() else rank
    else:
        world_size, rank, local_rank = _torchrun_environment()
    dev = resolve_device(device)
    if dev.type == "cuda" and world_size > 1:
        dev = torch.device("cuda", local_rank % max(torch.cuda.device_count(), 1))
        torch.cuda.set_device(dev)
    if world_size <= 1:
        return DistContext(device=dev)
    if ready:
        return DistContext(rank, world_size, local_rank, dev, initialized_here=False)
    if backend is None:
        backend = "nccl" if dev.type == "cuda" else "gloo"
    _init_process_group(backend, rank, world_size)
    log.info("rank %d/%d joined the %s process group on %s", rank, world_size, backend, dev)
    return DistContext(rank, world_size, local_rank, dev, initialized_here=True)


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(
            f"Invalid {name}: {value!r} in the environment (torchrun sets it to an integer)"
        ) from None


def _torchrun_environment() -> tuple[int, int, int]:
    """``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK`` from the environment, checked.

    A rank outside ``[0, WORLD_SIZE)`` would wait for ever at the rendezvous: refused.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1:
        raise ValueError(f"Invalid WORLD_SIZE: {world_size} in the environment (at least 1)")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"Invalid RANK: {rank} in the environment (expected 0 to WORLD_SIZE - 1 = "
            f"{world_size - 1}); unset RANK and WORLD_SIZE outside torchrun"
        )
    if local_rank < 0:
        raise ValueError(f"Invalid LOCAL_RANK: {local_rank} in the environment (at least 0)")
    return world_size, rank, local_rank


_STORE: list[Any] = []  # the rendezvous store, kept for every group this process joins
_JOINS = itertools.count()


def _init_process_group(backend: str, rank: int, world_size: int) -> None:
    """Create the default process group on the rendezvous store, under a fresh prefix.

    The library joins and leaves the group once per call (:func:`joined`), and every rank
    calls in the same order, so the n-th group of each rank is the same group. Each gets
    its own key prefix on one store kept for the process: with torch's fixed prefix a
    group joined again read the addresses the last group left in the store, and a rank
    joining early connected to a peer that had not yet left (refused, or a hang).
    """
    if not _STORE:
        store, _, _ = next(dist.rendezvous("env://", rank, world_size, timeout=_TIMEOUT))
        store.set_timeout(_TIMEOUT)
        _STORE.append(store)
    prefix = f"landscape/{next(_JOINS)}"
    dist.init_process_group(
        backend=backend,
        store=dist.PrefixStore(prefix, _STORE[0]),
        rank=rank,
        world_size=world_size,
    )


def cleanup_distributed(ctx: DistContext) -> None:
    """Destroy the process group if :func:`init_distributed` created it."""
    if ctx.initialized_here and dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def joined(
    dist: DistContext | None = None, device: str | torch.device | None = None
) -> Iterator[DistContext]:
    """The context given, or one :func:`init_distributed` joins (and leaves at the end).

    Args:
        dist: a context the caller already holds (used as is, never cleaned up).
        device: the device type when joining (see :func:`init_distributed`).
    """
    if dist is not None:
        yield dist
        return
    ctx = init_distributed(device=device)
    try:
        yield ctx
    finally:
        cleanup_distributed(ctx)


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for a single process)."""
    if ctx.distributed:
        dist.barrier()


def shard(items: Sequence[T], ctx: DistContext) -> list[T]:
    """Return this rank's round-robin share of ``items`` (all of them for one process)."""
    return list(items[ctx.rank :: ctx.world_size])


def all_gather_object(obj: Any, ctx: DistContext) -> list[Any]:
    """Gather one picklable object from every rank, in rank order.

    Objects travel between the job's own processes only (never from files).
    """
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, ctx: DistContext, src: int = 0) -> Any:
    """Return ``obj`` as held by rank ``src`` on every rank."""
    if not ctx.distributed:
        return obj
    box = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def is_main_process() -> bool:
    """Whether this process is rank 0: of the process group, else of ``torchrun``'s ``RANK``.

    The one process that writes files and prints (True without ``torchrun``).
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


_REDUCE_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}


def all_reduce(tensors: Sequence[Tensor], ctx: DistContext, op: str = "sum") -> list[Tensor]:
    """``tensors`` summed (or maximised) over every rank, as new tensors.

    One collective per dtype: the tensors are flattened into one buffer (moved to this
    rank's CUDA device for ``nccl``). Every rank must call it with tensors of the same
    shapes and dtypes; a rank with nothing to add passes zeros. The results are the same
    bits on every rank. A single process gets detached copies of ``tensors``.

    Args:
        tensors: the partial results of this rank.
        ctx: the job (see :func:`init_distributed`).
        op: ``"sum"`` or ``"max"``.
    """
    if op not in _REDUCE_OPS:
        raise ValueError(f"Invalid op: {op!r} (expected one of {tuple(_REDUCE_OPS)})")
    tensors = [t.detach() for t in tensors]
    if not ctx.distributed or not tensors:
        return [t.clone() for t in tensors]
    nccl = dist.get_backend() == "nccl"
    out: list[Tensor | None] = [None] * len(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, t in enumerate(tensors):
        by_dtype.setdefault(t.dtype, []).append(i)
    for idx in by_dtype.values():
        where = (
            torch.device("cuda", torch.cuda.current_device()) if nccl else tensors[idx[0]].device
        )
        buffer = torch.cat([tensors[i].reshape(-1).to(where) for i in idx])
        dist.all_reduce(buffer, op=_REDUCE_OPS[op])
        offset = 0
        for i in idx:
            t = tensors[i]
            out[i] = buffer[offset : offset + t.numel()].view(t.shape).to(t.device)
            offset += t.numel()
    return [t for t in out if t is not None]
