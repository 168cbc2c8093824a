"""Audit of a user's own model and data, and of bad inputs, through the CLI and the API.

Each test is a defect found by probing (it failed before its fix), or an ``xfail(strict)``
that records a defect in a file of another area, with the fix proposed in its reason.
"""

from __future__ import annotations

import collections
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import landscape
from landscape.cli import main
from landscape.data import load_data
from landscape.objective import Objective

# A tiny run: 48 synthetic points, an MLP with 4 hidden units (see test_cli_errors).
SYNTH = {"n_train": 48, "n_test": 16, "dim": 5, "classes": 3}


def _train(out, **kw):
    kw.setdefault("epochs", 1)
    return landscape.train(
        "mlp",
        "synthetic",
        data_kwargs=SYNTH,
        model_kwargs={"hidden": [4]},
        batch_size=16,
        out=out,
        progress=False,
        **kw,
    )


def _cli(argv, capsys):
    """``landscape ARGV`` in this process: (exit status, stderr)."""
    try:
        rc = main(argv)
    except SystemExit as exc:
        rc = exc.code
    return rc, capsys.readouterr().err


# --------------------------------------------------------------------------- train


@pytest.mark.parametrize(
    "option",
    [
        {"lr": math.nan},
        {"lr": math.inf},
        {"momentum": math.nan},
        {"weight_decay": math.nan},
        {"weight_decay": math.inf},
        {"eval_batch_size": 0},
    ],
)
def test_train_refuses_nonfinite_hyperparameters_before_any_work(tmp_path, option):
    # Before: NaN/inf trained a step and stopped at a NaN loss advising a lower --lr
    # (exit 3), leaving a run folder whose config held the NaN.
    name = next(iter(option))
    with pytest.raises(ValueError, match=f"Invalid {name}"):
        _train(tmp_path / "run", **option)
    assert not (tmp_path / "run" / "config.json").exists()


def test_train_refused_option_leaves_no_config_so_the_corrected_command_runs(tmp_path):
    # Before: config.json was written before the optimizer (and the model) were built,
    # so after `--rho nan` the corrected command was refused as "a different run".
    run = tmp_path / "run"
    with pytest.raises(ValueError, match="Invalid rho"):
        _train(run, optimizer="sam", hparams={"rho": math.nan})
    assert not (run / "config.json").exists()
    with pytest.raises(ValueError, match=r"unexpected|Invalid option"):
        landscape.train(
            "mlp",
            "synthetic",
            data_kwargs=SYNTH,
            model_kwargs={"hidden": [4], "nosuch": 1},
            out=run,
            progress=False,
        )
    assert not (run / "config.json").exists()
    result = _train(run, optimizer="sam", hparams={"rho": 0.05})
    assert result.completed
    assert json.loads((run / "config.json").read_text())["hparams"]["rho"] == 0.05


def test_load_data_refuses_nan_label_noise():
    # Before: NaN passed both `> 0` and `< 0` checks and the data was silently clean.
    with pytest.raises(ValueError, match="Invalid label_noise"):
        load_data("synthetic", label_noise=math.nan, **SYNTH)


# --------------------------------------------------------------------------- CLI numbers


@pytest.mark.parametrize(
    "argv",
    [
        ["hessian", "missing.pt", "--tol", "nan"],
        ["hessian", "missing.pt", "--trace", "--target-rel-stderr", "nan"],
        ["hessian", "missing.pt", "--tol", "inf"],
        ["plot", "missing.h5", "--out", "p.png", "--scale", "nan"],
        ["plot", "missing.h5", "--out", "p.png", "--vmin", "nan"],
        ["demo", "--span", "nan", "--out", "never"],
        ["demo", "--lr", "nan", "--out", "never"],
        ["demo", "--label-noise", "nan", "--out", "never"],
    ],
)
def test_cli_refuses_nonfinite_numbers_when_parsing(argv, capsys, tmp_path, monkeypatch):
    # Before: --tol nan ran and failed with "(the loss or its gradient is not finite at
    # these weights?)", --scale nan drew a picture, --span nan trained for a minute.
    monkeypatch.chdir(tmp_path)
    rc, err = _cli(argv, capsys)
    assert rc == 2
    assert f"argument {argv[-2] if argv[0] != 'demo' else argv[1]}" in err
    assert "not finite at these weights" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "never").exists()


# --------------------------------------------------------------------------- batches


def _tiny():
    torch.manual_seed(0)
    x = torch.randn(10, 4)
    y = torch.randint(0, 3, (10,))
    return nn.Linear(4, 3), x, y


