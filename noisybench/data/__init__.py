"""Datasets as in-memory tensors.

A dataset config names a `loader` (returns the training pool and the test set) and the generic
split options. `prepare` applies the noise to the whole training pool, then holds out the
validation split (so validation labels are noisy too), then takes the optional training subset.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from noisybench.errors import ConfigError


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

    def to(self, device: torch.device) -> "Dataset":
        moved = {k: (v.to(device) if isinstance(v, torch.Tensor) else v) for k, v in vars(self).items()}
        return type(self)(**moved)  # subclasses (e.g. DST's) keep their extra fields


def split_pool(n: int, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/validation index split of a pool of n samples."""
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"dataset.val_fraction={val_fraction} is outside [0, 1); set e.g. dataset.val_fraction=0.1")
    perm = np.random.default_rng(split_seed).permutation(n)
    n_val = int(round(val_fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def split_indices(pool: Pool, val_fraction: float, split_seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices into the pool: the dataset's own validation split when it has one."""
    if pool.val_index is not None:
        val = np.sort(np.asarray(pool.val_index, dtype=np.int64))
        return np.setdiff1d(np.arange(len(pool.y_train)), val), val
    return split_pool(len(pool.y_train), val_fraction, split_seed)


def prepare(pool: Pool, noisy_pool_labels: np.ndarray, train_idx: np.ndarray, val_idx: np.ndarray,
            split_seed: int, subset: int | None, featurizer: Any = None) -> Dataset:
    """Index the pool into train/val tensors, take the training subset, and featurise.

    A `featurizer` (e.g. TF-IDF for text) is fitted on the training samples only, then applied to
    the validation and test inputs."""
    if subset is not None:
        if int(subset) < 1:
            raise ConfigError(f"dataset.subset={subset} must be a positive number of samples (or null for all)")
        # a seeded subset that does not depend on the training seed
        keep = np.random.default_rng(split_seed + 1).permutation(len(train_idx))[: int(subset)]
        train_idx = np.sort(train_idx[keep])

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
