"""One prepared check of the GPU path, in a few minutes (``scripts/gpu_check.sh``).

Stages, each timed, with its peak memory:

1. training: SAM and GAM train ResNet-20 for a few epochs on synthetic CIFAR-shaped data
   (10 classes, learnable), with bf16 autocast on CUDA;
2. surfaces: a small 2-D grid evaluated by the loop, by vmap and (CUDA) compiled, each ÷
   the forward floor (one plain eval-mode forward over the same data per grid point);
3. curvature: λmax and the Hutchinson trace on the device against the same in float64 on
   the CPU (same probes);
4. torchrun: a 1-process ``torchrun`` surface equal to the in-process one.

One table is printed (and written as JSON with ``--out``). ``--device cpu`` runs small
sizes, so that CI runs the same script in about a minute (42 s on the 2-core machine).

    python benchmarks/gpu_check.py --device cuda --out gpu_check.json
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from landscape.checkpoint import load_checkpoint
from landscape.hessian import HessianOperator, hutchinson_trace, lanczos_eigen
from landscape.objective import Objective
from landscape.surface import compute_surface
from landscape.training import train

SIZES = {
    "cuda": {
        "n_train": 5120,
        "n_eval": 1024,
        "epochs": 3,
        "grid": 5,
        "batch": 256,
        "lanczos": 40,
        "probes": 20,
    },
    "cpu": {
        "n_train": 128,
        "n_eval": 32,
        "epochs": 1,
        "grid": 3,
        "batch": 64,
        "lanczos": 6,
        "probes": 3,
    },
}


def synthetic_cifar(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR-shaped images: one smooth random pattern per class plus noise (learnable)."""
    g = torch.Generator().manual_seed(1234)
    means = torch.nn.functional.interpolate(torch.randn(10, 3, 8, 8, generator=g), size=32)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 10, (n,), generator=g)
    x = means[y] + 0.8 * torch.randn(n, 3, 32, 32, generator=g)
    return x, y


