"""The sharpscape checkpoint format: one ``torch.save`` dict of plain types.

A checkpoint written by :func:`save_checkpoint` (and so by ``landscape train``) is a dict::

    {
        "format": "sharpscape.checkpoint", "format_version": 1,
        "state_dict": {name: tensor, ...},         # CPU tensors, no "module." prefix
        "model_spec": {"name": "resnet20", "in_channels": 3, "num_classes": 10,
                       "input_size": [32, 32], ...} or None,   # build_model(**model_spec)
        "data_spec": {"name": "cifar10", "seed": 0, ...} or None,  # load_data(**data_spec)
        "meta": {"epoch": 5, "optimizer": "sam", "hparams": {"lr": 0.1, "rho": 0.05, ...},
                 "metrics": {"train_loss": ..., ...}, "version": "0.1.0", "created": "..."},
        "training_state": {...},                   # optional: what resuming needs
    }

Everything in it loads with ``torch.load(weights_only=True)``; nothing is ever loaded
another way. Files are written atomically (to a temporary file in the same folder, then
renamed), so a killed process never leaves a truncated checkpoint behind.

:func:`load_checkpoint` also reads a plain ``state_dict`` (or a dict holding one under
``"state_dict"`` / ``"model_state_dict"`` / ``"model"``) of a user's own model when the
model is passed in.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from landscape._io import write_atomically
from landscape._version import __version__

__all__ = [
    "FORMAT",
    "Checkpoint",
    "check_readable",
    "file_sha256",
    "load_checkpoint",
    "load_state_dict_strict",
    "nonfinite_tensors",
    "read_checkpoint",
    "run_checkpoints",
    "save_checkpoint",
]

log = logging.getLogger(__name__)

FORMAT = "sharpscape.checkpoint"
FORMAT_VERSION = 1
_EPOCH_RE = re.compile(r"^epoch_(\d+)\.pt$")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod
        else:
            return model


def atomic_save(obj: Any, path: str | os.PathLike[str]) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename over ``path``."""
    return write_atomically(path, lambda fh: torch.save(obj, fh), binary=True)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    model_spec: Mapping[str, Any] | None = None,
    data_spec: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
) -> Path:
    """Write a checkpoint in the sharpscape format (atomically).

    Args:
        path: destination file.
        model: the model (wrappers such as DDP are unwrapped) or its state_dict.
        model_spec: ``build_model`` arguments (``{"name": ..., ...}``) or ``None``.
        data_spec: ``load_data`` arguments or ``None``.
        meta: epoch, optimizer, hparams, metrics, ... (plain types); ``version`` and
            ``created`` are filled in.
        training_state: optional resume state (optimizer, scheduler, RNG states).

    Returns:
        The path written.
    """
    sd = _unwrap(model).state_dict() if isinstance(model, nn.Module) else model
    state_dict = {k: v.detach().to("cpu", copy=True) for k, v in sd.items()}
    full_meta = {
        "version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **dict(meta or {}),
    }
    obj: dict[str, Any] = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "state_dict": state_dict,
        "model_spec": None if model_spec is None else dict(model_spec),
        "data_spec": None if data_spec is None else dict(data_spec),
        "meta": full_meta,
    }
    if training_state is not None:
        obj["training_state"] = dict(training_state)
    return atomic_save(obj, path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def read_checkpoint(
    path: str | os.PathLike[str], *, map_location: Any = "cpu", mmap: bool = False
) -> Any:
    """``torch.load(path, weights_only=True)`` with one-line errors naming the file.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, truncated or not loadable with ``weights_only=True``.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{p}: no such checkpoint file")
    try:
        return torch.load(p, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:  # corrupt zip, truncated file, refused global, ...
        raise ValueError(f"{p}: {_unreadable(exc)}") from None


def _unreadable(exc: BaseException) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in a few words.

    torch's own message advises ``weights_only=False`` (running the file's code), spans
    lines and carries terminal escapes; say instead what was refused.
    """
    text = str(exc)
    if "TorchScript" in text:
        return (
            "not a readable checkpoint (a TorchScript archive of torch.jit.save; save "
            "model.state_dict() instead)"
        )
    if "Weights only load failed" in text:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"not a readable checkpoint (refused: it holds a Python object{what} that "
            "torch.load(weights_only=True) does not run, and the file is never unpickled; "
            "keep tensors and plain containers, e.g. torch.save(model.state_dict(), path), "
            "or use a .safetensors file)"
        )
    return f"not a readable checkpoint ({_first_line(exc)})"


