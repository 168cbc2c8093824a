"""Correlation of measures with generalisation over a population of runs (Jiang et al. 2020).

Two layers. Pure functions on numbers, after Jiang et al., "Fantastic generalization
measures and where to find them" (ICLR 2020, arXiv:1912.02178):

- :func:`kendall_tau`: ``τ = mean_{i<j} sign(μ_i − μ_j)·sign(g_i − g_j)`` over all pairs;
  this is Kendall's **tau-a**: a pair tied in the measure or in the gap contributes 0 and
  still counts in the denominator (scipy's ``kendalltau`` computes tau-b, which divides
  by the untied pairs instead; both agree when nothing is tied).
- :func:`bootstrap_tau`: a percentile interval of τ, resampling the models.
- :func:`granulated_tau`: per hyper-parameter axis ``k``, the models that agree on every
  other axis form a group; ``ψ_k`` is the mean over groups of τ within a group, and
  ``Ψ = mean_k ψ_k``; intervals resample the groups of each axis.
- :func:`population_axes`: which configuration entries vary, merged into axes.
- :func:`permutation_pvalue`: how likely a ``|τ|`` that large is were the two unrelated.

:func:`flatness_finding` states in one sentence how a flatness measure (``λmax``, the
trace) ranks with test accuracy across the rows of a comparison (the demo's optimizers),
computed from the table's numbers whenever it is called.

And :func:`correlate_runs` (``landscape correlate``): measure the final checkpoint of each
``landscape train`` run folder with :func:`~landscape.compare.compare_checkpoints`, take
the gap from each checkpoint's training record and the hyper-parameters from each run's
``config.json``, and return a :class:`Correlation` (a table per metric, ``to_json``,
``plot``)::

    from landscape.correlation import correlate_runs
    corr = correlate_runs(["runs/sgd-0.1", "runs/sam-0.1", ...], "lambda_max,trace",
                          out="corr.json")
    print(corr.format_table())

The ``out`` file is a comparison (``landscape compare`` and
:meth:`Comparison.read_json <landscape.compare.Comparison.read_json>` read it) with a
``"correlation"`` section; it is written after every checkpoint, so an interrupted call
resumes where it stopped when run again: runs already measured (same checkpoint file, by
sha256) are not measured again.

The runs are taken as they are: Jiang et al. train every model to the same training loss
before measuring; runs stopped by an epoch budget compare models at different stages,
which the table does not correct for.
"""

from __future__ import annotations

import functools
import html
import itertools
import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "FLATNESS_MEASURES",
    "GAPS",
    "SEED_MODES",
    "AxisTau",
    "Correlation",
    "Finding",
    "GranulatedTau",
    "bootstrap_tau",
    "correlate_runs",
    "flatness_finding",
    "granulated_tau",
    "kendall_tau",
    "permutation_pvalue",
    "population_axes",
]

logger = logging.getLogger(__name__)

#: What ``gap=`` accepts: ``train_acc − test_acc`` or ``test_loss − train_loss``.
GAPS = ("acc", "loss")
#: What ``seeds=`` accepts: the seed is a replicate (not an axis) or an axis of its own.
SEED_MODES = ("replicate", "axis")

# The training-record values read for every run (both gaps: a file serves either).
_RECORDED = ("train_loss", "test_loss", "train_acc", "test_acc")
# config.json entries that describe the run's bookkeeping, not its hyper-parameters.
_NOT_HPARAMS = ("version", "world_size", "save_every")
_MIN_DRAWS = 100
# Up to this many models the permutation p-value enumerates every pairing (9! = 362880).
_EXACT_PERMUTATIONS = 9


# --------------------------------------------------------------------------- numbers


def _vector(values: Any, what: str) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"Invalid {what}: expected one value per model, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"Invalid {what}: holds nan or inf (leave those models out)")
    return x


def _pair_signs(measure: Any, gap: Any) -> np.ndarray:
    """``S[i, j] = sign(μ_i − μ_j)·sign(g_i − g_j)`` (symmetric, zero diagonal)."""
    mu, g = _vector(measure, "measure"), _vector(gap, "gap")
    if mu.shape != g.shape:
        raise ValueError(f"Invalid gap: {g.size} values for {mu.size} measures")
    return np.sign(mu[:, None] - mu[None, :]) * np.sign(g[:, None] - g[None, :])


def _check_bootstrap(draws: int, confidence: float) -> None:
    if int(draws) < _MIN_DRAWS:
        raise ValueError(f"Invalid draws: {draws} (at least {_MIN_DRAWS}; 1000 is the default)")
    if not 0 < confidence < 1:
        raise ValueError(f"Invalid confidence: {confidence} (expected 0 < confidence < 1)")


