"""The demo: train SGD and the sharpness-aware optimizers, measure, compare, report.

:func:`run_demo` chains the library end to end on built-in data (scikit-learn's 8×8
digits by default), each step a public function of another part of sharpscape:

1. :func:`landscape.training.train` for each optimizer (same model, data, seed, schedule);
2. :func:`landscape.surface.surface_from_checkpoint`: a filter-normalised random plane
   around each final model (same seed for all), and the PCA plane of its trajectory
   with the training path;
3. :func:`landscape.compare.compare_checkpoints`: curvature and sharpness metrics of the
   final models, one row per optimizer, and the top Hessian eigenvalue at every
   checkpoint of every run (curvature through training, drawn as one line per optimizer);
4. :func:`landscape.hessian.slq_density`: each final model's Hessian spectral density;
5. :func:`landscape.report.build_report`: one offline HTML page of it all, which opens
   with the finding: :func:`landscape.correlation.flatness_finding` states in one
   sentence how λmax ranks with the clean test accuracy across the optimizers (Kendall's
   τ, its permutation p-value, the flattest and the most accurate optimizer), computed
   from the comparison when the page is built.

By default the optimizers learn from noisy labels: 50 training images per class, 40 % of
them relabelled with another class (the test labels are never noised), 60 epochs without
weight decay.  On clean digits every optimizer ends at about the same test accuracy; with
noisy labels they differ in how much of the noise they fit, hence in their accuracy on the
clean test labels, and in how flat they end.

Every step writes its files under ``out`` and is resumable: a rerun reuses finished runs,
surface files, comparison rows and spectra.  The defaults finish in one to three minutes
on two CPU cores; other settings (clean labels, more epochs, finer grids, more samples)
are keyword arguments (CLI flags).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from landscape._io import write_atomically

if TYPE_CHECKING:
    from landscape.correlation import Finding

__all__ = [
    "DEMO_HPARAMS",
    "DEMO_METRICS",
    "DEMO_OPTIMIZERS",
    "DEMO_TRAJECTORY_METRICS",
    "DemoResult",
    "demo_hparams",
    "run_demo",
]

logger = logging.getLogger(__name__)

#: SGD and every sharpness-aware optimizer (Adam is left out of the demo).
DEMO_OPTIMIZERS = (
    "sgd",
    "sam",
    "asam",
    "gsam",
    "agnostic_sam",
    "gam",
    "fad",
    "crsam",
    "momentum_sam",
)
#: Metrics of the demo's comparison table.
DEMO_METRICS = ("lambda_max", "trace", "sam_sharpness", "average_sharpness", "grad_norm")
#: Metrics measured at every checkpoint of every run (curvature through training).
DEMO_TRAJECTORY_METRICS = ("lambda_max",)
#: Training-record columns of the final comparison: how well each model fits and
#: generalises, beside how flat it is (read from the checkpoints, not recomputed).  With
#: label noise the record also holds ``train_acc`` (on the noisy labels) and
#: ``train_clean_acc`` (the same images, clean labels), shown too.
DEMO_RECORDED = ("train_loss", "test_acc")
DEMO_RECORDED_NOISY = ("train_loss", "train_acc", "train_clean_acc", "test_acc")
#: Where the demo departs from an optimizer's defaults, by optimizer name.  Momentum-SAM's
#: ``rho = 3`` is the authors' for ResNets on CIFAR (with SGD's ``lr = 0.5``); on the
#: demo's small MLP it leaves the model undertrained at any ``lr`` from 0.05 to 0.5 (train
#: loss 0.79 against SGD's 0.21 at 0.05, 8 epochs on all of digits, clean labels; no
#: training at 0.5), whereas ``rho = 0.3`` trains like SGD at 0.05, 0.2 and 0.5.
DEMO_HPARAMS: dict[str, dict[str, Any]] = {"momentum_sam": {"rho": 0.3}}


def demo_hparams(name: str) -> dict[str, Any]:
    """The hyper-parameters the demo trains optimizer ``name`` with.

    Each optimizer's own defaults (``optimizers.optimizer_hparams``), updated by
    :data:`DEMO_HPARAMS`: with them every optimizer trains the demo's model about as well
    as SGD does at the demo's learning rate.  On clean labels at the demo's other settings
    (60 epochs on 50 images per class, ``lr = 0.05``, seed 0) every final train loss is
    0.051–0.064 against SGD's 0.062; with 8 epochs on all of digits each was within 0.02
    of SGD's over seeds 0 to 2.

    Args:
        name: a name of ``optimizers.OPTIMIZER_NAMES``.

    Returns:
        The optimizer's own hyper-parameters (``{}`` for ``sgd`` and ``adam``).
    """
    import optimizers as _optimizers

    return {**_optimizers.optimizer_hparams(name), **DEMO_HPARAMS.get(name, {})}


@dataclass
class DemoResult:
    """What :func:`run_demo` made.

    Attributes:
        out: the output folder.
        runs: optimizer name to run folder.
        surfaces: optimizer name to random-plane surface file.
        pca_surfaces: optimizer name to PCA-plane surface file (with the training path).
        spectra: optimizer name to spectral density JSON file.
        comparison: the :class:`landscape.compare.Comparison` of the final models.
        comparison_path: its JSON file.
        trajectory: the comparison of every run's epoch checkpoints (None when no
            trajectory metrics were asked for).
        trajectory_path: its JSON file.
        report: the HTML report.
        finding: how flatness ranks with (clean) test accuracy across the optimizers,
            computed from the comparison when the report is built (the report states the
            same sentence); None when the comparison has no flatness measure
            (``lambda_max``, ``trace``) or fewer than two optimizers.
        seconds: wall time of each stage.
    """

    out: Path
    runs: dict[str, Path] = field(default_factory=dict)
    surfaces: dict[str, Path] = field(default_factory=dict)
    pca_surfaces: dict[str, Path] = field(default_factory=dict)
    spectra: dict[str, Path] = field(default_factory=dict)
    comparison: Any = None
    comparison_path: Path | None = None
    trajectory: Any = None
    trajectory_path: Path | None = None
    report: Path | None = None
    finding: Finding | None = None
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Run with ``threads`` intra-op threads, restoring the previous count after."""
    import torch

    if threads is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _grid_around(points: Any, margin: float = 0.25, num: int = 15) -> tuple[str, str]:
    """``start:stop:num`` grids covering projected path points with a margin."""
    import numpy as np

    pts = np.asarray(points, dtype=np.float64)
    out = []
    for k in range(2):
        lo, hi = float(pts[:, k].min()), float(pts[:, k].max())
        pad = margin * max(hi - lo, 1e-3)
        out.append(f"{lo - pad:.6g}:{hi + pad:.6g}:{num}")
    return out[0], out[1]


