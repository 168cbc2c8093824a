"""Compiled evaluation: the model's inference forward under ``torch.compile``, where it pays.

A surface evaluates the same model, at different weights, on the same batches hundreds
of times; ``torch.compile`` turns its forward into fused kernels once (20–90 s for a
ResNet-20 on one CPU thread) and each later forward runs faster (a ResNet-20 batch:
0.65–0.80× the eager time on a 2-core AVX2 CPU, depending on the load beside it;
``benchmarks/compiled_forward.py``, ``benchmarks/compiled_point.py``).
:class:`CompiledForward` holds that compiled module for one
:class:`~landscape.objective.Objective` and decides when to use it:

- the *module itself* is compiled (``torch.compile(model, dynamic=False)``, inductor's
  default mode, no ``freezing``): its parameters stay inputs of the compiled graph, so
  weights set in place on the model (a grid point, a perturbation) are seen by the next
  call without recompiling. ``freezing`` (weights folded in as constants) would be faster
  on a CPU but would silently keep the weights it first saw, so it is never used;
- image inputs (4-D floating tensors) are given to the compiled module in the
  channels-last memory format, which oneDNN's CPU convolutions prefer (ResNet-20: 0.75–0.81×
  eager per batch against 0.86–0.89× with the inputs as given, in two loaded runs);
- one input shape is compiled (that of the first full batch): batches of another shape
  (the last, smaller batch) run eager, so nothing is recompiled and no padding changes
  what a model sees;
- only inference is compiled (losses, accuracy, metrics under ``inference_mode``):
  gradients and Hessian products stay eager (compiled graphs do not support double
  backward);
- ``compile="auto"`` compiles only when it is expected to pay: with the number of passes
  over the data known (a surface knows its points) it compares the estimated compile time
  with ``passes × (eager pass) × saving``; otherwise it compiles once the eager forwards
  already run would have paid for it (the ski-rental rule: never more than twice the
  cost of the better choice in hindsight). After compiling, ``"auto"`` times one compiled
  batch against the eager one and goes back to eager if it is not faster.

Every decision is logged and kept in :attr:`CompiledForward.report` (stored in a
surface file's attributes as ``compile``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten

__all__ = ["COMPILE_CHOICES", "CompileSpec", "CompiledForward", "parse_compile"]

log = logging.getLogger(__name__)

COMPILE_CHOICES = ("off", "on", "auto")

# The cost model of compile="auto" (2-core AMD EPYC, AVX2, torch 2.13, one thread): inductor
# compiled a ResNet-20 (39 leaf modules) in 17-24 s in a process that had compiled before
# (21 s in the issue's own measurement; the first compile of a process also imports
# inductor: 68 s on the loaded machine), and its forward then took 0.75-0.81x the eager
# time per batch of 256 with channels-last inputs (0.86-0.89x without).
_COMPILE_SECONDS_BASE = 3.0
_COMPILE_SECONDS_PER_MODULE = 0.45
_EXPECTED_SAVING = 0.25  # fraction of an eager forward that compiling is expected to save


@dataclass(frozen=True)
class CompileSpec:
    """How the evaluation forward is compiled.

    Attributes:
        when: ``"off"``, ``"on"`` (always compile) or ``"auto"`` (compile where it pays).
        backend: the ``torch.compile`` backend (``"inductor"``; ``"eager"`` or
            ``"aot_eager"`` trace without generating code, for tests; or a callable
            backend).
        mode: the ``torch.compile`` mode (None: inductor's default; ``"reduce-overhead"``
            adds CUDA graphs on a GPU).
        compile_seconds: ``"auto"``'s estimate of the compile time (None: from the number
            of leaf modules, ``3 s + 0.45 s`` per module, measured on a CPU).
        channels_last: feed 4-D floating inputs (images) to the compiled module in the
            channels-last memory format (the same values, another layout: oneDNN's
            convolutions are faster on it). A model that rejects it (a ``view`` of its
            input...) is compiled again on the inputs as given.
    """

    when: str = "off"
    backend: str | Callable[..., Any] = "inductor"
    mode: str | None = None
    compile_seconds: float | None = None
    channels_last: bool = True

    @property
    def enabled(self) -> bool:
        """Whether compiling may happen at all."""
        return self.when != "off"

    def __str__(self) -> str:
        return self.when


def parse_compile(value: bool | str | CompileSpec | None) -> CompileSpec:
    """``False``/``"off"``, ``True``/``"on"``, ``"auto"`` or a :class:`CompileSpec`.

    Raises:
        ValueError: for anything else.
    """
    if isinstance(value, CompileSpec):
        spec = value
    elif value is None or value is False:
        spec = CompileSpec("off")
    elif value is True:
        spec = CompileSpec("on")
    elif isinstance(value, str) and value.lower() in (*COMPILE_CHOICES, "true", "false"):
        v = value.lower()
        spec = CompileSpec({"true": "on", "false": "off"}.get(v, v))
    else:
        raise ValueError(
            f"Invalid compile: {value!r} (expected True, False, 'auto' or a CompileSpec)"
        )
    if spec.when not in COMPILE_CHOICES:
        raise ValueError(f"Invalid compile: {spec.when!r}; expected one of {COMPILE_CHOICES}")
    if spec.compile_seconds is not None and not spec.compile_seconds >= 0:
        raise ValueError(f"Invalid compile_seconds: {spec.compile_seconds}")
    return spec


def _signature(inputs: Any) -> tuple[Any, ...]:
    """The shapes and dtypes of a batch's input tensors (what a static graph is built for)."""
    leaves, spec = tree_flatten(inputs)
    return (
        str(spec),
        tuple(
            (tuple(t.shape), t.dtype, t.device) if isinstance(t, Tensor) else type(t).__name__
            for t in leaves
        ),
    )


