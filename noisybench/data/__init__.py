"""Datasets as in-memory tensors.

A dataset config names a `loader` (returns the training pool and the test set) and the generic
split options. `prepare` applies the noise to the whole training pool, then holds out the
validation split (so validation labels are noisy too), then takes the optional training subset.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from noisybench.errors import ConfigError, DataError
from noisybench.fastpath import to_device  # pinned and non-blocking onto a GPU


@dataclass
class Pool:
    """What a loader returns: the labelled training pool and the clean test set (numpy)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    class_names: list[str] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    # indices (into the pool) of a validation split the dataset defines itself (e.g. STORM's
    # valid.tsv); None = hold out `val_fraction` of the pool at random
    val_index: np.ndarray | None = None


@dataclass
class Dataset:
    """Tensors ready for training. `y_*_clean` are for diagnostics only (never for selection)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    y_train_clean: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    y_val_clean: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def to(self, device: torch.device) -> Dataset:
        moved = {k: (to_device(v, device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return type(self)(**moved)  # subclasses (e.g. DST's) keep their extra fields


def _num_val(n: int, val_fraction: float) -> int:
    return int(round(val_fraction * n))


def _workable_val_fraction(n: int) -> float | None:
    """The smallest val_fraction (in steps of 0.01) that leaves both splits non-empty, if any."""
    return next((k / 100 for k in range(1, 100) if 1 <= _num_val(n, k / 100) <= n - 1), None)


def split_pool(n: int, val_fraction: float, split_seed: int, more: str = "provide more training data"
               ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation index split of a pool of n samples: round(val_fraction * n) for
    validation, every other sample for training. A split that would leave training empty, or
    validation empty although val_fraction > 0, is an error (`more` says how to add data)."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction={val_fraction} is outside [0, 1); set e.g. dataset.val_fraction=0.1")
    n_val = _num_val(n, val_fraction)
    if n < 1:
        raise DataError(f"the training pool is empty; {more}")
    if n_val >= n or (val_fraction > 0 and n_val == 0):
        what = "no training samples" if n_val >= n else "no validation samples"
        ok = _workable_val_fraction(n)
        fix = (f"set dataset.val_fraction={ok} or {more}" if ok is not None else
               f"{more} (a pool of {n} cannot be split into training and validation)")
        raise DataError(f"dataset.val_fraction={val_fraction} of a training pool of {n} leaves {what}; {fix}")
    perm = np.random.default_rng(split_seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_indices(pool: Pool, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the pool: the dataset's own validation split when it has one."""
    n = len(pool.y_train)
    source = pool.info.get("source")
    if len(pool.y_test) == 0:
        raise DataError("the dataset's test set is empty; provide test data (e.g. a test.tsv for dataset=tsv)")
    if pool.val_index is not None:
        val = np.sort(np.asarray(pool.val_index, dtype=np.int64))
        train = np.setdiff1d(np.arange(n), val)
        if len(train) == 0 or len(val) == 0:
            raise DataError(f"the dataset's own validation split leaves "
                            f"{'no training' if len(train) == 0 else 'no validation'} samples; provide more data")
        return train, val
    more = ("add rows to train.tsv or add a valid.tsv in dataset.loader.path" if source == "tsv"
            else "provide more training data")
    train, val = split_pool(n, val_fraction, split_seed, more)
    k = int(pool.num_classes)
    if len(train) < k:  # the split leaves fewer training samples than classes
        ok = _val_fractions_keeping(n, k)
        if ok:  # (a pool smaller than that cannot be helped by val_fraction: left as it is)
            suggest = 0.1 if 0.1 in ok else max(ok)
            raise ConfigError(f"dataset.val_fraction={val_fraction} of a training pool of {n} leaves {len(train)} "
                              f"training sample{'s' * (len(train) != 1)} for {k} classes; use "
                              f"dataset.val_fraction={suggest} (at most {max(ok)} keeps {k} or more)")
    return train, val


def _val_fractions_keeping(n: int, k: int) -> list[float]:
    """The val_fractions (in steps of 0.01) that keep at least k training and 1 validation sample."""
    return [f / 100 for f in range(1, 100) if 1 <= _num_val(n, f / 100) <= n - k]


def take_subset(train_idx: np.ndarray, subset, split_seed: int, num_classes: int | None = None,
                unit: str = "samples", at_most=None) -> np.ndarray:
    """The seeded `dataset.subset` of the training indices (independent of the training seed). A
    subset larger than the training split, or (given num_classes) smaller than the class count, is an
    error naming a size that works. `at_most` (`dataset.subset_at_most`, e.g. the smoke preset's 256)
    caps it without an error: min(at_most, subset or all of them)."""
    n = len(train_idx)
    if subset is not None:
        subset = int(subset)
        if subset < 1:
            raise ConfigError(f"dataset.subset={subset} must be a positive number of {unit} (or null for all)")
        if subset > n:
            raise ConfigError(f"dataset.subset={subset} is more than the {n} training {unit} (after the validation "
                              f"split); use dataset.subset={n} or dataset.subset=null (all of them)")
    if at_most is not None:
        subset = min(int(at_most), n if subset is None else subset)
    if subset is None:
        return train_idx
    if num_classes is not None and subset < num_classes <= n:
        raise ConfigError(f"dataset.subset={subset} keeps fewer training {unit} than the {num_classes} classes; "
                          f"use dataset.subset={num_classes} or more (dataset.subset=null: all {n})")
    keep = np.random.default_rng(split_seed + 1).permutation(n)[:subset]
    return np.sort(train_idx[keep])


def prepare(pool: Pool, noisy_pool_labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
            split_seed: int, subset: int | None, featurizer: Any = None,
            subset_at_most: int | None = None) -> Dataset:
    """Index the pool into train/val tensors, take the training subset, and featurise.

    A `featurizer` (e.g. TF-IDF for text) is fitted on the training samples only, then applied to
    the validation and test inputs."""
    train_idx = take_subset(train_idx, subset, split_seed, pool.num_classes, at_most=subset_at_most)

    x_train, x_val, x_test = pool.x_train[train_idx], pool.x_train[val_idx], pool.x_test
    info = dict(pool.info)
    if featurizer is not None:
        featurizer.fit(x_train)
        x_train, x_val, x_test = (featurizer.transform(x) for x in (x_train, x_val, x_test))
        info["features"] = featurizer.describe()

    def t(a, dtype):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    # uint8 images stay uint8 (4x smaller); the dataset's transform normalises them on the fly
    f = torch.uint8 if pool.x_train.dtype == np.uint8 else torch.float32
    i = torch.int64
    return Dataset(
        x_train=t(x_train, f), y_train=t(noisy_pool_labels[train_idx], i),
        y_train_clean=t(pool.y_train[train_idx], i),
        x_val=t(x_val, f), y_val=t(noisy_pool_labels[val_idx], i),
        y_val_clean=t(pool.y_train[val_idx], i),
        x_test=t(x_test, f), y_test=t(pool.y_test, i),
        num_classes=pool.num_classes, info=info,
    )


LoaderFn = Callable[..., Pool]