def _interval(samples: np.ndarray, confidence: float) -> tuple[float, float]:
    lo, hi = np.quantile(samples, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def kendall_tau(measure: Sequence[float] | np.ndarray, gap: Sequence[float] | np.ndarray) -> float:
    """Kendall's tau-a of a measure with the generalisation gap.

    ``τ = mean_{i<j} sign(μ_i − μ_j)·sign(g_i − g_j)`` over all ``n(n−1)/2`` pairs: a
    pair tied in either contributes 0 (and still counts), so ties pull τ towards 0;
    ``τ = 1`` when the measure orders the models exactly as the gap, ``−1`` reversed.

    Args:
        measure: one value per model (finite).
        gap: one value per model (finite).

    Returns:
        τ in ``[−1, 1]``; ``nan`` for fewer than two models.

    Raises:
        ValueError: not two 1-D sequences of the same length, or a non-finite value.
    """
    s = _pair_signs(measure, gap)
    n = s.shape[0]
    return math.nan if n < 2 else float(s.sum() / (n * (n - 1)))


def bootstrap_tau(
    measure: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    *,
    draws: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float]:
    """A percentile bootstrap interval of :func:`kendall_tau`, resampling the models.

    Each draw takes ``n`` models with replacement and computes tau-a over all pairs of
    the draw (a model drawn twice makes a tied pair, which counts 0).

    Args:
        measure: one value per model (finite).
        gap: one value per model (finite).
        draws: bootstrap draws (at least 100; the spec asks for ≥ 1000, the default).
        seed: seed of the resampling (``numpy.random.default_rng``).
        confidence: the interval's coverage.

    Returns:
        ``(low, high)``; ``(nan, nan)`` for fewer than three models.
    """
    _check_bootstrap(draws, confidence)
    s = _pair_signs(measure, gap)
    n = s.shape[0]
    if n < 3:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=int(draws)).astype(np.float64)
    # Σ_{a≠b} S[idx_a, idx_b] = cᵀ S c with c the draw's counts (S has a zero diagonal).
    taus = np.einsum("bi,ij,bj->b", counts, s, counts) / (n * (n - 1))
    return _interval(taus, confidence)


@functools.lru_cache(maxsize=2)
def _all_permutations(n: int) -> np.ndarray:
    """Every permutation of ``range(n)``, one per row (``int8``; 3 MB at ``n = 9``)."""
    flat = itertools.chain.from_iterable(itertools.permutations(range(n)))
    perms = np.fromiter(flat, dtype=np.int8, count=math.factorial(n) * n).reshape(-1, n)
    perms.flags.writeable = False
    return perms


