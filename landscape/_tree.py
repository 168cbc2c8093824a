"""Rebuilding the containers of a batch (tuples, lists, namedtuples) around new items."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def rebuild(container: tuple | list, items: Iterable[Any]) -> tuple | list:
    """A container of ``container``'s type holding ``items``.

    Namedtuples take their fields as arguments (``type(t)(*items)``), plain tuples and lists
    an iterable; a sequence type whose constructor takes neither comes back as a plain
    tuple or list.
    """
    items = list(items)
    kind = type(container)
    if isinstance(container, tuple) and hasattr(container, "_fields"):
        return kind(*items)
    try:
        return kind(items)
    except TypeError:
        return tuple(items) if isinstance(container, tuple) else items
