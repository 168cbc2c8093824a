"""One self-contained, offline HTML page summarising runs, surfaces and curvature.

:func:`build_report` gathers what it is given (or finds inside run folders):

- comparison tables: JSON files of :class:`landscape.compare.Comparison`
  (``{"metrics": [...], "rows": [...]}``), or computed from checkpoints when metric
  names are passed; a comparison of one run's checkpoints at two or more epochs also
  gets its metrics drawn against the epoch under its table;
- a finding: for a comparison of several final models with a flatness measure
  (``lambda_max`` or ``trace``) and the recorded ``test_acc``, one sentence computed from
  its numbers when the page is built (:func:`landscape.correlation.flatness_finding`),
  over a table of flatness and accuracy side by side;
- surfaces: HDF5 files in the layout of ``analysis.md`` (2-D ones as interactive 3-D
  landscapes, plus one togglable scene when there are several; 1-D ones as curves;
  mode-connectivity curves of :func:`landscape.connectivity.fit_curve` as the loss and
  error along the curve and the line, with a table of their barriers);
- spectra: spectral density JSON (``landscape hessian --out``) on a log axis;
- training curves: run folders' ``metrics.jsonl``.

plotly.js is embedded once, inline, so the page works without a network.  Every string
from the user or the files (names, labels, paths, metric names) is HTML-escaped.
"""

from __future__ import annotations

import datetime as _dt
import html
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from landscape._version import __version__

__all__ = [
    "ReportInputs",
    "build_report",
    "collect_report_inputs",
    "comparison_table_html",
    "connectivity_table_html",
    "finding_html",
]

logger = logging.getLogger(__name__)


@dataclass
class ReportInputs:
    """What a report shows, sorted by kind (paths, or loaded objects)."""

    surfaces: list[Any] = field(default_factory=list)
    comparisons: list[dict] = field(default_factory=list)
    spectra: list[tuple[str, Any]] = field(default_factory=list)
    runs: list[tuple[str, list[dict]]] = field(default_factory=list)
    checkpoints: list[Path] = field(default_factory=list)
    given_checkpoints: list[Path] = field(default_factory=list)  # named as inputs

    def empty(self) -> bool:
        """True when there is nothing to show."""
        return not (self.surfaces or self.comparisons or self.spectra or self.runs)


def _classify_json(path: Path, inputs: ReportInputs) -> bool:
    from landscape.plotting._common import find_density_dict

    try:
        with path.open() as fh:
            data = json.load(fh)
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
    if isinstance(data, Mapping) and isinstance(data.get("rows"), list):
        inputs.comparisons.append({**data, "_source": str(path)})
        return True
    density = find_density_dict(data)
    if density is not None:
        inputs.spectra.append((path.stem, density))
        return True
    return False


def collect_report_inputs(paths: Sequence[str | os.PathLike]) -> ReportInputs:
    """Sort files and run folders into surfaces, comparisons, spectra and runs.

    A folder contributes its ``metrics.jsonl`` (training curves), its checkpoints
    (``final.pt``, else the last of ``checkpoints/``) and every ``*.h5`` and ``*.json``
    file below it that is a surface, a comparison or a density.

    Raises:
        FileNotFoundError: for a path that does not exist.
        ValueError: for a file of a kind the report cannot show.
    """
    inputs = ReportInputs()
    run_paths: list[Path] = []  # the folder of each run, to tell runs of one name apart
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise FileNotFoundError(f"report input not found: {path}")
        if path.is_dir():
            had = len(inputs.runs)
            _collect_dir(path, inputs)
            run_paths += [path] * (len(inputs.runs) - had)
            continue
        suffix = path.suffix.lower()
        if suffix in (".h5", ".hdf5"):
            inputs.surfaces.append(path)
        elif suffix == ".jsonl":
            from landscape.plotting._common import read_metrics_jsonl

            inputs.runs.append((path.parent.name or path.stem, read_metrics_jsonl(path)))
            run_paths.append(path.parent if path.parent.name else path.with_suffix(""))
        elif suffix == ".json":
            if not _classify_json(path, inputs):
                raise ValueError(f"{path}: neither a comparison nor a spectral density JSON")
        elif suffix in (".pt", ".pth"):
            inputs.checkpoints.append(path)
            inputs.given_checkpoints.append(path)
        else:
            raise ValueError(
                f"report input {path} is not a run folder, .h5, .json, .jsonl or .pt file"
            )
    labels = _distinct_labels(run_paths)
    inputs.runs = [(label, rows) for label, (_, rows) in zip(labels, inputs.runs, strict=True)]
    return inputs


