"""Hyper-parameter checks shared by the optimizers (one message format everywhere)."""

from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["check_choice", "check_nonneg", "check_positive", "check_range", "describe"]


def _finite(name: str, value: float) -> float:
    """``value`` as a finite float: a number or a one-element tensor, not a string or bool."""
    if isinstance(value, str | bool) or value is None:
        raise ValueError(f"Invalid {name}: {value!r} (expected a number)")
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"Invalid {name}: {value!r} (expected a number)") from None
    if not math.isfinite(v):
        raise ValueError(f"Invalid {name}: {value}")
    return v


def check_nonneg(name: str, value: float) -> float:
    """Return ``value`` as a float; raise ``ValueError("Invalid <name>: ...")`` unless ``>= 0``.

    The checks accept numbers and one-element tensors and return a plain ``float``;
    strings and booleans are refused (``float("0.1")`` would hide a configuration slip).
    """
    v = _finite(name, value)
    if v < 0:
        raise ValueError(f"Invalid {name}: {value} (must be >= 0)")
    return v


def check_positive(name: str, value: float) -> float:
    """Raise ``ValueError("Invalid <name>: <value>")`` unless ``value > 0``."""
    v = _finite(name, value)
    if v <= 0:
        raise ValueError(f"Invalid {name}: {value} (must be > 0)")
    return v


def check_range(name: str, value: float, lo: float, hi: float, *, open_ends: bool = False) -> float:
    """Raise ``ValueError`` unless ``lo <= value <= hi`` (``lo < value < hi`` if ``open_ends``)."""
    v = _finite(name, value)
    ok = lo < v < hi if open_ends else lo <= v <= hi
    if not ok:
        brackets = "()" if open_ends else "[]"
        raise ValueError(
            f"Invalid {name}: {value} (must be in {brackets[0]}{lo}, {hi}{brackets[1]})"
        )
    return v


def check_choice(name: str, value: str, choices: tuple[str, ...]) -> str:
    """Raise ``ValueError("Invalid <name>: <value>")`` unless ``value`` is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        expected = ", ".join(repr(c) for c in choices)
        raise ValueError(f"Invalid {name}: {value!r} (expected one of {expected})")
    return value


def describe(obj: Any) -> str:
    """``obj`` named in one line for a message: an optimizer instance by its class."""
    if isinstance(obj, torch.optim.Optimizer):
        return f"a {type(obj).__name__} instance"
    text = repr(obj).splitlines()
    return text[0] if text else type(obj).__name__
