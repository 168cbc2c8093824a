"""Atomic file writes (a killed process leaves either the previous file or the new one).

Also what the commands that resume from their own output file share: reading that file
and listing how its settings differ from a new call's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["RESUME_ADVICE", "differences", "read_json_to_resume", "write_atomically"]

RESUME_ADVICE = "choose another output file (--out) or start over with resume=False (--no-resume)"


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


def read_json_to_resume(path: str | os.PathLike[str]) -> Any:
    """The JSON value in ``path``, an output file a call is about to resume from.

    Raises:
        ValueError: unreadable or not JSON (the message ends with :data:`RESUME_ADVICE`).
    """
    try:
        return json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(
            f"{os.fspath(path)}: cannot resume from it ({exc}); {RESUME_ADVICE}"
        ) from None


def differences(old: Any, new: Any, name: str = "") -> list[str]:
    """``"name: old there, new now"`` for each entry where two JSON values differ.

    Dicts are compared key by key (``"a.b: ..."``; a missing key reads ``absent``),
    anything else by ``==``.
    """
    if isinstance(old, dict) and isinstance(new, dict):
        found = []
        for key in [*new, *(k for k in old if k not in new)]:
            sub = f"{name}.{key}" if name else str(key)
            if key not in old:
                found.append(f"{sub}: absent there, {new[key]!r} now")
            elif key not in new:
                found.append(f"{sub}: {old[key]!r} there, absent now")
            else:
                found += differences(old[key], new[key], sub)
        return found
    return [] if old == new else [f"{name}: {old!r} there, {new!r} now"]