def _distinct_labels(paths: Sequence[Path]) -> list[str]:
    """The shortest trailing parts of each path that tell them apart (``a/run``, ``b/run``).

    Runs of one folder name (``seed0/final``, ``seed1/final``) were drawn under the same
    legend entry.  Paths naming the same folder keep its name.
    """
    resolved = [p.resolve() for p in paths]
    for depth in range(1, max((len(p.parts) for p in resolved), default=1) + 1):
        labels = ["/".join(p.parts[-depth:]) for p in resolved]
        clash = any(
            labels[i] == labels[j] and resolved[i] != resolved[j]
            for i in range(len(labels))
            for j in range(i)
        )
        if not clash:
            return labels
    return [str(p) for p in resolved]


def _collect_dir(path: Path, inputs: ReportInputs) -> None:
    from landscape.plotting._common import read_metrics_jsonl

    if (path / "metrics.jsonl").exists():
        inputs.runs.append((path.name, read_metrics_jsonl(path)))
    if (path / "final.pt").exists():
        inputs.checkpoints.append(path / "final.pt")
    elif (path / "checkpoints").is_dir():
        found = sorted((path / "checkpoints").glob("*.pt"))
        if found:
            inputs.checkpoints.append(found[-1])
    for h5 in sorted(path.rglob("*.h5")):
        inputs.surfaces.append(h5)
    for js in sorted(path.rglob("*.json")):
        if js.name == "config.json":
            continue
        try:
            _classify_json(js, inputs)
        except ValueError as exc:
            logger.warning("report: skipping %s", exc)


# --- HTML pieces -----------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, int | float):
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


#: Comparison tables with more rows than this start folded (``<details>``).
_OPEN_TABLE_ROWS = 12


def comparison_table_html(comparison: Mapping[str, Any]) -> str:
    """An escaped HTML table of a comparison (the JSON layout of ``landscape compare``)."""
    rows = list(comparison.get("rows") or [])
    metrics = list(comparison.get("metrics") or [])
    if not metrics:  # infer from the rows: every key holding a {value, stderr} cell
        for row in rows:
            for key, cell in row.items():
                if isinstance(cell, Mapping) and "value" in cell and key not in metrics:
                    metrics.append(key)
    head = "".join(f"<th>{html.escape(str(m))}</th>" for m in metrics)
    body = []
    for row in rows:
        label = row.get("label") or row.get("checkpoint") or ""
        cells = [
            f'<th scope="row" title="{html.escape(str(row.get("checkpoint", "")))}">'
            f"{html.escape(str(label))}</th>"
        ]
        for m in metrics:
            cell = row.get(m)
            if isinstance(cell, Mapping):
                text = _fmt(cell.get("value"))
                if cell.get("stderr") is not None:
                    text += f" ± {_fmt(cell.get('stderr'))}"
            else:
                text = _fmt(cell)
            cells.append(f"<td>{html.escape(text)}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    return (
        '<table class="comparison"><thead><tr><th>checkpoint</th>'
        f"{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
    )


#: Columns beside the flatness measure and the accuracy in a finding's table (training
#: record values, when the comparison has them).
_FINDING_RECORDED = ("train_loss", "train_acc", "train_clean_acc")