def check_readable(path: str | os.PathLike[str]) -> None:
    """Raise what :func:`read_checkpoint` would, without reading the tensors' data.

    The file is memory-mapped (the old non-zip format, which cannot be, is read whole),
    so a command can refuse a missing, corrupt or unsafe checkpoint before any work.
    """
    try:
        read_checkpoint(path, mmap=True)
    except ValueError:
        read_checkpoint(path)  # the legacy format cannot be mapped; this says why not


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) for k in obj)
        and all(isinstance(v, torch.Tensor) for v in obj.values())
    )


def _strip_prefix(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(sd)
    for prefix in ("module.", "_orig_mod."):
        if out and all(k.startswith(prefix) for k in out):
            out = {k[len(prefix) :]: v for k, v in out.items()}
    return out


def _strip_wrapper(
    state_dict: Mapping[str, torch.Tensor], names: Iterable[str]
) -> Mapping[str, torch.Tensor]:
    """``state_dict`` without a leading ``"P."`` of all its keys, if the rest is ``names``.

    The inner model of a wrapper's checkpoint (a Lightning ``.ckpt`` of ``self.model``,
    ``model.``-prefixed keys); any other ``state_dict`` is returned as it is.
    """
    wanted = set(names)
    if not state_dict or set(state_dict) == wanted:
        return state_dict
    heads = {k.partition(".")[0] for k in state_dict}
    if len(heads) != 1 or not all("." in k for k in state_dict):
        return state_dict
    cut = len(heads.pop()) + 1
    stripped = {k[cut:]: v for k, v in state_dict.items()}
    return stripped if set(stripped) == wanted else state_dict


def _fill_tied(
    state_dict: Mapping[str, torch.Tensor], target: Mapping[str, torch.Tensor]
) -> Mapping[str, torch.Tensor]:
    """``state_dict`` with the model's tied tensors it leaves out filled from their twin.

    Hugging Face ``save_pretrained`` (safetensors) stores a tied weight once (a causal
    LM's ``lm_head.weight`` is ``transformer.wte.weight``): a key of the model missing
    from the file is taken from a key that is in it and shares its storage in the model.
    """
    missing = [k for k in target if k not in state_dict]
    if not missing:
        return state_dict

    def where(t: torch.Tensor) -> tuple[Any, ...] | None:
        if t.numel() == 0 or t.device.type == "meta":
            return None
        ptr = t.untyped_storage().data_ptr()
        return ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride())

    present = {where(v): k for k, v in target.items() if k in state_dict}
    present.pop(None, None)
    out = dict(state_dict)
    for key in missing:
        twin = present.get(where(target[key]))
        if twin is not None:
            out[key] = out[twin]
    return out