def test_float64_data_for_a_float32_model_is_one_clear_error():
    # Before: "mat1 and mat2 must have the same dtype" from inside torch at the first
    # evaluation (and from other places in other computations).
    model, x, y = _tiny()
    obj = Objective(model, (x.double(), y))
    for compute in (obj.evaluate, obj.gradient):
        with pytest.raises(ValueError, match=r"inputs of torch.float64 .* torch.float32"):
            compute()


def test_float32_data_for_a_float64_model_is_one_clear_error():
    model, x, y = _tiny()
    with pytest.raises(ValueError, match=r"model.to\(torch.float32\)|inputs.to\(torch.float64\)"):
        Objective(model.double(), [(x, y)]).evaluate()


def test_a_model_that_casts_its_inputs_itself_is_not_refused():
    """The dtype of the inputs is the model's business when its forward converts them."""

    class Casting(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = _tiny()[0]

        def forward(self, x):
            return self.inner(x.to(torch.float32))

    model, x, y = _tiny()
    casting = Casting()
    casting.inner.load_state_dict(model.state_dict())
    obj = Objective(casting, (x.double(), y))
    assert obj.evaluate()["loss"] == pytest.approx(F.cross_entropy(model(x), y).item())
    assert len(obj.gradient()) == len(list(model.parameters()))


def test_matching_dtypes_and_a_forward_still_pass():
    model, x, y = _tiny()
    ref = F.cross_entropy(model.double()(x.double()), y).item()
    assert Objective(model, (x.double(), y)).evaluate()["loss"] == pytest.approx(ref)
    # forward= decides how the inputs reach the model: no dtype check then
    obj = Objective(model, (x.float(), y), forward=lambda m, inp: m(inp.double()))
    assert obj.evaluate()["loss"] == pytest.approx(ref)


def test_int32_labels_with_the_default_cross_entropy_are_one_clear_error():
    # Before: "expected scalar type Long but found Int" from inside F.cross_entropy.
    model, x, y = _tiny()
    with pytest.raises(ValueError, match=r"targets of torch\.int32"):
        Objective(model, (x, y.int()))
    # with a loss of the user's own, int32 labels are theirs to read
    obj = Objective(model, (x, y.int()), loss_fn=lambda out, t: F.cross_entropy(out, t.long()))
    assert obj.evaluate()["loss"] == pytest.approx(F.cross_entropy(model(x), y).item())


NT = collections.namedtuple("NT", "x y")


def test_namedtuple_batches_are_read_as_tuples():
    model, x, y = _tiny()
    data = [NT(x[:4], y[:4]), NT(x[4:], y[4:])]
    loss = Objective(model, data).evaluate()["loss"]
    assert loss == pytest.approx(F.cross_entropy(model(x), y).item())


# --------------------------------------------------------------------------- CLI flags

_USER_MODULE = """
import torch
from torch import nn

def wide():
    return nn.Linear(5, 3)

def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)
"""


def test_cli_model_that_fails_on_the_data_is_one_line(tmp_path, monkeypatch, capsys):
    # Before: the user's model failing on the user's data (a torch RuntimeError: here 5
    # input features for data of 4; a Hugging Face model given float (inputs, targets))
    # escaped the dispatcher as a traceback.
    (tmp_path / "inputs_audit_user.py").write_text(_USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = ["compare", "--model", "inputs_audit_user:wide", "--data", "inputs_audit_user:data"]
    rc, err = _cli([*argv, "--metrics", "loss", "--no-progress"], capsys)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("landscape compare: error: RuntimeError")
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--dim", "1", "--y", "-1:1:3"], "--y with --dim 1"),
        (["--interpolate", "other.pt", "--y", "-1:1:3"], "--y with --interpolate"),
        (["--interpolate", "other.pt", "--dim", "2"], "--dim 2 with --interpolate"),
        (["--pca", "run", "--dim", "1"], "--dim 1 with --pca"),
    ],
)
def test_surface_refuses_conflicting_dimension_flags(flags, message, tmp_path, capsys):
    # Before: a --y of a 1-D surface (and --dim against --interpolate/--pca) was ignored.
    out = str(tmp_path / "s.h5")
    rc, err = _cli(["surface", "missing.pt", "--x", "-1:1:3", *flags, "--out", out], capsys)
    assert rc == 2
    assert message in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--trace-method", "ggn"], "--trace-method without --trace"),
        (["--trace-products", "5"], "--trace-products without --trace"),
        (["--target-rel-stderr", "0.1"], "--target-rel-stderr without --trace"),
        (["--density-steps", "5"], "--density-steps without --density"),
        (["--density-runs", "2"], "--density-runs without --density"),
    ],
)
def test_hessian_refuses_trace_and_density_options_without_their_switch(
    flags, message, tmp_path, monkeypatch, capsys
):
    # Before: `--trace-method ggn` without --trace computed no trace and said nothing.
    (tmp_path / "inputs_audit_user.py").write_text(_USER_MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    user = ["--model", "inputs_audit_user:wide", "--data", "inputs_audit_user:data"]
    rc, err = _cli(["hessian", *user, "--top-k", "1", *flags], capsys)
    assert rc == 2
    assert message in err


# --------------------------------------------------------------------------- UserModel


def _user_module(tmp_path, monkeypatch, text):
    import importlib
    import sys

    name = "inputs_audit_user2"
    (tmp_path / f"{name}.py").write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(name, None)
    importlib.invalidate_caches()
    return name


def test_user_weights_that_are_a_folder_say_so(tmp_path, monkeypatch):
    # Before: "FOLDER: no such weights file" for a folder that exists.
    from landscape.user import UserModel

    name = _user_module(tmp_path, monkeypatch, _USER_MODULE)
    (tmp_path / "hf").mkdir()
    user = UserModel(f"{name}:wide", f"{name}:data", tmp_path / "hf")
    with pytest.raises(ValueError, match="a folder, not a weights file"):
        user.check()
    with pytest.raises(ValueError, match="a folder, not a weights file"):
        user.open()


def test_user_data_as_three_loaders_is_refused_clearly(tmp_path, monkeypatch):
    # Before: the tuple was read as a list of batches: "Invalid batch: a DataLoader".
    from landscape.user import UserModel

    text = _USER_MODULE + (
        "\ndef three():\n"
        "    x, y = data()\n"
        "    dl = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y))\n"
        "    return dl, dl, dl\n"
    )
    name = _user_module(tmp_path, monkeypatch, text)
    with pytest.raises(ValueError, match=r"tuple of 3 items .* \(train, test\), or a dict"):
        UserModel(f"{name}:wide", f"{name}:three").load_data()


# --------------------------------------------------------------------------- weights


def test_wrapper_checkpoint_of_the_model_loads_into_the_model(tmp_path):
    # A Lightning .ckpt of a LightningModule holding `self.model`: every key is
    # "model."-prefixed. Before: "first mismatching key '0.weight' (missing from the file)".
    from landscape.checkpoint import load_checkpoint

    torch.manual_seed(1)
    inner = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    sd = {f"model.{k}": v for k, v in inner.state_dict().items()}
    torch.save({"epoch": 1, "global_step": 3, "state_dict": sd}, tmp_path / "light.ckpt")
    fresh = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    ck = load_checkpoint(tmp_path / "light.ckpt", fresh)
    for k, v in inner.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v)
    assert set(ck.state_dict) == set(inner.state_dict())
    # a prefix that does not leave exactly the model's keys is still refused
    sd["model.extra"] = torch.zeros(1)
    torch.save({"state_dict": sd}, tmp_path / "other.ckpt")
    with pytest.raises(ValueError, match="does not fit the model"):
        load_checkpoint(tmp_path / "other.ckpt", fresh)


