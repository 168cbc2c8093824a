"""Top eigenvalue along a training run: which Lanczos start and stopping rule are safe.

    .venv/bin/python benchmarks/lanczos_trajectory.py [--first 500] [--last 1500] [--every 50]

The small CNN of ``benchmarks/hessian.py`` (105,226 parameters, digits at 16×16, SGD
with momentum, batch 64) is trained once; every ``--every`` steps from ``--first`` to
``--last`` the Hessian of the cross-entropy on the same batch of 256 is measured:
the reference λ1 by float64 Lanczos to a 1e-10 residual, then ``lanczos_eigen(tol=1e-3)``
from each start (``v0="random"``, ``"gradient"``: the unit gradient plus a unit random
vector) with each stopping rule (``criterion="residual"``, ``"eigenvalue"``), and
PyHessian's ``eigenvalues(tol=1e-3)``.  Printed per checkpoint: products and relative
error of each, the cosines of the gradient with the top two eigenvectors; then the
total products and seconds (each run from a fresh operator, its graph build included,
as PyHessian's constructor builds its own) and every run whose error exceeds the 1e-3 it
was asked for.

A start vector leaning towards the *second* eigenvector (a gradient does, when the top
two eigenvalues are close and training oscillates along the second) lets Lanczos settle
on λ2 for several steps: a stopping rule judged on those steps returns λ2.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hessian import TARGET, pyhessian_top, quiet, train_snapshots

from landscape.hessian import HessianOperator, lanczos_eigen
from landscape.objective import Objective

RUNS = [(v0, crit) for v0 in ("random", "gradient") for crit in ("residual", "eigenvalue")]


def _flat(vectors):
    return torch.cat([t.detach().flatten() for t in vectors])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--first", type=int, default=500)
    parser.add_argument("--last", type=int, default=1500)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)
    snaps, x, y = train_snapshots(list(range(args.first, args.last + 1, args.every)))
    names = [f"{v0}/{crit}" for v0, crit in RUNS] + ["pyhessian"]
    print(f"{len(snaps)} checkpoints, steps {args.first}..{args.last} every {args.every}")
    print(
        f"{'step':>5} {'lambda1':>8} {'l2/l1':>6} {'cos(g,x1)':>9} {'cos(g,x2)':>9} | "
        + " | ".join(f"{n:>19}" for n in names)
    )
    totals = {n: 0 for n in names}
    seconds = {n: 0.0 for n in names}
    bad: list[str] = []
    for step, model in snaps:
        obj = Objective(model, (x, y), batch_size=256)
        ref = lanczos_eigen(
            HessianOperator(obj, dtype=torch.float64), k=2, tol=1e-10, max_products=300
        )
        lam = [float(v) for v in ref.eigenvalues]
        op = HessianOperator(obj)
        grad = op.to_flat(op.gradient()).double()
        cos = [float((grad @ _flat(v)).abs() / grad.norm()) for v in ref.eigenvectors]
        cells = []
        for (v0, crit), name in zip(RUNS, names, strict=False):
            t0 = time.perf_counter()  # a fresh operator: its graph build counts, as PyHessian's
            res = lanczos_eigen(HessianOperator(obj), tol=TARGET, criterion=crit, v0=v0)
            seconds[name] += time.perf_counter() - t0
            err = abs(float(res.eigenvalues[0]) - lam[0]) / lam[0]
            totals[name] += res.products
            cells.append(f"{res.products:>3} p {err:>8.1e}")
            if err > TARGET:
                bad.append(
                    f"step {step}: {name} returned {float(res.eigenvalues[0]):.4g} "
                    f"(λ1 {lam[0]:.4g}, λ2 {lam[1]:.4g}) after {res.products} products"
                )
        ph = pyhessian_top(model, x, y, 1, lam[:1])
        totals["pyhessian"] += ph["products"]
        seconds["pyhessian"] += ph["seconds"]
        cells.append(f"{ph['products']:>3} p {ph['rel_err']:>8.1e}")
        print(
            f"{step:>5} {lam[0]:>8.4g} {lam[1] / lam[0]:>6.3f} {cos[0]:>9.3f} {cos[1]:>9.3f} | "
            + " | ".join(f"{c:>19}" for c in cells),
            flush=True,
        )
    print("total products: " + ", ".join(f"{n} {t}" for n, t in totals.items()))
    print(
        "total seconds (ratio to pyhessian): "
        + ", ".join(f"{n} {t:.2f} ({t / seconds['pyhessian']:.2f})" for n, t in seconds.items())
    )
    print(f"runs with relative error above {TARGET:g} ({len(bad)}):")
    for line in bad:
        print("  " + line)


if __name__ == "__main__":
    main()
