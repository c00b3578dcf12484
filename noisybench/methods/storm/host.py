"""The host side of STORM's compiled loops (numba): tensors as numpy arrays, and when numpy cannot
read them. See docs/methods/storm.md."""
from __future__ import annotations

import numpy as np
import torch


def host(t, dtype=np.float64) -> np.ndarray:
    """A tensor (any device) or array as a numpy array of `dtype` on the host."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.device.type != "cpu" or t.dtype in (torch.bfloat16, torch.float16):
            t = t.to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
        t = t.numpy()
    return np.asarray(t, dtype=dtype)


def in_transform() -> bool:
    """Inside a torch.func transform (jvp, vmap, grad), whose tensors have no storage numpy can read."""
    peek = getattr(torch._C._functorch, "peek_interpreter_stack", None)
    return peek is None or peek() is not None
