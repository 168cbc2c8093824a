"""optimizers.integrations: no framework needed to import optimizers; a clear error without it."""

from __future__ import annotations

import importlib
import sys

import pytest


def test_import_optimizers_needs_no_framework():
    import optimizers
    import optimizers.integrations

    assert "SharpnessAwareTrainer" in optimizers.integrations.__all__
    assert "transformers" not in vars(optimizers)


@pytest.mark.parametrize(
    ("module", "frameworks", "extra"),
    [
        ("transformers", ["transformers"], "sharpscape[hf]"),
        (
            "lightning",
            ["lightning.pytorch", "lightning", "pytorch_lightning"],
            "sharpscape[lightning]",
        ),
    ],
)
def test_missing_framework_names_the_extra(monkeypatch, module, frameworks, extra):
    for name in frameworks:
        monkeypatch.setitem(sys.modules, name, None)  # "import name" now raises ImportError
    monkeypatch.delitem(sys.modules, f"optimizers.integrations.{module}", raising=False)
    with pytest.raises(ImportError, match=extra.replace("[", r"\[").replace("]", r"\]")):
        importlib.import_module(f"optimizers.integrations.{module}")
    monkeypatch.delitem(sys.modules, f"optimizers.integrations.{module}", raising=False)