#: The demo's stages, in order (``trajectory`` and ``spectra`` may be left out).
_STAGES = ("train", "surfaces", "metrics", "trajectory", "spectra", "report")


def _chosen_hparams(
    optimizers: Sequence[str], hparams: Mapping[str, Mapping[str, Any]] | None
) -> dict[str, dict[str, Any]]:
    """Each optimizer's hyper-parameters (:func:`demo_hparams` updated by ``hparams``)."""
    import optimizers as _optimizers

    unknown = [o for o in optimizers if o not in _optimizers.OPTIMIZER_NAMES]
    if unknown or not optimizers:
        raise ValueError(
            f"Invalid optimizers: {unknown or 'none'}; choose from "
            f"{', '.join(_optimizers.OPTIMIZER_NAMES)}"
        )
    if len(set(optimizers)) != len(optimizers):
        raise ValueError(f"Invalid optimizers: repeated names in {list(optimizers)}")
    stray = sorted(set(hparams or {}) - set(optimizers))
    if stray:
        raise ValueError(f"Invalid hparams: {stray} are not among the optimizers trained")
    return {n: {**demo_hparams(n), **dict((hparams or {}).get(n, {}))} for n in optimizers}


def _check_counts(
    pca_grid: int,
    max_samples: int | None,
    spectrum_runs: int,
    spectrum_steps: int,
    threads: int | None,
) -> None:
    """Refuse, before any training, counts that failed late or deep inside torch.

    ``pca_grid=-1`` failed after training with a message about an internal grid string,
    ``pca_grid=1`` drew a one-point "plane", ``spectrum_runs=-1`` and ``spectrum_steps=0``
    failed after training, ``threads=-1`` in ``torch.set_num_threads``.
    """
    if pca_grid != 0 and pca_grid < 2:
        raise ValueError(f"Invalid pca_grid: {pca_grid} (0 for none, else at least 2)")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"Invalid max_samples: {max_samples} (at least 1, or None for all)")
    if spectrum_runs < 0:
        raise ValueError(f"Invalid spectrum_runs: {spectrum_runs} (0 for none)")
    if spectrum_runs and spectrum_steps < 1:
        raise ValueError(f"Invalid spectrum_steps: {spectrum_steps} (at least 1)")
    if threads is not None and threads < 1:
        raise ValueError(f"Invalid threads: {threads} (at least 1, or None to keep torch's)")


