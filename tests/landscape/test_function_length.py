"""Functions a reader can hold: none on the surface, Hessian and training paths exceeds 120 lines.

Issue 17: ``compute_surface``, ``training._train``, ``compare_checkpoints``,
``lanczos_eigen``, ``hessian_summary``, ``fd_trace`` and ``ggn_trace`` read top-down as
named stages. A function's length is its whole ``def`` (signature and docstring included),
as ``ast`` counts it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 120
FILES = (
    "landscape/surface.py",
    "landscape/training.py",
    "landscape/compare.py",
    "landscape/sweep.py",
    "landscape/directions.py",
    "landscape/objective.py",
    "landscape/batches.py",
    "landscape/cli/hessian.py",
    "landscape/correlation.py",
    "landscape/connectivity.py",
    "landscape/checkpoint.py",
    "landscape/user.py",
    "landscape/store.py",
    "landscape/demo.py",
    "landscape/report.py",
)
PACKAGES = ("landscape/hessian", "landscape/metrics")


def _paths() -> list[str]:
    found = [
        path.relative_to(ROOT).as_posix()
        for package in PACKAGES
        for path in sorted((ROOT / package).rglob("*.py"))
    ]
    return [*FILES, *found]


def test_the_packages_are_found() -> None:
    paths = _paths()
    assert "landscape/hessian/summary.py" in paths
    assert "landscape/hessian/trace/gauss_newton.py" in paths
    assert "landscape/metrics/registry.py" in paths


@pytest.mark.parametrize("path", _paths())
def test_no_function_longer_than_120_lines(path: str) -> None:
    tree = ast.parse((ROOT / path).read_text(encoding="utf-8"))
    too_long = [
        f"{node.name} (line {node.lineno}: {node.end_lineno - node.lineno + 1} lines)"
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno is not None
        and node.end_lineno - node.lineno + 1 > MAX_LINES
    ]
    assert not too_long, f"{path}: split into named stages: {', '.join(too_long)}"
