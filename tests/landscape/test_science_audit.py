"""Audit probes of mode connectivity and generalisation correlation against hand values."""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from landscape.connectivity import curve_profile, fit_curve, read_curve


def _pair(dtype: torch.dtype = torch.float32):
    g = torch.Generator().manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).to(dtype)
    b = copy.deepcopy(a)
    with torch.no_grad():
        for p in b.parameters():
            p.add_(torch.randn(p.shape, generator=g).to(dtype))
    x = torch.randn(8, 3, generator=g).to(dtype)
    y = torch.randint(0, 2, (8,), generator=g)
    return a, b, x, y


def test_bfloat16_curve_saved_and_profiled_again(tmp_path):
    a, b, x, y = _pair(torch.bfloat16)
    out = tmp_path / "curve.h5"
    res = fit_curve(a, b, (x, y), epochs=2, num=3, batch_size=4, out=out, progress=False)
    stored = read_curve(out)
    for mine, back in zip(res.bend, stored.bend, strict=True):
        np.testing.assert_array_equal(mine.float().numpy(), back.numpy())
    again = curve_profile(a, b, out, (x, y), num=3)
    np.testing.assert_array_equal(again.loss, res.curve.loss)
