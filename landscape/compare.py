"""Compare checkpoints (or models) on a set of metrics: one row per checkpoint.

:func:`compare_checkpoints` opens each checkpoint, rebuilds its data (once per distinct
data spec), computes the selected metrics of :data:`landscape.metrics.METRICS` and returns
a :class:`Comparison`: plain rows a notebook displays as a table, written as JSON or CSV::

    from landscape.compare import compare_checkpoints
    cmp = compare_checkpoints(["sgd/final.pt", "sam/final.pt"], "lambda_max,trace")
    print(cmp.format_table())
    cmp.to_json("cmp.json")

Metric names and options are validated, ``out`` checked to be writable and every
checkpoint to be readable before any work. A checkpoint of a diverged run (weights, or
the loss at them, not finite) gets a row of ``nan`` and a warning naming the file; the
others are measured as usual. With ``out=`` the comparison so far is written after
every checkpoint (atomically), and running the same call again on an existing ``.json``
file resumes it: rows of unchanged checkpoints are reused, only the others are computed.
"""

from __future__ import annotations

import csv
import html
import json
import logging
import math
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from landscape._io import (
    RESUME_ADVICE,
    check_output,
    differences,
    read_json_to_resume,
    write_atomically,
)
from landscape.distributed import (
    DistContext,
    all_gather_object,
    broadcast_object,
    is_main_process,
    joined,
)
from landscape.distributed import shard as shard_items
from landscape.metrics import compute_metrics, validate_metric_names
from landscape.metrics._base import MetricResult, progress_bar
from landscape.metrics.registry import route_options
from landscape.objective import OBJECTIVE_OPTIONS
from landscape.params import ParamSelection, as_selection, selection_text
from landscape.user import UserCheckpoint, UserModel

__all__ = [
    "CompareInterrupted",
    "Comparison",
    "check_output_path",
    "compare_checkpoints",
    "compare_models",
]

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
SHARDS = ("checkpoints", "data")  # what torchrun's processes share out