def load_state_dict_strict(
    model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str | os.PathLike[str]
) -> Mapping[str, torch.Tensor]:
    """Load ``state_dict`` into ``model`` or raise a one-line ``ValueError``.

    The message names ``source`` and the first key (in the model's order) that is
    missing, unexpected or of the wrong shape. Keys that all carry one leading
    ``"P."`` the model lacks (the checkpoint of a wrapper around the model, as
    Lightning's ``self.model``) are read without it when the rest fits exactly; tied
    tensors stored once (Hugging Face safetensors) are filled from their twin.

    Returns:
        the state_dict loaded (without such a prefix, with the tied keys).
    """
    target = _unwrap(model).state_dict()
    state_dict = _fill_tied(_strip_wrapper(state_dict, target), target)
    for key, value in target.items():
        if key not in state_dict:
            raise ValueError(
                f"{source}: state_dict does not fit the model: first mismatching key {key!r} "
                "(missing from the file)"
            )
        got = state_dict[key]
        if tuple(got.shape) != tuple(value.shape):
            raise ValueError(
                f"{source}: state_dict does not fit the model: first mismatching key {key!r} "
                f"(shape {tuple(got.shape)} in the file, {tuple(value.shape)} in the model)"
            )
    for key in state_dict:
        if key not in target:
            raise ValueError(
                f"{source}: state_dict does not fit the model: first mismatching key {key!r} "
                "(not in the model)"
            )
    _unwrap(model).load_state_dict(dict(state_dict), strict=True)
    return state_dict


