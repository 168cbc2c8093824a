"""Your own model from the command line: ``--model PKG.MODULE:ATTR --data ... --weights``.

A tiny user package is written into a temporary folder (run from there, as a user
would); ``surface``, ``hessian`` and ``compare`` run on it in this process and agree
with the Python API on the same model and data; the import paths and the weights'
sha256 are recorded, reruns resume, ``--params`` restricts the parameters, a Hugging
Face ``save_pretrained`` folder works as ``--model``, and bad input gives one line and
exit status 2.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.checkpoint import file_sha256
from landscape.cli import main
from landscape.compare import compare_models
from landscape.hessian.summary import hessian_summary
from landscape.metrics import compute_metrics
from landscape.store import read_surface
from landscape.surface import compute_surface

PKG = "sharpscape_userpkg"  # (unique: the module cache is process-wide)
MODEL = f"{PKG}.models:make_model"
DATA = f"{PKG}.data:make_loaders"

MODELS_PY = """
from torch import nn


def make_model():
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def broken():
    raise RuntimeError("no GPU here")


def not_a_model():
    return [1, 2]


instance = nn.Linear(5, 3)
"""

DATA_PY = """
import torch
from torch.utils.data import DataLoader, TensorDataset


def make_loaders():
    x, y = torch.randn(40, 5), torch.randint(0, 3, (40,))
    xt, yt = torch.randn(24, 5), torch.randint(0, 3, (24,))
    train = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    return train, DataLoader(TensorDataset(xt, yt), batch_size=16)


def gpt2_batches():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 10, (6, 6), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 4:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    cut = (slice(0, 3), slice(3, 6))
    return [{"input_ids": ids[c], "attention_mask": mask[c], "labels": labels[c]} for c in cut]
"""

LOSSES_PY = """
import torch.nn.functional as F


def squared_error(outputs, targets):
    return F.mse_loss(outputs, F.one_hot(targets, outputs.shape[-1]).to(outputs.dtype))


def dict_batches():
    import torch

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(30, 5, generator=g), torch.randint(0, 3, (30,), generator=g)
    return [{"feats": x[i : i + 8], "classes": y[i : i + 8]} for i in range(0, 30, 8)]


def weighted_ce(model, batch):
    logits = model(batch["feats"])
    return F.cross_entropy(logits, batch["classes"]), len(batch["classes"])


not_callable = 3
"""

BROKEN_PY = "import sharpscape_no_such_dependency\n"

Q = ["--no-progress"]


@pytest.fixture(scope="module")
def pkg(tmp_path_factory):
    """A folder holding the user package (and weights files made from its model)."""
    root = tmp_path_factory.mktemp("user")
    (root / PKG).mkdir()
    (root / PKG / "__init__.py").write_text("")
    (root / PKG / "models.py").write_text(MODELS_PY)
    (root / PKG / "data.py").write_text(DATA_PY)
    (root / PKG / "broken.py").write_text(BROKEN_PY)
    (root / PKG / "losses.py").write_text(LOSSES_PY)
    (root / "folder").mkdir()
    sys.path.insert(0, str(root))
    try:
        from sharpscape_userpkg.models import make_model

        for i, name in enumerate(("w1.pt", "w2.safetensors")):
            torch.manual_seed(10 + i)
            state = make_model().state_dict()
            if name.endswith(".pt"):
                torch.save(state, root / name)
            else:
                from safetensors.torch import save_file

                save_file(state, root / name)
        torch.save({"0.weight": torch.zeros(2, 2)}, root / "wrong.pt")
    finally:
        sys.path.remove(str(root))
    yield root
    for name in [m for m in sys.modules if m == PKG or m.startswith(PKG + ".")]:
        del sys.modules[name]


@pytest.fixture
def ws(pkg, monkeypatch):
    """Run from the package's folder (its import paths resolve as for ``python -m``)."""
    monkeypatch.chdir(pkg)
    monkeypatch.syspath_prepend(str(pkg))  # (restores sys.path, the CLI's insertion too)
    return pkg