def _check_settings(
    epochs: int,
    grid: int,
    batch_size: int,
    save_every: int,
    span: float,
    label_noise: float,
    pca_grid: int,
    metrics: Sequence[str],
    trajectory_metrics: Sequence[str],
) -> None:
    """Refuse bad demo settings before any training."""
    from landscape.metrics import validate_metric_names

    sizes = (("epochs", epochs), ("grid", grid), ("batch_size", batch_size))
    for name, value in (*sizes, ("save_every", save_every)):
        if value < 1 or (name == "grid" and value < 2):
            raise ValueError(f"Invalid {name}: {value}")
    if not 0 < span < math.inf:  # NaN too
        raise ValueError(f"Invalid span: {span}")
    if not 0 <= label_noise <= 1:
        raise ValueError(f"Invalid label_noise: {label_noise} (a fraction in [0, 1])")
    if pca_grid and -(-epochs // save_every) < 3:
        # θ_t − θ_T of the checkpoints before the last, mean-centred, must span a plane.
        raise ValueError(
            f"Invalid epochs: {epochs}; the PCA plane needs checkpoints at 3 epochs before "
            f"the last (epochs / save_every = {epochs / save_every:.3g} must be at least 3; "
            "or pca_grid=0)"
        )
    validate_metric_names(list(metrics))
    if trajectory_metrics:
        validate_metric_names(list(trajectory_metrics))


def run_demo(
    out: str | os.PathLike = "demo_out",
    *,
    optimizers: Sequence[str] = DEMO_OPTIMIZERS,
    hparams: Mapping[str, Mapping[str, Any]] | None = None,
    data: str = "digits",
    model: str = "mlp",
    model_kwargs: Mapping[str, Any] | None = None,
    epochs: int = 60,
    batch_size: int = 64,
    lr: float = 0.05,
    weight_decay: float = 0.0,
    label_noise: float = 0.4,
    n_per_class: int | None = 50,
    save_every: int | None = None,
    grid: int = 21,
    span: float = 1.0,
    pca_grid: int = 15,
    metrics: Sequence[str] = DEMO_METRICS,
    trajectory_metrics: Sequence[str] = DEMO_TRAJECTORY_METRICS,
    max_samples: int | None = 1024,
    spectrum_runs: int = 2,
    spectrum_steps: int = 30,
    seed: int = 0,
    device: str | None = None,
    threads: int | None = 1,
    progress: bool | None = None,
) -> DemoResult:
    """Train, measure and compare SGD and the sharpness-aware optimizers; write a report.

    Args:
        out: output folder (``runs/``, ``surfaces/``, ``spectra/``, ``compare.json``,
            ``trajectory.json``, ``report.html``); reruns resume from what is there.
        optimizers: names of ``optimizers.OPTIMIZER_NAMES`` to train, each on an SGD
            base with :func:`demo_hparams` (its defaults, Momentum-SAM's ``rho`` made
            to suit the demo's model).
        hparams: per optimizer name, hyper-parameters that replace those of
            :func:`demo_hparams` (e.g. ``{"sam": {"rho": 0.1}}``).
        data: built-in data set (``digits``, ``mnist1d``, ``synthetic``, ...).
        model: model name of ``landscape.models.MODEL_NAMES``.
        model_kwargs: model options (default for ``mlp``: one hidden layer of 64 units).
        epochs: training epochs per optimizer.
        batch_size: training batch size.
        lr: peak learning rate (cosine schedule to 0).
        weight_decay: weight decay of the (base) SGD.
        label_noise: fraction of training labels replaced by another class, drawn
            uniformly (exactly that fraction, seeded; :func:`landscape.data.load_data`);
            the test labels are never noised.  With noise the comparison also shows each
            model's accuracy on the noisy training labels (``train_acc``) and on the same
            images with their clean labels (``train_clean_acc``).
        n_per_class: training images kept per class (seeded; None: all 1438 of digits).
            Fewer images make the noise quicker to fit.
        save_every: checkpoint every this many epochs (None: ``epochs // 10``, at least
            1); the PCA planes' paths and the trajectory metrics use these checkpoints.
        grid: points per side of the random-plane surfaces (``grid × grid``).
        span: the random plane covers ``[-span, span]²``.
        pca_grid: points per side of the PCA-plane surfaces (0: none).
        metrics: sharpness metrics of the comparison (``landscape.metrics.METRICS``).
        trajectory_metrics: metrics measured at every checkpoint of every run (empty:
            none).
        max_samples: samples used by surfaces, metrics and spectra (None: all).
        spectrum_runs: stochastic Lanczos quadrature runs per spectrum (0: none).
        spectrum_steps: Lanczos steps per run.
        seed: seed of training, directions and estimators.
        device: ``cpu``, ``cuda`` or None (CUDA when available).
        threads: torch intra-op threads while the demo runs (restored after; None: keep).
            One thread is fastest for the demo's small models on a shared CPU.
        progress: progress bars (None: on a terminal).
    """
    from tqdm.auto import tqdm

    chosen = _chosen_hparams(optimizers, hparams)
    if save_every is None:  # about ten checkpoints per run
        save_every = max(1, epochs // 10)
    _check_counts(pca_grid, max_samples, spectrum_runs, spectrum_steps, threads)
    _check_settings(
        epochs, grid, batch_size, save_every, span, label_noise, pca_grid, metrics,
        trajectory_metrics,
    )  # fmt: skip
    if model == "mlp" and model_kwargs is None:
        model_kwargs = {"hidden": [64]}

    recorded = DEMO_RECORDED_NOISY if label_noise else DEMO_RECORDED
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result = DemoResult(out=out)
    optional = {"trajectory": bool(trajectory_metrics), "spectra": bool(spectrum_runs)}
    stages = [s for s in _STAGES if optional.get(s, True)]
    with _torch_threads(threads):
        bar = tqdm(total=len(stages), desc="demo", unit="stage", disable=progress is False)
        try:
            _stage(result, "train", bar, lambda: _train_all(
                result, chosen, data=data, model=model, model_kwargs=model_kwargs,
                epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay,
                label_noise=label_noise, n_per_class=n_per_class, save_every=save_every,
                seed=seed, device=device, progress=progress,
            ))  # fmt: skip
            _stage(result, "surfaces", bar, lambda: _surfaces_all(
                result, grid=grid, span=span, pca_grid=pca_grid, max_samples=max_samples,
                seed=seed, device=device, progress=progress,
            ))  # fmt: skip
            _stage(result, "metrics", bar, lambda: _compare_all(
                result, metrics, recorded=recorded, max_samples=max_samples, seed=seed,
                device=device, progress=progress,
            ))  # fmt: skip
            if trajectory_metrics:
                _stage(result, "trajectory", bar, lambda: _compare_all(
                    result, trajectory_metrics, trajectory=True, max_samples=max_samples,
                    seed=seed, device=device, progress=progress,
                ))  # fmt: skip
            if spectrum_runs:
                _stage(result, "spectra", bar, lambda: _spectra_all(
                    result, runs=spectrum_runs, steps=spectrum_steps, max_samples=max_samples,
                    seed=seed, device=device, progress=progress,
                ))  # fmt: skip
            _stage(result, "report", bar, lambda: _report(result))
        finally:
            bar.close()
    return result


def _stage(result: DemoResult, name: str, bar: Any, fn: Any) -> None:
    bar.set_postfix_str(name)
    start = time.perf_counter()
    fn()
    result.seconds[name] = time.perf_counter() - start
    logger.info("demo: %s done in %.1f s", name, result.seconds[name])
    bar.update(1)


def _train_all(result: DemoResult, hparams: Mapping[str, Mapping[str, Any]], **kw: Any) -> None:
    from tqdm.auto import tqdm

    from landscape.training import train

    progress = kw.pop("progress")
    for name in tqdm(hparams, desc="train", unit="optimizer", disable=progress is False):
        run = result.out / "runs" / name
        res = train(
            kw["model"],
            kw["data"],
            optimizer=name,
            hparams=hparams[name],
            epochs=kw["epochs"],
            batch_size=kw["batch_size"],
            lr=kw["lr"],
            weight_decay=kw["weight_decay"],
            label_noise=kw["label_noise"],
            n_per_class=kw["n_per_class"],
            save_every=kw["save_every"],
            model_kwargs=kw["model_kwargs"],
            seed=kw["seed"],
            device=kw["device"],
            out=run,
            progress=False,
        )
        if res.final_checkpoint is None:
            raise ValueError(f"training {name} wrote no final checkpoint in {run}")
        result.runs[name] = run


def _surfaces_all(
    result: DemoResult,
    *,
    grid: int,
    span: float,
    pca_grid: int,
    max_samples: int | None,
    seed: int,
    device: str | None,
    progress: bool | None,
) -> None:
    from tqdm.auto import tqdm

    from landscape.surface import surface_from_checkpoint

    folder = result.out / "surfaces"
    axis = f"{-span:g}:{span:g}:{grid}"
    for name, run in tqdm(
        result.runs.items(), desc="surfaces", unit="optimizer", disable=progress is False
    ):
        final = run / "final.pt"
        path = folder / f"{name}.h5"
        surface_from_checkpoint(
            final, out=path, x=axis, y=axis, split="both", seed=seed,
            max_samples=max_samples, device=device, evaluation="auto", progress=False,
        )  # fmt: skip
        result.surfaces[name] = path
        if pca_grid:
            result.pca_surfaces[name] = _pca_surface(
                final, run, folder / f"{name}_pca.h5", pca_grid, max_samples, device
            )


def _pca_surface(
    final: Path, run: Path, path: Path, num: int, max_samples: int | None, device: str | None
) -> Path:
    """The PCA plane of a run, its grid covering the whole projected training path."""
    from landscape.checkpoint import load_checkpoint
    from landscape.directions import pca_directions
    from landscape.surface import surface_from_checkpoint

    if not path.exists():
        ckpt = load_checkpoint(final, map_location="cpu")
        dirs = pca_directions(ckpt.model, run)
        x, y = _grid_around(dirs.trajectory, num=num)
    else:  # resume with the grid the file already has
        from landscape.store import read_surface

        s = read_surface(path)
        x = f"{s.x[0]:.6g}:{s.x[-1]:.6g}:{len(s.x)}"
        y = f"{s.y[0]:.6g}:{s.y[-1]:.6g}:{len(s.y)}"
    surface_from_checkpoint(
        final, out=path, x=x, y=y, pca=run, split="train", max_samples=max_samples,
        device=device, evaluation="auto", progress=False,
    )  # fmt: skip
    return path


def _compare_all(
    result: DemoResult,
    metrics: Sequence[str],
    *,
    trajectory: bool = False,
    recorded: Sequence[str] = (),
    max_samples: int | None,
    seed: int,
    device: str | None,
    progress: bool | None,
) -> None:
    """The final models' comparison, or (``trajectory``) every run's epoch checkpoints.

    Each resumes its file on a rerun.  The demo has no ``--no-resume``: a file made with
    other metrics or settings is computed anew instead of refused (any other
    ``ValueError`` is raised again by the second call, which checks the same arguments
    first).
    """
    from landscape.compare import compare_checkpoints

    names = list(result.runs)
    path = result.out / ("trajectory.json" if trajectory else "compare.json")
    kwargs: dict[str, Any] = {
        "labels": None if trajectory else names,  # trajectory: sgd/epoch_0003, ...
        "max_samples": max_samples,
        "device": device,
        "progress": progress,
        "seed": seed,
        # the Gauss-Newton split: exact on the demo's ReLU networks, unbiased on any
        "per_metric": {"trace": {"trace_method": "ggn"}} if "trace" in metrics else None,
        "out": path,
        "recorded": () if trajectory else tuple(recorded),
    }
    if trajectory:  # a run folder stands for its checkpoints in epoch order
        paths = [result.runs[n] for n in names]
    else:
        paths = [result.runs[n] / "final.pt" for n in names]
    try:
        comp = compare_checkpoints(paths, list(metrics), resume=True, **kwargs)
    except ValueError as exc:
        logger.info("demo: %s; computing the comparison anew", exc)
        comp = compare_checkpoints(paths, list(metrics), resume=False, **kwargs)
    if trajectory:
        result.trajectory, result.trajectory_path = comp, path
    else:
        result.comparison, result.comparison_path = comp, path


def _spectra_all(
    result: DemoResult,
    *,
    runs: int,
    steps: int,
    max_samples: int | None,
    seed: int,
    device: str | None,
    progress: bool | None,
) -> None:
    from torch.utils.data import Subset
    from tqdm.auto import tqdm

    from landscape.checkpoint import load_checkpoint
    from landscape.hessian import HessianOperator, slq_density
    from landscape.objective import Objective

    folder = result.out / "spectra"
    folder.mkdir(parents=True, exist_ok=True)
    for name, run in tqdm(
        result.runs.items(), desc="spectra", unit="optimizer", disable=progress is False
    ):
        path = folder / f"{name}.json"
        if not path.exists():
            ckpt = load_checkpoint(run / "final.pt", map_location=device or None)
            train_set = ckpt.load_data().train
            if max_samples is not None and max_samples < len(train_set):
                train_set = Subset(train_set, range(max_samples))
            op = HessianOperator(Objective(ckpt.model, train_set, device=device))
            dens = slq_density(op, num_runs=runs, num_steps=steps, seed=seed, progress=False)
            text = json.dumps({"label": name, "density": dens.to_dict()})
            write_atomically(path, lambda fh, text=text: fh.write(text))
        result.spectra[name] = path


def _report(result: DemoResult) -> None:
    from landscape.correlation import flatness_finding
    from landscape.report import build_report

    inputs: list[Path] = [
        *result.runs.values(),
        *result.surfaces.values(),
        *result.pca_surfaces.values(),
        *result.spectra.values(),
    ]
    if result.comparison_path is not None:
        inputs.append(result.comparison_path)
    if result.trajectory_path is not None:
        inputs.append(result.trajectory_path)
    report = build_report(
        inputs,
        result.out / "report.html",
        title="sharpscape demo: SGD and sharpness-aware optimizers",
    )
    result.report = report
    try:  # the sentence the report states, from the same numbers
        result.finding = flatness_finding(result.comparison.to_dict())
    except ValueError as exc:
        logger.info("demo: no finding: %s", exc)
