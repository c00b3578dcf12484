"""Noisy labels cached on disk under a hash of everything that defines them.

The key covers the dataset (name and its loader settings, minus where the files are found), the
split the noise is applied to, the noise type and every field of `injector.spec()` (including the
noise seed), the class count, and a hash of the clean labels themselves, so no two noise
definitions can share an entry, and a changed pool (another subset or generator setting) misses.

An entry is `<key>.npy` (the labels, int64) and `<key>.json` (the payload the key was made from,
the key, and a sha256 of the labels). It is used only if it verifies: the sidecar exists and is
for this key and payload, the labels' checksum matches, and the labels have shape (n,), dtype int64
and values in [0, K). Anything else (a damaged or hand-edited file, an entry from an older version
without a checksum) is recomputed and rewritten, with one warning.

A checksum in the cache proves nothing against someone who can write the cache (a shared data
directory): they rewrite the labels and their checksum together. So an entry that verifies is also
compared with the labels the noise definition generates (every injector is deterministic given its
seed): a mismatch (a forged entry, or one made by another version of the generator) is one warning,
and the generated labels are used and written. A hit thus costs one generation; what the cache adds is
that a change in the labels a definition gives is noticed instead of silently used.
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from noisybench.errors import one_line
from noisybench.utils import atomic_output, atomic_write_json

log = logging.getLogger("noisybench")

# loader fields that say where data lives or how it is fetched, not what it is
LOCATION_FIELDS = ("data_dir", "search_dirs", "download", "verify", "folder", "_partial_")
SPLIT = "train+val pool"
# sidecar fields besides the payload
_SIDECAR_FIELDS = ("cache_key", "labels_sha256", "num_samples")


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


def labels_sha256(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype=np.int64).tobytes()).hexdigest()


def _canonical(obj: Any) -> str:
    """`obj` as JSON text, as the sidecar stores it (tuples become lists, other objects strings)."""
    return json.dumps(obj, sort_keys=True, default=str)


def _verify(path: Path, key: str, payload: dict, n: int, num_classes: int) -> tuple[np.ndarray | None, str]:
    """(labels, "") for an entry that verifies, else (None, why not)."""
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        return None, "no sidecar .json"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable sidecar: {one_line(e)[:160]}"
    if not isinstance(meta, dict):
        return None, "unreadable sidecar: not a JSON object"
    if "labels_sha256" not in meta:
        return None, "sidecar has no checksum (written by an older version)"
    if meta.get("cache_key") != key:
        return None, f"sidecar is for key {meta.get('cache_key')!r}, not {key!r}"
    if _canonical({k: v for k, v in meta.items() if k not in _SIDECAR_FIELDS}) != _canonical(payload):
        return None, "sidecar payload differs from this noise definition"
    try:
        with open(path, "rb") as f:
            if f.read(6) != b"\x93NUMPY":
                return None, "not a .npy file"
            f.seek(0)
            labels = np.load(f, allow_pickle=False)
    except Exception as e:  # broad on purpose (truncated, a bad header: all unreadable)
        return None, f"unreadable labels file: {one_line(e)[:160]}"
    if labels.shape != (n,):
        return None, f"shape {labels.shape}, expected ({n},)"
    if labels.dtype != np.int64:
        return None, f"dtype {labels.dtype}, expected int64"
    if labels_sha256(labels) != meta["labels_sha256"]:
        return None, "labels checksum mismatch"
    if n and (labels.min() < 0 or labels.max() >= num_classes):
        return None, f"labels outside [0, {num_classes}) (min {labels.min()}, max {labels.max()})"
    return labels, ""


def cached(cache_dir: Path | None, key: str, payload: dict, n: int,
           compute: Callable[[], np.ndarray], num_classes: int | None = None) -> tuple[np.ndarray, bool]:
    """(labels, hit). `num_classes` (K; default: the payload's) bounds the labels. A missing entry
    is computed and written; an entry that fails verification (see the module doc) is recomputed
    and rewritten with one warning on the "noisybench" logger."""
    if cache_dir is None:
        return compute(), False
    k = int(num_classes if num_classes is not None else payload["num_classes"])
    path = Path(cache_dir) / f"{key}.npy"
    fresh = None
    if path.is_file():
        labels, reason = _verify(path, key, payload, n, k)
        if labels is not None:  # the generator is deterministic: the entry must be what it generates
            fresh = np.ascontiguousarray(compute(), dtype=np.int64)
            if np.array_equal(fresh, labels):
                return labels, True
            rate = f"; {np.mean(labels != fresh):.1%} of them differ" if len(fresh) else ""
            reason = ("its labels differ from the ones this noise definition generates (forged together with its "
                      f"checksum, or made by another version of the generator{rate})")
        log.warning("noisybench: warning: noise cache entry %s failed verification (%s); recomputed", path, reason)
    labels = fresh if fresh is not None else np.ascontiguousarray(compute(), dtype=np.int64)
    # sidecar first: a reader between the two writes finds no .npy (a plain miss) or, when an entry
    # is being replaced, a checksum that does not match the old .npy (recomputed), never a false hit
    atomic_write_json(path.with_suffix(".json"), {**payload, "cache_key": key, "num_samples": int(n),
                                                  "labels_sha256": labels_sha256(labels)})
    with atomic_output(path) as f:
        np.save(f, labels, allow_pickle=False)
    return labels, False
