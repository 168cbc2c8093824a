"""MkDocs hooks: the pages the build generates (named in ``mkdocs.yml`` under ``hooks``).

- ``reference/cli.md``: rendered from the ``landscape`` argument parsers
  (``scripts/docs/cli_reference.py``).
- ``gallery.md`` and ``gallery/*.png``: a tiny demo run on built-in data, then one
  picture per plot kind with the library's plotting functions
  (``scripts/docs/gallery.py``); about 20-40 s on two cores. ``mkdocs serve`` draws them
  once per process, not at every reload.

The API reference needs no hook: mkdocstrings renders it from the docstrings.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Any

from mkdocs.structure.files import File, Files

log = logging.getLogger("mkdocs.hooks.sharpscape")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent

# Kept for the life of the process, so that `mkdocs serve` reloads reuse the pictures.
_WORK = tempfile.TemporaryDirectory(prefix="sharpscape-docs-")
_gallery: list[tuple[Any, Path]] | None = None


def _load(name: str) -> ModuleType:
    """Import ``scripts/docs/<name>.py`` (a folder that is not a package)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))  # the checkout's landscape/, installed or not
    spec = importlib.util.spec_from_file_location(f"_sharpscape_docs_{name}", HERE / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def on_files(files: Files, config: Any) -> Files:
    """Add the generated pages and pictures to the site."""
    global _gallery
    files.append(
        File.generated(config, "reference/cli.md", content=_load("cli_reference").cli_markdown())
    )

    gallery = _load("gallery")
    if _gallery is None:
        work = Path(_WORK.name)
        _gallery = gallery.make_gallery(work / "run", work / "images")
    for _, png in _gallery:
        files.append(File.generated(config, f"gallery/{png.name}", abs_src_path=str(png)))
    files.append(File.generated(config, "gallery.md", content=gallery.gallery_markdown(_gallery)))
    return files
