"""Noisy labels cached on disk under a hash of everything that defines them.

The key covers the dataset (name and its loader settings, minus where the files are found), the
split the noise is applied to, the noise type and every field of `injector.spec()` (including the
noise seed), the class count, and a hash of the clean labels themselves, so no two noise
definitions can share an entry, and a changed pool (another subset or generator setting) misses.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

# loader fields that say where data lives or how it is fetched, not what it is
LOCATION_FIELDS = ("data_dir", "search_dirs", "download", "verify", "folder", "_partial_")
SPLIT = "train+val pool"


def noise_key(dataset: str, loader: dict[str, Any], noise_type: str, spec: dict[str, Any],
              clean_labels: np.ndarray, num_classes: int, split: str = SPLIT) -> tuple[str, dict]:
    payload = {
        "dataset": dataset,
        "loader": {k: v for k, v in sorted(loader.items()) if k not in LOCATION_FIELDS},
        "split": split,
        "noise": {"type": noise_type, **spec},
        "num_classes": int(num_classes),
        "clean_labels_sha256": hashlib.sha256(np.ascontiguousarray(clean_labels, dtype=np.int64)).hexdigest(),
    }
    text = json.dumps(payload, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24], payload


def cached(cache_dir: Path | None, key: str, payload: dict, n: int,
           compute: Callable[[], np.ndarray]) -> tuple[np.ndarray, bool]:
    """(labels, hit). A missing, unreadable or wrong-length entry is recomputed and rewritten."""
    if cache_dir is None:
        return compute(), False
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        try:
            labels = np.load(path, allow_pickle=False)
            if labels.shape == (n,) and labels.dtype == np.int64:
                return labels, True
        except (OSError, ValueError):
            pass
    labels = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    for target, write in ((path.with_suffix(".json"), lambda f: f.write(json.dumps(payload, indent=2, default=str).encode())),
                          (path, lambda f: np.save(f, labels, allow_pickle=False))):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{target.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return labels, False
