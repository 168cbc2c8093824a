"""Coverage of the stochastic estimators' 95 % intervals against dense float64 truth.

    .venv/bin/python benchmarks/coverage.py [--quick] [--seeds 200] [--first-seed 0]
                                           [--estimators block ...] [--models relu ...]
                                           [--block-allocation pilot|size]
                                           [--fd] [--simulate N]

Three small models the tests never use, each with its exact float64 Hessian
(``op.to_dense()``): a tanh MLP with MSE (d = 484), a GELU/average-pool conv net with
cross-entropy (d = 337) and a ReLU MLP trained 200 steps of SGD with momentum (d = 1,219,
loss 1e-3). For every seed each estimator runs on the float64 operator and its
``result.interval(0.95)`` is checked against the exact trace; the table gives the share
of intervals that contain it (nominal 95 %; with 200 seeds a coverage of 95 % reads
with a binomial standard error of 1.5 points).

The exact-product estimators (Hutchinson, Hutch++, block, SLQ) multiply by the dense
Hessian, which gives the same products as the operator to rounding and is much faster;
the finite-difference trace (``fd_trace``, the loss form, float64, every probe checked,
10 probes) and ``ggn_trace`` run on the model itself. Each cell also gives the median
half-width of the interval relative to the exact trace. A second table gives the same
estimates with the symmetric Student-``t`` interval (``interval(0.95, skew=False)``), the
default before the skewness correction.

``--estimators`` and ``--models`` keep the columns and rows whose names contain one of
the given words (case-insensitive), e.g. ``--estimators block --models relu``;
``--block-allocation size`` runs ``block_trace`` with its former split (products ∝ √size
per block) instead of the pilot split.

``--simulate N`` gives instead the coverage of Hutchinson's estimate with 5, 10 and 30
probes over N simulated estimates per cell (probes drawn with the dense Hessian): the
precise figure behind the SLQ (5 runs) and fd (10 probes) cells.

``--fd`` prints instead the finite-difference trace of each model before and after the
checks, in float64 and float32 (one seed, 100 probes), against the exact trace.
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from landscape.hessian import (
    HessianOperator,
    block_trace,
    fd_trace,
    ggn_trace,
    hutchinson_trace,
    hutchpp_trace,
    slq_density,
)
from landscape.objective import Objective

BUDGET = 30  # products per estimate
BLOCK_OPTIONS: dict[str, str] = {}  # block_trace keywords (--block-allocation)
FD_PROBES = 10  # probes of the finite-difference trace (each costs 2 forwards + 2 gradients)


def _mse(out: Tensor, y: Tensor) -> Tensor:
    return ((out - y) ** 2).mean()


class _ConvNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.fc = nn.Linear(6 * 2 * 2, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = F.avg_pool2d(F.gelu(self.c1(x)), 2)
        x = F.avg_pool2d(F.gelu(self.c2(x)), 2)
        return self.fc(x.flatten(1))


def tanh_mlp() -> Objective:
    """A tanh MLP 8-16-16-4 with MSE on 64 random regression targets (d = 484)."""
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)
    )
    x, y = torch.randn(64, 8, generator=g), torch.randn(64, 4, generator=g)
    return Objective(model, (x, y), _mse)


def gelu_conv() -> Objective:
    """Two 3×3 convolutions with GELU and 2×2 average pooling, 48 8×8 images (d = 337)."""
    g = torch.Generator().manual_seed(1)
    torch.manual_seed(1)
    x = torch.randn(48, 1, 8, 8, generator=g)
    y = torch.randint(0, 3, (48,), generator=g)
    return Objective(_ConvNet(), (x, y), F.cross_entropy)


def relu_mlp(steps: int = 200) -> Objective:
    """A ReLU MLP 10-32-24-3 trained ``steps`` steps on 128 samples (d = 1,219)."""
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 24), nn.ReLU(), nn.Linear(24, 3)
    )
    x = torch.randn(128, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g) + 0.5 * torch.randn(128, 3, generator=g)).argmax(1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(steps):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return Objective(model, (x, y), F.cross_entropy)


MODELS = {
    "tanh MLP + MSE": tanh_mlp,
    "GELU/avg-pool conv": gelu_conv,
    "ReLU MLP, trained": relu_mlp,
}


class DenseOperator(HessianOperator):
    """The operator's layout and blocks, with products by a precomputed dense Hessian."""

    def __init__(self, objective: Objective, dense: Tensor) -> None:
        super().__init__(objective, dtype=torch.float64)
        self.dense = dense

    def matvec(self, v: Tensor | np.ndarray) -> Tensor:
        self.products += 1
        return self.dense @ torch.as_tensor(v, dtype=torch.float64)


