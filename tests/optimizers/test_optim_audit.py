"""Audit of the sharpness-aware optimizers: cases the battery does not reach.

Frozen, unused, tied and 0-dim parameters, parameter groups that differ, buffers other
than BatchNorm's, dropout at ``rho=0``, resuming with a learning-rate schedule, the
step inside an autocast region, GradScaler with an inf in *any* pass, bad inputs, and
the authors' published steps (davda54/sam, juntang-zhuang/GSAM) over several steps.
"""

from __future__ import annotations

import copy
import io
import math

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
    state_of,
)
from optim_db import CONFIGS
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

import optimizers as O

ALL = pytest.mark.parametrize("cfg", CONFIGS, ids=repr)
IDENTITY = [c for c in CONFIGS if c.identity is not None and not c.splits_batch]


def _passes(cfg) -> int:
    """Closure calls per step of ``cfg`` with its battery hyper-parameters."""
    opt = build(cfg, make_model())
    return round(opt.passes) + (1 if cfg.splits_batch else 0)


# ------------------------------------------------------------------ parameters of all kinds
class _Odd(nn.Module):
    """A frozen layer, an unused layer, a 0-dim scale, tied input/output weights."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = nn.Embedding(7, 5)
        self.frozen = nn.Linear(5, 5)
        self.frozen.requires_grad_(False)
        self.mid = nn.Linear(5, 5)
        self.unused = nn.Linear(5, 5)
        self.scale = nn.Parameter(torch.tensor(0.7))
        self.head = nn.Linear(5, 7, bias=False)
        self.head.weight = self.emb.weight  # tied
        self.double()

    def forward(self, x):
        h = torch.tanh(self.mid(torch.tanh(self.frozen(self.emb(x))))) * self.scale
        return self.head(h).mean(1)


def _token_batches(n):
    g = torch.Generator().manual_seed(2)
    return [
        (torch.randint(0, 7, (8, 3), generator=g), torch.randint(0, 7, (8,), generator=g))
        for _ in range(n)
    ]


def _without_frozen_and_unused(model: _Odd) -> _Odd:
    """The same function with the frozen layer's tensors as buffers and no unused layer."""
    for name in ("weight", "bias"):
        t = getattr(model.frozen, name).detach()
        delattr(model.frozen, name)
        model.frozen.register_buffer(name, t)
    del model.unused
    return model


@ALL
def test_frozen_unused_tied_and_0dim_parameters_follow_the_rule(cfg):
    """Every parameter passed in == only the trained ones passed in == the flat reference
    (on the model whose frozen tensors are buffers); frozen and unused ones stay put."""
    model, only = _Odd(), _Odd()
    frozen_before = model.frozen.weight.detach().clone()
    unused_before = model.unused.weight.detach().clone()
    trained = [p for n, p in only.named_parameters() if not n.startswith(("frozen", "unused"))]
    opt = build(cfg, model)
    opt_only = cfg.cls(trained, torch.optim.SGD, model=only, **cfg.hparams, **cfg.base_kwargs)
    ref = Reference(
        _without_frozen_and_unused(_Odd()), cfg.base_kwargs, cfg.hparams.get("val_fraction", 0.5)
    )
    for x, y in _token_batches(3):
        opt.step(make_closure(model, opt, x, y))
        opt_only.step(make_closure(only, opt_only, x, y))
        ref.step(cfg.ref, cfg.hparams, x, y)
    assert_same(state_of(model), state_of(only))
    assert torch.equal(model.frozen.weight, frozen_before)
    assert torch.equal(model.unused.weight, unused_before)
    assert model.head.weight is model.emb.weight
    ours = {n: p for n, p in model.named_parameters() if not n.startswith(("frozen", "unused"))}
    theirs = dict(ref.model.named_parameters())
    assert ours.keys() == theirs.keys()
    for n in ours:
        torch.testing.assert_close(ours[n], theirs[n], rtol=1e-10, atol=1e-12, msg=n)


# ------------------------------------------------------------------ parameter groups
NUMERIC = ("rho", "rho_val", "rho_max", "rho_min", "beta", "gamma", "rho_fd")