def nonfinite_tensors(state_dict: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or an infinity, in order."""
    return [
        name
        for name, t in state_dict.items()
        if isinstance(t, torch.Tensor)
        and (t.is_floating_point() or t.is_complex())
        and not bool(torch.isfinite(t).all())
    ]


def _nonfinite_message(path: Path, names: list[str], total: int) -> str:
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (
        f"{path}: non-finite weights (nan or inf in {len(names)} of {total} tensors: {shown}), "
        "the checkpoint of a diverged run"
    )


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        model: the model with the weights loaded, in eval mode.
        state_dict: the weights as stored (CPU tensors unless ``map_location`` said else).
        model_spec: ``build_model`` arguments, or ``None`` (user model / plain state_dict).
        data_spec: ``load_data`` arguments, or ``None``.
        meta: epoch, optimizer, hparams, metrics, version (empty for a plain state_dict).
        path: the file.
        sha256: hex SHA-256 of the file.
        nonfinite: names of the tensors holding NaN or inf (empty for a sound checkpoint;
            a diverged run's weights).
    """

    model: nn.Module
    state_dict: dict[str, torch.Tensor]
    model_spec: dict[str, Any] | None
    data_spec: dict[str, Any] | None
    meta: dict[str, Any]
    path: Path
    sha256: str
    training_state: dict[str, Any] | None = field(default=None, repr=False)
    nonfinite: list[str] = field(default_factory=list)

    @property
    def epoch(self) -> int | None:
        """The epoch the checkpoint was written after (0 = initialisation)."""
        return self.meta.get("epoch")

    def load_data(self, **overrides: Any) -> Any:
        """Rebuild the checkpoint's dataset (:func:`landscape.data.load_data`).

        Args:
            **overrides: replace entries of the stored spec (e.g. ``data_dir``).

        Raises:
            ValueError: the checkpoint has no data spec (trained on user data).
        """
        if self.data_spec is None:
            raise ValueError(
                f"{self.path}: the checkpoint has no data spec (trained on user data); "
                "pass the data explicitly"
            )
        from landscape.data import load_data

        spec = {**self.data_spec, **overrides}
        return load_data(**spec)

    def objective_options(self, given: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``given`` with the checkpoint's own loss where ``given`` names none.

        A user's model may name its loss (:class:`~landscape.user.UserModel`'s ``loss_fn``
        or ``compute_loss``); a sharpscape checkpoint uses the library's default.

        Args:
            given: keyword arguments of :class:`~landscape.objective.Objective` (or of a
                function passing them on); a ``loss_fn``/``compute_loss`` that is not
                ``None`` there wins.

        Returns:
            A new dict: ``given`` and the checkpoint's ``loss_fn``/``compute_loss``.
        """
        out = dict(given or {})
        if out.get("loss_fn") is None and out.get("compute_loss") is None:
            out.update(self._own_loss())
        return out

    def _own_loss(self) -> dict[str, Any]:
        return {}


def load_checkpoint(
    path: str | os.PathLike[str],
    model: nn.Module | None = None,
    *,
    map_location: str | torch.device | None = None,
    finite: bool = False,
) -> Checkpoint:
    """Open a checkpoint and return a ready model.

    Args:
        path: a sharpscape checkpoint, or a plain state_dict file (then ``model`` is
            required).
        model: the module to load the weights into; default: built from the stored
            ``model_spec``. It is modified in place and put in eval mode.
        map_location: device for the tensors and the model (default CPU).
        finite: refuse weights holding NaN or inf (a diverged run's) with a ``ValueError``
            naming the file; by default they load, listed in ``Checkpoint.nonfinite``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: corrupt/truncated file, plain state_dict without ``model``, a
            state_dict that does not fit the model (names the first mismatching key), or
            non-finite weights with ``finite=True``.
    """
    p = Path(path)
    loc = torch.device("cpu") if map_location is None else torch.device(map_location)
    obj = read_checkpoint(p, map_location=loc)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        sd = obj.get("state_dict")
        if not isinstance(sd, Mapping):
            raise ValueError(f"{p}: checkpoint has no state_dict")
        model_spec = obj.get("model_spec")
        data_spec = obj.get("data_spec")
        meta = dict(obj.get("meta") or {})
        training_state = obj.get("training_state")
    else:
        sd = None
        if isinstance(obj, Mapping):
            for key in ("state_dict", "model_state_dict", "model"):
                if _is_state_dict(obj.get(key)):
                    sd = obj[key]
                    break
            if sd is None and _is_state_dict(obj):
                sd = obj
        if sd is None:
            raise ValueError(f"{p}: neither a sharpscape checkpoint nor a state_dict")
        model_spec, data_spec, meta, training_state = None, None, {}, None
    state_dict = _strip_prefix(sd)
    bad = nonfinite_tensors(state_dict)
    if bad and finite:
        raise ValueError(_nonfinite_message(p, bad, len(state_dict)))
    if model is None:
        if model_spec is None:
            raise ValueError(
                f"{p}: a plain state_dict has no model description; pass model=your_module"
            )
        from landscape.models import build_model

        spec = dict(model_spec)
        try:
            model = build_model(spec.pop("name", None), **spec)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{p}: cannot rebuild the model ({exc})") from None
    state_dict = dict(load_state_dict_strict(model, state_dict, p))
    model.to(loc)
    model.eval()
    return Checkpoint(
        model=model,
        state_dict=state_dict,
        model_spec=None if model_spec is None else dict(model_spec),
        data_spec=None if data_spec is None else dict(data_spec),
        meta=meta,
        path=p,
        sha256=file_sha256(p),
        training_state=None if training_state is None else dict(training_state),
        nonfinite=bad,
    )


def _checkpoint_epoch(path: Path) -> int | None:
    obj = read_checkpoint(path, mmap=True)
    meta = obj.get("meta", {}) if isinstance(obj, Mapping) else {}
    epoch = meta.get("epoch")
    return None if epoch is None else int(epoch)


def run_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints of a ``landscape train`` run folder, sorted by epoch.

    ``RUN/checkpoints/epoch_XXXX.pt`` in epoch order, then ``RUN/final.pt`` unless it
    holds the same epoch as the last of them.

    Raises:
        FileNotFoundError: the folder holds no checkpoint.
    """
    root = Path(run_dir)
    found: list[tuple[int, Path]] = []
    ckdir = root / "checkpoints"
    if ckdir.is_dir():
        for f in ckdir.iterdir():
            m = _EPOCH_RE.match(f.name)
            if m and f.is_file():
                found.append((int(m.group(1)), f))
    found.sort()
    paths = [f for _, f in found]
    final = root / "final.pt"
    if final.is_file():
        last = found[-1][0] if found else None
        if last is None or _checkpoint_epoch(final) != last:
            paths.append(final)
    if not paths:
        raise FileNotFoundError(
            f"{root}: no checkpoints (expected RUN/checkpoints/epoch_XXXX.pt or RUN/final.pt)"
        )
    return paths
