"""Device selection: CUDA when present, otherwise the CPU."""

from __future__ import annotations

import torch


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """Return a concrete device.

    Args:
        device: ``None`` or ``"auto"`` picks ``cuda`` when available, else ``cpu``;
            anything else is passed to :class:`torch.device`.

    Raises:
        ValueError: for an unknown device string or a CUDA device on a machine without one.
    """
    if device is None or (isinstance(device, str) and device == "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"Invalid device: {device!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"Invalid device: {device!r} (CUDA is not available on this machine)")
    return dev
