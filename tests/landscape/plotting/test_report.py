"""The report page and the plot/report commands."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from plotting_helpers import (
    find_chromium,
    graph_divs,
    instrument,
    page_errors,
    run_chromium,
    write_surface,
)

from landscape.cli import main
from landscape.report import build_report, collect_report_inputs, comparison_table_html

EVIL = "<script>alert('x')</script>"


@pytest.fixture
def comparison_json(tmp_path):
    path = tmp_path / "compare.json"
    doc = {
        "metrics": ["lambda_max", "trace"],
        "rows": [
            {
                "checkpoint": "runs/sgd/final.pt",
                "label": EVIL,
                "lambda_max": {"value": 12.345678, "stderr": None},
                "trace": {"value": 101.5, "stderr": 3.25},
            },
            {
                "checkpoint": "runs/sam/final.pt",
                "label": "sam",
                "lambda_max": {"value": 4.5, "stderr": None},
                "trace": {"value": 40.0, "stderr": 1.0},
            },
        ],
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def report_inputs(tmp_path, density_json, run_dir, comparison_json):
    traj = np.array([[0.8, 0.5], [0.4, 0.2], [0.1, 0.05], [0.0, 0.0]])
    a, b, line = tmp_path / "sgd.h5", tmp_path / "sam.h5", tmp_path / "line.h5"
    write_surface(a, trajectory=traj, attrs={"explained_variance_ratio": [0.8, 0.1]})
    write_surface(b, func=lambda x, y: 0.3 + 0.2 * np.meshgrid(x, y)[0] ** 2)
    write_surface(line, ny=None)
    return [a, b, line, density_json, comparison_json, run_dir]


def test_comparison_table_is_escaped(comparison_json):
    table = comparison_table_html(json.loads(comparison_json.read_text()))
    assert EVIL not in table
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in table
    assert "12.35" in table and "101.5 ± 3.25" in table and "<th>lambda_max</th>" in table


def test_inputs_are_sorted_by_kind(report_inputs, tmp_path):
    got = collect_report_inputs(report_inputs)
    assert len(got.surfaces) == 3 and len(got.comparisons) == 1
    assert len(got.spectra) == 1 and [name for name, _ in got.runs] == ["run_sgd"]
    with pytest.raises(FileNotFoundError):
        collect_report_inputs([tmp_path / "missing.h5"])
    bad = tmp_path / "notes.txt"
    bad.write_text("hi")
    with pytest.raises(ValueError, match=r"notes\.txt"):
        collect_report_inputs([bad])
    odd = tmp_path / "odd.json"
    odd.write_text("{}")
    with pytest.raises(ValueError, match="neither a comparison nor"):
        collect_report_inputs([odd])


def test_report_page_content(report_inputs, tmp_path):
    out = build_report(report_inputs, tmp_path / "r.html", title="Title & <i>co</i>")
    text = out.read_text()
    assert text.count("* plotly.js v") == 1  # embedded once
    assert "<script src=" not in text  # offline
    assert "Title &amp; &lt;i&gt;co&lt;/i&gt;" in text
    assert EVIL not in text
    # random planes: one 3-D surface; PCA planes: contour map with the path and one 3-D
    # surface; 1-D curves, spectrum, training curves
    assert text.count('class="plotly-graph-div"') == 6
    for heading in ("Sharpness comparison", "Loss surfaces", "Hessian spectral density",
                    "Training paths on their PCA planes",
                    "Training curves", "1-D loss curves"):  # fmt: skip
        assert f"<h2>{heading}</h2>" in text
    with pytest.raises(ValueError, match="nothing to report"):
        build_report([], tmp_path / "empty.html")
    # Past max_3d surfaces, only the shared scene is WebGL (browsers cap the contexts).
    few = build_report(report_inputs, tmp_path / "few.html", max_3d=0).read_text()
    assert few.count('class="plotly-graph-div"') == 5  # contour maps replace the 3-D ones


def _epoch_comparison(path, epochs, runs=("runs/sgd",)):
    """A comparison JSON of checkpoints at ``epochs`` (run i for row i, cycling ``runs``)."""
    rows = [
        {
            "checkpoint": f"{runs[i % len(runs)]}/checkpoints/epoch_{e:04d}.pt",
            "label": EVIL if i == 0 else f"epoch {e}",
            "epoch": e,
            "trace": {"value": 10.0 + e, "stderr": 0.5},
        }
        for i, e in enumerate(epochs)
    ]
    path.write_text(json.dumps({"metrics": ["trace"], "rows": rows}))
    return path


def test_report_draws_metric_curves_under_their_table(tmp_path, comparison_json):
    run = _epoch_comparison(tmp_path / "run.json", [2, 0, 1])
    text = build_report([run, comparison_json], tmp_path / "r.html").read_text()
    assert text.count('class="plotly-graph-div"') == 1
    assert text.count("* plotly.js v") == 1 and EVIL not in text
    assert "run: metrics against the epoch" in text
    # under its own table, before the next comparison's table
    own, figure = text.index(f"source: {run}"), text.index('class="plotly-graph-div"')
    assert own < figure < text.index(f"source: {comparison_json}")


@pytest.mark.parametrize(
    ("epochs", "runs"),
    [
        ([5], ("runs/sgd",)),  # one checkpoint
        ([5, 5], ("runs/sgd",)),  # one epoch twice
        ([10, 20], ("runs/sgd", "runs/sam")),  # final checkpoints of two runs
    ],
)
def test_report_draws_no_curve_without_a_run_through_epochs(tmp_path, epochs, runs):
    path = _epoch_comparison(tmp_path / "cmp.json", epochs, runs)
    text = build_report([path], tmp_path / "r.html").read_text()
    assert "<table" in text and 'class="plotly-graph-div"' not in text


def test_report_draws_one_line_per_run_of_a_comparison(tmp_path):
    # rows alternate between two runs, each at epochs 0, 1, 2
    path = _epoch_comparison(tmp_path / "both.json", [0, 0, 1, 1, 2, 2], ("runs/sgd", "runs/sam"))
    text = build_report([path], tmp_path / "r.html").read_text()
    assert text.count('class="plotly-graph-div"') == 1
    assert '"name":"sgd"' in text.replace(" ", "") and '"name":"sam"' in text.replace(" ", "")


@pytest.mark.parametrize(("n_rows", "folded"), [(12, False), (13, True)])
def test_report_folds_long_comparison_tables(tmp_path, n_rows, folded):
    path = _epoch_comparison(
        tmp_path / "long.json", [5] * n_rows, tuple(f"r{i}" for i in range(n_rows))
    )
    text = build_report([path], tmp_path / "r.html").read_text()
    assert ("<details><summary>table: 13 rows</summary><table" in text) is folded
    assert text.count('<th scope="row"') == n_rows


def test_report_command(report_inputs, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", *map(str, report_inputs), "--out", str(out)]) == 0
    assert out.stat().st_size > 100_000
    assert "wrote" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nope.h5"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("kind", "ext"),
    [
        ("contour", "png"),
        ("filled", "pdf"),
        ("surface", "svg"),
        ("heatmap", "png"),
        ("trajectory", "png"),
        (None, "html"),
        (None, "vtp"),
        (None, "obj"),
        (None, "stl"),
    ],
)
def test_plot_command_every_format(pca_surface, tmp_path, kind, ext):
    out = tmp_path / f"fig.{ext}"
    args = ["plot", str(pca_surface), "--out", str(out), "--log", "--levels", "12"]
    if kind:
        args += ["--kind", kind]
    assert main(args) == 0
    assert out.stat().st_size > 500


def test_plot_command_line_and_errors(surface1d, surface2d, tmp_path, capsys):
    assert main(["plot", str(surface1d), "--out", str(tmp_path / "l.png")]) == 0
    assert main(["plot", str(surface1d), "--out", str(tmp_path / "l.html")]) == 0
    assert main(["plot", str(surface2d), "--out", str(tmp_path / "x.docx")]) == 2
    assert "--out must end in one of" in capsys.readouterr().err
    assert main(["plot", str(surface2d), "--metric", "nope", "--out", str(tmp_path / "a.png")]) == 2
    assert "metric 'nope'" in capsys.readouterr().err
    assert (
        main(["plot", str(surface2d), "--kind", "trajectory", "--out", str(tmp_path / "t.png")])
        == 2
    )


def _chromium_or_skip():
    chromium = find_chromium()
    if chromium is None:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail("chromium is not installed; CI must install it (see .ci/run)")
        pytest.skip("chromium is not installed (apt-get install chromium)")
    return chromium


@pytest.mark.browser
def test_error_hook_catches_javascript_errors(tmp_path):
    chromium = _chromium_or_skip()
    page = tmp_path / "broken.html"
    page.write_text(instrument(
        "<!DOCTYPE html><html><head></head><body>"
        "<script>null.boom();</script><script>console.error('bad')</script></body></html>"
    ))  # fmt: skip
    dom, log = run_chromium(chromium, page, tmp_path, budget_ms=5000)
    errors = page_errors(dom, log)
    assert any("error:" in e for e in errors) and any("console.error: bad" in e for e in errors)


@pytest.mark.browser
def test_report_opens_in_headless_chromium(report_inputs, tmp_path):
    chromium = _chromium_or_skip()
    out = build_report(report_inputs, tmp_path / "report.html", log=True)
    page = tmp_path / "instrumented.html"
    page.write_text(instrument(out.read_text()))
    dom, log = run_chromium(chromium, page, tmp_path)
    assert page_errors(dom, log) == []
    divs = graph_divs(dom)
    assert len(divs) == 6
    for div in divs:
        assert "js-plotly-plot" in div[:200], "plotly did not draw this figure"
        assert "main-svg" in div
    # The two 3-D scenes got a WebGL canvas; the contour map drew its panel; the 2-D
    # figures drew their curves (the contour map its training path).
    assert sum("<canvas" in d for d in divs) == 2
    assert sum('class="contour"' in d for d in divs) == 1
    assert sum("scatterlayer" in d and "js-line" in d for d in divs) == 4
    assert "<script>alert" not in dom  # the hostile label stayed text


@pytest.mark.browser
def test_metric_curves_draw_in_headless_chromium(tmp_path, comparison_json):
    chromium = _chromium_or_skip()
    run = _epoch_comparison(tmp_path / "run.json", [0, 1, 2, 3])
    out = build_report([run, comparison_json], tmp_path / "report.html")
    page = tmp_path / "instrumented.html"
    page.write_text(instrument(out.read_text()))
    dom, log = run_chromium(chromium, page, tmp_path, budget_ms=8000)
    assert page_errors(dom, log) == []
    (div,) = graph_divs(dom)
    assert "js-plotly-plot" in div[:200] and "js-line" in div
    assert div.count('class="point plotly-customdata"') == 4  # one marker per epoch
    assert div.count('class="errorbar"') == 4
    assert "<script>alert" not in dom


def _finding_comparison(path, rows, *, epochs=None, noisy=True):
    doc = {"metrics": ["lambda_max", "trace", "train_loss", "train_clean_acc", "test_acc"]}
    doc["rows"] = [
        {
            "checkpoint": f"runs/{label}/final.pt",
            "label": label,
            "epoch": None if epochs is None else epochs[i],
            "lambda_max": {"value": lam, "stderr": None},
            "trace": {"value": 10 * lam, "stderr": 0.0},
            "train_loss": {"value": 1.3, "stderr": None},
            "train_clean_acc": {"value": 93.0 if noisy else None, "stderr": None},
            "test_acc": {"value": acc, "stderr": None},
        }
        for i, (label, lam, acc) in enumerate(rows)
    ]
    path.write_text(json.dumps(doc))
    return path


def test_report_states_the_finding_computed_from_the_table(tmp_path):
    from landscape.correlation import flatness_finding
    from landscape.report import finding_html

    rows = [("sgd", 4.6, 81.6), ("sam", 3.7, 84.1), (EVIL, 2.4, 87.2), ("gam", 2.8, 85.0)]
    path = _finding_comparison(tmp_path / "compare.json", rows)
    text = build_report([path], tmp_path / "r.html").read_text()
    finding = flatness_finding(json.loads(path.read_text()))
    assert finding.tau == -1.0 and finding.clean
    sentence = finding.sentence.replace(EVIL, "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;")
    assert f'<p class="finding">{sentence}</p>' in text and EVIL not in text
    assert "the flatter tend to be the more accurate, but not significantly" in text  # n = 4
    assert text.index("<h2>Finding</h2>") < text.index("<h2>Sharpness comparison</h2>")
    # flatness and the clean test accuracy side by side, then the training record
    head = text[text.index('<p class="finding">') :].split("</thead>")[0]
    assert head.index("<th>lambda_max</th>") < head.index("<th>trace</th>")
    assert head.index("<th>trace</th>") < head.index("<th>test_acc</th>")
    assert head.index("<th>test_acc</th>") < head.index("<th>train_loss</th>")
    assert "train_loss and train_acc are on the noisy training labels" in text
    # Clean labels: plain "test accuracy", no note on noise.
    clean = _finding_comparison(tmp_path / "clean.json", rows, noisy=False)
    page = finding_html(json.loads(clean.read_text()))
    assert "with test accuracy" in page and "noisy" not in page


def test_report_states_no_finding_for_one_run_through_epochs_or_without_accuracy(tmp_path):
    from landscape.report import finding_html

    rows = [("sgd", 4.6, 81.6), ("sgd", 3.7, 84.1), ("sgd", 2.4, 87.2)]
    path = _finding_comparison(tmp_path / "traj.json", rows, epochs=[0, 1, 2])
    assert finding_html(json.loads(path.read_text())) is None
    text = build_report([path], tmp_path / "r.html").read_text()
    assert "<h2>Finding</h2>" not in text and "<h2>Sharpness comparison</h2>" in text
    doc = {"metrics": ["lambda_max"], "rows": [{"label": "a", "lambda_max": {"value": 1.0}}]}
    assert finding_html(doc) is None
