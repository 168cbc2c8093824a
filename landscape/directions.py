"""Directions of a loss surface: random (filter-normalised), interpolation, planes, PCA.

A direction is a ``list[Tensor]`` aligned with ``list(model.parameters())`` (same
shapes), followed, in ``states`` mode, by the model's floating-point buffers (BatchNorm
running statistics). A :class:`Directions` bundles one or two of them with the tensors'
names, the origin θ* of the plane (when it is not the model's own weights: interpolation,
planes through checkpoints, PCA) and the projected path of a trajectory.

Normalisations (Li et al. 2018), for a direction ``d`` and the weights ``w``:

- ``filter``: each filter (slice along dim 0) ``d_i ← d_i / ‖d_i‖ · ‖w_i‖``;
- ``layer``: each tensor ``d ← d / ‖d‖ · ‖w‖``;
- ``model``: the whole vector ``d ← d / ‖d‖ · ‖w‖``;
- ``none``: the raw Gaussian.

Tensors with ``dim ≤ 1`` (biases, normalisation scales, running statistics) get a zero
direction with ``ignore="biasbn"``; otherwise they are treated as one filter.

Random numbers come from a private ``torch.Generator`` seeded with ``seed`` (drawn on the
CPU, so the same seed gives the same directions on every device and every rank); the
global RNG is never touched.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from landscape.params import ParamSelection, as_selection, select_parameters, selection_text
from landscape.store import directions_sha256

__all__ = [
    "NORMS",
    "Directions",
    "custom_directions",
    "direction_targets",
    "interpolation_directions",
    "normalize_direction",
    "pca_directions",
    "plane_directions",
    "project_onto_plane",
    "random_direction",
    "random_directions",
]

log = logging.getLogger(__name__)

NORMS = ("filter", "layer", "model", "none")
_IGNORES = ("biasbn", None)
_EPS = 1e-10

StateLike = nn.Module | Mapping[str, Tensor] | str | Path


@dataclass
class Directions:
    """One or two directions spanning a line or a plane of weight space.

    Attributes:
        x: first direction δ, aligned with ``names``.
        y: second direction η, or None for a line.
        names: names of the tensors moved (parameters, then buffers in ``states`` mode).
        states: whether BatchNorm running statistics move too.
        origin: the plane's origin θ* (tensor list aligned with ``names``), or None to use
            the model's current weights.
        trajectory: (T, 2) coordinates of checkpoints projected on the plane, or None.
        attrs: how the directions were made (kind, norm, ignore, seed, explained variance…).
        fixed: float buffers (name -> value) set at the origin and held on the whole plane,
            when the origin is not the model's own weights and the directions do not move
            buffers (PCA: the last checkpoint's BatchNorm statistics), or None.
    """

    x: list[Tensor]
    y: list[Tensor] | None
    names: list[str]
    states: bool = False
    origin: list[Tensor] | None = None
    trajectory: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)
    fixed: dict[str, Tensor] | None = None

    @property
    def ndim(self) -> int:
        """1 for a line, 2 for a plane."""
        return 1 if self.y is None else 2

    def sha256(self) -> str:
        """Content hash of the direction tensors and their names."""
        tensors = list(self.x) + (list(self.y) if self.y is not None else [])
        return directions_sha256(tensors, [*self.names, f"ndim={self.ndim}"])


# --------------------------------------------------------------------------- targets
def direction_targets(model: nn.Module, states: bool = False) -> tuple[list[str], list[Tensor]]:
    """Names and tensors a direction moves: the parameters, then (``states``) float buffers.

    Buffers are the floating-point ones of the state dict (BatchNorm ``running_mean`` /
    ``running_var``), as Li et al.'s ``states`` mode takes them; integer counters such as
    ``num_batches_tracked`` and non-persistent buffers (a rotary embedding's
    ``inv_freq``: constants that no checkpoint holds) never move.
    """
    names = [n for n, _ in model.named_parameters()]
    tensors = [p for _, p in model.named_parameters()]
    if states:
        persistent = set(model.state_dict(keep_vars=True))
        for n, b in model.named_buffers():
            if b is not None and b.is_floating_point() and n in persistent:
                names.append(n)
                tensors.append(b)
    return names, tensors


def _state_tensors(source: StateLike, names: Sequence[str], like: Sequence[Tensor]) -> list[Tensor]:
    """The tensors ``names`` of a model, state dict or checkpoint file, on ``like``'s devices."""
    if isinstance(source, str | Path):
        state = _load_state(Path(source))
    elif isinstance(source, nn.Module):
        state = dict(source.state_dict(keep_vars=False))
        state.update(dict(source.named_parameters()))
    else:
        state = source
    missing = [n for n in names if n not in state]
    if missing:
        raise ValueError(f"Invalid state: it lacks {missing[:3]}{'…' if len(missing) > 3 else ''}")
    out = []
    for n, ref in zip(names, like, strict=True):
        t = state[n].detach()
        if t.shape != ref.shape:
            raise ValueError(
                f"Invalid state: {n} has shape {tuple(t.shape)}, model {tuple(ref.shape)}"
            )
        out.append(t.to(device=ref.device, dtype=ref.dtype).clone())
    return out


def _load_state(path: Path) -> Mapping[str, Tensor]:
    """The model state dict of a checkpoint file (a sharpscape checkpoint or a state dict)."""
    from landscape.checkpoint import read_checkpoint

    obj = read_checkpoint(path, map_location="cpu")  # weights_only=True, errors name the file
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise ValueError(f"{path}: neither a sharpscape checkpoint nor a state_dict")
    for prefix in ("module.", "_orig_mod."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


# --------------------------------------------------------------------------- random
def _check_norm(norm: str, ignore: str | None) -> None:
    if norm not in NORMS:
        raise ValueError(f"Invalid norm: {norm!r}; expected one of {NORMS}")
    if ignore not in _IGNORES:
        raise ValueError(f"Invalid ignore: {ignore!r}; expected 'biasbn' or None")


@torch.no_grad()
def normalize_direction(
    direction: Sequence[Tensor],
    weights: Sequence[Tensor],
    norm: str = "filter",
    ignore: str | None = "biasbn",
) -> None:
    """Rescale ``direction`` in place against ``weights`` (see the module docstring).

    Half-precision tensors are rescaled in float32 (a zero filter would otherwise get
    ``0 · inf = nan`` in float16, whose range cannot hold ``‖w‖ / 1e-10``).
    """
    _check_norm(norm, ignore)
    if len(direction) != len(weights):
        raise ValueError(f"Invalid direction: {len(direction)} tensors for {len(weights)} weights")
    wide = (torch.float32, torch.float64)
    work = [d if d.dtype in wide else d.float() for d in direction]
    _normalize_(work, [w if w.dtype in wide else w.float() for w in weights], norm, ignore)
    for d, u in zip(direction, work, strict=True):
        if u is not d:
            d.copy_(u)


def _normalize_(
    direction: Sequence[Tensor], weights: Sequence[Tensor], norm: str, ignore: str | None
) -> None:
    """:func:`normalize_direction` on float32 or float64 tensors."""
    for d, w in zip(direction, weights, strict=True):
        if d.dim() <= 1 and ignore == "biasbn":
            d.zero_()
        elif norm == "filter":
            if d.dim() <= 1:
                d.mul_(w.norm() / (d.norm() + _EPS))
            else:
                dn = d.reshape(d.shape[0], -1).norm(dim=1)
                wn = w.reshape(w.shape[0], -1).norm(dim=1)
                scale = (wn / (dn + _EPS)).reshape(-1, *([1] * (d.dim() - 1)))
                d.mul_(scale)
        elif norm == "layer":
            d.mul_(w.norm() / (d.norm() + _EPS))
    if norm == "model":
        keep = [i for i, d in enumerate(direction) if not (d.dim() <= 1 and ignore == "biasbn")]
        dn = torch.sqrt(sum(direction[i].double().square().sum() for i in keep))
        wn = torch.sqrt(sum(weights[i].double().square().sum() for i in keep))
        scale = float(wn / (dn + _EPS))
        for i in keep:
            direction[i].mul_(scale)


def selected_targets(model: nn.Module, states: bool, params: ParamSelection) -> list[bool]:
    """For each tensor of :func:`direction_targets`: whether a direction may move it.

    Parameters follow :func:`~landscape.params.select_parameters` (default: those with
    ``requires_grad=True``, so frozen weights stay put); buffers move in ``states`` mode.
    """
    names, _ = direction_targets(model, states)
    if params is None and not any(p.requires_grad for p in model.parameters()):
        chosen = set(names)  # a model frozen whole (inference only): every weight moves
    else:
        chosen = {n for n, _ in select_parameters(model, params, require_grad=False)}
    n_params = sum(1 for _ in model.parameters())
    return [i >= n_params or n in chosen for i, n in enumerate(names)]


def random_direction(
    model: nn.Module,
    *,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    states: bool = False,
    generator: torch.Generator | None = None,
    seed: int = 0,
    params: ParamSelection = None,
) -> list[Tensor]:
    """One normalised random Gaussian direction for ``model`` (see the module docstring).

    Args:
        model: the network; its current weights set the scale.
        norm: ``"filter"``, ``"layer"``, ``"model"`` or ``"none"``.
        ignore: ``"biasbn"`` zeroes the direction of tensors with ``dim ≤ 1``; None keeps them.
        states: also move floating-point buffers (BatchNorm running statistics).
        generator: a CPU ``torch.Generator`` to draw from (continues its stream).
        seed: seeds a fresh generator when ``generator`` is None.
        params: the parameters that move: those with ``requires_grad=True`` (default) or
            a selection (:func:`~landscape.params.select_parameters`); the others get a
            zero direction (the draws are the same, so a fully trainable model gets the
            same directions whatever the selection syntax).
    """
    _check_norm(norm, ignore)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    _, weights = direction_targets(model, states)
    keep = selected_targets(model, states, params)
    direction = []
    for w in weights:
        dtype = w.dtype if w.is_floating_point() else torch.float32
        d = torch.randn(w.shape, generator=generator, dtype=dtype, device="cpu")
        direction.append(d.to(w.device))
    normalize_direction(
        [d for d, k in zip(direction, keep, strict=True) if k],
        [w.detach() for w, k in zip(weights, keep, strict=True) if k],
        norm,
        ignore,
    )
    for d, k in zip(direction, keep, strict=True):
        if not k:
            d.zero_()
    return direction


def _orthogonalize_(y: Sequence[Tensor], x: Sequence[Tensor]) -> None:
    """``y ← y − (⟨y,x⟩/⟨x,x⟩) x``, then rescaled to its former norm (in place)."""
    dot = sum(float((a.double() * b.double()).sum()) for a, b in zip(y, x, strict=True))
    xx = sum(float(b.double().square().sum()) for b in x)
    before = sum(float(a.double().square().sum()) for a in y) ** 0.5
    if xx == 0:
        return
    coef = dot / xx
    with torch.no_grad():
        for a, b in zip(y, x, strict=True):
            a.sub_(b, alpha=coef)
        after = sum(float(a.double().square().sum()) for a in y) ** 0.5
        if after > 0:
            for a in y:
                a.mul_(before / after)


def random_directions(
    model: nn.Module,
    *,
    ndim: int = 2,
    norm: str = "filter",
    ignore: str | None = "biasbn",
    states: bool = False,
    orthogonalize: bool = False,
    seed: int = 0,
    params: ParamSelection = None,
) -> Directions:
    """Random Gaussian directions for a 1-D or 2-D surface around the model's weights.

    δ is drawn first, then η, from one generator seeded with ``seed``.

    Args:
        model: the network; its current weights are θ* and set the scale.
        ndim: 1 (a line) or 2 (a plane).
        norm: ``"filter"`` (default), ``"layer"``, ``"model"`` or ``"none"``.
        ignore: ``"biasbn"`` (default) zeroes the directions of tensors with ``dim ≤ 1``.
        states: also move BatchNorm running statistics (Li's "states" mode).
        orthogonalize: make η exactly orthogonal to δ (after normalisation; η keeps its
            overall norm, so its per-filter norms then hold only approximately).
        seed: the random seed (stored in the surface file).
        params: the parameters that move (default: those with ``requires_grad=True``);
            see :func:`random_direction`.
    """
    if ndim not in (1, 2):
        raise ValueError(f"Invalid ndim: {ndim} (expected 1 or 2)")
    params = as_selection(params)  # read once per direction
    names, _ = direction_targets(model, states)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    kw = {"norm": norm, "ignore": ignore, "states": states, "generator": gen, "params": params}
    x = random_direction(model, **kw)
    y = random_direction(model, **kw) if ndim == 2 else None
    if y is not None and orthogonalize:
        _orthogonalize_(y, x)
    attrs = {
        "kind": "random",
        "norm": norm,
        "ignore": ignore if ignore is not None else "none",
        "seed": seed,
        "states": states,
        "orthogonalize": orthogonalize,
    }
    if params is not None:
        attrs["params"] = selection_text(params)
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    if frozen:
        attrs["frozen_params"] = len(frozen)
    return Directions(x=x, y=y, names=names, states=states, attrs=attrs)


# --------------------------------------------------------------------------- checkpoints
def interpolation_directions(
    model: nn.Module, other: StateLike, *, start: StateLike | None = None, states: bool = True
) -> Directions:
    """The line ``(1−α)θ_a + αθ_b`` between two checkpoints: origin θ_a, direction θ_b − θ_a.

    Args:
        model: the network; its weights are θ_a unless ``start`` is given.
        other: θ_b (a model, a state dict or a checkpoint file).
        start: θ_a, when it is not the model's current weights.
        states: interpolate BatchNorm running statistics too (default), so that α = 1
            reproduces checkpoint b exactly.
    """
    names, tensors = direction_targets(model, states)
    a = (
        _state_tensors(start, names, tensors)
        if start is not None
        else [t.detach().clone() for t in tensors]
    )
    b = _state_tensors(other, names, tensors)
    x = [tb - ta for ta, tb in zip(a, b, strict=True)]
    attrs = {"kind": "interpolation", "norm": "none", "ignore": "none", "states": states}
    return Directions(x=x, y=None, names=names, states=states, origin=a, attrs=attrs)


def plane_directions(
    model: nn.Module,
    b: StateLike,
    c: StateLike,
    *,
    start: StateLike | None = None,
    states: bool = True,
    orthogonalize: bool = False,
) -> Directions:
    """The plane through three checkpoints: origin θ_a, δ = θ_b − θ_a, η = θ_c − θ_a.

    The three checkpoints sit at (0, 0), (1, 0) and (0, 1) (with ``orthogonalize``, η is
    made orthogonal to δ and the stored ``trajectory`` gives their coordinates).
    """
    names, tensors = direction_targets(model, states)
    a = (
        _state_tensors(start, names, tensors)
        if start is not None
        else [t.detach().clone() for t in tensors]
    )
    tb = _state_tensors(b, names, tensors)
    tc = _state_tensors(c, names, tensors)
    x = [u - v for u, v in zip(tb, a, strict=True)]
    y = [u - v for u, v in zip(tc, a, strict=True)]
    dot = sum(float((u.double() * v.double()).sum()) for u, v in zip(y, x, strict=True))
    xx = sum(float(v.double().square().sum()) for v in x)
    yy = sum(float(v.double().square().sum()) for v in y)
    if not xx * yy - dot * dot > 1e-12 * xx * yy:
        raise ValueError(
            "Invalid checkpoints: the three do not span a plane (θ_b − θ_a and θ_c − θ_a are "
            "zero or parallel)"
        )
    if orthogonalize:
        for u, v in zip(y, x, strict=True):
            u.sub_(v, alpha=dot / xx)
    diffs = [[torch.zeros_like(t) for t in a], x, [u - v for u, v in zip(tc, a, strict=True)]]
    traj = project_onto_plane(diffs, x, y)
    attrs = {
        "kind": "plane",
        "norm": "none",
        "ignore": "none",
        "states": states,
        "orthogonalize": orthogonalize,
    }
    return Directions(x=x, y=y, names=names, states=states, origin=a, trajectory=traj, attrs=attrs)


def project_onto_plane(
    points: Sequence[Sequence[Tensor]], x: Sequence[Tensor], y: Sequence[Tensor] | None
) -> np.ndarray:
    """Coordinates of vectors (tensor lists, relative to the origin) in the plane (x, y).

    Solves the least-squares problem ``min ‖p − a·x − b·y‖`` exactly (a 2×2 Gram system in
    float64), so a point lying in the plane gets coordinates that reproduce it, whether or
    not x and y are orthogonal. For a line (``y`` None) returns (T, 1).
    """
    basis = [x] if y is None else [x, y]

    def dot(u: Sequence[Tensor], v: Sequence[Tensor]) -> float:
        return sum(float((a.double() * b.double()).sum()) for a, b in zip(u, v, strict=True))

    gram = np.array([[dot(u, v) for v in basis] for u in basis])
    rhs = np.array([[dot(p, u) for u in basis] for p in points]).reshape(len(points), len(basis))
    return np.linalg.solve(gram, rhs.T).T


def _flatten(tensors: Sequence[Tensor], keep: Sequence[bool]) -> Tensor:
    return torch.cat(
        [t.detach().double().reshape(-1).cpu() for t, k in zip(tensors, keep, strict=True) if k]
    )


def pca_directions(
    model: nn.Module,
    trajectory: Sequence[StateLike] | str | Path,
    *,
    ignore: str | None = "biasbn",
) -> Directions:
    """The top-2 PCA directions of a training trajectory, centred on its last point.

    As in Li et al. 2018's code (``projection.setup_PCA_directions``): the matrix of
    ``θ_t − θ_T`` for every checkpoint t = 1..T, the last one included (a zero row;
    tensors with ``dim ≤ 1`` left out with ``ignore="biasbn"``), goes through PCA
    (mean-centred, as scikit-learn's); the two leading unit-norm principal axes are δ
    and η. Their explained-variance ratios, variances and singular values are stored (as
    scikit-learn's ``explained_variance_ratio_``, ``explained_variance_`` and
    ``singular_values_``), and every θ_t is projected on the plane with
    :func:`project_onto_plane` (the same plane the surface is evaluated on, so the path
    matches the contours; for the orthonormal axes this is the original's ``cos``
    projection). Three checkpoints suffice: their two differences from the last span
    the plane. The last checkpoint's BatchNorm statistics go with θ_T (``fixed``), so
    the surface at (0, 0) is its loss whatever statistics ``model`` holds.

    Args:
        model: the network (its architecture; its weights are not used).
        trajectory: checkpoints in training order (models, state dicts or files), or a run
            folder (its ``checkpoints/`` via ``landscape.checkpoint.run_checkpoints``).
        ignore: ``"biasbn"`` (default) or None.
    """
    if ignore not in _IGNORES:
        raise ValueError(f"Invalid ignore: {ignore!r}; expected 'biasbn' or None")
    if isinstance(trajectory, str | Path):
        run = Path(trajectory)
        if not run.is_dir():
            raise FileNotFoundError(f"{run}: no such run folder")
        from landscape.checkpoint import run_checkpoints  # type: ignore[attr-defined]

        trajectory = list(run_checkpoints(run))
    if len(trajectory) < 3:
        raise ValueError(
            f"Invalid trajectory: {len(trajectory)} checkpoints (need at least 3: the PCA "
            "plane is spanned by their differences from the last)"
        )
    names, tensors = direction_targets(model, states=False)
    states = [_state_tensors(s, names, tensors) for s in trajectory[:-1]]
    final, buffers = _final_state(model, trajectory[-1], names, tensors)
    states.append(final)
    keep = [not (t.dim() <= 1 and ignore == "biasbn") for t in tensors]
    fin = _flatten(final, keep)
    mat = torch.stack([_flatten(s, keep) - fin for s in states])  # (T, P), last row 0
    centred = mat - mat.mean(dim=0, keepdim=True)
    # PCA through the small TxT Gram matrix: exact, and cheap for huge P. Its eigenvalues
    # are the squared singular values of the centred matrix.
    evals, evecs = torch.linalg.eigh(centred @ centred.T)
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    if evals[1] <= 1e-12 * evals[0]:
        raise ValueError(
            "Invalid trajectory: its checkpoints lie on a line (their differences from the "
            "last span fewer than 2 dimensions)"
        )
    comps = (centred.T @ evecs[:, :2]) / evals[:2].sqrt()  # (P, 2), unit columns
    ratio = (evals[:2] / evals.sum()).tolist()
    variance = (evals[:2] / (len(states) - 1)).tolist()  # scikit-learn's explained_variance_
    singular = evals[:2].sqrt().tolist()
    dirs = []
    for j in range(2):
        out, pos = [], 0
        for t, k in zip(tensors, keep, strict=True):
            if k:
                piece = comps[pos : pos + t.numel(), j].reshape(t.shape)
                pos += t.numel()
            else:
                piece = torch.zeros(t.shape, dtype=torch.float64)
            out.append(piece.to(device=t.device, dtype=t.dtype))
        dirs.append(out)
    diffs = [[a - b for a, b in zip(s, final, strict=True)] for s in states]
    traj = project_onto_plane(diffs, dirs[0], dirs[1])
    attrs = {
        "kind": "pca",
        "norm": "none",
        "ignore": ignore if ignore is not None else "none",
        "states": False,
        "explained_variance_ratio": [float(r) for r in ratio],
        "explained_variance": [float(v) for v in variance],
        "singular_values": [float(s) for s in singular],
        "trajectory_length": len(states),
    }
    if all(isinstance(s, str | Path) for s in trajectory):
        attrs["trajectory_files"] = [str(s) for s in trajectory]
    return Directions(
        x=dirs[0],
        y=dirs[1],
        names=names,
        states=False,
        origin=final,
        trajectory=traj,
        attrs=attrs,
        fixed=None if buffers is None else dict(zip(*buffers, strict=True)),
    )


def _final_state(
    model: nn.Module, source: StateLike, names: list[str], tensors: list[Tensor]
) -> tuple[list[Tensor], tuple[list[str], list[Tensor]] | None]:
    """The last checkpoint's parameters, and its float buffers (names, tensors) if it has them.

    The buffers (BatchNorm running statistics) belong to the plane's origin θ_T: without
    them the surface would be evaluated with the model's own statistics.
    """
    all_names, all_tensors = direction_targets(model, states=True)
    if len(all_names) > len(names):
        try:
            every = _state_tensors(source, all_names, all_tensors)
        except ValueError:  # a state without buffers (parameters only): the model's own
            log.info("the last checkpoint holds no buffers: the model's own are used")
        else:
            n = len(names)
            return every[:n], (all_names[n:], every[n:])
    return _state_tensors(source, names, tensors), None


def custom_directions(
    model: nn.Module,
    x: Sequence[Tensor],
    y: Sequence[Tensor] | None = None,
    *,
    normalize: str | None = None,
    ignore: str | None = None,
    params: ParamSelection = None,
) -> Directions:
    """Directions supplied by the caller (e.g. Hessian eigenvectors), checked against the model.

    Args:
        model: the network.
        x: δ (tensors or arrays, e.g. from :func:`~landscape.store.read_directions`),
            aligned with ``list(model.parameters())``, or with the selected parameters
            ``params`` (e.g. eigenvectors of a :class:`~landscape.hessian.HessianOperator`,
            which spans the parameters requiring grad): the others then get zeros.
        y: η, or None for a line.
        normalize: optionally rescale with one of :data:`NORMS` (default: as given).
        ignore: with ``normalize``, ``"biasbn"`` zeroes ``dim ≤ 1`` tensors.
        params: the selection ``x`` and ``y`` may be aligned with (default: the
            parameters with ``requires_grad=True``).
    """
    names, tensors = direction_targets(model, states=False)
    keep = selected_targets(model, False, params)
    out = []
    for label, d in (("x", x), ("y", y)):
        if d is None:
            out.append(None)
            continue
        d = [t if isinstance(t, Tensor) else torch.as_tensor(np.asarray(t)) for t in d]
        if len(d) == sum(keep) and len(d) != len(tensors):
            it = iter(d)
            d = [next(it) if k else torch.zeros_like(p) for k, p in zip(keep, tensors, strict=True)]
        if len(d) != len(tensors):
            raise ValueError(
                f"Invalid direction {label}: {len(d)} tensors, the model has "
                f"{len(tensors)} parameters ({sum(keep)} selected)"
            )
        moved = []
        for i, (t, p) in enumerate(zip(d, tensors, strict=True)):
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(
                    f"Invalid direction {label}: tensor {i} ({names[i]}) has shape "
                    f"{tuple(t.shape)}, the parameter {tuple(p.shape)}"
                )
            moved.append(t.detach().to(device=p.device, dtype=p.dtype).clone())
        if normalize is not None:
            normalize_direction(moved, [p.detach() for p in tensors], normalize, ignore)
        out.append(moved)
    attrs = {
        "kind": "custom",
        "norm": normalize or "none",
        "ignore": ignore or "none",
        "states": False,
    }
    return Directions(x=out[0], y=out[1], names=names, states=False, attrs=attrs)
