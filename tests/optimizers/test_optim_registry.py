"""build_optimizer, OPTIMIZER_NAMES and optimizer_hparams (the contract other parts use)."""

from __future__ import annotations

import inspect

import pytest
import torch

import optimizers as O


def _model():
    return torch.nn.Sequential(
        torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.Linear(4, 2)
    )


def test_names():
    assert O.OPTIMIZER_NAMES == (
        "sgd", "adam", "sam", "asam", "gsam", "agnostic_sam", "gam", "fad", "crsam", "momentum_sam",
    )  # fmt: skip


@pytest.mark.parametrize("name", list(O.OPTIMIZERS))
def test_hparams_are_the_constructor_defaults(name):
    cls = O.OPTIMIZERS[name]
    sig = inspect.signature(cls.__init__).parameters
    hp = O.optimizer_hparams(name)
    assert hp and all(sig[k].default == v for k, v in hp.items())
    assert O.optimizer_hparams(name) is not cls.hyperparameters  # a copy


PAIRS = [
    (n, b) for n in O.OPTIMIZER_NAMES for b in ("sgd", "adam") if (n, b) != ("momentum_sam", "adam")
]


@pytest.mark.parametrize(("name", "base"), PAIRS)
def test_build_every_optimizer(name, base):
    model = _model()
    opt = O.build_optimizer(
        name, model.parameters(), model=model, base=base, lr=0.05, weight_decay=1e-4
    )
    assert isinstance(opt, torch.optim.Optimizer)
    if name in O.OPTIMIZERS:
        assert isinstance(opt, O.OPTIMIZERS[name]) and opt.model is model
        base_cls = torch.optim.SGD if base == "sgd" else torch.optim.Adam
        assert type(opt.base_optimizer) is base_cls
        assert opt.param_groups[0]["lr"] == 0.05 and opt.param_groups[0]["weight_decay"] == 1e-4
        for k, v in O.optimizer_hparams(name).items():
            assert opt.param_groups[0][k] == v
    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))

    def closure(part=None):
        opt.zero_grad()
        xb, yb = (x, y) if part is None else (x[part], y[part])
        loss = torch.nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        return loss

    assert torch.isfinite(opt.step(closure))


def test_build_errors():
    p = [torch.nn.Parameter(torch.zeros(2))]
    with pytest.raises(ValueError, match=r"Invalid optimizer name: 'lion'.*sgd, adam, sam"):
        O.build_optimizer("lion", p, lr=0.1)
    with pytest.raises(ValueError, match="Invalid optimizer name"):
        O.optimizer_hparams("lion")
    with pytest.raises(ValueError, match="Invalid hyper-parameter for sam: rhoo"):
        O.build_optimizer("sam", p, lr=0.1, rhoo=0.1)
    with pytest.raises(ValueError, match="Invalid base: 'adam'"):
        O.build_optimizer("momentum_sam", p, base="adam", lr=0.1)
    with pytest.raises(ValueError, match="Invalid base: 'rmsprop'"):
        O.build_optimizer("sam", p, base="rmsprop", lr=0.1)
    with pytest.raises(ValueError, match="Invalid rho: -1"):
        O.build_optimizer("sam", p, lr=0.1, rho=-1)
    assert (
        O.build_optimizer("gsam", p, lr=0.1, rho_max=0.1, rho_min=0.0, alpha=0.2).defaults["alpha"]
        == 0.2
    )