def _slq(op: HessianOperator, seed: int) -> object:
    return slq_density(op, num_runs=5, num_steps=6, seed=seed, progress=False).trace_estimate()


ESTIMATORS = {
    "Hutchinson": lambda op, obj, s: hutchinson_trace(op, BUDGET, seed=s, progress=False),
    "Hutch++": lambda op, obj, s: hutchpp_trace(op, BUDGET, seed=s, progress=False),
    "block (Hutch++)": lambda op, obj, s: block_trace(
        op, BUDGET, seed=s, progress=False, **BLOCK_OPTIONS
    ),
    "fd (loss form)": lambda op, obj, s: fd_trace(
        obj, num_probes=FD_PROBES, seed=s, dtype=torch.float64, progress=False
    ),
    "GGN": lambda op, obj, s: ggn_trace(obj.hessian64, BUDGET, seed=s, progress=False),
    "SLQ (5 runs)": lambda op, obj, s: _slq(op, s),
}


def _cell(hits: int, widths: list[float], seeds: int, unverified: int) -> str:
    cell = f"{100 * hits / seeds:.1f} % (±{100 * float(np.median(widths)):.0f} %)"
    return cell + (f" [{unverified} unverified]" if unverified else "")


def _matching(names: list[str], words: list[str] | None, what: str) -> list[str]:
    """The names containing one of ``words`` (case-insensitive); all of them for ``None``."""
    if not words:
        return names
    kept = [n for n in names if any(w.lower() in n.lower() for w in words)]
    if not kept:
        raise SystemExit(f"no {what} matches {words}; choose from {names}")
    return kept


def coverage(
    seeds: int,
    first_seed: int = 0,
    estimators: list[str] | None = None,
    models: list[str] | None = None,
) -> None:
    """The table of coverages (and of the median relative half-width).

    Then the relative RMS error of each cell's estimates, and the same results with the
    symmetric Student-``t`` interval (``skew=False``).
    ``estimators`` / ``models``: only the columns / rows whose names contain one of
    these words.
    """
    torch.set_num_threads(1)
    names = _matching(list(ESTIMATORS), estimators, "estimator")
    rows, t_rows, t_table, errors = [], [], [], []
    start = time.perf_counter()
    for label in _matching(list(MODELS), models, "model"):
        make = MODELS[label]
        obj = make()
        exact_op = HessianOperator(obj, dtype=torch.float64)
        dense = exact_op.to_dense()
        exact = float(dense.trace())
        obj.hessian64 = exact_op  # ggn_trace on the float64 twin, built once
        op = DenseOperator(obj, dense)
        row = [label, f"{op.dim:,}", f"{exact:.4g}"]
        t_row = list(row)
        slack = 1e-9 * abs(exact)  # an exact value (zero width) off by rounding
        for name in names:
            hits = {True: 0, False: 0}
            widths: dict[bool, list[float]] = {True: [], False: []}
            unverified = 0
            values = []
            for seed in range(first_seed, first_seed + seeds):
                res = ESTIMATORS[name](op, obj, seed)
                values.append(res.value)
                for skew in (True, False):
                    lo, hi = res.interval(0.95, skew=skew)
                    hits[skew] += lo - slack <= exact <= hi + slack
                    widths[skew].append((hi - lo) / 2 / abs(exact))
                unverified += res.info.get("unverified", 0)
            rows.append((label, name, hits[True] / seeds))
            rmse = float(np.sqrt(np.mean((np.asarray(values) - exact) ** 2))) / abs(exact)
            errors.append(f"{name} on {label}: {100 * rmse:.2f} %")
            t_rows.append((label, name, hits[False] / seeds))
            row.append(_cell(hits[True], widths[True], seeds, unverified))
            t_row.append(_cell(hits[False], widths[False], seeds, unverified))
        print("| " + " | ".join(row) + " |", flush=True)
        t_table.append("| " + " | ".join(t_row) + " |")
    print(f"\nseeds {first_seed}..{first_seed + seeds - 1}, {time.perf_counter() - start:.0f} s")
    print("relative RMS error of the estimates: " + "; ".join(errors))
    for m, n, c in rows:
        if not 0.93 <= c <= 0.97:
            print(f"outside 93-97 %: {n} on {m}: {100 * c:.1f} %")
    print("\nThe same estimates, symmetric Student-t interval (interval(skew=False)):\n")
    print("\n".join(t_table))
    for m, n, c in t_rows:
        if not 0.93 <= c <= 0.97:
            print(f"outside 93-97 % (t): {n} on {m}: {100 * c:.1f} %")


