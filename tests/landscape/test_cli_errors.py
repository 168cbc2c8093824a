"""The command line on bad input: an exit status and one line on stderr, never a traceback.

One battery over every command: missing, corrupt (garbage, truncated) and malicious files
(a pickle that would run code: refused by ``weights_only`` loading, never run), bad grids,
metric names and options, outputs that cannot be written (a folder, below a file, the
wrong extension, /proc, /sys), non-finite checkpoints and interrupted or partial files.
Every case calls ``landscape.cli.main`` in this process on tiny files made once.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.checkpoint import save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.models import build_model
from landscape.store import open_surface_file

HAS_PROC = Path("/proc/self").is_dir() and Path("/sys/kernel").is_dir()
linux_only = pytest.mark.skipif(not HAS_PROC, reason="needs /proc and /sys")

# A tiny training run: 48 synthetic points, an MLP with 4 hidden units, one epoch.
TRAIN = [
    "train",
    "--data",
    "synthetic",
    "--data-arg",
    "n_train=48",
    "--data-arg",
    "n_test=16",
    "--data-arg",
    "dim=5",
    "--data-arg",
    "classes=3",
    "--model",
    "mlp",
    "--model-arg",
    "hidden=[4]",
    "--batch-size",
    "16",
    "--epochs",
    "1",
    "--no-progress",
]


class _Armed:
    """Pickles as a call of ``os.makedirs(marker)``: unpickling it would create a folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def _tiny_checkpoint(path: Path, *, nan: bool = False, epoch: int = 0, seed: int = 0) -> Path:
    bundle = load_data("digits", n_per_class=3)
    spec = {"name": "mlp", "in_channels": 1, "num_classes": 10, "input_size": [8, 8]}
    spec["hidden"] = [4]
    torch.manual_seed(seed)
    model = build_model(**spec)
    if nan:
        with torch.no_grad():
            next(model.parameters()).fill_(float("nan"))
    save_checkpoint(path, model, model_spec=spec, data_spec=bundle.spec, meta={"epoch": epoch})
    return path


