import pytest
import torch

from landscape._device import resolve_device
from landscape.distributed import (
    DistContext,
    all_gather_object,
    all_reduce,
    barrier,
    broadcast_object,
    cleanup_distributed,
    init_distributed,
    is_main_process,
    shard,
)


def test_single_process_context(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_distributed(device="cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed) == (0, 1, True, False)
    assert ctx.device == torch.device("cpu")
    assert shard(list(range(5)), ctx) == [0, 1, 2, 3, 4]
    assert all_gather_object({"a": 1}, ctx) == [{"a": 1}]
    assert broadcast_object(3, ctx) == 3
    barrier(ctx)
    cleanup_distributed(ctx)


def test_shard_is_a_round_robin_partition():
    items = list(range(11))
    parts = [shard(items, DistContext(rank=r, world_size=3)) for r in range(3)]
    assert parts[0] == [0, 3, 6, 9]
    assert sorted(x for part in parts for x in part) == items


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    with pytest.raises(ValueError, match="Invalid device"):
        resolve_device("not-a-device")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda")


def test_single_process_all_reduce_and_main(monkeypatch):
    ctx = DistContext()
    a, b = torch.ones(2, requires_grad=True), torch.zeros((), dtype=torch.float64)
    out = all_reduce([a, b], ctx)
    assert [t.dtype for t in out] == [torch.float32, torch.float64]
    assert not out[0].requires_grad and out[0].data_ptr() != a.data_ptr()
    assert all_reduce([a], ctx, op="max")[0].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match="Invalid op"):
        all_reduce([a], ctx, op="mean")
    monkeypatch.delenv("RANK", raising=False)
    assert is_main_process()
    monkeypatch.setenv("RANK", "1")  # under torchrun before the process group exists
    assert not is_main_process()
