"""Agreement with PyHessian 0.1 (cuda=False) on a small CPU model."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from landscape.hessian import HessianOperator, hutchinson_trace, lanczos_eigen

pyhessian = pytest.importorskip("pyhessian")


def test_top_eigenvalue_and_trace_agree_with_pyhessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 4))
    x, y = torch.randn(64, 10), torch.randint(0, 4, (64,))
    peer_model = copy.deepcopy(model)  # PyHessian fills .grad and leaves eval mode
    peer = pyhessian.hessian(peer_model, F.cross_entropy, data=(x, y), cuda=False)
    torch.manual_seed(1)
    peer_eig, _ = peer.eigenvalues(maxIter=200, tol=1e-6, top_n=1)
    peer_tr = np.asarray(peer.trace(maxIter=400, tol=1e-9))
    peer_tr_mean = peer_tr.mean()
    peer_tr_se = peer_tr.std(ddof=1) / np.sqrt(len(peer_tr))

    op = HessianOperator(model, data=(x, y), dtype=torch.float64)
    eig = lanczos_eigen(op, k=1, tol=1e-8, max_products=op.dim)
    assert eig.converged
    # PyHessian stops when its estimate moves < tol relatively: agree to ~10 tol
    assert abs(float(eig.eigenvalues[0]) - peer_eig[0]) <= 1e-5 * abs(peer_eig[0])
    tr = hutchinson_trace(op, num_products=400, seed=0)
    assert abs(tr.value - peer_tr_mean) <= 3 * np.hypot(tr.stderr, peer_tr_se)
    # and both agree with the exact trace from the dense Hessian
    exact = float(torch.trace(op.to_dense()))
    assert abs(tr.value - exact) <= 4 * tr.stderr
    assert abs(peer_tr_mean - exact) <= 4 * peer_tr_se
