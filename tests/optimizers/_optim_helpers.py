"""Small float64 problems shared by the optimizer tests."""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

N_BATCH = 16


def make_model(bn: bool = True, dtype: torch.dtype = torch.float64) -> nn.Module:
    torch.manual_seed(1)
    layers = [nn.Linear(5, 8)]
    if bn:
        layers.append(nn.BatchNorm1d(8))
    layers += [nn.Tanh(), nn.Linear(8, 3)]
    return nn.Sequential(*layers).to(dtype)


def make_batches(n_steps: int, dtype: torch.dtype = torch.float64):
    g = torch.Generator().manual_seed(2)
    return [
        (
            torch.randn(N_BATCH, 5, generator=g, dtype=dtype),
            torch.randint(0, 3, (N_BATCH,), generator=g),
        )
        for _ in range(n_steps)
    ]


def make_closure(model, opt, x, y, *, scaler=None, autocast=None, calls=None):
    def closure(part=None):
        if calls is not None:
            calls.append(part)
        opt.zero_grad()
        xb, yb = (x, y) if part is None else (x[part], y[part])
        if autocast is not None:
            with torch.autocast("cpu", dtype=autocast):
                loss = F.cross_entropy(model(xb), yb)
        else:
            loss = F.cross_entropy(model(xb), yb)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss.detach()

    return closure


def build(cfg, model, *, hparams=None, base_kwargs=None, **kw):
    hp = cfg.hparams if hparams is None else hparams
    bk = cfg.base_kwargs if base_kwargs is None else base_kwargs
    return cfg.cls(model.parameters(), torch.optim.SGD, model=model, **hp, **bk, **kw)


def run(cfg, model, batches, **kw):
    opt = build(cfg, model, **kw)
    for x, y in batches:
        opt.step(make_closure(model, opt, x, y))
    return opt


def flat(params) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def state_of(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Reference:
    """Runs an independent re-statement of a rule with plain SGD as the base step."""

    def __init__(self, model: nn.Module, base_kwargs: dict, val_fraction: float = 0.5):
        self.model = copy.deepcopy(model)
        self.scratch = copy.deepcopy(model)
        self.params = list(self.model.parameters())
        self.opt = torch.optim.SGD(self.params, **base_kwargs)
        self.val_fraction = val_fraction
        self.weight_decay = base_kwargs.get("weight_decay", 0.0)
        # ASAM's weights: "dim" (tensors with dim > 1) and "name" (the authors' rule)
        self.is_weight = torch.cat(
            [torch.full((p.numel(),), p.dim() > 1, dtype=torch.bool) for p in self.params]
        )
        self.is_named_weight = torch.cat(
            [
                torch.full((p.numel(),), "weight" in n, dtype=torch.bool)
                for n, p in self.model.named_parameters()
            ]
        )

    def grad_fn(self, x, y):
        n = x.shape[0]
        k = min(max(round(self.val_fraction * n), 1), n - 1)

        def grad(th, part):
            sp = list(self.scratch.parameters())
            with torch.no_grad():
                torch.nn.utils.vector_to_parameters(th, sp)
            for p in sp:
                p.grad = None
            sl = {None: slice(0, n), "train": slice(0, n - k), "val": slice(n - k, n)}[part]
            F.cross_entropy(self.scratch(x[sl]), y[sl]).backward()
            return flat(p.grad for p in sp)

        return grad

    def step(self, rule, hp, x, y):
        th = flat(self.params)
        mom = [self.opt.state[p].get("momentum_buffer") for p in self.params]
        info = {
            "is_weight": self.is_weight,
            "is_named_weight": self.is_named_weight,
            "weight_decay": self.weight_decay,
            "momentum": flat(
                m if m is not None else torch.zeros_like(p) for m, p in zip(mom, self.params)
            ),
        }
        d = rule(self.grad_fn(x, y), th, hp, info)
        off = 0
        for p in self.params:
            p.grad = d[off : off + p.numel()].view_as(p).clone()
            off += p.numel()
        self.opt.step()
