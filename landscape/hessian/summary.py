"""One call for the usual Hessian questions: top eigenvalues, trace and spectral density.

A summary has up to three parts, computed in this order: ``"eigen"`` (the top eigenpairs
by :func:`~landscape.hessian.lanczos_eigen`), ``"trace"`` and ``"density"``. With ``out``
the summary so far is written to that JSON file (atomically) after each finished part,
with ``"complete": false`` until the last one; :func:`hessian_summary` overwrites an
existing file, :func:`hessian_summary_checkpoint` resumes from it.

``per_layer=True`` adds per-parameter-tensor traces (Hutchinson, the trace's products)
when ``trace``, and, when ``top_k > 0``, the top eigenvalue of each layer's diagonal
block by :func:`~landscape.hessian.layer_eigenvalues` (one per module, ``k=1``, the same
``which``, ``tol``, ``criterion``, ``seed`` and ``max_products`` per block) under
``out["eigen"]["layers"]``; their block products count in ``out["products"]`` (and in
``out["eigen"]["layer_products"]``).

A summary's ``parts`` holds, for each part asked for, the Hessian-vector ``products`` and
``seconds`` it took, the ``method_used`` and whether it was ``reused`` from an earlier
run's file; its ``products`` and ``seconds`` are the totals: this call's products and
wall time plus the reused parts' own (so a resumed summary reports what all of it cost).

Many processes (``dist``): each process reads its share of the batches (see
:class:`~landscape.objective.Objective`), products and gradients are summed over them,
and the summary is the same on every process (only process 0 writes ``out``). By
default these are ``torchrun``'s processes when run under it (the process group is
joined on ``device`` and left at the end), else this process alone; a ready
``Objective`` brings its own ``dist``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape._io import RESUME_ADVICE, differences, read_json_to_resume, write_atomically
from landscape.distributed import DistContext, broadcast_object, is_main_process, joined
from landscape.hessian._checks import check_integers
from landscape.hessian.density.slq import slq_density
from landscape.hessian.eigen.blocks import layer_eigenvalues
from landscape.hessian.eigen.lanczos import lanczos_eigen
from landscape.hessian.operator import HessianOperator
from landscape.hessian.trace.hutchinson import hutchinson_trace
from landscape.hessian.trace.select import TRACE_METHODS, estimate_trace
from landscape.objective import OBJECTIVE_OPTIONS, Objective, make_objective
from landscape.params import ParamSelection, as_selection
from landscape.user import UserCheckpoint, UserModel

__all__ = [
    "TRACE_METHODS",
    "SummaryInterrupted",
    "format_summary",
    "hessian_summary",
    "hessian_summary_checkpoint",
]

logger = logging.getLogger(__name__)

_SPLITS = ("train", "val", "test")
_PARTS = ("eigen", "trace", "density")


@dataclass(frozen=True)
class _RunOptions:
    """How :func:`_run` computes, beyond the settings that a summary file records."""

    dtype: torch.dtype | None = None
    return_eigenvectors: bool = False
    progress: bool | None = None
    basis_device: str | torch.device | None = None
    basis_dtype: torch.dtype | None = None

    @property
    def basis(self) -> dict[str, Any]:
        """The Krylov-basis options of the Lanczos runs, as keyword arguments."""
        return {"basis_device": self.basis_device, "basis_dtype": self.basis_dtype}

    @classmethod
    def of(cls, arguments: Mapping[str, Any]) -> _RunOptions:
        """The options among :func:`hessian_summary`'s ``arguments`` (by name)."""
        return cls(**{f.name: arguments[f.name] for f in fields(cls)})


class SummaryInterrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` of :func:`hessian_summary` writing to ``out``.

    It is a ``KeyboardInterrupt`` (code catching that still works) that says which parts
    of the summary are on disk; running the same :func:`hessian_summary_checkpoint` call
    again resumes from there.

    Attributes:
        saved: the finished parts ``out`` holds (``"eigen"``, ``"trace"``, ``"density"``).
        out: the file holding them.
    """

    def __init__(self, saved: list[str], out: Path) -> None:
        """Record what is saved; the message is the one the CLI prints."""
        self.saved, self.out = list(saved), out
        if saved:
            text = (
                f"interrupted: {', '.join(saved)} saved in {out}; "
                "run the same command again to resume"
            )
        else:
            text = "interrupted before the first part was finished: nothing saved"
        super().__init__(text)


def _check_options(
    trace_method: str,
    top_k: int,
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
    max_products: int = 1,
) -> None:
    check_integers(max_products=max_products)
    if max_products < 1:
        raise ValueError(f"Invalid max_products: {max_products} (must be >= 1)")
    if trace_method not in TRACE_METHODS:
        raise ValueError(
            f"Invalid trace_method: {trace_method!r} (expected one of {TRACE_METHODS})"
        )
    check_integers(top_k=top_k)
    if top_k < 0:
        raise ValueError(f"Invalid top_k: {top_k}")
    if basis_device is not None:
        try:
            where = torch.device(basis_device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"Invalid basis_device: {basis_device!r}") from exc
        if where.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"Invalid basis_device: {basis_device!r} (CUDA is not available on this machine)"
            )
    if basis_dtype is not None and not (
        isinstance(basis_dtype, torch.dtype) and basis_dtype.is_floating_point
    ):
        raise ValueError(f"Invalid basis_dtype: {basis_dtype!r} (expected a floating torch.dtype)")


def _out_path(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    if Path(out).suffix.lower() != ".json":
        raise ValueError(f"Invalid out: {os.fspath(out)!r} (expected a .json file)")
    return Path(out)


def _settings(a: Mapping[str, Any], batch_size: int, **extra: Any) -> dict[str, Any]:
    """The settings of a summary from :func:`hessian_summary`'s arguments ``a``.

    Exactly what a file holds after a JSON round trip (so a resumed call compares equal).
    """
    settings = {
        "top_k": a["top_k"],
        "which": a["which"],
        "tol": a["tol"],
        "criterion": a["criterion"],
        "max_products": a["max_products"],
        "per_layer": a["per_layer"],
        "trace_method": a["trace_method"] if a["trace"] else None,
        "trace_products": a["trace_products"],
        "target_rel_stderr": a["target_rel_stderr"],
        "density": a["density"],
        "density_runs": a["density_runs"],
        "density_steps": a["density_steps"],
        "method": a["method"],
        "method_used": None,  # filled in by the run
        "dtype": str(a["dtype"] or "native"),
        "seed": a["seed"],
        "batch_size": batch_size,
        "max_samples": a["max_samples"],
        **extra,
    }
    selection = a.get("params")
    if isinstance(selection, torch.Tensor):
        selection = [selection]
    if selection is not None:  # recorded only when given, so older files still resume
        settings["params"] = (
            selection
            if isinstance(selection, str)
            else [p if isinstance(p, str) else "<tensor>" for p in selection]
        )
    return json.loads(json.dumps(settings))


def _objective(
    model: nn.Module,
    data: Any,
    loss_fn: Any,
    batch_size: int,
    max_samples: int | None,
    device: str | torch.device | None,
    **options: Any,
) -> Objective:
    if data is None:
        raise ValueError("Invalid data: None; pass the data to measure on")
    if device is not None:
        from landscape._device import resolve_device

        model = model.to(resolve_device(device))
    return make_objective(
        model, data, loss_fn, batch_size=batch_size, max_samples=max_samples, **options
    )


def _processes(
    model: nn.Module | Objective, device: str | torch.device | None, dist: DistContext | None
) -> contextlib.AbstractContextManager[DistContext | None]:
    """``dist``; for a model with none given, ``torchrun``'s processes, joined and left.

    They are joined on ``device``, or on the device type of the model's parameters.
    """
    if dist is not None or isinstance(model, Objective):
        return contextlib.nullcontext(dist)
    where = (
        device if device is not None else next((p.device.type for p in model.parameters()), "cpu")
    )
    return joined(None, where)


def _summary_objective(a: Mapping[str, Any], dist: DistContext | None) -> Objective:
    """The objective of :func:`hessian_summary`'s arguments ``a``: a ready one, or built."""
    model, data, loss_fn, max_samples = a["model"], a["data"], a["loss_fn"], a["max_samples"]
    options = {k: a[k] for k in OBJECTIVE_OPTIONS}
    if isinstance(model, Objective):
        return make_objective(model, data, loss_fn, max_samples=max_samples, dist=dist, **options)
    assert dist is not None
    device = a["device"]
    where = None if device is None else dist.device if dist.distributed else device
    return _objective(
        model, data, loss_fn, a["batch_size"], max_samples, where, dist=dist, **options
    )


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
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    device: str | torch.device | None = None,
    seed: int = 0,
    return_eigenvectors: bool = False,
    progress: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    forward: Any = None,
    compute_loss: Any = None,
    count_items: Any = None,
    input_key: str | None = None,
    target_key: str | None = None,
    params: ParamSelection = None,
    dist: DistContext | None = None,
) -> dict[str, Any]:
    """Top-k eigenvalues, optionally the trace and the spectral density, as plain data.

    The parts, the file ``out``, ``per_layer`` and ``dist`` are described in the module
    docstring above.

    Args:
        model: the network (with ``data``), or a ready :class:`Objective`.
        data: anything :class:`Objective` accepts.
        loss_fn: batch-mean loss (default cross-entropy).
        top_k: eigenpairs by :func:`lanczos_eigen` (0 skips them; at most the number of
            parameters: a larger ``top_k`` gives them all).
        which: ``"largest"``, ``"smallest"`` or ``"magnitude"``.
        tol: relative tolerance of the eigenpairs.
        criterion: what ``tol`` bounds: ``"residual"`` ``‖Hv − λv‖`` or ``"eigenvalue"``
            (the eigenvalue's error estimate; see :func:`lanczos_eigen`).
        max_products: cap on products for the eigenpairs (at least 1; raised to ``top_k``
            when smaller).
        trace: estimate ``Tr(H)``.
        trace_method: ``"hutchpp"`` (Hutch++, Rademacher sketch), ``"hutchinson"``,
            ``"block"`` (:func:`block_trace`, per layer), ``"fd"`` (CR-SAM's loss form) or
            ``"ggn"`` (:func:`ggn_trace`: Gauss–Newton part exact, residual blocks probed).
        trace_products: products (probes for ``"fd"``) for the trace.
        target_rel_stderr: stop the trace early at this relative standard error
            (``hutchinson``, ``hutchpp``, ``fd``, ``ggn``).
        per_layer: also per-tensor traces (with ``trace``) and the top eigenvalue of each
            layer's diagonal block (with ``top_k > 0``) by :func:`layer_eigenvalues`.
        density: spectral density by :func:`slq_density`.
        density_runs: SLQ runs.
        density_steps: Lanczos steps per run.
        method: Hessian-vector products: ``"exact"``, ``"forward"``, ``"fd"`` or ``"auto"``
            (the one used is reported in ``settings["method_used"]``).
        dtype: e.g. ``torch.float64``.
        basis_device: where the Krylov bases of the Lanczos runs (eigenpairs, per-layer
            eigenvalues, SLQ) live, e.g. ``"cpu"`` for a large model on an accelerator
            (default the operator's device; see :func:`lanczos_eigen`).
        basis_dtype: their dtype, e.g. ``torch.float64`` (default the operator's).
        batch_size: evaluation batch size (one batch keeps the first-order graph).
        max_samples: use only the first ``max_samples`` samples.
        device: device for a model built here.
        seed: seed of every random vector.
        return_eigenvectors: include the eigenvectors (tensor lists, not JSON) under
            ``"eigenvectors"`` (never written to ``out``).
        progress: progress bars (``None``: only on a terminal).
        out: a ``.json`` file written after each finished part (``None``: keep the
            summary in memory only).
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``, or
            ``model(**inputs)`` for a dict).
        compute_loss: ``compute_loss(model, batch) -> mean_loss | (mean_loss, n_items)``,
            for batches no other rule reads.
        count_items: ``count_items(batch)``: the items a batch's loss averages (default:
            tokens not ignored, or samples).
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (labels) in dict batches.
        params: the parameters spanned (default those with ``requires_grad=True``; see
            :func:`~landscape.params.select_parameters`).
        dist: processes sharing the data (default: ``torchrun``'s when run under it, else
            this process alone; a ready ``Objective`` uses its own ``dist``).

    Returns:
        ``{"eigen", "trace", "density", "dim", "n_samples", "param_names", "products",
        "seconds", "settings", "parts", "complete"}`` (parts not asked for are ``None``,
        ``complete`` is ``True``; ``parts``, ``products`` and ``seconds`` as the module
        docstring says); JSON-serialisable unless ``return_eigenvectors``.

    Raises:
        ValueError: a bad option or an ``out`` not ``.json`` (before any work).
        SummaryInterrupted: a ``KeyboardInterrupt`` while writing to ``out`` (it says
            which parts the file holds).
    """
    _check_options(trace_method, top_k, basis_device, basis_dtype, max_products)
    out_path = _out_path(out)
    params = as_selection(params)  # a generator is read once
    arguments = dict(locals())  # this call's arguments by name
    with _processes(model, device, dist) as ctx:
        obj = _summary_objective(arguments, ctx)
        settings = _settings(arguments, obj.batch_size)
        if out_path is not None and out_path.exists() and is_main_process():
            logger.info("%s exists: overwriting it", out_path)
        return _run(obj, settings, _RunOptions.of(arguments), out_path, head={}, previous=None)


def _eigen_part(
    op: HessianOperator, s: dict[str, Any], run: _RunOptions
) -> tuple[dict[str, Any], list[list[torch.Tensor]]]:
    k = min(s["top_k"], op.dim)
    res = lanczos_eigen(
        op,
        k=k,
        which=s["which"],
        tol=s["tol"],
        criterion=s["criterion"],
        max_products=max(s["max_products"], k),
        seed=s["seed"],
        progress=run.progress,
        **run.basis,
    )
    part = res.to_dict()
    if s["per_layer"]:
        lay = layer_eigenvalues(
            op,
            k=1,
            which=s["which"],
            tol=s["tol"],
            max_products=s["max_products"],
            seed=s["seed"],
            criterion=s["criterion"],
            progress=run.progress,
            **run.basis,
        )
        part["layers"] = lay.to_dict()["layers"]
        part["layer_products"] = lay.products
    return part, res.eigenvectors


def _trace_part(op: HessianOperator, s: dict[str, Any], progress: bool | None) -> dict[str, Any]:
    method, per_layer, seed = s["trace_method"], s["per_layer"], s["seed"]
    tr = estimate_trace(
        op,
        method,
        s["trace_products"],
        s["target_rel_stderr"],
        seed,
        per_block=per_layer and method == "hutchinson",
        progress=progress,
    )
    part = tr.to_dict()
    if per_layer and method != "hutchinson":
        layers = hutchinson_trace(
            op, s["trace_products"], None, seed + 1, per_block=True, progress=progress
        )
        part["layers"] = layers.to_dict()["blocks"]
    elif per_layer:
        part["layers"] = part.pop("blocks")
    return part


def _density_part(op: HessianOperator, s: dict[str, Any], run: _RunOptions) -> dict[str, Any]:
    return slq_density(
        op,
        num_runs=s["density_runs"],
        num_steps=s["density_steps"],
        seed=s["seed"],
        progress=run.progress,
        **run.basis,
    ).to_dict()


def _run(
    obj: Objective,
    settings: dict[str, Any],
    run: _RunOptions,
    out: Path | None,
    *,
    head: dict[str, Any],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """Compute the parts ``settings`` asks for that ``previous`` (a file's summary) lacks."""
    s = settings
    return_eigenvectors, progress = run.return_eigenvectors, run.progress
    wanted = [
        part
        for part, on in zip(_PARTS, (s["top_k"] > 0, s["trace_method"] is not None, s["density"]))
        if on
    ]
    reused: dict[str, dict[str, Any]] = {}
    on_disk: list[str] = []  # parts of this call that ``out`` holds
    if previous is not None:
        done = [
            p
            for p in wanted
            if isinstance(previous["parts"].get(p), dict) and isinstance(previous.get(p), dict)
        ]
        on_disk = list(done)
        for part in done:
            if part == "eigen" and return_eigenvectors:
                logger.info("%s: recomputing eigen (its eigenvectors are not in the file)", out)
            else:
                reused[part] = previous[part]
        logger.info(
            "resuming %s: %s reused",
            out,
            ", ".join(reused) if reused else "no part",
        )
    todo = [p for p in wanted if p not in reused]
    summary: dict[str, Any] = {p: reused.get(p) for p in _PARTS}
    parts: dict[str, dict[str, Any]] = {
        p: {**previous["parts"][p], "reused": True} for p in reused if previous is not None
    }
    reused_products = sum(int(parts[p].get("products") or 0) for p in reused)
    reused_seconds = sum(float(parts[p].get("seconds") or 0.0) for p in reused)
    start = time.perf_counter()
    op: HessianOperator | None = None

    def save(complete: bool) -> None:
        nonlocal on_disk
        summary["products"] = (op.products if op is not None else 0) + reused_products
        summary["seconds"] = time.perf_counter() - start + reused_seconds
        summary["settings"] = s
        summary["parts"] = {p: parts[p] for p in wanted if p in parts}
        summary["complete"] = complete
        summary.update(head)
        if out is None or not is_main_process():
            return
        text = json.dumps({k: v for k, v in summary.items() if k != "eigenvectors"}, indent=1)
        write_atomically(out, lambda fh: fh.write(text + "\n"))
        on_disk = [p for p in wanted if p in parts]

    try:
        if todo or previous is None:
            with HessianOperator(obj, method=s["method"], dtype=run.dtype) as op:
                summary.update(
                    {"dim": op.dim, "n_samples": obj.n_samples, "param_names": op.param_names}
                )
                for part in todo:
                    t0, p0 = time.perf_counter(), op.products
                    if part == "eigen":
                        summary["eigen"], vectors = _eigen_part(op, s, run)
                        if return_eigenvectors:
                            summary["eigenvectors"] = vectors
                    elif part == "trace":
                        summary["trace"] = _trace_part(op, s, progress)
                    else:
                        summary["density"] = _density_part(op, s, run)
                    parts[part] = {
                        "products": op.products - p0,
                        "seconds": time.perf_counter() - t0,
                        "method_used": op.method,
                        "reused": False,
                    }
                    s["method_used"] = op.method
                    if part != todo[-1]:
                        save(complete=False)
                s["method_used"] = op.method
        else:  # every part reused: no operator needed
            summary.update({k: previous[k] for k in ("dim", "n_samples", "param_names")})
            s["method_used"] = previous["settings"].get("method_used")
        save(complete=True)
    except KeyboardInterrupt as exc:
        if out is None:
            raise
        raise SummaryInterrupted(on_disk, out) from exc
    return summary


def _previous_summary(out: Path, sha256: str, settings: dict[str, Any]) -> dict[str, Any]:
    """The summary in ``out`` if it is one of the checkpoint ``sha256`` with ``settings``.

    Raises:
        ValueError: ``out`` is not a Hessian summary, or one of another checkpoint content
            or with other settings.
    """
    obj = read_json_to_resume(out)
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("settings"), dict)
        or not isinstance(obj.get("parts"), dict)
        or not all(k in obj for k in ("dim", "n_samples", "param_names"))
    ):
        raise ValueError(
            f"{out}: not a Hessian summary file (needs 'settings' and 'parts'); {RESUME_ADVICE}"
        )
    same = {k: v for k, v in settings.items() if k != "method_used"}
    there = {k: v for k, v in obj["settings"].items() if k != "method_used"}
    diffs = differences(obj.get("sha256"), sha256, "sha256") + differences(there, same)
    if diffs:
        what = "of another checkpoint content" if obj.get("sha256") != sha256 else ""
        if len(diffs) > (1 if what else 0):
            what = f"{what} and " if what else "with "
            what += "different settings"
        raise ValueError(
            f"{out}: holds a Hessian summary {what} ({'; '.join(diffs)}); {RESUME_ADVICE}"
        )
    return obj


def _summary_arguments(kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`hessian_summary`'s arguments by name, ``kwargs`` over its defaults, checked."""
    bound = inspect.signature(hessian_summary).bind(None, None, **kwargs)
    bound.apply_defaults()
    a = bound.arguments
    _check_options(
        a["trace_method"], a["top_k"], a["basis_device"], a["basis_dtype"], a["max_products"]
    )
    return a


def _resumable(
    out: Path | None,
    resuming: bool,
    path: str | os.PathLike[str] | UserModel,
    digest: str | None,
    settings: dict[str, Any],
    ctx: DistContext,
) -> dict[str, Any] | None:
    """The summary in ``out`` to resume (``None``: start afresh), decided by process 0.

    Raises:
        ValueError: (on every process) ``out`` holds no summary of this checkpoint content
            (``digest``, else the file's sha256) with ``settings``.
    """
    from landscape.checkpoint import file_sha256

    previous, err = None, None
    if out is not None and ctx.is_main:  # process 0's file decides for all
        try:
            if resuming:
                digest = digest if digest is not None else file_sha256(path)
                previous = _previous_summary(out, digest, settings)
            elif out.exists():
                logger.info("%s exists: overwriting it", out)
        except ValueError as exc:
            err = exc
    if ctx.distributed:
        previous, message = broadcast_object((previous, None if err is None else str(err)), ctx)
        err = err or (None if message is None else ValueError(message))
    if err is not None:
        raise err
    return previous


def _split_objective(
    ckpt: Any, split: str, a: Mapping[str, Any], dev: torch.device, ctx: DistContext
) -> Objective:
    """The objective of the checkpoint's model on its data's ``split``."""
    bundle = ckpt.load_data()
    data = getattr(bundle, split)
    if data is None:
        raise ValueError(f"Invalid split: the checkpoint's data has no {split!r} split")
    options = ckpt.objective_options({k: a[k] for k in (*OBJECTIVE_OPTIONS, "loss_fn")})
    return _objective(
        ckpt.model.to(dev),
        data,
        options.pop("loss_fn", None),
        a["batch_size"],
        a["max_samples"],
        dev,
        dist=ctx,
        **options,
    )


def hessian_summary_checkpoint(
    path: str | os.PathLike[str] | UserModel,
    *,
    split: str = "train",
    device: str | torch.device | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`hessian_summary` of a checkpoint on a split of its own data.

    With ``out`` the summary so far is written after each finished part (see
    :func:`hessian_summary`), and calling again with the same arguments on an existing
    file resumes it: when the file's ``sha256`` equals the checkpoint file's and its
    settings (split included) equal this call's, its finished parts are reused and only
    the missing ones are computed (``"eigen"`` is recomputed when
    ``return_eigenvectors``: the file has no eigenvectors). What the file does not record
    (``device``, ``basis_device``, ``basis_dtype``, ``loss_fn``, ``progress``) is assumed
    unchanged. ``products`` and ``seconds`` then count the reused parts' own products and
    seconds too (each part keeps its own under ``"parts"``, marked ``"reused"``).

    Args:
        path: a checkpoint written by ``landscape train`` (see
            :func:`landscape.load_checkpoint`), or a user's model and data
            (:class:`~landscape.user.UserModel`); its ``sha256`` (the digest of its import
            paths and weights) then plays the checkpoint file's part, and the summary
            also records ``model``, ``data``, ``weights`` and ``weights_sha256``.
        split: ``"train"``, ``"val"`` or ``"test"``.
        device: device (default CUDA when available).
        out: a ``.json`` file written after each finished part.
        resume: reuse the finished parts of an existing ``out``; ``False`` starts over
            and overwrites it.
        **kwargs: passed to :func:`hessian_summary`.

    Returns:
        :func:`hessian_summary`'s result plus ``"checkpoint"`` (the path) and ``"sha256"``
        (of its content); ``settings["split"]``.

    Raises:
        ValueError: a bad option or split, or an existing ``out`` to resume that is not a
            Hessian summary, or one of another checkpoint content or with other settings,
            or a checkpoint whose weights hold NaN or inf (all before any work).
        FileNotFoundError: no such checkpoint.
        SummaryInterrupted: a ``KeyboardInterrupt`` while writing to ``out``.
    """
    from landscape._device import resolve_device
    from landscape.checkpoint import load_checkpoint

    if split not in _SPLITS:
        raise ValueError(f"Invalid split: {split!r} (expected one of {_SPLITS})")
    if isinstance(path, UserModel):
        path.check()
    elif not Path(path).is_file():
        raise FileNotFoundError(f"no such checkpoint: {os.fspath(path)}")
    a = _summary_arguments(kwargs)
    out_path = _out_path(out)
    settings = _settings(a, a["batch_size"], split=split)
    resuming = out_path is not None and resume and out_path.is_file()
    with joined(a["dist"], device) as ctx:
        dev = ctx.device if a["dist"] is None else resolve_device(device)
        # No Hessian of nan weights (finite=True).
        ckpt = path.open(map_location=dev, finite=True) if isinstance(path, UserModel) else None
        digest = None if ckpt is None else ckpt.sha256
        previous = _resumable(out_path, resuming, path, digest, settings, ctx)
        if ckpt is None:
            ckpt = load_checkpoint(path, map_location=dev, finite=True)
        obj = _split_objective(ckpt, split, a, dev, ctx)
        head = {"checkpoint": str(path), "sha256": ckpt.sha256}
        if isinstance(ckpt, UserCheckpoint):
            head.update(ckpt.attrs())
        return _run(obj, settings, _RunOptions.of(a), out_path, head=head, previous=previous)


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

        from landscape.hessian.density.slq import NEGATIVE_RTOL, negative_mass

        grid, rho = np.asarray(dens["grid"]), np.asarray(dens["density"])
        nodes, w = np.asarray(dens["nodes"]), np.asarray(dens["weights"])
        neg = negative_mass(nodes, w)  # rounding-level Ritz values count as zero
        lines.append(
            f"density: λmin ≈ {dens['lambda_min']:.4g}, λmax ≈ {dens['lambda_max']:.4g}, "
            f"mode at {grid[int(np.argmax(rho))]:.3g}, {100 * neg:.1f}% of the mass below "
            f"−{NEGATIVE_RTOL:g}·max|λ| "
            f"({dens['num_runs']} runs × {dens['num_steps']} steps)"
        )
    reused = [p for p, d in (summary.get("parts") or {}).items() if d.get("reused")]
    lines.append(
        f"{summary.get('products', 0)} Hessian-vector products in {summary['seconds']:.1f} s"
        + (f" ({', '.join(reused)} from an earlier run)" if reused else "")
    )
    return "\n".join(lines)
