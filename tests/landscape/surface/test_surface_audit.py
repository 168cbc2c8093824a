"""Audit probes of surfaces, directions and the HDF5 store against hand-computed values."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from landscape.store import read_directions
from landscape.surface import compute_surface


def _mlp(dtype: torch.dtype = torch.float32) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    x = torch.randn(9, 3, generator=g).to(dtype)
    y = torch.randint(0, 2, (9,), generator=g)
    return model, x, y


def test_bfloat16_model_surface_in_memory_and_file(tmp_path):
    model, x, y = _mlp(torch.bfloat16)
    out = tmp_path / "bf16.h5"
    surf = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:2", out=out, progress=False)
    assert surf.complete and np.isfinite(surf.values["train_loss"]).all()
    dx, _dy, names = read_directions(out)
    assert dx[0].dtype == np.float32 and len(names) == 4
    # the stored directions are exactly the bf16 ones (float32 holds every bf16 value)
    back = torch.from_numpy(dx[0]).to(torch.bfloat16).float()
    np.testing.assert_array_equal(back.numpy(), dx[0])
    again = compute_surface(model, (x, y), x="-1:1:3", y="-1:1:2", out=out, progress=False)
    np.testing.assert_array_equal(again.values["train_loss"], surf.values["train_loss"])
