"""A restricted unpickler for data files: it can build numpy arrays and plain Python values (lists,
dicts, tuples, str, bytes, numbers) and nothing else, so a crafted file cannot run code.

Used for every pickle noisybench reads from a data directory: CIFAR-10/100's python batches
(noisybench.data.cifar) and CIFAR-N's label files (noisybench.data.cifarn). A global outside the
allow-list raises `Refused` before anything is called; torch tensors (torch globals, persistent
ids) raise `HasTensors`, for a caller that hands such files to torch's own weights-only loader.
"""
from __future__ import annotations

import codecs
import collections
import pickle

import numpy as np


def _numpy_allowed() -> dict[tuple[str, str], object]:
    """The globals a pickled numpy array may name, by (module, name) with `numpy.core` spelled
    `numpy._core`: reconstruction helpers, ndarray, dtype and its classes, `_codecs.encode` (how
    protocol 2 stores bytes) and OrderedDict. Each builds plain data; none runs other code."""
    if int(np.__version__.split(".")[0]) >= 2:
        from numpy._core import multiarray, numeric
    else:
        from numpy.core import multiarray, numeric
    allowed: dict[tuple[str, str], object] = {
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "scalar"): multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }
    if hasattr(numeric, "_frombuffer"):  # protocol-5 pickles of arrays
        allowed[("numpy._core.numeric", "_frombuffer")] = numeric._frombuffer
    try:  # numpy >= 1.25: the dtype classes have public names
        import numpy.dtypes as dtypes
    except ImportError:
        dtypes = None
    for name in dir(dtypes) if dtypes else ():
        cls = getattr(dtypes, name)
        if isinstance(cls, type) and issubclass(cls, np.dtype):
            allowed[("numpy.dtypes", name)] = cls
    return allowed


class Refused(Exception):
    """The pickle names a global outside the allow-list (raised before anything is called)."""


class HasTensors(Exception):
    """The pickle holds torch tensors (torch globals, persistent ids): hand it to torch's
    weights-only loader, itself an unpickler with an allow-list (torch >= 1.13)."""


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can only build numpy arrays and plain Python containers."""

    _allowed: dict[tuple[str, str], object] | None = None

    def find_class(self, module: str, name: str):
        if ArrayUnpickler._allowed is None:
            ArrayUnpickler._allowed = _numpy_allowed()
        canon = "numpy._core" + module[len("numpy.core"):] if (module + ".").startswith("numpy.core.") else module
        obj = ArrayUnpickler._allowed.get((canon, name))
        if obj is None and module.split(".")[0] == "torch":  # tensors: torch's own restricted loader
            raise HasTensors
        if obj is None:
            raise Refused(f"{module}.{name}")
        return obj

    def persistent_load(self, pid):
        raise HasTensors
