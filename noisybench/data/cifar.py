"""CIFAR-10 and CIFAR-100 (Krizhevsky, 2009) from the standard python-pickle batches.

Layout and checksums are torchvision's (`cifar-10-batches-py/data_batch_1..5, test_batch,
batches.meta`; `cifar-100-python/train, test, meta`), so a torchvision download directory works
as `data_dir`. Missing files are downloaded with torchvision's downloader (archive MD5 checked)
when `download: true`; with `verify: true` every batch file and the meta file (`batches.meta` /
`meta`) is checked against torchvision's MD5 list before use (set false only for a deliberately
modified copy). Whatever `verify` says, the pickles are read by a restricted unpickler
(noisybench.data.safe_pickle: numpy arrays and plain values only), so a crafted file is refused
with one line and runs no code. Images are kept as uint8 (N, 3, 32, 32); training order is the
batch order, the order CIFAR-N's label files use.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from noisybench.data import Pool
from noisybench.data.safe_pickle import ArrayUnpickler, HasTensors, Refused
from noisybench.errors import DataError, one_line
from noisybench.utils import resolve_data_dir

_LABEL_KEYS = {"cifar10": ("labels", "label_names"), "cifar100": ("fine_labels", "fine_label_names")}


def _torchvision_class(name: str):
    import torchvision.datasets as tvd

    return {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[name]


def _unpickle(path: Path) -> dict:
    """A CIFAR python batch (a pickled dict of arrays, lists and strings), read without running code."""
    again = "delete it so it is downloaded again (or put torchvision's extracted files there)"
    try:
        with open(path, "rb") as f:
            d = ArrayUnpickler(f, encoding="latin1").load()
    except (Refused, HasTensors) as e:
        what = str(e) if isinstance(e, Refused) else "torch objects"
        raise DataError(f"refusing to load {path}: it references {one_line(what)[:120]}, which a CIFAR batch never "
                        f"holds (only arrays, lists and strings); {again}") from None
    except Exception as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}); {again}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR batch (it holds a {type(d).__name__}, not a dict); {again}")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}


def _read(files: list[Path], label_key: str) -> tuple[np.ndarray, np.ndarray]:
    xs, ys = [], []
    for p in files:
        d = _unpickle(p)
        if "data" not in d or label_key not in d:
            raise DataError(f"{p} has no 'data'/'{label_key}' entries; it is not a CIFAR batch of this dataset")
        try:  # a modified copy (verify=false) may hold anything: one line, not a numpy traceback
            x, y = np.asarray(d["data"], dtype=np.uint8), np.asarray(d[label_key], dtype=np.int64)
        except (TypeError, ValueError, OverflowError) as e:
            raise DataError(f"{p}: its data or labels are not numbers ({type(e).__name__}); it is not a CIFAR "
                            "batch") from None
        if x.ndim != 2 or x.shape[1] != 3 * 32 * 32 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{p}: data of shape {x.shape} with labels of shape {y.shape}; expected (N, 3072) and (N,)")
        xs.append(x.reshape(-1, 3, 32, 32))
        ys.append(y)
    return np.concatenate(xs), np.concatenate(ys)


def load_cifar(dataset: str, data_dir: str | None = None, download: bool = True, verify: bool = True) -> Pool:
    name = dataset
    if name not in _LABEL_KEYS:
        raise DataError(f"dataset.loader.dataset={dataset!r} is not a CIFAR dataset; use cifar10 or cifar100")
    from torchvision.datasets.utils import check_integrity

    tv = _torchvision_class(name)
    root = resolve_data_dir(data_dir)
    folder = root / tv.base_folder
    wanted = [(folder / f, md5) for f, md5 in (*tv.train_list, *tv.test_list)]
    missing = [p for p, _ in wanted if not p.is_file()]
    if missing and download:
        try:
            tv(str(root), train=True, download=True)  # torchvision checks the archive's MD5
        except Exception:  # no network or a failed checksum: reported below
            pass
        missing = [p for p, _ in wanted if not p.is_file()]
    if missing:
        raise DataError(f"{name}: {len(missing)} batch file(s) missing in {folder} (e.g. {missing[0].name}); "
                        f"put the extracted {tv.filename} there (or set data_dir=...), or "
                        + ("retry when the network is up (the download failed)" if download else
                           "allow the download (dataset.loader.download=true, needs network)"))
    meta = folder / tv.meta["filename"]
    if verify:
        checked = [*wanted, *([(meta, tv.meta["md5"])] if os.path.lexists(meta) else [])]
        bad = [p.name for p, md5 in checked if not check_integrity(str(p), md5)]
        if bad:
            raise DataError(f"{name}: {', '.join(bad)} in {folder} fail(s) torchvision's MD5 check; delete the folder "
                            "to download again (or set dataset.loader.verify=false for a deliberately modified copy)")
    label_key, names_key = _LABEL_KEYS[name]
    n_train = len(tv.train_list)
    x_train, y_train = _read([p for p, _ in wanted[:n_train]], label_key)
    x_test, y_test = _read([p for p, _ in wanted[n_train:]], label_key)
    num_classes = 10 if name == "cifar10" else 100
    for y, split in ((y_train, "train"), (y_test, "test")):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DataError(f"{name}: {split} labels outside 0..{num_classes - 1} in {folder}")
    names = _unpickle(meta).get(names_key, []) if meta.is_file() else []
    names = names if isinstance(names, list) else []
    class_names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names] or None
    return Pool(x_train, y_train, x_test, y_test, num_classes=num_classes, class_names=class_names,
                info={"source": str(folder), "format": "CIFAR python batches", "md5_verified": bool(verify)})
