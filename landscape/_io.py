"""Atomic file writes: a killed process leaves either the previous file or the new one."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["write_atomically"]


def write_atomically(
    path: str | os.PathLike[str],
    write: Callable[[IO[Any]], Any],
    *,
    binary: bool = False,
    **open_kwargs: Any,
) -> Path:
    """Call ``write(fh)`` on a temporary file in ``path``'s folder, then rename it over ``path``.

    The folder is created when missing. The data are flushed and fsync'ed before the
    rename (``os.replace``, atomic on POSIX and Windows), and the temporary file is
    removed whatever happens.

    Args:
        path: the file to (re)write.
        write: called once with the open temporary file.
        binary: open in ``"wb"`` instead of ``"w"``.
        **open_kwargs: passed to ``open`` (e.g. ``newline=""`` for CSV).

    Returns:
        ``path`` as a :class:`~pathlib.Path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb" if binary else "w", **open_kwargs) as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