def check_output_path(path: str | os.PathLike[str]) -> str:
    """Return ``"json"`` or ``"csv"`` from the suffix of ``path``, else raise ``ValueError``."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"Invalid out: {os.fspath(path)!r} (expected a .json or .csv file)")
    return suffix[1:]


def _nan_row(label: str, checkpoint: str, names: Sequence[str], why: str) -> dict[str, Any]:
    """A row of ``nan`` (``None``) cells for a checkpoint that cannot be measured."""
    row: dict[str, Any] = {"checkpoint": checkpoint, "label": label, "nonfinite": why}
    for name in names:
        row[name] = {"value": None, "stderr": None, "info": {"nonfinite": why}}
    return row


def _plain(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``None``, tuples lists, keys strings."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_plain(v) for v in obj]
    if isinstance(obj, str | int | bool) or obj is None:
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _plain(obj.item())
    return str(obj)


def _fmt(value: float | None, stderr: float | None, digits: int) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "nan"
    text = f"{value:.{digits}g}"
    if stderr is not None and math.isfinite(stderr):
        text += f" ± {stderr:.2g}"
    return text


def text_table(header: list[str], body: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest]).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in body)])


@dataclass
class Comparison:
    """Metrics of several checkpoints, one row each.

    Attributes:
        metrics: the table's columns: metric names, then any training-record values
            (``settings["recorded"]``).
        rows: one dict per checkpoint: ``"checkpoint"`` (path or ``""`` for an in-memory
            model), ``"label"``, optional details (``"sha256"``, ``"epoch"``) and, per
            column, ``{"value": v, "stderr": s, "info": {...}}``.
        settings: how the numbers were obtained (split, max_samples, options).
    """

    metrics: list[str]
    rows: list[dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ access
    def value(self, label: str, metric: str) -> float:
        """The value of ``metric`` in the row labelled ``label``."""
        for row in self.rows:
            if row["label"] == label:
                v = row[metric]["value"]
                return math.nan if v is None else float(v)
        raise KeyError(f"no row labelled {label!r}")

    def to_dict(self) -> dict[str, Any]:
        """``{"metrics": [...], "rows": [...], "settings": {...}}`` (JSON-safe)."""
        return _plain({"metrics": self.metrics, "rows": self.rows, "settings": self.settings})

    # ------------------------------------------------------------------ files
    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write the comparison as JSON (NaN written as ``null``, atomically); returns the path."""
        p = Path(path)
        text = json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"
        write_atomically(p, lambda fh: fh.write(text))
        return p

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> Comparison:
        """Read a comparison written by :meth:`to_json`."""
        try:
            obj = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
        if not isinstance(obj, dict) or "metrics" not in obj or "rows" not in obj:
            raise ValueError(f"{path}: not a comparison file (needs 'metrics' and 'rows')")
        return cls(list(obj["metrics"]), list(obj["rows"]), dict(obj.get("settings") or {}))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """Write one CSV line per checkpoint: ``checkpoint,label,<m>,<m>_stderr,...``.

        The file is written atomically; returns the path.
        """
        p = Path(path)
        header = ["checkpoint", "label"]
        for m in self.metrics:
            header += [m, f"{m}_stderr"]

        def write(fh: Any) -> None:
            writer = csv.writer(fh)
            writer.writerow(header)
            for row in self.rows:
                line = [row.get("checkpoint", ""), row["label"]]
                for m in self.metrics:
                    cell = row.get(m) or {}
                    for key in ("value", "stderr"):
                        v = cell.get(key)
                        line.append("" if v is None else repr(float(v)))
                writer.writerow(line)

        write_atomically(p, write, newline="")
        return p

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write JSON or CSV according to the suffix (``.json`` / ``.csv``)."""
        if check_output_path(path) == "json":
            return self.to_json(path)
        return self.to_csv(path)

    # ------------------------------------------------------------------ display
    def _cells(
        self, digits: int, columns: Sequence[str] | None = None
    ) -> tuple[list[str], list[list[str]]]:
        columns = list(self.metrics if columns is None else columns)
        unknown = [c for c in columns if c not in self.metrics]
        if unknown:
            raise ValueError(f"Invalid columns: {unknown} (the table has {self.metrics})")
        header = ["checkpoint", *columns]
        body = []
        for row in self.rows:
            cells = [row["label"]]
            for m in columns:
                cell = row.get(m) or {}
                cells.append(_fmt(cell.get("value"), cell.get("stderr"), digits))
            body.append(cells)
        return header, body

    def format_table(self, digits: int = 4, columns: Sequence[str] | None = None) -> str:
        """A plain-text table: one row per checkpoint, ``mean ± stderr`` per metric.

        Args:
            digits: significant digits.
            columns: the columns to show, in order (default all of :attr:`metrics`).
        """
        return text_table(*self._cells(digits, columns))

    def __str__(self) -> str:
        return self.format_table()

    def _repr_html_(self) -> str:
        header, body = self._cells(4)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body
        )
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


def _row(label: str, checkpoint: str, results: Mapping[str, MetricResult]) -> dict[str, Any]:
    row: dict[str, Any] = {"checkpoint": checkpoint, "label": label}
    for name, res in results.items():
        row[name] = _plain(res.to_dict())
    return row


def _default_labels(paths: Sequence[Path]) -> list[str]:
    """File stems, with as many parent folders as it takes to tell them apart.

    A run's ``checkpoints`` folder is skipped: ``runs/sgd/checkpoints/epoch_0003.pt`` is
    ``sgd/epoch_0003`` when the stem alone is ambiguous.
    """
    folders = [[part for part in p.parent.parts if part != "checkpoints"] or [""] for p in paths]
    for depth in (1, 2, 3):
        labels = [
            "/".join([*f[-(depth - 1) :], p.stem] if depth > 1 else [p.stem])
            for p, f in zip(paths, folders, strict=True)
        ]
        if len(set(labels)) == len(labels):
            return labels
    return [os.fspath(p) for p in paths]


def _check_common(
    metrics: str | Iterable[str],
    options: Mapping[str, Any],
    per_metric: Mapping[str, Mapping[str, Any]] | None,
    labels: Sequence[str] | None,
    count: int,
) -> list[str]:
    names = validate_metric_names(metrics)
    route_options(names, options, per_metric)
    if labels is not None and len(labels) != count:
        raise ValueError(f"Invalid labels: {len(labels)} labels for {count} checkpoints/models")
    if count == 0:
        raise ValueError("Invalid input: nothing to compare")
    return names


def _recorded_names(recorded: str | Iterable[str], metrics: Sequence[str]) -> list[str]:
    """The training-record columns, checked: plain names, no duplicates, no metric's name."""
    items = recorded.split(",") if isinstance(recorded, str) else list(recorded)
    names: list[str] = []
    for item in items:
        name = item.strip() if isinstance(item, str) else item
        if not isinstance(name, str) or not name:
            raise ValueError(f"Invalid recorded: {item!r} (expected names such as test_acc)")
        if name in metrics:
            raise ValueError(
                f"Invalid recorded: {name!r} is also a metric (a column cannot be both)"
            )
        if name not in names:
            names.append(name)
    return names


