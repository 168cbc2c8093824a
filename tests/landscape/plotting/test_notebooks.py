"""The notebooks in notebooks/ run top to bottom (at small sizes) and are stored clean."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parents[3] / "notebooks").glob("*.ipynb"))


def test_the_notebooks_exist():
    names = {p.stem for p in NOTEBOOKS}
    assert {
        "quickstart",
        "curvature",
        "trajectory",
        "gradient_alignment",
        "your_own_model",
        "correlation_and_connectivity",
    } <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_stored_without_outputs(path):
    book = nbformat.read(path, as_version=4)
    for cell in book.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    from nbclient import NotebookClient

    monkeypatch.setenv("SHARPSCAPE_NOTEBOOK_SIZE", "small")
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    book = nbformat.read(path, as_version=4)
    client = NotebookClient(
        book, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    client.execute()  # raises CellExecutionError with the failing cell's traceback
    errors = [
        out
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        if out.output_type == "error"
    ]
    assert errors == []
    # Every notebook shows at least one figure (matplotlib PNG or plotly JSON/HTML).
    kinds = {
        key
        for cell in book.cells
        if cell.cell_type == "code"
        for out in cell.outputs
        for key in out.get("data", {})
    }
    assert kinds & {"image/png", "application/vnd.plotly.v1+json", "text/html"}
