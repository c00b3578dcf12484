"""MNIST and Fashion-MNIST from the four IDX files (LeCun's format, gzipped or raw).

Where the files are looked for, in order:
1. `data_dir/<folder>/` and torchvision's layout `data_dir/<TorchvisionName>/raw/`;
2. each of `search_dirs` (e.g. Debian's `dataset-fashion-mnist` package installs the four .gz files
   in /usr/share/datasets/fashion-mnist/);
3. a download with torchvision's own downloader (its mirrors and MD5 checksums) into
   `data_dir/<TorchvisionName>/raw/`, when `download: true` and the network allows.
Images are kept as uint8 (N, 1, 28, 28); the dataset's `transform` normalises them on the fly.
"""
from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisybench.data import Pool
from noisybench.errors import DataError
from noisybench.utils import resolve_data_dir

FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
# IDX type codes (the third byte of the magic number) -> numpy dtype; the data is big-endian.
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

_DATASETS = {
    # name: (torchvision class, class names)
    "mnist": ("MNIST", [str(i) for i in range(10)]),
    "fashion_mnist": ("FashionMNIST", ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                                       "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]),
}


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (.gz or raw) into an array of its declared shape and type."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read {path} ({e}); delete it so it can be found elsewhere or re-downloaded") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); delete it, or set data_dir=DIR to a "
                        "directory with good copies")
    ndim = raw[3]
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    body = raw[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)) * dtype.itemsize:
        raise DataError(f"{path} is truncated: header says {dims}, file has {len(body)} bytes of data; "
                        "delete it and provide a complete copy")
    return np.frombuffer(body, dtype=dtype).reshape(dims)


def _find(folder: Path) -> dict[str, Path] | None:
    """The four files in `folder` (each as .gz or raw), or None if any is missing."""
    found = {}
    for key, stem in FILES.items():
        for cand in (folder / f"{stem}.gz", folder / stem):
            if cand.is_file():
                found[key] = cand
                break
        else:
            return None
    return found


def _download(tv_name: str, root: Path) -> dict[str, Path] | None:
    """torchvision's downloader (mirrors + MD5 checks). None when the network is unavailable."""
    import torchvision.datasets as tvd

    try:
        getattr(tvd, tv_name)(str(root), train=True, download=True)
    except Exception:  # no network, mirror down, checksum failure: fall through to the error
        return None
    return _find(root / tv_name / "raw")


def load_idx_dataset(dataset: str, data_dir: str | None = None, folder: str | None = None,
                     search_dirs: Sequence[str] = (), download: bool = True) -> Pool:
    name = dataset
    if name not in _DATASETS:
        raise DataError(f"dataset.loader.dataset={dataset!r} is not an IDX dataset; use one of {', '.join(_DATASETS)}")
    tv_name, class_names = _DATASETS[name]
    root = resolve_data_dir(data_dir)
    candidates = [root / (folder or name), root / tv_name / "raw", *(Path(d).expanduser() for d in search_dirs)]
    files = next((f for f in map(_find, candidates) if f is not None), None)
    source = "local"
    if files is None and download:
        files, source = _download(tv_name, root), "torchvision download"
    if files is None:
        fetch = ("the download from torchvision's mirrors failed (no network?)" if download else
                 "or allow the download (dataset.loader.download=true, needs network)")
        raise DataError(
            f"{name}: the four IDX files ({', '.join(FILES.values())}, .gz or raw) were not found; "
            f"put them in {candidates[0]} (or set data_dir=...), or in a system directory listed in "
            f"dataset.loader.search_dirs (searched: {', '.join(map(str, search_dirs)) or 'none'}), {fetch}")
    arrays = {k: read_idx(p) for k, p in files.items()}
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.ndim != 3 or len(x) != len(y):
            raise DataError(f"{files['x_' + split]}: {len(x)} images of shape {x.shape[1:]} but {len(y)} labels; "
                            "the files do not belong together")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise DataError(f"{files['y_' + split]}: labels outside 0..9; this is not {name}")
    return Pool(
        x_train=arrays["x_train"].astype(np.uint8)[:, None], y_train=arrays["y_train"].astype(np.int64),
        x_test=arrays["x_test"].astype(np.uint8)[:, None], y_test=arrays["y_test"].astype(np.int64),
        num_classes=10, class_names=class_names,
        info={"source": f"{source}: {files['x_train'].parent}", "format": "IDX"},
    )
