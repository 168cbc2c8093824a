"""Built-in datasets, label noise, subsets and splits, as in-memory tensor datasets.

Every dataset comes back as a :class:`DataBundle` of :class:`~torch.utils.data.TensorDataset`
splits (inputs ``float32``, targets ``int64``) together with a JSON-serialisable ``spec``:
``load_data(**bundle.spec)`` rebuilds exactly the same bundle, which is how a checkpoint
finds its data again.

Names (:data:`DATA_NAMES`):

- ``digits``: scikit-learn's 8×8 handwritten digits (1797 real images, shipped with
  scikit-learn), inputs ``(1, 8, 8)`` scaled to [0, 1]; a seeded stratified 20 % is the
  test split (option ``test_fraction``).
- ``mnist1d``: MNIST-1D (Greydanus 2020) generated locally with the ``mnist1d`` package's
  generator from a seeded arguments object (never downloaded, nothing written to disk);
  inputs ``(40,)``; options ``num_samples`` (5000), ``data_seed`` (42, the package's
  canonical dataset), ``train_split`` (0.8).
- ``synthetic``: a seeded Gaussian mixture; options ``n_train`` (1000), ``n_test`` (1000),
  ``dim`` (20), ``classes`` (4), ``noise`` (1.0, the within-class standard deviation
  relative to unit-norm-scaled class means of length ``separation`` = 3.0),
  ``data_seed`` (0); inputs ``(dim,)``.
- ``cifar10`` / ``cifar100``: read from ``data_dir`` in the standard python-pickle
  layout (see :data:`CIFAR_LAYOUT`) with a restricted unpickler that only rebuilds
  numpy arrays and builtin containers, so no pickled code ever runs; inputs
  ``(3, 32, 32)`` normalised with the usual per-channel mean and standard deviation.

Options common to all (applied in this order):

1. ``n_per_class``: keep a seeded random subset of that many training examples per class.
2. ``val_fraction``: hold out a seeded, stratified fraction of the (remaining) training
   set as the validation split (clean labels).
3. ``label_noise``: symmetric label noise on the training split: exactly
   ``round(label_noise * n_train)`` examples, chosen by the seed, get a label drawn
   uniformly from the *other* classes (so exactly that fraction is wrong). The clean
   labels stay available as :attr:`DataBundle.clean_targets`.
"""

from __future__ import annotations

import codecs
import contextlib
import functools
import io
import logging
import os
import pickle
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, TensorDataset

__all__ = [
    "CIFAR_LAYOUT",
    "DATA_NAMES",
    "DataBundle",
    "apply_label_noise",
    "as_bundle",
    "load_data",
    "restricted_unpickle",
]

log = logging.getLogger(__name__)

DATA_NAMES: tuple[str, ...] = ("digits", "mnist1d", "synthetic", "cifar10", "cifar100")

CIFAR_LAYOUT = {
    "cifar10": (
        "DATA_DIR/cifar-10-batches-py/{data_batch_1, ..., data_batch_5, test_batch, "
        "batches.meta}  (the python version from https://www.cs.toronto.edu/~kriz/cifar.html, "
        "unpacked; DATA_DIR may also be the cifar-10-batches-py folder itself)"
    ),
    "cifar100": (
        "DATA_DIR/cifar-100-python/{train, test, meta}  (the python version from "
        "https://www.cs.toronto.edu/~kriz/cifar.html, unpacked; DATA_DIR may also be the "
        "cifar-100-python folder itself)"
    ),
}

# Standard per-channel statistics of the CIFAR training sets.
_CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


@dataclass
class DataBundle:
    """A dataset ready for training and analysis.

    Attributes:
        train: training split (with label noise applied, if any).
        val: held-out validation split, or ``None``.
        test: test split, or ``None`` (a user's data without one).
        num_classes: number of classes.
        input_shape: shape of one input: ``(C, H, W)``, ``(C, L)`` or ``(D,)``.
        spec: JSON-serialisable arguments of :func:`load_data` that rebuild this bundle,
            or ``None`` for data passed in by the user.
        clean_targets: the training labels before label noise (``None`` without noise).
    """

    train: Dataset
    val: Dataset | None
    test: Dataset | None
    num_classes: int
    input_shape: tuple[int, ...]
    spec: dict[str, Any] | None = None
    clean_targets: torch.Tensor | None = field(default=None, repr=False)

    @property
    def name(self) -> str | None:
        """The built-in dataset's name (``None`` for user data)."""
        return None if self.spec is None else self.spec.get("name")

    def clean_train(self) -> Dataset:
        """The training split with its clean (pre-noise) labels."""
        if self.clean_targets is None:
            return self.train
        inputs = self.train.tensors[0]  # type: ignore[attr-defined]
        return TensorDataset(inputs, self.clean_targets)