def _tiny_surface(path: Path) -> Path:
    x, y = np.linspace(-1, 1, 3), np.linspace(-1, 1, 2)
    with open_surface_file(path, x=x, y=y, fields=["train_loss"], identity={"k": 1}) as w:
        w.write(list(range(6)), [{"train_loss": 1.0 + i} for i in range(6)])
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """The files the cases refer to by name (``{good}``, ``{afile}``, ...)."""
    root = tmp_path_factory.mktemp("battery")
    f: dict[str, Path] = {"root": root}
    f["good"] = _tiny_checkpoint(root / "good.pt")
    f["nan"] = _tiny_checkpoint(root / "nan.pt", nan=True)
    f["missing"] = root / "missing.pt"
    f["garbage"] = root / "garbage.pt"
    f["garbage"].write_bytes(os.urandom(2048))
    data = f["good"].read_bytes()
    f["truncated"] = root / "truncated.pt"
    f["truncated"].write_bytes(data[: len(data) // 2])
    # Malicious: a torch.save zip and a bare pickle whose loading would call os.makedirs.
    f["marker"] = root / "PWNED"
    f["evil"] = root / "evil.pt"
    torch.save({"state_dict": _Armed(f["marker"])}, f["evil"])
    f["evil_pickle"] = root / "evil_pickle.pt"
    f["evil_pickle"].write_bytes(pickle.dumps(_Armed(f["marker"]), protocol=2))
    f["afile"] = root / "afile"
    f["afile"].write_text("a file, not a folder\n")
    f["folder"] = root / "folder"
    f["folder"].mkdir()
    # Run folders: none, two (too few for PCA), a corrupt config, a truncated checkpoint.
    f["run_empty"] = root / "run_empty"
    f["run_empty"].mkdir()
    f["run2"] = root / "run2"
    for e in range(2):
        _tiny_checkpoint(f["run2"] / "checkpoints" / f"epoch_{e:04d}.pt", epoch=e, seed=e)
    f["run_badconfig"] = root / "run_badconfig"
    f["run_badconfig"].mkdir()
    (f["run_badconfig"] / "config.json").write_text('{"model": {"name": "mlp"')
    f["run_cut"] = root / "run_cut"
    (f["run_cut"] / "checkpoints").mkdir(parents=True)
    (f["run_cut"] / "checkpoints" / "epoch_0000.pt").write_bytes(data[: len(data) // 3])
    # A finished run whose metrics.jsonl was cut in the middle of a line.
    f["run_cutmetrics"] = root / "run_cutmetrics"
    assert main([*TRAIN, "--out", str(f["run_cutmetrics"])]) == 0
    metrics = f["run_cutmetrics"] / "metrics.jsonl"
    metrics.write_text(metrics.read_text()[:-25])
    # Surface files: a sound one, garbage, truncated, and an interrupted creation.
    f["surface"] = _tiny_surface(root / "surface.h5")
    f["garbage_h5"] = root / "garbage.h5"
    f["garbage_h5"].write_bytes(b"\x89HDF\r\n" + os.urandom(1000))
    sdata = f["surface"].read_bytes()
    f["truncated_h5"] = root / "truncated.h5"
    f["truncated_h5"].write_bytes(sdata[: len(sdata) // 2])
    # JSON outputs to resume from, cut by a kill (no atomic write): partial.
    good_cmp = {"metrics": ["grad_norm"], "rows": [], "settings": {}}
    f["partial_json"] = root / "partial.json"
    f["partial_json"].write_text(json.dumps(good_cmp)[:20])
    f["not_cmp_json"] = root / "notcmp.json"
    f["not_cmp_json"].write_text('{"hello": 1}\n')
    f["list_json"] = root / "list.json"
    f["list_json"].write_text("[1, 2, 3]\n")
    return f


def _expand(argv, ws):
    return [a.format(**{k: str(v) for k, v in ws.items()}) for a in argv]


# (id, argv, exit status, regex the one line must match). {name} is a file of the fixture.
T = TRAIN
S = ["surface", "{good}", "--x", "-1:1:2", "--y", "-1:1:2", "--max-samples", "8", "--no-progress"]
H = ["hessian", "{good}", "--top-k", "1", "--max-products", "3", "--max-samples", "8"]
H += ["--no-progress"]
CO = ["--metrics", "grad_norm", "--max-samples", "8", "--no-progress"]  # (after the files)
C = ["compare", "{good}", *CO]
P = ["plot", "{surface}"]
CASES = [
    # ---- train
    ("train-out-is-a-file", [*T, "--out", "{afile}"], 2, r"afile exists and is not a folder"),
    ("train-out-below-a-file", [*T, "--out", "{afile}/run"], 2, r"lies below .*afile.*a file"),
    ("train-out-in-proc", [*T, "--out", "/proc/sharpscape-run"], 2, r"cannot write there"),
    ("train-out-in-sys", [*T, "--out", "/sys/sharpscape-run"], 2, r"cannot write there"),
    ("train-unknown-model", [*T, "--model", "nosuch", "--out", "{root}/r"], 2, r"invalid choice"),
    ("train-zero-epochs", [*T, "--epochs", "0", "--out", "{root}/r"], 2, r"Invalid epochs"),
    ("train-negative-lr", [*T, "--lr", "-1", "--out", "{root}/r"], 2, r"Invalid lr"),
    (
        "train-model-arg-no-value",
        [*T, "--model-arg", "hidden", "--out", "{root}/r"],
        2,
        r"KEY=VALUE",
    ),
    (
        "train-hparam-of-another-optimizer",
        [*T, "--rho", "0.1", "--out", "{root}/r"],
        2,
        r"--rho does not apply",
    ),
    ("train-corrupt-config", [*T, "--out", "{run_badconfig}"], 2, r"config\.json: not a run conf"),
    (
        "train-truncated-checkpoint-to-resume",
        [*T, "--out", "{run_cut}"],
        2,
        r"epoch_0000\.pt: not a readable checkpoint",
    ),
    (
        "train-partial-metrics-to-resume",
        [*T, "--out", "{run_cutmetrics}"],
        2,
        r"metrics\.jsonl: line 2 is not a metrics record",
    ),
    (
        "train-diverges",
        [*T, "--epochs", "2", "--lr", "1e6", "--out", "{root}/diverged"],
        3,
        r"non-finite training loss .* keeps the checkpoints written before",
    ),
    # ---- surface
    (
        "surface-missing-checkpoint",
        ["surface", "{missing}", "--out", "{root}/s.h5"],
        2,
        r"missing\.pt: no such checkpoint",
    ),
    (
        "surface-garbage-checkpoint",
        ["surface", "{garbage}", "--out", "{root}/s.h5"],
        2,
        r"garbage\.pt: not a readable checkpoint",
    ),
    (
        "surface-truncated-checkpoint",
        ["surface", "{truncated}", "--out", "{root}/s.h5"],
        2,
        r"truncated\.pt: not a readable checkpoint",
    ),
    (
        "surface-malicious-checkpoint",
        ["surface", "{evil}", "--out", "{root}/s.h5"],
        2,
        r"evil\.pt: not a readable checkpoint .*(weights_only|Unsupported global)",
    ),
    (
        "surface-malicious-bare-pickle",
        ["surface", "{evil_pickle}", "--out", "{root}/s.h5"],
        2,
        r"evil_pickle\.pt: not a readable checkpoint",
    ),
    ("surface-grid-two-parts", [*S, "--x", "-1:1", "--out", "{root}/s.h5"], 2, r"argument --x"),
    (
        "surface-grid-zero-points",
        [*S, "--y", "0:1:0", "--out", "{root}/s.h5"],
        2,
        r"num must be at least 1",
    ),
    (
        "surface-grid-not-numbers",
        [*S, "--x", "a:b:3", "--out", "{root}/s.h5"],
        2,
        r"start and stop must be numbers",
    ),
    ("surface-grid-infinite", [*S, "--x", "-inf:1:3", "--out", "{root}/s.h5"], 2, r"finite"),
    ("surface-unknown-split", [*S, "--split", "dev", "--out", "{root}/s.h5"], 2, r"invalid choice"),
    ("surface-out-wrong-extension", [*S, "--out", "{root}/s.txt"], 2, r"expected a \.h5 or \.hdf5"),
    ("surface-out-is-a-folder", [*S, "--out", "{folder}"], 2, r"is a folder"),
    ("surface-out-below-a-file", [*S, "--out", "{afile}/s.h5"], 2, r"lies below"),
    ("surface-out-in-sys", [*S, "--out", "/sys/s.h5"], 2, r"/sys refuses new files"),
    (
        "surface-out-garbage-to-resume",
        [*S, "--out", "{garbage_h5}"],
        2,
        r"garbage\.h5: not a readable surface file",
    ),
    (
        "surface-out-truncated-to-resume",
        [*S, "--out", "{truncated_h5}"],
        2,
        r"truncated\.h5: not a readable surface file",
    ),
    (
        "surface-pca-of-two-checkpoints",
        [*S, "--pca", "{run2}", "--out", "{root}/p.h5"],
        2,
        r"at least 3",
    ),
    (
        "surface-pca-of-an-empty-folder",
        [*S, "--pca", "{run_empty}", "--out", "{root}/p.h5"],
        2,
        r"run_empty: no checkpoints",
    ),
    (
        "surface-interpolate-and-pca",
        [*S, "--pca", "{run2}", "--interpolate", "{good}", "--out", "{root}/p.h5"],
        2,
        r"exclude each other",
    ),
    # ---- hessian
    ("hessian-nan-checkpoint", [*H], 2, None),  # replaced below: {nan}
    ("hessian-missing-checkpoint", ["hessian", "{missing}"], 2, r"no such checkpoint.*missing"),
    ("hessian-malicious-checkpoint", ["hessian", "{evil}"], 2, r"evil\.pt: not a readable"),
    ("hessian-out-wrong-extension", [*H, "--out", "{root}/h.txt"], 2, r"expected a \.json"),
    ("hessian-out-below-a-file", [*H, "--out", "{afile}/h.json"], 2, r"lies below"),
    ("hessian-out-in-proc", [*H, "--out", "/proc/h.json"], 2, r"/proc refuses new files"),
    (
        "hessian-out-partial-to-resume",
        [*H, "--out", "{partial_json}"],
        2,
        r"partial\.json: cannot resume from it",
    ),
    (
        "hessian-eigenvectors-below-a-file",
        [*H, "--save-eigenvectors", "{afile}/v.pt"],
        2,
        r"--save-eigenvectors: .* lies below",
    ),
    ("hessian-unknown-trace-method", [*H, "--trace-method", "magic"], 2, r"invalid choice"),
    ("hessian-negative-top-k", [*H, "--top-k", "-1"], 2, r"Invalid top_k"),
    ("hessian-zero-products", [*H, "--max-products", "0"], 2, r"must be at least 1"),
    # ---- compare
    ("compare-unknown-metric", [*C, "--metrics", "grad_norm,sharpnesss"], 2, r"sharpnesss"),
    ("compare-unknown-option", [*C, "--set", "nosuch=1"], 2, r"nosuch"),
    ("compare-option-without-value", [*C, "--set", "rho"], 2, r"rho"),
    ("compare-option-of-another-metric", [*C, "--rho", "0.1"], 2, r"rho"),
    ("compare-out-wrong-extension", [*C, "--out", "{root}/c.txt"], 2, r"\.json or \.csv"),
    ("compare-out-in-sys", [*C, "--out", "/sys/c.json"], 2, r"/sys refuses new files"),
    ("compare-out-is-a-folder", [*C, "--out", "{folder}"], 2, r"(\.json or \.csv|is a folder)"),
    (
        "compare-out-partial-to-resume",
        [*C, "--out", "{partial_json}"],
        2,
        r"partial\.json: cannot resume from it",
    ),
    (
        "compare-out-not-a-comparison",
        [*C, "--out", "{not_cmp_json}"],
        2,
        r"notcmp\.json: not a comparison file",
    ),
    ("compare-nothing", ["compare"], 2, r"no checkpoints given"),
    ("compare-empty-run-folder", ["compare", "{run_empty}", *CO], 2, r"run_empty: no checkp"),
    ("compare-labels-mismatch", [*C, "--labels", "a,b"], 2, r"Invalid labels"),
    (
        "compare-garbage-among-good",
        ["compare", "{good}", "{garbage}", *CO],
        2,
        r"garbage\.pt: not a readable",
    ),
    (
        "compare-truncated-among-good",
        ["compare", "{good}", "{truncated}", *CO],
        2,
        r"truncated\.pt: not a readable",
    ),
    (
        "compare-malicious",
        ["compare", "{good}", "{evil}", *CO],
        2,
        r"evil\.pt: not a readable checkpoint",
    ),
    ("compare-recorded-is-a-metric", [*C, "--recorded", "grad_norm"], 2, r"also a metric"),
    # ---- plot
    ("plot-missing-input", ["plot", "{root}/nope.h5", "--out", "{root}/p.png"], 2, r"nope\.h5"),
    (
        "plot-garbage-surface",
        ["plot", "{garbage_h5}", "--out", "{root}/p.png"],
        2,
        r"garbage\.h5: not a readable surface file",
    ),
    (
        "plot-truncated-surface",
        ["plot", "{truncated_h5}", "--out", "{root}/p.png"],
        2,
        r"truncated\.h5: not a readable surface file",
    ),
    (
        "plot-out-unknown-format",
        [*P, "--out", "{root}/p.xyz"],
        2,
        r"--out must end in one of .*\.png",
    ),
    ("plot-out-below-a-file", [*P, "--out", "{afile}/p.png"], 2, r"lies below"),
    ("plot-unknown-metric", [*P, "--metric", "nosuch", "--out", "{root}/p.png"], 2, r"nosuch"),
    (
        "plot-not-a-comparison",
        ["plot", "{not_cmp_json}", "--out", "{root}/p.png"],
        2,
        r"notcmp\.json",
    ),
    (
        "plot-partial-comparison",
        ["plot", "{partial_json}", "--out", "{root}/p.png"],
        2,
        r"partial\.json",
    ),
    ("plot-list-comparison", ["plot", "{list_json}", "--out", "{root}/p.png"], 2, r"list\.json"),
    # ---- report
    (
        "report-out-wrong-extension",
        ["report", "{surface}", "--out", "{root}/r.txt"],
        2,
        r"expected a \.html",
    ),
    (
        "report-out-below-a-file",
        ["report", "{surface}", "--out", "{afile}/r.html"],
        2,
        r"lies below",
    ),
    ("report-missing-input", ["report", "{root}/nope.h5", "--out", "{root}/r.html"], 2, r"nope"),
    (
        "report-garbage-input",
        ["report", "{garbage_h5}", "--out", "{root}/r.html"],
        2,
        r"garbage\.h5",
    ),
    (
        "report-partial-json",
        ["report", "{partial_json}", "--out", "{root}/r.html"],
        2,
        r"partial\.json: not a readable JSON file",
    ),
    # ---- demo
    ("demo-out-is-a-file", ["demo", "--out", "{afile}"], 2, r"not a folder"),
    ("demo-out-in-proc", ["demo", "--out", "/proc/demo"], 2, r"/proc refuses new folders"),
    (
        "demo-unknown-optimizer",
        ["demo", "--optimizers", "sgd,lion", "--out", "{root}/d"],
        2,
        r"lion",
    ),
    # ---- the dispatcher
    ("unknown-command", ["fly"], 2, r"invalid choice"),
    ("no-command", [], 2, r"required"),
]
# (the NaN case needs {nan} in place of {good})
CASES = [
    (i, [a.replace("{good}", "{nan}") for a in argv], code, r"nan\.pt: non-finite weights")
    if i == "hessian-nan-checkpoint"
    else (i, argv, code, rx)
    for i, argv, code, rx in CASES
]
_NEEDS_PROC = re.compile(r"/(proc|sys)/")


def _run(argv):
    try:
        return main(argv)
    except SystemExit as exc:  # argparse
        return exc.code


@pytest.mark.parametrize(
    "argv, code, pattern",
    [
        pytest.param(
            argv,
            code,
            rx,
            id=i,
            marks=[linux_only] if any(_NEEDS_PROC.match(a) for a in argv) else [],
        )
        for i, argv, code, rx in CASES
    ],
)
def test_bad_input_gives_one_line_and_a_status(ws, capsys, argv, code, pattern):
    argv = _expand(argv, ws)
    status = _run(argv)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert status == code, captured.err
    assert len(lines) == 1, captured.err
    assert "Traceback" not in captured.err and "Traceback" not in captured.out
    line = lines[0]
    assert line.startswith("landscape") and ": error: " in line, line
    assert re.search(pattern, line), line
    # The malicious pickles were refused, never run.
    assert not ws["marker"].exists()


def test_the_battery_is_broad():
    commands = {argv[0] for _, argv, _, _ in CASES if argv}
    assert {"train", "surface", "hessian", "compare", "plot", "report", "demo"} <= commands
    assert len(CASES) >= 30 and len({i for i, _, _, _ in CASES}) == len(CASES)


def test_the_malicious_files_are_armed(ws):
    # The payload is there (a loader that unpickles freely would call os.makedirs) ...
    for name in ("evil", "evil_pickle"):
        assert b"makedirs" in ws[name].read_bytes()
    # ... and weights_only loading refuses it without running it.
    for name in ("evil", "evil_pickle"):
        with pytest.raises(pickle.UnpicklingError):
            torch.load(ws[name], weights_only=True)
    assert not ws["marker"].exists()


def test_refused_outputs_leave_nothing_behind(ws, capsys):
    before = sorted(p.name for p in ws["root"].iterdir())
    for out in ("{afile}/x/y.h5", "{root}/s.txt", "{folder}"):
        assert _run(_expand([*S, "--out", out], ws)) == 2
    capsys.readouterr()
    assert sorted(p.name for p in ws["root"].iterdir()) == before
    assert list(ws["folder"].iterdir()) == []


def test_verbose_shows_the_traceback(ws):
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        main(["-vv", *_expand(["hessian", "{garbage}"], ws)])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_outputs_are_checked_before_any_work(ws, capsys, monkeypatch):
    # hessian and compare would run for minutes: a refused --out must stop them first.
    import landscape.hessian.summary as summary
    import landscape.metrics.registry as registry

    def boom(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(summary, "hessian_summary_checkpoint", boom)
    monkeypatch.setattr(registry, "compute_metrics", boom)
    monkeypatch.setattr("landscape.compare.compute_metrics", boom)
    assert _run(_expand([*H, "--out", "{afile}/h.json"], ws)) == 2
    assert _run(_expand([*H, "--save-eigenvectors", "{afile}/v.pt"], ws)) == 2
    assert _run(_expand([*C, "--out", "{afile}/c.json"], ws)) == 2
    err = capsys.readouterr().err
    assert "work started" not in err and err.count("lies below") == 3
