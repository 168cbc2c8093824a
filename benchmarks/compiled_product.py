"""Compiled Hessian-vector products: their cost ÷ the eager double backward.

The small CNN of ``benchmarks/hessian.py`` (``build_model("cnn", width=16, hidden=192)``,
105,226 parameters, ReLU + max-pool) on one batch of 256 random 16×16 images, CPU, one
thread. Candidates, timed interleaved (medians of ``--repeats``):

- eager double backward: ``HessianOperator``'s ``_batch_exact`` (gradient graph, then a
  backward of ``gᵀv``), the reference;
- eager forward-over-reverse: ``_batch_forward`` (``torch.func.jvp`` of ``grad``);
- compiled forward-over-reverse: the same ``jvp(grad)`` function under ``torch.compile``
  (inductor, ``dynamic=False``, caches disabled: a cold compile), its compile time shown
  apart and also amortised over ``--amortise-over`` products.

Every product is checked against the eager double backward (relative error printed).

Run: ``.venv/bin/python benchmarks/compiled_product.py``.
"""

from __future__ import annotations

import os

os.environ.setdefault("TORCHINDUCTOR_FORCE_DISABLE_CACHES", "1")

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, jvp

sys.path.insert(0, str(Path(__file__).parent))

from _timing import interleaved, median, ratio_to

from landscape.models import build_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--amortise-over", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(
        "cnn", in_channels=1, num_classes=10, input_size=16, width=16, hidden=192
    ).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 16, 16, generator=g)
    y = torch.randint(0, 10, (args.batch,), generator=g)
    names = [n for n, _ in model.named_parameters()]
    params = [p for _, p in model.named_parameters()]
    vs = [torch.randn_like(p) for p in params]

    def exact() -> list[torch.Tensor]:
        with torch.enable_grad():
            loss = F.cross_entropy(model(x), y)
            gs = torch.autograd.grad(loss, params, create_graph=True)
            return list(torch.autograd.grad(gs, params, grad_outputs=vs))

    def loss_of(ps: tuple[torch.Tensor, ...], xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(model, dict(zip(names, ps, strict=True)), (xb,)), yb)

    def fwd_rev(ps: tuple[torch.Tensor, ...], ts: tuple[torch.Tensor, ...], xb, yb):
        return jvp(lambda *q: grad(loss_of)(q, xb, yb), ps, ts)[1]

    primals = tuple(p.detach() for p in params)
    tangents = tuple(vs)

    def forward() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return fwd_rev(primals, tangents, x, y)

    compiled_fn = torch.compile(fwd_rev, dynamic=False)

    def compiled() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            return compiled_fn(primals, tangents, x, y)

    ref = exact()
    start = time.perf_counter()
    out = compiled()
    compile_s = time.perf_counter() - start

    def rel(got) -> float:
        num = sum(float((a - b).pow(2).sum()) for a, b in zip(got, ref, strict=True))
        den = sum(float(b.pow(2).sum()) for b in ref)
        return (num / den) ** 0.5

    print(f"compiled jvp(grad): {compile_s:.1f} s to compile (cold); rel. error {rel(out):.1e}")
    print(f"eager jvp(grad): rel. error {rel(forward()):.1e}")
    cands = {
        "eager double backward": exact,
        "eager jvp(grad)": forward,
        "compiled jvp(grad)": compiled,
    }
    times = interleaved(cands, repeats=args.repeats, warmup=1)
    ratios = ratio_to(times, "eager double backward")
    n = args.amortise_over
    amort = median(times["compiled jvp(grad)"]) + compile_s / n
    base = median(times["eager double backward"])
    print(
        f"small CNN (105,226 parameters), batch {args.batch}, CPU, 1 thread, "
        f"median of {args.repeats}"
    )
    print(f"{'product':<24} {'s/product':>10} {'x double backward':>18}")
    for name, ts in times.items():
        print(f"{name:<24} {median(ts):10.4f} {ratios[name]:18.3f}")
    print(f"{'compiled, amortised':<24} {amort:10.4f} {amort / base:18.3f}  (compile / {n})")
    print(f"load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
