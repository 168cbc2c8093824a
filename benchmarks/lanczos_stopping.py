"""Lanczos stopping rules judged on the same runs: products used and the error they leave.

    .venv/bin/python benchmarks/lanczos_stopping.py [--checkpoints 300:0,...] [--seeds 3]

On each checkpoint of ``benchmarks/hessian.py`` (stored in ``benchmarks/checkpoints``)
and each start seed, one Lanczos run of ``--max-products`` products records the Ritz
values and residuals after every product; each stopping rule is then applied to that
history for the top ``k`` (1 and 5) at ``tol=1e-3``: the first product at which it
would stop, and the largest true relative error of the ``k`` Ritz values there (against
float64 Lanczos to a 1e-10 residual). The rules:

- ``residual``: ``‖Hv − λv‖ ≤ tol·|λ|`` (``lanczos_eigen``'s default);
- ``eigenvalue``: ``min(r, r²/gap) ≤ tol·|λ|``, gap to the nearest other Ritz value
  (``criterion="eigenvalue"``);
- ``eigenvalue, gap less the neighbour's residual``: the same with each neighbour moved
  towards the Ritz value by its own residual (an eigenvalue lies within ``r_j`` of
  ``θ_j``), a more cautious variant that is not in the library.

Every rule reads the same runs, so products compare directly; the estimates come from
the library's own ``error_estimates``. The first column is no rule but the answer: the
first product after which all ``k`` are within ``tol`` (what an oracle would stop on).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hessian import TARGET, quiet, reference_problem

from landscape.hessian import HessianOperator
from landscape.hessian._krylov import lanczos_run, ritz
from landscape.hessian.eigen.lanczos import error_estimates
from landscape.objective import Objective


def _cautious(values: np.ndarray, res: np.ndarray) -> np.ndarray:
    """``min(r, r²/gap)`` with each neighbour's distance reduced by that neighbour's residual."""
    below = np.concatenate([[np.inf], np.diff(values) - res[:-1]])
    above = np.concatenate([np.diff(values) - res[1:], [np.inf]])
    gap = np.maximum(np.minimum(below, above), 0.0)
    with np.errstate(divide="ignore"):
        return np.minimum(res, np.where(gap > 0, res**2 / gap, np.inf))


RULES = {
    "residual": lambda v, r: error_estimates(v, r, "residual"),
    "eigenvalue": lambda v, r: error_estimates(v, r, "eigenvalue"),
    "eigenvalue, gap less the neighbour's residual": _cautious,
}


def history(obj: Objective, seed: int, products: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Ritz values (ascending) and residuals after each product of one Lanczos run."""
    op = HessianOperator(obj)
    gen = torch.Generator().manual_seed(seed)
    steps: list[tuple[np.ndarray, np.ndarray]] = []

    def record(state) -> bool:
        values, _, res = ritz(state)
        steps.append((values.copy(), res.copy()))
        return state.steps >= products

    start = op.random_vector(gen)
    lanczos_run(
        op.matvec,
        start / torch.linalg.vector_norm(start),
        products,
        new_start=lambda: op.random_vector(gen),
        stop=record,
        progress=False,
        desc="lanczos",
    )
    op.close()
    return steps


def oracle(lam: np.ndarray):
    """A "rule" that knows the answer: it holds once the top ``len(lam)`` are within ``tol``."""

    def rule(values: np.ndarray, res: np.ndarray) -> np.ndarray:
        est = np.full(values.shape, np.inf)
        idx = np.arange(len(values))[::-1][: len(lam)]
        # |θ − λ|/|λ| ≤ tol  ⇔  |θ − λ|·|θ|/|λ| ≤ tol·|θ|, the form first_stop compares
        est[idx] = np.abs(values[idx] - lam) * np.abs(values[idx]) / np.abs(lam)
        return est

    return rule


def first_stop(steps, lam: np.ndarray, k: int, rule) -> tuple[int, float]:
    """Products at which ``rule`` first holds for the top ``k``, and the true error there."""
    for m, (values, res) in enumerate(steps, start=1):
        if m < k + 1:
            continue
        idx = np.arange(len(values))[::-1][:k]
        if np.all(rule(values, res)[idx] <= TARGET * np.abs(values[idx])):
            return m, float(np.max(np.abs(values[idx] - lam) / np.abs(lam)))
    return len(steps), float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", default="300:0,300:1,1000:0,1000:1,3000:0,3000:1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-products", type=int, default=30)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    quiet(args.threads)
    print(f"tol {TARGET}, {args.seeds} start seeds per checkpoint, runs of {args.max_products}")
    names = ["first within tol (oracle)", *RULES]
    results = {(k, name): [] for k in (1, 5) for name in names}
    for spec in args.checkpoints.split(","):
        steps_, ckpt_seed = (int(t) for t in spec.split(":"))
        _, _, _, obj, ref = reference_problem(steps_, ckpt_seed, k=5)
        lam = ref.eigenvalues.numpy()
        for seed in range(args.seeds):
            runs = history(obj, seed, args.max_products)
            cells = []
            for k in (1, 5):
                for name, rule in [(names[0], oracle(lam[:k])), *RULES.items()]:
                    m, err = first_stop(runs, lam[:k], k, rule)
                    results[k, name].append((m, err))
                    cells.append(f"{m:>2d} p {err:.1e}")
            print(f"{steps_:>5}/{ckpt_seed} seed {seed}: " + " | ".join(cells))
    print("columns: k=1 then k=5, each rule in turn: " + "; ".join(names))
    for (k, name), rows in results.items():
        products = [m for m, _ in rows]
        errors = [e for _, e in rows]
        over = sum(not e <= TARGET for e in errors)
        print(
            f"k={k} {name:<46}: {sum(products):>4d} products (median {np.median(products):.0f}),"
            f" largest error {max(errors):.1e}, {over} of {len(rows)} above {TARGET}"
        )


if __name__ == "__main__":
    main()
