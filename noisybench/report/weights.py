"""The per-sample weights a run saved (sample_weights.npz) as the figures read them: the loader, the
weight AUC and the per-class panel of the weights figure (`noisybench.report.figures`)."""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from noisybench.class_weights import LOW, STARVED
from noisybench.report.draw import PALETTE

WEIGHTS = "sample_weights.npz"


class Saved(NamedTuple):
    epoch: np.ndarray  # [E] 0-based
    weights: np.ndarray  # [E, N] float32, NaN: not weighted that epoch
    corrupted: np.ndarray  # [N] bool
    classes: np.ndarray | None  # [N] each sample's noisy label (None: a file written before it was kept)


def load(run_dir: str) -> Saved | None:
    """The run's sample_weights.npz, or None: no file, not a regular file, not a readable npz (truncated,
    garbage, pickled objects), or arrays of other shapes than the runner writes (`Saved`)."""
    path = Path(run_dir) / WEIGHTS
    if not path.is_file() or path.is_symlink():
        return None
    try:
        with np.load(path) as z:
            saved = Saved(z["epoch"].astype(int), z["weights"].astype(np.float32), z["corrupted"].astype(bool),
                          z["classes"].astype(int) if "classes" in z.files else None)
    except Exception:  # noqa: BLE001  (zipfile, zlib, numpy: each has its own errors for a bad file)
        return None
    e, n = saved.epoch, len(saved.corrupted)
    shaped = (e.ndim == 1 and saved.weights.ndim == 2 and saved.weights.shape == (len(e), n)
              and saved.corrupted.ndim == 1
              and (saved.classes is None or (saved.classes.shape == (n,) and (saved.classes >= 0).all()
                                             and (n == 0 or saved.classes.max() < 100_000))))
    return saved if shaped else None


def auc(clean: np.ndarray, corrupted: np.ndarray) -> float:
    """P(a clean sample's weight > a corrupted one's), ties counted 1/2 (= sklearn's roc_auc_score with
    clean as the positive class; rank form, without importing sklearn)."""
    x = np.concatenate([clean, corrupted]).astype(np.float64)
    _, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2.0)[inverse]  # 1-based, ties averaged
    n1, n0 = len(clean), len(corrupted)
    return float((ranks[:n1].sum() - n1 * (n1 + 1) / 2.0) / (n1 * n0))


def class_panel(ax, w: np.ndarray, bad: np.ndarray, classes: np.ndarray) -> None:
    """Per class (the noisy label), the share of its clean and of its corrupted samples with w < LOW
    (bars side by side); dotted: STARVED, above which a class's clean samples count as starved."""
    k = int(classes.max()) + 1 if len(classes) else 0
    x = np.arange(k)
    for off, mask, color in ((-0.2, ~bad, PALETTE[0]), (0.2, bad, PALETTE[3])):
        share = [float((w[m] < LOW).mean()) if (m := mask & (classes == c)).any() else np.nan for c in x]
        ax.bar(x + off, share, width=0.4, color=color, alpha=0.75, linewidth=0)
    ax.axhline(STARVED, color="0.4", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 1)
    step = max(1, -(-k // 10))
    ax.set_xticks(x[::step])
    ax.tick_params(axis="x", labelsize=6)
