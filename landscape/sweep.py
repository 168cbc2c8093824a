"""Sweeps: train a grid of configurations, one run folder each, then correlate them.

A :class:`SweepSpec` is a grid (axis -> values) over :func:`~landscape.training.train`'s
options (``optimizer``, ``lr``, ``batch_size``, ``label_noise``, ``seed``, ...), an
optimizer's own hyper-parameters (``rho``, ...) and model or data options
(``model.width``, ``data.n_train``), plus fixed options shared by every run.
:func:`run_sweep` trains each configuration into its own run folder, named after its
grid values in the grid's order::

    OUT/sweep.json                                   # the spec and each run's status
    OUT/runs/optimizer=sam,rho=0.05,lr=0.1,seed=0/   # a landscape train run folder
    OUT/correlation.json                             # correlate_runs(..., out=)
    OUT/correlation.png                              # its measure-vs-gap scatters

A hyper-parameter applies to the optimizers that take it: with ``optimizer=sgd,sam`` and
``rho=0.05,0.1``, SGD runs once per other value (its folder names no ρ) and SAM twice.

Everything resumes. A run whose folder holds ``final.pt`` is finished and skipped; an
unfinished one continues from its last checkpoint through ``train``'s own resume; the
correlation reuses the measurements in ``correlation.json`` (by checkpoint hash).
Ctrl-C keeps what is finished; running the same call again continues. ``jobs > 1``
trains several runs at once in worker processes (``threads`` torch threads each);
the runs are seeded, so the weights are those of ``jobs=1``.

::

    from landscape.sweep import SweepSpec, run_sweep
    spec = SweepSpec.parse(["optimizer=sgd,sam", "lr=0.05,0.1", "seed=0,1,2"],
                           {"data": "digits", "model": "mlp", "epochs": 8})
    result = run_sweep(spec, "sweep", metrics="lambda_max,trace", jobs=2)
    print(result.correlation.format_table())
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import multiprocessing
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import product
from pathlib import Path
from typing import Any

__all__ = [
    "EXAMPLES",
    "TRAIN_AXES",
    "SweepInterrupted",
    "SweepResult",
    "SweepRun",
    "SweepSpec",
    "run_sweep",
]

log = logging.getLogger(__name__)

#: ``train`` options a grid may vary, with their types (optimizer hyper-parameters,
#: ``model.KEY`` and ``data.KEY`` are also allowed).
TRAIN_AXES: dict[str, type] = {
    "optimizer": str,
    "base_optimizer": str,
    "epochs": int,
    "batch_size": int,
    "lr": float,
    "momentum": float,
    "weight_decay": float,
    "label_noise": float,
    "n_per_class": int,
    "val_fraction": float,
    "seed": int,
    "augment": bool,
}
# Options that may only be fixed (one value for every run).
_FIXED_ONLY: dict[str, type | None] = {
    "model": str,
    "data": str,
    "data_dir": str,
    "model_kwargs": None,
    "data_kwargs": None,
    "save_every": int,
    "eval_batch_size": int,
}
_NAME_OK = re.compile(r"^[A-Za-z0-9_.+-]+$")
_SWEEP_FILE = "sweep.json"
_RUNS = "runs"

#: Built-in example sweeps (``landscape sweep --example NAME``): a grid and fixed options.
EXAMPLES: dict[str, dict[str, Any]] = {
    "batch-noise": {
        "description": (
            "Jiang et al. 2020 / Andriushchenko et al. 2023 in miniature: does sharpness "
            "rank the generalisation gap of MLPs on digits across batch size, label noise "
            "and optimizer (SGD vs SAM)? 2 x 2 x 2 x 2 seeds = 16 runs"
        ),
        "grid": {
            "optimizer": ["sgd", "sam"],
            "batch_size": [32, 256],
            "label_noise": [0.0, 0.2],
            "seed": [0, 1],
        },
        "fixed": {
            "data": "digits",
            "model": "mlp",
            "model_kwargs": {"hidden": [64]},
            "epochs": 15,
            "lr": 0.05,
            "weight_decay": 0.0,
            "rho": 0.05,
            "save_every": 5,
        },
        "metrics": "lambda_max,trace,sam_sharpness",
        "correlation": {"max_samples": 512, "steps": 5},
    },
}


# --------------------------------------------------------------------------- the spec


def _optimizer_table() -> dict[str, dict[str, Any]]:
    """``{optimizer: {hparam: default}}`` of every optimizer of :mod:`optimizers`."""
    import optimizers

    return {n: dict(optimizers.optimizer_hparams(n)) for n in optimizers.OPTIMIZER_NAMES}


def _hparam_types() -> dict[str, type]:
    types: dict[str, type] = {}
    for defaults in _optimizer_table().values():
        for key, default in defaults.items():
            types.setdefault(key, type(default))
    return types


def _coerce(key: str, value: Any, typ: type | None) -> Any:
    """``value`` (a string from the command line, or a Python value) as ``typ``."""
    if isinstance(value, str) and typ is not str:
        text = value.strip()
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"Invalid {key}: {value!r} is not a finite number")
    if typ is None or (isinstance(value, typ) and not (typ is int and isinstance(value, bool))):
        return value
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, str):
        return value
    what = {int: "an integer", float: "a number", bool: "true or false", str: "a name"}[typ]
    raise ValueError(f"Invalid {key}: {value!r} is not {what}")


def _split_values(key: str, values: Any) -> list[Any]:
    if isinstance(values, str):
        parts = [v.strip() for v in values.split(",")]
        if not values.strip() or any(not p for p in parts):
            raise ValueError(
                f"Invalid grid {key}={values}: an empty value (expected {key}=V1,V2,...)"
            )
        return parts
    if isinstance(values, Mapping) or not isinstance(values, Sequence):
        return [values]
    if not values:
        raise ValueError(f"Invalid grid {key}: no values")
    return list(values)


def _format(value: Any) -> str:
    """A grid value as it appears in a folder name (``0.1``, ``32``, ``sam``, ``true``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)


