"""Hessian engine vs PyHessian 0.1 and curvlinops on a small CNN (≈105 k parameters, CPU).

    .venv/bin/python benchmarks/hessian.py [--repeats 3] [--seeds 6] [--threads 1]

Setup: ``landscape.models`` "cnn" (width 16, hidden 192: 105,226 parameters, ReLU and
max-pool) trained for a few hundred SGD steps on the digits data upsampled to 16×16, then
the Hessian of the cross-entropy on one batch of 256 samples.  The checkpoints are read
from ``benchmarks/checkpoints`` (``--store-checkpoints`` trains and writes them): the
weights training ends at differ between machines and thread counts, and with them the
spectrum and every product count.

References: the top-5 eigenvalues by float64 Lanczos run to a 1e-10 residual; the exact
trace from per-sample Jacobians (for a network made of ReLU, max-pool, conv and linear
layers the second-order term of the Hessian has a zero diagonal, so ``Tr H = Tr GGN
= (1/N) Σ_n ‖J_nᵀ A_n‖_F²`` with ``A_n A_nᵀ = diag(p_n) − p_n p_nᵀ``).

Figures (medians over ``--repeats``; each repeat times the candidates interleaved):
1. products and seconds to reach 1e-3 relative error on the top eigenvalue, and what each
   tool's own stopping rule returns (ours: residual ≤ 1e-3·|λ|); then the same on
   several checkpoints (``--checkpoints steps:seed,...``), since the eigenvalue gap
   that decides power iteration's speed differs between them;
2. products for the top 5 (ours to 1e-3 relative error on all five), then on the same
   checkpoints, where the gaps between λ5 and the eigenvalues below it differ too;
3. relative RMSE of the trace at 60 products over ``--seeds`` seeds; ``ggn_trace``'s
   per-sample Gauss–Newton part is not made of products, so its cost is given in seconds
   and in products' worth of time;
4. peak extra memory of one product vs one gradient (torch profiler, CPU allocations);
5. seconds per product of each product method, as a ratio to one gradient;
6. per-layer blocks: seconds per product of each layer's block, and ``layer_eigenvalues``
   against ``lanczos_eigen`` on the whole Hessian.
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import interleaved, median, ratio_to

from landscape.data import load_data
from landscape.hessian import (
    HessianOperator,
    block_trace,
    ggn_trace,
    hutchinson_trace,
    hutchpp_trace,
    lanczos_eigen,
    layer_eigenvalues,
)
from landscape.hessian._blocks import block_param_names
from landscape.models import build_model
from landscape.objective import Objective

TARGET = 1e-3


# ---------------------------------------------------------------------------- setup
def quiet(threads: int) -> None:
    """The Hessian benchmarks' set-up: ``threads`` torch threads, no library logs or warnings."""
    torch.set_num_threads(threads)
    logging.getLogger("landscape").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")


CHECKPOINTS = Path(__file__).resolve().parent / "checkpoints"


def stored_checkpoint(steps: int, seed: int) -> Path:
    """Where the benchmark CNN after ``steps`` steps of seed ``seed`` is stored."""
    return CHECKPOINTS / f"cnn-{steps}-{seed}.pt"


def benchmark_model() -> nn.Module:
    """The small CNN (width 16, hidden 192: 105,226 parameters), freshly initialised."""
    return build_model(
        "cnn", in_channels=1, num_classes=10, input_size=(16, 16), width=16, hidden=192
    )


