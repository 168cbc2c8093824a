import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.connectivity import linear_barrier, recompute_batchnorm
from landscape.objective import Objective


def _pair(seed_b=1):
    torch.manual_seed(0)
    a = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    torch.manual_seed(seed_b)
    b = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 2))
    return a, b


def test_barrier_by_hand():
    a, b = _pair()
    x, y = torch.randn(30, 3), torch.randint(0, 2, (30,))
    before = copy.deepcopy(a.state_dict())
    res = linear_barrier(a, b, (x, y), num=11, batch_size=7)
    # the line recomputed by hand, one full batch
    wa = [p.detach().clone() for p in a.parameters()]
    wb = [p.detach().clone() for p in b.parameters()]
    probe = copy.deepcopy(a)
    losses, errors = [], []
    for t in np.linspace(0, 1, 11):
        with torch.no_grad():
            for p, u, v in zip(probe.parameters(), wa, wb, strict=True):
                p.copy_((1 - t) * u + t * v)
            out = probe(x)
            losses.append(float(F.cross_entropy(out, y)))
            errors.append(100 - 100 * float((out.argmax(1) == y).double().mean()))
    losses = np.array(losses)
    np.testing.assert_allclose(res.loss, losses, rtol=1e-6)
    line = (1 - res.alphas) * losses[0] + res.alphas * losses[-1]
    assert res.barrier == pytest.approx(float(np.max(losses - line)), rel=1e-6)
    assert res.alpha_max == pytest.approx(float(res.alphas[np.argmax(losses - line)]))
    errors = np.array(errors)
    assert res.error_barrier == pytest.approx(
        float(np.max(errors - ((1 - res.alphas) * errors[0] + res.alphas * errors[-1]))),
        abs=1e-9,
    )
    # the model is left as found
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert res.to_dict()["info"]["bn_recomputed"] is False


def test_same_network_has_no_barrier():
    a, _ = _pair()
    x, y = torch.randn(20, 3), torch.randint(0, 2, (20,))
    res = linear_barrier(a, copy.deepcopy(a), (x, y), num=5)
    assert abs(res.barrier) < 1e-6


def test_batchnorm_statistics_are_recomputed_at_each_point():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2))
    x, y = torch.randn(40, 3) * 2 + 1, torch.randint(0, 2, (40,))
    obj = Objective(net, (x, y), batch_size=16)
    assert recompute_batchnorm(obj)
    h = net[0](x).detach()
    torch.testing.assert_close(net[1].running_mean, h.mean(0), rtol=1e-5, atol=1e-6)
    parts = [h[:16], h[16:32], h[32:]]
    pooled = sum(len(p) * p.var(0, unbiased=True) for p in parts) / 40
    torch.testing.assert_close(net[1].running_var, pooled, rtol=1e-5, atol=1e-6)
    assert net[1].momentum == 0.1 and net.training  # restored
    other = copy.deepcopy(net)
    with torch.no_grad():
        other[0].weight.mul_(-1.5)
    res = linear_barrier(net, other, (x, y), num=5)
    assert res.info["bn_recomputed"] is True
    assert np.isfinite(res.loss).all()
    with pytest.raises(ValueError, match="num"):
        linear_barrier(net, other, (x, y), num=2)
