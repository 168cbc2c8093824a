"""One call for the usual Hessian questions: top eigenvalues, trace and spectral density."""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape.hessian.density.slq import slq_density
from landscape.hessian.eigen.blocks import layer_eigenvalues
from landscape.hessian.eigen.lanczos import lanczos_eigen
from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.hessian.trace.select import TRACE_METHODS, estimate_trace
from landscape.objective import Objective

__all__ = ["TRACE_METHODS", "format_summary", "hessian_summary", "hessian_summary_checkpoint"]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")


def hessian_summary(
    model: nn.Module | Objective,
    data: Any = None,
    *,
    loss_fn: Any = None,
    top_k: int = 5,
    which: str = "largest",
    tol: float = 1e-3,
    criterion: str = "residual",
    max_products: int = 100,
    trace: bool = False,
    trace_method: str = "hutchpp",
    trace_products: int = 60,
    target_rel_stderr: float | None = None,
    per_layer: bool = False,
    density: bool = False,
    density_runs: int = 5,
    density_steps: int = 60,
    method: str = "exact",
    dtype: torch.dtype | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Top-k eigenvalues, optionally the trace and the spectral density, as plain data.

    Args:
        model: the network (with ``data``), or a ready :class:`Objective`.
        data: anything :class:`Objective` accepts.
        loss_fn: batch-mean loss (default cross-entropy).
        top_k: eigenpairs by :func:`lanczos_eigen` (0 skips them).
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"``.
        tol: relative tolerance of the eigenpairs.
        criterion: what ``tol`` bounds: ``"residual"`` ``‖Hv − λv‖`` or ``"eigenvalue"``
            (the eigenvalue's error estimate; see :func:`lanczos_eigen`).
        max_products: cap on products for the eigenpairs.
        trace: estimate ``Tr(H)``.
        trace_method: ``"hutchpp"`` (Hutch++, Rademacher sketch), ``"hutchinson"``,
            ``"block"`` (:func:`block_trace`, per layer), ``"fd"`` (CR-SAM's loss form) or
            ``"ggn"`` (:func:`ggn_trace`: Gauss–Newton part exact, residual blocks probed).
        trace_products: products (probes for ``"fd"``) for the trace.
        target_rel_stderr: stop the trace early at this relative standard error
            (``hutchinson``, ``hutchpp``, ``fd``, ``ggn``).
        per_layer: also report per-parameter-tensor traces (Hutchinson, same products)
            when ``trace``, and, when ``top_k > 0``, the top eigenvalue of each layer's
            diagonal block by :func:`layer_eigenvalues` (one per module, ``k=1``, the same
            ``which``, ``tol``, ``criterion``, ``seed`` and ``max_products`` per block)
            under ``out["eigen"]["layers"]``; their block products count in
            ``out["products"]`` (and in ``out["eigen"]["layer_products"]``).
        density: spectral density by :func:`slq_density`.
        density_runs: SLQ runs.
        density_steps: Lanczos steps per run.
        method: Hessian-vector products: ``"exact"``, ``"forward"``, ``"fd"`` or ``"auto"``
            (the one used is reported in ``settings["method_used"]``).
        dtype: e.g. ``torch.float64``.
        batch_size: evaluation batch size (one batch keeps the first-order graph).
        max_samples: use only the first ``max_samples`` samples.
        device: device for a model built here.
        seed: seed of every random vector.
        return_eigenvectors: include the eigenvectors (tensor lists, not JSON) under
            ``"eigenvectors"``.
        progress: progress bars (``None``: only on a terminal).

    Returns:
        ``{"dim", "n_samples", "param_names", "eigen", "trace", "density", "products",
        "seconds", "settings"}`` (absent parts are ``None``); JSON-serialisable unless
        ``return_eigenvectors``.
    """
    if trace_method not in TRACE_METHODS:
        raise ValueError(
            f"Invalid trace_method: {trace_method!r} (expected one of {TRACE_METHODS})"
        )
    if top_k < 0:
        raise ValueError(f"Invalid top_k: {top_k}")
    if isinstance(model, Objective):
        obj = model
    else:
        if data is None:
            raise ValueError("Invalid data: None; pass the data to measure on")
        if device is not None:
            from landscape._device import resolve_device

            model = model.to(resolve_device(device))
        obj = Objective(model, data, loss_fn, batch_size=batch_size, max_samples=max_samples)
    start = time.perf_counter()
    out: dict[str, Any] = {"eigen": None, "trace": None, "density": None}
    with HessianOperator(obj, method=method, dtype=dtype) as op:
        out.update({"dim": op.dim, "n_samples": obj.n_samples, "param_names": op.param_names})
        if top_k:
            res = lanczos_eigen(
                op,
                k=min(top_k, op.dim),
                which=which,
                tol=tol,
                criterion=criterion,
                max_products=max(max_products, top_k),
                seed=seed,
                progress=progress,
            )
            out["eigen"] = res.to_dict()
            if return_eigenvectors:
                out["eigenvectors"] = res.eigenvectors
            if per_layer:
                lay = layer_eigenvalues(
                    op,
                    k=1,
                    which=which,
                    tol=tol,
                    max_products=max_products,
                    seed=seed,
                    criterion=criterion,
                    progress=progress,
                )
                out["eigen"]["layers"] = lay.to_dict()["layers"]
                out["eigen"]["layer_products"] = lay.products
        if trace:
            tr = estimate_trace(
                op,
                trace_method,
                trace_products,
                target_rel_stderr,
                seed,
                per_block=per_layer and trace_method == "hutchinson",
                progress=progress,
            )
            out["trace"] = tr.to_dict()
            if per_layer and trace_method != "hutchinson":
                layers = hutchinson_trace(
                    op, trace_products, None, seed + 1, per_block=True, progress=progress
                )
                out["trace"]["layers"] = layers.to_dict()["blocks"]
            elif per_layer:
                out["trace"]["layers"] = out["trace"].pop("blocks")
        if density:
            out["density"] = slq_density(
                op, num_runs=density_runs, num_steps=density_steps, seed=seed, progress=progress
            ).to_dict()
        out["products"] = op.products
        method_used = op.method
    out["seconds"] = time.perf_counter() - start
    out["settings"] = {
        "top_k": top_k,
        "which": which,
        "tol": tol,
        "criterion": criterion,
        "max_products": max_products,
        "per_layer": per_layer,
        "trace_method": trace_method if trace else None,
        "trace_products": trace_products,
        "method": method,
        "method_used": method_used,
        "dtype": str(dtype or "native"),
        "seed": seed,
        "batch_size": obj.batch_size,
        "max_samples": max_samples,
    }
    return out


def hessian_summary_checkpoint(
    path: str | os.PathLike[str],
    *,
    split: str = "train",
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`hessian_summary` of a checkpoint on a split of its own data.

    Args:
        path: a checkpoint written by ``landscape train`` (see
            :func:`landscape.load_checkpoint`).
        split: ``"train"``, ``"val"`` or ``"test"``.
        device: device (default CUDA when available).
        **kwargs: passed to :func:`hessian_summary`.
    """
    from landscape._device import resolve_device
    from landscape.checkpoint import load_checkpoint

    if split not in _SPLITS:
        raise ValueError(f"Invalid split: {split!r} (expected one of {_SPLITS})")
    if not Path(path).is_file():
        raise FileNotFoundError(f"no such checkpoint: {os.fspath(path)}")
    dev = resolve_device(device)
    ckpt = load_checkpoint(path, map_location=dev)
    bundle = ckpt.load_data()
    data = getattr(bundle, split)
    if data is None:
        raise ValueError(f"Invalid split: the checkpoint's data has no {split!r} split")
    out = hessian_summary(ckpt.model.to(dev), data, device=dev, **kwargs)
    out["checkpoint"] = os.fspath(path)
    out["sha256"] = ckpt.sha256
    out["settings"]["split"] = split
    return out


def format_summary(summary: dict[str, Any]) -> str:
    """A short human-readable report of :func:`hessian_summary`'s result."""
    lines = []
    head = summary.get("checkpoint", "model")
    lines.append(f"{head}: {summary['dim']} parameters, {summary['n_samples']} samples")
    eig = summary.get("eigen")
    if eig:
        flag = "converged" if eig["converged"] else "NOT converged"
        lines.append(
            f"eigenvalues ({summary['settings']['which']}, {eig['products']} products, {flag}):"
        )
        for i, (v, r) in enumerate(zip(eig["eigenvalues"], eig["residuals"], strict=True)):
            lines.append(f"  λ{i + 1} = {v: .6g}   (residual {r:.1e})")
        layers = eig.get("layers")
        if layers:
            bad = sum(not d["converged"] for d in layers.values())
            lines.append(
                f"per-layer λ1 (diagonal blocks, {eig['layer_products']} block products"
                + (f", {bad} NOT converged" if bad else "")
                + "):"
            )
            for name, d in layers.items():
                flag = "" if d["converged"] else ", NOT converged"
                lines.append(
                    f"  {name:<32} {d['eigenvalues'][0]:< 13.6g} (residual "
                    f"{d['residuals'][0]:.1e}, {d['products']} products, dim {d['dim']}{flag})"
                )
    tr = summary.get("trace")
    if tr:
        lines.append(
            f"trace = {tr['value']:.6g} ± {tr['stderr']:.2g}  ({tr['method']}, "
            f"{tr['products']} products)"
        )
        for name, d in (tr.get("layers") or tr.get("blocks") or {}).items():
            lines.append(f"  {name:<32} {d['value']: .5g} ± {d['stderr']:.2g}")
    dens = summary.get("density")
    if dens:
        import numpy as np

        grid, rho = np.asarray(dens["grid"]), np.asarray(dens["density"])
        nodes, w = np.asarray(dens["nodes"]), np.asarray(dens["weights"])
        neg = float(w[nodes < 0].sum())
        lines.append(
            f"density: λmin ≈ {dens['lambda_min']:.4g}, λmax ≈ {dens['lambda_max']:.4g}, "
            f"mode at {grid[int(np.argmax(rho))]:.3g}, {100 * neg:.1f}% of the mass below 0 "
            f"({dens['num_runs']} runs × {dens['num_steps']} steps)"
        )
    lines.append(
        f"{summary.get('products', 0)} Hessian-vector products in {summary['seconds']:.1f} s"
    )
    return "\n".join(lines)
