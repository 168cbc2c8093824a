"""Top eigenvalue vs PyHessian: the product budget, Lanczos's error per product, start vectors.

    .venv/bin/python benchmarks/lanczos_start.py [--checkpoints 300:0,...] [--repeats 5]

Issue 5 asks for the top eigenvalue to 1e-3 in ≤ 0.5× PyHessian's time.  Both tools pay
the same first-order graph ``b`` and the same double-backward product ``p``, so the
target is a product budget: with PyHessian taking ``n`` products, ours must take
``k ≤ (0.5 (b + n p) − b) / p``.  Per checkpoint of ``benchmarks/hessian.py`` (small CNN,
105,226 parameters, batch 256, one thread) this prints:

1. ``b`` and ``p`` (medians of ``--repeats`` interleaved timings, with PyHessian's own
   product on its own graph beside them), PyHessian's products by
   its own rule (median of ``--repeats`` runs) and the resulting budget ``k``;
2. Lanczos from the default (random) start: the true relative error of λ1 after 2…6
   products and the a-posteriori estimate ``min(r, r²/gap)`` that
   ``criterion="eigenvalue"`` stops on;
3. start vectors one could buy instead, each with its cosine to the true top eigenvector,
   its cost in products' worth of time, and what the full Lanczos then needs from it
   (``criterion="eigenvalue"``, ``tol=1e-3``; a bought start plus 0.1 × a unit random
   vector):
   the top eigenvector of the Hessian of the first ``m`` samples (m = 32, 64, 128;
   Lanczos to 1e-2 on its own kept graph) and of the head block (the two ``Linear``
   layers: 100,362 of the parameters, cheap products since the double backward stops at
   the features);
4. on the first checkpoint, whether a product could be cheaper: the relative error of
   finite-difference products against exact ones, ``torch.func.linearize``'s trace
   time and seconds per product and reverse-over-forward's (``torch.func`` ``grad`` of
   ``jvp``) against the double backward, and where the double
   backward's time goes (torch profiler, self CPU time per autograd node), including
   the work PyTorch does that no caller can switch off: the transposed convolution
   ``_convolution_double_backward`` computes for the first convolution's input (the
   data, which needs no gradient: PyTorch computes it whenever the weight direction is
   set, without looking at the output mask), and the zero tensors that the double
   backward of ReLU and max-pool creates and adds for their saved inputs; and a lower
   bound for any product: Pearlmutter's R-operator written out by hand for this network
   (``r_op_product``), with every forward and first-order backward quantity it reads
   computed beforehand and not timed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, median, ratio_to
from hessian import TARGET, pyhessian_top, quiet, reference_problem

from landscape.hessian import HessianOperator, lanczos_eigen
from landscape.objective import Objective


def _flat(vectors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in vectors])


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a @ b).abs() / (a.norm() * b.norm()))


def graph_and_product_seconds(
    model, x, y, obj: Objective, repeats: int
) -> tuple[float, float, float]:
    """Median seconds of building the first-order graph, of one product on it, and of
    one PyHessian product (its ``hessian_vector_product`` on its own graph), interleaved."""
    import copy

    import pyhessian  # the package shadows its module by the class: read it from sys.modules

    ph = sys.modules["pyhessian.hessian"]
    op = HessianOperator(obj)
    v = op.random_vector(torch.Generator().manual_seed(0))
    op.matvec(v)
    peer = pyhessian.hessian(
        copy.deepcopy(model), torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False
    )
    params, grads = ph.get_params_grad(peer.model)
    vs = [t.clone() for t in op.to_list(v)]

    def build():
        op._graph = None  # force a rebuild (the benchmark's own operator)
        op._first_order()

    times = interleaved(
        {
            "build": build,
            "product": lambda: op.matvec(v),
            "pyhessian": lambda: ph.hessian_vector_product(grads, params, vs),
        },
        repeats=repeats,
    )
    op.close()
    return median(times["build"]), median(times["product"]), median(times["pyhessian"])


def start_rows(model, x, y, obj, lam, x1, p):
    """Each candidate start: cosine, cost in products of time, full products, error."""
    op = HessianOperator(obj)
    r = op.random_vector(torch.Generator().manual_seed(1))
    r = r / r.norm()
    g = op.to_flat(op.gradient())
    rows = [
        ("random (the default)", _cos(r, x1), 0.0, None),
        ("gradient (ĝ + unit random)", _cos(g, x1), 0.0, "gradient"),
    ]
    cands = []
    for m in (32, 64, 128):
        sub = Objective(model, (x[:m], y[:m]), batch_size=m)
        t0 = time.perf_counter()
        res = lanczos_eigen(HessianOperator(sub), tol=1e-2, criterion="eigenvalue")
        sec = time.perf_counter() - t0
        cands.append(
            (f"first {m} samples, {res.products} products", _flat(res.eigenvectors[0]), sec)
        )
    t0 = time.perf_counter()
    head = HessianOperator(obj, params=["head"])
    res = lanczos_eigen(head, tol=1e-2, criterion="eigenvalue", v0="random")
    sec = time.perf_counter() - t0
    u = torch.cat([torch.zeros(op.dim - head.dim), _flat(res.eigenvectors[0])])
    cands.append((f"head block, {res.products} products", u, sec))
    for name, u, sec in cands:
        rows.append((name, _cos(u, x1), sec / p, u / u.norm() + 0.1 * r))
    out = []
    for name, cos, cost, v0 in rows:
        res = lanczos_eigen(
            op, tol=TARGET, criterion="eigenvalue", v0="random" if v0 is None else v0
        )
        err = abs(float(res.eigenvalues[0]) - lam) / lam
        out.append((name, cos, cost, res.products, err))
    op.close()
    return out


def other_products(model, x, y, obj, repeats):
    """Cheaper products? Finite differences' error, ``torch.func.linearize``'s cost."""
    import torch.nn.functional as F
    from torch.func import functional_call, grad, jvp, linearize

    exact = HessianOperator(obj)
    fd = HessianOperator(obj, method="fd", fd_check="never")
    gen = torch.Generator().manual_seed(0)
    errs = []
    for _ in range(3):
        v = exact.random_vector(gen)
        hv = exact.matvec(v)
        errs.append(float((fd.matvec(v) - hv).norm() / hv.norm()))
    names = [n for n, _ in model.named_parameters()]
    primals = tuple(p.detach() for p in model.parameters())

    def loss(*ps):
        return F.cross_entropy(functional_call(model, dict(zip(names, ps, strict=True)), (x,)), y)

    t0 = time.perf_counter()
    argnums = tuple(range(len(primals)))
    _, jvp_fn = linearize(grad(loss, argnums=argnums), *primals)
    trace = time.perf_counter() - t0
    vs = tuple(t.view_as(p) for t, p in zip(exact.to_list(v), primals, strict=True))

    def directional(*ps):  # d/dε L(θ + εv): reverse over forward takes its gradient
        return jvp(loss, ps, vs)[1]

    reverse_over_forward = grad(directional, argnums=argnums)
    by_hand = r_op_product(model, x, y)
    hv_hand = _flat(by_hand(vs))
    hand_err = float((hv_hand - hv).norm() / hv.norm())
    times = interleaved(
        {
            "double backward": lambda: exact.matvec(v),
            "linearize": lambda: jvp_fn(*vs),
            "reverse over forward": lambda: reverse_over_forward(*primals),
            "by hand": lambda: by_hand(vs),
        },
        repeats=repeats,
    )
    print(
        "finite-difference products (default h) vs exact: relative error "
        + ", ".join(f"{e:.1e}" for e in errs)
        + f"; torch.func.linearize: {trace:.2f} s to trace, "
        f"{1e3 * median(times['linearize']):.1f} ms per product; reverse over forward "
        f"(torch.func grad of jvp) {1e3 * median(times['reverse over forward']):.1f} ms; "
        f"against {1e3 * median(times['double backward']):.1f} ms (double backward, kept graph)"
    )
    print(
        "R-operator written out by hand for this network (forward and backward quantities "
        f"precomputed, untimed): {1e3 * median(times['by hand']):.1f} ms per product, "
        f"{ratio_to(times, 'double backward')['by hand']:.2f}x the double backward "
        f"(median of per-repeat ratios); relative difference from it {hand_err:.1e}"
    )


def r_op_product(model, x, y):
    """Pearlmutter's R-operator written out by hand for the benchmark CNN: ``V -> H V``.

    Everything a product needs from the forward and first-order backward passes (inputs,
    ReLU masks, max-pool indices, softmax, output deltas) is computed here once and not
    timed, so the returned function is a lower bound for any product built from
    these layers' own formulas: what a custom per-module engine (BackPACK- or
    curvlinops-style) could at best reach.  It does no autograd bookkeeping and
    no unneeded work: no input gradient for the first convolution, no zero tensors.
    """
    import torch.nn.functional as F

    conv1, conv2 = model.features[0], model.features[3]
    lin1, lin2 = model.head[1], model.head[3]
    assert all(isinstance(m, torch.nn.Conv2d) for m in (conv1, conv2))
    assert all(isinstance(m, torch.nn.Linear) for m in (lin1, lin2))
    cb = torch.ops.aten.convolution_backward
    # the 3×3 convolutions': stride, padding, dilation, transposed, output padding, groups
    conv = ([1, 1], [1, 1], [1, 1], False, [0, 0], 1)
    pool = dict(kernel_size=2, stride=2, ceil_mode=True)

    def weight_grad(inp, grad_out, w):
        return cb(grad_out, inp, w, [w.shape[0]], *conv, [False, True, False])[1]

    def input_grad(grad_out, inp, w):
        return cb(grad_out, inp, w, None, *conv, [True, False, False])[0]

    def gather(t, idx, like):
        return t.flatten(2).gather(2, idx.flatten(2)).view_as(like)

    w1, w2, w3, w4 = (m.weight.detach() for m in (conv1, conv2, lin1, lin2))
    with torch.no_grad():  # the forward and first-order backward quantities, once
        z1 = F.conv2d(x, w1, conv1.bias, padding=1)
        m1, a1 = z1 > 0, z1.clamp_min(0)
        p1, i1 = F.max_pool2d(a1, return_indices=True, **pool)
        z2 = F.conv2d(p1, w2, conv2.bias, padding=1)
        m2, a2 = z2 > 0, z2.clamp_min(0)
        p2, i2 = F.max_pool2d(a2, return_indices=True, **pool)
        f = p2.flatten(1)
        z3 = F.linear(f, w3, lin1.bias)
        m3, a3 = z3 > 0, z3.clamp_min(0)
        s = F.linear(a3, w4, lin2.bias).softmax(1)
        d4 = (s - F.one_hot(y, s.shape[1]).to(s.dtype)) / x.shape[0]
        d3 = (d4 @ w4) * m3
        d2 = F.max_unpool2d((d3 @ w3).view_as(p2), i2, 2, 2, output_size=a2.shape[-2:]) * m2

    @torch.no_grad()
    def product(v):
        v1, vb1, v2, vb2, v3, vb3, v4, vb4 = v
        rp1 = gather(F.conv2d(x, v1, vb1, padding=1) * m1, i1, p1)  # forward tangent
        rz2 = F.conv2d(rp1, w2, vb2, padding=1) + F.conv2d(p1, v2, None, padding=1)
        rf = gather(rz2 * m2, i2, p2).flatten(1)
        ra3 = (F.linear(rf, w3, vb3) + F.linear(f, v3)) * m3
        rz4 = F.linear(ra3, w4, vb4) + F.linear(a3, v4)
        rd4 = s * (rz4 - (s * rz4).sum(1, keepdim=True)) / x.shape[0]  # backward tangent
        rd3 = (rd4 @ w4 + d4 @ v4) * m3
        rdf = rd3 @ w3 + d3 @ v3
        rd2 = F.max_unpool2d(rdf.view_as(p2), i2, 2, 2, output_size=a2.shape[-2:]) * m2
        rdp1 = input_grad(rd2, p1, w2) + input_grad(d2, p1, v2)
        rd1 = F.max_unpool2d(rdp1, i1, 2, 2, output_size=a1.shape[-2:]) * m1
        return [
            weight_grad(x, rd1, w1),
            rd1.sum((0, 2, 3)),
            weight_grad(p1, rd2, w2) + weight_grad(rp1, d2, w2),
            rd2.sum((0, 2, 3)),
            rd3.T @ f + d3.T @ rf,
            rd3.sum(0),
            rd4.T @ a3 + d4.T @ ra3,
            rd4.sum(0),
        ]

    return product


def product_breakdown(model, obj, repeats: int) -> None:
    """Where one double-backward product's time goes: self CPU time per autograd node."""
    from collections import defaultdict

    from torch.profiler import ProfilerActivity, profile

    conv1 = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    op = HessianOperator(obj)
    v = op.random_vector(torch.Generator().manual_seed(0))
    op.matvec(v)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(repeats):
            op.matvec(v)
    op.close()
    by_node: dict[str, float] = defaultdict(float)
    wasted_conv = zero_fill = total = 0.0
    w1 = list(conv1.weight.shape)
    for e in prof.events():
        if e.name.startswith(("autograd::", "ProfilerStep")) or e.self_cpu_time_total <= 0:
            continue
        node, parent = "outside autograd nodes", e.cpu_parent
        while parent is not None:
            if parent.name.startswith("autograd::engine::evaluate_function: "):
                node = parent.name.split(": ", 1)[1]
                break
            parent = parent.cpu_parent
        t = e.self_cpu_time_total
        total += t
        by_node[node] += t
        shapes = e.input_shapes or []
        if (
            node == "ConvolutionBackwardBackward0"
            and e.name in ("aten::_convolution", "aten::mkldnn_convolution")
            and len(shapes) > 1
            and list(shapes[1]) == w1
            and len(shapes[0]) == 4
            and shapes[0][1] == w1[0]
        ):
            wasted_conv += t  # conv-transpose of conv1's output gradient: d/d(data)
        if e.name == "aten::fill_" and node in (
            "ThresholdBackwardBackward0",
            "MaxPool2DWithIndicesBackwardBackward0",
        ):
            zero_fill += t
    top = sorted(by_node.items(), key=lambda kv: -kv[1])[:6]
    print(
        f"one product, profiled ({repeats} products, self CPU time {total / 1e3 / repeats:.1f} ms "
        "each under the profiler): "
        + ", ".join(f"{name} {100 * t / total:.0f} %" for name, t in top)
    )
    print(
        f"  computed but not needed: the first convolution's input gradient "
        f"{100 * wasted_conv / total:.1f} %, zero tensors of ReLU/max-pool double backward "
        f"{100 * zero_fill / total:.1f} % (their fills only)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="300:0,300:1,1000:0,1000:1,3000:0,3000:1")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)
    print(f"threads {args.threads}, repeats {args.repeats}")
    for spec in args.checkpoints.split(","):
        steps, seed = (int(t) for t in spec.split(":"))
        model, x, y, obj, ref = reference_problem(steps, seed, k=2)
        lam = float(ref.eigenvalues[0])
        x1 = _flat(ref.eigenvectors[0]).float()
        if spec == args.checkpoints.split(",")[0]:
            other_products(model, x, y, obj, args.repeats)
            product_breakdown(model, obj, args.repeats)
        b, p, p_peer = graph_and_product_seconds(model, x, y, obj, args.repeats)
        n = median([pyhessian_top(model, x, y, 1, [lam])["products"] for _ in range(args.repeats)])
        budget = (0.5 * (b + n * p) - b) / p
        print(
            f"\n== {steps} steps, seed {seed}: λ1 = {lam:.4g}, λ2/λ1 = "
            f"{float(ref.eigenvalues[1]) / lam:.3f} =="
        )
        print(
            f"graph b = {1e3 * b:.1f} ms, product p = {1e3 * p:.1f} ms (b = {b / p:.2f} p; "
            f"PyHessian's product on its graph {1e3 * p_peer:.1f} ms); "
            f"PyHessian {n:.0f} products -> budget for 0.5x its time: k <= {budget:.2f} products"
        )
        errs = []
        op = HessianOperator(obj)
        for m in range(2, 7):
            res = lanczos_eigen(op, tol=1e-12, max_products=m, criterion="eigenvalue")
            err = abs(float(res.eigenvalues[0]) - lam) / lam
            errs.append(f"{m}: {err:.1e} ({res.info['error_estimates'][0] / lam:.1e})")
        op.close()
        print("Lanczos, random start, products: true error (estimate): " + ", ".join(errs))
        print(f"{'start vector':<38} {'cos(v0,x1)':>10} {'cost [p]':>8} {'then p':>6} {'error':>8}")
        for name, cos, cost, prods, err in start_rows(model, x, y, obj, lam, x1, p):
            print(f"{name:<38} {cos:>10.3f} {cost:>8.2f} {prods:>6d} {err:>8.1e}")


if __name__ == "__main__":
    main()
