"""One battery of tests run over every configuration of ``optim_db.CONFIGS``."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from _optim_helpers import (
    Reference,
    assert_same,
    build,
    flat,
    make_batches,
    make_closure,
    make_model,
    run,
    state_of,
)
from optim_db import CONFIGS

ALL = pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
IDENTITY = pytest.mark.parametrize("cfg", [c for c in CONFIGS if c.identity is not None], ids=repr)


@ALL
def test_step_equals_base_step_of_the_spec_direction(cfg):
    """θ after each step == SGD-step(θ, d) with d from the test's own statement of the rule."""
    model = make_model()
    ref = Reference(model, cfg.base_kwargs, cfg.hparams.get("val_fraction", 0.5))
    opt = build(cfg, model)
    for x, y in make_batches(3):
        opt.step(make_closure(model, opt, x, y))
        ref.step(cfg.ref, cfg.hparams, x, y)
        torch.testing.assert_close(
            flat(model.parameters()), flat(ref.params), rtol=1e-10, atol=1e-12
        )


@IDENTITY
def test_identity_settings_reproduce_the_base_optimizer_bit_for_bit(cfg):
    """rho=0 (and neutral weights) give exactly SGD's weights and BN buffers over 3 steps.

    Agnostic-SAM runs its first pass on the training part, so its BN statistics differ by
    design: it is compared on a model without BatchNorm.
    """
    model, base_model = make_model(bn=not cfg.splits_batch), make_model(bn=not cfg.splits_batch)
    opt = build(cfg, model, hparams=cfg.identity)
    base = torch.optim.SGD(base_model.parameters(), **cfg.base_kwargs)
    for x, y in make_batches(3):
        opt.step(make_closure(model, opt, x, y))
        base.step(make_closure(base_model, base, x, y))
        assert_same(state_of(model), state_of(base_model))


@ALL
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16], ids=str)
def test_restore_is_exact(cfg, dtype):
    """With a base step that moves nothing (lr=0), θ comes back bit for bit, also in bf16."""
    model = make_model(dtype=dtype)
    before = state_of(model)
    opt = build(cfg, model, base_kwargs={"lr": 0.0, "momentum": 0.9})
    for x, y in make_batches(2, dtype=dtype):
        opt.step(make_closure(model, opt, x, y))
    after = state_of(model)
    for k, v in before.items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(after[k], v), k


@ALL
def test_bn_buffers_are_those_of_one_plain_forward(cfg):
    """Running stats and num_batches_tracked: exactly one train-mode forward of the first pass."""
    model = make_model()
    plain = copy.deepcopy(model)
    x, y = make_batches(1)[0]
    calls = []
    opt = build(cfg, model)
    opt.step(make_closure(model, opt, x, y, calls=calls))
    assert len(calls) == round(opt.passes) + (1 if cfg.splits_batch else 0)
    plain(x if calls[0] is None else x[calls[0]])  # the first pass, at θ
    bufs = {k: v for k, v in state_of(model).items() if "running" in k or "num_batches" in k}
    want = {k: v for k, v in state_of(plain).items() if k in bufs}
    assert bufs and bufs["1.num_batches_tracked"] == 1
    assert_same(bufs, want)


@ALL
def test_state_dict_round_trip_resumes_the_same_trajectory(cfg):
    batches = make_batches(4)
    model = make_model()
    opt = run(cfg, model, batches[:2])
    saved_model, saved_opt = copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict())
    assert saved_opt["state"], "the base optimizer's state (momentum) is in the dict"
    for x, y in batches[2:]:
        opt.step(make_closure(model, opt, x, y))

    model2 = make_model()
    model2.load_state_dict(saved_model)
    opt2 = build(cfg, model2, hparams={})  # defaults: the loaded groups bring the values back
    opt2.load_state_dict(saved_opt)
    for k, v in cfg.hparams.items():
        assert opt2.param_groups[0][k] == v
    assert opt2.param_groups is opt2.base_optimizer.param_groups
    for x, y in batches[2:]:
        opt2.step(make_closure(model2, opt2, x, y))
    assert_same(state_of(model), state_of(model2))