def _recorded_cell(meta: Mapping[str, Any], name: str) -> dict[str, Any]:
    """One training-record value as a table cell (``None`` when the record lacks it)."""
    record = meta.get("metrics")
    value = record.get(name) if isinstance(record, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float):
        return {"value": None, "stderr": None, "info": {"source": "not recorded"}}
    return {
        "value": _plain(float(value)),
        "stderr": None,
        "info": {"source": "training record", "epoch": meta.get("epoch")},
    }


def compare_models(
    models: Mapping[str, nn.Module] | Sequence[nn.Module],
    data: Any,
    metrics: str | Iterable[str],
    *,
    labels: Sequence[str] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    batch_size: int = 256,
    max_samples: int | None = None,
    per_metric: Mapping[str, Mapping[str, Any]] | None = None,
    forward: Callable[[nn.Module, Any], Any] | None = None,
    compute_loss: Callable[[nn.Module, Any], Any] | None = None,
    count_items: Callable[[Any], Any] | None = None,
    input_key: str | None = None,
    target_key: str | None = None,
    params: Any = None,
    progress: bool | None = None,
    **options: Any,
) -> Comparison:
    """Compare in-memory models on the same data.

    Args:
        models: ``label -> model`` or a sequence of models (labelled ``model0``, ... unless
            ``labels`` is given).
        data: the data every model is measured on (anything ``Objective`` accepts), or a
            mapping ``label -> data``.
        metrics: metric names (list or ``"a,b"``).
        labels: row labels for a sequence of models.
        loss_fn: loss (default cross-entropy).
        batch_size: evaluation batch size.
        max_samples: use only the first ``max_samples`` samples.
        per_metric: options for one metric only.
        forward: ``forward(model, inputs) -> outputs`` (default ``model(inputs)``, or
            ``model(**inputs)`` for a dict).
        compute_loss: ``compute_loss(model, batch)`` returning the batch's mean loss or
            ``(mean_loss, n_items)``, for batches no other rule reads.
        count_items: ``count_items(batch)``: the number of items a batch's loss averages
            (default: tokens not ignored, or samples).
        input_key: key of the inputs in dict batches.
        target_key: key of the targets (labels) in dict batches.
        params: the parameters measured (default: those with ``requires_grad=True``);
            a selection by name, prefix or glob, the same for every model.
        progress: progress bars (``None``: only on a terminal).
        **options: metric options shared by the metrics that take them.
    """
    params = as_selection(params)  # a generator is read once
    reading = {
        "forward": forward,
        "compute_loss": compute_loss,
        "count_items": count_items,
        "input_key": input_key,
        "target_key": target_key,
        "params": params,
    }
    if isinstance(models, Mapping):
        if labels is not None:
            raise ValueError("Invalid labels: the models mapping already labels them")
        labels, items = list(models), list(models.values())
    else:
        items = list(models)
        labels = list(labels) if labels is not None else [f"model{i}" for i in range(len(items))]
    names = _check_common(metrics, options, per_metric, labels, len(items))
    if isinstance(data, Mapping) and set(data) == set(labels):
        per_model_data = [data[label] for label in labels]
    else:
        per_model_data = [data] * len(items)
    rows = []
    for label, model, d in progress_bar(
        list(zip(labels, items, per_model_data, strict=True)), desc="models", progress=progress
    ):
        results = compute_metrics(
            model,
            d,
            names,
            loss_fn=loss_fn,
            batch_size=batch_size,
            max_samples=max_samples,
            per_metric=per_metric,
            progress=progress,
            **reading,
            **options,
        )
        rows.append(_row(label, "", results))
    settings = {"max_samples": max_samples, "options": options, "per_metric": per_metric or {}}
    return Comparison(names, rows, _plain(settings))


def _nonfinite_reason(ckpt: Any) -> str | None:
    """Why a loaded checkpoint cannot be measured (non-finite weights), or ``None``."""
    if not ckpt.nonfinite:
        return None
    shown = ", ".join(ckpt.nonfinite[:3]) + (", ..." if len(ckpt.nonfinite) > 3 else "")
    return f"non-finite weights (nan or inf in {shown}), a diverged run"


#: What ``_nonfinite_loss`` passes on of a row's options: how the loss is computed.
_LOSS_KEYS = frozenset(OBJECTIVE_OPTIONS) | {"loss_fn"}


