"""Type checks of the estimators' options, so that a bad value is one clear ``ValueError``."""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["check_integers", "check_real"]


def check_integers(**values: Any) -> None:
    """Raise ``ValueError`` naming the first value that is not an integer (``bool`` is not).

    The ranges are checked by each estimator; this catches ``k=2.5``, ``"3"`` or ``None``
    before they fail deep inside torch or numpy.
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ValueError(f"Invalid {name}: {value!r} (expected an integer)")


def check_real(name: str, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is a real number (not ``bool``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"Invalid {name}: {value!r} (expected a number)")
