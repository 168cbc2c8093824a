"""Built-in models that adapt to the input shape and the number of classes.

Names (:data:`MODEL_NAMES`):

- ``mlp``: flattens any input; ``hidden`` (tuple of widths, default ``(256, 256)``), ReLU.
- ``cnn``: a small CNN, two 3×3 conv blocks (``width``, ``2·width`` channels, default
  ``width=32``) each with ReLU and 2× max pooling, then a hidden linear layer of
  ``hidden=128`` units.
- ``resnet20`` / ``resnet32`` / ``resnet56``: the CIFAR ResNets of He et al. 2016
  (arXiv:1512.03385, Sec. 4.2): a 3×3 conv, three stages of ``n`` basic blocks (depth
  ``6n + 2``) with ``width``, ``2·width``, ``4·width`` channels (``width=16``), BatchNorm,
  global average pooling. Shortcuts use the paper's **option A** (identity; when the
  shape changes, stride-2 subsampling and zero-padded extra channels, no parameters).
- ``wrn16_4``: the wide ResNet WRN-16-4 of Zagoruyko & Komodakis 2016
  (arXiv:1605.07146): pre-activation blocks, two per stage, 64/128/256 channels, a 1×1
  convolution shortcut when the shape changes, optional ``dropout`` (default 0).

Inputs: ``input_size`` gives the spatial size: an int or ``(H, W)`` for images (2-D
convolutions), ``(L,)`` for sequences (1-D convolutions). A batch of shape ``(N, L)``
(1-D data without a channel axis, like MNIST-1D's ``(40,)``) is fed to the convolutional
models as ``(N, 1, L)``. :func:`input_kwargs` turns a dataset's ``input_shape`` into these
arguments: ``(C, H, W)`` -> 2-D, ``(C, L)`` -> 1-D, ``(D,)`` -> 1-D with one channel.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODEL_NAMES", "build_model", "input_kwargs", "model_spec"]

MODEL_NAMES: tuple[str, ...] = ("mlp", "cnn", "resnet20", "resnet32", "resnet56", "wrn16_4")

_RESNET_DEPTHS = {"resnet20": 20, "resnet32": 32, "resnet56": 56}


def _spatial(input_size: int | Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_size, int):
        size: tuple[int, ...] = (input_size, input_size)
    else:
        size = tuple(int(s) for s in input_size)
    if len(size) not in (1, 2) or any(s < 1 for s in size):
        raise ValueError(
            f"Invalid input_size: {input_size!r} (an int or (H, W) for images, (L,) for sequences)"
        )
    return size


def _layers(ndim: int) -> tuple[type[nn.Module], type[nn.Module], type[nn.Module]]:
    if ndim == 1:
        return nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d
    return nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d


class _ConvNet(nn.Module):
    """Base of the convolutional models: adds the channel axis to ``(N, L)`` batches."""

    spatial_dims: int

    def _prepare(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.spatial_dims + 1:
            x = x.unsqueeze(1)
        return x


def _widths(hidden: Any) -> list[int]:
    """The hidden widths: a sequence of integers of at least 1 (an int: one layer)."""
    if isinstance(hidden, int) and not isinstance(hidden, bool):
        hidden = [hidden]
    ok = isinstance(hidden, Sequence) and not isinstance(hidden, str | bytes)
    if ok:
        ok = all(isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden)
    if not ok:
        raise ValueError(
            f"Invalid hidden: {hidden!r} (a list of layer widths of at least 1, e.g. [64, 64])"
        )
    return [int(h) for h in hidden]


class MLP(nn.Module):
    """Multi-layer perceptron on flattened inputs."""

    def __init__(self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 256)):
        super().__init__()
        widths = _widths(hidden)
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in widths:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.net(x)


class SmallCNN(_ConvNet):
    """Two conv-ReLU-maxpool blocks and a two-layer classifier head."""

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        size: tuple[int, ...],
        width: int = 32,
        hidden: int = 128,
    ):
        super().__init__()
        self.spatial_dims = len(size)
        conv, _, pool = _layers(self.spatial_dims)
        self.features = nn.Sequential(
            conv(in_channels, width, 3, padding=1),
            nn.ReLU(inplace=True),
            pool(2, ceil_mode=True),
            conv(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            pool(2, ceil_mode=True),
        )
        out = [math.ceil(math.ceil(s / 2) / 2) for s in size]
        self.head = nn.Sequential(
            nn.Flatten(),
            nn.Linear(2 * width * math.prod(out), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        return self.head(self.features(self._prepare(x)))


class _BasicBlock(nn.Module):
    """He et al.'s basic block with the parameter-free option-A shortcut."""

    def __init__(self, c_in: int, c_out: int, stride: int, ndim: int):
        super().__init__()
        conv, bn, _ = _layers(ndim)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.stride = stride
        self.pad = c_out - c_in
        self.ndim = ndim

    def _shortcut(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride != 1:
            x = x[(..., *[slice(None, None, self.stride)] * self.ndim)]
        if self.pad:
            lo = self.pad // 2
            x = F.pad(x, [0, 0] * self.ndim + [lo, self.pad - lo])
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self._shortcut(x))


class CifarResNet(_ConvNet):
    """ResNet-(6n+2) for small images (He et al. 2016, Sec. 4.2), option-A shortcuts."""

    def __init__(
        self,
        depth: int,
        in_channels: int,
        num_classes: int,
        size: tuple[int, ...],
        width: int = 16,
    ):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"Invalid depth: {depth} (must be 6n + 2)")
        n = (depth - 2) // 6
        self.spatial_dims = len(size)
        conv, bn, _ = _layers(self.spatial_dims)
        self.conv1 = conv(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = bn(width)
        blocks: list[nn.Module] = []
        c_in = width
        for stage, c_out in enumerate((width, 2 * width, 4 * width)):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_BasicBlock(c_in, c_out, stride, self.spatial_dims))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, num_classes)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        out = F.relu(self.bn1(self.conv1(self._prepare(x))))
        out = self.layers(out)
        out = out.flatten(2).mean(2)
        return self.fc(out)


