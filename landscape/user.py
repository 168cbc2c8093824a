"""A user's own model and data, named by Python import paths (``--model``/``--data``).

Every command that reads a checkpoint also reads a :class:`UserModel`: a model and data
that the user's own code builds, named the way ``python -m`` and entry points name
things::

    UserModel(model="mypkg.models:make_model", data="mypkg.data:make_loaders",
              weights="run/best.safetensors")

- ``model``: ``package.module:attribute``, where the attribute is an ``nn.Module`` or a
  callable (a function, a class) that returns one when called without arguments; or a
  folder written by Hugging Face ``save_pretrained`` (a ``config.json`` in it), loaded
  from local files only with the class its ``config.architectures`` names (needs
  ``transformers``).
- ``data``: ``package.module:attribute``, a callable returning the data (or the data
  itself): anything :class:`~landscape.objective.Objective` reads (a ``DataLoader``, a
  ``Dataset``, an ``(inputs, targets)`` tensor pair, a list of batches, Hugging Face dict
  batches) for the training split alone; or a tuple ``(train, test)``; or a dict with
  keys among ``train``, ``val`` and ``test``; or a :class:`~landscape.data.DataBundle`.
- ``weights``: an optional state_dict file loaded into the model (strictly): a
  ``.safetensors`` file, or a ``torch.save`` file read with ``weights_only=True`` (a
  plain state_dict or a sharpscape checkpoint).
- ``loss_fn``: an optional ``package.module:attribute`` of ``loss_fn(outputs, targets)``
  returning the batch's mean loss (default: the model's own loss for Hugging Face
  batches, else cross-entropy); or ``compute_loss``: one of
  ``compute_loss(model, batch)`` returning the batch's mean loss or ``(mean_loss,
  n_items)``, for batches no other rule reads (see :mod:`landscape.batches`).

The factories are called with torch's CPU random generator seeded (``seed``, default 0)
and restored afterwards, so every process under ``torchrun`` and every rerun builds the
same model and the same data (a randomly initialised model included).

:meth:`UserModel.open` returns a :class:`UserCheckpoint`, a
:class:`~landscape.checkpoint.Checkpoint` whose ``load_data`` calls the data factory, so
surfaces, Hessian summaries and comparisons treat it as a checkpoint. Its ``sha256``
identifies the computation's input for resuming: a digest of the import paths (the loss's
included), the seed and the weights file's sha256 (or, without one, the model's weights as
built). :meth:`UserCheckpoint.objective_options` hands the loss to every analysis.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from landscape.checkpoint import Checkpoint

__all__ = ["UserCheckpoint", "UserData", "UserModel", "load_object"]

SPLITS = ("train", "val", "test")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text and text[0] else type(exc).__name__


def load_object(spec: str, what: str = "--model") -> Any:
    """The object ``package.module:attribute`` names (dots after the colon walk attributes).

    Args:
        spec: the import path, e.g. ``"mypkg.models:make_model"``.
        what: how the messages name the argument (``--model``, ``--data``).

    Raises:
        ValueError: a malformed path, a module that cannot be imported or an attribute
            that is missing (one line naming ``what`` and ``spec``).
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(
            f"{what} {spec}: expected package.module:attribute (e.g. mypkg.models:make_model)"
            + (" or a folder with a config.json" if what == "--model" else "")
        )
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (
            exc.name == module_name or module_name.startswith(exc.name + ".")
        ):
            raise ValueError(
                f"{what} {spec}: no module named {exc.name} (run from the folder that holds "
                "it, or add it to PYTHONPATH)"
            ) from exc
        raise ValueError(
            f"{what} {spec}: cannot import {module_name} ({_first_line(exc)})"
        ) from exc
    except Exception as exc:  # the user's module fails while it is imported
        raise ValueError(
            f"{what} {spec}: cannot import {module_name} ({_first_line(exc)})"
        ) from exc
    obj: Any = module
    where = module_name
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {spec}: no attribute {part} in {where}")
        obj = getattr(obj, part)
        where = f"{where}.{part}"
    return obj


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed torch's CPU generator for the user's factories; restore it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)
        yield


