"""The registry of optimizer configurations that the battery in test_optim_battery.py runs over.

Each entry carries an INDEPENDENT re-statement of the update rule, written on one flat
float64 parameter vector with plain tensor maths (no code shared with ``optimizers``),
so that a test can check ``θ_new = base_step(θ, d)`` with ``d`` from the spec.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

import optimizers as O

# grad(θ_flat, part) -> gradient (flat); part is None (whole batch) or "train"/"val".
GradFn = Callable[[Tensor, Any], Tensor]


def unit(x: Tensor) -> Tensor:
    return x / (torch.linalg.vector_norm(x) + 1e-12)


def ref_sam(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    g0 = grad(th, None)
    return grad(th + hp["rho"] * unit(g0), None)


def ref_asam(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    """The authors' T: |θ| + eta on parameters named *weight* (BatchNorm's scale too)."""
    g0 = grad(th, None)
    is_weight = info["is_weight" if hp.get("weights_by") == "dim" else "is_named_weight"]
    t = torch.where(is_weight, th.abs() + hp["eta"], torch.ones_like(th))
    e = hp["rho"] * t * t * g0 / (torch.linalg.vector_norm(t * g0) + 1e-12)
    return grad(th + e, None)


def ref_asam_all(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    g0 = grad(th, None)
    t = th.abs()  # every tensor, no eta
    e = hp["rho"] * t * t * g0 / (torch.linalg.vector_norm(t * g0) + 1e-12)
    return grad(th + e, None)


def ref_gsam(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    g0 = grad(th, None)
    gp = grad(th + hp["rho_max"] * unit(g0), None)  # lr == lr_max: rho_t = rho_max
    u = unit(gp)
    g_perp = g0 - (g0 @ u) * u
    return gp - hp["alpha"] * g_perp


def ref_agnostic(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    g_t = grad(th, "train")
    g_v = grad(th, "val")
    return grad(th + hp["rho"] * unit(g_t) - hp["rho_val"] * unit(g_v), None)


def ref_gam(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    g0 = grad(th, None)
    g1 = grad(th + hp["rho_fd"] * unit(g0), None)
    th2 = th + hp["rho"] * unit(g1 - g0)
    g2 = grad(th2, None)
    g3 = grad(th2 + hp["rho_fd"] * unit(g2), None)
    hp_ = hp["alpha"] * g1 + (1 - hp["alpha"]) * g3
    # the authors' code: g0 + (1 − beta)·g2; the paper: beta·g0 + (1 − beta)·g2
    w0 = hp["beta"] if hp.get("h_minus") == "paper" else 1.0
    hm = w0 * g0 + (1 - hp["beta"]) * g2
    u = unit(hp_)
    return hp_ - hp["gamma"] * (hm - (hm @ u) * u)


def ref_fad(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    rho, fd = hp["rho"], hp["rho_fd"]
    g0 = grad(th, None)
    g1 = grad(th + rho * unit(g0), None)
    hv = (grad(th + fd * unit(g0), None) - g0) / fd
    th2 = th + rho * unit(hv)
    g2 = grad(th2, None)
    g3 = grad(th2 + fd * unit(g2), None)
    return (1 - hp["alpha"]) * g0 + hp["alpha"] * g1 + hp["beta"] * rho * (g3 - g2) / fd


def ref_crsam(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    g0 = grad(th, None)
    e = hp["rho"] * unit(g0)
    gp, gm = grad(th + e, None), grad(th - e, None)
    return gp + hp["gamma"] * (gp + gm - 2 * g0) + hp["beta"] * (gp - gm)


def ref_msam(grad: GradFn, th: Tensor, hp: dict, info: dict) -> Tensor:
    v = info["momentum"]  # flat momentum buffer of the reference SGD (zeros at first)
    th_p = th - hp["rho"] * unit(v)
    g = grad(th_p, None)
    if hp.get("decay_at", "perturbed") == "perturbed":
        # the reference SGD adds wd·θ; the authors decay at the perturbed point θ_p
        g = g + info["weight_decay"] * (th_p - th)
    return g


@dataclass
class Config:
    """One optimizer configuration of the battery."""

    name: str
    cls: type
    hparams: dict[str, Any]  # non-default values: every term of the rule matters
    ref: Callable[..., Tensor]
    base_kwargs: dict[str, Any] = field(
        default_factory=lambda: {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3}
    )
    # hyper-parameters under which the optimizer is the base optimizer bit for bit
    identity: dict[str, Any] | None = None
    splits_batch: bool = False
    small: dict[str, Any] = field(default_factory=dict)  # for the quadratic
    bad: tuple[tuple[dict[str, Any], str], ...] = ()

    def __repr__(self) -> str:
        return self.name


CONFIGS = [
    Config(
        "sam",
        O.SAM,
        {"rho": 0.3},
        ref_sam,
        identity={"rho": 0.0},
        small={"rho": 0.01},
        bad=(({"rho": -0.1}, r"Invalid rho: -0\.1"),),
    ),
    Config(
        "asam",
        O.ASAM,
        {"rho": 0.7, "eta": 0.05},
        ref_asam,
        identity={"rho": 0.0},
        small={"rho": 0.01},
        bad=(({"rho": -1.0}, r"Invalid rho: -1\.0"), ({"eta": -0.1}, r"Invalid eta")),
    ),
    Config(
        "asam_dim",  # the variant: T = |θ| + eta on tensors with dim > 1 (BN scale: T = 1)
        O.ASAM,
        {"rho": 0.7, "eta": 0.05, "weights_by": "dim"},
        ref_asam,
        identity={"rho": 0.0, "weights_by": "dim"},
        small={"rho": 0.01},
        bad=(({"weights_by": "names"}, r"Invalid weights_by: 'names'"),),
    ),
    Config(
        "asam_all",  # davda54's "adaptive" SAM: T = |θ| on every tensor
        O.ASAM,
        {"rho": 2.0, "adaptive_all": True},
        ref_asam_all,
        small={"rho": 0.05},
    ),
    Config(
        "gsam",
        O.GSAM,
        {"rho_max": 0.3, "rho_min": 0.1, "alpha": 0.5},
        ref_gsam,
        base_kwargs={"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-3},
        identity={"rho_max": 0.0, "rho_min": 0.0, "alpha": 0.0},
        small={"rho_max": 0.01, "rho_min": 0.01},
        bad=(
            ({"rho_max": -0.1}, r"Invalid rho_max: -0\.1"),
            ({"alpha": 1.5}, r"Invalid alpha: 1\.5"),
            ({"rho_min": 0.5}, r"Invalid rho_min: 0\.5"),
        ),
    ),
    Config(
        "agnostic_sam",
        O.AgnosticSAM,
        {"rho": 0.3, "rho_val": 0.2, "val_fraction": 0.25},
        ref_agnostic,
        identity={"rho": 0.0, "rho_val": 0.0},
        splits_batch=True,
        small={"rho": 0.01, "rho_val": 0.005},
        bad=(
            ({"rho": -0.1}, r"Invalid rho: -0\.1"),
            ({"rho_val": -0.1}, r"Invalid rho_val"),
            ({"val_fraction": 1.0}, r"Invalid val_fraction: 1\.0"),
        ),
    ),
    Config(
        "gam",
        O.GAM,
        {"rho": 0.3, "rho_fd": 0.05, "alpha": 0.6, "beta": 0.3, "gamma": 0.2},
        ref_gam,
        identity={"rho": 0.0, "rho_fd": 0.0, "alpha": 1.0, "gamma": 0.0},
        small={"rho": 0.01, "rho_fd": 0.005},
        bad=(
            ({"rho": -0.1}, r"Invalid rho: -0\.1"),
            ({"alpha": -0.1}, r"Invalid alpha: -0\.1"),
            ({"beta": 2.0}, r"Invalid beta: 2\.0"),
            ({"gamma": -1.0}, r"Invalid gamma"),
        ),
    ),
    Config(
        "gam_paper",  # the paper's h− = beta·g0 + (1 − beta)·g2
        O.GAM,
        {"rho": 0.3, "rho_fd": 0.05, "alpha": 0.6, "beta": 0.3, "gamma": 0.2, "h_minus": "paper"},
        ref_gam,
        small={"rho": 0.01, "rho_fd": 0.005},
        bad=(({"h_minus": "both"}, r"Invalid h_minus: 'both'"),),
    ),
    Config(
        "fad",
        O.FAD,
        {"rho": 0.2, "rho_fd": 0.05, "alpha": 0.7, "beta": 0.3},
        ref_fad,
        identity={"rho": 0.0, "alpha": 1.0},
        small={"rho": 0.01, "rho_fd": 0.005},
        bad=(
            ({"rho": -0.1}, r"Invalid rho: -0\.1"),
            ({"rho_fd": 0.0}, r"Invalid rho_fd: 0\.0"),
            ({"alpha": 1.1}, r"Invalid alpha: 1\.1"),
        ),
    ),
    Config(
        "fad_shared_fd",  # rho_fd == rho: the 4-pass path that reuses g1
        O.FAD,
        {"rho": 0.1, "rho_fd": 0.1, "alpha": 0.7, "beta": 0.3},
        ref_fad,
        small={"rho": 0.01, "rho_fd": 0.01},
    ),
    Config(
        "crsam",
        O.CRSAM,
        {"rho": 0.3, "gamma": 0.2, "beta": 0.1},
        ref_crsam,
        identity={"rho": 0.0},
        small={"rho": 0.01},
        bad=(({"rho": -0.1}, r"Invalid rho: -0\.1"), ({"gamma": -0.1}, r"Invalid gamma")),
    ),
    Config(
        "momentum_sam",
        O.MomentumSAM,
        {"rho": 0.5},
        ref_msam,
        identity={"rho": 0.0},
        small={"rho": 0.01},
        bad=(({"rho": -0.1}, r"Invalid rho: -0\.1"),),
    ),
    Config(
        "momentum_sam_theta",  # the base SGD's weight decay at θ
        O.MomentumSAM,
        {"rho": 0.5, "decay_at": "theta"},
        ref_msam,
        identity={"rho": 0.0, "decay_at": "theta"},
        small={"rho": 0.01},
        bad=(({"decay_at": "θ"}, r"Invalid decay_at: 'θ'"),),
    ),
]

CONFIG_IDS = [c.name for c in CONFIGS]