@ALL
def test_groups_with_their_own_lr_radius_and_weight_decay(cfg):
    """Two groups (weights, biases), every numeric hyper-parameter halved in the second.

    The flat reference takes the radii per element, the base SGD has the same two groups.
    """
    hp_a = dict(cfg.hparams)
    hp_b = {k: v * 0.5 if k in NUMERIC and isinstance(v, float) else v for k, v in hp_a.items()}
    opts = {k: v for k, v in hp_a.items() if not isinstance(v, float)}
    model = make_model(bn=False)
    ref_model = copy.deepcopy(model)

    def groups(m, sgd_only=False):
        a = [p for p in m.parameters() if p.dim() > 1]
        b = [p for p in m.parameters() if p.dim() <= 1]
        ga, gb = {"params": a, "lr": 0.1, "weight_decay": 1e-3}, {"params": b, "lr": 0.05}
        if not sgd_only:
            ga, gb = {**ga, **hp_a}, {**gb, **hp_b, "weight_decay": 0.0}
        else:
            gb["weight_decay"] = 0.0
        return [ga, gb]

    opt = cfg.cls(groups(model), torch.optim.SGD, model=model, momentum=0.9, **opts)
    sgd = torch.optim.SGD(groups(ref_model, sgd_only=True), momentum=0.9)
    params = list(ref_model.parameters())
    in_a = torch.cat([torch.full((p.numel(),), p.dim() > 1) for p in params])

    def per_element(a, b):
        f64 = torch.float64
        return torch.where(in_a, torch.tensor(a, dtype=f64), torch.tensor(b, dtype=f64))

    hp = {k: per_element(v, hp_b[k]) if isinstance(v, float) else v for k, v in hp_a.items()}
    ref = Reference(ref_model, {}, hp_a.get("val_fraction", 0.5))
    ref.params, ref.opt = params, sgd  # the two-group SGD on the same tensors
    ref.weight_decay = per_element(1e-3, 0.0)
    for x, y in make_batches(3):
        opt.step(make_closure(model, opt, x, y))
        ref.step(cfg.ref, hp, x, y)
        torch.testing.assert_close(flat(model.parameters()), flat(params), rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ buffers
class _Counter(nn.Module):
    """A buffer the forward updates in place (as spectral norm's power iteration does)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(8, dtype=torch.float64))

    def forward(self, x):
        if self.training:
            self.calls += 1
            self.ema.mul_(0.9).add_(x.detach().mean(0), alpha=0.1)
        return x


def _buffered_model():
    torch.manual_seed(0)
    return nn.Sequential(
        spectral_norm(nn.Linear(5, 8)), nn.BatchNorm1d(8), _Counter(), nn.Tanh(), nn.Linear(8, 3)
    ).double()


@ALL
def test_every_buffer_is_updated_by_the_first_pass_only(cfg):
    """Spectral norm's u/v, a counter and an EMA buffer: one forward's worth per step."""
    model = _buffered_model()
    plain = copy.deepcopy(model)
    x, y = make_batches(1)[0]
    calls = []
    opt = build(cfg, model)
    opt.step(make_closure(model, opt, x, y, calls=calls))
    assert len(calls) == _passes(cfg)
    plain(x if calls[0] is None else x[calls[0]])  # the first pass
    want = dict(plain.named_buffers())
    got = dict(model.named_buffers())
    assert int(got["2.calls"]) == 1
    assert want.keys() == got.keys()
    for k in want:  # (Momentum-SAM's first step is at θ: no momentum yet)
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("cfg", IDENTITY, ids=repr)
def test_rho_zero_is_the_base_optimizer_with_spectral_norm(cfg):
    m1, m2 = _buffered_model(), _buffered_model()
    opt = build(cfg, m1, hparams=cfg.identity)
    base = torch.optim.SGD(m2.parameters(), **cfg.base_kwargs)
    for x, y in make_batches(3):
        opt.step(make_closure(m1, opt, x, y))
        base.step(make_closure(m2, base, x, y))
    assert_same(state_of(m1), state_of(m2))


# ------------------------------------------------------------------ rho = 0
def _dropout_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 3)).double()


@pytest.mark.parametrize("cfg", IDENTITY, ids=repr)
def test_rho_zero_is_the_base_optimizer_whatever_the_other_weights(cfg):
    """Only the radii at 0 (alpha, gamma, ... as in the battery) and a model with dropout:
    SGD's trajectory bit for bit, the random stream included."""
    radii = {k: v for k, v in cfg.identity.items() if k.startswith("rho")}
    m1, m2 = _dropout_model(), _dropout_model()
    opt = build(cfg, m1, hparams={**cfg.hparams, **radii})
    base = torch.optim.SGD(m2.parameters(), **cfg.base_kwargs)
    calls = []
    for i, (x, y) in enumerate(make_batches(3)):
        torch.manual_seed(10 + i)
        opt.step(make_closure(m1, opt, x, y, calls=calls))
        torch.manual_seed(10 + i)
        base.step(make_closure(m2, base, x, y))
    assert len(calls) == 3  # one pass per step: the perturbation is zero
    assert_same(state_of(m1), state_of(m2))


def test_gsam_rho_zero_with_a_schedule_is_sgd():
    """rho_max = rho_min = 0: rho_t = 0 at every learning rate."""
    m1, m2 = make_model(), make_model()
    opt = O.GSAM(m1.parameters(), torch.optim.SGD, rho_max=0.0, rho_min=0.0, alpha=0.4, lr=0.1)
    base = torch.optim.SGD(m2.parameters(), lr=0.1)
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=3)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(base, T_max=3)
    for x, y in make_batches(3):
        opt.step(make_closure(m1, opt, x, y))
        base.step(make_closure(m2, base, x, y))
        s1.step()
        s2.step()
    assert_same(state_of(m1), state_of(m2))