def _call(obj: Any, what: str, spec: str, seed: int) -> Any:
    """``obj()`` under a seeded generator, its exceptions as one-line ``ValueError``s."""
    try:
        with _seeded(seed):
            return obj()
    except Exception as exc:
        raise ValueError(f"{what} {spec}: calling it failed ({_first_line(exc)})") from exc


def _is_hf_folder(spec: str) -> bool:
    return Path(spec).is_dir()


def _hf_model(spec: str) -> nn.Module:
    """The model of a ``save_pretrained`` folder, from local files only."""
    folder = Path(spec)
    if not (folder / "config.json").is_file():
        raise ValueError(
            f"--model {spec}: a folder without config.json (expected a Hugging Face "
            "save_pretrained folder, or package.module:attribute)"
        )
    try:
        import transformers
    except ImportError:
        raise ValueError(
            f"--model {spec}: a Hugging Face folder needs the transformers package "
            "(pip install transformers)"
        ) from None
    try:
        config = transformers.AutoConfig.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ValueError(
            f"--model {spec}: cannot read its config.json ({_first_line(exc)})"
        ) from exc
    names = list(getattr(config, "architectures", None) or [])
    if not names:
        raise ValueError(f"--model {spec}: its config.json names no architectures")
    cls = getattr(transformers, names[0], None)
    if cls is None:
        raise ValueError(
            f"--model {spec}: transformers {transformers.__version__} has no class {names[0]}"
        )
    try:
        return cls.from_pretrained(folder, local_files_only=True)
    except Exception as exc:
        raise ValueError(f"--model {spec}: cannot load it ({_first_line(exc)})") from exc


def _state_sha256(model: nn.Module) -> str:
    """Content hash of a model's state (names, dtypes, shapes and bytes)."""
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_weights_path(path: Path) -> None:
    """Refuse a missing weights file, or a folder given as one."""
    if path.is_dir():
        raise ValueError(
            f"{path}: a folder, not a weights file (a Hugging Face save_pretrained folder "
            "goes to --model)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")


def _safetensors_state(path: Path) -> dict[str, Tensor]:
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise ValueError(
            f"{path}: a .safetensors file needs the safetensors package (pip install safetensors)"
        ) from None
    try:
        return load_file(os.fspath(path), device="cpu")
    except Exception as exc:
        raise ValueError(f"{path}: not a readable safetensors file ({_first_line(exc)})") from None


@dataclass
class UserData:
    """The splits of a user's data (what :meth:`Checkpoint.load_data` returns).

    Attributes:
        train: the training split (or ``None``).
        val: the validation split (or ``None``).
        test: the test split (or ``None``).
        name: the import path it came from (a surface file's ``dataset``).
    """

    train: Any
    val: Any = None
    test: Any = None
    name: str | None = None


def _splits(obj: Any, spec: str) -> UserData:
    """The user's data as splits (see the module docstring for the forms read)."""
    from landscape.data import DataBundle

    if isinstance(obj, DataBundle):
        return UserData(obj.train, obj.val, obj.test, spec)
    if isinstance(obj, Mapping) and obj and set(obj) <= set(SPLITS):
        return UserData(obj.get("train"), obj.get("val"), obj.get("test"), spec)
    if isinstance(obj, tuple) and len(obj) == 2 and not all(isinstance(t, Tensor) for t in obj):
        return UserData(obj[0], None, obj[1], spec)
    if isinstance(obj, tuple | list) and any(isinstance(t, DataLoader | Dataset) for t in obj):
        # several loaders in a tuple other than (train, test): not batches of one split
        raise ValueError(
            f"--data {spec}: returned a {type(obj).__name__} of {len(obj)} items holding data "
            "loaders or datasets; expected one split, (train, test), or a dict with keys "
            "among train, val and test"
        )
    if obj is None:
        raise ValueError(f"--data {spec}: returned None (expected data, or (train, test))")
    return UserData(obj, None, None, spec)