@dataclass(frozen=True)
class SweepRun:
    """One configuration of a sweep.

    Attributes:
        name: its folder name, ``axis=value`` joined by commas in the grid's order (axes
            that do not apply to it, such as ρ for SGD, left out).
        values: axis -> value of the axes that apply.
        kwargs: the keyword arguments of :func:`~landscape.training.train` (without
            ``out``).
    """

    name: str
    values: dict[str, Any]
    kwargs: dict[str, Any]


@dataclass(frozen=True)
class SweepSpec:
    """A grid of training configurations and the options every run shares.

    Attributes:
        grid: ``(axis, values)`` pairs in order; an axis is a ``train`` option of
            :data:`TRAIN_AXES`, an optimizer hyper-parameter (``rho``; ``hparams.KEY``
            for one named like a ``train`` option, such as agnostic_sam's
            ``val_fraction``), or ``model.KEY`` / ``data.KEY`` (an entry of
            ``model_kwargs`` / ``data_kwargs``).
        fixed: ``train`` options (and optimizer hyper-parameters) shared by every run.
    """

    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    fixed: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(
        cls,
        grid: Sequence[str] | Mapping[str, Any],
        fixed: Mapping[str, Any] | None = None,
    ) -> SweepSpec:
        """Build and check a spec.

        Args:
            grid: ``["optimizer=sgd,sam", "lr=0.05,0.1"]`` (the command line's
                ``--grid``) or ``{"optimizer": ["sgd", "sam"], "lr": "0.05,0.1"}``.
            fixed: options of every run: ``data``, ``model``, ``model_kwargs``,
                ``data_kwargs``, ``data_dir``, ``save_every``, ``eval_batch_size``, any
                of :data:`TRAIN_AXES` and optimizer hyper-parameters (``rho``).

        Raises:
            ValueError: a malformed entry, an unknown axis or option, a value of the
                wrong type, a value given twice, an axis also fixed, an optimizer
                hyper-parameter no optimizer of the sweep takes, or a value that cannot
                be part of a folder name.
        """
        pairs = _grid_pairs(grid)
        hp_types = _hparam_types()
        axes: list[tuple[str, tuple[Any, ...]]] = []
        for key, raw in pairs:
            if key in dict(axes):
                raise ValueError(f"Invalid grid: {key} is given twice")
            typ = _axis_type(key, hp_types)
            values = [_coerce(key, v, typ) for v in _split_values(key, raw)]
            for v in values:
                text = _format(v)
                if not _NAME_OK.match(text):
                    raise ValueError(
                        f"Invalid grid {key}: {v!r} cannot be part of a folder name (letters, "
                        "digits and . _ + - only)"
                    )
                if sum(_format(w) == text for w in values) > 1:
                    raise ValueError(f"Invalid grid {key}: {text} is given twice")
            axes.append((key, tuple(values)))
        if not axes:
            raise ValueError("Invalid grid: no axis (expected KEY=V1,V2,... such as lr=0.05,0.1)")
        fixed_out = _check_fixed(dict(fixed or {}), hp_types)
        for key, _ in axes:
            if key in fixed_out:
                raise ValueError(f"Invalid sweep: {key} is both a grid axis and a fixed option")
        spec = cls(tuple(axes), fixed_out)
        spec._check_hparams_apply()
        return spec

    @property
    def axes(self) -> list[str]:
        """The grid's axes, in order."""
        return [key for key, _ in self.grid]

    def to_dict(self) -> dict[str, Any]:
        """``{"grid": {axis: [values]}, "fixed": {...}}`` (JSON-ready)."""
        return {"grid": {k: list(v) for k, v in self.grid}, "fixed": dict(self.fixed)}

    def runs(self) -> list[SweepRun]:
        """The configurations of the grid, in order, without duplicates.

        A combination whose optimizer does not take one of the grid's hyper-parameters
        drops it; the combinations that become equal are one run.
        """
        table = _optimizer_table()
        seen: set[str] = set()
        out: list[SweepRun] = []
        for combo in product(*(values for _, values in self.grid)):
            values = dict(zip(self.axes, combo, strict=True))
            run = _configuration(values, self.fixed, table)
            if run.name not in seen:
                seen.add(run.name)
                out.append(run)
        return out

    def _check_hparams_apply(self) -> None:
        table = _optimizer_table()
        names = dict(self.grid).get("optimizer", (self.fixed.get("optimizer", "sgd"),))
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"Invalid optimizer: {unknown[0]!r} (choose among {', '.join(table)})")
        hp_types = _hparam_types()
        keys = [k for k in (*self.axes, *self.fixed) if k in hp_types and k not in TRAIN_AXES]
        keys += [k for k in (*self.axes, *self.fixed) if k.startswith("hparams.")]
        for key in keys:
            if not any(key.removeprefix("hparams.") in table[n] for n in names):
                takes = {n: sorted(table[n]) for n in names}
                said = "; ".join(f"{n}: {', '.join(t) or 'none'}" for n, t in takes.items())
                raise ValueError(
                    f"Invalid sweep: {key} is a hyper-parameter of no optimizer of the sweep "
                    f"({said})"
                )


