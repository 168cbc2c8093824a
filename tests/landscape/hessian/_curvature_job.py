"""Subprocess job: the curvature of a tiny problem, under torchrun or in one process.

Usage: torchrun --nproc_per_node=2 _curvature_job.py OUT_DIR

Process 0 writes ``OUT_DIR/results.json`` (and the summary's own ``summary.json``); the
test computes :func:`run_all` in one process and compares.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.distributed import (
    all_gather_object,
    cleanup_distributed,
    init_distributed,
    is_main_process,
)
from landscape.hessian.summary import hessian_summary
from landscape.metrics import METRICS, compute_metrics
from landscape.objective import Objective
from landscape.surface import compute_surface

# Small settings for every registered metric.
OPTIONS: dict[str, dict[str, Any]] = {
    "lambda_max": {"tol": 1e-8, "max_products": 30},
    "trace": {"num_products": 12},
    "normalized_trace": {"num_products": 12},
    "sam_sharpness": {"steps": 2},
    "adaptive_sharpness": {"steps": 2},
    "first_order_flatness": {"steps": 2},
    "average_sharpness": {"num_samples": 4},
    "eps_sharpness": {"max_iter": 3},
    "grad_cosine": {"rho": 0.01},
}
TRACE_METHODS = ("hutchpp", "block", "fd", "ggn")


def problem(dtype: torch.dtype = torch.float64) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """An MLP with eval-mode BatchNorm and 42 samples (batches of 8: 6 batches, 5 full)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(42, 6, generator=gen)
    y = torch.randint(0, 3, (42,), generator=gen)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3))
    with torch.no_grad():
        model[1].running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
        model[1].running_var.copy_(torch.rand(8, generator=gen) + 0.5)
    return model.to(dtype), (x.to(dtype), y)


def run_all(out_dir: Path | None = None) -> dict[str, Any]:
    """Every curvature result of the tiny problem (JSON data)."""
    torch.set_num_threads(1)
    model, data = problem()
    common = {"progress": False, "batch_size": 8}
    res: dict[str, Any] = {}
    ctx = init_distributed(device="cpu")  # the process group joined by main(), if any
    held = Objective(model, data, batch_size=8, dist=ctx)
    res["batches"] = all_gather_object(len(list(held.batches())), ctx)
    res["n_samples"] = held.n_samples
    if ctx.distributed:  # what cannot be shared is refused, on every process
        res["refused"] = []
        for call in (held.loss, lambda: compute_surface(held, None, x="-1:1:2", progress=False)):
            try:
                call()
            except ValueError as exc:
                res["refused"].append(str(exc))
    res["summary"] = hessian_summary(
        model,
        data,
        top_k=2,
        tol=1e-8,
        trace=True,
        trace_products=12,
        density=True,
        density_runs=2,
        density_steps=8,
        out=None if out_dir is None else out_dir / "summary.json",
        **common,
    )
    # One batch: process 1 holds none (the kept graph on process 0, zeros on process 1).
    res["one_batch"] = hessian_summary(
        model, data, top_k=2, tol=1e-8, method="auto", batch_size=64, progress=False
    )
    # A float32 model: the float64 twin of this process's batches; finite differences.
    model32, data32 = problem(torch.float32)
    res["twin_fd"] = hessian_summary(
        model32, data32, top_k=1, tol=1e-6, dtype=torch.float64, method="fd", **common
    )
    metrics = compute_metrics(model, data, list(METRICS), per_metric=OPTIONS, **common)
    res["metrics"] = {name: r.to_dict() for name, r in metrics.items()}
    # Streamed data (nothing cached): every pass reads this process's batches again.
    streamed = Objective(model, data, batch_size=8, max_cache_bytes=0, dist=ctx)
    res["streamed"] = hessian_summary(streamed, top_k=1, tol=1e-8, progress=False)
    res["streamed_metrics"] = {
        name: r.to_dict()
        for name, r in compute_metrics(streamed, None, ["grad_norm", "loss", "accuracy"]).items()
    }
    for method in TRACE_METHODS:
        r = compute_metrics(model, data, ["trace"], trace_method=method, num_products=12, **common)
        res[f"trace_{method}"] = r["trace"].to_dict()
    return res


def main() -> None:
    out_dir = Path(sys.argv[1])
    # Joined once here: every call below finds the process group (and leaves it).
    ctx = init_distributed(device="cpu")
    try:
        res = run_all(out_dir)
    finally:
        cleanup_distributed(ctx)
    if is_main_process():
        (out_dir / "results.json").write_text(json.dumps(res))


if __name__ == "__main__":
    main()