class _DictSamples(torch.utils.data.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return {"input_ids": torch.tensor([i, i]), "labels": torch.tensor(i % 2)}


def test_train_on_dict_samples_is_one_clear_error():
    # Before: KeyError: 0 from as_bundle's `train_ds[0][0]` (a traceback in a script).
    with pytest.raises(ValueError, match="samples are dicts; training reads"):
        landscape.train(nn.Linear(2, 2), _DictSamples(), epochs=1, batch_size=2)


@pytest.mark.parametrize("option", [{"epochs": 1.5}, {"batch_size": 2.5}, {"save_every": 1.5}])
def test_train_refuses_fractional_counts(option):
    # Before: epochs=1.5 trained one epoch and recorded epochs=1.
    torch.manual_seed(0)
    data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
    kw = {"epochs": 1, "batch_size": 4, **option}
    with pytest.raises(ValueError, match=f"Invalid {next(iter(option))}"):
        landscape.train(nn.Linear(3, 2), data, **kw)


class _TiedLM(nn.Module):
    """A causal LM's tie: the output layer's weight is the embedding's."""

    def __init__(self):
        super().__init__()
        self.wte = nn.Embedding(7, 4)
        self.lm_head = nn.Linear(4, 7, bias=False)
        self.lm_head.weight = self.wte.weight

    def forward(self, ids):
        return self.lm_head(self.wte(ids))


def test_safetensors_with_a_tied_weight_stored_once_loads(tmp_path):
    # save_pretrained's model.safetensors stores lm_head.weight (tied to wte.weight) once.
    # Before: "first mismatching key 'lm_head.weight' (missing from the file)".
    from safetensors.torch import save_file

    from landscape.checkpoint import load_state_dict_strict

    torch.manual_seed(1)
    saved = _TiedLM()
    save_file({"wte.weight": saved.wte.weight.detach().clone()}, tmp_path / "m.safetensors")
    from landscape.user import _safetensors_state

    torch.manual_seed(2)
    fresh = _TiedLM()
    loaded = load_state_dict_strict(fresh, _safetensors_state(tmp_path / "m.safetensors"), "m")
    assert torch.equal(fresh.wte.weight, saved.wte.weight)
    assert torch.equal(fresh.lm_head.weight, saved.wte.weight)
    assert set(loaded) == {"wte.weight", "lm_head.weight"}
    # an untied key missing from the file is still refused
    untied = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2))
    with pytest.raises(ValueError, match=r"'1\.weight' \(missing from the file\)"):
        load_state_dict_strict(untied, dict(untied[0].state_dict(prefix="0.")), "x")


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--set", "rho=0.1", "--rho", "0.2"], "--rho 0.2 and --set rho=0.1 disagree"),
        (["--set", "rho=0.1", "--set", "rho=0.3"], "--set rho=0.1 and rho=0.3 disagree"),
        (["--max-samples", "0"], "argument --max-samples"),
        (["--batch-size", "-1"], "argument --batch-size"),
    ],
)
def test_compare_refuses_conflicting_or_nonsense_options(flags, message, tmp_path, capsys):
    # Before: --rho silently overrode --set rho=, a repeated --set kept the last value,
    # and --max-samples 0 / --batch-size -1 reached the library.
    ckpt = str(tmp_path / "missing.pt")
    rc, err = _cli(["compare", ckpt, ckpt, "--metrics", "sam_sharpness", *flags], capsys)
    assert rc == 2
    assert message in err