def finding_html(comparison: Mapping[str, Any]) -> str | None:
    """A comparison's finding: the sentence, over flatness and accuracy side by side.

    The sentence is :func:`landscape.correlation.flatness_finding` of the comparison's
    numbers; the table shows, per model, the flatness measures it has (``lambda_max``,
    ``trace``), ``test_acc`` and the training record's ``train_loss``, ``train_acc`` and
    ``train_clean_acc`` (when present).  ``None`` when the comparison has no flatness
    measure, no ``test_acc``, fewer than two models with both, or follows one run through
    training (epochs of the same run are not independent models).
    """
    from landscape.correlation import FLATNESS_MEASURES, flatness_finding

    if _curves_worth_drawing(comparison):
        return None
    try:
        finding = flatness_finding(comparison)
    except ValueError as exc:
        logger.info("report: no finding for %s: %s", comparison.get("_source", ""), exc)
        return None
    columns = list(comparison.get("metrics") or [])
    shown = [m for m in FLATNESS_MEASURES if m in columns] + [finding.accuracy]
    shown += [m for m in _FINDING_RECORDED if m in columns]
    table = comparison_table_html({"metrics": shown, "rows": comparison.get("rows") or []})
    note = "Lower λmax and trace: flatter. Accuracies in percent."
    if finding.clean:
        note += (
            " The models were trained on noisy labels: train_loss and train_acc are on "
            "the noisy training labels, train_clean_acc on the same images with their "
            "clean labels, test_acc on the test labels, which are never noised."
        )
    return (
        f'<p class="finding">{html.escape(finding.sentence)}</p>'
        f'<p class="meta">{html.escape(note)}</p>{table}'
    )


def connectivity_table_html(curves: Sequence[Any]) -> str:
    """An escaped HTML table of curve files' barriers: line vs fitted curve (train, test)."""
    head = (
        "<tr><th>curve</th><th>kind</th><th>line barrier</th><th>curve barrier</th>"
        "<th>line error barrier (pp)</th><th>curve error barrier (pp)</th>"
        "<th>test: line / curve barrier</th><th>fit</th></tr>"
    )
    body = []
    for s in curves:
        a = s.attrs
        test = ""
        if a.get("test_barrier") is not None:
            test = f"{_fmt(a.get('line_test_barrier'))} / {_fmt(a.get('test_barrier'))}"
        fit = f"{a.get('epochs')} epochs, lr {_fmt(a.get('lr'))}, seed {a.get('seed')}"
        cells = [
            Path(str(s.path)).stem if s.path else "curve",
            a.get("connectivity"),
            _fmt(a.get("line_train_barrier")),
            _fmt(a.get("train_barrier")),
            _fmt(a.get("line_train_error_barrier")),
            _fmt(a.get("train_error_barrier")),
            test,
            fit,
        ]
        body.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return (
        "<p>The barrier of a path is its highest loss above the straight interpolation of "
        "its two ends' losses (Garipov et al. 2018; Frankle et al. 2020).</p>"
        f'<table class="comparison"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'
    )


def _curves_worth_drawing(comparison: Mapping[str, Any]) -> bool:
    """True when a comparison follows a run through training.

    Some run folder's rows span two or more distinct epochs (a table of several runs'
    final checkpoints, one epoch per run, is not a curve).
    """
    from landscape.plotting._common import run_of

    epochs: dict[str, set] = {}
    for row in comparison.get("rows") or []:
        if isinstance(row, Mapping) and row.get("epoch") is not None:
            run = run_of(row["checkpoint"]) if row.get("checkpoint") else ""
            epochs.setdefault(run, set()).add(row["epoch"])
    return any(len(e) >= 2 for e in epochs.values())


def _metric_curves_figure(comparison: Mapping[str, Any]) -> Any:
    """The interactive metric curves of a comparison worth drawing, else None."""
    if not _curves_worth_drawing(comparison):
        return None
    from landscape.plotting.interactive import interactive_metric_curves

    src = str(comparison.get("_source") or "")
    label = Path(src).stem if src and src != "computed" else "comparison"
    try:
        return interactive_metric_curves(comparison, title=f"{label}: metrics against the epoch")
    except ValueError as exc:  # e.g. no finite value at any epoch
        logger.warning("report: no metric curves for %s: %s", src or label, exc)
        return None


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222;
       padding: 0 1em; box-sizing: border-box; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: 0.2em; }