def _grid_pairs(grid: Sequence[str] | Mapping[str, Any]) -> list[tuple[str, Any]]:
    if isinstance(grid, Mapping):
        return [(str(k), v) for k, v in grid.items()]
    if isinstance(grid, str):
        grid = [grid]
    pairs = []
    for item in grid:
        key, sep, values = str(item).partition("=")
        if not sep or not key.strip():
            raise ValueError(f"Invalid grid {item!r}: expected KEY=V1,V2,... (e.g. lr=0.05,0.1)")
        pairs.append((key.strip().replace("-", "_"), values))
    return pairs


def _axis_type(key: str, hp_types: Mapping[str, type]) -> type | None:
    if key in TRAIN_AXES:
        return TRAIN_AXES[key]
    if key in hp_types:
        return hp_types[key]
    prefix, dot, rest = key.partition(".")
    if dot and rest and prefix in ("model", "data"):
        if not _NAME_OK.match(key):
            raise ValueError(f"Invalid grid: {key!r} cannot be part of a folder name")
        return None
    if prefix == "hparams" and rest in hp_types:
        return hp_types[rest]
    if key in _FIXED_ONLY:
        raise ValueError(f"Invalid grid: {key} cannot vary within a sweep (give it as an option)")
    allowed = ", ".join([*TRAIN_AXES, *sorted(set(hp_types) - set(TRAIN_AXES))])
    raise ValueError(
        f"Invalid grid: unknown axis {key!r} (choose among {allowed}, model.KEY, data.KEY, "
        "hparams.KEY)"
    )


