"""Lightning: 3 Trainer steps equal 3 steps of the plain closure loop."""

from __future__ import annotations

import logging
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

L = pytest.importorskip("lightning.pytorch")

import optimizers as O  # noqa: E402
from optimizers.integrations.lightning import SharpnessAwareCallback  # noqa: E402

LR = 0.1
BATCH = 8


def net() -> nn.Module:
    torch.manual_seed(0)
    # BatchNorm: the callback must hand the module to the optimizer so that its running
    # statistics are updated by the first pass only, as in the plain loop
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 1))


def data(n: int = 3 * BATCH) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)


def make(name: str, params, model=None) -> O.SharpnessAwareOptimizer:
    kw = {"rho": 0.5} if name == "momentum_sam" else {}
    return O.build_optimizer(name, params, model=model, lr=LR, **kw)


class Module(L.LightningModule):
    def __init__(self, name: str, manual: bool = False) -> None:
        super().__init__()
        self.net = net()
        self.name = name
        self.automatic_optimization = not manual

    def training_step(self, batch, batch_idx):
        x, y = batch
        if self.automatic_optimization:
            return F.mse_loss(self.net(x), y)
        opt = self.optimizers()

        def closure():
            opt.zero_grad()
            loss = F.mse_loss(self.net(x), y)
            self.manual_backward(loss)
            return loss

        def val_closure():
            opt.zero_grad()
            loss = F.mse_loss(self.net(x[BATCH // 2 :]), y[BATCH // 2 :])
            self.manual_backward(loss)
            return loss

        kw = {"val_closure": val_closure} if self.name == "agnostic_sam" else {}
        opt.step(closure=closure, **kw)

    def configure_optimizers(self):
        return make(self.name, self.parameters())  # no model=: the callback sets it


def plain_loop(name: str, steps: int = 3, amp: bool = False) -> nn.Module:
    model = net()
    model.train()
    opt = make(name, model.parameters(), model=model)
    x, y = data()
    for s in range(steps):
        xb, yb = x[s * BATCH : (s + 1) * BATCH], y[s * BATCH : (s + 1) * BATCH]

        def closure(xb=xb, yb=yb):
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.mse_loss(model(xb), yb)
            loss.backward()
            return loss

        def val_closure(xb=xb, yb=yb):
            opt.zero_grad()
            loss = F.mse_loss(model(xb[BATCH // 2 :]), yb[BATCH // 2 :])
            loss.backward()
            return loss

        opt.step(closure, **({"val_closure": val_closure} if name == "agnostic_sam" else {}))
    return model


def fit(module: L.LightningModule, **kwargs) -> L.Trainer:
    x, y = data()
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=BATCH, shuffle=False
    )
    args = dict(
        max_steps=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[SharpnessAwareCallback()],
    )
    args.update(kwargs)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # num_workers, tiny data set
        trainer = L.Trainer(**args)
        trainer.fit(module, loader)
    return trainer


def max_diff(a: nn.Module, b: nn.Module) -> float:
    pa = [*a.parameters(), *a.buffers()]
    pb = [*b.parameters(), *b.buffers()]
    return max((p.double() - q.double()).abs().max().item() for p, q in zip(pa, pb))


@pytest.mark.parametrize("name", ["sam", "gam", "momentum_sam"])
def test_automatic_optimization_equals_closure_loop(name):
    module = Module(name)
    trainer = fit(module)
    assert trainer.global_step == 3
    assert max_diff(module.net, plain_loop(name)) < 1e-6
    assert max_diff(module.net, net()) > 1e-3  # it did train


@pytest.mark.parametrize("name", ["sam", "agnostic_sam"])
def test_manual_optimization_equals_closure_loop(name):
    module = Module(name, manual=True)
    trainer = fit(module)
    assert trainer.global_step == 3
    assert max_diff(module.net, plain_loop(name)) < 1e-6


def test_bf16_mixed():
    module = Module("sam")
    fit(module, precision="bf16-mixed")
    assert max_diff(module.net, plain_loop("sam", amp=True)) < 1e-5


@pytest.mark.parametrize(
    ("name", "kwargs", "match"),
    [
        ("sam", {"accumulate_grad_batches": 2}, "accumulate_grad_batches"),
        ("gam", {"gradient_clip_val": 1.0}, "gradient_clip_val"),
        ("agnostic_sam", {}, "AgnosticSAM splits the batch"),
    ],
)
def test_refused(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit(Module(name), **kwargs)
