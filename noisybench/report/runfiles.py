"""The files of a run that the figures read beside its result.json: metrics.csv (learning curves and
diagnostics) and noise.json (the transition matrix). Each is read as written by someone we do not trust:
a file that cannot be read or has another shape is None (that figure goes without the run), never a
traceback. sample_weights.npz: `noisybench.report.weights`."""
from __future__ import annotations

import math
import os
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd

from noisybench.report.records import left_out_note
from noisybench.report.weights import WEIGHTS
from noisybench.report.weights import load as read_weights
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


def _noise_or_none_needed(run_dir: str):
    """`read_noise`, except that a readable noise.json without a transition matrix (a noise that has none:
    dialogue-state noise, real noise) is fine: no figure needs one from it."""
    noise, _ = read_json_object(Path(run_dir) / "noise.json", ())
    if noise is not None and "transition_matrix" not in noise:
        return True
    return read_noise(run_dir)


def unreadable_files(run_dirs: Iterable[str]) -> list[str]:
    """`DIR (metrics.csv, noise.json)` for each run with a file the figures read that is there but
    cannot be read or has another shape (so the run is missing from the figures that need it)."""
    readers = (("metrics.csv", lambda d: read_metrics(d, {})), ("noise.json", _noise_or_none_needed),
               (WEIGHTS, read_weights))
    out = []
    for d in run_dirs:
        bad = [name for name, read in readers if os.path.lexists(Path(d) / name) and read(d) is None]
        if bad:
            out.append(f"{d} ({', '.join(bad)})")
    return out


def figures_note(run_dirs: Iterable[str], left_out: dict[str, list[str]], limit: int = 3) -> str:
    """The line under `noisybench plot`'s output: the runs not in the figures (as under the tables), and
    the runs missing from some figures because a file of theirs cannot be read."""
    note = left_out_note(left_out, limit).replace("in the tables", "in the figures")
    bad = unreadable_files(run_dirs)
    if not bad:
        return note
    shown = ", ".join(bad[:limit]) + (", ..." if len(bad) > limit else "")
    missing = (f"Missing from the figures that need the file: {len(bad)} run(s) with a file that cannot be read "
               f"or has another shape: {shown}.")
    return missing if note == "Every run found is in the figures." else f"{note} {missing}"