def test_data_option_of_the_wrong_type_is_named():
    # Before: `--data-arg n_train=abc` said only "invalid literal for int() with base 10".
    with pytest.raises(ValueError, match=r"synthetic \(n_train='abc'\)"):
        load_data("synthetic", n_train="abc")


@pytest.mark.parametrize("hidden", [[0], [-1], "64", [16.5], [True]])
def test_mlp_refuses_nonsense_widths(hidden):
    # Before: [0] built a network whose output is constant, [-1] failed inside torch,
    # "64" built two layers of widths 6 and 4.
    from landscape.models import build_model

    with pytest.raises(ValueError, match="Invalid hidden"):
        build_model("mlp", in_channels=1, input_size=(4, 4), num_classes=3, hidden=hidden)


def test_mlp_hidden_as_one_integer_is_one_layer():
    from landscape.models import build_model

    m = build_model("mlp", in_channels=1, input_size=(4, 4), num_classes=3, hidden=8)
    assert [layer.out_features for layer in m.modules() if isinstance(layer, nn.Linear)] == [8, 3]


@pytest.mark.parametrize(
    ("name", "option"),
    [
        ("cnn", {"width": 0}),
        ("cnn", {"width": -2}),
        ("cnn", {"hidden": 0}),
        ("resnet20", {"width": 0}),
    ],
)
def test_conv_models_refuse_nonsense_sizes(name, option):
    # Before: a torch RuntimeError (width 0 or -2), or a network with a 0-unit layer
    # whose output is constant (cnn hidden=0).
    from landscape.models import build_model

    with pytest.raises(ValueError, match=f"Invalid {next(iter(option))}"):
        build_model(name, in_channels=1, input_size=(8, 8), num_classes=3, **option)


class _DictOut(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)

    def forward(self, x):
        return {"out": self.lin(x)}


