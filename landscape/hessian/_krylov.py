"""The Lanczos recurrence with full re-orthogonalisation, shared by eigen- and density solvers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal
from torch import Tensor
from tqdm.auto import tqdm

__all__ = ["LanczosState", "lanczos_run", "progress_bar", "ritz"]


def progress_bar(total: int | None, desc: str, progress: bool | None) -> tqdm:
    """A tqdm bar; ``progress=None`` shows it only on a terminal, ``False`` never."""
    return tqdm(
        total=total, desc=desc, disable=None if progress is None else not progress, leave=False
    )


@dataclass
class LanczosState:
    """The Krylov basis and tridiagonal matrix after some Lanczos steps.

    ``basis`` rows are the orthonormal Lanczos vectors ``q_0 … q_{m-1}``; ``alphas`` (m,)
    and ``betas`` (m,) hold the tridiagonal ``T`` (``betas[:-1]`` off-diagonal,
    ``betas[-1]`` the norm of the last residual, which gives the Ritz residuals).
    """

    basis: Tensor
    alphas: list[float] = field(default_factory=list)
    betas: list[float] = field(default_factory=list)
    products: int = 0
    invariant: bool = False  # the basis spans an invariant subspace: the Ritz pairs are exact
    breakdown: bool = False  # the last step closed an invariant subspace (a restart follows)
    block_starts: list[int] = field(default_factory=lambda: [0])  # first step of each block

    @property
    def steps(self) -> int:
        return len(self.alphas)


def ritz(state: LanczosState, start: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Ritz values (ascending), eigenvectors of ``T`` and residual norms ``|β_m s_{m,i}|``.

    ``start``: only the trailing block of ``T`` from that step on (e.g. the Krylov space of
    the last restart, ``state.block_starts[-1]``, which ``T`` holds as a separate block).
    """
    a = np.asarray(state.alphas[start:], dtype=np.float64)
    b = np.asarray(state.betas[start:-1], dtype=np.float64)
    if a.size == 1:
        values, vectors = a.copy(), np.ones((1, 1))
    else:
        values, vectors = eigh_tridiagonal(a, b)
    last = 0.0 if state.invariant else abs(state.betas[-1])
    return values, vectors, last * np.abs(vectors[-1, :])


def _orthogonalise(w: Tensor, basis: Tensor) -> Tensor:
    """Remove the components of ``w`` along the rows of ``basis`` (Gram–Schmidt twice).

    The basis may live on another device or in another dtype than ``w`` (a basis kept
    off the accelerator): the projections are computed where the basis is, in its dtype.
    """
    same = basis.device == w.device and basis.dtype == w.dtype
    for _ in range(2):
        if same:
            w = w - basis.T @ (basis @ w)
        else:
            wb = w.to(device=basis.device, dtype=basis.dtype)
            w = w - (basis.T @ (basis @ wb)).to(device=w.device, dtype=w.dtype)
    return w


def lanczos_run(
    matvec: Callable[[Tensor], Tensor],
    v0: Tensor,
    max_steps: int,
    *,
    new_start: Callable[[], Tensor] | None = None,
    stop: Callable[[LanczosState], bool] | None = None,
    progress: bool | None = None,
    desc: str = "lanczos",
    basis_device: str | torch.device | None = None,
    basis_dtype: torch.dtype | None = None,
) -> LanczosState:
    """Run Lanczos with full re-orthogonalisation from ``v0`` for up to ``max_steps`` products.

    Args:
        matvec: the symmetric operator on flat vectors.
        v0: the start vector (any norm, non-zero).
        max_steps: maximum number of products (capped at the dimension).
        new_start: draws a fresh random vector when the Krylov space becomes invariant
            (breakdown ``β ≈ 0``) so that the run continues in the orthogonal complement
            (``T`` then is block diagonal); ``None`` stops at breakdown.
        stop: called after each step; returning ``True`` ends the run.
        progress: show a progress bar (``None``: only on a terminal).
        desc: progress bar label.
        basis_device: where the Krylov basis (``steps × dim``) is kept; default the
            device of ``v0`` (the operator's). ``"cpu"`` keeps it off the accelerator:
            each step then moves two vectors between the devices.
        basis_dtype: the basis's dtype; default that of ``v0``. A wider dtype
            (``torch.float64``) orthogonalises more exactly; a narrower one saves memory.
    """
    dim = v0.numel()
    max_steps = min(max_steps, dim)
    chunk = min(max_steps, 32)
    buf = torch.empty(
        (chunk, dim),
        dtype=basis_dtype if basis_dtype is not None else v0.dtype,
        device=torch.device(basis_device) if basis_device is not None else v0.device,
    )
    q = v0 / torch.linalg.vector_norm(v0)
    state = LanczosState(basis=buf[:0])
    prev_beta = 0.0
    q_prev: Tensor | None = None
    scale = 0.0
    with progress_bar(max_steps, desc, progress) as bar:
        for j in range(max_steps):
            if j == buf.shape[0]:
                grow = torch.empty(
                    (min(buf.shape[0], max_steps - j), dim), dtype=buf.dtype, device=buf.device
                )
                buf = torch.cat([buf, grow])
            buf[j] = q.to(device=buf.device, dtype=buf.dtype)
            w = matvec(q).to(q.dtype)
            state.products += 1
            bar.update(1)
            alpha = float(torch.dot(q, w))
            w = w - alpha * q
            if q_prev is not None and prev_beta != 0.0:
                w = w - prev_beta * q_prev
            basis = buf[: j + 1]
            w = _orthogonalise(w, basis)
            beta = float(torch.linalg.vector_norm(w))
            state.alphas.append(alpha)
            state.betas.append(beta)
            state.basis = basis
            scale = max(scale, abs(alpha), beta)
            eps = torch.finfo(q.dtype).eps
            breakdown = beta <= 100 * eps * max(scale, 1e-300) * np.sqrt(j + 1)
            state.breakdown = breakdown
            if breakdown:
                state.betas[-1] = 0.0
                if j + 1 == dim or new_start is None:
                    state.invariant = True
                    break
            if stop is not None and stop(state):
                break
            if j + 1 == dim:
                state.invariant = True
                break
            if breakdown:
                assert new_start is not None
                w = _orthogonalise(new_start().to(q.dtype), basis)
                prev_beta = 0.0
                q_prev = None
                q = w / torch.linalg.vector_norm(w)
                state.block_starts.append(j + 1)
            else:
                q_prev, q = q, w / beta
                prev_beta = beta
    return state