# ------------------------------------------------------------------ zero_grad
@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c.name in ("sam", "gsam", "crsam")], ids=repr
)
@pytest.mark.parametrize("who", ["optimizer", "model"])
def test_zeroed_gradients_before_step_are_not_a_first_pass(cfg, who):
    """``zero_grad(set_to_none=False)`` before ``step(closure)`` leaves zeros in .grad:
    they are not a gradient, the closure's first pass must run."""
    batches = make_batches(3)
    m1, m2 = make_model(), make_model()
    o1, o2 = build(cfg, m1), build(cfg, m2)
    calls = []
    for x, y in batches:
        o1.step(make_closure(m1, o1, x, y))
        (o2 if who == "optimizer" else m2).zero_grad(set_to_none=False)
        loss = o2.step(make_closure(m2, o2, x, y, calls=calls))
        assert loss is not None
    assert len(calls) == 3 * _passes(cfg)
    assert_same(state_of(m1), state_of(m2))


def test_zero_grad_set_to_none_false_inside_the_closure():
    batches = make_batches(3)
    m1, m2 = make_model(), make_model()
    o1 = O.SAM(m1.parameters(), torch.optim.SGD, rho=0.3, model=m1, lr=0.1, momentum=0.9)
    o2 = O.SAM(m2.parameters(), torch.optim.SGD, rho=0.3, model=m2, lr=0.1, momentum=0.9)
    for x, y in batches:
        o1.step(make_closure(m1, o1, x, y))

        def closure(x=x, y=y):
            o2.zero_grad(set_to_none=False)
            loss = F.cross_entropy(m2(x), y)
            loss.backward()
            return loss

        o2.step(closure)
    assert_same(state_of(m1), state_of(m2))