def benchmark_data(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The digits training split of ``seed``, upsampled to 16×16."""
    x, y = load_data("digits", seed=seed).train.tensors
    return F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False), y


def train_snapshots(steps: list[int], seed: int = 0):
    """Train the benchmark CNN once; a copy in eval mode after each of ``steps``, and the batch.

    The small CNN (width 16, hidden 192) on digits upsampled to 16×16, SGD with momentum
    0.9, lr 0.05, batches of 64; the Hessian batch is the first 256 training samples.
    The weights it ends at depend on the machine: training is chaotic, so the CPU's
    instruction set and the thread count (the order of float32 reductions) change them
    after a few hundred steps (λ1 at 300 steps of seed 0: 3.265 on the machine of
    sessions 1–4, 6.812 on session 5's with one thread, 2.922 with two).
    """
    torch.manual_seed(seed)
    x, y = benchmark_data(seed)
    model = benchmark_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    g = torch.Generator().manual_seed(seed)
    keep, snaps = set(steps), []
    for step in range(1, max(steps) + 1):
        idx = torch.randint(0, x.shape[0], (64,), generator=g)
        opt.zero_grad()
        F.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
        if step in keep:
            snap = copy.deepcopy(model)
            snap.zero_grad(set_to_none=True)
            snaps.append((step, snap.eval()))
    return snaps, x[:256].contiguous(), y[:256].contiguous()


def make_problem(steps: int = 300, seed: int = 0, *, retrain: bool = False):
    """The benchmark CNN after ``steps`` SGD steps, and its Hessian batch ``(x, y)``.

    Read from ``benchmarks/checkpoints`` when stored there (loaded with
    ``weights_only=True``), so that product counts compare across machines and
    sessions; trained (:func:`train_snapshots`) otherwise or with ``retrain``.
    """
    path = stored_checkpoint(steps, seed)
    if retrain or not path.exists():
        [(_, model)], x, y = train_snapshots([steps], seed)
        return model, x, y
    x, y = benchmark_data(seed)
    model = benchmark_model()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval(), x[:256].contiguous(), y[:256].contiguous()


def reference_problem(steps: int, seed: int, k: int):
    """:func:`make_problem`, its ``Objective`` and the top-``k`` eigenpairs (float64 Lanczos
    to a 1e-10 residual): ``(model, x, y, objective, reference)``."""
    model, x, y = make_problem(steps=steps, seed=seed)
    obj = Objective(model, (x, y), batch_size=256)
    ref = lanczos_eigen(HessianOperator(obj, dtype=torch.float64), k=k, tol=1e-10, max_products=300)
    return model, x, y, obj, ref


def store_checkpoints(specs: list[tuple[int, int]]) -> None:
    """Train and store the checkpoints ``(steps, seed)`` (one run per seed), with sha256."""
    import hashlib

    CHECKPOINTS.mkdir(exist_ok=True)
    for seed in sorted({seed for _, seed in specs}):
        steps = sorted({st for st, sd in specs if sd == seed})
        snaps, _, _ = train_snapshots(steps, seed)
        for step, model in snaps:
            path = stored_checkpoint(step, seed)
            torch.save(model.state_dict(), path)
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            print(f"{path.name}  sha256 {digest}")


def exact_trace(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """``Tr H`` of a piecewise-linear network with cross-entropy, from per-sample Jacobians."""
    from torch.func import functional_call, grad, vmap

    params = {n: p.detach() for n, p in model.named_parameters()}
    with torch.no_grad():
        p = model(x).softmax(-1).double()
    sq = p.sqrt()
    a = torch.diag_embed(sq) - p[:, :, None] * sq[:, None, :]  # A_n, columns a_{n,c}

    def out_dot(ps, xi, ai):
        return (functional_call(model, ps, (xi[None],))[0] * ai).sum()

    per_sample = vmap(grad(out_dot), in_dims=(None, 0, 0))
    total = 0.0
    for c in range(p.shape[1]):
        for s in range(0, x.shape[0], 64):
            gs = per_sample(params, x[s : s + 64], a[s : s + 64, :, c].float())
            total += sum(float(t.double().pow(2).sum()) for t in gs.values())
    return total / x.shape[0]


# ---------------------------------------------------------------------------- peers
class _PyHessianCounter:
    """Counts PyHessian's products and records its Rayleigh quotient after each one."""

    def __init__(self):
        import pyhessian  # noqa: F401  (the package shadows its module by the class)

        self.ph = ph = sys.modules["pyhessian.hessian"]
        self.orig = ph.hessian_vector_product
        self.calls: list[tuple[float, float]] = []

    def __enter__(self):
        def counted(gradsH, params, v):
            hv = self.orig(gradsH, params, v)
            rq = float(sum((a * b).sum() for a, b in zip(hv, v, strict=True)))
            self.calls.append((time.perf_counter(), rq))
            return hv

        self.ph.hessian_vector_product = counted
        return self

    def __exit__(self, *exc):
        self.ph.hessian_vector_product = self.orig


def pyhessian_top(model, x, y, top_n, lam_ref, tol=1e-3, max_iter=100):
    import pyhessian

    with _PyHessianCounter() as cnt:
        t0 = time.perf_counter()
        hs = pyhessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        vals, _ = hs.eigenvalues(maxIter=max_iter, tol=tol, top_n=top_n)
        total = time.perf_counter() - t0
    reach = None
    if top_n == 1:
        for i, (t, rq) in enumerate(cnt.calls):
            if abs(rq - lam_ref[0]) <= TARGET * abs(lam_ref[0]):
                reach = (i + 1, t - t0)
                break
    err = max(
        abs(v - r) / abs(r) for v, r in zip(sorted(vals, reverse=True), lam_ref, strict=False)
    )
    return {"products": len(cnt.calls), "seconds": total, "rel_err": err, "reach": reach}


def pyhessian_trace(model, x, y, tr_ref):
    import pyhessian

    torch.manual_seed(0)
    with _PyHessianCounter() as cnt:
        hs = pyhessian.hessian(copy.deepcopy(model), nn.CrossEntropyLoss(), data=(x, y), cuda=False)
        samples = hs.trace()  # defaults: maxIter=100, tol=1e-3
    return {"products": len(cnt.calls), "rel_err": abs(np.mean(samples) - tr_ref) / tr_ref}


def curvlinops_operator(model, x, y):
    from curvlinops import HessianLinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    return HessianLinearOperator(
        model, nn.CrossEntropyLoss(), params, [(x, y)], check_deterministic=False
    )


def curvlinops_eigsh(model, x, y, k, lam_ref):
    from scipy.sparse.linalg import LinearOperator, eigsh

    t0 = time.perf_counter()
    A = curvlinops_operator(model, x, y).to_scipy()
    count = [0]

    def mv(v):
        count[0] += 1
        return A @ v

    lin = LinearOperator(A.shape, matvec=mv, dtype=A.dtype)
    vals = eigsh(lin, k=k, which="LA", return_eigenvectors=False)
    total = time.perf_counter() - t0
    vals = sorted(vals, reverse=True)
    err = max(abs(v - r) / abs(r) for v, r in zip(vals, lam_ref, strict=False))
    return {"products": count[0], "seconds": total, "rel_err": err}


def curvlinops_traces(model, x, y, tr_ref, seeds, num):
    from curvlinops import hutchinson_trace as c_hutch
    from curvlinops import hutchpp_trace as c_hpp
    from curvlinops import xtrace as c_xtrace

    A = curvlinops_operator(model, x, y)
    out = {}
    for name, fn in (("hutchinson", c_hutch), ("hutch++", c_hpp), ("xtrace", c_xtrace)):
        errs = []
        for s in range(seeds):
            torch.manual_seed(s)
            errs.append((float(fn(A, num)) - tr_ref) / tr_ref)
        out[name] = float(np.sqrt(np.mean(np.square(errs))))
    return out


# ---------------------------------------------------------------------------- ours
def ours_reach(obj, lam_ref, k):
    """Smallest number of products whose Lanczos run has all top-k within 1e-3; and seconds."""
    for m in range(k + 1, 80):
        t0 = time.perf_counter()
        op = HessianOperator(obj)
        res = lanczos_eigen(op, k=k, tol=1e-12, max_products=m)
        sec = time.perf_counter() - t0
        errs = [abs(float(v) - r) / abs(r) for v, r in zip(res.eigenvalues, lam_ref, strict=True)]
        if max(errs) <= TARGET:
            return m, sec
    return math.nan, math.nan


def ours_default(obj, lam_ref, k, **kwargs):
    t0 = time.perf_counter()
    op = HessianOperator(obj)
    res = lanczos_eigen(op, k=k, tol=1e-3, **kwargs)
    sec = time.perf_counter() - t0
    err = max(abs(float(v) - r) / abs(r) for v, r in zip(res.eigenvalues, lam_ref, strict=True))
    return {"products": res.products, "seconds": sec, "rel_err": err, "converged": res.converged}


def top5_checkpoints(specs) -> None:
    """Figure 2 on several checkpoints: products for the top 5, ours and PyHessian's.

    Products only (no timings): the smallest Lanczos run with all five within 1e-3
    ("reach", an oracle stop), ``lanczos_eigen(k=5, tol=1e-3)`` with each stopping rule
    and PyHessian's ``eigenvalues(top_n=5, tol=1e-3)``, each with its largest relative
    error over the five.
    """
    print("\n== top-5 eigenvalues on several checkpoints (products; largest error of the five) ==")
    print(
        f"{'steps':>5} {'seed':>4} {'top-6 eigenvalues':<44} | {'reach':>5} | "
        f"{'residual':>14} | {'eigval':>14} | {'pyhessian':>14}"
    )
    reach, residual, eigval = [], [], []
    for steps, seed in specs:
        model, x, y, obj, ref = reference_problem(steps, seed, k=6)
        lam = [float(v) for v in ref.eigenvalues]
        reach.append(ours_reach(obj, lam[:5], 5)[0])
        rows = [
            ours_default(obj, lam[:5], 5),
            ours_default(obj, lam[:5], 5, criterion="eigenvalue"),
        ]
        residual.append(rows[0]["products"])
        eigval.append(rows[1]["products"])
        rows.append(pyhessian_top(model, x, y, 5, lam[:5]))
        cells = " | ".join(f"{r['products']:>4d} p {r['rel_err']:>7.1e}" for r in rows)
        print(
            f"{steps:>5} {seed:>4} {' '.join(f'{v:.4g}' for v in lam):<44} | "
            f"{reach[-1]:>5} | {cells}"
        )
    for name, counts in (("reach", reach), ("residual", residual), ("eigval", eigval)):
        print(
            f"top-5 products, {name}: median {median(counts):.0f}, range "
            f"{min(counts)}-{max(counts)}, at most 15 on {sum(c <= 15 for c in counts)} of "
            f"{len(counts)}"
        )


def top_eigenvalue_checkpoints(specs, repeats):
    """Figure 1 on several checkpoints: ours and PyHessian, each by its own stopping rule.

    The gap λ2/λ1 decides how fast power iteration converges, so one checkpoint says
    little: each ``(steps, seed)`` in ``specs`` is one (:func:`make_problem`).  Per checkpoint
    and repeat, interleaved: our ``lanczos_eigen(tol=1e-3)`` with the residual rule
    (``‖Hv − λv‖ ≤ 1e-3·λ``, the default) and with ``criterion="eigenvalue"``,
    PyHessian's ``eigenvalues(tol=1e-3)``, and our smallest run that is within 1e-3.
    The time ratios are ours / PyHessian (own rules), at our (better) accuracy.  A second
    PyHessian run (``tol=1e-7``) gives the time at which its estimate first comes within
    1e-3 of λ1 ("pyh reach": an oracle stop, which its own rule, stopping on a relative
    change below 1e-3, misses in both directions).
    """
    print("\n== top eigenvalue on several checkpoints (each tool's own stopping rule) ==")
    print(
        f"{'steps':>5} {'seed':>4} {'lambda1':>8} {'l2/l1':>6} | {'residual':>8} {'s':>6} "
        f"{'err':>8} | {'eigval':>6} {'s':>6} {'err':>8} | {'pyh p':>5} {'s':>6} {'err':>8} | "
        f"{'ours reach 1e-3':>15} | {'pyh reach':>11} | {'ratios':>15}"
    )
    ratios, ev_ratios, reach_ratios, ph_reach_ratios = [], [], [], []
    for steps, seed in specs:
        model, x, y, obj, ref = reference_problem(steps, seed, k=2)
        lam = [float(v) for v in ref.eigenvalues]
        ours, ev, ph, reach, ph_reach = [], [], [], [], []
        for _ in range(repeats):
            ours.append(ours_default(obj, lam[:1], 1))
            ev.append(ours_default(obj, lam[:1], 1, criterion="eigenvalue"))
            ph.append(pyhessian_top(model, x, y, 1, lam[:1]))
            reach.append(ours_reach(obj, lam[:1], 1))
            ph_reach.append(pyhessian_top(model, x, y, 1, lam[:1], tol=1e-7, max_iter=40)["reach"])

        def med(rows, field):
            return median([r[field] for r in rows])

        def ratio(rows, ph=ph):
            return median([o["seconds"] / p["seconds"] for o, p in zip(rows, ph, strict=True)])

        ratios.append(ratio(ours))
        ev_ratios.append(ratio(ev))
        reach_ratios.append(median([r[1] / p["seconds"] for r, p in zip(reach, ph, strict=True)]))
        ph_reach = [r if r is not None else (math.nan, math.nan) for r in ph_reach]
        ph_reach_ratios.append(
            median([o["seconds"] / r[1] for o, r in zip(ev, ph_reach, strict=True)])
        )
        print(
            f"{steps:>5} {seed:>4} {lam[0]:>8.4g} {lam[1] / lam[0]:>6.3f} | "
            f"{med(ours, 'products'):>8.0f} {med(ours, 'seconds'):>6.3f} "
            f"{med(ours, 'rel_err'):>8.1e} | {med(ev, 'products'):>6.0f} "
            f"{med(ev, 'seconds'):>6.3f} {med(ev, 'rel_err'):>8.1e} | "
            f"{med(ph, 'products'):>5.0f} {med(ph, 'seconds'):>6.3f} {med(ph, 'rel_err'):>8.1e} | "
            f"{median([m for m, _ in reach]):>4.0f} p {median([t for _, t in reach]):>6.3f} s | "
            f"{median([m for m, _ in ph_reach]):>2.0f} p "
            f"{median([t for _, t in ph_reach]):>5.3f} | "
            f"{ratios[-1]:>4.2f} {ev_ratios[-1]:>4.2f} {ph_reach_ratios[-1]:>4.2f}"
        )
    for name, rs in (
        ("residual rule", ratios),
        ('criterion="eigenvalue"', ev_ratios),
        ("smallest run within 1e-3", reach_ratios),
    ):
        print(
            f"time ratio ours ({name}) / pyhessian (own rule): median {median(rs):.2f}, "
            f"range {min(rs):.2f}-{max(rs):.2f}"
        )
    print(
        'time ratio ours (criterion="eigenvalue") / pyhessian (first within 1e-3, oracle): '
        f"median {median(ph_reach_ratios):.2f}, range {min(ph_reach_ratios):.2f}-"
        f"{max(ph_reach_ratios):.2f}"
    )


def peak_bytes(fn) -> int:
    """Peak of CPU allocations minus frees while ``fn`` runs (torch profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(prof.events(), key=lambda e: e.time_range.start)
    cur = peak = 0
    for e in events:
        cur += e.self_cpu_memory_usage
        peak = max(peak, cur)
    return peak


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--checkpoints",
        default="300:0,300:1,1000:0,1000:1,3000:0,3000:1",
        help="training steps:seed of the checkpoints for the top-eigenvalue table",
    )
    parser.add_argument(
        "--store-checkpoints",
        action="store_true",
        help="train the --checkpoints, store them in benchmarks/checkpoints and stop",
    )
    args = parser.parse_args()
    quiet(args.threads)
    specs = [tuple(int(t) for t in spec.split(":")) for spec in args.checkpoints.split(",")]
    if args.store_checkpoints:
        store_checkpoints(specs)
        return

    model, x, y = make_problem()
    obj = Objective(model, (x, y), batch_size=256)
    dim = sum(p.numel() for p in model.parameters())
    print(f"small CNN: {dim} parameters, batch {x.shape[0]}, threads {args.threads}")

    ref = lanczos_eigen(HessianOperator(obj, dtype=torch.float64), k=5, tol=1e-10, max_products=300)
    lam = [float(v) for v in ref.eigenvalues]
    tr_ref = exact_trace(model, x, y)
    print(
        f"reference top-5 (float64 Lanczos, {ref.products} products, max residual "
        f"{float(ref.residuals.max()):.1e}, converged {ref.converged}): "
        + ", ".join(f"{v:.6g}" for v in lam)
    )
    print(f"reference trace (exact, per-sample Jacobians): {tr_ref:.6g}")

    # 1-2. eigenvalues ------------------------------------------------------------
    rows: dict[str, list] = {
        k: [] for k in ("ours1", "ours1d", "ph1", "cl1", "ours5", "ours5d", "ph5", "cl5")
    }
    for _ in range(args.repeats):
        rows["ours1"].append(ours_reach(obj, lam[:1], 1))
        rows["ours1d"].append(ours_default(obj, lam[:1], 1))
        rows["ph1"].append(pyhessian_top(model, x, y, 1, lam[:1]))
        rows["cl1"].append(curvlinops_eigsh(model, x, y, 1, lam[:1]))
        rows["ours5"].append(ours_reach(obj, lam, 5))
        rows["ours5d"].append(ours_default(obj, lam, 5))
        rows["ph5"].append(pyhessian_top(model, x, y, 5, lam))
        rows["cl5"].append(curvlinops_eigsh(model, x, y, 5, lam))

    def med(key, field):
        return median([r[field] for r in rows[key]])

    ours_sec = median([s for _, s in rows["ours1"]])
    ph_reach = [r["reach"] for r in rows["ph1"] if r["reach"] is not None]
    ph_sec = median([s for _, s in ph_reach]) if ph_reach else math.nan
    print("\n== top eigenvalue: products and seconds to 1e-3 relative error ==")
    print(
        f"ours (Lanczos)          : {median([m for m, _ in rows['ours1']]):.0f} products, "
        f"{ours_sec:.3f} s"
    )
    if ph_reach:
        print(
            f"pyhessian (power iter.) : {median([m for m, _ in ph_reach]):.0f} products, "
            f"{ph_sec:.3f} s   -> time ratio ours/pyhessian {ours_sec / ph_sec:.2f}"
        )
    else:
        print("pyhessian (power iter.) : did not reach 1e-3 within its run")
    print("== top eigenvalue: each tool's own stopping rule ==")
    print(
        f"ours lanczos_eigen(tol=1e-3)     : {med('ours1d', 'products'):.0f} products, "
        f"{med('ours1d', 'seconds'):.3f} s, rel. error {med('ours1d', 'rel_err'):.1e}"
    )
    print(
        f"pyhessian eigenvalues(tol=1e-3)  : {med('ph1', 'products'):.0f} products, "
        f"{med('ph1', 'seconds'):.3f} s, rel. error {med('ph1', 'rel_err'):.1e}"
    )
    print(
        f"curvlinops + scipy eigsh (k=1)   : {med('cl1', 'products'):.0f} products, "
        f"{med('cl1', 'seconds'):.3f} s, rel. error {med('cl1', 'rel_err'):.1e}"
    )
    print("== top-5 eigenvalues ==")
    print(
        f"ours to 1e-3 on all five         : {median([m for m, _ in rows['ours5']]):.0f} products"
    )
    print(
        f"ours lanczos_eigen(k=5, tol=1e-3): {med('ours5d', 'products'):.0f} products, "
        f"{med('ours5d', 'seconds'):.3f} s, max rel. error {med('ours5d', 'rel_err'):.1e}"
    )
    print(
        f"pyhessian top_n=5 (tol=1e-3)     : {med('ph5', 'products'):.0f} products, "
        f"{med('ph5', 'seconds'):.3f} s, max rel. error {med('ph5', 'rel_err'):.1e}"
    )
    print(
        f"curvlinops + scipy eigsh (k=5)   : {med('cl5', 'products'):.0f} products, "
        f"{med('cl5', 'seconds'):.3f} s, max rel. error {med('cl5', 'rel_err'):.1e}"
    )

    top_eigenvalue_checkpoints(specs, args.repeats)
    top5_checkpoints(specs)

    # 3. traces ---------------------------------------------------------------------
    op = HessianOperator(obj)
    print(f"\n== trace: relative RMSE at 60 products over {args.seeds} seeds ==")
    ours = {
        "hutchinson": lambda s: hutchinson_trace(op, 60, seed=s),
        "hutch++ (rademacher sketch)": lambda s: hutchpp_trace(op, 60, seed=s),
        "hutch++ (lanczos sketch)": lambda s: hutchpp_trace(op, 60, seed=s, sketch="lanczos"),
        "block_trace (per layer)": lambda s: block_trace(op, 60, seed=s),
    }
    for name, fn in ours.items():
        res = [fn(s) for s in range(args.seeds)]
        errs = [(r.value - tr_ref) / tr_ref for r in res]
        ses = [r.stderr / tr_ref for r in res]
        print(
            f"ours {name:<27}: {100 * np.sqrt(np.mean(np.square(errs))):.2f} % "
            f"(median reported rel. stderr {100 * median(ses):.2f} %)"
        )
    # the Gauss-Newton split: its per-sample part is not counted in products, so its cost
    # is stated in seconds and in products' worth of time (one product timed alongside)
    probe = torch.randn(dim)
    for label, kwargs in (("exact G", {}), ("output_probes=2", {"output_probes": 2})):
        errs, secs, prods, per_product = [], [], [], []
        for s in range(args.seeds):
            t0 = time.perf_counter()
            res = ggn_trace(op, 60, seed=s, **kwargs)
            secs.append(time.perf_counter() - t0)
            prods.append(res.products)
            errs.append((res.value - tr_ref) / tr_ref)
            per_product.append(median(interleaved({"p": lambda: op.matvec(probe)}, repeats=3)["p"]))
        cost = median(secs) / median(per_product)
        print(
            f"ours ggn_trace ({label:<15}): {100 * np.sqrt(np.mean(np.square(errs))):.2g} % "
            f"(max {100 * max(abs(e) for e in errs):.2g} %), {median(prods):.0f} products + "
            f"per-sample part; {median(secs):.3f} s = {cost:.1f} products of time"
        )
    for name, rmse in curvlinops_traces(model, x, y, tr_ref, args.seeds, 60).items():
        print(f"curvlinops {name:<21}: {100 * rmse:.2f} %")
    pt = pyhessian_trace(model, x, y, tr_ref)
    print(
        f"pyhessian trace() defaults: {pt['products']} products, {100 * pt['rel_err']:.2f} % error"
    )

    # 4. memory ---------------------------------------------------------------------
    v = torch.randn(dim)
    grad_peak = median([peak_bytes(lambda: obj.gradient()) for _ in range(3)])
    fresh = HessianOperator(obj)
    first_peak = peak_bytes(lambda: fresh.matvec(v))
    next_peak = median([peak_bytes(lambda: fresh.matvec(v)) for _ in range(3)])
    multi = HessianOperator(obj, reuse_graph=False)
    multi_peak = median([peak_bytes(lambda: multi.matvec(v)) for _ in range(3)])
    fwd = HessianOperator(obj, method="forward")
    fwd_peak = median([peak_bytes(lambda: fwd.matvec(v)) for _ in range(3)])
    fd = HessianOperator(obj, method="fd", fd_check="never")
    fd_peak = median([peak_bytes(lambda: fd.matvec(v)) for _ in range(3)])
    mb = 2.0**20
    print("\n== peak extra memory (CPU allocations during the call) ==")
    print(f"one gradient                        : {grad_peak / mb:.1f} MiB")
    print(
        f"one product, first (builds graph)   : {first_peak / mb:.1f} MiB "
        f"({first_peak / grad_peak:.2f}x gradient; graph kept for reuse)"
    )
    print(
        f"one product, next (reused graph)    : {next_peak / mb:.1f} MiB "
        f"({next_peak / grad_peak:.2f}x gradient)"
    )
    print(
        f"one product, recomputed graph       : {multi_peak / mb:.1f} MiB "
        f"({multi_peak / grad_peak:.2f}x gradient)"
    )
    print(
        f"one product, forward-over-reverse   : {fwd_peak / mb:.1f} MiB "
        f"({fwd_peak / grad_peak:.2f}x gradient)"
    )
    print(
        f"one product, finite differences     : {fd_peak / mb:.1f} MiB "
        f"({fd_peak / grad_peak:.2f}x gradient)"
    )

    # 5. cost per product -----------------------------------------------------------
    times = interleaved(
        {
            "gradient": lambda: obj.gradient(),
            "reused graph": lambda: fresh.matvec(v),
            "recomputed graph": lambda: multi.matvec(v),
            "forward-over-reverse": lambda: fwd.matvec(v),
            "finite differences": lambda: fd.matvec(v),
        },
        repeats=max(5, 2 * args.repeats),
    )
    ratios = ratio_to(times, "gradient")
    print("\n== seconds per product / seconds per gradient (median of interleaved repeats) ==")
    for name, r in ratios.items():
        if name != "gradient":
            print(f"{name:<22}: {r:.2f}x  ({median(times[name]) * 1e3:.1f} ms)")
    for _ in range(3):  # method="auto" on the same data in four batches of 64, thrice
        auto = HessianOperator(Objective(model, (x, y), batch_size=64), method="auto")
        auto.matvec(v)
        sec = auto.method_seconds
        print(
            f"method='auto', 4 batches of 64: {auto.method} (its first two batches both ways: "
            f"exact {1e3 * sec['exact']:.1f} ms, forward {1e3 * sec['forward']:.1f} ms)"
        )

    # 6. per-layer eigenvalues ------------------------------------------------------
    layer_products(obj, max(5, 2 * args.repeats))


def layer_products(obj, repeats):
    """Figure 6: a product of each layer's diagonal block, and ``layer_eigenvalues``.

    A block product on the operator restricted to the block's parameters (autograd prunes
    the double backward to the layers between the block and the loss) against a full
    product, interleaved; then ``layer_eigenvalues`` to 1e-3 against ``lanczos_eigen`` on
    the whole Hessian (each timed from a fresh operator, graph builds included).
    """
    full = HessianOperator(obj)
    v = full.random_vector(torch.Generator().manual_seed(0))
    candidates = {"full": lambda: full.matvec(v)}
    dims = {}
    for name, names in block_param_names(full, "module"):
        op = HessianOperator(obj, params=names)
        u = op.random_vector(torch.Generator().manual_seed(0))
        candidates[name] = lambda op=op, u=u: op.matvec(u)
        dims[name] = op.dim
    times = interleaved(candidates, repeats=repeats)
    print("\n== per-layer blocks: seconds per product (restricted operator, median) ==")
    for name, ts in times.items():
        dim = full.dim if name == "full" else dims[name]
        print(f"{name:<12} {dim:>7} parameters: {1e3 * median(ts):6.2f} ms")
    runs = {"layers": [], "whole": []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        res = layer_eigenvalues(HessianOperator(obj), tol=1e-3, progress=False)
        runs["layers"].append((res.products, time.perf_counter() - t0))
        t0 = time.perf_counter()
        whole = lanczos_eigen(HessianOperator(obj), tol=1e-3)
        runs["whole"].append((whole.products, time.perf_counter() - t0))
    for label, key in (
        ("layer_eigenvalues, every layer", "layers"),
        ("lanczos_eigen, whole", "whole"),
    ):
        prods = median([n for n, _ in runs[key]])
        secs = median([t for _, t in runs[key]])
        print(f"{label:<31}: {prods:.0f} products, {secs:.3f} s (tol 1e-3, residual rule)")


if __name__ == "__main__":
    main()