def permutation_pvalue(
    measure: Sequence[float] | np.ndarray,
    other: Sequence[float] | np.ndarray,
    *,
    draws: int = 10_000,
    seed: int = 0,
) -> float:
    """The two-sided permutation p-value of :func:`kendall_tau`.

    How likely a ``|τ|`` at least as large as the observed one is when the two are
    unrelated, i.e. when every pairing of the measures with the other values is equally
    likely (ties kept as they are): exact, over all ``n!`` pairings, for up to 9 models;
    otherwise estimated from ``draws`` seeded random pairings as
    ``(1 + hits) / (1 + draws)``.  With 3 models no τ reaches p < 0.3, with 4 none
    reaches p < 0.08: a small population cannot show a significant relation.

    Args:
        measure: one value per model (finite).
        other: one value per model (finite): a gap, an accuracy, ...
        draws: random pairings beyond 9 models (at least 100).
        seed: seed of the random pairings (``numpy.random.default_rng``).

    Returns:
        p in ``(0, 1]``; ``nan`` for fewer than two models.

    Raises:
        ValueError: not two 1-D sequences of the same length, a non-finite value, or too
            few draws.
    """
    mu, y = _vector(measure, "measure"), _vector(other, "other")
    if mu.shape != y.shape:
        raise ValueError(f"Invalid other: {y.size} values for {mu.size} measures")
    n = mu.size
    if n < 2:
        return math.nan
    iu, ju = np.triu_indices(n, 1)  # the pairs i < j
    a = np.sign(mu[iu] - mu[ju])
    b = np.sign(y[:, None] - y[None, :]).astype(np.int8)
    observed = abs(float(a @ b[iu, ju]))  # an integer: sums of signs are exact
    if n <= _EXACT_PERMUTATIONS:
        perms = _all_permutations(n)
    else:
        if int(draws) < _MIN_DRAWS:
            raise ValueError(f"Invalid draws: {draws} (at least {_MIN_DRAWS})")
        rng = np.random.default_rng(seed)
        perms = np.argsort(rng.random((int(draws), n)), axis=1)
    hits = 0
    for chunk in np.array_split(perms, max(1, perms.shape[0] * iu.size // 2**22)):
        stats = b[chunk[:, iu], chunk[:, ju]] @ a
        hits += int((np.abs(stats) > observed - 0.5).sum())
    if n <= _EXACT_PERMUTATIONS:
        return hits / perms.shape[0]
    return (1 + hits) / (1 + int(draws))


@dataclass(frozen=True)
class AxisTau:
    """The granulated coefficient of one axis.

    Attributes:
        value: ``ψ_k``, the mean of the groups' τ (``nan`` when no group varies ``k``).
        ci: its bootstrap interval over groups (``nan`` with fewer than two groups).
        groups: how many groups (models agreeing on every other axis) vary ``k``.
        taus: τ within each group.
    """

    value: float
    ci: tuple[float, float]
    groups: int
    taus: tuple[float, ...] = ()


@dataclass(frozen=True)
class GranulatedTau:
    """``ψ_k`` per axis and their mean ``Ψ``.

    Attributes:
        psi: axis name -> :class:`AxisTau`.
        value: ``Ψ``, the mean of the defined ``ψ_k`` (``nan`` when none is).
        ci: its bootstrap interval (each axis's groups resampled in every draw).
    """

    psi: dict[str, AxisTau]
    value: float
    ci: tuple[float, float]


def _hashable(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _axis_keys(
    hparams: Sequence[Mapping[str, Any]], axes: Sequence[str] | Mapping[str, Sequence[str]] | None
) -> dict[str, list[str]]:
    if axes is None:
        return population_axes(hparams)
    if isinstance(axes, Mapping):
        spec = {str(name): [str(k) for k in keys] for name, keys in axes.items()}
    else:
        spec = {str(name): [str(name)] for name in ([axes] if isinstance(axes, str) else axes)}
    known = {k for h in hparams for k in h}
    for name, keys in spec.items():
        unknown = [k for k in keys if k not in known]
        if unknown or not keys:
            raise ValueError(
                f"Invalid axes: {name!r} names {unknown[0] if unknown else 'no key'!r}, which "
                f"no model's hyper-parameters hold (keys: {', '.join(sorted(known)) or 'none'})"
            )
    return spec


def population_axes(hparams: Sequence[Mapping[str, Any]]) -> dict[str, list[str]]:
    """The axes of a population: the keys whose values differ, merged where they must be.

    Keys whose values split the models into the same classes are one axis (``seed`` and
    ``data.seed``; ``optimizer`` and ``hparams.rho`` when only SAM has a ρ and it has
    one value): holding one fixed while the other varies is impossible. An axis is named
    after its first key, shortened to the last dotted component when that is unambiguous
    (``hparams.lr`` -> ``lr``). A key missing from a model reads ``None``.

    Args:
        hparams: one mapping ``key -> value`` per model (values JSON-like).

    Returns:
        ``axis name -> keys`` in the order the keys first appear.
    """
    keys: list[str] = []
    for h in hparams:
        keys += [k for k in h if k not in keys]
    varying = []
    for k in keys:
        values = [_hashable(h.get(k)) for h in hparams]
        if len(set(values)) > 1:
            varying.append((k, _partition(values)))
    merged: list[tuple[list[str], tuple[int, ...]]] = []
    for k, part in varying:
        for group_keys, other in merged:
            if other == part:
                group_keys.append(k)
                break
        else:
            merged.append(([k], part))
    firsts = [group_keys[0] for group_keys, _ in merged]
    shorts = [k.rsplit(".", 1)[-1] for k in firsts]
    names = [
        short if shorts.count(short) == 1 and (short == k or short not in firsts) else k
        for k, short in zip(firsts, shorts, strict=True)
    ]
    return {name: group_keys for name, (group_keys, _) in zip(names, merged, strict=True)}


def _partition(values: Sequence[str]) -> tuple[int, ...]:
    """The classes of equal values, as the index of each value's first occurrence."""
    first: dict[str, int] = {}
    return tuple(first.setdefault(v, i) for i, v in enumerate(values))


def granulated_tau(
    measure: Sequence[float] | np.ndarray,
    gap: Sequence[float] | np.ndarray,
    hparams: Sequence[Mapping[str, Any]],
    *,
    axes: Sequence[str] | Mapping[str, Sequence[str]] | None = None,
    draws: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> GranulatedTau:
    """Jiang et al.'s granulated Kendall coefficient: ``ψ_k`` per axis and ``Ψ``.

    For axis ``k`` the models that agree on every other axis form a group; within a
    group τ is taken over the pairs that differ on ``k`` (models equal on every axis
    are replicates, e.g. seeds, and a pair of them says nothing about ``k``);
    ``ψ_k`` is the mean of the groups' τ, and ``Ψ`` the mean of the defined ``ψ_k``.

    A conditional hyper-parameter (``None`` for some models: SAM's ρ, absent for SGD)
    whose presence is decided by axis ``k`` (the optimizer) is not held fixed in the
    groups of ``k``: SGD and SAM at one learning rate form a group whatever SAM's ρ.

    Intervals: each draw resamples, per axis, the axis's groups with replacement (their
    τ fixed); the percentile interval of the mean gives ``ψ_k``'s (when it has two
    groups or more) and the mean over axes ``Ψ``'s.

    Args:
        measure: one value per model (finite).
        gap: one value per model (finite).
        hparams: one mapping ``key -> value`` per model.
        axes: axis names (keys of ``hparams``), or ``name -> keys`` (an axis whose value
            is several keys together); default :func:`population_axes`.
        draws: bootstrap draws (at least 100).
        seed: seed of the resampling.
        confidence: the intervals' coverage.

    Raises:
        ValueError: mismatched lengths, a non-finite value, bad draws or confidence.
    """
    _check_bootstrap(draws, confidence)
    s = _pair_signs(measure, gap)
    n = s.shape[0]
    if len(hparams) != n:
        raise ValueError(f"Invalid hparams: {len(hparams)} mappings for {n} models")
    spec = _axis_keys(hparams, axes)
    value = {
        name: [_hashable([h.get(k) for k in keys]) for h in hparams] for name, keys in spec.items()
    }
    absent = {
        name: [all(h.get(k) is None for k in keys) for h in hparams] for name, keys in spec.items()
    }
    rng = np.random.default_rng(seed)
    psi: dict[str, AxisTau] = {}
    draws_of: list[np.ndarray] = []
    for k in spec:
        fixed = [j for j in spec if j != k and not _decided_by(absent[j], value[k])]
        groups: dict[tuple[str, ...], list[int]] = {}
        for i in range(n):
            groups.setdefault(tuple(value[j][i] for j in fixed), []).append(i)
        taus = []
        for members in groups.values():
            pairs = [
                s[a, b]
                for x, a in enumerate(members)
                for b in members[x + 1 :]
                if value[k][a] != value[k][b]
            ]
            if pairs:
                taus.append(float(np.mean(pairs)))
        t = np.asarray(taus)
        ci = (math.nan, math.nan)
        if t.size:
            boot = t[rng.integers(t.size, size=(int(draws), t.size))].mean(axis=1)
            draws_of.append(boot)
            if t.size >= 2:
                ci = _interval(boot, confidence)
        psi[k] = AxisTau(float(t.mean()) if t.size else math.nan, ci, int(t.size), tuple(taus))
    defined = [a.value for a in psi.values() if math.isfinite(a.value)]
    total = float(np.mean(defined)) if defined else math.nan
    total_ci = (math.nan, math.nan)
    if any(a.groups >= 2 for a in psi.values()):
        total_ci = _interval(np.mean(draws_of, axis=0), confidence)
    return GranulatedTau(psi, total, total_ci)


def _decided_by(absent: Sequence[bool], values: Sequence[str]) -> bool:
    """Whether an axis is missing for some models, and which ones is a function of ``values``."""
    if not any(absent) or all(absent):
        return False
    seen: dict[str, bool] = {}
    return all(seen.setdefault(v, a) == a for v, a in zip(values, absent, strict=True))


# --------------------------------------------------------------------------- runs


def _flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _run_config(run: Path) -> dict[str, Any]:
    """The hyper-parameters of a run folder: its ``config.json``, flattened (``hparams.lr``)."""
    if not run.exists():
        raise FileNotFoundError(f"{run}: no such run folder")
    if not run.is_dir():
        raise ValueError(f"{run}: not a run folder (expected a folder written by landscape train)")
    path = run / "config.json"
    if not path.is_file():
        raise ValueError(
            f"{run}: not a landscape train run folder (no config.json to read its "
            "hyper-parameters from)"
        )
    try:
        config = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a run configuration ({exc})") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: not a run configuration (a JSON {type(config).__name__})")
    flat = _flatten(config)
    return {k: v for k, v in flat.items() if k.split(".", 1)[0] not in _NOT_HPARAMS}


def _seed_keys(configs: Sequence[Mapping[str, Any]]) -> list[str]:
    """``seed`` and the keys that vary with it alone (``data.seed``)."""
    if not any("seed" in c for c in configs):
        return []
    part = _partition([_hashable(c.get("seed")) for c in configs])
    keys = {k for c in configs for k in c}
    return sorted(k for k in keys if _partition([_hashable(c.get(k)) for c in configs]) == part)


def _run_labels(runs: Sequence[Path]) -> list[str]:
    """Folder names, with as many parents as it takes to tell them apart."""
    for depth in (1, 2, 3):
        labels = ["/".join(p.resolve().parts[-depth:]) for p in runs]
        if len(set(labels)) == len(labels):
            return labels
    return [os.fspath(p) for p in runs]


def _gap_of(row: Mapping[str, Any], gap: str) -> float:
    def cell(name: str) -> float:
        v = (row.get(name) or {}).get("value")
        return math.nan if v is None else float(v)

    if gap == "acc":
        return cell("train_acc") - cell("test_acc")
    return cell("test_loss") - cell("train_loss")


def _gap_text(gap: str) -> str:
    return "train_acc − test_acc" if gap == "acc" else "test_loss − train_loss"


def _check_records(finals: Sequence[Path], runs: Sequence[Path], gap: str) -> None:
    """Each final checkpoint's training record holds the values the gap needs."""
    from landscape.checkpoint import read_checkpoint

    need = ("train_acc", "test_acc") if gap == "acc" else ("train_loss", "test_loss")
    for run, final in zip(runs, finals, strict=True):
        obj = read_checkpoint(final, mmap=True)
        meta = obj.get("meta") if isinstance(obj, Mapping) else None
        record = meta.get("metrics") if isinstance(meta, Mapping) else None
        record = record if isinstance(record, Mapping) else {}
        lacking = [
            name
            for name in need
            if isinstance(record.get(name), bool) or not isinstance(record.get(name), int | float)
        ]
        if lacking:
            raise ValueError(
                f"{run}: the training record of {final.name} has no {', '.join(lacking)} "
                f"(the gap {_gap_text(gap)} needs both)"
            )


@dataclass
class Correlation:
    """How a population of runs' measures rank with their generalisation gap.

    Attributes:
        metrics: the measures, in order.
        gap: ``"acc"`` (``train_acc − test_acc``, in points) or ``"loss"``
            (``test_loss − train_loss``).
        axes: axis name -> the ``config.json`` keys it stands for (``hparams.lr``).
        models: one dict per run: ``label``, ``run``, ``checkpoint``, ``epoch``, ``gap``,
            ``hparams`` (axis -> value), ``measures`` (metric -> value, ``None`` for nan)
            and the recorded ``train_loss``, ``test_loss``, ``train_acc``, ``test_acc``.
        results: metric -> ``{"n", "tau", "tau_ci", "psi": {axis: {"value", "ci",
            "groups"}}, "Psi", "Psi_ci"}`` (``n``: models with a finite value).
        settings: gap, seeds, draws, bootstrap_seed, confidence and the measurement's
            settings (``"comparison"``).
        comparison: the measurement (:class:`~landscape.compare.Comparison`), when known.
    """

    metrics: list[str]
    gap: str
    axes: dict[str, list[str]]
    models: list[dict[str, Any]]
    results: dict[str, dict[str, Any]]
    settings: dict[str, Any] = field(default_factory=dict)
    comparison: Any = None

    # ------------------------------------------------------------------ access
    def tau(self, metric: str) -> float:
        """τ of ``metric`` with the gap."""
        return _num(self.results[metric]["tau"])

    def psi(self, metric: str, axis: str | None = None) -> float:
        """``ψ`` of ``metric`` on ``axis``, or ``Ψ`` when ``axis`` is ``None``."""
        res = self.results[metric]
        return _num(res["Psi"] if axis is None else res["psi"][axis]["value"])

    def to_dict(self) -> dict[str, Any]:
        """The correlation section of the JSON file (JSON-safe; nan as ``None``)."""
        from landscape.compare import _plain

        return _plain(
            {
                "metrics": self.metrics,
                "gap": self.gap,
                "axes": self.axes,
                "models": self.models,
                "results": self.results,
                "settings": self.settings,
            }
        )

    # ------------------------------------------------------------------ files
    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write ``{comparison..., "correlation": {...}}`` atomically; returns the path.

        The file is a comparison (``metrics``, ``rows``, ``settings`` at the top) that
        :func:`correlate_runs` resumes from and ``landscape compare`` reads.
        """
        from landscape._io import write_atomically

        obj = {} if self.comparison is None else self.comparison.to_dict()
        obj["correlation"] = self.to_dict()
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
        return write_atomically(Path(path), lambda fh: fh.write(text))

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> Correlation:
        """Read a file written by :meth:`to_json`."""
        from landscape.compare import Comparison

        try:
            obj = json.loads(Path(path).read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{path}: not a readable JSON file ({exc})") from None
        corr = obj.get("correlation") if isinstance(obj, dict) else None
        if not isinstance(corr, dict):
            raise ValueError(f"{path}: not a correlation file (no 'correlation' section)")
        comparison = Comparison.read_json(path) if "rows" in obj else None
        return cls(
            list(corr["metrics"]),
            str(corr["gap"]),
            {k: list(v) for k, v in corr["axes"].items()},
            list(corr["models"]),
            dict(corr["results"]),
            dict(corr.get("settings") or {}),
            comparison,
        )

    def plot(self, metric: str | None = None, **kwargs: Any) -> Any:
        """:func:`landscape.plotting.static.plot_correlation` of this correlation."""
        from landscape.plotting.static import plot_correlation

        return plot_correlation(self, metric, **kwargs)

    # ------------------------------------------------------------------ display
    def summary(self) -> str:
        """One line: the population, the gap, the axes and how seeds count."""
        axes = ", ".join(
            name + (f" ({', '.join(keys)})" if keys != [name] else "")
            for name, keys in self.axes.items()
        )
        seeds = self.settings.get("seeds", "replicate")
        return (
            f"{len(self.models)} runs; gap = {_gap_text(self.gap)}; axes: {axes or 'none'}; "
            f"seeds: {'an axis' if seeds == 'axis' else 'replicates'}; tau-a with "
            f"{self.settings.get('confidence', 0.95):.0%} bootstrap intervals"
        )

    def _cells(self, digits: int) -> tuple[list[str], list[list[str]]]:
        header = ["metric", "n", "tau", "tau CI", *(f"psi[{a}]" for a in self.axes), "Psi"]
        body = []
        for m in self.metrics:
            res = self.results[m]
            cells = [m, str(res["n"]), _f(res["tau"], digits), _ci(res["tau_ci"], digits)]
            for a in self.axes:
                cell = res["psi"].get(a) or {}
                text = _f(cell.get("value"), digits)
                if cell.get("ci") is not None and _finite(cell["ci"]):
                    text += " " + _ci(cell["ci"], digits)
                cells.append(text)
            cells.append(_f(res["Psi"], digits) + (
                " " + _ci(res["Psi_ci"], digits) if _finite(res["Psi_ci"]) else ""
            ))  # fmt: skip
            body.append(cells)
        return header, body

    def format_table(self, digits: int = 2) -> str:
        """A plain-text table: one row per metric, τ, its interval, ψ per axis, Ψ."""
        from landscape.compare import text_table

        return text_table(*self._cells(digits))

    def __str__(self) -> str:
        return f"{self.summary()}\n{self.format_table()}"

    def _repr_html_(self) -> str:
        header, body = self._cells(2)
        head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in body
        )
        caption = html.escape(self.summary())
        return (
            f"<table><caption>{caption}</caption><thead><tr>{head}</tr></thead>"
            f"<tbody>{rows}</tbody></table>"
        )


def _num(v: Any) -> float:
    return math.nan if v is None else float(v)


def _finite(pair: Any) -> bool:
    return isinstance(pair, list | tuple) and all(v is not None and math.isfinite(v) for v in pair)


def _f(v: Any, digits: int) -> str:
    v = _num(v)
    return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def _ci(pair: Any, digits: int) -> str:
    if not _finite(pair):
        return "-"
    return f"[{_f(pair[0], digits)}, {_f(pair[1], digits)}]"


def _metric_result(
    values: Sequence[float],
    gaps: Sequence[float],
    configs: Sequence[Mapping[str, Any]],
    axes: Mapping[str, Sequence[str]],
    draws: int,
    seed: int,
    confidence: float,
    name: str = "",
) -> dict[str, Any]:
    """One metric's τ, interval and Ψ over the runs where it and the gap are finite."""
    keep = [i for i, (v, g) in enumerate(zip(values, gaps, strict=True)) if math.isfinite(v + g)]
    if len(keep) < len(values):
        logger.warning(
            "%s: %d of %d runs have no finite value and are left out",
            name,
            len(values) - len(keep),
            len(values),
        )
    mu = [values[i] for i in keep]
    g = [gaps[i] for i in keep]
    hp = [configs[i] for i in keep]
    gran = granulated_tau(mu, g, hp, axes=axes, draws=draws, seed=seed, confidence=confidence)
    return {
        "n": len(keep),
        "tau": kendall_tau(mu, g),
        "tau_ci": list(bootstrap_tau(mu, g, draws=draws, seed=seed, confidence=confidence)),
        "psi": {
            a: {"value": t.value, "ci": list(t.ci), "groups": t.groups} for a, t in gran.psi.items()
        },
        "Psi": gran.value,
        "Psi_ci": list(gran.ci),
    }


def _axis_value(config: Mapping[str, Any], keys: Sequence[str]) -> Any:
    values = [config.get(k) for k in keys]
    return values[0] if len(values) == 1 else values


def _seeds_and_axes(
    configs: Sequence[Mapping[str, Any]], seeds: str
) -> tuple[list[str], dict[str, list[str]]]:
    """The runs' seed keys, and their axes (the seed is an axis only with ``"axis"``)."""
    seed_keys = _seed_keys(configs)
    axis_input = configs
    if seeds == "replicate":
        axis_input = [{k: v for k, v in c.items() if k not in seed_keys} for c in configs]
    return seed_keys, population_axes(axis_input)


def _check_correlate_arguments(
    runs: Sequence[str | os.PathLike[str]],
    metrics: str | Iterable[str],
    gap: str,
    seeds: str,
    draws: int,
    confidence: float,
    out: str | os.PathLike[str] | None,
    labels: Sequence[str] | None,
) -> tuple[list[str], list[Path]]:
    """:func:`correlate_runs`' checks before any work: the metric names and run paths."""
    from landscape._io import check_output
    from landscape.metrics import validate_metric_names

    names = validate_metric_names(metrics)
    if gap not in GAPS:
        raise ValueError(f"Invalid gap: {gap!r} (expected 'acc' or 'loss')")
    if seeds not in SEED_MODES:
        raise ValueError(f"Invalid seeds: {seeds!r} (expected 'replicate' or 'axis')")
    _check_bootstrap(draws, confidence)
    if out is not None:
        if Path(out).suffix.lower() != ".json":
            raise ValueError(f"Invalid out: {os.fspath(out)!r} (expected a .json file)")
        check_output(out, suffixes=(".json",), what="out")
    paths = [Path(r) for r in runs]
    if len(paths) < 2:
        raise ValueError(f"Invalid runs: {len(paths)} given (a correlation needs two or more)")
    if len({p.resolve() for p in paths}) != len(paths):
        raise ValueError("Invalid runs: a run folder is given twice")
    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"Invalid labels: {len(labels)} labels for {len(paths)} runs")
    return names, paths


def _population_models(
    rows: Sequence[Mapping[str, Any]],
    paths: Sequence[Path],
    configs: Sequence[Mapping[str, Any]],
    axes: Mapping[str, Any],
    gaps: Sequence[float],
    names: Sequence[str],
) -> list[dict[str, Any]]:
    """One entry per run: its label, files, gap, hyper-parameters on the axes, measures."""
    return [
        {
            "label": row["label"],
            "run": os.fspath(paths[i]),
            "checkpoint": row["checkpoint"],
            "epoch": row.get("epoch"),
            "gap": gaps[i],
            "hparams": {a: _axis_value(configs[i], keys) for a, keys in axes.items()},
            "seed": configs[i].get("seed"),
            "measures": {m: row[m]["value"] for m in names},
            **{r: row[r]["value"] for r in _RECORDED},
        }
        for i, row in enumerate(rows)
    ]


def correlate_runs(
    runs: Sequence[str | os.PathLike[str]],
    metrics: str | Iterable[str],
    *,
    gap: str = "acc",
    seeds: str = "replicate",
    split: str = "train",
    max_samples: int | None = None,
    labels: Sequence[str] | None = None,
    device: str | None = None,
    batch_size: int = 256,
    per_metric: Mapping[str, Mapping[str, Any]] | None = None,
    draws: int = 1000,
    bootstrap_seed: int = 0,
    confidence: float = 0.95,
    progress: bool | None = None,
    out: str | os.PathLike[str] | None = None,
    resume: bool = True,
    **options: Any,
) -> Correlation:
    """Correlate measures of a population of runs with their generalisation gap.

    Each run folder stands for its final checkpoint, measured with
    :func:`~landscape.compare.compare_checkpoints`; its gap comes from that checkpoint's
    training record (``train_acc − test_acc`` in points, or ``test_loss − train_loss``),
    its hyper-parameters from its ``config.json`` (the entries that differ between runs,
    merged into axes by :func:`population_axes`). Per metric: :func:`kendall_tau` with the
    gap, its :func:`bootstrap_tau` interval and :func:`granulated_tau` over the axes; a
    run whose measure is not finite is left out of that metric (``n`` counts the rest).
    With ``out``, an interrupted call resumes (see the module docstring); the gap, seeds
    and bootstrap settings can change between calls.

    Args:
        runs: run folders (each with ``config.json`` and its checkpoints).
        metrics: metric names (list or ``"lambda_max,trace"``).
        gap: ``"acc"`` or ``"loss"`` (:data:`GAPS`).
        seeds: ``"replicate"`` (default): the seed (and ``data.seed``, which follows it)
            is not an axis; runs differing only in it are replicates, grouped together
            and never compared with each other in a ``ψ``. ``"axis"``: the seed is an
            axis with its own ``ψ``.
        split: the split the metrics are measured on (``"train"``, ``"val"``, ``"test"``).
        max_samples: measure on the first ``max_samples`` samples only.
        labels: one label per run (default the folder names).
        device: ``"cpu"``, ``"cuda"``, ... (default: CUDA when available).
        batch_size: evaluation batch size.
        per_metric: options for one metric only.
        draws: bootstrap draws (at least 100; default 1000).
        bootstrap_seed: seed of the bootstrap.
        confidence: coverage of the intervals.
        progress: progress bars (``None``: only on a terminal).
        out: a ``.json`` file, written after every run and resumed from.
        resume: reuse the rows of an existing ``out``; ``False`` starts over.
        **options: metric options shared by the metrics that take them (``rho``,
            ``steps``, ``num_products``, ``seed``, ...).

    Raises:
        ValueError: an unknown metric or option, a bad ``gap``/``seeds``/``draws``/
            ``confidence``, fewer than two runs, a path that is not a run folder (no
            ``config.json``), a final checkpoint whose training record lacks the gap's
            values, an ``out`` that is not a writable ``.json`` file or holds another
            measurement (all before any work).
        FileNotFoundError: a missing run folder, or one without checkpoints.
        landscape.compare.CompareInterrupted: interrupted while writing ``out``.
    """
    from landscape.checkpoint import run_checkpoints
    from landscape.compare import compare_checkpoints

    names, paths = _check_correlate_arguments(
        runs, metrics, gap, seeds, draws, confidence, out, labels
    )
    configs = [_run_config(p) for p in paths]
    finals = [run_checkpoints(p)[-1] for p in paths]
    _check_records(finals, paths, gap)

    row_labels = list(labels) if labels is not None else _run_labels(paths)
    cmp = compare_checkpoints(
        finals,
        names,
        split=split,
        max_samples=max_samples,
        labels=row_labels,
        device=device,
        batch_size=batch_size,
        per_metric=per_metric,
        progress=progress,
        out=out,
        resume=resume,
        recorded=_RECORDED,
        **options,
    )

    seed_keys, axes = _seeds_and_axes(configs, seeds)
    gaps = [_gap_of(row, gap) for row in cmp.rows]
    models = _population_models(cmp.rows, paths, configs, axes, gaps, names)
    results = {}
    for m in names:
        values = [_num(row[m]["value"]) for row in cmp.rows]
        stats = (draws, bootstrap_seed, confidence)
        results[m] = _metric_result(values, gaps, configs, axes, *stats, name=m)
    settings = {
        "gap": gap,
        "seeds": seeds,
        "seed_keys": seed_keys,
        "draws": int(draws),
        "bootstrap_seed": int(bootstrap_seed),
        "confidence": float(confidence),
        "comparison": cmp.settings,
    }
    corr = Correlation(names, gap, axes, models, results, settings, cmp)
    if out is not None:
        corr.to_json(out)
    return corr


# --------------------------------------------------------------------------- a finding

#: Flatness measures a finding uses, in order of preference (the first the table has).
FLATNESS_MEASURES = ("lambda_max", "trace")
_MEASURE_TEXT = {"lambda_max": "λmax", "trace": "the Hessian trace"}
_SHORT_TEXT = {"lambda_max": "λmax", "trace": "trace"}
# Below this |τ| (and not significant) a finding says "no relation".
_NO_RELATION = 0.2


@dataclass(frozen=True)
class Finding:
    """How a flatness measure ranks with test accuracy across a few models, in one sentence.

    Attributes:
        measure: the flatness measure's column (``lambda_max``, ``trace``, ...): lower is
            flatter.
        accuracy: the accuracy column (``test_acc``, in percent).
        labels: the models counted (finite measure and accuracy), in table order.
        measures: their measure values.
        accuracies: their accuracies.
        tau: Kendall's tau-a of the measure with the accuracy (negative: the flatter
            models are the more accurate).
        p_value: its two-sided :func:`permutation_pvalue`.
        clean: whether the models were trained on noisy labels, the accuracy being on
            the clean test labels.
        sentence: the finding, phrased from the numbers above.
    """

    measure: str
    accuracy: str
    labels: tuple[str, ...]
    measures: tuple[float, ...]
    accuracies: tuple[float, ...]
    tau: float
    p_value: float
    clean: bool
    sentence: str

    def __str__(self) -> str:
        return self.sentence


def _column(rows: Sequence[Mapping[str, Any]], name: str) -> list[float]:
    values = []
    for row in rows:
        cell = row.get(name)
        v = cell.get("value") if isinstance(cell, Mapping) else cell
        ok = isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        values.append(float(v) if ok else math.nan)
    return values


def _and(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def _p_text(p: float) -> str:
    return "p < 0.001" if p < 0.001 else f"p = {p:.2g}"


def flatness_finding(
    comparison: Any,
    measure: str | None = None,
    accuracy: str = "test_acc",
    *,
    alpha: float = 0.05,
    clean: bool | None = None,
    draws: int = 10_000,
    seed: int = 0,
) -> Finding:
    """State in one sentence how flatness ranks with accuracy across a comparison's rows.

    Kendall's τ (:func:`kendall_tau`) of the flatness measure with the accuracy over the
    rows with finite values of both, and its :func:`permutation_pvalue`; the sentence
    says, from those numbers only:

    - ``p < alpha``: the flatter the model, the higher (τ < 0) or the lower (τ > 0) its
      accuracy;
    - otherwise, ``|τ| < 0.2``: no relation;
    - otherwise: a tendency one way that chance explains as well at this ``n``;

    then which model is the flattest and which the most accurate (ties named together),
    with their values.

    Args:
        comparison: a :class:`~landscape.compare.Comparison`, or its JSON layout
            (``{"metrics": [...], "rows": [...]}``).
        measure: the flatness column (lower is flatter); default the first of
            :data:`FLATNESS_MEASURES` the table has.
        accuracy: the accuracy column, in percent (the training record's ``test_acc``).
        alpha: the significance level.
        clean: whether to call the accuracy clean (the models trained on noisy labels);
            default: when the table has a ``train_clean_acc`` column with a value, which
            the training record holds only for a run with noisy training labels (test
            labels are never noised).
        draws: random pairings of the p-value beyond 9 models.
        seed: their seed.

    Raises:
        ValueError: the table lacks the columns, or fewer than two rows have finite
            values of both.
    """
    if not 0 < alpha < 1:
        raise ValueError(f"Invalid alpha: {alpha} (expected 0 < alpha < 1)")
    if isinstance(comparison, Mapping):
        rows, columns = list(comparison.get("rows") or []), list(comparison.get("metrics") or [])
    else:
        rows, columns = list(comparison.rows), list(comparison.metrics)
    if measure is None:
        measure = next((m for m in FLATNESS_MEASURES if m in columns), None)
        if measure is None:
            raise ValueError(f"Invalid comparison: none of {', '.join(FLATNESS_MEASURES)}")
    for name in (measure, accuracy):
        if name not in columns:
            raise ValueError(f"Invalid comparison: no {name!r} column")
    mu, acc = _column(rows, measure), _column(rows, accuracy)
    keep = [i for i in range(len(rows)) if math.isfinite(mu[i]) and math.isfinite(acc[i])]
    if len(keep) < 2:
        raise ValueError(
            f"Invalid comparison: {len(keep)} rows with finite {measure} and {accuracy} "
            "(at least 2)"
        )
    labels = tuple(str(rows[i].get("label") or rows[i].get("checkpoint") or i) for i in keep)
    mu, acc = [mu[i] for i in keep], [acc[i] for i in keep]
    if clean is None:
        clean = any(math.isfinite(v) for v in _column(rows, "train_clean_acc"))
    tau = kendall_tau(mu, acc)
    p = permutation_pvalue(mu, acc, draws=draws, seed=seed)
    acc_text = ("clean " if clean else "") + (
        "test accuracy" if accuracy == "test_acc" else accuracy
    )
    sentence = _finding_sentence(measure, acc_text, labels, mu, acc, tau, p, alpha)
    return Finding(measure, accuracy, labels, tuple(mu), tuple(acc), tau, p, bool(clean), sentence)


def _finding_sentence(
    measure: str,
    acc_text: str,
    labels: Sequence[str],
    mu: Sequence[float],
    acc: Sequence[float],
    tau: float,
    p: float,
    alpha: float,
) -> str:
    what = _MEASURE_TEXT.get(measure, measure)
    short = _SHORT_TEXT.get(measure, measure)
    signed = f"{tau:+.2f}".replace("-", "−")
    stats = f"Kendall τ of {what} with {acc_text} {signed}, permutation {_p_text(p)}"
    n = len(labels)
    if p < alpha:
        how = "higher" if tau < 0 else "lower"
        head = f"Across the {n} models, the flatter the model, the {how} its {acc_text}"
    elif abs(tau) < _NO_RELATION:
        head = f"Across the {n} models, {what} shows no relation to {acc_text}"
    else:
        lean = "more" if tau < 0 else "less"
        head = (
            f"Across the {n} models, the flatter tend to be the {lean} accurate, "
            "but not significantly"
        )
    flattest = [i for i in range(n) if mu[i] == min(mu)]
    best = [i for i in range(n) if acc[i] == max(acc)]
    if flattest == best:
        i = flattest[0]
        who = (
            f"{_and([labels[j] for j in best])} {'is' if len(best) == 1 else 'are'} both the "
            f"flattest ({short} {mu[i]:.3g}) and the most accurate ({acc[i]:.1f} %)"
        )
    else:
        flat = _and([labels[j] for j in flattest])
        if len(flattest) == 1:
            flat += f" is the flattest ({short} {mu[flattest[0]]:.3g}, {acc[flattest[0]]:.1f} %)"
        else:
            flat += f" are the flattest ({short} {mu[flattest[0]]:.3g})"
        top = _and([labels[j] for j in best])
        if len(best) == 1:
            top += f" the most accurate ({acc[best[0]]:.1f} %, {short} {mu[best[0]]:.3g})"
        else:
            top += f" the most accurate ({acc[best[0]]:.1f} %)"
        who = f"{flat} and {top}"
    return f"{head} ({stats}); {who}."