@dataclass(frozen=True)
class UserModel:
    """A user's model and data named by import paths (see the module docstring).

    Attributes:
        model: ``package.module:attribute`` or a Hugging Face ``save_pretrained`` folder.
        data: ``package.module:attribute`` of the data (or a factory of it); ``None``
            when the data is passed in another way.
        weights: a state_dict file (``.safetensors`` or ``torch.save``) loaded into the
            model, or ``None`` (the weights as built).
        seed: the seed of torch's CPU generator while the factories run.
        loss_fn: ``package.module:attribute`` of ``loss_fn(outputs, targets)``, or
            ``None`` (the model's own loss, else cross-entropy).
        compute_loss: ``package.module:attribute`` of ``compute_loss(model, batch)``
            returning the mean loss or ``(mean_loss, n_items)``, or ``None``.
    """

    model: str
    data: str | None = None
    weights: str | os.PathLike[str] | None = None
    seed: int = 0
    loss_fn: str | None = None
    compute_loss: str | None = None

    def __post_init__(self) -> None:
        if self.loss_fn is not None and self.compute_loss is not None:
            raise ValueError(
                "Invalid options: --loss-fn and --compute-loss exclude each other "
                "(compute_loss computes the loss itself)"
            )

    def __str__(self) -> str:
        return self.model if self.weights is None else f"{self.model} + {os.fspath(self.weights)}"

    @property
    def label(self) -> str:
        """A short name: the weights file's stem, else the attribute or folder name."""
        if self.weights is not None:
            return Path(self.weights).stem
        if _is_hf_folder(self.model):
            return Path(self.model).name
        return self.model.rpartition(":")[2] or self.model

    def check(self) -> None:
        """Refuse a bad import path or a missing weights file, before any work.

        Raises:
            ValueError: a malformed or unimportable path, a missing attribute.
            FileNotFoundError: a missing weights file.
        """
        if not _is_hf_folder(self.model):
            load_object(self.model, "--model")
        if self.data is not None:
            load_object(self.data, "--data")
        self.objective_options()
        if self.weights is not None:
            _check_weights_path(Path(self.weights))

    def loss_paths(self) -> dict[str, str]:
        """The loss's import path by its keyword (``loss_fn`` or ``compute_loss``), if named."""
        named = {"loss_fn": self.loss_fn, "compute_loss": self.compute_loss}
        return {k: v for k, v in named.items() if v is not None}

    def objective_options(self) -> dict[str, Any]:
        """The loss callables, as :class:`~landscape.objective.Objective` takes them.

        Returns:
            ``{"loss_fn": fn}`` or ``{"compute_loss": fn}`` (``{}`` when neither is named).

        Raises:
            ValueError: a bad import path, or an object that is not callable.
        """
        out: dict[str, Any] = {}
        for key, spec in self.loss_paths().items():
            flag = "--" + key.replace("_", "-")
            fn = load_object(spec, flag)
            if not callable(fn):
                raise ValueError(f"{flag} {spec}: a {type(fn).__name__}, not a callable")
            out[key] = fn
        return out

    def build(self) -> nn.Module:
        """The model as its factory (or folder) builds it, before ``weights`` are loaded."""
        if _is_hf_folder(self.model):
            with _seeded(self.seed):
                model = _hf_model(self.model)
        else:
            obj = load_object(self.model, "--model")
            if not isinstance(obj, nn.Module):
                if not callable(obj):
                    raise ValueError(
                        f"--model {self.model}: a {type(obj).__name__}, neither an nn.Module "
                        "nor a callable returning one"
                    )
                obj = _call(obj, "--model", self.model, self.seed)
            model = obj
        if not isinstance(model, nn.Module):
            raise ValueError(
                f"--model {self.model}: returned a {type(model).__name__}, not a torch.nn.Module"
            )
        return model

    def load_data(self) -> UserData:
        """The data as splits (the factory called once, under the seeded generator).

        Raises:
            ValueError: no ``data`` import path, or a bad one.
        """
        if self.data is None:
            raise ValueError(f"--model {self.model}: no data given (--data package.module:attr)")
        obj = load_object(self.data, "--data")
        if callable(obj) and not isinstance(obj, nn.Module | Dataset | DataLoader):
            obj = _call(obj, "--data", self.data, self.seed)
        return _splits(obj, self.data)

    def _digest(self, weights_sha256: str | None, state_sha256: str | None) -> str:
        ident = {
            "model": self.model,
            "data": self.data,
            "seed": self.seed,
            **self.loss_paths(),
            "weights_sha256": weights_sha256,
            "state_sha256": state_sha256,
        }
        return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()

    def sha256(self) -> str:
        """The digest :meth:`open` gives its checkpoint (builds the model without weights)."""
        if self.weights is not None:
            from landscape.checkpoint import file_sha256

            return self._digest(file_sha256(self.weights), None)
        return self._digest(None, _state_sha256(self.build()))

    def open(
        self, *, map_location: str | torch.device | None = None, finite: bool = False
    ) -> UserCheckpoint:
        """Build the model, load ``weights`` into it, and return it as a checkpoint.

        Args:
            map_location: the device of the model (default CPU).
            finite: refuse weights holding NaN or inf with a ``ValueError``.

        Raises:
            ValueError: a bad import path, a factory that fails or returns no module,
                weights that do not fit the model, or non-finite ones with ``finite``.
            FileNotFoundError: a missing weights file.
        """
        from landscape.checkpoint import (
            _strip_prefix,
            file_sha256,
            load_checkpoint,
            load_state_dict_strict,
            nonfinite_tensors,
        )

        loc = torch.device("cpu") if map_location is None else torch.device(map_location)
        model = self.build()
        meta: dict[str, Any] = {}
        weights_sha = state_sha = None
        if self.weights is not None:
            path = Path(self.weights)
            _check_weights_path(path)
            if path.suffix == ".safetensors":
                state = _strip_prefix(_safetensors_state(path))
                load_state_dict_strict(model, state, path)
                weights_sha = file_sha256(path)
            else:  # a torch.save state_dict or sharpscape checkpoint, weights_only=True
                ckpt = load_checkpoint(path, model, map_location="cpu")
                meta, weights_sha = ckpt.meta, ckpt.sha256
        else:
            state_sha = _state_sha256(model)
        model.to(loc)
        model.eval()
        state_dict = dict(model.state_dict())
        bad = nonfinite_tensors(state_dict)
        if bad and finite:
            shown = ", ".join(bad[:3]) + (", ..." if len(bad) > 3 else "")
            raise ValueError(f"{self}: non-finite weights (nan or inf in {shown})")
        return UserCheckpoint(
            model=model,
            state_dict=state_dict,
            model_spec=None,
            data_spec=None,
            meta=dict(meta),
            path=Path(self.weights if self.weights is not None else self.model),
            sha256=self._digest(weights_sha, state_sha),
            nonfinite=bad,
            source=self,
            weights_sha256=weights_sha,
        )


@dataclass
class UserCheckpoint(Checkpoint):
    """A :class:`UserModel` opened: a checkpoint whose data is the user's.

    Attributes:
        source: the import paths it came from.
        weights_sha256: the sha256 of the weights file, or ``None``.
    """

    source: UserModel | None = field(default=None, kw_only=True)
    weights_sha256: str | None = field(default=None, kw_only=True)

    def load_data(self, **overrides: Any) -> UserData:
        """The user's data (:meth:`UserModel.load_data`); ``overrides`` are not accepted.

        Args:
            **overrides: must be empty (a user's data has no spec to override).
        """
        if overrides:
            raise ValueError(f"Invalid options: {', '.join(overrides)} (not for user data)")
        assert self.source is not None
        return self.source.load_data()

    def attrs(self) -> dict[str, Any]:
        """What an output file records about it, beside ``checkpoint``/``sha256``."""
        assert self.source is not None
        src = self.source
        return {
            "model": src.model,
            "data": src.data,
            "weights": None if src.weights is None else os.fspath(src.weights),
            "weights_sha256": self.weights_sha256,
            "factory_seed": src.seed,
            **src.loss_paths(),
        }

    def _own_loss(self) -> dict[str, Any]:
        assert self.source is not None
        return self.source.objective_options()
