import numpy as np
import pytest
import torch
from _surface_problem import make_problem

from landscape.directions import (
    custom_directions,
    direction_targets,
    interpolation_directions,
    normalize_direction,
    pca_directions,
    plane_directions,
    project_onto_plane,
    random_directions,
)


def _dot(a, b):
    return sum(float((u.double() * v.double()).sum()) for u, v in zip(a, b))


def test_filter_normalisation_per_filter_and_biasbn_zero():
    model, _, _ = make_problem()
    d = random_directions(model, norm="filter", ignore="biasbn", seed=1)
    params = dict(model.named_parameters())
    assert d.names == list(params)
    for name, t in zip(d.names, d.x):
        w = params[name].detach()
        assert t.shape == w.shape
        if w.dim() <= 1:
            assert torch.count_nonzero(t) == 0, name  # biases and BN scales do not move
        else:
            for i in range(w.shape[0]):  # every filter has the norm of the weight filter
                torch.testing.assert_close(t[i].norm(), w[i].norm(), rtol=1e-5, atol=0)


def test_other_norms():
    model, _, _ = make_problem()
    params = [p.detach() for p in model.parameters()]
    d = random_directions(model, norm="layer", ignore=None, seed=1, ndim=1)
    for t, w in zip(d.x, params):  # whole tensors, biases included (ignore=None)
        torch.testing.assert_close(t.norm(), w.norm(), rtol=1e-5, atol=0)
    d = random_directions(model, norm="filter", ignore=None, seed=1, ndim=1)
    bias = dict(zip(d.names, d.x))["fc.bias"]  # dim-1 tensor treated as one filter
    torch.testing.assert_close(bias.norm(), model.fc.bias.detach().norm(), rtol=1e-5, atol=0)
    d = random_directions(model, norm="model", ignore="biasbn", seed=1, ndim=1)
    kept = [(t, w) for t, w in zip(d.x, params) if w.dim() > 1]
    total_d = sum(float(t.double().square().sum()) for t, _ in kept) ** 0.5
    total_w = sum(float(w.double().square().sum()) for _, w in kept) ** 0.5
    assert total_d == pytest.approx(total_w, rel=1e-6)
    raw = random_directions(model, norm="none", ignore=None, seed=1, ndim=1)
    g = torch.Generator().manual_seed(1)
    expect = [torch.randn(w.shape, generator=g) for w in params]
    for t, e in zip(raw.x, expect):
        torch.testing.assert_close(t, e, rtol=0, atol=0)
    with pytest.raises(ValueError, match="Invalid norm"):
        random_directions(model, norm="weird")
    with pytest.raises(ValueError, match="Invalid ignore"):
        normalize_direction(raw.x, params, "filter", ignore="all")


def test_seeded_and_global_rng_untouched():
    model, _, _ = make_problem()
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = random_directions(model, seed=7)
    assert torch.equal(torch.get_rng_state(), before)
    b = random_directions(model, seed=7)
    c = random_directions(model, seed=8)
    assert all(torch.equal(u, v) for u, v in zip(a.x + a.y, b.x + b.y))
    assert not all(torch.equal(u, v) for u, v in zip(a.x, c.x))
    assert a.sha256() == b.sha256() != c.sha256()
    assert a.attrs["seed"] == 7 and a.attrs["norm"] == "filter"


def test_orthogonalize():
    model, _, _ = make_problem()
    d = random_directions(model, seed=2, orthogonalize=True)
    plain = random_directions(model, seed=2)
    assert abs(_dot(plain.x, plain.y)) > 1e-4  # not orthogonal by chance
    cos = _dot(d.x, d.y) / (_dot(d.x, d.x) * _dot(d.y, d.y)) ** 0.5
    assert abs(cos) < 1e-6
    assert _dot(d.y, d.y) == pytest.approx(_dot(plain.y, plain.y), rel=1e-5)  # same norm


def test_states_mode_moves_running_stats():
    model, _, _ = make_problem()
    names, tensors = direction_targets(model, states=True)
    assert names[-2:] == ["bn.running_mean", "bn.running_var"]  # not num_batches_tracked
    d = random_directions(model, states=True, ignore=None, norm="layer", seed=0)
    assert d.states and len(d.x) == len(tensors)
    assert d.x[-1].norm() == pytest.approx(float(model.bn.running_var.norm()), rel=1e-5)


