"""The shared mechanism: batch parts, pass driver, explicit calls, mixed precision, groups."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _optim_helpers import assert_same, flat, make_batches, make_closure, make_model, state_of
from optim_db import CONFIGS, unit

import optimizers as O
from optimizers import BatchPart, disable_running_stats


def sgd_kwargs():
    return {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}


def test_batch_part_slices_any_tensor_without_the_batch_size():
    x = torch.arange(16.0)
    tr, va = BatchPart(0.25, "train"), BatchPart(0.25, "val")
    assert torch.equal(x[tr], x[:12]) and torch.equal(x[va], x[12:])
    assert tr.slice(5) == slice(0, 4) and va.slice(5) == slice(4, 5)
    assert BatchPart(0.01, "val").slice(4) == slice(3, 4)  # at least one sample each
    assert torch.equal(torch.ones(6, 2)[BatchPart(0.5, "val")], torch.ones(3, 2))
    with pytest.raises(ValueError, match="Invalid batch size"):
        tr.slice(1)
    with pytest.raises(ValueError, match="Invalid which"):
        BatchPart(0.5, "test")


def test_agnostic_sam_validation_closure():
    """With val_closure: g_t on the whole batch, g_v from the validation closure."""
    model = make_model()
    (x, y), (xv, yv) = make_batches(2)
    ref = copy.deepcopy(model)
    opt = O.AgnosticSAM(
        model.parameters(), torch.optim.SGD, rho=0.3, rho_val=0.2, model=model, lr=0.1
    )
    calls = []
    opt.step(
        make_closure(model, opt, x, y, calls=calls), val_closure=make_closure(model, opt, xv, yv)
    )
    assert calls == [None, None]

    def grad(th, xb, yb):
        m = copy.deepcopy(ref)
        torch.nn.utils.vector_to_parameters(th, m.parameters())
        F.cross_entropy(m(xb), yb).backward()
        return flat(p.grad for p in m.parameters())

    th = flat(ref.parameters()).clone()
    g_t, g_v = grad(th, x, y), grad(th, xv, yv)
    d = grad(th + 0.3 * unit(g_t) - 0.2 * unit(g_v), x, y)
    torch.testing.assert_close(flat(model.parameters()), th - 0.1 * d, rtol=1e-12, atol=1e-14)


def test_gradient_already_present_is_the_first_pass():
    """A backward before step(closure) is reused; a step's leftover gradient is not."""
    x, y = make_batches(1)[0]
    m1, m2 = make_model(), make_model()
    o1 = O.SAM(m1.parameters(), torch.optim.SGD, rho=0.2, model=m1, **sgd_kwargs())
    o2 = O.SAM(m2.parameters(), torch.optim.SGD, rho=0.2, model=m2, **sgd_kwargs())
    calls1, calls2 = [], []
    loss = o1.step(make_closure(m1, o1, x, y, calls=calls1))
    F.cross_entropy(m2(x), y).backward()
    assert o2.step(make_closure(m2, o2, x, y, calls=calls2)) is None
    assert len(calls1) == 2 and len(calls2) == 1 and float(loss) > 0
    assert_same(state_of(m1), state_of(m2))
    calls2.clear()
    o2.step(make_closure(m2, o2, x, y, calls=calls2))  # .grad holds the last d: stale
    assert len(calls2) == 2


@pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
def test_zero_gradient_gives_zero_perturbation(cfg):
    model = make_model(bn=False)
    before = flat(model.parameters()).clone()
    opt = cfg.cls(
        model.parameters(), torch.optim.SGD, model=model, lr=0.1, momentum=0.9, **cfg.hparams
    )

    def closure(part=None):
        opt.zero_grad()
        loss = sum((p * 0).sum() for p in model.parameters())
        loss.backward()
        return loss

    for _ in range(2):
        opt.step(closure)
    assert torch.equal(flat(model.parameters()), before)


def test_lr_scheduler_drives_the_shared_groups_and_gsam_radius():
    model = make_model()
    opt = O.GSAM(model.parameters(), torch.optim.SGD, rho_max=0.2, rho_min=0.0, model=model, lr=0.4)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x, y = make_batches(1)[0]
    opt.step(make_closure(model, opt, x, y))
    sched.step()
    assert opt.base_optimizer.param_groups[0]["lr"] == 0.2
    assert O.GSAM.rho_t(opt.param_groups[0]) == pytest.approx(0.1)


def test_per_group_radius():
    """Two groups with their own rho: e = rho_group · ĝ (ĝ over all parameters)."""
    model = make_model(bn=False)
    ref = copy.deepcopy(model)
    w, b = (
        [p for p in model.parameters() if p.dim() > 1],
        [p for p in model.parameters() if p.dim() == 1],
    )
    opt = O.SAM([{"params": w, "rho": 0.3}, {"params": b, "rho": 0.05}], torch.optim.SGD, lr=0.1)
    x, y = make_batches(1)[0]
    opt.step(make_closure(model, opt, x, y))

    params = list(ref.parameters())
    rho = torch.cat(
        [
            torch.full((p.numel(),), 0.3 if p.dim() > 1 else 0.05, dtype=torch.float64)
            for p in params
        ]
    )
    F.cross_entropy(ref(x), y).backward()
    th, g0 = flat(params).clone(), flat(p.grad for p in params)
    torch.nn.utils.vector_to_parameters(th + rho * unit(g0), params)
    ref.zero_grad()
    F.cross_entropy(ref(x), y).backward()
    d = flat(p.grad for p in params)
    torch.testing.assert_close(flat(model.parameters()), th - 0.1 * d, rtol=1e-12, atol=1e-14)


