"""Built-in data: shapes, splits, exact label noise, offline MNIST-1D, safe CIFAR reading."""

from __future__ import annotations

import os
import pickle
import random
import socket

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from landscape.data import (
    DATA_NAMES,
    _mnist1d_arrays,
    apply_label_noise,
    as_bundle,
    load_data,
    restricted_unpickle,
)


def _same(a: TensorDataset, b: TensorDataset) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a.tensors, b.tensors))


def test_digits_shapes_and_spec_round_trip():
    b = load_data("digits", seed=3, val_fraction=0.1, n_per_class=50)
    assert b.input_shape == (1, 8, 8) and b.num_classes == 10
    x, y = b.train.tensors
    assert x.dtype == torch.float32 and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert len(b.train) + len(b.val) == 500
    assert len(b.val) == 50  # stratified: round(0.1 * 50) per class
    assert torch.bincount(b.val.tensors[1], minlength=10).tolist() == [5] * 10
    assert len(b.test) == 359  # fixed stratified round(20 % of 1797)
    again = load_data(**b.spec)
    for split in ("train", "val", "test"):
        assert _same(getattr(b, split), getattr(again, split))
    other = load_data("digits", seed=4, val_fraction=0.1, n_per_class=50)
    assert not _same(b.train, other.train)
    assert _same(b.test, other.test)  # the test split does not depend on the seed


def test_n_per_class_exact_counts():
    b = load_data("synthetic", n_per_class=7, classes=3, n_train=60)
    assert torch.bincount(b.train.tensors[1]).tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match="n_per_class"):
        load_data("synthetic", n_per_class=100, classes=3, n_train=60)


def test_validation_split_is_disjoint_from_train():
    b = load_data("synthetic", val_fraction=0.25, n_train=200, dim=5)
    tr, va = b.train.tensors[0], b.val.tensors[0]
    assert len(tr) == 150 and len(va) == 50
    # continuous features: no row may appear in both splits
    d = torch.cdist(tr.double(), va.double())
    assert float(d.min()) > 0


@pytest.mark.parametrize("fraction", [0.0, 0.2, 0.37, 1.0])
def test_label_noise_flips_exactly_the_fraction(fraction):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, size=1000)
    noisy, flipped = apply_label_noise(y, fraction, 10, seed=5)
    k = round(fraction * 1000)
    assert int((noisy != y).sum()) == k
    assert len(flipped) == k and set(np.flatnonzero(noisy != y)) == set(flipped)
    assert noisy.min() >= 0 and noisy.max() < 10
    again, _ = apply_label_noise(y, fraction, 10, seed=5)
    np.testing.assert_array_equal(noisy, again)
    if 0 < k < 1000:
        other, _ = apply_label_noise(y, fraction, 10, seed=6)
        assert not np.array_equal(noisy, other)


def test_label_noise_is_symmetric_over_other_classes():
    y = np.zeros(20000, dtype=np.int64)
    noisy, _ = apply_label_noise(y, 1.0, 5, seed=0)
    counts = np.bincount(noisy, minlength=5)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / 20000 - 0.25) < 0.02)


def test_load_data_label_noise_keeps_clean_labels():
    b = load_data("digits", label_noise=0.4, val_fraction=0.2, seed=1)
    noisy, clean = b.train.tensors[1], b.clean_targets
    assert int((noisy != clean).sum()) == round(0.4 * len(noisy))
    assert torch.equal(b.clean_train().tensors[1], clean)
    plain = load_data("digits", val_fraction=0.2, seed=1)
    assert torch.equal(plain.train.tensors[1], clean)  # same examples, clean labels
    assert _same(plain.val, b.val)  # validation labels stay clean
    with pytest.raises(ValueError, match="label_noise"):
        load_data("digits", label_noise=1.5)


