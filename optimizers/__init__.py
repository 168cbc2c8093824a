"""Sharpness-aware optimizers for PyTorch: SAM and its descendants on one mechanism."""

__all__: list[str] = []
