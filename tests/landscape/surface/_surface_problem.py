"""A tiny deterministic problem shared by the surface tests and their subprocess jobs."""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear: weights of dim 4, 2 and 1 (biases, BN scales)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def make_problem(n: int = 64, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The model (eval-ready, with non-trivial BN running stats) and (inputs, targets)."""
    g = torch.Generator().manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        model.bn.running_mean.copy_(torch.randn(3, generator=g) * 0.1)
        model.bn.running_var.copy_(torch.rand(3, generator=g) + 0.5)
    x = torch.randn(n, 1, 6, 6, generator=g)
    y = torch.randint(0, 4, (n,), generator=g)
    return model, x, y