# ------------------------------------------------------------------ autocast
@ALL
def test_step_inside_an_autocast_region_perturbs_the_cast_weights(cfg):
    """``with autocast: opt.step(closure)`` == the closure entering autocast itself.

    Autocast caches the low-precision copy of each weight until the outermost region
    exits: the passes at the moved weights must not see the copy of θ.
    """
    batches = make_batches(2, dtype=torch.float32)
    m1, m2 = make_model(dtype=torch.float32), make_model(dtype=torch.float32)
    o1, o2 = build(cfg, m1), build(cfg, m2)
    for x, y in batches:
        o1.step(make_closure(m1, o1, x, y, autocast=torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o2.step(make_closure(m2, o2, x, y))
    assert_same(state_of(m1), state_of(m2))


def test_explicit_protocol_inside_an_autocast_region():
    batches = make_batches(2, dtype=torch.float32)
    m1, m2 = make_model(dtype=torch.float32), make_model(dtype=torch.float32)
    o1 = O.SAM(m1.parameters(), torch.optim.SGD, rho=0.5, model=m1, lr=0.1)
    o2 = O.SAM(m2.parameters(), torch.optim.SGD, rho=0.5, model=m2, lr=0.1)
    for x, y in batches:
        o1.step(make_closure(m1, o1, x, y, autocast=torch.bfloat16))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            o2.zero_grad()
            F.cross_entropy(m2(x), y).backward()
            o2.first_step()
            o2.zero_grad()
            F.cross_entropy(m2(x), y).backward()
            assert o2.second_step()
    assert_same(state_of(m1), state_of(m2))


# ------------------------------------------------------------------ GradScaler
def _one_step_with_a_bad_pass(cfg, bad: int, value: float) -> None:
    """A normal step, then one whose pass number ``bad`` has an inf/NaN loss."""
    model = make_model()
    x, y = make_batches(1)[0]
    opt = build(cfg, model)
    opt.step(make_closure(model, opt, x, y))
    before = flat(model.parameters()).clone()
    mom = {id(p): s["momentum_buffer"].clone() for p, s in opt.state.items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    seen = []

    def closure(part=None):
        opt.zero_grad()
        xb, yb = (x, y) if part is None else (x[part], y[part])
        loss = F.cross_entropy(model(xb), yb)
        if len(seen) == bad:
            loss = loss * value
        seen.append(part)
        scaler.scale(loss).backward()
        return loss

    opt.step(closure, scaler=scaler)
    scaler.update()
    assert len(seen) == _passes(cfg)
    assert scaler.get_scale() == 2.0**9
    assert torch.equal(flat(model.parameters()), before)
    for p, s in opt.state.items():
        assert torch.equal(s["momentum_buffer"], mom[id(p)])


@ALL
@pytest.mark.parametrize("value", [math.inf, math.nan], ids=["inf", "nan"])
def test_grad_scaler_skips_the_step_on_inf_or_nan_in_any_pass(cfg, value):
    for bad in range(_passes(cfg)):
        _one_step_with_a_bad_pass(cfg, bad, value)


# ------------------------------------------------------------------ resuming
@ALL
def test_resume_from_a_checkpoint_with_a_schedule_and_nesterov(cfg):
    """Save model, optimizer and scheduler after 3 of 6 steps (through torch.save), load
    them into fresh instances: the last 3 steps equal the uninterrupted run."""
    bk = {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3, "nesterov": True}
    batches = make_batches(6)

    def fresh():
        model = make_model()
        opt = build(cfg, model, base_kwargs=bk)
        return model, opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=6)

    def train(model, opt, sched, part):
        for x, y in part:
            opt.step(make_closure(model, opt, x, y))
            sched.step()

    model, opt, sched = fresh()
    train(model, opt, sched, batches)
    m2, o2, s2 = fresh()
    train(m2, o2, s2, batches[:3])
    buf = io.BytesIO()
    torch.save({"m": m2.state_dict(), "o": o2.state_dict(), "s": s2.state_dict()}, buf)
    buf.seek(0)
    ck = torch.load(buf, weights_only=True)
    m3, o3, s3 = fresh()
    m3.load_state_dict(ck["m"])
    o3.load_state_dict(ck["o"])
    s3.load_state_dict(ck["s"])
    train(m3, o3, s3, batches[3:])
    assert_same(state_of(model), state_of(m3))


# ------------------------------------------------------------------ bad inputs
@pytest.mark.parametrize(
    ("cls", "kwargs", "pattern"),
    [
        (O.SAM, {"rho": "0.05"}, r"Invalid rho: '0\.05'"),
        (O.SAM, {"rho": True}, r"Invalid rho: True"),
        (O.GSAM, {"rho_max": "0.1", "rho_min": "0.05"}, r"Invalid rho_max: '0\.1'"),
        (O.GSAM, {"lr_max": "1"}, r"Invalid lr_max: '1'"),
        (O.GAM, {"alpha": "0.5"}, r"Invalid alpha: '0\.5'"),
        (O.MomentumSAM, {"rho": "1", "momentum": 0.9}, r"Invalid rho: '1'"),
    ],
)
def test_hyper_parameters_of_the_wrong_type_raise_naming_them(cls, kwargs, pattern):
    net = nn.Linear(3, 2)
    base = {"lr": 0.1, **({"momentum": 0.9} if cls is not O.MomentumSAM else {})}
    with pytest.raises(ValueError, match=pattern):
        cls(net.parameters(), torch.optim.SGD, **{**base, **kwargs})


def test_a_tensor_radius_is_stored_as_a_float():
    net = nn.Linear(3, 2)
    opt = O.SAM(net.parameters(), torch.optim.SGD, rho=torch.tensor(0.25), lr=0.1)
    assert opt.param_groups[0]["rho"] == 0.25 and type(opt.param_groups[0]["rho"]) is float


@pytest.mark.filterwarnings("ignore:ASAM.*no name:UserWarning")
@pytest.mark.parametrize(
    ("cls", "group", "pattern"),
    [
        (O.SAM, {"rho": -1.0}, r"Invalid rho: -1\.0"),
        (O.SAM, {"rho": "a"}, r"Invalid rho: 'a'"),
        (O.GSAM, {"rho_min": 0.5}, r"Invalid rho_min: 0\.5"),
        (O.GAM, {"alpha": 2.0}, r"Invalid alpha: 2\.0"),
        (O.ASAM, {"eta": 0.2}, r"Invalid param_groups: ASAM needs one eta"),
        (O.GAM, {"h_minus": "paper"}, r"Invalid param_groups: GAM needs one h_minus"),
        (O.AgnosticSAM, {"val_fraction": 0.3}, r"needs one val_fraction"),
        (O.CRSAM, {"gamma": -0.1}, r"Invalid gamma: -0\.1"),
    ],
)
def test_bad_group_hyper_parameters_raise_at_construction_and_in_add_param_group(
    cls, group, pattern
):
    net = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=pattern):
        cls(
            [{"params": [net.weight], **group}, {"params": [net.bias]}],
            torch.optim.SGD,
            lr=0.1,
        )
    opt = cls([net.weight], torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match=pattern):
        opt.add_param_group({"params": [net.bias], **group})
    assert len(opt.param_groups) == 1


def test_a_closure_that_is_not_callable_raises_naming_it():
    net = nn.Linear(3, 2)
    opt = O.SAM(net.parameters(), torch.optim.SGD, lr=0.1)
    before = flat(net.parameters()).clone()
    with pytest.raises(ValueError, match=r"Invalid closure: 3 \(expected a callable\)"):
        opt.step(3)
    ag = O.AgnosticSAM(net.parameters(), torch.optim.SGD, lr=0.1)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    with pytest.raises(ValueError, match=r"Invalid val_closure: 'x'"):
        ag.step(make_closure(net, ag, x, y), val_closure="x")
    assert torch.equal(flat(net.parameters()), before)


def test_empty_parameters_and_all_frozen():
    with pytest.raises(ValueError, match="empty parameter list"):
        O.SAM([], torch.optim.SGD, lr=0.1)
    net = nn.Linear(3, 2)
    net.requires_grad_(False)
    before = flat(net.parameters()).clone()
    opt = O.GAM(net.parameters(), torch.optim.SGD, lr=0.1)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        return loss  # no backward possible: nothing requires grad

    opt.step(closure)
    assert torch.equal(flat(net.parameters()), before)


# ------------------------------------------------------------------ FAD per group
def test_fad_groups_with_their_own_finite_difference_step():
    """``hv = (g(θ + rho_fd·ĝ0) − g0) / rho_fd`` per group, as the spec writes it."""
    for rho_b, fd_b in ((0.1, 0.1), (0.1, 0.02)):  # the 4-pass and 5-pass paths
        model = make_model(bn=False)
        ref = Reference(model, {"lr": 0.1})
        a = [p for p in model.parameters() if p.dim() > 1]
        b = [p for p in model.parameters() if p.dim() <= 1]
        rho_a, fd_a = 0.2, 0.2 if rho_b == fd_b else 0.05
        opt = O.FAD(
            [
                {"params": a, "rho": rho_a, "rho_fd": fd_a},
                {"params": b, "rho": rho_b, "rho_fd": fd_b},
            ],
            torch.optim.SGD,
            alpha=0.7,
            beta=0.3,
            lr=0.1,
        )
        in_a = torch.cat([torch.full((p.numel(),), p.dim() > 1) for p in ref.params])
        f64 = torch.float64
        hp = {
            "rho": torch.where(
                in_a, torch.tensor(rho_a, dtype=f64), torch.tensor(rho_b, dtype=f64)
            ),
            "rho_fd": torch.where(
                in_a, torch.tensor(fd_a, dtype=f64), torch.tensor(fd_b, dtype=f64)
            ),
            "alpha": 0.7,
            "beta": 0.3,
        }
        ref_rule = next(c.ref for c in CONFIGS if c.name == "fad")
        for x, y in make_batches(2):
            opt.step(make_closure(model, opt, x, y))
            ref.step(ref_rule, hp, x, y)
        torch.testing.assert_close(
            flat(model.parameters()), flat(ref.params), rtol=1e-10, atol=1e-12
        )


# ------------------------------------------------------------------ the authors' steps
LR, MU, WD = 0.1, 0.9, 5e-4


def _authors_model() -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Linear(8, 3)).double()


