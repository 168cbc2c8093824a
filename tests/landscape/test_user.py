"""landscape.user: the forms of a user's data, seeded factories, digests."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.data import load_data
from landscape.user import UserModel, _splits, load_object


def test_the_forms_of_the_data():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    loader = DataLoader(TensorDataset(x, y), batch_size=2)
    assert _splits((x, y), "d").train == (x, y)  # a tensor pair is one split
    pair = _splits((loader, [(x, y)]), "d")  # any other 2-tuple is (train, test)
    assert pair.train is loader and pair.test == [(x, y)] and pair.val is None
    batches = [{"input_ids": x}, {"input_ids": x}]  # a list is batches, not splits
    assert _splits(batches, "d").train is batches
    d = _splits({"train": loader, "val": loader}, "d")
    assert d.train is loader and d.val is loader and d.test is None
    hf = {"input_ids": x, "labels": y}  # a dict batch, not splits
    assert _splits(hf, "d").train is hf
    bundle = load_data("digits", n_per_class=2)
    b = _splits(bundle, "d")
    assert (b.train, b.test, b.name) == (bundle.train, bundle.test, "d")
    with pytest.raises(ValueError, match="returned None"):
        _splits(None, "d")


def test_load_object_walks_attributes():
    assert load_object("torch.nn:Linear") is nn.Linear
    assert load_object("torch:nn.functional.relu") is torch.nn.functional.relu
    with pytest.raises(ValueError, match=r"no attribute nope in torch\.nn$"):
        load_object("torch.nn:nope")


def test_a_failing_factory_leaves_the_generator_as_it_was():
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = UserModel("torch.nn:Linear", None).open  # nn.Linear() needs arguments: refused
    with pytest.raises(ValueError, match=r"calling it failed \(TypeError"):
        a()
    assert torch.equal(torch.get_rng_state(), before)


def test_the_same_model_every_time(tmp_path, monkeypatch):
    (tmp_path / "sharpscape_userseed.py").write_text(
        "from torch import nn\n\ndef net():\n    return nn.Linear(3, 2)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    src = UserModel("sharpscape_userseed:net", "sharpscape_userseed:net")
    torch.manual_seed(7)
    before = torch.get_rng_state()
    one, two = src.open(), src.open()
    assert torch.equal(torch.get_rng_state(), before)  # seeded inside, restored after
    assert torch.equal(one.model.weight, two.model.weight)
    assert one.sha256 == two.sha256 == src.sha256()
    assert UserModel("sharpscape_userseed:net", "x:y").sha256() != one.sha256  # other data
    assert UserModel(src.model, src.data, seed=1).sha256() != one.sha256
    torch.save(one.model.state_dict(), tmp_path / "w.pt")
    w = UserModel(src.model, src.data, tmp_path / "w.pt").open()
    assert w.weights_sha256 is not None and w.sha256 != one.sha256
    assert w.attrs()["weights"] == str(tmp_path / "w.pt")
