"""Metrics of checkpoints against the epoch: matplotlib, plotly, ``landscape plot``."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure

from landscape.cli import main
from landscape.compare import Comparison
from landscape.plotting import (
    interactive_metric_curves,
    plot_curves_file,
    plot_inputs,
    plot_metric_curves,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
EVIL = "<b>sgd</b>"

# (epoch, lambda_max value, lambda_max stderr, trace value, trace stderr), rows out of
# epoch order; the row without an epoch and the row without values must not be drawn.
SGD_ROWS = [
    (2, 3.0, None, 30.0, 1.5),
    (0, 1.0, 0.0, 10.0, 0.5),
    (None, 9.0, None, 99.0, 1.0),
    (1, 2.0, None, 20.0, 1.0),
    (3, math.nan, None, None, None),
]
SAM_ROWS = [(0, 1.0, None, 10.0, 0.4), (1, 1.5, None, 12.0, 0.6), (2, 1.75, None, 13.0, 0.2)]


def _comparison(spec, run="runs/sgd") -> Comparison:
    rows = []
    for epoch, lam, lam_se, tr, tr_se in spec:
        name = "final" if epoch is None else f"epoch_{epoch:04d}"
        rows.append(
            {
                "checkpoint": f"{run}/checkpoints/{name}.pt",
                "label": name,
                "epoch": epoch,
                "lambda_max": {"value": lam, "stderr": lam_se, "info": {}},
                "trace": {"value": tr, "stderr": tr_se, "info": {}},
            }
        )
    return Comparison(["lambda_max", "trace"], rows, {"split": "train"})


@pytest.fixture
def sgd_json(tmp_path):
    return _comparison(SGD_ROWS).to_json(tmp_path / "sgd.json")


@pytest.fixture
def sam_json(tmp_path):
    return _comparison(SAM_ROWS, run="runs/sam").to_json(tmp_path / "sam.json")


def _band_vertices(ax):
    """Every vertex of the shaded bands of an axes, as (x, y) rows."""
    bands = [c for c in ax.collections if not isinstance(c, LineCollection)]
    if not bands:
        return np.empty((0, 2))
    return np.concatenate([p.vertices for c in bands for p in c.get_paths()])


def test_line_is_the_rows_sorted_by_epoch_with_a_stderr_band(sgd_json):
    fig = plot_metric_curves(sgd_json, "trace")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    (line,) = ax.lines
    # epoch None (99.0) and epoch 3 (no value) are left out, not invented
    np.testing.assert_array_equal(line.get_xdata(), [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(line.get_ydata(), [10.0, 20.0, 30.0])
    assert line.get_label() == "sgd"
    assert ax.get_xlabel() == "epoch" and ax.get_ylabel() == "trace"
    # the band is value ± stderr, and nothing else
    expect = {0.0: (9.5, 10.5), 1.0: (19.0, 21.0), 2.0: (28.5, 31.5)}
    verts = _band_vertices(ax)
    assert len(verts) > 0
    for x, y in verts:
        assert any(y == pytest.approx(b) for b in expect[x]), (x, y)
    for x, (lo, hi) in expect.items():
        ys = verts[verts[:, 0] == x, 1]
        assert np.isclose(ys, lo).any() and np.isclose(ys, hi).any()


def test_no_band_without_a_positive_stderr_and_a_bar_for_a_lone_one():
    # lambda_max: stderr None or 0 everywhere -> no band at all
    fig = plot_metric_curves(_comparison(SGD_ROWS), "lambda_max")
    ax = fig.axes[0]
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [1.0, 2.0, 3.0])
    assert len(ax.collections) == 0
    # a stderr at one epoch between two without: an error bar, not a zero-width band
    rows = [(0, 1.0, None, 10.0, None), (1, 2.0, None, 20.0, 2.0), (2, 3.0, None, 30.0, None)]
    ax = plot_metric_curves(_comparison(rows).to_dict(), "trace").axes[0]
    bars = [c for c in ax.collections if isinstance(c, LineCollection)]
    assert len(bars) == 1
    np.testing.assert_allclose(bars[0].get_segments()[0], [[1.0, 18.0], [1.0, 22.0]])


def test_several_comparisons_one_panel_per_metric(sgd_json, sam_json):
    fig = plot_metric_curves([sgd_json, sam_json])
    assert [ax.get_ylabel() for ax in fig.axes] == ["lambda_max", "trace"]
    assert fig.axes[-1].get_xlabel() == "epoch"
    for ax in fig.axes:
        assert [ln.get_label() for ln in ax.lines] == ["sgd", "sam"]
    # one colour per comparison in every panel
    colours = [[ln.get_color() for ln in ax.lines] for ax in fig.axes]
    assert colours[0] == colours[1] and colours[0][0] != colours[0][1]
    sam_line = fig.axes[0].lines[1]
    np.testing.assert_array_equal(sam_line.get_ydata(), [1.0, 1.5, 1.75])
    # labels given; in-memory comparisons without one are numbered
    fig = plot_metric_curves([sgd_json, sam_json], "trace", labels=["SGD", "SAM"], log=True)
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["SGD", "SAM"]
    assert fig.axes[0].get_yscale() == "log"
    fig = plot_metric_curves([_comparison(SGD_ROWS), _comparison(SAM_ROWS).to_dict()], "trace")
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["comparison 1", "comparison 2"]


def test_same_file_names_are_told_apart_by_folder(tmp_path):
    paths = []
    for run, spec in (("sgd", SGD_ROWS), ("sam", SAM_ROWS)):
        (tmp_path / run).mkdir()
        paths.append(_comparison(spec).to_json(tmp_path / run / "cmp.json"))
    fig = plot_metric_curves(paths, "trace")
    assert [ln.get_label() for ln in fig.axes[0].lines] == ["sgd/cmp", "sam/cmp"]


def test_draws_on_a_given_axes(sgd_json):
    fig = Figure()
    ax = fig.add_subplot()
    assert plot_metric_curves(sgd_json, "lambda_max", ax=ax) is fig
    assert len(ax.lines) == 1
    with pytest.raises(ValueError, match="ax holds one panel"):
        plot_metric_curves(sgd_json, ax=ax)


def test_errors(tmp_path, sgd_json):
    no_epoch = _comparison([(None, 1.0, None, 2.0, None), (None, 1.5, None, 2.5, None)])
    with pytest.raises(ValueError, match=r"rows have no epoch: plot needs checkpoints with an ep"):
        plot_metric_curves(no_epoch)
    with pytest.raises(ValueError, match=r"metric 'nope' .*available: lambda_max, trace"):
        plot_metric_curves(sgd_json, "nope")
    with pytest.raises(ValueError, match="labels has 1 entries for 2 comparisons"):
        plot_metric_curves([sgd_json, sgd_json], labels=["a"])
    empty = _comparison([(0, math.nan, None, None, None), (1, None, None, None, None)])
    with pytest.raises(ValueError, match="nothing to plot: metric 'trace' has no finite value"):
        plot_metric_curves(empty, "trace")
    with pytest.raises(FileNotFoundError, match=r"missing\.json"):
        plot_metric_curves(tmp_path / "missing.json")
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"grid": [0, 1], "density": [1, 1]}))
    with pytest.raises(ValueError, match="not a comparison file"):
        plot_metric_curves(other)
    with pytest.raises(ValueError, match="needs a 'rows' list"):
        plot_metric_curves({"metrics": ["trace"]})
    with pytest.raises(ValueError, match="at least one comparison"):
        plot_metric_curves([])


def test_interactive_curves_hold_the_same_data(sgd_json, sam_json):
    fig = interactive_metric_curves([sgd_json, sam_json], labels=[EVIL, "sam"], log=True)
    assert len(fig.data) == 4  # 2 metrics x 2 comparisons
    by_panel = {}
    for trace in fig.data:
        by_panel.setdefault(trace.yaxis, []).append(trace)
    (lam_sgd, lam_sam), (tr_sgd, tr_sam) = by_panel["y"], by_panel["y2"]
    np.testing.assert_array_equal(tr_sgd.x, [0.0, 1.0, 2.0])
    np.testing.assert_array_equal(tr_sgd.y, [10.0, 20.0, 30.0])
    np.testing.assert_array_equal(tr_sgd.error_y.array, [0.5, 1.0, 1.5])
    np.testing.assert_array_equal(tr_sam.y, [10.0, 12.0, 13.0])
    np.testing.assert_array_equal(lam_sgd.y, [1.0, 2.0, 3.0])
    assert np.isnan(np.asarray(lam_sgd.error_y.array, dtype=float)).all()
    assert lam_sgd.error_y.visible is False and tr_sgd.error_y.visible is True
    # the label is escaped; one legend entry per comparison, toggling both panels
    assert lam_sgd.name == "&lt;b&gt;sgd&lt;/b&gt;" and EVIL not in fig.to_json()
    assert [t.showlegend for t in fig.data] == [True, True, False, False]
    assert lam_sgd.legendgroup == tr_sgd.legendgroup != lam_sam.legendgroup
    assert fig.layout.yaxis.title.text == "lambda_max" and fig.layout.yaxis2.title.text == "trace"
    assert fig.layout.yaxis.type == "log" and fig.layout.xaxis2.title.text == "epoch"
    one = interactive_metric_curves(sgd_json, "lambda_max")
    assert len(one.data) == 1 and one.layout.yaxis.type == "linear"
    with pytest.raises(ValueError, match="metric 'nope'"):
        interactive_metric_curves(sgd_json, "nope")


def test_plot_command_draws_comparisons(sgd_json, sam_json, tmp_path, capsys):
    png = tmp_path / "curves.png"
    assert main(["plot", str(sgd_json), str(sam_json), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG_SIGNATURE and png.stat().st_size > 5000
    assert "wrote" in capsys.readouterr().out
    page = tmp_path / "curves.html"
    args = ["plot", str(sgd_json), str(sam_json), "--metric", "trace", "--log"]
    assert main([*args, "--labels", "SGD,SAM", "--out", str(page)]) == 0
    text = page.read_text()
    assert text.count("* plotly.js v") == 1 and "<script src=" not in text  # offline
    assert '"name":"SGD"' in text and '"name":"SAM"' in text
    svg = plot_curves_file(sgd_json, tmp_path / "c.svg", metric="lambda_max")
    assert svg.read_text().lstrip().startswith("<?xml")


def test_plot_command_refuses_bad_combinations(sgd_json, surface2d, tmp_path, capsys):
    out = str(tmp_path / "x.png")
    cases = [
        (["--kind", "contour"], [sgd_json], "--kind applies to surface files"),
        (["--levels", "5", "--vmax", "2"], [sgd_json], "--levels, --vmax apply to surface"),
        ([], [sgd_json, surface2d], "inputs mix comparison .json files and surface files"),
        ([], [surface2d, surface2d], "inputs: plot draws one surface file at a time"),
        (["--labels", "a"], [surface2d], "--labels applies to comparison files"),
        (["--labels", "a"], [sgd_json, sgd_json], "labels has 1 entries for 2"),
        (["--metric", "nope"], [sgd_json], "available: lambda_max, trace"),
    ]
    for extra, inputs, message in cases:
        assert main(["plot", *map(str, inputs), *extra, "--out", out]) == 2, message
        assert message in capsys.readouterr().err
    assert main(["plot", str(sgd_json), "--out", str(tmp_path / "x.vtp")]) == 2
    assert "--out 'x.vtp': a comparison is drawn as" in capsys.readouterr().err
    assert main(["plot", str(sgd_json), "--out", str(tmp_path / "x.docx")]) == 2
    assert "--out must end in one of" in capsys.readouterr().err
    # the surface path is as before: one .h5 and its own options
    assert plot_inputs([surface2d], tmp_path / "s.png", levels=5, vmax=2.0).stat().st_size > 1000


def test_training_run_to_curves(tmp_path):
    """Train 2 epochs, compare the epoch checkpoints on grad_norm, plot the curve."""
    from landscape.compare import compare_checkpoints
    from landscape.training import train

    run = tmp_path / "run"
    train(
        "mlp",
        "synthetic",
        data_kwargs={"n_train": 48, "n_test": 16, "dim": 5, "classes": 3},
        model_kwargs={"hidden": [8]},
        batch_size=16,
        lr=0.05,
        epochs=2,
        save_every=1,
        out=run,
        progress=False,
    )
    files = sorted((run / "checkpoints").glob("epoch_*.pt"))
    cmp = compare_checkpoints(files, "grad_norm", progress=False)
    path = cmp.to_json(tmp_path / "run.json")
    out = tmp_path / "grad_norm.png"
    assert main(["plot", str(path), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    (line,) = plot_metric_curves(path).axes[0].lines
    np.testing.assert_array_equal(line.get_xdata(), [0.0, 1.0, 2.0])
    np.testing.assert_allclose(line.get_ydata(), [r["grad_norm"]["value"] for r in cmp.rows])


def test_a_comparison_of_several_runs_gives_one_line_per_run(tmp_path):
    both = _comparison(SAM_ROWS, run="runs/sam")
    both.rows = _comparison(SGD_ROWS[:2]).rows + both.rows  # sgd at epochs 2, 0; sam 0, 1, 2
    ax = plot_metric_curves(both, "trace").axes[0]
    lines = {line.get_label(): line for line in ax.lines}
    assert set(lines) == {"sgd", "sam"}
    np.testing.assert_array_equal(lines["sgd"].get_xdata(), [0.0, 2.0])
    np.testing.assert_array_equal(lines["sgd"].get_ydata(), [10.0, 30.0])
    np.testing.assert_array_equal(lines["sam"].get_ydata(), [10.0, 12.0, 13.0])
    # several comparisons, or given labels: "label: run"
    path = both.to_json(tmp_path / "both.json")
    ax = plot_metric_curves([path, path], "trace", labels=["a", "b"]).axes[0]
    assert [line.get_label() for line in ax.lines] == ["a: sgd", "a: sam", "b: sgd", "b: sam"]
    # run folders with the same name are told apart by their parents
    twins = _comparison(SAM_ROWS, run="x/run")
    twins.rows += _comparison(SAM_ROWS, run="y/run").rows
    fig = interactive_metric_curves(twins, "trace")
    assert sorted({t.name for t in fig.data if t.name}) == ["x/run", "y/run"]
