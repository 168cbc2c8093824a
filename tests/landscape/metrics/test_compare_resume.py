"""``compare_checkpoints(out=...)``: rows written after every checkpoint, resumed on rerun."""

import csv
import json

import pytest
from test_compare import write_checkpoint

import landscape.compare as compare_module
from landscape.checkpoint import file_sha256
from landscape.cli import main
from landscape.compare import CompareInterrupted, compare_checkpoints

# Deterministic metrics (fixed seeds, explicit subsets), so reruns agree exactly. The
# subsets are tuples: stored as lists in the JSON settings, they must still match.
METRICS = ["grad_norm", "lambda_max", "grad_cosine"]
OPTIONS = {"max_products": 20, "subsets": (tuple(range(10)), tuple(range(10, 20)))}


@pytest.fixture
def three(tmp_path):
    """Three checkpoints a, b, c (file stems are their labels)."""
    root = tmp_path / "ckpts"
    return [write_checkpoint(root / f"{n}.pt", 20 + i, i) for i, n in enumerate("abc")]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted in-memory comparison of the same three checkpoints."""
    root = tmp_path_factory.mktemp("ref")
    paths = [write_checkpoint(root / f"{n}.pt", 20 + i, i) for i, n in enumerate("abc")]
    cmp = compare_checkpoints(paths, METRICS, device="cpu", progress=False, **OPTIONS)
    return json.loads(json.dumps(cmp.to_dict()))  # as a file holds it


def _measured(row):
    """A row without the file's path and hash (the reference files lie elsewhere)."""
    return {k: v for k, v in row.items() if k not in ("checkpoint", "sha256")}


class Calls:
    """Wraps ``compute_metrics``: counts calls, runs ``before(n)`` ahead of the n-th."""

    def __init__(self, monkeypatch, before=None):
        self.n = 0
        self.before = before
        real = compare_module.compute_metrics

        def wrapper(*args, **kwargs):
            self.n += 1
            if self.before is not None:
                self.before(self.n)
            return real(*args, **kwargs)

        monkeypatch.setattr(compare_module, "compute_metrics", wrapper)


def _fail_on(call, exc=RuntimeError):
    def before(n):
        if n == call:
            raise exc("stop")

    return before


def _run(paths, out, **kwargs):
    return compare_checkpoints(
        paths, METRICS, device="cpu", progress=False, out=out, **{**OPTIONS, **kwargs}
    )


def test_rows_written_after_each_checkpoint_then_resumed(three, reference, tmp_path, monkeypatch):
    out = tmp_path / "res" / "traj.json"  # the folder is created
    Calls(monkeypatch, _fail_on(2))
    with pytest.raises(RuntimeError, match="stop"):
        _run(three, out)
    on_disk = json.loads(out.read_text())
    assert on_disk["metrics"] == METRICS
    assert on_disk["settings"] == reference["settings"]
    assert [r["label"] for r in on_disk["rows"]] == ["a"]
    assert _measured(on_disk["rows"][0]) == _measured(reference["rows"][0])
    assert on_disk["rows"][0]["checkpoint"] == str(three[0])
    assert not [p for p in out.parent.iterdir() if p.name != "traj.json"]  # no temp file

    # Rerun in another order: only c and b are computed; the reused row a sits between
    # them, on disk as soon as c is done.
    seen = []

    def before(n):
        if n == 2:
            seen.extend(r["label"] for r in json.loads(out.read_text())["rows"])

    calls = Calls(monkeypatch, before)
    order = [three[2], three[0], three[1]]
    cmp = _run(order, out)
    assert calls.n == 2
    assert seen == ["c", "a"]
    expected = [reference["rows"][i] for i in (2, 0, 1)]
    assert [_measured(r) for r in cmp.rows] == [_measured(r) for r in expected]
    on_disk = json.loads(out.read_text())
    assert on_disk == json.loads(json.dumps(cmp.to_dict()))
    assert [r["checkpoint"] for r in on_disk["rows"]] == [str(p) for p in order]
    assert [r["sha256"] for r in on_disk["rows"]] == [file_sha256(p) for p in order]

    # Everything done: a third run computes nothing, takes this call's labels and order.
    calls = Calls(monkeypatch)
    cmp = _run(three, out, labels=["A", "B", "C"])
    assert calls.n == 0
    assert [r["label"] for r in cmp.rows] == ["A", "B", "C"]
    rows = json.loads(out.read_text())["rows"]
    assert [r["label"] for r in rows] == ["A", "B", "C"]
    for row, ref in zip(rows, reference["rows"]):
        assert {**_measured(row), "label": ref["label"]} == _measured(ref)


