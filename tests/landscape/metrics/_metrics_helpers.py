"""Tiny float64 problems with exact answers for the metric tests."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call


class Quadratic(nn.Module):
    """L(θ) = ½θᵀAθ + bᵀθ + c with θ = (W.flatten(), v): a 2×2 weight and a bias of 2."""

    def __init__(self, A, b, theta, c=0.0):
        super().__init__()
        A = torch.as_tensor(A, dtype=torch.float64)
        self.register_buffer("A", 0.5 * (A + A.T))
        self.register_buffer("b", torch.as_tensor(b, dtype=torch.float64))
        theta = torch.as_tensor(theta, dtype=torch.float64)
        self.W = nn.Parameter(theta[:4].reshape(2, 2).clone())
        self.v = nn.Parameter(theta[4:].clone())
        self.c = float(c)

    def flat(self):
        return torch.cat([self.W.reshape(-1), self.v])

    def forward(self, x):
        t = self.flat()
        return 0.5 * t @ self.A @ t + self.b @ t + self.c + 0.0 * x.sum()

    def grad(self):
        with torch.no_grad():
            return self.A @ self.flat() + self.b

    def value(self, theta=None):
        with torch.no_grad():
            t = self.flat() if theta is None else theta
            return float(0.5 * t @ self.A @ t + self.b @ t + self.c)


def quad_loss(out, targets):
    return out


QUAD_DATA = (torch.zeros(1, 1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64))


def random_quadratic(seed=0, psd=True, n=6, c=0.0):
    g = np.random.default_rng(seed)
    m = g.standard_normal((n, n))
    A = m @ m.T / n + 0.1 * np.eye(n) if psd else m + m.T
    b = g.standard_normal(n)
    theta = g.standard_normal(n)
    return Quadratic(A, b, theta, c)


def trust_region_max(M, c, rho):
    """max of ½εᵀMε + cᵀε over ‖ε‖ ≤ ρ (boundary solution; M symmetric, c generic)."""
    M = np.asarray(M, dtype=np.float64)
    c = np.asarray(c, dtype=np.float64)
    lam, Q = np.linalg.eigh(M)
    cq = Q.T @ c
    if lam.max() < 0:
        inner = -np.linalg.solve(M, c)
        if np.linalg.norm(inner) <= rho:
            return float(0.5 * inner @ M @ inner + c @ inner), inner
    lo = lam.max()
    hi = lam.max() + np.linalg.norm(c) / rho + 1.0
    for _ in range(400):
        mu = 0.5 * (lo + hi)
        norm = np.linalg.norm(cq / (mu - lam))
        if norm > rho:
            lo = mu
        else:
            hi = mu
    eps = Q @ (cq / (hi - lam))
    eps *= rho / np.linalg.norm(eps)
    return float(0.5 * eps @ M @ eps + c @ eps), eps


def mlp(batchnorm=False, seed=1):
    torch.manual_seed(seed)
    layers = [nn.Linear(3, 4)]
    if batchnorm:
        layers.append(nn.BatchNorm1d(4))
    layers += [nn.Tanh(), nn.Linear(4, 3)]
    return nn.Sequential(*layers).double()


def classification_data(n=20, seed=2):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y


def dense_hessian(model, x, y):
    """(H, g) of the mean cross-entropy w.r.t. the flattened parameters (eval mode)."""
    names = [n for n, _ in model.named_parameters()]
    params = [p.detach() for _, p in model.named_parameters()]
    shapes = [p.shape for p in params]
    flat0 = torch.cat([p.reshape(-1) for p in params])

    def f(flat):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = int(np.prod(s)) if len(s) else 1
            out[n] = flat[i : i + k].reshape(s)
            i += k
        return F.cross_entropy(functional_call(model, out, (x,)), y)

    was = model.training
    model.eval()
    try:
        H = torch.autograd.functional.hessian(f, flat0)  # not torch.func's: LayerNorm
        g = torch.func.grad(f)(flat0)
    finally:
        model.train(was)
    return H, g