def test_interpolation_and_plane():
    model_a, _, _ = make_problem(seed=0)
    model_b, _, _ = make_problem(seed=1)
    model_c, _, _ = make_problem(seed=2)
    line = interpolation_directions(model_a, model_b.state_dict())
    assert line.ndim == 1 and line.states
    for o, dx, name in zip(line.origin, line.x, line.names):
        b = model_b.state_dict()[name]
        torch.testing.assert_close(o + dx, b)  # alpha = 1 is checkpoint b
    plane = plane_directions(model_a, model_b, model_c)
    np.testing.assert_allclose(plane.trajectory, [[0, 0], [1, 0], [0, 1]], atol=1e-9)
    orth = plane_directions(model_a, model_b, model_c, orthogonalize=True)
    assert abs(_dot(orth.x, orth.y)) < 1e-6 * _dot(orth.x, orth.x)
    # c = origin + u*x + v*y at its stored coordinates
    u, v = orth.trajectory[2]
    sd_c = model_c.state_dict()
    for o, dx, dy, name in zip(orth.origin, orth.x, orth.y, orth.names):
        torch.testing.assert_close(o + u * dx + v * dy, sd_c[name], atol=1e-5, rtol=1e-5)


def test_pca_recovers_known_plane_and_projection_is_exact(tmp_path):
    model, _, _ = make_problem()
    names, tensors = direction_targets(model)
    g = torch.Generator().manual_seed(5)
    final = [torch.randn(t.shape, generator=g) for t in tensors]
    u = [torch.randn(t.shape, generator=g) * (t.dim() > 1) for t in tensors]
    v = [torch.randn(t.shape, generator=g) * (t.dim() > 1) for t in tensors]
    coeffs = [(3.0, 1.0), (2.0, -1.5), (1.2, 0.7), (0.4, -0.2), (0.1, 0.3), (0.0, 0.0)]
    traj = []
    for i, (a, b) in enumerate(coeffs):
        state = {n: f + a * uu + b * vv for n, f, uu, vv in zip(names, final, u, v)}
        state.update({k: val for k, val in model.state_dict().items() if k not in state})
        if i % 2:  # files and state dicts both accepted
            path = tmp_path / f"ck{i}.pt"
            torch.save(state, path)
            traj.append(path)
        else:
            traj.append(state)
    d = pca_directions(model, traj)
    assert d.ndim == 2 and d.attrs["kind"] == "pca"
    ratio = d.attrs["explained_variance_ratio"]
    assert sum(ratio) == pytest.approx(1.0, abs=1e-6) and ratio[0] >= ratio[1]
    for o, f in zip(d.origin, final):
        torch.testing.assert_close(o, f)
    # The PCA plane is span(u, v): u and v have no component outside it.
    for basis in (u, v):
        coef = project_onto_plane([basis], d.x, d.y)[0]
        resid = [b - coef[0] * x - coef[1] * y for b, x, y in zip(basis, d.x, d.y)]
        assert _dot(resid, resid) < 1e-8 * _dot(basis, basis)
    # Projected path: each theta_t is exactly origin + a_t x + b_t y.
    assert d.trajectory.shape == (len(coeffs), 2)
    for (a, b), (px, py) in zip(coeffs, d.trajectory):
        recon = [f + px * x + py * y for f, x, y in zip(final, d.x, d.y)]
        target = [f + a * uu + b * vv for f, uu, vv in zip(final, u, v)]
        for r, t in zip(recon, target):
            torch.testing.assert_close(r, t, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(d.trajectory[-1], [0, 0], atol=1e-9)
    with pytest.raises(ValueError, match="at least 3"):
        pca_directions(model, traj[:2])


def test_project_onto_plane_non_orthogonal_exact():
    x = [torch.tensor([1.0, 0.0, 0.0])]
    y = [torch.tensor([1.0, 1.0, 0.0])]
    p = [torch.tensor([3.0 + 2.0, 2.0, 0.0])]  # 3x + 2y
    np.testing.assert_allclose(project_onto_plane([p], x, y), [[3.0, 2.0]], atol=1e-12)


def test_custom_directions_checked():
    model, _, _ = make_problem()
    params = list(model.parameters())
    d = custom_directions(model, [torch.ones_like(p) for p in params])
    assert d.ndim == 1 and len(d.x) == len(params)
    with pytest.raises(ValueError, match="tensors"):
        custom_directions(model, [torch.ones(1)])
    bad = [torch.ones_like(p) for p in params]
    bad[0] = torch.ones(7)
    with pytest.raises(ValueError, match=r"tensor 0 \(conv.weight\) has shape"):
        custom_directions(model, bad)