def test_mnist1d_offline_no_files_and_rng_untouched(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    def no_network(*args, **kwargs):
        raise AssertionError("mnist1d tried to reach the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    _mnist1d_arrays.cache_clear()  # generate for real in this test
    np_state = np.random.get_state()  # noqa: NPY002 - the global state under test
    py_state = random.getstate()
    b = load_data("mnist1d", num_samples=200, val_fraction=0.1)
    after = np.random.get_state()  # noqa: NPY002
    assert all(np.array_equal(a, b) for a, b in zip(np_state, after))
    assert random.getstate() == py_state
    assert os.listdir(tmp_path) == []
    assert b.input_shape == (40,) and b.num_classes == 10
    assert len(b.train) + len(b.val) == 160 and len(b.test) == 40
    assert _same(b.test, load_data("mnist1d", num_samples=200).test)
    assert abs(float(torch.cat([b.train.tensors[0], b.test.tensors[0]]).std()) - 1) < 0.1


def test_synthetic_any_size_and_seeded():
    b = load_data("synthetic", n_train=33, n_test=11, dim=7, classes=5)
    assert (len(b.train), len(b.test), b.input_shape, b.num_classes) == (33, 11, (7,), 5)
    assert _same(b.train, load_data("synthetic", n_train=33, n_test=11, dim=7, classes=5).train)
    c = load_data("synthetic", n_train=33, n_test=11, dim=7, classes=5, data_seed=1)
    assert not _same(b.train, c.train)


def test_bad_names_and_options():
    with pytest.raises(ValueError, match="digits, mnist1d, synthetic, cifar10, cifar100"):
        load_data("imagenet")
    with pytest.raises(ValueError, match=r"Unknown option.*colour"):
        load_data("synthetic", colour=3)
    with pytest.raises(ValueError, match="val_fraction"):
        load_data("digits", val_fraction=1.0)
    assert set(DATA_NAMES) == {"digits", "mnist1d", "synthetic", "cifar10", "cifar100"}


def test_as_bundle_user_data():
    x, y = torch.randn(12, 3), torch.arange(12) % 4
    b = as_bundle((x, y), test=(x[:4], y[:4]))
    assert b.num_classes == 4 and b.input_shape == (3,) and b.spec is None
    assert len(b.test) == 4
    with pytest.raises(ValueError, match="inputs but"):
        as_bundle((x, y[:5]))


# ------------------------------------------------------------------ CIFAR, safely


def _write_pickle(path, obj):
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=2)


def _fake_cifar10(root, n=4):
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        batch = {
            b"batch_label": name.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"img{i}.png".encode() for i in range(n)],
        }
        _write_pickle(folder / name, batch)
        batches[name] = (data, labels)
    _write_pickle(folder / "batches.meta", {b"label_names": [b"airplane"] * 10})
    return folder, batches


def test_cifar10_from_fake_folder(tmp_path):
    _, batches = _fake_cifar10(tmp_path)
    b = load_data("cifar10", data_dir=tmp_path)
    assert b.input_shape == (3, 32, 32) and b.num_classes == 10
    assert len(b.train) == 20 and len(b.test) == 4
    data, labels = batches["data_batch_1"]
    # channel-major layout, normalised with the CIFAR-10 statistics
    pix = data[0].reshape(3, 32, 32)[1, 5, 7] / 255.0
    expect = (pix - 0.4822) / 0.2435
    assert abs(float(b.train.tensors[0][0, 1, 5, 7]) - expect) < 1e-5
    assert b.train.tensors[1][:4].tolist() == labels
    # the folder itself works as data_dir too, and the spec rebuilds the bundle
    same = load_data("cifar10", data_dir=tmp_path / "cifar-10-batches-py")
    assert _same(b.train, same.train)
    assert b.spec["data_dir"] == same.spec["data_dir"] == str(tmp_path)
    assert _same(load_data(**b.spec).test, b.test)


def test_cifar100_from_fake_folder(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name, n in (("train", 6), ("test", 3)):
        _write_pickle(
            folder / name,
            {
                b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
                b"fine_labels": [int(v) for v in rng.integers(0, 100, size=n)],
                b"coarse_labels": [0] * n,
            },
        )
    b = load_data("cifar100", data_dir=tmp_path)
    assert (len(b.train), len(b.test), b.num_classes) == (6, 3, 100)


def test_cifar_missing_folder_shows_layout(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"cifar-10-batches-py.*data_batch_1"):
        load_data("cifar10", data_dir=tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"cifar-100-python.*train, test"):
        load_data("cifar100", data_dir=tmp_path)


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path):
    folder, _ = _fake_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    evil = _Evil()
    evil.marker = marker
    _write_pickle(folder / "data_batch_3", {b"data": evil, b"labels": [0]})
    with pytest.raises(ValueError, match=r"refusing to unpickle (posix|os|nt)\.system"):
        load_data("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    # also a plain class instance (no code would run, but it is not data)
    _write_pickle(tmp_path / "obj.pkl", {"x": TensorDataset(torch.zeros(1))})
    with pytest.raises(ValueError, match="refusing"):
        restricted_unpickle(tmp_path / "obj.pkl")


def test_truncated_pickle_is_a_clear_error(tmp_path):
    folder, _ = _fake_cifar10(tmp_path)
    raw = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="test_batch: not a readable pickle"):
        load_data("cifar10", data_dir=tmp_path)