def peak_bytes(device: torch.device) -> int:
    """Peak memory so far: CUDA allocator peak, or the process's maximum RSS on the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def reset_peak(device: torch.device) -> None:
    """Start a new peak-memory window (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def sync(device: torch.device) -> None:
    """Wait for the device (CUDA) so that timings are real."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def stage_training(device, sizes, workdir, rows):
    """Train SAM and GAM; return the SAM checkpoint path."""
    data = synthetic_cifar(sizes["n_train"])
    ckpt = None
    for opt in ("sam", "gam"):
        reset_peak(device)
        start = time.perf_counter()
        res = train(
            "resnet20",
            data,
            optimizer=opt,
            epochs=sizes["epochs"],
            batch_size=sizes["batch"],
            lr=0.05,
            device=device,
            amp=device.type == "cuda",
            out=workdir / opt,
            resume=False,
            progress=False,
        )
        sync(device)
        seconds = time.perf_counter() - start
        last = res.metrics[-1]
        rows.append(
            {
                "stage": f"train {opt}",
                "value": f"train_loss {last.get('train_loss', float('nan')):.3f}",
                "seconds": seconds,
                "ratio": None,
                "peak_MiB": peak_bytes(device) / 2**20,
            }
        )
        if opt == "sam":
            ckpt = res.final_checkpoint
    return ckpt


def stage_surfaces(device, sizes, ckpt, rows):
    """Loop and vmap surfaces, each ÷ the forward floor."""
    model = load_checkpoint(ckpt, map_location="cpu").model.to(device).eval()
    x, y = synthetic_cifar(sizes["n_eval"], seed=1)
    x, y = x.to(device), y.to(device)
    grid = f"-0.5:0.5:{sizes['grid']}"
    points = sizes["grid"] ** 2
    with torch.inference_mode():
        model(x[: sizes["batch"]])  # warm-up
        sync(device)
        start = time.perf_counter()
        reps = 5
        for _ in range(reps):
            for i in range(0, len(x), sizes["batch"]):
                model(x[i : i + sizes["batch"]])
        sync(device)
        floor = (time.perf_counter() - start) / reps
    rows.append({"stage": "forward floor", "value": "per point", "seconds": floor, "ratio": 1.0})
    surfaces = {}
    for mode in ("loop", "vmap"):
        reset_peak(device)
        start = time.perf_counter()
        surfaces[mode] = compute_surface(
            model,
            (x, y),
            x=grid,
            y=grid,
            evaluation=mode,
            batch_size=sizes["batch"],
            progress=False,
        )
        sync(device)
        per_point = (time.perf_counter() - start) / points
        rows.append(
            {
                "stage": f"surface {mode}",
                "value": f"{points} points",
                "seconds": per_point,
                "ratio": per_point / floor,
                "peak_MiB": peak_bytes(device) / 2**20,
            }
        )
    diff = float(
        np.nanmax(
            np.abs(surfaces["loop"].values["train_loss"] - surfaces["vmap"].values["train_loss"])
        )
    )
    rows.append({"stage": "surface vmap vs loop", "value": f"max |Δloss| {diff:.2e}"})
    if device.type == "cuda":
        reset_peak(device)
        start = time.perf_counter()
        compiled = compute_surface(
            model,
            (x, y),
            x=grid,
            y=grid,
            compile=True,
            batch_size=sizes["batch"],
            progress=False,
        )
        sync(device)
        per_point = (time.perf_counter() - start) / points
        diff = float(
            np.nanmax(np.abs(compiled.values["train_loss"] - surfaces["loop"].values["train_loss"]))
        )
        rows.append(
            {
                "stage": "surface compiled (compile included)",
                "value": f"max |Δloss| vs loop {diff:.2e}",
                "seconds": per_point,
                "ratio": per_point / floor,
                "peak_MiB": peak_bytes(device) / 2**20,
            }
        )
    else:
        rows.append({"stage": "surface compiled", "value": "skipped on the CPU (compile time)"})
    return surfaces["loop"], (x.cpu(), y.cpu())


def stage_curvature(device, sizes, ckpt, data, rows):
    """λmax and trace on the device vs float64 on the CPU."""
    results = {}
    for where, dev, dtype in (
        ("device", device, None),
        ("cpu float64", torch.device("cpu"), torch.float64),
    ):
        model = load_checkpoint(ckpt, map_location="cpu").model.to(dev)
        obj = Objective(model, data, batch_size=256)
        reset_peak(dev)
        start = time.perf_counter()
        op = HessianOperator(obj, dtype=dtype)
        top = lanczos_eigen(op, k=1, tol=1e-4, max_products=sizes["lanczos"], seed=0)
        tr = hutchinson_trace(op, num_products=sizes["probes"], seed=0)
        sync(dev)
        results[where] = (float(top.eigenvalues[0]), float(tr.value))
        rows.append(
            {
                "stage": f"curvature {where}",
                "value": f"λmax {results[where][0]:.5g}, trace {results[where][1]:.5g}",
                "seconds": time.perf_counter() - start,
                "peak_MiB": peak_bytes(dev) / 2**20,
            }
        )
    (l1, t1), (l2, t2) = results["device"], results["cpu float64"]
    rel_l, rel_t = abs(l1 - l2) / abs(l2), abs(t1 - t2) / abs(t2)
    rows.append(
        {
            "stage": "curvature device vs float64",
            "value": f"λmax rel {rel_l:.1e}, trace rel {rel_t:.1e}",
        }
    )


def stage_torchrun(device, sizes, ckpt, reference, workdir, rows):
    """A 1-process torchrun surface equals the in-process one."""
    out = workdir / "torchrun.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=1",
        str(Path(__file__).resolve()),
        "--worker-surface",
        str(ckpt),
        str(out),
        "--device",
        device.type,
        "--grid",
        str(sizes["grid"]),
        "--n-eval",
        str(sizes["n_eval"]),
    ]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        rows.append({"stage": "torchrun surface", "value": "FAILED: " + proc.stderr[-300:]})
        return
    got = np.asarray(json.loads(out.read_text()))
    diff = float(np.nanmax(np.abs(got - reference.values["train_loss"])))
    rows.append(
        {
            "stage": "torchrun surface (1 process)",
            "value": f"max |Δloss| {diff:.2e}",
            "seconds": seconds,
        }
    )


def worker_surface(ckpt: str, out: str, device: str, grid: int, n_eval: int) -> None:
    """The torchrun worker: the surface of ``ckpt`` on the evaluation data, to JSON."""
    dev = torch.device(device)
    model = load_checkpoint(ckpt, map_location="cpu").model.to(dev).eval()
    x, y = synthetic_cifar(n_eval, seed=1)
    spec = f"-0.5:0.5:{grid}"
    s = compute_surface(model, (x.to(dev), y.to(dev)), x=spec, y=spec, progress=False)
    if int(os.environ.get("RANK", "0")) == 0:
        Path(out).write_text(json.dumps(np.asarray(s.values["train_loss"]).tolist()))


def main(argv: list[str] | None = None) -> int:
    """Run the check and print one table."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    p.add_argument("--out", default=None, help="write the table as JSON")
    p.add_argument("--worker-surface", nargs=2, metavar=("CKPT", "OUT"), help=argparse.SUPPRESS)
    p.add_argument("--grid", type=int, default=3, help=argparse.SUPPRESS)
    p.add_argument("--n-eval", type=int, default=64, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker_surface:
        worker_surface(*args.worker_surface, args.device, args.grid, args.n_eval)
        return 0
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    sizes = SIZES["cuda" if device.type == "cuda" else "cpu"]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    rows: list[dict] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        ckpt = stage_training(device, sizes, workdir, rows)
        surface, data = stage_surfaces(device, sizes, ckpt, rows)
        stage_curvature(device, sizes, ckpt, data, rows)
        stage_torchrun(device, sizes, ckpt, surface, workdir, rows)
    total = time.perf_counter() - start
    print(f"gpu_check on {name} (torch {torch.__version__}), {total:.0f} s in all")
    print(f"{'stage':34} {'value':52} {'seconds':>9} {'÷ floor':>8} {'peak MiB':>9}")
    for r in rows:
        sec = f"{r['seconds']:.4g}" if r.get("seconds") is not None else ""
        ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else ""
        peak = f"{r['peak_MiB']:.0f}" if r.get("peak_MiB") is not None else ""
        print(f"{r['stage']:34} {r.get('value', ''):52} {sec:>9} {ratio:>8} {peak:>9}")
    if args.out:
        Path(args.out).write_text(
            json.dumps(
                {"device": name, "torch": torch.__version__, "seconds": total, "rows": rows},
                indent=1,
            )
        )
    failed = [r for r in rows if str(r.get("value", "")).startswith("FAILED")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
