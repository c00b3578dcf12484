"""weights_<row>: histograms of the per-sample weights of clean and corrupted training samples at the
epochs saved in sample_weights.npz (`trainer.save_weights_at`), seeds pooled (n runs per row of panels),
and a last column per class: the share of each class's clean and corrupted samples with w < 0.05
(noisybench.class_weights)."""
from __future__ import annotations

import numpy as np

from noisybench.class_weights import LOW, STARVED
from noisybench.report.draw import PALETTE, TEXT_WIDTH, legend, legend_entries, new_figure, stack
from noisybench.report.groups import Group, Plot, _slug, left_out
from noisybench.report.weights import auc, class_panel
from noisybench.report.weights import load as _weights


def _spread(values: list[int], k: int = 5) -> list[int]:
    if len(values) <= k:
        return values
    return [values[round(i * (len(values) - 1) / (k - 1))] for i in range(k)]


def _pooled(runs: list, epoch: int, by_class: bool) -> tuple[list, list, list]:
    """The seeds' weights, corruption masks and classes (`by_class`: only runs that saved them) at
    `epoch`, each sample weighted that epoch."""
    w_all, bad_all, cls_all = [], [], []
    for ep, w, bad, classes in runs:
        k = np.flatnonzero(ep == epoch)
        if len(k) and w.shape[1] == len(bad) and (not by_class or classes is not None):
            ok = np.isfinite(w[k[0]])
            w_all.append(w[k[0]][ok])
            bad_all.append(bad[ok])
            cls_all.append(classes[ok] if by_class else None)
    return w_all, bad_all, cls_all


def _histogram(ax, w: np.ndarray, bad: np.ndarray) -> None:
    lo, hi = (float(w.min()), float(w.max())) if len(w) else (0.0, 1.0)
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
    for mask, color, lab in ((~bad, PALETTE[0], "clean samples"), (bad, PALETTE[3], "corrupted samples")):
        if mask.any():
            ax.hist(w[mask], bins=bins, density=True, histtype="stepfilled", alpha=0.3, color=color)
            ax.hist(w[mask], bins=bins, density=True, histtype="step", color=color, linewidth=1.0, label=lab)
    if bad.any() and (~bad).any():
        ax.text(0.97, 0.93, f"AUC {auc(w[~bad], w[bad]):.2f}", transform=ax.transAxes, ha="right", va="top",
                fontsize=6.5)


def _row_of_panels(axes, i: int, c: str, saved_runs: list, epochs: list[int], per_class: bool, last: bool) -> None:
    for j, e in enumerate(epochs + [epochs[-1]] * per_class):
        ax = axes[i, j]
        w_all, bad_all, cls_all = _pooled(saved_runs, e, j == len(epochs))
        if w_all and j == len(epochs):
            class_panel(ax, np.concatenate(w_all), np.concatenate(bad_all), np.concatenate(cls_all))
            if i == 0:
                ax.set_title(f"by class, epoch {e + 1}")
            ax.set_ylabel(f"share with w < {LOW}", fontsize=7)
            if last:
                ax.set_xlabel("class (noisy label)")
            continue
        if w_all:
            _histogram(ax, np.concatenate(w_all), np.concatenate(bad_all))
        else:
            ax.text(0.5, 0.5, "not saved", transform=ax.transAxes, ha="center", va="center", color="0.5")
        ax.set_yticks([])
        if i == 0:
            ax.set_title(f"after epoch {e + 1}")
        if j == 0:
            ax.set_ylabel(f"{stack(c)} (n={len(saved_runs)})\ndensity", fontsize=7)
        if last:
            ax.set_xlabel("weight")  # (short: the columns sit side by side)


def sample_weight_histograms(group: Group) -> list[Plot]:
    group = group.picked("selected")
    runs = group.runs
    plots = []
    for r in group.rows_present:
        sub = runs[runs["row"] == r]
        saved = {d: w for d in sub["run_dir"] if (w := _weights(d)) is not None}
        if not saved:
            continue
        cols = [c for c in group.cols if any(d in saved for d in sub.loc[sub["col"] == c, "run_dir"])]
        epochs = _spread(sorted({int(e) for s in saved.values() for e in s.epoch}))
        per_class = any(s.classes is not None for s in saved.values())  # the last column: by class
        fig = new_figure(min(TEXT_WIDTH, 0.6 + 1.35 * (len(epochs) + per_class)), 0.9 + 1.1 * len(cols))
        axes = fig.subplots(len(cols), len(epochs) + per_class, squeeze=False)
        for ax in axes[:, :len(epochs)].flat[1:]:
            ax.sharex(axes[0, 0])  # the histograms share their weight axis (not the per-class panel)
        for i, c in enumerate(cols):
            saved_runs = [saved[d] for d in sub.loc[sub["col"] == c, "run_dir"] if d in saved]
            _row_of_panels(axes, i, c, saved_runs, epochs, per_class, i == len(cols) - 1)
        handles, labels = legend_entries(axes)
        legend(fig, handles, labels, 2)
        caption = (f"{group.dataset} / {group.model}, {r}: distribution of the per-sample weights of the clean and "
                   "the corrupted training samples (each sample's last weight in that epoch; the seeds' runs pooled, "
                   "n runs per row; sample_weights.npz), rows: noise setting, columns: epoch. AUC: the probability "
                   "that a clean sample's weight exceeds a corrupted one's (the clean labels are used for this plot "
                   "only)."
                   + (f" Last column: per class (noisy label), the share of its clean (blue) and corrupted (red) "
                      f"samples with weight < {LOW} at the last drawn epoch; dotted: {STARVED}, above which a class's "
                      "clean samples count as starved." if per_class else "")
                   + left_out(group))
        plots.append(Plot(f"{group.stem}_weights_{_slug(r)}", caption, fig,
                          f"{r}: per-sample weights ({group.dataset} / {group.model})"))
    return plots