# --------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _preserved_global_rng() -> Iterator[None]:
    """Restore numpy's and Python's global RNG afterwards (third-party code seeds them)."""
    np_state = np.random.get_state()  # noqa: NPY002 - legacy global state, restored
    py_state = random.getstate()
    try:
        yield
    finally:
        np.random.set_state(np_state)  # noqa: NPY002
        random.setstate(py_state)


def _rng(seed: int, stream: int) -> np.random.Generator:
    """An independent generator for one purpose (subset, split, noise) of one seed."""
    return np.random.default_rng([int(seed), int(stream)])


def _to_dataset(x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> TensorDataset:
    xt = torch.as_tensor(np.asarray(x), dtype=torch.float32)
    yt = torch.as_tensor(np.asarray(y), dtype=torch.int64)
    return TensorDataset(xt.contiguous(), yt.contiguous())


def _stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (keep, held_out), holding out exactly ``round(fraction * n)``.

    Each class gives ``floor(fraction * n_c)`` examples, and the remaining ones go to the
    classes with the largest fractional parts (largest-remainder apportionment).
    """
    classes = np.unique(y)
    counts = np.array([(y == c).sum() for c in classes])
    quota = fraction * counts
    take = np.floor(quota).astype(np.int64)
    extra = round(fraction * len(y)) - int(take.sum())
    if extra > 0:
        order = np.lexsort((rng.permutation(len(classes)), -(quota - take)))
        take[order[:extra]] += 1
    keep, held = [], []
    for c, k in zip(classes, take):
        idx = np.flatnonzero(y == c)
        idx = idx[rng.permutation(len(idx))]
        held.append(idx[:k])
        keep.append(idx[k:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def apply_label_noise(
    targets: np.ndarray | torch.Tensor, fraction: float, num_classes: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric label noise that flips exactly ``round(fraction * n)`` labels.

    The examples to corrupt are a seeded random subset; each gets a label drawn uniformly
    from the ``num_classes - 1`` other classes, so exactly that many labels end up wrong.

    Args:
        targets: clean integer labels, shape ``(n,)``.
        fraction: fraction of labels to corrupt, in [0, 1].
        num_classes: number of classes (at least 2 when ``fraction > 0``).
        seed: seed of the corruption.

    Returns:
        ``(noisy_targets, flipped_indices)`` as numpy arrays.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"Invalid label_noise: {fraction} (expected a fraction in [0, 1])")
    y = np.asarray(targets, dtype=np.int64).copy()
    n = len(y)
    k = round(fraction * n)
    if k == 0:
        return y, np.zeros(0, dtype=np.int64)
    if num_classes < 2:
        raise ValueError(f"Invalid label_noise: {fraction} needs at least 2 classes")
    rng = _rng(seed, 3)
    flip = np.sort(rng.choice(n, size=k, replace=False))
    shift = rng.integers(1, num_classes, size=k)  # 1..C-1: never the same class
    y[flip] = (y[flip] + shift) % num_classes
    return y, flip


# --------------------------------------------------------------------------- CIFAR


_SAFE_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,  # bytes written by Python 3 with protocol 2
}
# numpy's array and scalar reconstructors, under their numpy 1 and numpy 2 module names.
for _mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
    _SAFE_GLOBALS[(_mod, "_reconstruct")] = np.zeros(0).__reduce__()[0]
    _SAFE_GLOBALS[(_mod, "scalar")] = np.int64(0).__reduce__()[0]


class _RestrictedUnpickler(pickle.Unpickler):
    """Rebuilds builtin containers and numpy arrays only; any other global is refused."""

    def __init__(self, file: Any, source: str) -> None:
        super().__init__(file, encoding="bytes")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise ValueError(
                f"{self._source}: refusing to unpickle {module}.{name} (only numpy arrays "
                "and builtin containers are allowed in a dataset file)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ValueError(f"{self._source}: refusing to unpickle a persistent reference")


def restricted_unpickle(path: str | os.PathLike[str]) -> Any:
    """Load a pickle that may only hold builtin containers, scalars and numpy arrays.

    Used for the CIFAR python batches: a file that asks for any other global (a function,
    a class) is refused with a ``ValueError`` before anything runs.
    """
    data = Path(path).read_bytes()
    try:
        return _RestrictedUnpickler(io.BytesIO(data), str(path)).load()
    except ValueError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise ValueError(f"{path}: not a readable pickle ({type(exc).__name__}: {exc})") from None


def _find_cifar_dir(name: str, data_dir: str | os.PathLike[str] | None) -> Path:
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    marker = "data_batch_1" if name == "cifar10" else "train"
    if data_dir is None:
        data_dir = os.environ.get("SHARPSCAPE_DATA_DIR", "data")
    root = Path(data_dir).expanduser()
    for cand in (root / folder, root):
        if (cand / marker).is_file():
            return cand
    raise FileNotFoundError(
        f"{name} not found under data_dir={str(root)!r}; expected layout: {CIFAR_LAYOUT[name]}"
    )


def _cifar_arrays(batch: Any, path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(batch, dict):
        raise ValueError(f"{path}: expected a dict of arrays, got {type(batch).__name__}")
    batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
    key = label_key.decode()
    if "data" not in batch or key not in batch:
        raise ValueError(f"{path}: missing 'data' or {key!r} in the batch")
    x = np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    y = np.asarray(batch[key], dtype=np.int64)
    if len(x) != len(y):
        raise ValueError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def _load_cifar(name: str, root: Path) -> tuple[np.ndarray, ...]:
    if name == "cifar10":
        train_files = [root / f"data_batch_{i}" for i in range(1, 6)]
        test_files = [root / "test_batch"]
        label_key, classes = b"labels", 10
    else:
        train_files, test_files = [root / "train"], [root / "test"]
        label_key, classes = b"fine_labels", 100
    parts = {}
    for split, files in (("train", train_files), ("test", test_files)):
        xs, ys = [], []
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(
                    f"{name}: missing {f}; expected layout: {CIFAR_LAYOUT[name]}"
                )
            x, y = _cifar_arrays(restricted_unpickle(f), f, label_key)
            xs.append(x)
            ys.append(y)
        parts[split] = (np.concatenate(xs), np.concatenate(ys))
    mean, std = _CIFAR_STATS[name]
    mean_a = np.asarray(mean, dtype=np.float32).reshape(1, 3, 1, 1)
    std_a = np.asarray(std, dtype=np.float32).reshape(1, 3, 1, 1)

    def norm(x: np.ndarray) -> np.ndarray:
        return (x.astype(np.float32) / 255.0 - mean_a) / std_a

    (xtr, ytr), (xte, yte) = parts["train"], parts["test"]
    return norm(xtr), ytr, norm(xte), yte, classes


# --------------------------------------------------------------------------- sources


def _load_digits(seed: int, test_fraction: float = 0.2) -> tuple[Any, ...]:
    from sklearn.datasets import load_digits

    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"Invalid test_fraction: {test_fraction} (expected 0 < f < 1)")
    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[:, None, :, :]
    y = d.target.astype(np.int64)
    # The test split is fixed (seed 0), whatever the run's seed: runs stay comparable.
    keep, held = _stratified_split(y, test_fraction, _rng(0, 0))
    return x[keep], y[keep], x[held], y[held], 10


def _load_mnist1d(
    seed: int, num_samples: int = 5000, data_seed: int = 42, train_split: float = 0.8
) -> tuple[Any, ...]:
    if num_samples < 20:
        raise ValueError(f"Invalid num_samples: {num_samples} (at least 20)")
    if not 0.0 < train_split < 1.0:
        raise ValueError(f"Invalid train_split: {train_split} (expected 0 < f < 1)")
    d = _mnist1d_arrays(int(num_samples), int(data_seed), float(train_split))
    return d["x"].copy(), d["y"].copy(), d["x_test"].copy(), d["y_test"].copy(), 10


@functools.lru_cache(maxsize=4)
def _mnist1d_arrays(num_samples: int, data_seed: int, train_split: float) -> dict[str, Any]:
    """Generate MNIST-1D once per process and options (it takes seconds)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = data_seed
    args.train_split = train_split
    # make_dataset generates in memory (get_dataset would download/write a pickle); it
    # seeds numpy's and Python's global RNGs, which we restore afterwards.
    with _preserved_global_rng():
        return make_dataset(args)


def _load_synthetic(
    seed: int,
    n_train: int = 1000,
    n_test: int = 1000,
    dim: int = 20,
    classes: int = 4,
    noise: float = 1.0,
    separation: float = 3.0,
    data_seed: int = 0,
) -> tuple[Any, ...]:
    for pname, val in (("n_train", n_train), ("n_test", n_test), ("dim", dim)):
        if int(val) < 1:
            raise ValueError(f"Invalid {pname}: {val} (at least 1)")
    if int(classes) < 2:
        raise ValueError(f"Invalid classes: {classes} (at least 2)")
    if noise < 0:
        raise ValueError(f"Invalid noise: {noise}")
    rng = np.random.default_rng([int(data_seed), 7])
    means = rng.standard_normal((classes, dim))
    means *= separation / np.linalg.norm(means, axis=1, keepdims=True)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(n) % classes
        y = y[rng.permutation(n)]
        x = means[y] + noise * rng.standard_normal((n, dim))
        return x.astype(np.float32), y.astype(np.int64)

    xtr, ytr = draw(int(n_train))
    xte, yte = draw(int(n_test))
    return xtr, ytr, xte, yte, int(classes)


_SOURCES = {
    "digits": _load_digits,
    "mnist1d": _load_mnist1d,
    "synthetic": _load_synthetic,
}


def load_data(
    name: str,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    seed: int = 0,
    label_noise: float = 0.0,
    n_per_class: int | None = None,
    val_fraction: float = 0.0,
    **kwargs: Any,
) -> DataBundle:
    """Load a built-in dataset as in-memory tensors.

    Args:
        name: one of :data:`DATA_NAMES`.
        data_dir: folder holding the CIFAR files (default ``$SHARPSCAPE_DATA_DIR`` or
            ``./data``); unused by the generated datasets.
        seed: seed of the training subset, the validation split and the label noise.
        label_noise: fraction of training labels to corrupt (symmetric, exact count).
        n_per_class: keep this many training examples per class (seeded choice).
        val_fraction: stratified fraction of the training set held out for validation.
        **kwargs: options of the dataset (see the module docstring).

    Returns:
        A :class:`DataBundle`; ``load_data(**bundle.spec)`` rebuilds it.

    Raises:
        ValueError: unknown name or option, or an invalid value.
        FileNotFoundError: CIFAR files missing (the message shows the expected layout).
    """
    if name not in DATA_NAMES:
        raise ValueError(f"Unknown dataset {name!r}; choose one of {', '.join(DATA_NAMES)}")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise ValueError(f"Invalid val_fraction: {val_fraction} (expected 0 <= f < 1)")
    if n_per_class is not None and int(n_per_class) < 1:
        raise ValueError(f"Invalid n_per_class: {n_per_class} (at least 1)")
    if not 0.0 <= float(label_noise) <= 1.0:  # NaN too (it would read as no noise)
        raise ValueError(f"Invalid label_noise: {label_noise} (expected a fraction in [0, 1])")
    if name in ("cifar10", "cifar100"):
        if kwargs:
            raise ValueError(f"Unknown option(s) for {name}: {', '.join(sorted(kwargs))}")
        root = _find_cifar_dir(name, data_dir)
        data_dir = root.parent if root.name.startswith("cifar-") else root
        xtr, ytr, xte, yte, classes = _load_cifar(name, root)
    else:
        try:
            xtr, ytr, xte, yte, classes = _SOURCES[name](seed, **kwargs)
        except TypeError:
            import inspect

            allowed = [p for p in inspect.signature(_SOURCES[name]).parameters if p != "seed"]
            bad = sorted(set(kwargs) - set(allowed))
            if not bad:
                raise
            raise ValueError(
                f"Unknown option(s) for {name}: {', '.join(bad)} (allowed: {', '.join(allowed)})"
            ) from None
        except ValueError as exc:
            if not kwargs:
                raise
            given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
            raise ValueError(f"Invalid option for {name} ({given}): {exc}") from None
    xtr = np.asarray(xtr, dtype=np.float32)
    ytr = np.asarray(ytr, dtype=np.int64)

    if n_per_class is not None:
        rng = _rng(seed, 1)
        idx = []
        for c in range(classes):
            members = np.flatnonzero(ytr == c)
            if len(members) < n_per_class:
                raise ValueError(
                    f"Invalid n_per_class: {n_per_class} (class {c} of {name} has only "
                    f"{len(members)} training examples)"
                )
            idx.append(rng.choice(members, size=int(n_per_class), replace=False))
        sel = np.sort(np.concatenate(idx))
        xtr, ytr = xtr[sel], ytr[sel]

    val = None
    if val_fraction > 0:
        keep, held = _stratified_split(ytr, float(val_fraction), _rng(seed, 2))
        if len(keep) == 0 or len(held) == 0:
            raise ValueError(f"Invalid val_fraction: {val_fraction} leaves an empty split")
        val = _to_dataset(xtr[held], ytr[held])
        xtr, ytr = xtr[keep], ytr[keep]

    clean = None
    if label_noise > 0:
        noisy, _ = apply_label_noise(ytr, float(label_noise), classes, seed)
        clean = torch.as_tensor(ytr, dtype=torch.int64)
        ytr = noisy

    spec: dict[str, Any] = {
        "name": name,
        "seed": int(seed),
        "label_noise": float(label_noise),
        "n_per_class": None if n_per_class is None else int(n_per_class),
        "val_fraction": float(val_fraction),
        **kwargs,
    }
    if data_dir is not None:
        spec["data_dir"] = str(data_dir)
    return DataBundle(
        train=_to_dataset(xtr, ytr),
        val=val,
        test=_to_dataset(xte, yte),
        num_classes=int(classes),
        input_shape=tuple(int(s) for s in xtr.shape[1:]),
        spec=spec,
        clean_targets=clean,
    )


# --------------------------------------------------------------------------- user data


def _as_dataset(data: Any, what: str) -> Dataset | None:
    if data is None or isinstance(data, Dataset):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = (torch.as_tensor(t) for t in data)
        if x.shape[0] != y.shape[0]:
            raise ValueError(f"Invalid {what}: {x.shape[0]} inputs but {y.shape[0]} targets")
        return TensorDataset(x, y)
    raise ValueError(
        f"Invalid {what}: expected a torch Dataset or an (inputs, targets) pair, "
        f"got {type(data).__name__}"
    )


def as_bundle(
    data: Any,
    *,
    test: Any = None,
    val: Any = None,
    num_classes: int | None = None,
) -> DataBundle:
    """Wrap a dataset name, a bundle, a ``Dataset`` or an ``(inputs, targets)`` pair.

    Args:
        data: a name of :data:`DATA_NAMES` (loaded with defaults), a :class:`DataBundle`
            (returned as is), or the training data as a ``Dataset`` / tensor pair.
        test: optional test data (``Dataset`` or tensor pair) for user data.
        val: optional validation data for user data.
        num_classes: number of classes; inferred from the integer targets when omitted.
    """
    if isinstance(data, DataBundle):
        return data
    if isinstance(data, str):
        return load_data(data)
    train_ds = _as_dataset(data, "data")
    first = train_ds[0]
    if not isinstance(first, tuple | list) or len(first) < 2:
        raise ValueError(
            f"Invalid data: its samples are {type(first).__name__}s; training reads "
            "(inputs, target) samples (for dict batches, e.g. Hugging Face ones, train in "
            "your own loop or the Trainer with the optimizers package)"
        )
    x0, y0 = first[0], first[1]
    input_shape = tuple(torch.as_tensor(x0).shape)
    if num_classes is None:
        targets = _all_targets(train_ds)
        if targets is None or targets.is_floating_point():
            raise ValueError("num_classes: cannot infer it from non-integer targets; pass it")
        num_classes = int(targets.max()) + 1
    del y0
    return DataBundle(
        train=train_ds,
        val=_as_dataset(val, "val"),
        test=_as_dataset(test, "test"),
        num_classes=int(num_classes),
        input_shape=input_shape,
        spec=None,
    )


def _all_targets(ds: Dataset) -> torch.Tensor | None:
    if isinstance(ds, TensorDataset):
        return ds.tensors[1]
    try:
        return torch.as_tensor([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def take_batch(ds: Dataset, indices: Sequence[int] | torch.Tensor) -> tuple[Any, Any]:
    """Gather the examples at ``indices`` into one ``(inputs, targets)`` batch."""
    if isinstance(ds, TensorDataset) and len(ds.tensors) >= 2:
        idx = torch.as_tensor(indices, dtype=torch.long)
        return ds.tensors[0][idx], ds.tensors[1][idx]
    from torch.utils.data import default_collate

    batch = default_collate([ds[int(i)] for i in indices])
    return batch[0], batch[1]
