import math

import pytest
import torch
import torch.nn.functional as F
from _metrics_helpers import classification_data, mlp

from landscape.metrics import compute_metrics


def _grads(model, x, y):
    loss = F.cross_entropy(model(x), y)
    return [g.detach() for g in torch.autograd.grad(loss, list(model.parameters()))]


def _cos(a, b):
    fa = torch.cat([t.reshape(-1) for t in a])
    fb = torch.cat([t.reshape(-1) for t in b])
    return float(fa @ fb / (fa.norm() * fb.norm()))


def test_grad_cosine_of_index_subsets_matches_direct_computation():
    model = mlp()
    x, y = classification_data(n=30)
    ia, ib = list(range(0, 30, 3)), [i for i in range(30) if i % 3]
    res = compute_metrics(
        model, (x, y), ["grad_cosine"], subsets=(ia, ib), batch_size=8, progress=False
    )["grad_cosine"]
    ga, gb = _grads(model, x[ia], y[ia]), _grads(model, x[ib], y[ib])
    assert res.value == pytest.approx(_cos(ga, gb), rel=1e-10)
    names = [n for n, _ in model.named_parameters()]
    for n, a, b in zip(names, ga, gb):
        assert res.info["per_param"][n] == pytest.approx(_cos([a], [b]), rel=1e-10)
    assert res.info["per_layer"]["0"] == pytest.approx(_cos(ga[:2], gb[:2]), rel=1e-10)
    assert res.info["per_layer"]["2"] == pytest.approx(_cos(ga[2:], gb[2:]), rel=1e-10)
    assert res.info["samples_a"] == 10 and res.info["samples_b"] == 20


def test_grad_cosine_is_one_for_identical_subsets():
    model = mlp()
    x, y = classification_data(n=16)
    idx = [1, 4, 5, 9, 15]
    res = compute_metrics(model, (x, y), ["grad_cosine"], subsets=(idx, idx))["grad_cosine"]
    assert res.value == pytest.approx(1.0, abs=1e-12)
    assert all(v == pytest.approx(1.0, abs=1e-12) for v in res.info["per_layer"].values())


def test_grad_cosine_random_split_and_other_data():
    model = mlp()
    x, y = classification_data(n=20)
    res = compute_metrics(model, (x, y), ["grad_cosine"], subsets=0.25, seed=3)["grad_cosine"]
    assert res.info["samples_a"] == 5 and res.info["samples_b"] == 15
    assert -1.0 <= res.value <= 1.0
    x2, y2 = classification_data(n=12, seed=7)
    res = compute_metrics(model, (x, y), ["grad_cosine"], other_data=(x2, y2))["grad_cosine"]
    assert res.value == pytest.approx(_cos(_grads(model, x, y), _grads(model, x2, y2)), rel=1e-10)


@pytest.mark.parametrize("perturb", ["own", "full"])
def test_grad_cosine_at_perturbed_points(perturb):
    model = mlp()
    x, y = classification_data(n=24)
    ia, ib = list(range(12)), list(range(12, 24))
    rho = 0.1
    params = list(model.parameters())
    theta = [p.detach().clone() for p in params]

    def grad_at_sam_point(direction_idx, idx):
        g0 = _grads(model, x[direction_idx], y[direction_idx])
        norm = torch.cat([t.reshape(-1) for t in g0]).norm()
        with torch.no_grad():
            for p, t, g in zip(params, theta, g0):
                p.copy_(t + rho * g / norm)
        out = _grads(model, x[idx], y[idx])
        with torch.no_grad():
            for p, t in zip(params, theta):
                p.copy_(t)
        return out

    both = list(range(24))
    ga = grad_at_sam_point(ia if perturb == "own" else both, ia)
    gb = grad_at_sam_point(ib if perturb == "own" else both, ib)
    res = compute_metrics(
        model, (x, y), ["grad_cosine"], subsets=(ia, ib), rho=rho, perturb=perturb
    )["grad_cosine"]
    assert res.value == pytest.approx(_cos(ga, gb), rel=1e-10)
    unperturbed = compute_metrics(model, (x, y), ["grad_cosine"], subsets=(ia, ib))
    assert not math.isclose(res.value, unperturbed["grad_cosine"].value, rel_tol=1e-6)


def test_grad_cosine_bad_subsets():
    model = mlp()
    x, y = classification_data(n=10)
    with pytest.raises(ValueError, match="subsets"):
        compute_metrics(model, (x, y), ["grad_cosine"], subsets=1.5)
    with pytest.raises(ValueError, match="subsets"):
        compute_metrics(model, (x, y), ["grad_cosine"], subsets=([0, 1], [10]))
    with pytest.raises(ValueError, match="perturb"):
        compute_metrics(model, (x, y), ["grad_cosine"], perturb="other")


def test_grad_cosine_and_sharpness_with_dict_batches():
    model = mlp()
    x, y = classification_data(n=18)
    batches = [{"x": x[i : i + 5], "y": y[i : i + 5]} for i in range(0, 18, 5)]
    ia, ib = [0, 3, 7, 11, 17], [1, 2, 4, 16]
    from_dicts = compute_metrics(model, batches, ["grad_cosine", "sam_sharpness"], subsets=(ia, ib))
    from_pair = compute_metrics(model, (x, y), ["grad_cosine", "sam_sharpness"], subsets=(ia, ib))
    for name in ("grad_cosine", "sam_sharpness"):
        assert from_dicts[name].value == pytest.approx(from_pair[name].value, rel=1e-10)
    assert from_dicts["grad_cosine"].value == pytest.approx(
        _cos(_grads(model, x[ia], y[ia]), _grads(model, x[ib], y[ib])), rel=1e-10
    )