def _channels_last(inputs: Any) -> Any:
    """4-D floating tensors in ``inputs`` in the channels-last memory format."""
    from torch.utils._pytree import tree_map

    def convert(t: Any) -> Any:
        if isinstance(t, Tensor) and t.dim() == 4 and t.is_floating_point():
            return t.contiguous(memory_format=torch.channels_last)
        return t

    return tree_map(convert, inputs)


def _has_images(inputs: Any) -> bool:
    leaves, _ = tree_flatten(inputs)
    return any(isinstance(t, Tensor) and t.dim() == 4 and t.is_floating_point() for t in leaves)


def estimate_compile_seconds(model: nn.Module) -> float:
    """``"auto"``'s estimate of inductor's compile time: ``3 s + 0.45 s`` per leaf module."""
    leaves = sum(1 for m in model.modules() if not any(True for _ in m.children()))
    return _COMPILE_SECONDS_BASE + _COMPILE_SECONDS_PER_MODULE * leaves


class _ChannelsLast(nn.Module):
    """Calls ``module`` with its 4-D floating inputs in the channels-last memory format.

    Attribute reads other than ``forward`` go to the compiled module (a user ``forward``
    that calls ``model.something`` still finds it).
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.module(*_channels_last(args), **_channels_last(kwargs))

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)


@dataclass
class CompiledForward:
    """The compiled forward of one model, with the ``"auto"`` decision and its report.

    Args:
        model: the module to compile (compiled as a whole; its weights stay inputs).
        spec: the settings (:func:`parse_compile`).
    """

    model: nn.Module
    spec: CompileSpec
    module: nn.Module | None = None
    signature: tuple[Any, ...] | None = None
    decided: bool = False
    report: dict[str, Any] = field(default_factory=dict)
    _eager_seconds: float = 0.0  # eager forwards run so far (auto, unplanned)

    def __post_init__(self) -> None:
        self.report = {"compile": self.spec.when, "compiled": False}
        if not self.spec.enabled:
            self.decided = True

    # ------------------------------------------------------------------ the decision
    @property
    def estimate(self) -> float:
        """The compile time ``"auto"`` assumes (seconds)."""
        if self.spec.compile_seconds is not None:
            return self.spec.compile_seconds
        return estimate_compile_seconds(self.model)

    def plan(
        self, run: Callable[[nn.Module], Any], inputs: Any, passes: int | None, batches: int
    ) -> dict[str, Any]:
        """Decide (``"auto"``) and compile now, on one batch (``run(module)`` calls it).

        Args:
            run: calls a module on the batch (the objective's adapter).
            inputs: that batch's inputs (their shapes are the ones compiled).
            passes: the passes over the data still to come (None: unknown).
            batches: batches per pass.

        Returns:
            The report (also kept in :attr:`report`).
        """
        if self.decided:
            return self.report
        self.decided = True
        t_eager = self._time(run, self.model)
        self.report["eager_batch_seconds"] = t_eager
        if self.spec.when == "auto":
            est = self.estimate
            if passes is None:
                gain = self._eager_seconds * _EXPECTED_SAVING
                why = f"eager forwards so far would have saved {gain:.3g} s"
            else:
                gain = passes * batches * t_eager * _EXPECTED_SAVING
                why = (
                    f"{passes} passes x {batches} batches x {t_eager:.3g} s x "
                    f"{_EXPECTED_SAVING:g} saving = {gain:.3g} s"
                )
            self.report["estimated_compile_seconds"] = est
            if gain < est:
                self.report["reason"] = f"not compiled: {why} < compile ~{est:.3g} s"
                log.info("compile auto: %s", self.report["reason"])
                return self.report
            self.report["reason"] = f"compiled: {why} >= compile ~{est:.3g} s"
        self._compile(run, inputs)
        t_compiled = self._time(run, self.module)
        self.report["compiled_batch_seconds"] = t_compiled
        speed = t_compiled / t_eager if t_eager > 0 else float("nan")
        self.report["compiled_over_eager"] = speed
        if self.spec.when == "auto" and not speed < 1.0:
            self.module = None
            self.report["compiled"] = False
            self.report["reason"] = f"compiled but {speed:.2f}x eager: eager kept"
        log.info(
            "compile %s: %.3g s to compile, a batch %.3g s compiled vs %.3g s eager (%.2fx)%s",
            self.spec.when,
            self.report["compile_seconds"],
            t_compiled,
            t_eager,
            speed,
            "" if self.module is not None else "; eager kept",
        )
        return self.report

    def _compile(self, run: Callable[[nn.Module], Any], inputs: Any) -> None:
        compiled = torch.compile(
            self.model, backend=self.spec.backend, mode=self.spec.mode, dynamic=False
        )
        self.signature = _signature(inputs)
        start = time.perf_counter()
        self.module = compiled
        if self.spec.channels_last and _has_images(inputs):
            self.module = _ChannelsLast(compiled)
            try:
                run(self.module)  # the first call compiles
            except Exception as exc:  # the model needs its inputs' layout
                log.info("compile: channels-last inputs rejected (%s); inputs as given", exc)
                self.module = compiled
                run(self.module)
        else:
            run(self.module)
        self.report["compile_seconds"] = time.perf_counter() - start
        self.report["channels_last"] = isinstance(self.module, _ChannelsLast)
        self.report["compiled"] = True

    def _time(self, run: Callable[[nn.Module], Any], module: nn.Module) -> float:
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda *_: None)
        sync(device)
        start = time.perf_counter()
        run(module)
        sync(device)
        return time.perf_counter() - start

    # ------------------------------------------------------------------ use
    def module_for(self, inputs: Any) -> nn.Module | None:
        """The compiled module for a batch of these inputs, or None (run eager)."""
        if self.module is None or _signature(inputs) != self.signature:
            return None
        return self.module

    def count_eager(self, seconds: float) -> bool:
        """Add an eager forward's time (``"auto"``, no plan): True when compiling now pays."""
        self._eager_seconds += seconds
        return self._eager_seconds * _EXPECTED_SAVING >= self.estimate
