"""CIFAR-N human labels (Wei et al., "Learning with Noisy Labels Revisited: A Study Using Real-World
Human Annotations", ICLR 2022; files from UCSC-REAL/cifar-10-100n `data/`).

`CIFAR-10_human.pt` holds `clean_label`, `aggre_label`, `worse_label`, `random_label1..3`;
`CIFAR-100_human.pt` holds `clean_label`, `noisy_label`, `clean_coarse_label`, `noisy_coarse_label`;
each a length-50,000 integer array in torchvision's training order. The authors publish no
checksum, so a file is checked by content instead: its `clean_label` must equal the dataset's
training labels (which also proves the sample order matches).
"""
from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from noisybench.data.safe_pickle import ArrayUnpickler as _ArrayUnpickler
from noisybench.data.safe_pickle import HasTensors as _HasTensors
from noisybench.data.safe_pickle import Refused as _Refused
from noisybench.errors import DataError, one_line

_MAGIC = 0x1950A86A20F9469CFC6C  # torch's legacy (pre-1.6) serialization magic number
_LEGACY_PROTOCOL = 1001
_SOURCE = "the UCSC-REAL/cifar-10-100n release (data/)"


def _short(text: str) -> str:
    """Text fit for a one-line message (a crafted file may put anything in a name)."""
    text = one_line(text)
    return text if len(text) <= 160 else text[:157] + "..."


def _one_line_error(e: BaseException) -> str:
    return _short(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__)


def _unpickle(path: Path, head: bytes) -> object:
    """The object a torch.save file holds (zip format, or legacy format), read with
    `_ArrayUnpickler`. Exceptions other than _Refused/_HasTensors mean the file is damaged."""
    if head == b"PK\x03\x04":  # torch >= 1.6: a zip with <folder>/data.pkl
        with zipfile.ZipFile(path) as z:
            pkls = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
            if len(pkls) != 1:
                raise ValueError(f"expected one <folder>/data.pkl in the archive, found {len(pkls)}")
            with z.open(pkls[0]) as f:  # zipfile checks the CRC: a damaged record raises
                return _ArrayUnpickler(f).load()
    with open(path, "rb") as f:  # legacy: magic, protocol, sys_info, then the object
        up = _ArrayUnpickler(f)
        magic = up.load()
        if type(magic) is not int or magic != _MAGIC:
            raise ValueError("not a torch.save file (no zip archive, no legacy magic number)")
        version = up.load()
        if type(version) is not int or version != _LEGACY_PROTOCOL:
            raise ValueError(f"unknown legacy torch.save protocol version {version!r}")
        up.load()  # sys_info: a dict of plain values
        return up.load()


def _refusal(path: Path, name: str, again: str) -> str:
    return (f"refusing to load {path}: it references {_short(name)}, which a CIFAR-N label file never holds "
            f"(only numpy arrays); replace it with the published file: {again}")


def _load_pt(path: Path, url: str | None = None) -> dict:
    """A CIFAR-N `.pt` file without arbitrary code: the published files are `torch.save`d dicts
    of numpy arrays, read here by an unpickler that can build nothing but numpy arrays and plain
    containers (numpy 1 and 2 pickles alike, on any torch). A file holding torch tensors goes to
    `torch.load(weights_only=True)` instead. Anything else is refused with a one-line DataError."""
    again = f"download it again from {url or _SOURCE} into {path.parent}"
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:  # nothing known about the file's content: permissions, disk
        raise DataError(f"cannot read {path} ({_one_line_error(e)}); check its permissions and the disk") from None
    try:
        d = _unpickle(path, head)
    except _Refused as e:
        raise DataError(_refusal(path, str(e), again)) from None
    except _HasTensors:
        import torch

        try:
            d = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            found = re.search(r"(?:GLOBAL|class)\s+([\w.]+)", str(e))
            if found:  # torch's allow-list refused a global
                raise DataError(_refusal(path, found.group(1), again)) from None
            raise DataError(f"cannot read {path} ({_one_line_error(e)}); it is corrupt or not the published "
                            f"CIFAR-N file (numpy arrays); {again}") from None
    except Exception as e:  # truncated, damaged, or not a torch.save file at all
        raise DataError(f"{path} is corrupt or not a CIFAR-N label file ({_one_line_error(e)}); {again}") from None
    if not isinstance(d, dict):
        raise DataError(f"{path} is not a CIFAR-N label file (it holds a {type(d).__name__}, expected a dict of "
                        f"label arrays); {again}")
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
    d = _load_pt(path, url)
    for k in (key, clean_key):
        if k not in d:
            raise DataError(f"{path} has no key {k!r} (keys: {_short(', '.join(map(str, d)))}); "
                            "is it the right CIFAR-N file?")
    labels = np.asarray(d[key]).astype(np.int64).reshape(-1)
    clean = np.asarray(d[clean_key]).astype(np.int64).reshape(-1)
    if len(clean) != len(clean_labels) or not np.array_equal(clean, clean_labels):
        raise DataError(f"{path}: its {clean_key} does not match the dataset's training labels "
                        f"({len(clean)} vs {len(clean_labels)} samples); the file belongs to another dataset or order")
    if len(labels) != len(clean):
        raise DataError(f"{path}: {key} has {len(labels)} labels but {clean_key} has {len(clean)}")
    return labels