def test_rho_zero_under_autocast_is_the_base_optimizer():
    m1, m2 = make_model(dtype=torch.float32), make_model(dtype=torch.float32)
    o1 = O.SAM(m1.parameters(), torch.optim.SGD, rho=0.0, model=m1, **sgd_kwargs())
    o2 = torch.optim.SGD(m2.parameters(), **sgd_kwargs())
    for x, y in make_batches(2, dtype=torch.float32):
        o1.step(make_closure(m1, o1, x, y, autocast=torch.bfloat16))
        o2.step(make_closure(m2, o2, x, y, autocast=torch.bfloat16))
    assert_same(state_of(m1), state_of(m2))
    o3 = O.SAM(m1.parameters(), torch.optim.SGD, rho=0.5, model=m1, **sgd_kwargs())
    x, y = make_batches(1, dtype=torch.float32)[0]
    o3.step(make_closure(m1, o3, x, y, autocast=torch.bfloat16))
    assert torch.isfinite(flat(m1.parameters())).all()
    assert not torch.equal(flat(m1.parameters()), flat(m2.parameters()))


def test_adam_base_rho_zero_and_state_dict():
    m1, m2 = make_model(), make_model()
    o1 = O.SAM(m1.parameters(), torch.optim.Adam, rho=0.0, model=m1, lr=1e-2)
    o2 = torch.optim.Adam(m2.parameters(), lr=1e-2)
    for x, y in make_batches(3):
        o1.step(make_closure(m1, o1, x, y))
        o2.step(make_closure(m2, o2, x, y))
    assert_same(state_of(m1), state_of(m2))
    sd1, sd2 = o1.state_dict(), o2.state_dict()
    assert sd1["state"].keys() == sd2["state"].keys()
    for k in sd1["state"]:
        assert torch.equal(sd1["state"][k]["exp_avg"], sd2["state"][k]["exp_avg"])
    assert sd1["param_groups"][0]["rho"] == 0.0


def test_exception_in_a_pass_restores_the_weights():
    model = make_model()
    before = flat(model.parameters()).clone()
    opt = O.SAM(model.parameters(), torch.optim.SGD, rho=0.5, model=model, lr=0.1)
    x, y = make_batches(1)[0]
    calls = []
    inner = make_closure(model, opt, x, y, calls=calls)

    def closure(part=None):
        if calls:
            raise RuntimeError("boom")
        return inner(part)

    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    assert torch.equal(flat(model.parameters()), before)
    assert all(m.track_running_stats for m in model.modules() if hasattr(m, "track_running_stats"))


def test_explicit_protocol_errors():
    model = make_model()
    opt = O.SAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1)
    with pytest.raises(ValueError, match="second_step"):
        opt.second_step()
    ag = O.AgnosticSAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1)
    with pytest.raises(ValueError, match="step\\(closure\\)"):
        ag.first_step()
    x, y = make_batches(1)[0]
    F.cross_entropy(model(x), y).backward()
    opt.first_step()
    with pytest.raises(ValueError, match="first_step"):
        opt.first_step()
    with pytest.raises(ValueError, match="Invalid call"):
        opt.step(make_closure(model, opt, x, y))


def test_base_optimizer_must_be_a_class():
    model = make_model()
    inst = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ValueError, match="Invalid base_optimizer: a SGD instance") as err:
        O.SAM(model.parameters(), inst, lr=0.1)
    assert "\n" not in str(err.value)  # one line, not the instance's repr
    with pytest.raises(ValueError, match="Invalid base_optimizer"):
        O.MomentumSAM(model.parameters(), torch.optim.Adam, lr=0.1)
    with pytest.raises(ValueError, match="Invalid momentum"):
        O.MomentumSAM(model.parameters(), torch.optim.SGD, lr=0.1)


def test_disable_running_stats_leaves_buffers_and_flags():
    model = make_model()
    before = state_of(model)
    with disable_running_stats(model):
        model(make_batches(1)[0][0])
    assert_same(before, state_of(model))
    assert model[1].track_running_stats


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.name in ("sam", "gsam", "gam")], ids=repr)
def test_mixed_dtypes_are_grouped(cfg):
    """float32 and float64 parameters in one optimizer: foreach (grouped) == single-tensor."""

    def problem():
        torch.manual_seed(3)
        a = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
        b = torch.nn.Parameter(torch.randn(3, dtype=torch.float32))
        return a, b

    def fit(foreach):
        a, b = problem()
        opt = cfg.cls([a, b], torch.optim.SGD, lr=0.1, momentum=0.9, foreach=foreach, **cfg.hparams)
        x = torch.randn(5, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))

        def closure(part=None):
            opt.zero_grad()
            loss = ((x @ a).tanh() @ b.double()).square().mean()
            loss.backward()
            return loss

        for _ in range(3):
            opt.step(closure)
        return a, b

    (a1, b1), (a2, b2) = fit(True), fit(False)
    assert b1.dtype == torch.float32
    torch.testing.assert_close(a1, a2, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(b1, b2, rtol=1e-5, atol=1e-6)


def test_the_direction_is_freed_by_zero_grad():
    """The optimizer keeps no strong reference to the .grad it leaves behind."""
    import weakref

    model = make_model()
    opt = O.SAM(model.parameters(), torch.optim.SGD, model=model, lr=0.1)
    x, y = make_batches(1)[0]
    opt.step(make_closure(model, opt, x, y))
    ref = weakref.ref(next(model.parameters()).grad)
    assert ref() is not None
    opt.zero_grad()
    assert ref() is None