def _user_model(weights=None):
    """The model and data as the user's factories build them, seeded as documented."""
    from sharpscape_userpkg.data import make_loaders
    from sharpscape_userpkg.models import make_model

    with torch.random.fork_rng(devices=[]):  # each factory: the generator seeded with 0
        torch.manual_seed(0)
        model = make_model()
        torch.manual_seed(0)
        train, test = make_loaders()
    if weights is not None:
        if str(weights).endswith(".safetensors"):
            from safetensors.torch import load_file

            model.load_state_dict(load_file(str(weights)))
        else:
            model.load_state_dict(torch.load(weights, weights_only=True))
    return model.eval(), train, test


def test_surface_matches_the_python_api_and_resumes(ws, capsys):
    argv = ["surface", "--model", MODEL, "--data", DATA, "--x", "-1:1:3", "--y", "-1:1:3"]
    argv += ["--split", "both", "--out", "s.h5", *Q]
    assert main(argv) == 0
    got = read_surface(ws / "s.h5")
    model, train, test = _user_model()
    ref = compute_surface(model, train, test_data=test, x="-1:1:3", y="-1:1:3", progress=False)
    assert got.complete and set(got.values) == set(ref.values)
    for name in ref.values:
        np.testing.assert_allclose(got.values[name], ref.values[name], rtol=1e-6)
    # The import paths are recorded where a checkpoint's path and sha256 go.
    assert got.attrs["checkpoint"] == MODEL
    assert got.attrs["model"] == MODEL and got.attrs["data"] == DATA
    assert got.attrs["dataset"] == DATA and got.attrs["weights"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", got.attrs["checkpoint_sha256"])
    # The same command resumes (nothing left to do); other weights are another computation.
    before = (ws / "s.h5").read_bytes()
    assert main(argv) == 0
    assert (ws / "s.h5").read_bytes() == before
    capsys.readouterr()
    assert main([*argv, "--weights", "w1.pt"]) == 2
    assert "different computation" in capsys.readouterr().err


def test_surface_with_weights_and_params(ws):
    argv = ["surface", "--model", MODEL, "--data", DATA, "--weights", "w2.safetensors"]
    argv += ["--dim", "1", "--x", "-1:1:3", "--params", "2", "--out", "p.h5", *Q]
    assert main(argv) == 0
    got = read_surface(ws / "p.h5")
    model, train, _ = _user_model(ws / "w2.safetensors")
    ref = compute_surface(model, train, x="-1:1:3", params="2", progress=False)
    np.testing.assert_allclose(got.values["train_loss"], ref.values["train_loss"], rtol=1e-6)
    assert got.attrs["params"] == "2"
    assert got.attrs["weights"] == "w2.safetensors"
    assert got.attrs["weights_sha256"] == file_sha256(ws / "w2.safetensors")


def test_hessian_matches_the_python_api_and_resumes(ws, capsys):
    argv = ["hessian", "--model", MODEL, "--data", DATA, "--weights", "w1.pt"]
    argv += ["--top-k", "1", "--out", "h.json", *Q]
    assert main(argv) == 0
    got = json.loads((ws / "h.json").read_text())
    model, train, _ = _user_model(ws / "w1.pt")
    ref = hessian_summary(model, train, top_k=1, progress=False)
    assert got["dim"] == ref["dim"] == 39
    np.testing.assert_allclose(got["eigen"]["eigenvalues"], ref["eigen"]["eigenvalues"], rtol=1e-5)
    assert got["checkpoint"] == f"{MODEL} + w1.pt"
    assert (got["model"], got["data"], got["weights"]) == (MODEL, DATA, "w1.pt")
    assert got["weights_sha256"] == file_sha256(ws / "w1.pt")
    capsys.readouterr()
    assert main(argv) == 0  # resumed: the eigenvalues come from the file
    assert "from an earlier run" in capsys.readouterr().out
    other = [a if a != "w1.pt" else "w2.safetensors" for a in argv]
    assert main(other) == 2
    assert "another checkpoint content" in capsys.readouterr().err


def test_hessian_params_restrict_the_dimension(ws, capsys):
    argv = ["hessian", "--model", MODEL, "--data", DATA, "--top-k", "1", "--out", "hp.json"]
    assert main([*argv, "--params", "2.weight,0.bias", *Q]) == 0
    got = json.loads((ws / "hp.json").read_text())
    assert got["dim"] == 3 * 4 + 4 and got["param_names"] == ["0.bias", "2.weight"]
    assert got["settings"]["params"] == "2.weight,0.bias"
    model, train, _ = _user_model()
    ref = hessian_summary(model, train, top_k=1, params="2.weight,0.bias", progress=False)
    np.testing.assert_allclose(got["eigen"]["eigenvalues"], ref["eigen"]["eigenvalues"], rtol=1e-5)


def test_compare_one_row_per_weights_file(ws, capsys):
    argv = ["compare", "--model", MODEL, "--data", DATA, "--weights", "w1.pt"]
    argv += ["--weights", "w2.safetensors", "--metrics", "loss,grad_norm,lambda_max"]
    argv += ["--out", "c.json", *Q]
    assert main(argv) == 0
    got = json.loads((ws / "c.json").read_text())
    models = {
        "w1": _user_model(ws / "w1.pt")[0],
        "w2": _user_model(ws / "w2.safetensors")[0],
    }
    _, train, _ = _user_model()
    ref = compare_models(models, train, "loss,grad_norm,lambda_max", progress=False)
    assert [r["label"] for r in got["rows"]] == ["w1", "w2"]
    assert [r["checkpoint"] for r in got["rows"]] == ["w1.pt", "w2.safetensors"]
    for row in got["rows"]:
        for m in ("loss", "grad_norm", "lambda_max"):
            assert row[m]["value"] == pytest.approx(ref.value(row["label"], m), rel=1e-5)
        assert row["model"] == MODEL and row["data"] == DATA
        assert row["weights_sha256"] == file_sha256(ws / row["checkpoint"])
    capsys.readouterr()
    assert main(argv) == 0
    assert "w1" in capsys.readouterr().out  # every row reused
    # --params: the same selection as the Python API's.
    argv = ["compare", "--model", MODEL, "--data", DATA, "--metrics", "grad_norm", *Q]
    assert main([*argv, "--params", "0", "--out", "cp.json"]) == 0
    got = json.loads((ws / "cp.json").read_text())
    model, train, _ = _user_model()
    want = compute_metrics(model, train, ["grad_norm"], params="0", progress=False)
    assert got["rows"][0]["grad_norm"]["value"] == pytest.approx(want["grad_norm"].value)
    assert got["rows"][0]["label"] == "make_model" and got["settings"]["params"] == "0"


def test_a_module_instance_and_the_test_split(ws):
    argv = ["compare", "--model", f"{PKG}.models:instance", "--data", DATA, "--split", "test"]
    assert main([*argv, "--metrics", "loss", "--out", "ci.json", *Q]) == 0
    got = json.loads((ws / "ci.json").read_text())
    from sharpscape_userpkg.models import instance

    _, _, test = _user_model()
    want = compute_metrics(instance, test, ["loss"], progress=False)["loss"].value
    assert got["rows"][0]["loss"]["value"] == pytest.approx(want)


def test_a_hugging_face_folder(ws, capsys):
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=1,
        n_head=2,
        n_embd=4,
        vocab_size=10,
        n_positions=6,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    transformers.GPT2LMHeadModel(cfg).save_pretrained(ws / "gpt2")
    data = f"{PKG}.data:gpt2_batches"
    base = ["--model", "gpt2", "--data", data, *Q]
    assert (
        main(
            ["hessian", *base, "--top-k", "1", "--params", "transformer.h.0.mlp", "--out", "g.json"]
        )
        == 0
    )
    assert main(["compare", *base, "--metrics", "loss", "--out", "gc.json"]) == 0
    model = transformers.GPT2LMHeadModel.from_pretrained(ws / "gpt2").eval()
    from sharpscape_userpkg.data import gpt2_batches

    got = json.loads((ws / "g.json").read_text())
    ref = hessian_summary(
        model, gpt2_batches(), top_k=1, params="transformer.h.0.mlp", progress=False
    )
    assert got["dim"] == ref["dim"] == 4 * 16 + 16 + 16 * 4 + 4  # c_fc and c_proj
    np.testing.assert_allclose(got["eigen"]["eigenvalues"], ref["eigen"]["eigenvalues"], rtol=1e-4)
    row = json.loads((ws / "gc.json").read_text())["rows"][0]
    want = compute_metrics(model, gpt2_batches(), ["loss"], progress=False)["loss"].value
    assert row["label"] == "gpt2" and row["loss"]["value"] == pytest.approx(want, rel=1e-5)


LOSS_FN = f"{PKG}.losses:squared_error"
COMPUTE_LOSS = f"{PKG}.losses:weighted_ce"

# (id, argv, regex the one line must match): every one exits with status 2.
S = ["surface", "--out", "e.h5", "--x", "-1:1:2", "--y", "-1:1:2", *Q]
M = ["--model", MODEL, "--data", DATA]
ERRORS = [
    (
        "no-attribute",
        [*S, "--model", f"{PKG}.models:make_mode", "--data", DATA],
        rf"--model {PKG}\.models:make_mode: no attribute make_mode in {PKG}\.models$",
    ),
    (
        "no-module",
        [*S, "--model", "sharpscape_nosuch.models:make", "--data", DATA],
        r"--model sharpscape_nosuch\.models:make: no module named sharpscape_nosuch",
    ),
    (
        "no-colon",
        [*S, "--model", f"{PKG}.models", "--data", DATA],
        r"expected package\.module:attribute",
    ),
    (
        "module-fails-to-import",
        [*S, "--model", f"{PKG}.broken:x", "--data", DATA],
        rf"cannot import {PKG}\.broken .*sharpscape_no_such_dependency",
    ),
    (
        "factory-raises",
        [*S, "--model", f"{PKG}.models:broken", "--data", DATA],
        r"calling it failed \(RuntimeError: no GPU here\)",
    ),
    (
        "factory-returns-no-module",
        [*S, "--model", f"{PKG}.models:not_a_model", "--data", DATA],
        r"returned a list, not a torch\.nn\.Module",
    ),
    ("data-no-attribute", [*S, "--model", MODEL, "--data", f"{PKG}.data:nope"], r"--data .*nope"),
    ("model-without-data", [*S, "--model", MODEL], r"no --data"),
    ("data-without-model", [*S, "--data", DATA], r"--data goes with --model"),
    ("weights-without-model", [*S, "--weights", "w1.pt"], r"--weights goes with --model"),
    ("checkpoint-and-model", [*S, "w1.pt", *M], r"not both"),
    ("nothing-given", [*S], r"no checkpoint given"),
    ("missing-weights", [*S, *M, "--weights", "nope.pt"], r"nope\.pt: no such weights file"),
    ("weights-do-not-fit", [*S, *M, "--weights", "wrong.pt"], r"wrong\.pt: state_dict does not"),
    ("folder-without-config", [*S, "--model", "folder", "--data", DATA], r"without config"),
    ("params-match-nothing", [*S, *M, "--params", "nosuch"], r"'nosuch' matches no parameter"),
    (
        "params-with-interpolate",
        [*S, *M, "--params", "0", "--interpolate", "w1.pt"],
        r"--params .*not --interpolate",
    ),
    ("data-dir-with-data", [*S, *M, "--data-dir", "folder"], r"--data-dir"),
    (
        "hessian-no-attribute",
        ["hessian", "--model", f"{PKG}.models:nope", "--data", DATA],
        r"no attribute nope",
    ),
    ("hessian-params", ["hessian", *M, "--params", "9", "--top-k", "1"], r"'9' matches no"),
    ("compare-no-attribute", ["compare", "--model", MODEL, "--data", f"{PKG}.data:x"], r"no attr"),
    ("compare-checkpoint-and-model", ["compare", "w1.pt", *M], r"not both"),
    ("loss-fn-without-model", [*S, "--loss-fn", LOSS_FN], r"--loss-fn goes with --model"),
    ("loss-fn-not-found", [*S, *M, "--loss-fn", f"{PKG}.losses:nope"], r"--loss-fn .*nope"),
    (
        "compute-loss-not-callable",
        [*S, *M, "--compute-loss", f"{PKG}.losses:not_callable"],
        r"--compute-loss .*not_callable: a int, not a callable",
    ),
    (
        "loss-fn-and-compute-loss",
        [*S, *M, "--loss-fn", LOSS_FN, "--compute-loss", COMPUTE_LOSS],
        r"not allowed with argument",
    ),
    ("connect-one-weights", ["connect", *M, "--weights", "w1.pt", "--out", "x.h5"], r"two --w"),
    ("connect-one-checkpoint", ["connect", "w1.pt", "--out", "x.h5"], r"give two checkpoints"),
    ("report-model-no-compute", ["report", *M, "--out", "r.html"], r"--compute METRICS"),
    ("report-nothing", ["report", "--out", "r.html"], r"nothing to report"),
]


@pytest.mark.parametrize("argv, pattern", [pytest.param(a, p, id=i) for i, a, p in ERRORS])
def test_bad_input_gives_one_line_and_status_2(ws, capsys, argv, pattern):
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse
        status = exc.code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert status == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith("landscape") and ": error: " in lines[0], lines[0]
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.distributed
def test_torchrun_two_processes_equal_one(ws):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    env.pop("WORLD_SIZE", None)
    argv = ["surface", *M, "--x", "-1:1:3", "--y", "-1:1:2", "--split", "both", *Q]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    cmd += ["-m", "landscape", *argv, "--out", "dist.h5", "--device", "cpu"]
    res = subprocess.run(cmd, env=env, cwd=ws, capture_output=True, text=True, timeout=240)
    assert res.returncode == 0, res.stderr[-3000:]
    assert main([*argv, "--out", "one.h5"]) == 0
    dist, one = read_surface(Path(ws) / "dist.h5"), read_surface(Path(ws) / "one.h5")
    assert dist.complete and dist.attrs["checkpoint_sha256"] == one.attrs["checkpoint_sha256"]
    for name in one.values:
        np.testing.assert_array_equal(dist.values[name], one.values[name])


def test_params_on_a_checkpoint(tmp_path):
    from landscape.checkpoint import save_checkpoint
    from landscape.data import load_data
    from landscape.models import build_model

    bundle = load_data("digits", n_per_class=3)
    spec = {"name": "mlp", "in_channels": 1, "num_classes": 10, "input_size": [8, 8]}
    torch.manual_seed(0)
    model = build_model(**spec, hidden=[4])
    ckpt = save_checkpoint(
        tmp_path / "c.pt", model, model_spec={**spec, "hidden": [4]}, data_spec=bundle.spec
    )
    last = [n for n, _ in model.named_parameters()][-1]  # the output layer's bias
    out = tmp_path / "h.json"
    argv = ["hessian", str(ckpt), "--top-k", "1", "--params", last, "--out", str(out), *Q]
    assert main(argv) == 0
    got = json.loads(out.read_text())
    assert got["dim"] == 10 and got["param_names"] == [last]
    ref = hessian_summary(model.eval(), bundle.train, top_k=1, params=last, progress=False)
    np.testing.assert_allclose(got["eigen"]["eigenvalues"], ref["eigen"]["eigenvalues"], rtol=1e-5)
    s = tmp_path / "s.h5"
    argv = ["surface", str(ckpt), "--dim", "1", "--x", "-1:1:3", "--params", last, *Q]
    assert main([*argv, "--out", str(s)]) == 0
    ref_s = compute_surface(model, bundle.train, x="-1:1:3", params=last, progress=False)
    got_s = read_surface(s)
    np.testing.assert_allclose(got_s.values["train_loss"], ref_s.values["train_loss"], rtol=1e-6)
    assert got_s.attrs["params"] == last
    c = tmp_path / "c.json"
    argv = ["compare", str(ckpt), "--metrics", "grad_norm", "--params", last, *Q]
    assert main([*argv, "--out", str(c)]) == 0
    want = compute_metrics(model, bundle.train, ["grad_norm"], params=last, progress=False)
    row = json.loads(c.read_text())["rows"][0]
    assert row["grad_norm"]["value"] == pytest.approx(want["grad_norm"].value)


def test_the_loss_by_import_path(ws, capsys):
    """``--loss-fn``/``--compute-loss`` give the Python API's ``loss_fn=``/``compute_loss=``;
    they are part of what a rerun resumes (another loss is another computation)."""
    from sharpscape_userpkg.losses import dict_batches, squared_error, weighted_ce

    mse = ["--model", MODEL, "--data", DATA, "--weights", "w1.pt", "--loss-fn", LOSS_FN, *Q]
    assert main(["hessian", *mse, "--top-k", "1", "--out", "hl.json"]) == 0
    got = json.loads((ws / "hl.json").read_text())
    model, train, _ = _user_model(ws / "w1.pt")
    ref = hessian_summary(model, train, top_k=1, loss_fn=squared_error, progress=False)
    default = hessian_summary(model, train, top_k=1, progress=False)
    np.testing.assert_allclose(got["eigen"]["eigenvalues"], ref["eigen"]["eigenvalues"], rtol=1e-5)
    assert abs(ref["eigen"]["eigenvalues"][0] - default["eigen"]["eigenvalues"][0]) > 1e-3
    assert got["loss_fn"] == LOSS_FN
    capsys.readouterr()
    assert main(["hessian", *mse[:-3], *Q, "--top-k", "1", "--out", "hl.json"]) == 2
    assert "another checkpoint content" in capsys.readouterr().err

    # Batches only the user's compute_loss reads (dicts with keys nothing else knows).
    own = ["--model", MODEL, "--data", f"{PKG}.losses:dict_batches"]
    own += ["--compute-loss", COMPUTE_LOSS, *Q]
    assert main(["compare", *own, "--metrics", "loss,grad_norm", "--out", "cl.json"]) == 0
    row = json.loads((ws / "cl.json").read_text())["rows"][0]
    model = _user_model()[0]
    want = compute_metrics(
        model, dict_batches(), ["loss", "grad_norm"], compute_loss=weighted_ce, progress=False
    )
    for m in ("loss", "grad_norm"):
        assert row[m]["value"] == pytest.approx(want[m].value, rel=1e-6)
    assert row["compute_loss"] == COMPUTE_LOSS
    assert main(["surface", *own, "--dim", "1", "--x", "-1:1:3", "--out", "sl.h5"]) == 0
    surf = read_surface(ws / "sl.h5")
    ref_surf = compute_surface(
        model, dict_batches(), x="-1:1:3", compute_loss=weighted_ce, progress=False
    )
    np.testing.assert_allclose(surf.values["train_loss"], ref_surf.values["train_loss"], rtol=1e-6)
    assert surf.attrs["compute_loss"] == COMPUTE_LOSS


def test_report_and_connect_take_a_user_model(ws):
    from landscape.connectivity import read_curve

    pair = ["--model", MODEL, "--data", DATA, "--weights", "w1.pt", "--weights", "w2.safetensors"]
    argv = ["report", *pair, "--compute", "loss,grad_norm", "--out", "r.html", *Q]
    assert main(argv) == 0
    html = (ws / "r.html").read_text()
    assert "grad_norm" in html and ">w1<" in html and ">w2<" in html

    argv = ["connect", *pair, "--epochs", "1", "--num", "3", "--out", "c.h5", *Q]
    assert main(argv) == 0
    curve = read_curve(ws / "c.h5")
    a, train, _ = _user_model(ws / "w1.pt")
    b = _user_model(ws / "w2.safetensors")[0]
    ends = [compute_metrics(m, train, ["loss"], progress=False)["loss"].value for m in (a, b)]
    np.testing.assert_allclose(curve.line.loss[[0, -1]], ends, rtol=1e-5)
    np.testing.assert_allclose(curve.curve.loss[[0, -1]], ends, rtol=1e-5)
    assert curve.test_line is not None
    assert curve.info["checkpoint_a"] == "w1.pt"
    assert curve.info["checkpoint_b"] == "w2.safetensors"
    assert curve.info["model"] == MODEL and curve.info["data"] == DATA


def test_connect_on_train_only_data_with_its_own_loss(ws):
    """Data without a test split profiles the train split alone (no --split needed), and
    the user's compute_loss trains and profiles the curve."""
    from sharpscape_userpkg.losses import dict_batches, weighted_ce

    from landscape.connectivity import read_curve

    argv = ["connect", "--model", MODEL, "--data", f"{PKG}.losses:dict_batches"]
    argv += ["--compute-loss", COMPUTE_LOSS, "--weights", "w1.pt", "--weights", "w2.safetensors"]
    assert main([*argv, "--epochs", "1", "--num", "3", "--out", "ct.h5", *Q]) == 0
    curve = read_curve(ws / "ct.h5")
    assert curve.test_line is None
    ends = [
        compute_metrics(m, dict_batches(), ["loss"], compute_loss=weighted_ce, progress=False)
        for m in (_user_model(ws / "w1.pt")[0], _user_model(ws / "w2.safetensors")[0])
    ]
    np.testing.assert_allclose(curve.line.loss[[0, -1]], [e["loss"].value for e in ends], rtol=1e-5)
    assert curve.info["compute_loss"] == COMPUTE_LOSS