class _Named:
    """Named weights as a dict, gradients by ``functional_call`` (batch statistics only),
    and torch's SGD (momentum, dampening 0, weight decay, optional Nesterov) by hand."""

    def __init__(self, model: nn.Module, nesterov: bool) -> None:
        self.model = model
        self.w = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.buf: dict[str, torch.Tensor] = {}
        self.nesterov = nesterov

    def grad(self, w, x, y):
        leaves = {n: t.detach().clone().requires_grad_(True) for n, t in w.items()}
        bufs = {n: b.clone() for n, b in self.buffers.items()}
        out = torch.func.functional_call(self.model, {**leaves, **bufs}, (x,))
        loss = F.cross_entropy(out, y)
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    def sgd(self, d, lr):
        for n in self.w:
            g = d[n] + WD * self.w[n]
            self.buf[n] = g.clone() if n not in self.buf else MU * self.buf[n] + g
            step = g + MU * self.buf[n] if self.nesterov else self.buf[n]
            self.w[n] = self.w[n] - lr * step


def _sum_norm(ts) -> float:
    return math.sqrt(sum(float((t * t).sum()) for t in ts))


def _ours(opt_factory, model, batches, sched=None):
    opt = opt_factory(model)
    s = sched(opt) if sched is not None else None
    for x, y in batches:
        opt.step(make_closure(model, opt, x, y))
        if s is not None:
            s.step()
    return {n: p.detach() for n, p in model.named_parameters()}


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("nesterov", [False, True])
def test_sam_is_davda54s_sam_over_five_steps(adaptive, nesterov):
    """davda54/sam ``SAM(adaptive=...)``: ``e = rho·(w² if adaptive else 1)·g / ‖(|w| if
    adaptive else 1)·g‖``; ours: :class:`SAM`, and ``ASAM(adaptive_all=True)``."""
    rho = 2.0 if adaptive else 0.3
    batches = make_batches(5)
    ref = _Named(_authors_model(), nesterov)
    for x, y in batches:
        g = ref.grad(ref.w, x, y)
        t = {n: ref.w[n].abs() if adaptive else torch.ones_like(ref.w[n]) for n in g}
        scale = rho / (_sum_norm(t[n] * g[n] for n in g) + 1e-12)
        e = {n: t[n] * t[n] * g[n] * scale for n in g}
        ref.sgd(ref.grad({n: ref.w[n] + e[n] for n in g}, x, y), LR)

    def factory(m):
        cls, hp = (O.ASAM, {"adaptive_all": True}) if adaptive else (O.SAM, {})
        return cls(
            m.parameters(), torch.optim.SGD, rho=rho, model=m, lr=LR, momentum=MU,
            weight_decay=WD, nesterov=nesterov, **hp,
        )  # fmt: skip

    ours = _ours(factory, _authors_model(), batches)
    for n in ours:
        torch.testing.assert_close(ours[n], ref.w[n], rtol=1e-10, atol=1e-12, msg=n)


