"""Small problems with exact dense float64 Hessians, shared by the Hessian tests."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


def dense_hessian(model, x, y, loss_fn=F.cross_entropy, names=None):
    """The exact float64 Hessian of ``loss_fn(model(x), y)`` w.r.t. the named parameters.

    Reverse over reverse (``torch.autograd.functional.hessian``): ``torch.func.hessian``
    (forward over reverse, vmapped) gives wrong off-diagonal entries for LayerNorm models
    in torch 2.13 (``test_dense_reference_of_a_layernorm_model``).
    """
    m64 = copy.deepcopy(model).double()
    params = dict(m64.named_parameters())
    names = list(params) if names is None else list(names)
    fixed = {n: p.detach() for n, p in params.items() if n not in names}
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    x64 = x.double() if x.is_floating_point() else x
    y64 = y.double() if y.is_floating_point() else y

    def loss(v):
        chunks = v.split([s.numel() for s in shapes])
        ps = {n: c.view(s) for n, c, s in zip(names, chunks, shapes)}
        out = functional_call(m64, {**fixed, **ps}, (x64,))
        return loss_fn(out, y64)

    return torch.autograd.functional.hessian(loss, flat)


def tanh_mlp(seed=0, d_in=5, hidden=6, classes=3):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes))


def classification_data(n=40, d_in=5, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d_in, generator=g)
    y = torch.randint(0, classes, (n,), generator=g)
    return x, y


class LowRankRegression(nn.Module):
    """A linear least-squares model whose Hessian ``2XᵀX/N`` has a few dominant eigenvalues."""

    def __init__(self, d=40):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(d))

    def forward(self, x):
        return x @ self.w


def low_rank_data(n=200, d=40, top=(100.0, 60.0, 30.0, 20.0, 10.0), seed=2):
    g = torch.Generator().manual_seed(seed)
    scales = torch.full((d,), 0.3)
    scales[: len(top)] = torch.tensor(top).sqrt()
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * scales.double()) @ q.T
    y = torch.randn(n, generator=g, dtype=torch.float64)
    return x.float(), y.float()


def mse(out, y):
    return ((out - y) ** 2).mean()
