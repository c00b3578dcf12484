"""scikit-learn's handwritten digits (8x8, 1,797 images, shipped inside scikit-learn).

The train/test split is fixed: stratified, 20 % test, random_state 0. Pixels are scaled to [0, 1].
"""
from __future__ import annotations

import numpy as np

from noisybench.data import Pool
from noisybench.errors import ConfigError


def load_digits(data_dir: str | None = None, test_fraction: float = 0.2, split_seed: int = 0) -> Pool:
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    if not 0 < float(test_fraction) < 1:
        raise ConfigError(f"dataset.loader.test_fraction={test_fraction} must be in (0, 1); e.g. "
                          "dataset.loader.test_fraction=0.2")
    d = sk_load()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    try:  # sklearn: test ceil(f * n), train the rest, so the sizes add up to n
        x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=float(test_fraction), stratify=y,
                                                  random_state=split_seed)
    except ValueError as e:  # e.g. fewer test (or training) samples than classes
        raise ConfigError(f"dataset.loader.test_fraction={test_fraction} cannot be split stratified "
                          f"({e}); use e.g. dataset.loader.test_fraction=0.2") from None
    return Pool(x_tr, y_tr, x_te, y_te, num_classes=10, info={"source": "sklearn.datasets.load_digits"})