def _check_fixed(fixed: dict[str, Any], hp_types: Mapping[str, type]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in fixed.items():
        if key in _FIXED_ONLY:
            typ = _FIXED_ONLY[key]
            if typ is None:
                if not isinstance(value, Mapping):
                    raise ValueError(f"Invalid {key}: expected a mapping, got {value!r}")
                out[key] = dict(value)
            else:
                out[key] = _coerce(key, value, typ)
        elif key in TRAIN_AXES or key in hp_types:
            out[key] = _coerce(key, value, TRAIN_AXES.get(key) or hp_types[key])
        elif key.startswith("hparams.") and key[8:] in hp_types:
            out[key] = _coerce(key, value, hp_types[key[8:]])
        else:
            hps = sorted(set(hp_types) - set(TRAIN_AXES))
            allowed = ", ".join([*_FIXED_ONLY, *TRAIN_AXES, *hps, "hparams.KEY"])
            raise ValueError(f"Invalid sweep option: {key!r} (choose among {allowed})")
    return json.loads(json.dumps(out))


def _configuration(
    values: Mapping[str, Any], fixed: Mapping[str, Any], table: Mapping[str, Mapping[str, Any]]
) -> SweepRun:
    """The run of one combination of grid values (hyper-parameters its optimizer lacks dropped)."""
    optimizer = values.get("optimizer", fixed.get("optimizer", "sgd"))
    takes = table[optimizer]
    kwargs: dict[str, Any] = {}
    hparams: dict[str, Any] = {}
    model_kwargs = dict(fixed.get("model_kwargs") or {})
    data_kwargs = dict(fixed.get("data_kwargs") or {})
    applied: dict[str, Any] = {}
    for source in (fixed, values):
        for key, value in source.items():
            prefix, dot, rest = key.partition(".")
            if dot and prefix == "model" and source is values:
                model_kwargs[rest] = value
            elif dot and prefix == "data" and source is values:
                data_kwargs[rest] = value
            elif prefix == "hparams" and dot:
                if rest not in takes:
                    continue  # a hyper-parameter of another optimizer
                hparams[rest] = value
            elif key in TRAIN_AXES or key in _FIXED_ONLY:
                kwargs[key] = value
            elif key in takes:
                hparams[key] = value
            else:
                continue  # a hyper-parameter of another optimizer
            if source is values:
                applied[key] = value
    kwargs.update(model_kwargs=model_kwargs, data_kwargs=data_kwargs, hparams=hparams)
    name = ",".join(f"{k}={_format(v)}" for k, v in applied.items())
    return SweepRun(name, applied, kwargs)


def _as_spec(spec: SweepSpec | Mapping[str, Any]) -> SweepSpec:
    if isinstance(spec, SweepSpec):
        return spec
    if isinstance(spec, Mapping) and "grid" in spec:
        return SweepSpec.parse(spec["grid"], spec.get("fixed"))
    raise ValueError(
        f"Invalid spec: expected a SweepSpec or {{'grid': ..., 'fixed': ...}}, got {spec!r}"
    )


def _check_run(run: SweepRun, checked: dict[str, Any] | None = None) -> None:
    """Refuse, before any work, a configuration ``train`` would refuse."""
    from landscape.data import DATA_NAMES
    from landscape.models import MODEL_NAMES
    from landscape.training import _check_train_arguments, _resolve_hparams

    kw = run.kwargs
    where = f"run {run.name}: "
    try:
        _check_train_arguments(
            epochs=kw.get("epochs", 10),
            batch_size=kw.get("batch_size", 128),
            save_every=kw.get("save_every", 1),
            lr=kw.get("lr", 0.1),
            momentum=kw.get("momentum", 0.9),
            weight_decay=kw.get("weight_decay", 5e-4),
            nonfinite="stop",
            out=None,
            seed=kw.get("seed", 0),
        )
        _resolve_hparams(kw.get("optimizer", "sgd"), kw["hparams"])
        if not 0.0 <= kw.get("label_noise", 0.0) <= 1.0:
            raise ValueError(f"Invalid label_noise: {kw['label_noise']} (a fraction in [0, 1])")
        if kw.get("data", "digits") not in DATA_NAMES:
            raise ValueError(f"Invalid data: {kw['data']!r} (choose among {', '.join(DATA_NAMES)})")
        if kw.get("model", "cnn") not in MODEL_NAMES:
            raise ValueError(
                f"Invalid model: {kw['model']!r} (choose among {', '.join(MODEL_NAMES)})"
            )
        _check_data_and_model(kw, {} if checked is None else checked)
    except (ValueError, FileNotFoundError) as exc:
        raise ValueError(where + str(exc)) from None


def _check_data_and_model(kw: Mapping[str, Any], checked: dict[str, Any]) -> None:
    """Load the run's data (once per distinct data setting) and build its model on ``meta``.

    A bad data or model option (``val_fraction=1.5``, ``model.width=0``) was refused by
    ``train`` only when its run came, after the runs before it had trained.
    """
    import torch

    from landscape.data import load_data
    from landscape.models import build_model, model_spec

    data = {
        "name": kw.get("data", "digits"),
        "data_dir": kw.get("data_dir"),
        "n_per_class": kw.get("n_per_class"),
        "val_fraction": kw.get("val_fraction", 0.0),
        **dict(kw.get("data_kwargs") or {}),
    }
    key = json.dumps(data, sort_keys=True, default=str)
    if key not in checked:
        bundle = load_data(data.pop("name"), seed=kw.get("seed", 0), **data)
        checked[key] = (bundle.input_shape, bundle.num_classes)
    shape, classes = checked[key]
    spec = model_spec(kw.get("model", "cnn"), shape, classes, **dict(kw.get("model_kwargs") or {}))
    with torch.device("meta"):
        build_model(spec.pop("name"), **spec)


# --------------------------------------------------------------------------- running


class SweepInterrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` of :func:`run_sweep`: what is finished stays on disk.

    Attributes:
        finished: runs whose folder holds ``final.pt``.
        total: runs of the sweep.
        out: the sweep folder.
    """

    def __init__(self, finished: int, total: int, out: Path) -> None:
        """Record what is finished; the message is the one the CLI prints."""
        self.finished, self.total, self.out = finished, total, out
        super().__init__(
            f"interrupted: {finished} of {total} runs finished in {out}; run the same command "
            "again to continue (an unfinished run resumes from its last checkpoint)"
        )


@dataclass
class SweepResult:
    """What :func:`run_sweep` returns.

    Attributes:
        spec: the sweep.
        out: the sweep folder.
        runs: the configurations, in order.
        status: run name -> ``"trained"`` (this call), ``"done"`` (finished before) or
            ``"failed"`` (a non-finite loss; left out of the correlation).
        errors: run name -> message, for the failed runs.
        correlation: the :class:`~landscape.correlation.Correlation` of the finished
            runs, or ``None`` (no metrics, or fewer than two finished runs).
        files: the files written (``sweep.json``, ``correlation.json``, the plot).
    """

    spec: SweepSpec
    out: Path
    runs: list[SweepRun]
    status: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    correlation: Any = None
    files: list[Path] = field(default_factory=list)

    def run_dir(self, name: str) -> Path:
        """The run folder of the run ``name``."""
        return self.out / _RUNS / name

    def summary(self) -> str:
        """One line: how many runs were trained, finished before, failed."""
        counts = {s: sum(v == s for v in self.status.values()) for s in ("trained", "done")}
        failed = sum(v == "failed" for v in self.status.values())
        text = (
            f"{len(self.runs)} runs in {self.out}: {counts['trained']} trained, "
            f"{counts['done']} finished before"
        )
        return text + (f", {failed} failed (left out)" if failed else "")


def _train_one(kwargs: Mapping[str, Any], run_dir: str) -> tuple[str, str | None]:
    """Train (or resume) one run into ``run_dir``: ``("trained", None)`` or ``("failed", msg)``."""
    from landscape.training import NonFiniteLoss, train

    try:
        train(**kwargs, out=run_dir, progress=False)
    except NonFiniteLoss as exc:
        return "failed", str(exc)
    return "trained", None


def _train_one_star(job: tuple[str, Mapping[str, Any], str]) -> tuple[str, str, str | None]:
    name, kwargs, run_dir = job
    status, error = _train_one(kwargs, run_dir)
    return name, status, error


def _init_worker(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # a worker process of its own


@contextlib.contextmanager
def _torch_threads(threads: int | None) -> Iterator[None]:
    """Train with ``threads`` torch threads in this process, restoring the number after."""
    import torch

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _finished(run_dir: Path) -> bool:
    return (run_dir / "final.pt").is_file()


def _check_sweep_file(out: Path, spec: SweepSpec) -> None:
    """Refuse a sweep folder whose runs were trained with other fixed options or axes."""
    path = out / _SWEEP_FILE
    if not path.is_file():
        return
    try:
        old = json.loads(path.read_text())
        old_fixed, old_axes = dict(old["spec"]["fixed"]), list(old["spec"]["grid"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(
            f"{path}: not a sweep file ({type(exc).__name__}: {exc}); choose another --out"
        ) from None
    new_fixed = spec.to_dict()["fixed"]
    for key in sorted(set(old_fixed) | set(new_fixed)):
        if old_fixed.get(key) != new_fixed.get(key):
            raise ValueError(
                f"{out}: holds a sweep with other fixed options ({key}: {old_fixed.get(key)!r} "
                f"there, {new_fixed.get(key)!r} now); choose another --out"
            )
    if old_axes != spec.axes:
        raise ValueError(
            f"{out}: holds a sweep over other axes ({', '.join(old_axes)} there, "
            f"{', '.join(spec.axes)} now); choose another --out (values may be added to "
            "the same axes)"
        )


def _write_sweep_file(result: SweepResult) -> Path:
    from landscape._io import write_atomically

    obj = {
        "spec": result.spec.to_dict(),
        "runs": [
            {
                "name": r.name,
                "folder": f"{_RUNS}/{r.name}",
                "values": r.values,
                "status": result.status.get(r.name, "pending"),
                **({"error": result.errors[r.name]} if r.name in result.errors else {}),
            }
            for r in result.runs
        ],
    }
    text = json.dumps(obj, indent=2) + "\n"
    return write_atomically(result.out / _SWEEP_FILE, lambda fh: fh.write(text))


def _train_all(
    result: SweepResult,
    todo: list[SweepRun],
    jobs: int,
    threads: int | None,
    device: str | None,
    progress: bool | None,
) -> None:
    """Train the unfinished runs (``jobs`` at a time), recording each status as it ends."""
    from tqdm.auto import tqdm

    work = [
        (r.name, {**r.kwargs, "device": device}, os.fspath(result.run_dir(r.name))) for r in todo
    ]
    bar = tqdm(total=len(work), desc="sweep", unit="run", disable=progress is False)

    def record(name: str, status: str, error: str | None) -> None:
        result.status[name] = status
        if error is not None:
            result.errors[name] = error
            log.warning("%s: %s", name, error)
        _write_sweep_file(result)
        bar.update(1)

    try:
        if jobs == 1 or len(work) <= 1:
            with _torch_threads(threads):
                for job in work:
                    record(*_train_one_star(job))
        else:
            per = threads or max(1, (os.cpu_count() or 1) // jobs)
            ctx = multiprocessing.get_context("spawn")
            pool = ctx.Pool(min(jobs, len(work)), initializer=_init_worker, initargs=(per,))
            try:
                for outcome in pool.imap_unordered(_train_one_star, work):
                    record(*outcome)
                pool.close()
            except BaseException:
                pool.terminate()  # the unfinished runs resume from their last checkpoint
                raise
            finally:
                pool.join()
    except KeyboardInterrupt:
        done = sum(_finished(result.run_dir(r.name)) for r in result.runs)
        raise SweepInterrupted(done, len(result.runs), result.out) from None
    finally:
        bar.close()


def run_sweep(
    spec: SweepSpec | Mapping[str, Any],
    out: str | os.PathLike[str],
    *,
    metrics: str | Sequence[str] | None = "lambda_max,trace,sam_sharpness",
    jobs: int = 1,
    threads: int | None = None,
    device: str | None = "cpu",
    correlation: Mapping[str, Any] | None = None,
    plot: str | None = "correlation.png",
    progress: bool | None = None,
) -> SweepResult:
    """Train every configuration of a sweep (resumably), then correlate the finished runs.

    Args:
        spec: a :class:`SweepSpec`, or ``{"grid": ..., "fixed": ...}`` for
            :meth:`SweepSpec.parse`.
        out: the sweep folder (``sweep.json``, ``runs/NAME/``, ``correlation.json``).
        metrics: the measures to correlate with the gap (names or ``"a,b"``); ``None``
            trains only.
        jobs: runs trained at once (worker processes when more than one).
        threads: torch threads per run (default: ``cpu_count // jobs`` in workers, this
            process's setting when ``jobs`` is 1).
        device: where to train and measure (``"cpu"``, ``"cuda"``, ``None`` for auto).
        correlation: options of :func:`~landscape.correlation.correlate_runs` (``gap``,
            ``seeds``, ``max_samples``, ``draws``, ``per_metric``, metric options such as
            ``steps``...).
        plot: file name of the scatter plot in ``out`` (``.png``, ``.pdf``, ``.svg``,
            ``.html``), or ``None``.
        progress: progress bars (``None``: on a terminal).

    Returns:
        A :class:`SweepResult`.

    Raises:
        ValueError: a bad spec or configuration, unknown metrics, an ``out`` that cannot
            be written or holds a sweep with other fixed options or axes (all before any
            training).
        SweepInterrupted: Ctrl-C; the finished runs (and the measurements written) stay.
    """
    from landscape._io import check_output
    from landscape.metrics import validate_metric_names

    spec = _as_spec(spec)
    if int(jobs) < 1:
        raise ValueError(f"Invalid jobs: {jobs} (at least 1)")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"Invalid threads: {threads} (at least 1)")
    names = None if metrics is None else validate_metric_names(metrics)
    options = dict(correlation or {})
    if names is not None:
        _check_correlation(names, options)
    out_dir = check_output(out, folder=True)
    runs = spec.runs()
    checked: dict[str, Any] = {}  # the data settings loaded: (input shape, classes)
    for run in runs:
        _check_run(run, checked)
    _check_sweep_file(out_dir, spec)
    if plot is not None:
        check_output(out_dir / plot, suffixes=(".png", ".pdf", ".svg", ".html"), what="plot")
    (out_dir / _RUNS).mkdir(parents=True, exist_ok=True)

    result = SweepResult(spec, out_dir, runs, {})
    for r in runs:
        if _finished(result.run_dir(r.name)):
            result.status[r.name] = "done"
    result.files.append(_write_sweep_file(result))
    todo = [r for r in runs if r.name not in result.status]
    log.info("%s: %d runs, %d to train", out_dir, len(runs), len(todo))
    _train_all(result, todo, int(jobs), threads, device, progress)
    if names is not None:
        _correlate(result, names, options, device, plot, progress)
    return result


def _check_correlation(names: list[str], options: Mapping[str, Any]) -> None:
    """Refuse, before any training, options that :func:`correlate_runs` would refuse."""
    import inspect

    from landscape.correlation import GAPS, SEED_MODES, _check_bootstrap, correlate_runs
    from landscape.metrics.registry import route_options

    own = set(inspect.signature(correlate_runs).parameters) - {"runs", "metrics", "options"}
    taken = {"labels", "out", "progress"} & set(options)
    if taken:
        raise ValueError(f"Invalid correlation option: {sorted(taken)[0]} (the sweep sets it)")
    if options.get("gap", "acc") not in GAPS:
        raise ValueError(f"Invalid gap: {options['gap']!r} (expected 'acc' or 'loss')")
    if options.get("seeds", "replicate") not in SEED_MODES:
        raise ValueError(f"Invalid seeds: {options['seeds']!r} (expected 'replicate' or 'axis')")
    _check_bootstrap(options.get("draws", 1000), options.get("confidence", 0.95))
    shared = {k: v for k, v in options.items() if k not in own}
    route_options(names, shared, options.get("per_metric"))


def _correlate(
    result: SweepResult,
    names: list[str],
    options: dict[str, Any],
    device: str | None,
    plot: str | None,
    progress: bool | None,
) -> None:
    """``correlate_runs`` on the finished runs into ``correlation.json`` (and the plot)."""
    from landscape.correlation import correlate_runs

    finished = [r for r in result.runs if _finished(result.run_dir(r.name))]
    if len(finished) < 2:
        log.warning("%s: %d finished runs; no correlation", result.out, len(finished))
        return
    options.setdefault("device", device)
    corr = correlate_runs(
        [result.run_dir(r.name) for r in finished],
        names,
        labels=[r.name for r in finished],
        out=result.out / "correlation.json",
        progress=progress,
        **options,
    )
    result.correlation = corr
    result.files.append(result.out / "correlation.json")
    if plot is not None:
        from landscape.plotting.files import plot_correlation_file

        result.files.append(plot_correlation_file(corr, result.out / plot))
    bad = [m for m in names if not math.isfinite(corr.tau(m))]
    if bad:
        log.warning("no finite tau for %s", ", ".join(bad))