def test_output_without_logits_is_one_clear_error():
    # Before: "cross_entropy_loss(): argument 'input' must be Tensor, not dict".
    _, x, y = _tiny()
    with pytest.raises(ValueError, match=r"a dict with keys \['out'\], no logits"):
        Objective(_DictOut(), (x, y)).evaluate()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"compute_loss": lambda m, b: 1.0}, "compute_loss: it returned a float"),
        (
            {"compute_loss": lambda m, b: F.cross_entropy(m(b[0]), b[1], reduction="none")},
            r"compute_loss: it returned a tensor of shape \(10,\)",
        ),
        (
            {"loss_fn": lambda out, t: F.cross_entropy(out, t, reduction="none")},
            r"loss_fn: it returned a tensor of shape \(10,\)",
        ),
        (
            {"compute_loss": lambda m, b: (F.cross_entropy(m(b[0]), b[1]), "ten")},
            "n_items is 'ten'",
        ),
    ],
)
def test_losses_that_are_not_a_mean_are_one_clear_error(option, message):
    # Before: AttributeError 'float' object has no attribute 'detach', "only one element
    # tensors can be converted to Python scalars", "invalid literal for int()".
    model, x, y = _tiny()
    with pytest.raises(ValueError, match=message):
        obj = Objective(model, (x, y), **option)
        obj.evaluate()
        obj.gradient()


# --------------------------------------------------------------------------- other areas


@pytest.mark.parametrize("top_k", [math.nan, 1.5])
def test_hessian_summary_refuses_a_top_k_that_is_not_a_count(top_k):
    from landscape.hessian.summary import hessian_summary

    model, x, y = _tiny()
    with pytest.raises(ValueError, match="Invalid top_k"):
        hessian_summary(model, (x, y), top_k=top_k, progress=False)


def test_plot_of_a_corrupt_surface_file_gives_no_overwrite_advice(tmp_path, capsys):
    bad = tmp_path / "s.h5"
    bad.write_text("not hdf5\n")
    rc, err = _cli(["plot", str(bad), "--out", str(tmp_path / "p.png")], capsys)
    assert rc == 2
    assert "not a readable surface file" in err
    assert "--overwrite" not in err


def test_report_refuses_an_unreadable_checkpoint_input(tmp_path, capsys):
    from landscape.compare import compare_models

    model, x, y = _tiny()
    compare_models({"m": model}, (x, y), "loss").to_json(tmp_path / "c.json")
    (tmp_path / "bad.pt").write_text("hello\n")
    argv = ["report", str(tmp_path / "c.json"), str(tmp_path / "bad.pt")]
    rc, err = _cli([*argv, "--out", str(tmp_path / "r.html")], capsys)
    assert rc == 2
    assert "bad.pt" in err


class _Payload:
    """Unpickling it would call print (never happens: weights_only refuses it)."""

    def __reduce__(self):
        return (print, ("unpickled!",))


def test_refused_pickle_and_torchscript_say_what_and_never_advise_weights_only_false(
    tmp_path, capsys
):
    # Before: torch's message, with terminal escapes, advising to re-run with
    # weights_only=False ("can result in arbitrary code execution").
    from landscape.checkpoint import read_checkpoint

    torch.save({"state_dict": {"w": torch.zeros(1)}, "obj": _Payload()}, tmp_path / "p.pt")
    torch.jit.save(torch.jit.script(nn.Linear(2, 2)), tmp_path / "j.pt")
    with pytest.raises(ValueError) as exc:
        read_checkpoint(tmp_path / "p.pt")
    msg = str(exc.value)
    assert "refused: it holds a Python object (print)" in msg
    assert "weights_only` set to `False`" not in msg and "\x1b" not in msg
    assert "unpickled!" not in capsys.readouterr().out
    with pytest.raises(ValueError, match="a TorchScript archive"):
        read_checkpoint(tmp_path / "j.pt")


def test_demo_settings_refuse_nan_span():
    from landscape.demo import _check_settings

    with pytest.raises(ValueError, match="Invalid span"):
        _check_settings(4, 5, 8, 1, math.nan, 0.0, 0, ["loss"], [])


def test_an_unbatched_pair_is_one_clear_error():
    model, x, y = _tiny()
    with pytest.raises(ValueError, match="Invalid data"):
        Objective(model, (x[0], y[0]))


def test_compute_surface_of_no_model_and_summary_of_a_huge_top_k():
    from landscape.hessian.summary import hessian_summary
    from landscape.surface import compute_surface

    model, x, y = _tiny()
    with pytest.raises(ValueError, match="Invalid model: a NoneType"):
        compute_surface(None, (x, y), x=[0.0], progress=False)
    # top_k above the parameter count: all of them, in at most that many products
    dim = sum(p.numel() for p in model.parameters())
    res = hessian_summary(model.double(), (x.double(), y), top_k=10**9, progress=False)
    assert len(res["eigen"]["eigenvalues"]) == dim
    assert res["products"] <= dim + 1
