"""hessian_summary(out=...) writes each finished part; hessian_summary_checkpoint resumes."""

import json
import logging
import shutil
from collections import Counter

import pytest
import torch

import landscape.hessian.summary as summary_mod
from landscape.checkpoint import save_checkpoint
from landscape.cli import main
from landscape.data import load_data
from landscape.hessian.summary import (
    SummaryInterrupted,
    hessian_summary,
    hessian_summary_checkpoint,
)
from landscape.models import build_model

KW = {
    "top_k": 2,
    "tol": 1e-6,
    "trace": True,
    "trace_products": 12,
    "density": True,
    "density_runs": 2,
    "density_steps": 8,
    "progress": False,
}
CLI = [
    "--top-k",
    "2",
    "--tol",
    "1e-6",
    "--trace",
    "--trace-products",
    "12",
    "--density",
    "--density-runs",
    "2",
    "--density-steps",
    "8",
    "--no-progress",
]


def _save_tiny(path, seed):
    bundle = load_data("digits", n_per_class=4)
    spec = {
        "name": "mlp",
        "in_channels": 1,
        "num_classes": bundle.num_classes,
        "input_size": [8, 8],
        "hidden": [5],
    }
    torch.manual_seed(seed)
    save_checkpoint(path, build_model(**spec), model_spec=spec, data_spec=bundle.spec)
    return path


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("ckpt") / "tiny.pt", seed=0)


@pytest.fixture(scope="module")
def full(checkpoint):
    """The uninterrupted summary, in memory only."""
    return hessian_summary_checkpoint(checkpoint, **KW)


def _count_calls(monkeypatch):
    calls = Counter()
    for name in ("lanczos_eigen", "estimate_trace", "slq_density"):
        real = getattr(summary_mod, name)

        def wrapper(*args, _real=real, _name=name, **kwargs):
            calls[_name] += 1
            return _real(*args, **kwargs)

        monkeypatch.setattr(summary_mod, name, wrapper)
    return calls


def _fail(monkeypatch, name, exc):
    def boom(*args, **kwargs):
        raise exc

    monkeypatch.setattr(summary_mod, name, boom)


def _same_values(a, b, parts=("eigen", "trace", "density")):
    for part in parts:
        assert (a[part] is None) == (b[part] is None), part
    if "eigen" in parts:
        assert a["eigen"]["eigenvalues"] == b["eigen"]["eigenvalues"]
        assert a["eigen"]["residuals"] == b["eigen"]["residuals"]
    if "trace" in parts:
        assert (a["trace"]["value"], a["trace"]["stderr"]) == (
            b["trace"]["value"],
            b["trace"]["stderr"],
        )
    if "density" in parts:
        for key in ("grid", "density", "nodes", "weights"):
            assert a["density"][key] == b["density"][key], key


@pytest.mark.parametrize(
    ("failing", "finished"), [("estimate_trace", ["eigen"]), ("slq_density", ["eigen", "trace"])]
)
def test_parts_are_written_as_they_finish(
    checkpoint, full, tmp_path, monkeypatch, failing, finished
):
    out = tmp_path / "h.json"
    _fail(monkeypatch, failing, RuntimeError("boom"))
    with pytest.raises(RuntimeError, match="boom"):
        hessian_summary_checkpoint(checkpoint, out=out, **KW)
    saved = json.loads(out.read_text())
    assert saved["complete"] is False
    assert list(saved["parts"]) == finished
    _same_values(saved, full, finished)
    for part in {"eigen", "trace", "density"} - set(finished):
        assert saved[part] is None
    assert saved["settings"] == full["settings"]
    assert saved["sha256"] == full["sha256"] and saved["dim"] == full["dim"]
    assert saved["products"] == sum(p["products"] for p in saved["parts"].values())
    assert not list(tmp_path.glob(".h.json.tmp*"))