def _nonfinite_loss(model: nn.Module, data: Any, measure: Mapping[str, Any]) -> str | None:
    """``"non-finite loss (...)"`` when the loss at the model's weights is not finite."""
    loss = compute_metrics(model, data, ["loss"], **{**measure, "progress": False})["loss"]
    value = float(loss.value)
    return None if math.isfinite(value) else f"non-finite loss ({value}) at its weights"


class CompareInterrupted(KeyboardInterrupt):
    """A ``KeyboardInterrupt`` of :func:`compare_checkpoints` writing to ``out``.

    It is a ``KeyboardInterrupt`` (code catching that still works) that says how much of
    the comparison is on disk; running the same call again resumes from there.

    Attributes:
        saved: rows in ``out`` (finished checkpoints, reused rows included).
        total: checkpoints of the call.
        out: the file holding them.
    """

    def __init__(self, saved: int, total: int, out: Path) -> None:
        """Record what is saved; the message is the one the CLI prints."""
        self.saved, self.total, self.out = saved, total, out
        if saved:
            text = (
                f"interrupted: {saved} of {total} checkpoints saved in {out}; "
                "run the same command again to resume"
            )
        else:
            text = (
                f"interrupted before the first of {total} checkpoints was finished: nothing saved"
            )
        super().__init__(text)