def test_gsam_is_the_authors_gsam_with_a_proportional_rho_schedule():
    """juntang-zhuang/GSAM: ``rho_t`` from ProportionScheduler (``max_lr`` the initial
    learning rate, ``min_lr = 0``) on a cosine schedule, the decomposition through the
    cosine of the two gradients, weights restored before the base step; 6 steps."""
    rho_max, rho_min, alpha, steps = 0.2, 0.02, 0.3, 6
    batches = make_batches(steps)
    ref = _Named(_authors_model(), nesterov=False)
    eps = 1e-12
    for t, (x, y) in enumerate(batches):
        lr = 0.5 * LR * (1 + math.cos(math.pi * t / steps))
        rho_t = rho_min + (rho_max - rho_min) * (lr - 0.0) / (LR - 0.0)
        g0 = ref.grad(ref.w, x, y)
        scale = rho_t / (_sum_norm(g0.values()) + eps)
        gp = ref.grad({n: ref.w[n] + g0[n] * scale for n in g0}, x, y)
        inner = sum(float((g0[n] * gp[n]).sum()) for n in g0)
        new_norm, old_norm = _sum_norm(gp.values()), _sum_norm(g0.values())
        cosine = inner / (new_norm * old_norm + eps)
        d = {}
        for n in g0:
            vertical = g0[n] - cosine * old_norm * gp[n] / (new_norm + eps)
            d[n] = gp[n] - alpha * vertical
        ref.sgd(d, lr)

    def factory(m):
        return O.GSAM(
            m.parameters(), torch.optim.SGD, rho_max=rho_max, rho_min=rho_min, alpha=alpha,
            model=m, lr=LR, momentum=MU, weight_decay=WD,
        )  # fmt: skip

    def sched(opt):
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)

    ours = _ours(factory, _authors_model(), batches, sched)
    for n in ours:
        torch.testing.assert_close(ours[n], ref.w[n], rtol=1e-10, atol=1e-12, msg=n)


# ------------------------------------------------------------------ more groups, explicit calls
def test_gsam_group_added_later_maps_its_own_lr_to_rho_max():
    """``add_param_group`` after construction: the group's ``lr_max`` is its initial lr."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    opt = O.GSAM(net[0].parameters(), torch.optim.SGD, lr=0.1, rho_max=0.1, rho_min=0.01)
    opt.add_param_group({"params": net[2].parameters(), "lr": 0.05})
    assert opt.param_groups[1]["lr_max"] == 0.05
    assert O.GSAM.rho_t(opt.param_groups[1]) == pytest.approx(0.1)
    x, y = torch.randn(6, 3, dtype=torch.float64), torch.randint(0, 2, (6,))
    opt.step(make_closure(net, opt, x, y))


@pytest.mark.parametrize("cfg", IDENTITY, ids=repr)
def test_explicit_protocol_at_rho_zero_is_the_base_optimizer(cfg):
    """first_step / second_step with only the radii at 0: the base optimizer bit for bit
    (the rule needs no gradient past the first; the further one is left unused)."""
    radii = {k: v for k, v in cfg.identity.items() if k.startswith("rho")}
    m1, m2 = make_model(), make_model()
    opt = build(cfg, m1, hparams={**cfg.hparams, **radii})
    base = torch.optim.SGD(m2.parameters(), **cfg.base_kwargs)

    def backward(x, y):
        opt.zero_grad()
        F.cross_entropy(m1(x), y).backward()

    for x, y in make_batches(3):
        if not cfg.cls._perturbs_first:
            backward(x, y)
        opt.first_step()
        backward(x, y)
        assert opt.second_step()
        base.step(make_closure(m2, base, x, y))
    assert_same(state_of(m1), state_of(m2))


@pytest.mark.parametrize("cls", [O.SAM, O.ASAM, O.GSAM, O.GAM, O.FAD, O.CRSAM])
def test_sparse_embedding_gradients_equal_the_dense_ones(cls):
    """``nn.Embedding(sparse=True)`` with the default kernels: the dense embedding's steps."""

    def fit(sparse):
        torch.manual_seed(0)
        net = nn.ModuleDict(
            {"emb": nn.Embedding(10, 4, sparse=sparse), "head": nn.Linear(4, 3)}
        ).double()
        opt = cls(net.parameters(), torch.optim.SGD, model=net, lr=0.1)
        g = torch.Generator().manual_seed(1)
        for _ in range(3):
            x, y = torch.randint(0, 10, (6,), generator=g), torch.randint(0, 3, (6,), generator=g)

            def closure(x=x, y=y):
                opt.zero_grad()
                loss = F.cross_entropy(net["head"](net["emb"](x)), y)
                loss.backward()
                return loss

            opt.step(closure)
        return flat(net.parameters())

    torch.testing.assert_close(fit(True), fit(False), rtol=1e-12, atol=1e-14)


def test_gsam_radius_stays_between_rho_min_and_rho_max():
    """A learning rate outside [lr_min, lr_max] (a one-cycle peak above the lr given at
    construction, a decay below lr_min) holds rho_t at the nearer end."""
    net = nn.Linear(3, 2)
    opt = O.GSAM(net.parameters(), torch.optim.SGD, rho_max=0.1, rho_min=0.02, lr=1e-3, lr_min=1e-4)
    group = opt.param_groups[0]
    for lr, want in ((1e-3, 0.1), (1e-4, 0.02), (5.5e-4, 0.06), (0.1, 0.1), (0.0, 0.02)):
        group["lr"] = lr
        assert O.GSAM.rho_t(group) == pytest.approx(want), lr
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.1, total_steps=10)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    for _ in range(9):
        assert 0.02 <= O.GSAM.rho_t(group) <= 0.1
        opt.step(make_closure(net, opt, x, y))
        sched.step()