table.comparison { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
table.comparison th, table.comparison td { border: 1px solid #ccc; padding: 0.3em 0.6em; }
table.comparison td { text-align: right; font-variant-numeric: tabular-nums; }
.meta { color: #666; font-size: 0.85em; } .figure { margin: 1em 0; overflow-x: auto; }
.finding { font-size: 1.1em; border-left: 4px solid #3f51b5; padding-left: 0.8em; }
"""


def build_report(
    inputs: Sequence[str | os.PathLike] | ReportInputs,
    out: str | os.PathLike,
    *,
    title: str = "sharpscape report",
    metric: str = "train_loss",
    log: bool = False,
    compute_metrics: Sequence[str] | None = None,
    compare_options: Mapping[str, Any] | None = None,
    max_3d: int = 3,
    models: Sequence[Any] = (),
) -> Path:
    """Write the report page and return its path.

    Args:
        inputs: run folders and files (see :func:`collect_report_inputs`), or inputs
            already collected.
        out: the HTML file to write.
        title: page title.
        metric: the surface metric drawn in 3-D.
        log: draw surfaces as ``log10`` of the metric.
        compute_metrics: metric names to compute on the inputs' checkpoints with
            :func:`landscape.compare.compare_checkpoints` (the table is otherwise read
            from comparison JSON files only).
        compare_options: extra keyword arguments for ``compare_checkpoints``.
        max_3d: with at most this many surfaces, each also gets its own 3-D figure.
        models: users' models (:class:`~landscape.user.UserModel`) measured with the
            inputs' checkpoints (after them) when ``compute_metrics`` is given.

    Raises:
        ValueError: when the inputs hold nothing to show.
    """
    from landscape.plotting._common import as_surface

    collected = inputs if isinstance(inputs, ReportInputs) else collect_report_inputs(inputs)
    _add_computed_comparison(collected, compute_metrics, compare_options, models)
    if collected.empty():
        raise ValueError(
            "nothing to report: give run folders, surface .h5 files, comparison or density "
            ".json files"
        )
    surfaces = [as_surface(s) for s in collected.surfaces]
    # (heading, blocks): a block is an HTML string or a plotly figure, in page order.
    sections = [
        *_comparison_sections(collected.comparisons),
        *_surface_sections(surfaces, metric, log, max_3d),
        *_other_sections(collected, surfaces, log),
    ]
    page, n_figures = _page(title, sections, surfaces)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    logger.info("report written to %s (%d figures)", out, n_figures)
    return out


Section = tuple[str, list[Any]]


def _add_computed_comparison(
    collected: ReportInputs,
    compute_metrics: Sequence[str] | None,
    compare_options: Mapping[str, Any] | None,
    models: Sequence[Any],
) -> None:
    """Measure the inputs' checkpoints (and ``models``) when metrics are asked for."""
    if models and not compute_metrics:
        raise ValueError("models were given without compute_metrics (the metrics to compute)")
    if not compute_metrics:
        if collected.given_checkpoints:
            raise ValueError(
                f"report input {collected.given_checkpoints[0]} is a checkpoint: it is "
                "measured only with compute_metrics (--compute METRICS); give the metrics or "
                "leave it out"
            )
        return
    if not collected.checkpoints and not models:
        raise ValueError("compute_metrics was given but the inputs hold no checkpoint")
    from landscape.compare import compare_checkpoints

    comp = compare_checkpoints(
        [str(p) for p in collected.checkpoints] + list(models),
        list(compute_metrics),
        **dict(compare_options or {}),
    )
    collected.comparisons.append(
        {"metrics": list(compute_metrics), "rows": comp.rows, "_source": "computed"}
    )


def _comparison_sections(comparisons: Sequence[Mapping[str, Any]]) -> list[Section]:
    """The finding (when one can be computed) and the comparison tables with their curves."""
    sections: list[Section] = []
    findings = [f for f in map(finding_html, comparisons) if f is not None]
    if findings:
        sections.append(("Finding", findings))
    if not comparisons:
        return sections
    blocks: list[Any] = []
    for comp in comparisons:
        src = comp.get("_source", "")
        table = comparison_table_html(comp)
        n_rows = len(comp.get("rows") or [])
        if n_rows > _OPEN_TABLE_ROWS:  # a long table (a run's every epoch) starts folded
            table = f"<details><summary>table: {n_rows} rows</summary>{table}</details>"
        blocks.append(f'<p class="meta">source: {html.escape(str(src))}</p>' + table)
        curves = _metric_curves_figure(comp)
        if curves is not None:
            blocks.append(curves)
    sections.append(("Sharpness comparison", blocks))
    return sections


_SURFACE_NOTE = (
    "<p>Drag to rotate, scroll to zoom; hover for coordinates and every stored "
    "metric. Buttons (or legend entries) toggle surfaces in the shared scene; "
    "the contour maps share its colour scale.</p>"
)
_PATH_NOTE = (
    "<p>Each path is the run's checkpoints projected on the plane of its top-2 "
    "PCA directions, the same plane the contours are evaluated on.</p>"
)


def _surface_sections(
    surfaces: Sequence[Any], metric: str, log: bool, max_3d: int
) -> list[Section]:
    """The 2-D surfaces: random planes, then training paths on their PCA planes."""
    from landscape.plotting import interactive as ia
    from landscape.plotting._common import surface_ndim, trajectory_of

    planes = [s for s in surfaces if surface_ndim(s) == 2]
    groups = (
        ("Loss surfaces", [s for s in planes if trajectory_of(s) is None]),
        ("Training paths on their PCA planes", [s for s in planes if trajectory_of(s) is not None]),
    )
    sections: list[Section] = []
    for heading, group in groups:
        usable = []
        for s in group:
            if metric in s.values:
                usable.append(s)
            else:
                logger.warning("report: %s has no %r; skipped", s.path, metric)
        if not usable:
            continue
        has_path = heading.startswith("Training")
        figs = []
        if len(usable) > 1:
            figs.append(ia.interactive_surfaces(usable, metric, log=log))
        # Browsers cap the number of WebGL contexts per page (about 16): beyond max_3d
        # surfaces per group, the shared 3-D scene and the SVG contour maps show them.
        if len(usable) > 1 or has_path or len(usable) > max_3d:
            figs.append(ia.interactive_contours(usable, metric, log=log))
        if len(usable) <= max_3d:
            figs.extend(ia.interactive_surface(s, metric, log=log) for s in usable)
        note = _SURFACE_NOTE + (_PATH_NOTE if has_path else "")
        sections.append((heading, [note, *figs]))
    return sections


def _other_sections(collected: ReportInputs, surfaces: Sequence[Any], log: bool) -> list[Section]:
    """1-D curves, mode connectivity, spectral densities and training curves."""
    from landscape.connectivity import is_curve_file
    from landscape.plotting import interactive as ia
    from landscape.plotting._common import surface_ndim

    lines = [s for s in surfaces if surface_ndim(s) == 1]
    curves = [s for s in lines if is_curve_file(s)]
    lines = [s for s in lines if not is_curve_file(s)]
    sections: list[Section] = []
    if lines:
        sections.append(("1-D loss curves", [ia.interactive_line(lines, log=log)]))
    if curves:
        table = connectivity_table_html(curves)
        sections.append(
            ("Mode connectivity", [table, ia.interactive_connectivity(curves, log=log)])
        )
    if collected.spectra:
        labels = [name for name, _ in collected.spectra]
        fig = ia.interactive_spectrum([d for _, d in collected.spectra], labels=labels)
        sections.append(("Hessian spectral density", [fig]))
    if collected.runs:
        sections.append(("Training curves", [ia.interactive_training_curves(collected.runs)]))
    return sections


def _page(title: str, sections: Sequence[Section], surfaces: Sequence[Any]) -> tuple[str, int]:
    """The HTML page of the sections (figures rendered together), and its figure count."""
    from landscape.plotting import interactive as ia
    from landscape.plotting._common import surface_label

    all_figs = [b for _, blocks in sections for b in blocks if not isinstance(b, str)]
    fragments = iter(ia.figures_to_html(all_figs))
    parts = []
    for heading, blocks in sections:
        parts.append(f"<section><h2>{html.escape(heading)}</h2>")
        for block in blocks:
            is_html = isinstance(block, str)
            parts.append(block if is_html else f'<div class="figure">{next(fragments)}</div>')
        parts.append("</section>")
    listed = "".join(
        f"<li>{html.escape(surface_label(s))}: {html.escape(str(s.path))}</li>" for s in surfaces
    )
    stamp = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    page = (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
        f"<title>{html.escape(title)}</title><style>{_CSS}</style></head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>"
        f'<p class="meta">sharpscape {html.escape(__version__)} · {stamp}</p>\n'
        + "\n".join(parts)
        + (f"<section><h2>Surface files</h2><ul>{listed}</ul></section>" if listed else "")
        + "\n</body></html>\n"
    )
    return page, len(all_figs)