def test_other_settings_refused_before_any_work_and_no_resume_overwrites(
    three, tmp_path, monkeypatch
):
    out = tmp_path / "traj.json"
    _run(three[:2], out)
    before = out.read_text()
    calls = Calls(monkeypatch)
    with pytest.raises(ValueError, match=r"max_samples: None there, 20 now.*resume=False"):
        _run(three, out, max_samples=20)
    with pytest.raises(ValueError, match=r"metrics: \[.*\] there, \['grad_norm'\] now"):
        compare_checkpoints(three, ["grad_norm"], progress=False, out=out)
    with pytest.raises(ValueError, match=r"options\.max_products: 20 there, 30 now"):
        _run(three, out, max_products=30)
    with pytest.raises(ValueError, match=r"per_metric\.lambda_max: absent there"):
        _run(three, out, per_metric={"lambda_max": {"tol": 0.01}})
    assert calls.n == 0 and out.read_text() == before

    cmp = _run(three, out, max_samples=20, resume=False)
    assert calls.n == 3
    on_disk = json.loads(out.read_text())
    assert on_disk["settings"]["max_samples"] == 20 and len(on_disk["rows"]) == 3
    assert on_disk["rows"][0]["grad_norm"]["value"] == cmp.rows[0]["grad_norm"]["value"]

    out.write_text('{"something": "else"}\n')
    with pytest.raises(ValueError, match=r"not a comparison file.*--no-resume"):
        _run(three, out)
    out.write_text("{truncated")
    with pytest.raises(ValueError, match="cannot resume from it"):
        _run(three, out)
    assert calls.n == 3


def test_rewritten_checkpoint_is_recomputed(three, reference, tmp_path, monkeypatch, caplog):
    out = tmp_path / "traj.json"
    _run(three, out)
    old = json.loads(out.read_text())["rows"]
    write_checkpoint(three[1], 99, 1)  # b: other weights, same path
    calls = Calls(monkeypatch)
    with caplog.at_level("INFO", logger="landscape.compare"):
        cmp = _run(three, out)
    assert calls.n == 1
    assert "changed since it was measured" in caplog.text
    assert "2 of 3 rows reused" in caplog.text
    rows = json.loads(out.read_text())["rows"]
    assert rows[0] == old[0] and rows[2] == old[2]
    assert rows[1]["sha256"] != old[1]["sha256"]
    assert rows[1]["grad_norm"]["value"] != old[1]["grad_norm"]["value"]
    fresh = compare_checkpoints([three[1]], METRICS, progress=False, **OPTIONS)
    assert _measured(rows[1]) == _measured(json.loads(json.dumps(fresh.to_dict()))["rows"][0])
    assert rows == json.loads(json.dumps(cmp.to_dict()))["rows"]


def test_csv_out_written_after_each_checkpoint_not_resumed(three, reference, tmp_path, monkeypatch):
    out = tmp_path / "traj.csv"
    Calls(monkeypatch, _fail_on(2))
    with pytest.raises(RuntimeError):
        _run(three, out)
    with open(out) as fh:
        lines = list(csv.DictReader(fh))
    assert [line["label"] for line in lines] == ["a"]
    for m in METRICS:
        assert float(lines[0][m]) == reference["rows"][0][m]["value"]

    calls = Calls(monkeypatch)
    _run(three, out)
    assert calls.n == 3  # nothing reused from a CSV
    with open(out) as fh:
        assert [line["label"] for line in csv.DictReader(fh)] == ["a", "b", "c"]


def test_interrupt_says_what_is_saved(three, tmp_path, monkeypatch):
    out = tmp_path / "traj.json"
    Calls(monkeypatch, _fail_on(3, KeyboardInterrupt))
    with pytest.raises(CompareInterrupted) as info:
        _run(three, out)
    assert (info.value.saved, info.value.total, info.value.out) == (2, 3, out)
    assert isinstance(info.value, KeyboardInterrupt)
    assert len(json.loads(out.read_text())["rows"]) == 2

    fresh = tmp_path / "fresh.json"
    Calls(monkeypatch, _fail_on(1, KeyboardInterrupt))
    with pytest.raises(CompareInterrupted, match=r"before the first of 3 .*nothing saved"):
        _run(three, fresh)
    assert not fresh.exists()

    Calls(monkeypatch, _fail_on(1, KeyboardInterrupt))
    with pytest.raises(KeyboardInterrupt) as info:
        compare_checkpoints(three, METRICS, progress=False, **OPTIONS)  # no out
    assert not isinstance(info.value, CompareInterrupted)


def test_cli_interrupt_exits_130_and_rerun_resumes(three, tmp_path, monkeypatch, capsys):
    out = tmp_path / "traj.json"
    argv = [
        "compare",
        *map(str, three),
        "--metrics",
        "grad_norm,lambda_max",
        "--set",
        "max_products=20",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(out),
    ]
    Calls(monkeypatch, _fail_on(2, KeyboardInterrupt))
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert (
        f"interrupted: 1 of 3 checkpoints saved in {out}; run the same command again to resume"
        in err
    )
    assert len(json.loads(out.read_text())["rows"]) == 1

    calls = Calls(monkeypatch)
    assert main(argv) == 0
    assert calls.n == 2
    assert f"wrote {out}" in capsys.readouterr().out
    first = json.loads(out.read_text())
    assert [r["label"] for r in first["rows"]] == ["a", "b", "c"]

    assert main([*argv, "--max-samples", "16"]) == 2
    assert "--no-resume" in capsys.readouterr().err
    assert main([*argv, "--max-samples", "16", "--no-resume"]) == 0
    assert calls.n == 5
    second = json.loads(out.read_text())
    assert second["settings"]["max_samples"] == 16 and len(second["rows"]) == 3
