"""Per-class statistics of a method's per-sample weights: does a weighting starve whole classes?

For any method with per-sample weights (`sample_weights()` in noisybench.methods.base; today STORM)
the runner computes, at every evaluated epoch and in this one place (method-agnostic), for each class
(the sample's NOISY label, the one a method sees; DST: the gate label of a (turn, slot) cell):

- `share_below`: the share of the class's weighted samples with w < `LOW` (0.05);
- `share_below_clean` / `share_below_corrupted`: the same over its clean / corrupted samples (the
  runner knows which labels were corrupted; evaluation only, never given to the method);
- `mean_weight`: the class's mean weight.

metrics.csv gets three summary columns whatever the number of classes (`columns`): `starved_max_share`
(the largest `share_below` of a class), `starved_max_share_clean` (the largest `share_below_clean`)
and `min_class_mean_weight`. result.json gets the per-class lists of every evaluated epoch under
`class_weights` (`record`). A class is *starved* when more than `STARVED` (25 %) of its clean samples
have w < `LOW` at the last evaluated epoch; the run's end summary (train.log, stdout) names each
(`starved_line`). docs/runs.md describes the fields.
"""
from __future__ import annotations

import numpy as np

LOW = 0.05  # a weight below this counts as (nearly) switched off
STARVED = 0.25  # a class is starved when more than this share of its clean samples is below LOW


def _share(low: np.ndarray, mask: np.ndarray) -> float | None:
    n = int(mask.sum())
    return round(float(low[mask].sum()) / n, 4) if n else None


def stats(w: np.ndarray, classes: np.ndarray, corrupted: np.ndarray, num_classes: int) -> dict:
    """Per-class lists (index = class; None for a class without such samples) from the weights `w`
    [N] (NaN: a sample not weighted this epoch, left out), their classes [N] and corruption mask [N]."""
    w = np.asarray(w, dtype=np.float64).reshape(-1)
    classes, corrupted = np.asarray(classes).reshape(-1), np.asarray(corrupted, dtype=bool).reshape(-1)
    seen = np.isfinite(w)
    low = w < LOW
    out: dict[str, list] = {k: [] for k in ("count", "share_below", "share_below_clean", "share_below_corrupted",
                                            "mean_weight")}
    for k in range(int(num_classes)):
        mine = seen & (classes == k)
        out["count"].append(int(mine.sum()))
        out["share_below"].append(_share(low, mine))
        out["share_below_clean"].append(_share(low, mine & ~corrupted))
        out["share_below_corrupted"].append(_share(low, mine & corrupted))
        out["mean_weight"].append(round(float(w[mine].mean()), 4) if mine.any() else None)
    return out


def _extreme(values: list, pick) -> float | None:
    present = [v for v in values if v is not None]
    return pick(present) if present else None


def columns(s: dict) -> dict:
    """The metrics.csv summary of `stats`: three columns, whatever the number of classes."""
    return {"starved_max_share": _extreme(s["share_below"], max),
            "starved_max_share_clean": _extreme(s["share_below_clean"], max),
            "min_class_mean_weight": _extreme(s["mean_weight"], min)}


def starved(s: dict) -> list[dict]:
    """The starved classes of `stats`: more than STARVED of their clean samples below LOW."""
    return [{"class": k, "share_below_clean": v} for k, v in enumerate(s["share_below_clean"])
            if v is not None and v > STARVED]


def record(epochs: list[dict], class_names: list | None = None) -> dict:
    """result.json's `class_weights`: the thresholds, the class names (if the dataset has them), the
    last evaluated epoch's lists with its starved classes, and the lists of every evaluated epoch."""
    last = epochs[-1]
    return {"below": LOW, "starved_above": STARVED, "class_names": class_names,
            "last": {**last, "starved": starved(last)}, "epochs": epochs}


def starved_line(rec: dict | None) -> str | None:
    """The end-of-run line naming the starved classes of result.json's `class_weights`, or None."""
    if not rec or not rec["last"]["starved"]:
        return None
    names = rec.get("class_names")
    parts = []
    for s in rec["last"]["starved"]:
        k = s["class"]
        name = f" ({names[k]})" if names and k < len(names) else ""
        parts.append(f"class {k}{name}: {100 * s['share_below_clean']:.0f} % of its clean samples")
    return (f"starved classes at epoch {rec['last']['epoch'] + 1} (more than {100 * STARVED:.0f} % of a class's clean "
            f"training samples at weight < {LOW}): " + "; ".join(parts))
