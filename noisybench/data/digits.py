"""scikit-learn's handwritten digits (8x8, 1,797 images, shipped inside scikit-learn).

The train/test split is fixed: stratified, 20 % test, random_state 0. Pixels are scaled to [0, 1].
"""
from __future__ import annotations

import numpy as np

from noisybench.data import Pool


def load_digits(data_dir: str | None = None, test_fraction: float = 0.2, split_seed: int = 0) -> Pool:
    from sklearn.datasets import load_digits as sk_load
    from sklearn.model_selection import train_test_split

    d = sk_load()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, stratify=y,
                                              random_state=split_seed)
    return Pool(x_tr, y_tr, x_te, y_te, num_classes=10, info={"source": "sklearn.datasets.load_digits"})
