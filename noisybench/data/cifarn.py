"""CIFAR-N human labels (Wei et al., "Learning with Noisy Labels Revisited: A Study Using Real-World
Human Annotations", ICLR 2022; files from UCSC-REAL/cifar-10-100n `data/`).

`CIFAR-10_human.pt` holds `clean_label`, `aggre_label`, `worse_label`, `random_label1..3`;
`CIFAR-100_human.pt` holds `clean_label`, `noisy_label`, `clean_coarse_label`, `noisy_coarse_label`;
each a length-50,000 integer array in torchvision's training order. The authors publish no
checksum, so a file is checked by content instead: its `clean_label` must equal the dataset's
training labels (which also proves the sample order matches).
"""
from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import torch

from noisybench.errors import DataError


def _load_pt(path: Path) -> dict:
    """torch.load without arbitrary code: the files pickle numpy arrays, so numpy's own
    reconstruction helpers are the only globals allowed."""
    try:
        unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception as e:
        raise DataError(f"cannot read {path} ({e}); delete it and provide the CIFAR-N file again") from None
    # numpy's dtype classes are reached through other globals and not always listed up front
    allowed = [np.ndarray, np.dtype, *{type(np.dtype(c)) for c in "?bBhHiIlLqQefdg"}]
    for name in unsafe:
        module, _, attr = name.rpartition(".")
        if not module.split(".")[0] == "numpy":
            raise DataError(f"{path} contains a non-numpy object ({name}); refusing to load it, "
                            "delete it and provide the CIFAR-N file again")
        obj = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
        allowed.append(obj)
    try:
        with torch.serialization.safe_globals(allowed):
            d = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise DataError(f"cannot read {path} ({e}); delete it and provide the CIFAR-N file again") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-N label file (expected a dict of label arrays)")
    return d


def _download(url: str, folder: Path, filename: str) -> bool:
    from torchvision.datasets.utils import download_url

    try:
        download_url(url, str(folder), filename)
    except Exception:  # no network: fall through to the error
        return False
    return (folder / filename).is_file()


def load_human_labels(path: Path, key: str, clean_key: str, clean_labels: np.ndarray,
                      url: str | None = None, download: bool = True) -> np.ndarray:
    """The label set `key` of a CIFAR-N file, checked against the dataset's clean labels."""
    path = Path(path)
    if not path.is_file() and not (download and url and _download(url, path.parent, path.name)):
        raise DataError(f"CIFAR-N file {path.name} not found in {path.parent}; put it there (from "
                        f"{url or 'the CIFAR-N release'}), or set data_dir=..., or allow the download "
                        "(noise.download=true, needs network)")
    d = _load_pt(path)
    for k in (key, clean_key):
        if k not in d:
            raise DataError(f"{path} has no key {k!r} (keys: {', '.join(map(str, d))}); is it the right CIFAR-N file?")
    labels = np.asarray(d[key]).astype(np.int64).reshape(-1)
    clean = np.asarray(d[clean_key]).astype(np.int64).reshape(-1)
    if len(clean) != len(clean_labels) or not np.array_equal(clean, clean_labels):
        raise DataError(f"{path}: its {clean_key} does not match the dataset's training labels "
                        f"({len(clean)} vs {len(clean_labels)} samples); the file belongs to another dataset or order")
    if len(labels) != len(clean):
        raise DataError(f"{path}: {key} has {len(labels)} labels but {clean_key} has {len(clean)}")
    return labels
