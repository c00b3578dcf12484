"""The files of a run that the figures read beside its result.json: metrics.csv (learning curves and
diagnostics) and noise.json (the transition matrix). Each is read as written by someone we do not trust:
a file that cannot be read or has another shape is None (that figure goes without the run), never a
traceback. sample_weights.npz: `noisybench.report.weights`."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from noisybench.rundir import read_json_object

MAX_CLASSES = 1000  # a transition matrix larger than this is not drawn (nor is it any dataset's)


def read_metrics(run_dir: str, cache: dict) -> pd.DataFrame | None:
    """The run's metrics.csv with a numeric `epoch` column (rows without one dropped), or None."""
    if run_dir not in cache:
        try:
            path = Path(run_dir) / "metrics.csv"
            frame = pd.read_csv(path) if path.is_file() and not path.is_symlink() else None
            if frame is not None and "epoch" in frame:
                frame["epoch"] = pd.to_numeric(frame["epoch"], errors="coerce")
                frame = frame[frame["epoch"].notna()]
            cache[run_dir] = frame if frame is not None and "epoch" in frame and not frame.empty else None
        except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError):
            cache[run_dir] = None
    return cache[run_dir]


def read_noise(run_dir: str) -> tuple[np.ndarray, list[str] | None, float | None] | None:
    """(T, class names or None, realised rate or None) from the run's noise.json, or None: T must be a
    square matrix of finite numbers, the names one string per class."""
    noise, _ = read_json_object(Path(run_dir) / "noise.json", ("transition_matrix",))
    if noise is None:
        return None
    try:
        T = np.array(noise["transition_matrix"], dtype=float)
    except (TypeError, ValueError):
        return None
    if T.ndim != 2 or T.shape[0] != T.shape[1] or not 0 < len(T) <= MAX_CLASSES or not np.isfinite(T).all():
        return None
    names = noise.get("class_names")
    if not (isinstance(names, list) and len(names) == len(T) and all(isinstance(n, str) for n in names)):
        names = None
    realised = noise.get("realized_noise_rate")
    if isinstance(realised, bool) or not isinstance(realised, (int, float)) or not math.isfinite(realised):
        realised = None
    return T, names, realised