def _previous_rows(out: Path, names: list[str], settings: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of the comparison in ``out`` if it was made with ``names`` and ``settings``.

    Raises:
        ValueError: ``out`` is not a comparison, or one with other metrics or settings.
    """
    obj = read_json_to_resume(out)
    if (
        not isinstance(obj, dict)
        or not isinstance(obj.get("metrics"), list)
        or not isinstance(obj.get("rows"), list)
    ):
        raise ValueError(
            f"{out}: not a comparison file (needs 'metrics' and 'rows'); {RESUME_ADVICE}"
        )
    diffs = differences(obj["metrics"], names, "metrics")
    diffs += differences(obj.get("settings") or {}, settings)
    if diffs:
        raise ValueError(
            f"{out}: holds a comparison with different settings ({'; '.join(diffs)}); "
            f"{RESUME_ADVICE}"
        )
    return [row for row in obj["rows"] if isinstance(row, dict)]


def _sha256(item: Path | UserModel) -> str:
    """The sha256 a row records: of the checkpoint file, or a user model's digest."""
    from landscape.checkpoint import file_sha256

    return item.sha256() if isinstance(item, UserModel) else file_sha256(item)


def _where(item: Path | UserModel) -> str:
    """A row's ``checkpoint``: the file (a user model's weights file, else its import path)."""
    if isinstance(item, UserModel):
        return os.fspath(item.weights) if item.weights is not None else item.model
    return os.fspath(item)


def _labels_of(items: Sequence[Path | UserModel]) -> list[str]:
    """Default row labels: file stems (:func:`_default_labels`) or user models' labels."""
    if all(isinstance(i, Path) for i in items):
        return _default_labels(items)  # type: ignore[arg-type]
    labels = [i.label if isinstance(i, UserModel) else i.stem for i in items]
    if len(set(labels)) == len(labels):
        return labels
    return [str(i) for i in items]


def _reusable_rows(
    previous: list[dict[str, Any]], files: Sequence[Path | UserModel], names: list[str]
) -> dict[int, dict[str, Any]]:
    """``index in files -> previous row`` for the files whose sha256 a previous row holds."""
    by_hash: dict[str, dict[str, Any]] = {}
    measured = set()
    for row in previous:
        measured.add(os.path.normpath(str(row.get("checkpoint"))))
        digest = row.get("sha256")
        if isinstance(digest, str) and all(isinstance(row.get(m), dict) for m in names):
            by_hash.setdefault(digest, row)
    found = {}
    for i, path in enumerate(files):
        row = by_hash.get(_sha256(path))
        if row is not None:
            found[i] = row
        elif os.path.normpath(_where(path)) in measured:
            logger.info("%s changed since it was measured (sha256 differs): recomputing", path)
    return found


def compare_checkpoints(
    paths: Sequence[str | os.PathLike[str] | UserModel],
    metrics: str | Iterable[str],
    *,
    split: str = "train",
    max_samples: int | None = None,
    data: Any = None,
    model: nn.Module | Callable[[], nn.Module] | None = None,
    labels: Sequence[str] | None = None,
    loss_fn: Callable[[Any, Any], Any] | None = None,
    device: str | None = None,
    batch_size: int = 256,
    per_metric: Mapping[str, Mapping[str, Any]] | None = None,
    progress: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    recorded: str | Iterable[str] = (),
    params: ParamSelection = None,
    dist: DistContext | None = None,
    shard: str = "checkpoints",
    **options: Any,
) -> Comparison:
    """Compute metrics for each checkpoint, one row each.

    With ``out``, the comparison so far is written after every checkpoint, atomically (a
    temporary file in the same folder renamed over ``out``), so an interrupted call leaves
    a valid file holding the finished rows. Calling again with the same arguments on an
    existing ``.json`` file resumes it: a row is reused when the file's metrics and
    settings equal this call's and the row's ``sha256`` equals the checkpoint file's
    (a rewritten checkpoint is measured again); only the other checkpoints are computed.
    Rows come in the order of ``paths``, with this call's labels. What the file does not
    record (``data``, ``model``, ``loss_fn``, ``device``, ``batch_size``) is assumed
    unchanged. A ``.csv`` ``out`` is written after every checkpoint too but never resumed
    from (it holds neither settings nor hashes): an existing one is overwritten.

    Args:
        paths: checkpoint files (sharpscape checkpoints, or plain state_dicts with
            ``model``) or ``landscape train`` run folders, each standing for its
            checkpoints in epoch order (:func:`landscape.checkpoint.run_checkpoints`);
            labels count the checkpoints. An item may also be a user's model and data
            (:class:`~landscape.user.UserModel`), measured on its own data (its factory
            called once per distinct data import path); its row's ``checkpoint`` is its
            weights file (else its model's import path), its ``sha256`` the digest of
            its import paths and weights, and it also records ``model``, ``data`` and
            ``weights_sha256``.
        metrics: metric names (list or ``"lambda_max,trace"``); see
            :data:`landscape.metrics.METRICS`.
        split: the split of each checkpoint's data to measure on: ``"train"``, ``"val"``
            or ``"test"``.
        max_samples: use only the first ``max_samples`` samples of the split.
        data: measure on this data instead of the checkpoints' own (anything
            ``Objective`` accepts); needed for checkpoints without a data spec.
        model: the module (or a factory returning one) to load plain state_dicts into.
        labels: row labels; default the file stems (with parent folders when needed to
            tell them apart).
        loss_fn: loss (default cross-entropy).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        batch_size: evaluation batch size.
        per_metric: options for one metric only, e.g. ``{"sam_sharpness": {"steps": 5}}``.
        progress: progress bars (``None``: only on a terminal).
        out: a ``.json`` or ``.csv`` file written after every checkpoint (``None``: keep
            the comparison in memory only).
        resume: reuse the rows of an existing ``.json`` ``out``; ``False`` starts over
            and overwrites it.
        recorded: values of each checkpoint's training record to show as extra columns
            after the metrics (list or ``"train_loss,test_acc"``): what ``landscape
            train`` measured at that checkpoint's epoch (``train_loss``, ``train_acc``,
            ``val_*``, ``test_loss``, ``test_acc``, ...), read from the file, not
            recomputed, e.g. test accuracy beside flatness measured on the training
            split. A checkpoint whose record lacks a value (or a plain state_dict) gets
            ``None``.
        params: the parameters measured: those with ``requires_grad=True`` (default) or
            a selection by name, module prefix or glob, the same for every checkpoint
            (:func:`~landscape.params.select_parameters`); recorded in the settings.
        dist: the processes taking part (:class:`~landscape.distributed.DistContext`);
            default: ``torchrun``'s, joined here, else this process alone.
        shard: what the processes share out: ``"checkpoints"`` (round-robin) or
            ``"data"`` (each checkpoint's batches). Nothing to share in one process.
        **options: metric options shared by the metrics that take them (``rho``,
            ``steps``, ``num_products``, ``sigma``, ``num_samples``, ``seed``, ...).

    Raises:
        ValueError: unknown metric/option/split/shard, bad labels or recorded names, an ``out``
            that is neither ``.json`` nor ``.csv``, or an existing ``.json`` ``out`` to
            resume that is not a comparison or holds other metrics or settings, an
            ``out`` that cannot be written, or a checkpoint that is corrupt, truncated or
            not loadable with ``weights_only=True`` (all before any work).
        FileNotFoundError: a checkpoint is missing, or a run folder holds none (before
            any work).
        CompareInterrupted: a ``KeyboardInterrupt`` while writing to ``out``; it says how
            many rows the file holds.
    """
    params = as_selection(params)  # a generator is read once
    args = dict(locals())  # this call's arguments by name (the settings, the measuring)
    files = _expand_paths(paths)
    names = _check_common(metrics, options, per_metric, labels, len(files))
    record_names = _recorded_names(recorded, names)
    main = dist.is_main if dist is not None else is_main_process()
    out_path, kind = _check_inputs(files, split, out, shard, writes=main)
    settings = _settings_of(args, record_names)
    row_labels = list(labels) if labels is not None else _labels_of(files)
    with joined(dist, device) as ctx:
        written = out_path if ctx.is_main else None  # one writer: process 0
        table = _Table([*names, *record_names], settings, files, row_labels, written)
        todo = table.reuse(kind, resume, ctx)
        measure = _Measure(args, names, record_names, ctx)
        try:
            _measure_all(table, measure, todo, progress)
        except KeyboardInterrupt as exc:
            if written is None:
                raise
            raise CompareInterrupted(table.saved, len(files), written) from exc
        measure.warn_unrecorded(table.rows)
    return table.comparison()


def _expand_paths(paths: Sequence[str | os.PathLike[str] | UserModel]) -> list[Path | UserModel]:
    """The checkpoints to compare: a run folder stands for its checkpoints, by epoch."""
    from landscape.checkpoint import run_checkpoints

    files: list[Path | UserModel] = []
    for item in paths:
        if isinstance(item, UserModel):
            files.append(item)
            continue
        p = Path(item)
        files += run_checkpoints(p) if p.is_dir() else [p]
    return files


def _check_inputs(
    files: Sequence[Path | UserModel],
    split: str,
    out: str | os.PathLike[str] | None,
    shard: str,
    writes: bool = True,
) -> tuple[Path | None, str | None]:
    """Check the split, shard, ``out`` and every checkpoint before any work.

    ``out`` is probed only by the process that ``writes`` it (under torchrun, process 0:
    another node may not even see its folder).

    Returns:
        ``out``'s path and kind (``"json"``, ``"csv"`` or ``None``).
    """
    from landscape.checkpoint import check_readable

    if split not in SPLITS:
        raise ValueError(f"Invalid split: {split!r} (expected one of {', '.join(SPLITS)})")
    if shard not in SHARDS:
        raise ValueError(f"Invalid shard: {shard!r} (expected one of {', '.join(SHARDS)})")
    out_path = None if out is None else Path(out)
    kind = None if out is None else check_output_path(out)
    if out is not None and writes:
        check_output(out, suffixes=(".json", ".csv"), what="out")
    missing = [os.fspath(p) for p in files if isinstance(p, Path) and not p.is_file()]
    if missing:
        raise FileNotFoundError(f"no such checkpoint: {', '.join(missing)}")
    for p in files:  # a corrupt, truncated or unsafe file is refused before any work
        if isinstance(p, UserModel):
            p.check()
            if p.weights is not None and Path(p.weights).suffix != ".safetensors":
                check_readable(p.weights)
        else:
            check_readable(p)
    return out_path, kind


def _settings_of(args: Mapping[str, Any], record_names: list[str]) -> dict[str, Any]:
    """The settings a comparison file records (and resuming compares), from the arguments."""
    settings = {
        "split": args["split"] if args["data"] is None else None,
        "max_samples": args["max_samples"],
        "options": args["options"],
        "per_metric": args["per_metric"] or {},
    }
    if record_names:  # (only then: files written before this option resume as they were)
        settings["recorded"] = record_names
    if args["params"] is not None:  # (likewise)
        settings["params"] = selection_text(args["params"])
    # Exactly what the file holds after a JSON round trip (tuples become lists, ...).
    return json.loads(json.dumps(_plain(settings), allow_nan=False))


class _Table:
    """The rows of a comparison in the order of the files, saved to ``out`` as they come."""

    def __init__(
        self,
        columns: list[str],
        settings: dict[str, Any],
        files: Sequence[Path | UserModel],
        labels: Sequence[str],
        out_path: Path | None,
    ) -> None:
        """No rows yet, none saved."""
        self.columns, self.settings, self.files, self.labels = columns, settings, files, labels
        self.out_path = out_path
        self.rows: list[dict[str, Any] | None] = [None] * len(files)
        self.saved = 0  # rows of this call that the file on disk holds

    def reuse(self, kind: str | None, resume: bool, ctx: DistContext) -> list[int]:
        """Take the rows of unchanged checkpoints from ``out`` (a ``.json`` one resumed).

        Process 0 reads the file (the only one given ``out``) and tells the others what
        it reuses, or why it cannot resume (raised on every process).

        Returns:
            The indices of the files still to measure.
        """
        reused: dict[int, dict[str, Any]] = {}
        error: ValueError | None = None
        try:
            reused = self._previous(kind, resume)
        except ValueError as exc:
            error = exc
        if ctx.distributed:
            why, reused = broadcast_object((None if error is None else str(error), reused), ctx)
            if error is None and why is not None:
                error = ValueError(why)
        if error is not None:
            raise error
        for i, row in reused.items():
            self.rows[i] = {**row, "checkpoint": _where(self.files[i]), "label": self.labels[i]}
        self.saved = len(reused)
        return [i for i, row in enumerate(self.rows) if row is None]

    def _previous(self, kind: str | None, resume: bool) -> dict[int, dict[str, Any]]:
        """``index -> row`` of ``out``'s rows to reuse (none without a ``.json`` to resume)."""
        out_path = self.out_path
        if out_path is None:
            return {}
        if kind == "json" and resume and out_path.is_file():
            previous = _previous_rows(out_path, self.columns, self.settings)
            reused = _reusable_rows(previous, self.files, self.columns)
            logger.info("resuming %s: %d of %d rows reused", out_path, len(reused), len(self.files))
            return reused
        if out_path.exists():
            why = " (CSV files are not resumed from)" if kind == "csv" and resume else ""
            logger.info("%s exists: overwriting it%s", out_path, why)
        return {}

    def set(self, i: int, row: dict[str, Any]) -> None:
        """Fill in row ``i``, and save the table when there is an ``out``."""
        self.set_many([(i, row)])

    def set_many(self, rows: Sequence[tuple[int, dict[str, Any]]]) -> None:
        """Fill in rows (``(index, row)``), then save the table once when there is an ``out``."""
        for i, row in rows:
            self.rows[i] = row
        if self.out_path is not None and rows:
            self.save()

    def save(self) -> None:
        """Write the finished rows to ``out`` (atomically)."""
        assert self.out_path is not None
        done = self.comparison()
        done.save(self.out_path)
        self.saved = len(done.rows)

    def comparison(self) -> Comparison:
        """The finished rows as a :class:`Comparison`."""
        return Comparison(self.columns, [r for r in self.rows if r is not None], self.settings)


class _Measure:
    """Measures a checkpoint into a row: opens it, finds its data, computes the metrics."""

    def __init__(
        self,
        args: Mapping[str, Any],
        names: list[str],
        record_names: list[str],
        ctx: DistContext,
    ) -> None:
        """Take :func:`compare_checkpoints`'s arguments by name; resolve the device.

        Under torchrun each process computes on its own device (``ctx.device``). With
        ``shard="data"`` the metrics share each checkpoint's batches among the processes
        (``dist=ctx``); otherwise each process measures alone: ``compute_metrics`` gets
        a single-process context and never touches the process group.
        """
        from landscape._device import resolve_device

        self.names, self.record_names, self.ctx = names, record_names, ctx
        self.model, self.data, self.split = args["model"], args["data"], args["split"]
        self.per_metric, self.options = args["per_metric"], args["options"]
        keys = ("loss_fn", "batch_size", "max_samples", "progress", "params")
        self.measure = {k: args[k] for k in keys}  # compute_metrics' options
        if not ctx.is_main:
            self.measure["progress"] = False
        self.dev = ctx.device if ctx.distributed else resolve_device(args["device"])
        self.share_data = ctx.distributed and args["shard"] == "data"
        self.measure["dist"] = ctx if self.share_data else DistContext(device=self.dev)
        self.bundles: dict[str, Any] = {}  # data spec -> its data, loaded once
        self.record_keys: set[str] = set()  # what the measured checkpoints' records hold

    def open(self, path: Path | UserModel) -> tuple[Any, Any]:
        """The loaded checkpoint and the data to measure it on."""
        from landscape.checkpoint import load_checkpoint

        if isinstance(path, UserModel):
            ckpt = path.open(map_location=self.dev)
            key = json.dumps(["user", path.data, path.seed])
        else:
            model = self.model
            target = model() if callable(model) and not isinstance(model, nn.Module) else model
            ckpt = load_checkpoint(path, target, map_location=self.dev)
            key = json.dumps(ckpt.data_spec, sort_keys=True, default=str)
        if self.data is not None:
            return ckpt, self.data
        if key not in self.bundles:
            self.bundles[key] = ckpt.load_data()
        measured_on = getattr(self.bundles[key], self.split)
        if measured_on is None:
            raise ValueError(f"{path}: its data has no {self.split!r} split")
        return ckpt, measured_on

    def results(
        self, ckpt: Any, measured_on: Any
    ) -> tuple[Mapping[str, MetricResult] | None, str | None]:
        """The metrics at the checkpoint, or why its row is nan (weights or loss not finite)."""
        why = _nonfinite_reason(ckpt)
        if why is not None:
            return None, why
        options = ckpt.objective_options({**self.measure, **self.options})
        try:
            results = compute_metrics(
                ckpt.model, measured_on, self.names, per_metric=self.per_metric, **options
            )
        except (ValueError, ArithmeticError):
            # Metrics fail on non-finite values (e.g. "array must not contain infs
            # or NaNs"): a nan row when the loss itself is not finite there.
            loss_only = {k: v for k, v in options.items() if k in _LOSS_KEYS or k in self.measure}
            why = _nonfinite_loss(ckpt.model, measured_on, loss_only)
            if why is None:
                raise
            return None, why
        return results, None

    def row(self, path: Path | UserModel, label: str) -> dict[str, Any]:
        """The row of one checkpoint: metrics (or nan), training record, sha256, epoch."""
        ckpt, measured_on = self.open(path)
        logger.info("measuring %s (%s)", path, label)
        results, why = self.results(ckpt, measured_on)
        if results is None:
            logger.warning("%s: %s; its row is nan", path, why)
            row = _nan_row(label, _where(path), self.names, str(why))
        else:
            row = _row(label, _where(path), results)
        if isinstance(ckpt, UserCheckpoint):
            row.update(ckpt.attrs())
        for name in self.record_names:
            row[name] = _recorded_cell(ckpt.meta, name)
        if isinstance(ckpt.meta.get("metrics"), Mapping):
            self.record_keys.update(ckpt.meta["metrics"])
        row["sha256"] = ckpt.sha256
        row["epoch"] = ckpt.epoch
        return row

    def warn_unrecorded(self, rows: Sequence[dict[str, Any] | None]) -> None:
        """Warn about ``recorded`` names that no checkpoint's training record holds.

        Under torchrun the processes pool what their checkpoints' records hold; process
        0 warns.
        """
        if self.ctx.distributed and not self.share_data:
            self.record_keys = set().union(*all_gather_object(self.record_keys, self.ctx))
        missing = [n for n in self.record_names if all(r[n]["value"] is None for r in rows if r)]
        if missing and self.ctx.is_main:
            logger.warning(
                "recorded %s: in no checkpoint's training record (they hold: %s)",
                ", ".join(missing),
                ", ".join(sorted(self.record_keys)) or "no record",
            )


def _measure_all(table: _Table, measure: _Measure, todo: list[int], progress: bool | None) -> None:
    """Measure the checkpoints ``todo`` into ``table`` (saved as the rows come).

    In one process, or with ``shard="data"``, one checkpoint after the other (every
    process measures each, on its share of the data). Otherwise in rounds: each process
    measures its next checkpoint of a round-robin share, and every process gathers the
    round's rows (process 0 then saves them). A checkpoint that fails is raised on every
    process after the round's other rows are saved.
    """
    ctx = measure.ctx
    shown = progress if ctx.is_main else False
    if not ctx.distributed or measure.share_data:
        for i in progress_bar(todo, desc="checkpoints", progress=shown):
            table.set(i, measure.row(table.files[i], table.labels[i]))
    else:
        mine = shard_items(todo, ctx)
        rounds = math.ceil(len(todo) / ctx.world_size)
        with progress_bar(total=len(todo), desc="checkpoints", progress=shown) as bar:
            for r in range(rounds):
                sent, error = [], None  # this process's (index, row, failure) of the round
                if r < len(mine):
                    row, error = _attempt(measure, table, mine[r])
                    sent = [(mine[r], row, _why(error))]
                done = [item for part in all_gather_object(sent, ctx) for item in part]
                table.set_many([(i, row) for i, row, _ in done if row is not None])
                bar.update(len(done))
                if error is not None:
                    raise error
                failed = [(i, why) for i, _, why in done if why is not None]
                if failed:
                    raise RuntimeError(f"{_where(table.files[failed[0][0]])}: {failed[0][1]}")
    if table.out_path is not None and not todo:
        table.save()  # every row reused: this call's labels and order


def _attempt(
    measure: _Measure, table: _Table, i: int
) -> tuple[dict[str, Any] | None, Exception | None]:
    """``(row, None)`` for checkpoint ``i``, or ``(None, error)`` when measuring it failed."""
    try:
        return measure.row(table.files[i], table.labels[i]), None
    except Exception as exc:  # raised on every process after the round (see _measure_all)
        return None, exc


def _why(error: Exception | None) -> str | None:
    """An error as text another process can raise (exceptions may not pickle)."""
    return None if error is None else f"{type(error).__name__}: {error}"
