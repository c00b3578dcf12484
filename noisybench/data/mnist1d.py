"""MNIST-1D (Greydanus, 2020): 1-D digit templates, procedurally generated offline.

We generate it with the `mnist1d` package's own generator and default transform arguments
(seed 42, sequence length 40) at `num_samples` (default 10,000: 8,000 training pool / 2,000 test;
the package's download is the 5,000-sample variant, whose signal is noisier). Nothing is
downloaded. The result is cached as an .npz under `data_dir/mnist1d/`.
"""
from __future__ import annotations

import random
import zipfile

import numpy as np

from noisybench.data import Pool
from noisybench.errors import ConfigError
from noisybench.utils import atomic_output, resolve_data_dir


def _generate(num_samples: int, seed: int) -> dict[str, np.ndarray]:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # make_dataset reseeds the global numpy/python RNGs; restore them so we leave no trace.
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        d = make_dataset(args)
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)
    return {"x": d["x"].astype(np.float32), "y": d["y"].astype(np.int64),
            "x_test": d["x_test"].astype(np.float32), "y_test": d["y_test"].astype(np.int64)}


def load_mnist1d(data_dir: str | None = None, num_samples: int = 10000, seed: int = 42) -> Pool:
    if num_samples < 100:
        raise ConfigError(f"dataset.loader.num_samples={num_samples} is too small; use at least 100")
    path = resolve_data_dir(data_dir) / "mnist1d" / f"mnist1d_n{num_samples}_seed{seed}.npz"
    arrays = None
    if path.exists():
        try:
            with np.load(path) as z:
                arrays = {k: z[k] for k in ("x", "y", "x_test", "y_test")}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            arrays = None  # corrupt cache: regenerate below (the data is procedural)
    if arrays is None:
        arrays = _generate(num_samples, seed)
        with atomic_output(path) as f:  # readers never see a partial cache file
            np.savez(f, **arrays)
    return Pool(arrays["x"], arrays["y"], arrays["x_test"], arrays["y_test"], num_classes=10,
                info={"source": "mnist1d (generated)", "num_samples": num_samples, "generator_seed": seed})
