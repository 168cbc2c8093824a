"""The authors' conventions (the defaults) and the papers' (options), step by step.

Each test runs 5 steps of an optimizer in float64 and compares the weights with an
independent restatement, in plain tensor code over a dict of named tensors, of the rule as
the authors' published code applies it (SamsungLabs/ASAM ``asam.py``, MarlonBecker/MSAM
``optimizer/msam.py``, xxgege/GAM ``gam/gam.py``), and the other option with its own rule.
The restatements keep the authors' structure where it differs from ours (Momentum-SAM's
weights resting at the perturbed point; GAM's projection through a cosine) and use plain
SGD (momentum, weight decay) as the base step.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

import optimizers as O

LR, MU, WD = 0.1, 0.9, 5e-4
STEPS = 5


def _model() -> nn.Module:
    """Linear weights, biases, a BatchNorm and a LayerNorm scale (1-D tensors named weight)."""
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(5, 8),
        nn.BatchNorm1d(8),
        nn.Tanh(),
        nn.Linear(8, 8),
        nn.LayerNorm(8),
        nn.Tanh(),
        nn.Linear(8, 3),
    ).double()


def _perturb_norm_scales(model: nn.Module) -> None:
    """Move the BatchNorm/LayerNorm scales and shifts off 1 and 0, so that T matters."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.LayerNorm)):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g).double())
                m.bias.copy_(0.2 * torch.randn(m.bias.shape, generator=g).double())


def _batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(5)
    return [
        (
            torch.randn(16, 5, generator=g, dtype=torch.float64),
            torch.randint(0, 3, (16,), generator=g),
        )
        for _ in range(STEPS)
    ]


class _Ref:
    """The reference: named weights as a dict, gradients by ``functional_call``."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.w = {n: p.detach().clone() for n, p in model.named_parameters()}
        self.buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
        self.buf: dict[str, torch.Tensor | None] = dict.fromkeys(self.w)

    def grad(self, w: dict[str, torch.Tensor], x, y) -> dict[str, torch.Tensor]:
        leaves = {n: t.detach().clone().requires_grad_(True) for n, t in w.items()}
        buffers = {n: b.clone() for n, b in self.buffers.items()}  # batch statistics only
        loss = F.cross_entropy(functional_call(self.model, {**leaves, **buffers}, (x,)), y)
        return dict(zip(leaves, torch.autograd.grad(loss, list(leaves.values()))))

    def sgd(self, d: dict[str, torch.Tensor], decay_at: dict[str, torch.Tensor] | None = None):
        """torch's SGD (dampening 0): buf = mu·buf + d + wd·w; w = w − lr·buf."""
        at = self.w if decay_at is None else decay_at
        for n in self.w:
            step = d[n] + WD * at[n]
            self.buf[n] = step.clone() if self.buf[n] is None else MU * self.buf[n] + step
            self.w[n] = self.w[n] - LR * self.buf[n]


def _norm(ts) -> float:
    return math.sqrt(sum(float((t * t).sum()) for t in ts))


def _run(cls, model: nn.Module, *, params=None, attach=True, **hp) -> dict[str, torch.Tensor]:
    """5 steps of ``cls``; ``attach``: pass ``model=`` (names, BatchNorm freezing)."""
    opt = cls(
        model.parameters() if params is None else params,
        torch.optim.SGD,
        model=model if attach else None,
        **hp,
        lr=LR,
        momentum=MU,
        weight_decay=WD,
    )
    for x, y in _batches():

        def closure(x=x, y=y):
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)
    return {n: p.detach() for n, p in model.named_parameters()}


def _assert_equal(ours: dict, ref: dict) -> None:
    assert ours.keys() == ref.keys()
    for n in ours:
        torch.testing.assert_close(ours[n], ref[n], rtol=1e-10, atol=1e-12, msg=n)


