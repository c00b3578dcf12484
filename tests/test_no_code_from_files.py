"""No code from data files (docs/runs.md#no-code-from-files): CIFAR's python batches go through the
same restricted unpickler as CIFAR-N's label files (numpy arrays and plain values only), with
`batches.meta` MD5-checked like every batch file when dataset.loader.verify is on. A crafted pickle
that would create a marker file is refused with one line, whatever `verify` says."""
from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest

from noisybench.data import cifar
from noisybench.data.cifar import load_cifar
from noisybench.errors import DataError


class Payload:
    """Unpickling this calls open(marker, "w"): the file appears if the loader runs code."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def _dump(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the real files are protocol-2 pickles with bytes keys


def make_cifar(root: Path, dataset: str = "cifar10", n: int = 6, seed: int = 0) -> Path:
    """Batches in the real format (pickled dicts with b'data', b'labels' / b'fine_labels', and a meta
    file with b'label_names' / b'fine_label_names') in torchvision's layout; returns the folder."""
    tv = cifar._torchvision_class(dataset)
    k, key, names = (10, b"labels", b"label_names") if dataset == "cifar10" else (100, b"fine_labels",
                                                                                   b"fine_label_names")
    rng = np.random.default_rng(seed)
    folder = root / tv.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    for f, _ in (*tv.train_list, *tv.test_list):
        _dump(folder / f, {b"batch_label": b"batch", key: rng.integers(0, k, n).tolist(),
                           b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8)})
    _dump(folder / tv.meta["filename"], {names: [f"c{i}".encode() for i in range(k)], b"num_vis": 3072})
    return folder


def _md5(p: Path) -> str:
    return hashlib.md5(p.read_bytes()).hexdigest()


class _FakeTV:
    """torchvision's CIFAR10 class as the loader reads it, with the MD5s of the files written here."""

    def __init__(self, real, folder: Path, meta_md5: str | None = None) -> None:
        self.base_folder, self.filename = real.base_folder, real.filename
        self.train_list = [[f, _md5(folder / f)] for f, _ in real.train_list]
        self.test_list = [[f, _md5(folder / f)] for f, _ in real.test_list]
        meta = folder / real.meta["filename"]
        self.meta = {**real.meta, "md5": meta_md5 or _md5(meta)}


def _verified_as_published(monkeypatch, folder: Path, dataset: str = "cifar10", meta_md5: str | None = None):
    real = cifar._torchvision_class(dataset)
    fake = _FakeTV(real, folder, meta_md5)
    monkeypatch.setattr(cifar, "_torchvision_class", lambda name: fake)


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_real_format_batches_load_through_the_restricted_unpickler(tmp_path, dataset):
    make_cifar(tmp_path, dataset)
    pool = load_cifar(dataset, data_dir=str(tmp_path), download=False, verify=False)
    k = 10 if dataset == "cifar10" else 100
    assert pool.x_train.shape == (30 if dataset == "cifar10" else 6, 3, 32, 32) and pool.x_test.shape == (6, 3, 32, 32)
    assert pool.class_names == [f"c{i}" for i in range(k)]


@pytest.mark.parametrize("victim", ["data_batch_1", "test_batch", "batches.meta"])
def test_a_malicious_pickle_is_refused_with_verify_off_and_runs_nothing(tmp_path, victim):
    folder = make_cifar(tmp_path)
    marker = tmp_path / "PWNED"
    _dump(folder / victim, {b"data": Payload(marker), b"labels": [0], b"label_names": [b"a"]})
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=False)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"refusing to load {folder / victim}: it references ")
    assert "open" in msg  # the global it names (builtins.open / io.open)
    assert not marker.exists()


def test_batches_meta_is_md5_checked_like_the_batches(tmp_path, monkeypatch):
    folder = make_cifar(tmp_path)
    _verified_as_published(monkeypatch, folder)
    assert load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True).num_classes == 10
    marker = tmp_path / "PWNED"
    _dump(folder / "batches.meta", {b"label_names": Payload(marker)})  # the batches still match their MD5s
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True)
    assert "batches.meta" in str(e.value) and "MD5" in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists()


def test_a_malicious_file_with_a_matching_md5_still_runs_nothing(tmp_path, monkeypatch):
    """Even a (hypothetically) colliding MD5 does not make the loader run code."""
    folder = make_cifar(tmp_path)
    marker = tmp_path / "PWNED"
    _dump(folder / "data_batch_2", {b"data": Payload(marker), b"labels": [0]})
    _verified_as_published(monkeypatch, folder)
    with pytest.raises(DataError, match="refusing to load"):
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True)
    assert not marker.exists()


@pytest.mark.parametrize("content, why", [
    (["not", "a", "dict"], "not a CIFAR batch"),
    ({b"data": ["x"] * 3, b"labels": ["a", "b", "c"]}, "not numbers"),
    ({b"data": np.zeros((2, 3072), np.uint8), b"labels": 7}, "labels of shape ()"),
])
def test_odd_but_harmless_pickles_give_one_line(tmp_path, content, why):
    folder = make_cifar(tmp_path)
    _dump(folder / "data_batch_3", content)
    with pytest.raises(DataError) as e:
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=False)
    assert why in str(e.value) and "\n" not in str(e.value)