def test_resume_computes_only_the_missing_part(checkpoint, full, tmp_path, monkeypatch, caplog):
    out = tmp_path / "h.json"
    with monkeypatch.context() as m:
        _fail(m, "slq_density", RuntimeError("job time limit"))
        with pytest.raises(RuntimeError):
            hessian_summary_checkpoint(checkpoint, out=out, **KW)
    calls = _count_calls(monkeypatch)
    with caplog.at_level(logging.INFO, logger="landscape.hessian.summary"):
        res = hessian_summary_checkpoint(checkpoint, out=out, **KW)
    assert calls == Counter(slq_density=1)
    assert "eigen, trace reused" in caplog.text
    saved = json.loads(out.read_text())
    assert saved["complete"] is True and res["complete"] is True
    _same_values(saved, full)
    _same_values(res, full)
    assert {p: d["reused"] for p, d in saved["parts"].items()} == {
        "eigen": True,
        "trace": True,
        "density": False,
    }
    # Honest totals: every part's own products and seconds, reused ones included.
    assert saved["products"] == full["products"] == res["products"]
    assert saved["products"] == sum(d["products"] for d in saved["parts"].values())
    assert saved["seconds"] >= sum(d["seconds"] for d in saved["parts"].values())
    assert saved["settings"] == full["settings"]
    # A complete file: nothing left to compute, the same numbers again.
    again = hessian_summary_checkpoint(checkpoint, out=out, **KW)
    assert calls == Counter(slq_density=1)
    _same_values(again, full)
    assert all(d["reused"] for d in again["parts"].values())
    assert "from an earlier run" in summary_mod.format_summary(again)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"top_k": 3}, "top_k: 2 there, 3 now"),
        ({"tol": 1e-4}, "tol: 1e-06 there, 0.0001 now"),
        ({"trace": False}, "trace_method: 'hutchpp' there, None now"),
        ({"density": False}, "density: True there, False now"),
        ({"split": "test"}, "split: 'train' there, 'test' now"),
        ({"dtype": torch.float64}, "dtype: 'native' there, 'torch.float64' now"),
    ],
)
def test_other_settings_are_refused_before_any_work(
    checkpoint, tmp_path, monkeypatch, change, message
):
    out = tmp_path / "h.json"
    hessian_summary_checkpoint(checkpoint, out=out, **KW)
    before = out.read_bytes()
    calls = _count_calls(monkeypatch)
    monkeypatch.setattr("landscape.checkpoint.load_checkpoint", None)  # no work at all
    kwargs = {**KW, **change}
    with pytest.raises(ValueError, match="with different settings") as info:
        hessian_summary_checkpoint(checkpoint, out=out, **kwargs)
    assert message in str(info.value) and "--no-resume" in str(info.value)
    assert "--out" in str(info.value)
    assert out.read_bytes() == before and not calls


def test_other_checkpoint_content_refused_and_no_resume_overwrites(tmp_path, monkeypatch):
    ckpt = _save_tiny(tmp_path / "c.pt", seed=0)
    out = tmp_path / "h.json"
    first = hessian_summary_checkpoint(ckpt, out=out, **KW)
    _save_tiny(ckpt, seed=1)  # same path, other weights
    calls = _count_calls(monkeypatch)
    with pytest.raises(ValueError, match="of another checkpoint content") as info:
        hessian_summary_checkpoint(ckpt, out=out, **KW)
    assert f"sha256: {first['sha256']!r} there" in str(info.value)
    assert "different settings" not in str(info.value) and not calls
    with pytest.raises(ValueError, match="another checkpoint content and different settings"):
        hessian_summary_checkpoint(ckpt, out=out, **{**KW, "seed": 1})
    redo = hessian_summary_checkpoint(ckpt, out=out, resume=False, **KW)
    assert calls == Counter(lanczos_eigen=1, estimate_trace=1, slq_density=1)
    saved = json.loads(out.read_text())
    assert saved["sha256"] == redo["sha256"] != first["sha256"] and saved["complete"]
    assert saved["eigen"]["eigenvalues"] == redo["eigen"]["eigenvalues"]
    assert saved["eigen"]["eigenvalues"] != first["eigen"]["eigenvalues"]


def test_not_a_summary_file_is_refused(checkpoint, tmp_path):
    out = tmp_path / "h.json"
    out.write_text('{"metrics": [], "rows": []}')
    with pytest.raises(ValueError, match="not a Hessian summary file"):
        hessian_summary_checkpoint(checkpoint, out=out, **KW)
    out.write_text("{broken")
    with pytest.raises(ValueError, match="cannot resume from it"):
        hessian_summary_checkpoint(checkpoint, out=out, **KW)
    with pytest.raises(ValueError, match="Invalid out"):
        hessian_summary_checkpoint(checkpoint, out=tmp_path / "h.csv", **KW)


def test_return_eigenvectors_recomputes_eigen(checkpoint, full, tmp_path, monkeypatch, caplog):
    out = tmp_path / "h.json"
    hessian_summary_checkpoint(checkpoint, out=out, **KW)
    calls = _count_calls(monkeypatch)
    with caplog.at_level(logging.INFO, logger="landscape.hessian.summary"):
        res = hessian_summary_checkpoint(checkpoint, out=out, return_eigenvectors=True, **KW)
    assert calls == Counter(lanczos_eigen=1)
    assert "recomputing eigen" in caplog.text
    assert len(res["eigenvectors"]) == 2
    _same_values(res, full)
    assert [d["reused"] for d in res["parts"].values()] == [False, True, True]
    saved = json.loads(out.read_text())
    assert "eigenvectors" not in saved and saved["complete"]
    assert saved["products"] == full["products"]