def _gap(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


# ------------------------------------------------------------------------------ ASAM
def _ref_asam(model: nn.Module, rho: float, eta: float, is_weight) -> dict[str, torch.Tensor]:
    """SamsungLabs/ASAM: ``T = |w| + eta`` where ``is_weight(name, w)``, else ``T = 1``."""
    ref = _Ref(model)
    for x, y in _batches():
        g = ref.grad(ref.w, x, y)
        t = {n: w.abs() + eta if is_weight(n, w) else torch.ones_like(w) for n, w in ref.w.items()}
        tg = {n: t[n] * g[n] for n in g}
        scale = rho / (_norm(tg.values()) + 1e-16)  # the authors' 1e-16
        e = {n: t[n] * tg[n] * scale for n in g}
        d = ref.grad({n: ref.w[n] + e[n] for n in ref.w}, x, y)
        ref.sgd(d)
    return ref.w


def test_asam_default_is_the_authors_rule_by_name():
    """BatchNorm's and LayerNorm's ``weight`` get T = |w| + eta, every bias T = 1."""
    model = _model()
    _perturb_norm_scales(model)
    ref = _ref_asam(model, 0.5, 0.01, lambda n, w: "weight" in n)
    variant = _ref_asam(model, 0.5, 0.01, lambda n, w: w.dim() > 1)
    assert _gap(ref, variant) > 1e-4  # the two rules differ where it matters
    _assert_equal(_run(O.ASAM, model, rho=0.5, eta=0.01), ref)  # (trains the model)


def test_asam_names_from_named_parameters_without_model():
    model = _model()
    _perturb_norm_scales(model)
    ref = _ref_asam(model, 0.5, 0.01, lambda n, w: "weight" in n)
    ours = _run(O.ASAM, model, params=model.named_parameters(), attach=False, rho=0.5, eta=0.01)
    _assert_equal(ours, ref)


def test_asam_dim_variant_is_its_rule():
    model = _model()
    _perturb_norm_scales(model)
    ref = _ref_asam(model, 0.5, 0.01, lambda n, w: w.dim() > 1)
    ours = _run(O.ASAM, model, rho=0.5, eta=0.01, weights_by="dim")
    _assert_equal(ours, ref)


def test_asam_without_names_warns_and_falls_back_to_dim():
    model = _model()
    _perturb_norm_scales(model)
    ref = _ref_asam(model, 0.5, 0.01, lambda n, w: w.dim() > 1)
    with pytest.warns(UserWarning, match=r"ASAM: 10 of 10 parameter tensors have no name"):
        ours = _run(O.ASAM, model, attach=False, rho=0.5, eta=0.01)  # no names
    _assert_equal(ours, ref)


# ------------------------------------------------------------------------------ Momentum-SAM
def _ref_msam_authors(model: nn.Module, rho: float) -> dict[str, torch.Tensor]:
    """MarlonBecker/MSAM: the weights rest at the perturbed point between steps.

    Buffers start at zero and ``inv = 0``; a step takes the gradient at the resting point
    w̃, adds ``wd·w̃``, moves back by ``rho·inv·v``, takes the SGD step, then rests again
    at ``w − rho·v/‖v‖``.  The weights at θ are ``w̃ + rho·inv·v``.
    """
    ref = _Ref(model)
    v = {n: torch.zeros_like(w) for n, w in ref.w.items()}
    inv = 0.0
    for x, y in _batches():
        g = ref.grad(ref.w, x, y)  # ref.w holds w̃
        for n in ref.w:
            d = g[n] + WD * ref.w[n]
            ref.w[n] = ref.w[n] + rho * inv * v[n]
            v[n] = MU * v[n] + d
            ref.w[n] = ref.w[n] - LR * v[n]
        inv = 1 / (_norm(v.values()) + 1e-12)
        for n in ref.w:
            ref.w[n] = ref.w[n] - rho * inv * v[n]
    return {n: ref.w[n] + rho * inv * v[n] for n in ref.w}  # move back to θ


def _ref_msam_theta(model: nn.Module, rho: float) -> dict[str, torch.Tensor]:
    """The gradient at θ − rho·v̂, SGD's weight decay at θ."""
    ref = _Ref(model)
    for x, y in _batches():
        if ref.buf["0.weight"] is None:
            g = ref.grad(ref.w, x, y)  # no momentum yet: a plain SGD step
        else:
            inv = 1 / (_norm(ref.buf.values()) + 1e-12)
            g = ref.grad({n: ref.w[n] - rho * inv * ref.buf[n] for n in ref.w}, x, y)
        ref.sgd(g)
    return ref.w


def test_momentum_sam_default_decays_at_the_perturbed_point():
    model = _model()
    ref = _ref_msam_authors(model, 0.5)
    assert _gap(ref, _ref_msam_theta(model, 0.5)) > 1e-5
    _assert_equal(_run(O.MomentumSAM, model, rho=0.5), ref)


def test_momentum_sam_decay_at_theta_is_its_rule():
    model = _model()
    ref = _ref_msam_theta(model, 0.5)
    ours = _run(O.MomentumSAM, model, rho=0.5, decay_at="theta")
    _assert_equal(ours, ref)


# ------------------------------------------------------------------------------ GAM
GAM_HP = {"rho": 0.2, "rho_fd": 0.05, "alpha": 0.6, "beta": 0.3, "gamma": 0.3}


def _ref_gam(model: nn.Module, paper: bool) -> dict[str, torch.Tensor]:
    """xxgege/GAM's accelerated step; ``paper``: ``h− = beta·g0 + (1−beta)·g2``."""
    rho, fd, a, b, gamma = (GAM_HP[k] for k in ("rho", "rho_fd", "alpha", "beta", "gamma"))
    ref = _Ref(model)
    eps = 1e-12
    for x, y in _batches():
        w = ref.w
        g0 = ref.grad(w, x, y)
        s = fd / (_norm(g0.values()) + eps)
        g1 = ref.grad({n: w[n] + s * g0[n] for n in w}, x, y)
        h = {n: g1[n] - g0[n] for n in w}
        s = rho / (_norm(h.values()) + eps)
        w2 = {n: w[n] + s * h[n] for n in w}
        g2 = ref.grad(w2, x, y)
        s = fd / (_norm(g2.values()) + eps)
        g3 = ref.grad({n: w2[n] + s * g2[n] for n in w}, x, y)
        pro_m = {n: (b if paper else 1.0) * g0[n] + (1 - b) * g2[n] for n in w}
        new = {n: a * g1[n] + (1 - a) * g3[n] for n in w}
        inner = sum(float((pro_m[n] * new[n]).sum()) for n in w)
        new_norm, old_norm = _norm(new.values()), _norm(pro_m.values())
        cosine = inner / (new_norm * old_norm + eps)
        d = {}
        for n in w:
            vertical = pro_m[n] - cosine * old_norm * new[n] / (new_norm + eps)
            d[n] = new[n] - gamma * vertical
        ref.sgd(d)
    return ref.w


def test_gam_default_is_the_authors_h_minus():
    model = _model()
    ref = _ref_gam(model, paper=False)
    assert _gap(ref, _ref_gam(model, paper=True)) > 1e-4
    _assert_equal(_run(O.GAM, model, **GAM_HP), ref)


def test_gam_paper_h_minus_is_the_papers_rule():
    model = _model()
    ref = _ref_gam(model, paper=True)
    ours = _run(O.GAM, model, **GAM_HP, h_minus="paper")
    _assert_equal(ours, ref)


def test_defaults_name_the_authors_conventions():
    assert O.optimizer_hparams("asam")["weights_by"] == "name"
    assert O.optimizer_hparams("momentum_sam")["decay_at"] == "perturbed"
    assert O.optimizer_hparams("gam")["h_minus"] == "authors"


def test_momentum_sam_tensor_without_gradient_keeps_still():
    """A tensor with momentum but no gradient in a step: no decay term, SGD skips it."""
    model = _model()
    opt = O.MomentumSAM(
        model.parameters(),
        torch.optim.SGD,
        rho=0.5,
        model=model,
        lr=LR,
        momentum=MU,
        weight_decay=WD,
    )
    x, y = _batches()[0]
    head = model[6]

    def closure(skip=False):
        opt.zero_grad()
        out = model[:6](x) if skip else model(x)
        loss = F.cross_entropy(out[:, :3], y)
        loss.backward()
        return loss

    opt.step(closure)
    before = head.weight.detach().clone()
    opt.step(lambda: closure(skip=True))  # the head gets no gradient
    assert torch.equal(head.weight, before)