@pytest.mark.filterwarnings("ignore:ASAM.*no name:UserWarning")
def test_asam_resumed_without_names_takes_them_from_the_checkpoint():
    """Built on ``named_parameters()``, resumed on ``parameters()``: the checkpoint's
    ``param_names`` keep the authors' T (LayerNorm's scale is a weight)."""

    def fresh():
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(3, 4), nn.LayerNorm(4), nn.Linear(4, 2)).double()
        with torch.no_grad():
            m[1].weight.mul_(1.7)
        return m

    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    m1 = fresh()
    o1 = O.ASAM(m1.named_parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    for _ in range(2):
        o1.step(make_closure(m1, o1, x, y))
    saved_model, saved_opt = copy.deepcopy(m1.state_dict()), copy.deepcopy(o1.state_dict())
    for _ in range(2):
        o1.step(make_closure(m1, o1, x, y))
    m2 = fresh()
    m2.load_state_dict(saved_model)
    o2 = O.ASAM(m2.parameters(), torch.optim.SGD, lr=0.1, momentum=0.9)
    o2.load_state_dict(saved_opt)
    for _ in range(2):
        o2.step(make_closure(m2, o2, x, y))
    assert_same(state_of(m1), state_of(m2))


def test_first_step_without_a_gradient_raises():
    net = nn.Linear(3, 2)
    opt = O.SAM(net.parameters(), torch.optim.SGD, lr=0.1)
    before = flat(net.parameters()).clone()
    with pytest.raises(ValueError, match=r"first_step\(\) found no gradient"):
        opt.first_step()
    assert torch.equal(flat(net.parameters()), before)
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))
    F.cross_entropy(net(x), y).backward()
    opt.first_step()  # the protocol is usable after the refusal
    opt.zero_grad()
    F.cross_entropy(net(x), y).backward()
    assert opt.second_step()


@ALL
def test_a_deep_copy_or_pickle_continues_the_trajectory(cfg):
    """``copy.deepcopy((model, opt))`` and a pickle round trip of both give working
    optimizers on the copied model (torch's Optimizer pickles only its groups and state)."""
    batches = make_batches(4)
    model = make_model()
    opt = build(cfg, model)
    for x, y in batches[:2]:
        opt.step(make_closure(model, opt, x, y))
    copied, opt_copy = copy.deepcopy((model, opt))
    buf = io.BytesIO()
    torch.save((model, opt), buf)
    buf.seek(0)
    loaded, opt_loaded = torch.load(buf, weights_only=False)
    for x, y in batches[2:]:
        for m, o in ((model, opt), (copied, opt_copy), (loaded, opt_loaded)):
            o.step(make_closure(m, o, x, y))
    assert opt_copy.model is copied and opt_loaded.model is loaded
    assert_same(state_of(model), state_of(copied))
    assert_same(state_of(model), state_of(loaded))


def test_agnostic_sam_with_a_closure_that_takes_no_part_raises_naming_it():
    net = nn.Linear(3, 2)
    opt = O.AgnosticSAM(net.parameters(), torch.optim.SGD, lr=0.1)
    before = flat(net.parameters()).clone()
    x, y = torch.randn(4, 3), torch.randint(0, 2, (4,))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        return loss

    with pytest.raises(ValueError, match=r"Invalid closure: .* takes no argument; AgnosticSAM"):
        opt.step(closure)
    assert torch.equal(flat(net.parameters()), before)
    opt.step(closure, val_closure=closure)  # with a validation closure no part is asked for


@ALL
def test_a_plain_base_optimizer_checkpoint_loads_and_keeps_the_hyper_parameters(cfg):
    """SGD for a while, then this optimizer from SGD's state dict (momentum kept): the
    groups keep their own hyper-parameters, the step equals one from the same momentum."""
    batches = make_batches(3)
    model = make_model()
    sgd = torch.optim.SGD(model.parameters(), **cfg.base_kwargs)
    sgd.step(make_closure(model, sgd, *batches[0]))
    other = copy.deepcopy(model)
    opt = build(cfg, model)
    opt.load_state_dict(sgd.state_dict())
    for k, v in cfg.hparams.items():
        assert opt.param_groups[0][k] == v
    by_hand = build(cfg, other)
    for p, q in zip(model.parameters(), other.parameters(), strict=True):
        by_hand.state[q]["momentum_buffer"] = sgd.state[p]["momentum_buffer"].clone()
    for x, y in batches[1:]:
        opt.step(make_closure(model, opt, x, y))
        by_hand.step(make_closure(other, by_hand, x, y))
    assert_same(state_of(model), state_of(other))


