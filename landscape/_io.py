"""Atomic file writes (a killed process leaves either the previous file or the new one).

Also what the commands that resume from their own output file share: reading that file
and listing how its settings differ from a new call's; and :func:`check_output`, the test
every command runs on its output path before any work.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

__all__ = [
    "RESUME_ADVICE",
    "check_output",
    "differences",
    "read_json_to_resume",
    "write_atomically",
]

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


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path's root)."""
    probe = path
    while not os.path.lexists(probe):
        parent = probe.parent
        if parent == probe:
            break
        probe = parent
    return probe


def _probe_folder(folder: Path, path: Path, *, create: bool) -> None:
    """Create and remove a temporary file (or, with ``create``, a folder) in ``folder``.

    Permission bits say little (root passes ``os.access`` everywhere, ``/proc`` and
    ``/sys`` refuse new files whatever they say), so the folder is actually tried.
    """
    try:
        if create:
            os.rmdir(tempfile.mkdtemp(prefix=".write-test-", dir=folder))
        else:
            with tempfile.TemporaryFile(prefix=".write-test-", dir=folder):
                pass
    except OSError as exc:
        what = "folders" if create else "files"
        raise ValueError(
            f"{os.fspath(path)}: cannot write there: {os.fspath(folder)} refuses new {what} "
            f"({exc.strerror or type(exc).__name__})"
        ) from None


def check_output(
    path: str | os.PathLike[str],
    *,
    folder: bool = False,
    suffixes: Sequence[str] | None = None,
    what: str = "--out",
) -> Path:
    """Check, before any work, that ``path`` can be written; return it as a ``Path``.

    A file output (the default) must not be an existing folder, must end in one of
    ``suffixes`` (when given; compared case-insensitively), and its folder must exist or
    be creatable, and accept new files (the atomic writes put a temporary file beside
    it). A folder output (``folder=True``) must not be an existing file and must accept
    new files, or be creatable. Neither may lie below an existing file. Nothing is left
    behind: the probes create and remove a temporary file or folder.

    Args:
        path: the output file or folder.
        folder: ``path`` is a folder (a run folder, the demo's output) rather than a file.
        suffixes: the extensions a file output may have (``(".json", ".csv")``).
        what: how the message names the option (``--out``, ``--save-eigenvectors``).

    Raises:
        ValueError: one line naming ``path`` and what is wrong with it.
    """
    p = Path(path)
    name = os.fspath(p)
    if not name:
        raise ValueError(f"Invalid {what}: an empty path")
    if os.path.lexists(p):
        if folder and not p.is_dir():
            raise ValueError(f"Invalid {what}: {name} exists and is not a folder")
        if not folder and p.is_dir():
            raise ValueError(f"Invalid {what}: {name} is a folder; name a file in it")
    if not folder and suffixes is not None:
        allowed = tuple(s.lower() for s in suffixes)
        if p.suffix.lower() not in allowed:
            raise ValueError(f"Invalid {what}: {name!r} (expected a {' or '.join(allowed)} file)")
    if os.path.lexists(p):
        _probe_folder(p if folder else p.parent, p, create=False)
        if not folder and not os.access(p, os.W_OK):
            raise ValueError(f"{name}: cannot write there: the file is read-only")
        return p
    base = _nearest_existing(p.parent)
    if not base.is_dir():
        raise ValueError(f"Invalid {what}: {name} lies below {os.fspath(base)}, which is a file")
    _probe_folder(base, p, create=folder or base != p.parent)
    return p