def fd_table(probes: int = 100) -> None:
    """``fd_trace`` before (the old steps, no check) and after, on each model."""
    torch.set_num_threads(1)
    old_steps = {("loss", torch.float64): 1e-3, ("loss", torch.float32): 1e-1}
    old_steps |= {("gradient", torch.float64): 1e-6, ("gradient", torch.float32): 1e-4}
    print("| model | exact | dtype | form | before (old step, unchecked) | after | unverified |")
    print("|---|---|---|---|---|---|---|")
    for label, make in MODELS.items():
        obj = make()
        exact = float(HessianOperator(obj, dtype=torch.float64).to_dense().trace())
        for dtype in (torch.float64, torch.float32):
            for form in ("loss", "gradient"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    old = fd_trace(
                        obj,
                        old_steps[form, dtype],
                        probes,
                        form=form,
                        dtype=dtype,
                        check=False,
                        progress=False,
                    )
                    new = fd_trace(obj, None, probes, form=form, dtype=dtype, progress=False)
                name = str(dtype).removeprefix("torch.")
                print(
                    f"| {label} | {exact:.4g} | {name} | {form} | {old.value:.4g} ± "
                    f"{old.stderr:.2g} | {new.value:.4g} ± {new.stderr:.2g} | "
                    f"{new.info['unverified']} of {probes} |",
                    flush=True,
                )


def simulate(replicates: int, sizes: tuple[int, ...] = (5, 10, 30)) -> None:
    """Coverage of Hutchinson's estimate with ``n`` probes, from many simulated estimates.

    The probes ``vᵀHv`` (Rademacher ``v``) are drawn with the dense Hessian in numpy, so a
    cell's standard error is ``√(0.95·0.05/replicates)`` (0.2 points at 10,000). SLQ's
    estimate is exactly this one with ``n`` = runs; the verified finite-difference trace
    is it to rounding.
    """
    torch.set_num_threads(1)
    from landscape.hessian.trace._result import TraceResult, mean_stderr

    rng = np.random.default_rng(0)
    print("| model | skewness of vᵀHv | n | Student t | skew-corrected (default) |")
    print("|---|---|---|---|---|")
    for label, make in MODELS.items():
        dense = HessianOperator(make(), dtype=torch.float64).to_dense().numpy()
        exact = float(np.trace(dense))
        draws = []
        for _ in range(-(-replicates * max(sizes) // 5000)):
            v = rng.choice([-1.0, 1.0], size=(dense.shape[0], 5000))
            draws.append(np.einsum("ij,ij->j", v, dense @ v))
        probes = np.concatenate(draws)
        dev = probes - probes.mean()
        skewness = float((dev**3).mean() / (dev**2).mean() ** 1.5)
        for n in sizes:
            hits = {True: 0, False: 0}
            for r in range(replicates):
                x = probes[r * n : (r + 1) * n] if (r + 1) * n <= len(probes) else None
                x = rng.choice(probes, n) if x is None else x
                res = TraceResult(*mean_stderr(x), n, x)
                for skew in (True, False):
                    lo, hi = res.interval(0.95, skew=skew)
                    hits[skew] += lo <= exact <= hi
            t_cov, h_cov = 100 * hits[False] / replicates, 100 * hits[True] / replicates
            print(f"| {label} | {skewness:.2f} | {n} | {t_cov:.1f} % | {h_cov:.1f} % |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds start here")
    parser.add_argument("--quick", action="store_true", help="40 seeds (about a minute)")
    parser.add_argument(
        "--estimators", nargs="+", metavar="WORD", help="only these columns (e.g. block)"
    )
    parser.add_argument("--models", nargs="+", metavar="WORD", help="only these rows (e.g. relu)")
    parser.add_argument(
        "--block-allocation",
        choices=("pilot", "size"),
        default="pilot",
        help="block_trace's allocation (size: the split before 2026-12-05)",
    )
    parser.add_argument("--fd", action="store_true", help="the finite-difference table")
    parser.add_argument(
        "--simulate", type=int, metavar="N", help="N simulated Hutchinson estimates per cell"
    )
    args = parser.parse_args()
    if args.fd:
        fd_table()
        return
    if args.simulate:
        simulate(args.simulate)
        return
    BLOCK_OPTIONS["allocation"] = args.block_allocation
    seeds = 40 if args.quick else args.seeds
    names = _matching(list(ESTIMATORS), args.estimators, "estimator")
    print("| model | d | exact trace | " + " | ".join(names) + " |")
    print("|---|---|---|" + "---|" * len(names))
    coverage(seeds, args.first_seed, args.estimators, args.models)


if __name__ == "__main__":
    main()