def test_a_gradient_left_before_construction_is_not_the_first_pass():
    """Switching from SGD (whose last step left its gradient in .grad) to SAM: the first
    SAM step computes its own first pass at the new weights and batch."""
    batches = make_batches(2)
    m1, m2 = make_model(), make_model()
    for m in (m1, m2):
        sgd = torch.optim.SGD(m.parameters(), lr=0.1)
        sgd.step(make_closure(m, sgd, *batches[0]))
    m2.zero_grad()
    o1 = O.SAM(m1.parameters(), torch.optim.SGD, rho=0.3, model=m1, lr=0.1)
    o2 = O.SAM(m2.parameters(), torch.optim.SGD, rho=0.3, model=m2, lr=0.1)
    x, y = batches[1]
    assert o1.step(make_closure(m1, o1, x, y)) is not None
    o2.step(make_closure(m2, o2, x, y))
    assert_same(state_of(m1), state_of(m2))


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"lr": "0.1"}, r"Invalid base_kwargs for SGD \(lr='0\.1'\)"),
        ({"lr": 0.1, "momentun": 0.9}, r"Invalid base_kwargs for SGD .*momentun"),
        ({"lr": -0.1}, r"Invalid base_kwargs for SGD .*Invalid learning rate"),
    ],
)
def test_bad_base_optimizer_arguments_raise_one_value_error(kwargs, pattern):
    net = nn.Linear(3, 2)
    with pytest.raises(ValueError, match=pattern):
        O.SAM(net.parameters(), torch.optim.SGD, **kwargs)


@ALL
@pytest.mark.filterwarnings("ignore:ASAM.*no name:UserWarning")
@pytest.mark.parametrize("foreach", [True, False], ids=["foreach", "single"])
def test_groups_with_their_own_radii_and_an_unused_parameter(cfg, foreach):
    """Per-group radii and a group whose tensors get no gradient: the per-tensor radii
    must follow the tensors that took part (not the list of all tensors)."""
    hp_b = {
        k: v * 0.5 if k in NUMERIC and isinstance(v, float) else v for k, v in cfg.hparams.items()
    }

    def fit(with_unused):
        torch.manual_seed(0)
        net = nn.ModuleDict({"a": nn.Linear(5, 8), "unused": nn.Linear(8, 8), "b": nn.Linear(8, 3)})
        net = net.double()
        groups = [{"params": net["a"].parameters(), **cfg.hparams}]
        if with_unused:
            groups.append({"params": net["unused"].parameters(), **cfg.hparams})
        groups.append({"params": net["b"].parameters(), **hp_b})
        opt = cfg.cls(groups, torch.optim.SGD, foreach=foreach, **cfg.base_kwargs)
        for x, y in make_batches(2):

            def closure(part=None, x=x, y=y):
                opt.zero_grad()
                xb, yb = (x, y) if part is None else (x[part], y[part])
                loss = F.cross_entropy(net["b"](torch.tanh(net["a"](xb))), yb)
                loss.backward()
                return loss

            opt.step(closure)
        return torch.cat([flat(net["a"].parameters()), flat(net["b"].parameters())])

    torch.testing.assert_close(fit(True), fit(False), rtol=1e-12, atol=1e-14)


def test_agnostic_sam_on_a_batch_of_one_says_what_to_do():
    net = nn.Linear(3, 2)
    opt = O.AgnosticSAM(net.parameters(), torch.optim.SGD, lr=0.1)
    before = flat(net.parameters()).clone()
    x, y = torch.randn(1, 3), torch.randint(0, 2, (1,))
    with pytest.raises(ValueError, match=r"Invalid batch size: 1 .*drop_last=True"):
        opt.step(make_closure(net, opt, x, y))
    assert torch.equal(flat(net.parameters()), before)
    xs, ys = torch.randn(3, 3), torch.randint(0, 2, (3,))  # a smaller last batch: fine
    opt.step(make_closure(net, opt, xs, ys))
    assert not torch.equal(flat(net.parameters()), before)


class _Switched(nn.Module):
    """A branch (``expert``) the weights θ leave off and the moved weights switch on."""

    def __init__(self, threshold: float | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.head, self.expert = nn.Linear(3, 4), nn.Linear(4, 2), nn.Linear(3, 2)
        self.double()
        self.threshold = threshold
        self.expert_calls = 0

    def forward(self, x):
        h = self.lin(x)
        out = self.head(h)
        if abs(float(h.detach().mean()) - self.threshold) > 1e-3:  # off at θ only
            self.expert_calls += 1
            out = out + self.expert(x)
        return out


@pytest.mark.parametrize(
    "cfg", [c for c in CONFIGS if c.name in ("gsam", "gam", "fad", "crsam")], ids=repr
)
def test_a_branch_switched_on_only_at_a_moved_point_is_not_stepped(cfg):
    """A combination rule's direction covers the tensors with a gradient at θ: the branch
    keeps still, the rest steps as without it (not by a raw gradient of the last pass)."""
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    with torch.no_grad():
        threshold = float(_Switched(0.0).lin(x).mean())
    m1, m2 = _Switched(threshold), _Switched(threshold)
    before = m1.expert.weight.detach().clone()
    o1 = cfg.cls(m1.parameters(), torch.optim.SGD, **cfg.hparams, **cfg.base_kwargs)
    trained = [*m2.lin.parameters(), *m2.head.parameters()]
    o2 = cfg.cls(trained, torch.optim.SGD, **cfg.hparams, **cfg.base_kwargs)
    o1.step(make_closure(m1, o1, x, y))
    o2.step(make_closure(m2, o2, x, y))
    assert m1.expert_calls > 0  # the moved weights did switch the branch on
    assert torch.equal(m1.expert.weight, before)
    assert m1.expert.weight.grad is None
    for a, b in zip([*m1.lin.parameters(), *m1.head.parameters()], trained, strict=True):
        assert torch.equal(a, b)