class _WideBlock(nn.Module):
    """Pre-activation wide block (BN-ReLU-conv ×2) with a 1×1 conv shortcut if needed."""

    def __init__(self, c_in: int, c_out: int, stride: int, ndim: int, dropout: float):
        super().__init__()
        conv, bn, _ = _layers(ndim)
        self.bn1 = bn(c_in)
        self.conv1 = conv(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = bn(c_out)
        self.conv2 = conv(c_out, c_out, 3, stride=1, padding=1, bias=False)
        self.dropout = dropout
        self.shortcut = (
            conv(c_in, c_out, 1, stride=stride, bias=False)
            if (stride != 1 or c_in != c_out)
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Residual block output."""
        o = F.relu(self.bn1(x))
        skip = x if self.shortcut is None else self.shortcut(o)
        out = self.conv1(o)
        out = F.relu(self.bn2(out))
        if self.dropout > 0:
            out = F.dropout(out, p=self.dropout, training=self.training)
        out = self.conv2(out)
        return out + skip


class WideResNet(_ConvNet):
    """WRN-depth-k (Zagoruyko & Komodakis 2016) with pre-activation blocks."""

    def __init__(
        self,
        depth: int,
        widen: int,
        in_channels: int,
        num_classes: int,
        size: tuple[int, ...],
        dropout: float = 0.0,
    ):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"Invalid depth: {depth} (must be 6n + 4)")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"Invalid dropout: {dropout}")
        n = (depth - 4) // 6
        self.spatial_dims = len(size)
        conv, bn, _ = _layers(self.spatial_dims)
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = conv(in_channels, widths[0], 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        c_in = widths[0]
        for stage, c_out in enumerate(widths[1:]):
            for i in range(n):
                stride = 2 if (stage > 0 and i == 0) else 1
                blocks.append(_WideBlock(c_in, c_out, stride, self.spatial_dims, dropout))
                c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.bn = bn(c_in)
        self.fc = nn.Linear(c_in, num_classes)
        _kaiming(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_classes)``."""
        out = self.layers(self.conv1(self._prepare(x)))
        out = F.relu(self.bn(out))
        return self.fc(out.flatten(2).mean(2))


def _kaiming(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def input_kwargs(input_shape: Sequence[int]) -> dict[str, Any]:
    """``in_channels`` and ``input_size`` of :func:`build_model` for a data input shape.

    ``(C, H, W)`` gives 2-D models, ``(C, L)`` and ``(D,)`` 1-D ones (``(D,)`` as one
    channel of length ``D``).
    """
    shape = tuple(int(s) for s in input_shape)
    if len(shape) == 3:
        return {"in_channels": shape[0], "input_size": [shape[1], shape[2]]}
    if len(shape) == 2:
        return {"in_channels": shape[0], "input_size": [shape[1]]}
    if len(shape) == 1:
        return {"in_channels": 1, "input_size": [shape[0]]}
    raise ValueError(f"Invalid input_shape: {input_shape!r} (expected (C, H, W), (C, L) or (D,))")


def model_spec(
    name: str, input_shape: Sequence[int], num_classes: int, **kwargs: Any
) -> dict[str, Any]:
    """The JSON-serialisable spec ``{"name": ..., **build_model kwargs}`` for a dataset.

    ``build_model(**spec)`` builds the model; checkpoints store this dict.
    """
    return {"name": name, **input_kwargs(input_shape), "num_classes": int(num_classes), **kwargs}


def build_model(
    name: str,
    *,
    in_channels: int,
    num_classes: int,
    input_size: int | Sequence[int],
    **kwargs: Any,
) -> nn.Module:
    """Build a model of :data:`MODEL_NAMES` for the given input and class count.

    Args:
        name: model name.
        in_channels: input channels (for ``mlp`` only their product with the size matters).
        num_classes: number of output logits.
        input_size: spatial size: an int or ``(H, W)`` for images, ``(L,)`` for sequences.
        **kwargs: model options: ``mlp``: ``hidden``; ``cnn``: ``width``, ``hidden``;
            resnets: ``width``; ``wrn16_4``: ``dropout``.

    Raises:
        ValueError: unknown name (the message lists the choices) or bad option.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"Unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")
    if int(in_channels) < 1:
        raise ValueError(f"Invalid in_channels: {in_channels}")
    if int(num_classes) < 1:
        raise ValueError(f"Invalid num_classes: {num_classes}")
    size = _spatial(input_size)
    for key in ("width", "hidden") if name != "mlp" else ():
        value = kwargs.get(key, 1)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ValueError(f"Invalid {key}: {value!r} for model {name!r} (an integer >= 1)")
    try:
        if name == "mlp":
            return MLP(int(in_channels) * math.prod(size), int(num_classes), **kwargs)
        if name == "cnn":
            return SmallCNN(int(in_channels), int(num_classes), size, **kwargs)
        if name in _RESNET_DEPTHS:
            return CifarResNet(
                _RESNET_DEPTHS[name], int(in_channels), int(num_classes), size, **kwargs
            )
        return WideResNet(16, 4, int(in_channels), int(num_classes), size, **kwargs)
    except TypeError as exc:
        raise ValueError(f"Invalid option for model {name!r}: {exc}") from None
