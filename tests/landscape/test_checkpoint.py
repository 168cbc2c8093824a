"""Checkpoint format: round trip, weights_only, user state_dicts, one-line errors."""

from __future__ import annotations

import hashlib
import os

import pytest
import torch
from torch import nn

from landscape import load_checkpoint
from landscape.checkpoint import (
    FORMAT,
    file_sha256,
    read_checkpoint,
    run_checkpoints,
    save_checkpoint,
)
from landscape.models import build_model, model_spec

SPEC = model_spec("cnn", (1, 8, 8), 10, width=4, hidden=8)
DATA_SPEC = {"name": "synthetic", "seed": 0, "n_train": 20, "n_test": 10}


def _model():
    kw = dict(SPEC)
    return build_model(kw.pop("name"), **kw)


def _save(path, model=None, epoch=3, **extra):
    model = model or _model()
    save_checkpoint(
        path,
        model,
        model_spec=SPEC,
        data_spec=DATA_SPEC,
        meta={"epoch": epoch, "optimizer": "sam", "hparams": {"rho": 0.05}, "metrics": {}},
        **extra,
    )
    return model


def test_round_trip(tmp_path):
    path = tmp_path / "a.pt"
    model = _save(path, training_state={"rng": torch.get_rng_state(), "step": 7})
    raw = torch.load(path, weights_only=True)  # the documented format: plain types only
    assert raw["format"] == FORMAT and raw["model_spec"] == SPEC
    assert raw["meta"]["version"] and raw["meta"]["epoch"] == 3
    ck = load_checkpoint(path)
    assert not ck.model.training
    for (k, v), (k2, v2) in zip(model.state_dict().items(), ck.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert ck.model_spec == SPEC and ck.data_spec == DATA_SPEC
    assert ck.meta["optimizer"] == "sam" and ck.meta["hparams"] == {"rho": 0.05}
    assert ck.epoch == 3 and ck.path == path
    assert ck.sha256 == hashlib.sha256(path.read_bytes()).hexdigest() == file_sha256(path)
    assert ck.training_state["step"] == 7
    data = ck.load_data()
    assert len(data.train) == 20


def test_ddp_prefix_and_wrapped_dicts(tmp_path):
    model = _model()
    sd = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save(sd, tmp_path / "ddp.pt")
    torch.save({"model_state_dict": model.state_dict(), "epoch": 2}, tmp_path / "wrapped.pt")
    for name in ("ddp.pt", "wrapped.pt"):
        target = _model()
        ck = load_checkpoint(tmp_path / name, model=target)
        assert ck.model is target and ck.model_spec is None and ck.meta == {}
        for k, v in model.state_dict().items():
            assert torch.equal(target.state_dict()[k], v)


def test_plain_state_dict_of_a_user_model(tmp_path):
    user = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    torch.save(user.state_dict(), tmp_path / "user.pt")
    fresh = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    ck = load_checkpoint(tmp_path / "user.pt", model=fresh)
    x = torch.randn(5, 3)
    torch.testing.assert_close(ck.model(x), user(x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"user.pt: a plain state_dict.*pass model="):
        load_checkpoint(tmp_path / "user.pt")
    with pytest.raises(ValueError, match="no data spec"):
        ck.load_data()


def _one_line(exc):
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_state_dict_not_fitting_names_file_and_first_key(tmp_path):
    path = tmp_path / "a.pt"
    _save(path)
    other = build_model("cnn", in_channels=1, num_classes=10, input_size=8, width=5, hidden=8)
    with pytest.raises(ValueError) as exc:
        load_checkpoint(path, model=other)
    msg = _one_line(exc)
    assert str(path) in msg and "'features.0.weight'" in msg and "(4, 1, 3, 3)" in msg
    bigger = nn.Sequential(_model(), nn.Linear(10, 2))
    with pytest.raises(ValueError, match=r"first mismatching key '0\.features\.0\.weight'"):
        load_checkpoint(path, model=bigger)
    user = nn.Linear(2, 2)
    torch.save(
        {"weight": torch.zeros(2, 2), "bias": torch.zeros(2), "extra": torch.zeros(1)},
        tmp_path / "extra.pt",
    )
    with pytest.raises(ValueError, match=r"extra.pt.*'extra' \(not in the model\)"):
        load_checkpoint(tmp_path / "extra.pt", model=user)


def test_corrupt_and_truncated_files(tmp_path):
    path = tmp_path / "good.pt"
    _save(path)
    raw = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.pt").write_bytes(os.urandom(300))
    for name in ("trunc.pt", "junk.pt"):
        with pytest.raises(ValueError) as exc:
            load_checkpoint(tmp_path / name)
        msg = _one_line(exc)
        assert msg.startswith(str(tmp_path / name)) and "not a readable checkpoint" in msg
    with pytest.raises(FileNotFoundError, match=r"missing.pt: no such checkpoint file"):
        load_checkpoint(tmp_path / "missing.pt")


def test_unknown_model_spec_names_the_file(tmp_path):
    save_checkpoint(tmp_path / "odd.pt", _model(), model_spec={**SPEC, "name": "vgg"})
    with pytest.raises(ValueError, match=r"odd.pt: cannot rebuild the model \(Unknown model 'vgg'"):
        load_checkpoint(tmp_path / "odd.pt")


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_pickled_code_is_never_run(tmp_path):
    torch.save({"state_dict": {}, "evil": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match=r"evil.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "evil.pt")


def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "a.pt"
    _save(path, epoch=1)
    before = path.read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise KeyboardInterrupt  # killed half-way through writing

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        _save(path, epoch=2)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.pt"]  # no temporary left


def test_run_checkpoints_order_and_final(tmp_path):
    ck = tmp_path / "checkpoints"
    for e in (10, 0, 5):
        _save(ck / f"epoch_{e:04d}.pt", epoch=e)
    (ck / ".epoch_0015.pt.tmp-123").write_bytes(b"x")  # a killed write is ignored
    _save(tmp_path / "final.pt", epoch=10)
    names = [p.name for p in run_checkpoints(tmp_path)]
    assert names == ["epoch_0000.pt", "epoch_0005.pt", "epoch_0010.pt"]
    _save(tmp_path / "final.pt", epoch=12)
    assert [p.name for p in run_checkpoints(tmp_path)][-1] == "final.pt"
    with pytest.raises(FileNotFoundError, match="no checkpoints"):
        run_checkpoints(tmp_path / "empty")
    assert read_checkpoint(tmp_path / "final.pt")["meta"]["epoch"] == 12