@ALL
def test_foreach_and_single_tensor_kernels_agree(cfg):
    batches = make_batches(3)
    m1, m2 = make_model(), make_model()
    run(cfg, m1, batches, foreach=True)
    opt2 = run(cfg, m2, batches, foreach=False)
    assert opt2.foreach is False
    torch.testing.assert_close(flat(m1.parameters()), flat(m2.parameters()), rtol=1e-12, atol=1e-14)


@ALL
@pytest.mark.filterwarnings("ignore:ASAM.*no name:UserWarning")  # one unnamed tensor
def test_converges_on_a_quadratic(cfg):
    """Minimise 0.5 θᵀAθ (A SPD, condition 10) from ‖θ0‖≈3: the loss drops 1000-fold."""
    torch.manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(1.0, 10.0, 6, dtype=torch.float64)) @ q.T
    theta = torch.nn.Parameter(torch.randn(6, dtype=torch.float64) * 1.2)
    hp = {**cfg.hparams, **cfg.small}
    opt = cfg.cls([theta], torch.optim.SGD, lr=0.05, momentum=0.5, **hp)
    data = torch.zeros(8, 1)

    def closure(part=None):
        opt.zero_grad()
        w = 1.0 if part is None else data[part].shape[0] / data.shape[0]  # any part: same f
        loss = 0.5 * theta @ a @ theta * (w / w)
        loss.backward()
        return loss

    start = float(closure().detach())
    for _ in range(150):
        opt.step(closure)
    assert float(closure().detach()) < 1e-3 * start


@ALL
def test_bad_hyper_parameters_raise_naming_them(cfg):
    model = make_model()
    for hp, pattern in cfg.bad:
        with pytest.raises(ValueError, match=pattern):
            build(cfg, model, hparams={**cfg.hparams, **hp})
    opt = build(cfg, model)
    with pytest.raises(ValueError, match="Invalid closure"):
        opt.step()


@pytest.mark.parametrize("cfg", [c for c in CONFIGS if not c.splits_batch], ids=repr)
def test_explicit_first_second_step_equals_step_closure(cfg):
    """The hand-written loop (first_step / second_step until True) == step(closure)."""
    batches = make_batches(3)
    m1, m2 = make_model(), make_model()
    run(cfg, m1, batches)
    opt = build(cfg, m2)
    perturbs_first = cfg.cls._perturbs_first  # Momentum-SAM: first_step before the forward

    def backward(x, y):
        opt.zero_grad()
        F.cross_entropy(m2(x), y).backward()

    for x, y in batches:
        if not perturbs_first:
            backward(x, y)
        opt.first_step()
        backward(x, y)
        while not opt.second_step():
            backward(x, y)
    assert_same(state_of(m1), state_of(m2))


@ALL
def test_grad_scaler_skips_the_step_on_inf_in_a_later_pass(cfg):
    """An inf in the last pass: weights and momentum untouched, scale lowered."""
    model = make_model()
    x, y = make_batches(1)[0]
    opt = build(cfg, model)
    opt.step(make_closure(model, opt, x, y))  # a normal step first: momentum exists
    before = state_of(model)
    mom = {id(p): s["momentum_buffer"].clone() for p, s in opt.state.items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    n_passes = []

    def closure(part=None):
        opt.zero_grad()
        xb, yb = (x, y) if part is None else (x[part], y[part])
        loss = F.cross_entropy(model(xb), yb)
        n_passes.append(1)
        if len(n_passes) == len(expected):
            loss = loss * float("inf")
        scaler.scale(loss).backward()
        return loss

    expected = [1] * (round(opt.passes) + (1 if cfg.splits_batch else 0))
    opt.step(closure, scaler=scaler)
    scaler.update()
    assert len(n_passes) == len(expected)
    assert scaler.get_scale() == 2.0**9
    after = state_of(model)
    for k in before:
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(after[k], before[k]), k
    for p, s in opt.state.items():
        assert torch.equal(s["momentum_buffer"], mom[id(p)])


@ALL
def test_grad_scaler_step_equals_the_unscaled_step(cfg):
    batches = make_batches(2)
    m1, m2 = make_model(), make_model()
    run(cfg, m1, batches)
    opt = build(cfg, m2)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    for x, y in batches:
        opt.step(make_closure(m2, opt, x, y, scaler=scaler), scaler=scaler)
        scaler.update()
    torch.testing.assert_close(flat(m1.parameters()), flat(m2.parameters()), rtol=1e-9, atol=1e-12)