def test_interrupt_says_what_is_saved(checkpoint, full, tmp_path, monkeypatch):
    out = tmp_path / "h.json"
    with monkeypatch.context() as m:
        _fail(m, "slq_density", KeyboardInterrupt())
        with pytest.raises(SummaryInterrupted) as info:
            hessian_summary_checkpoint(checkpoint, out=out, **KW)
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.saved == ["eigen", "trace"] and info.value.out == out
    assert str(info.value) == (
        f"interrupted: eigen, trace saved in {out}; run the same command again to resume"
    )
    # Interrupted again before anything new finished: the file still holds both.
    with monkeypatch.context() as m:
        _fail(m, "slq_density", KeyboardInterrupt())
        with pytest.raises(SummaryInterrupted) as info:
            hessian_summary_checkpoint(checkpoint, out=out, **KW)
    assert info.value.saved == ["eigen", "trace"]
    other = tmp_path / "other.json"
    with monkeypatch.context() as m:
        _fail(m, "lanczos_eigen", KeyboardInterrupt())
        with pytest.raises(SummaryInterrupted) as info:
            hessian_summary_checkpoint(checkpoint, out=other, **KW)
        assert info.value.saved == [] and not other.exists()
        assert str(info.value) == "interrupted before the first part was finished: nothing saved"
        with pytest.raises(KeyboardInterrupt) as plain:  # no out: nothing to say
            hessian_summary_checkpoint(checkpoint, **KW)
        assert type(plain.value) is KeyboardInterrupt


def test_in_memory_summary_with_and_without_out(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3))
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    kw = {"top_k": 1, "tol": 1e-8, "trace": True, "trace_products": 10, "progress": False}
    plain = hessian_summary(model, (x, y), **kw)
    assert plain["complete"] is True and plain["density"] is None
    assert list(plain["parts"]) == ["eigen", "trace"]
    assert plain["products"] == sum(d["products"] for d in plain["parts"].values())
    assert not list(tmp_path.iterdir())
    out = tmp_path / "sub" / "s.json"
    written = hessian_summary(model, (x, y), out=out, **kw)
    saved = json.loads(out.read_text())
    _same_values(saved, plain, ("eigen", "trace"))
    _same_values(written, plain, ("eigen", "trace"))
    assert saved["complete"] is True and "checkpoint" not in saved
    with pytest.raises(ValueError, match="Invalid out"):
        hessian_summary(model, (x, y), out=tmp_path / "s.txt", **kw)


def test_cli_interrupt_resume_and_no_resume(checkpoint, full, tmp_path, monkeypatch, capsys):
    ckpt = shutil.copy(checkpoint, tmp_path / "c.pt")
    out = tmp_path / "h.json"
    args = ["hessian", str(ckpt), *CLI, "--out", str(out)]
    with monkeypatch.context() as m:
        _fail(m, "slq_density", KeyboardInterrupt())
        assert main(args) == 130
    err = capsys.readouterr().err
    assert (
        f"landscape hessian: interrupted: eigen, trace saved in {out}; run the same command "
        "again to resume" in err
    )
    saved = json.loads(out.read_text())
    assert saved["complete"] is False and list(saved["parts"]) == ["eigen", "trace"]
    calls = _count_calls(monkeypatch)
    assert main(args) == 0
    text = capsys.readouterr().out
    assert calls == Counter(slq_density=1)
    assert "λ1 =" in text and "density:" in text and f"wrote {out}" in text
    assert "(eigen, trace from an earlier run)" in text
    saved = json.loads(out.read_text())
    assert saved["complete"] is True
    _same_values(saved, full)
    # Other settings: refused (exit 2) with the advice; --no-resume starts over.
    assert main([*args, "--top-k", "1"]) == 2
    assert "--no-resume" in capsys.readouterr().err
    vec = tmp_path / "v.pt"
    assert main([*args, "--top-k", "1", "--no-resume", "--save-eigenvectors", str(vec)]) == 0
    assert calls == Counter(slq_density=2, lanczos_eigen=1, estimate_trace=1)
    saved = json.loads(out.read_text())
    assert saved["complete"] and len(saved["eigen"]["eigenvalues"]) == 1
    assert saved["eigen"]["eigenvalues"][0] == pytest.approx(full["eigen"]["eigenvalues"][0])
    vectors = torch.load(vec, weights_only=True)
    assert vectors["eigenvalues"] == saved["eigen"]["eigenvalues"]
    assert not list(tmp_path.glob(".*.tmp*"))
