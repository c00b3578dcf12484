"""Figures over the epochs of training (metrics.csv), mean ± std band over seeds, n per panel or line.

- learning_curves: one panel per (method row, noise column): the metric on the noisy training labels, on
  the noisy validation split and on the clean test set, and over the corrupted training samples the
  share predicted as their noisy label (memorised) and as their clean label; dotted, the detection AUC of the
  per-sample training loss (docs/definitions.md) and, for a reweighting method, its weight AUC; markers: the
  epoch selected on validation and the ORACLE best test epoch of each seed. The y axis is fitted to the data.
- diagnostics_<row>: a method's own metrics.csv columns over epochs (DAL's q and λ, STORM's mean weight of
  clean and corrupted samples and weight_auc).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from noisybench.report.draw import (
    COLUMN_WIDTH,
    PALETTE,
    TEXT_WIDTH,
    legend,
    legend_entries,
    new_figure,
    noise_colors,
    stack,
)
from noisybench.report.groups import (
    SCALE,
    Group,
    Plot,
    _slug,
    draw_band,
    epoch_axis,
    epoch_band,
    fit_percent_axis,
    left_out,
    metrics_frame,
    n_label,
    over,
)
from noisybench.report.layout import METRIC_TITLES

# metrics.csv columns every classification/DST run writes; anything else is a method's own diagnostic
STANDARD = {"epoch", "train_loss", "lr", "val", "test", "train_noisy", "memorized_noisy_frac", "memorized_clean_frac",
            "detect_auc", "detect_noisy_in_lowk"}  # (the detection score: drawn in the learning curves)
# learning-curve lines: (metrics.csv column, label, colour, line style)
CURVES = (("train_noisy", "train (noisy labels)", PALETTE[1], "-"),
          ("val", "validation (noisy labels)", PALETTE[4], "-"),
          ("test", "test (clean labels)", PALETTE[0], "-"),
          ("memorized_noisy_frac", "memorised: corrupted → noisy label", PALETTE[3], "--"),
          ("memorized_clean_frac", "corrected: corrupted → clean label", PALETTE[2], "--"),
          ("detect_auc", "detection AUC of the training loss", PALETTE[6], ":"),
          ("weight_auc", "weight AUC (reweighting methods)", PALETTE[5], ":"))
# diagnostic panels: (columns drawn together, title, y label, reference line or None)
DIAG_PANELS = ((("q",), "DAL: GCE exponent q", "q", None),
               (("lambda",), "DAL: bootstrap weight λ", "λ", None),
               (("mean_weight_clean", "mean_weight_corrupted"), "mean per-sample weight", "weight", None),
               (("weight_auc",), "weight AUC", "AUC, clean vs corrupted", 0.5),
               (("starved_max_share_clean", "starved_max_share"), "most starved class", "share with w < 0.05", 0.25),
               (("min_class_mean_weight",), "lowest class mean", "weight", None))
SAME = "every noise setting, identical"
DIAG_STYLES = {"mean_weight_clean": ("-", "clean samples"), "mean_weight_corrupted": ("--", "corrupted samples"),
               "starved_max_share": ("-.", "all samples of a class")}


def _seed_markers(ax, cell: pd.DataFrame) -> None:
    """Each seed: the selected epoch (valid) and the ORACLE best epoch."""
    for _, run in cell.iterrows():
        if not pd.isna(run["selected_epoch"]) and not pd.isna(run["test_selected"]):
            ax.plot(run["selected_epoch"] + 1, run["test_selected"] * SCALE, linestyle="none", marker="^",
                    markersize=3.5, color="black", label="test at the validation-selected epoch")
        if not pd.isna(run["best_epoch"]) and not pd.isna(run["test_best"]):
            ax.plot(run["best_epoch"] + 1, run["test_best"] * SCALE, linestyle="none", marker="x",
                    markersize=4, color="black", label="ORACLE: best test epoch")


def _curves_panel(ax, fs: list) -> int:
    """The learning curves of one cell; returns the number of runs behind them."""
    n = 0
    for column, label, color, ls in CURVES:
        band = epoch_band(fs, column) if fs else None
        if band is None:
            continue
        x, m, s, count = band
        n = max(n, int(count.max()))
        draw_band(ax, x, m * SCALE, s * SCALE, color, label, linestyle=ls, linewidth=1.0)
    return n


def learning_curves(group: Group, cache: dict) -> list[Plot]:
    group = group.picked("selected")
    runs = group.runs
    frames = {d: metrics_frame(d, cache) for d in runs["run_dir"]}
    have = runs[[frames[d] is not None for d in runs["run_dir"]]]
    if have.empty:
        return []
    rows = [r for r in group.rows_present if (have["row"] == r).any()]
    cols = [c for c in group.cols if (have["col"] == c).any()]
    width = max(5.0, min(TEXT_WIDTH, 1.0 + 1.75 * len(cols)))  # at least the legend's width
    fig = new_figure(width, 0.9 + 1.35 * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols), sharex=True, sharey=True, squeeze=False))
    ns = {}
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            cell = have[(have["row"] == r) & (have["col"] == c)]
            fs = [frames[d] for d in cell["run_dir"]]
            ns[(i, j)] = _curves_panel(ax, fs)
            _seed_markers(ax, cell)
            if not fs:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
            if group.tuned and not cell.empty:
                ax.text(0.03, 0.96, cell["chosen"].iloc[0], transform=ax.transAxes, ha="left", va="top",
                        fontsize=6, color="0.2", bbox={"facecolor": "white", "alpha": 0.8, "linewidth": 0,
                                                       "pad": 1})
            if j == 0:
                ax.set_ylabel(f"{stack(r)}\n(%)", fontsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel("epoch")
            epoch_axis(ax)
    _n_titles(axes, cols, ns)
    fit_percent_axis(axes[0, 0], group.metric)
    handles, labels = legend_entries(axes)
    legend(fig, handles, labels, 2)
    tuned = (f" Per panel, the {', '.join(group.tuned)} chosen as `report --tune` chooses for the "
             "validation-selected table (best mean val_selected over seeds; written in the panel)."
             if group.tuned else "")
    caption = (f"{group.dataset} / {group.model}: learning curves per method (rows) and noise setting (columns): "
               f"{METRIC_TITLES.get(group.metric, group.metric).replace('test ', '', 1)} on the noisy training "
               "labels, the noisy validation split and the clean test set; dashed, over the corrupted training "
               "samples: the share predicted as their noisy label (memorised) and as their clean label; dotted: "
               "the detection AUC of the per-sample training loss (P(a clean sample's loss < a corrupted one's); "
               "50: chance) and, for a reweighting method, its weight AUC; "
               f"{over(group)} (band: ± std; n: runs per panel). ▲ each seed's epoch selected on validation; "
               "× each seed's ORACLE best test epoch (chosen on test labels: not a valid selection). The y axis "
               "is fitted to the data." + tuned + left_out(group))
    title = f"{group.dataset} / {group.model}: learning curves and memorisation"
    return [Plot(f"{group.stem}_learning_curves" + ("_tuned" if group.tuned else ""), caption, fig, title)]


def _n_titles(axes, cols: list[str], ns: dict) -> None:
    """The column titles; with n when every panel rests on the same number of runs, else n in each panel."""
    same = len({n for n in ns.values() if n}) <= 1
    n_all = next((n for n in ns.values() if n), 0)
    for j, c in enumerate(cols):
        axes[0, j].set_title(f"{c} (n={n_all})" if same and n_all else c)
    if not same:
        for (i, j), n in ns.items():
            axes[i, j].text(0.03, 0.80, f"n={n}", transform=axes[i, j].transAxes, ha="left", va="top",
                            fontsize=6, color="0.3")  # under a tuned panel's chosen value


# ---- method diagnostics -------------------------------------------------------------------------
def _diag_columns(frames: list[pd.DataFrame]) -> list[str]:
    cols: dict[str, None] = {}
    for f in frames:
        for c in f.columns:
            if c in STANDARD or c.startswith("test_") or pd.to_numeric(f[c], errors="coerce").notna().sum() == 0:
                continue
            cols[c] = None
    return list(cols)


def _diag_panels(columns: list[str]) -> list[tuple]:
    panels = []
    for cols_, title, ylab, ref in DIAG_PANELS:
        present = [c for c in cols_ if c in columns]
        if present:
            panels.append((present, title, ylab, ref))
    known = {c for p, *_ in DIAG_PANELS for c in p}
    if {"mean_weight_clean", "mean_weight_corrupted"} <= set(columns):
        known.add("mean_weight")  # the mean over both: shown by its two parts
    return panels + [([c], c, "value", None) for c in columns if c not in known]


def _diag_axis(ax, group: Group, sub: pd.DataFrame, frames: dict, present: list[str], colors: dict) -> None:
    for column in present:
        bands = {c: epoch_band([frames[d] for d in sub.loc[sub["col"] == c, "run_dir"] if d in frames], column)
                 for c in group.cols}
        bands = {c: b for c, b in bands.items() if b is not None}
        first = next(iter(bands.values()), None)
        if len(bands) > 1 and all(len(b[0]) == len(first[0]) and np.allclose(b[0], first[0])
                                  and np.allclose(b[1], first[1], equal_nan=True) for b in bands.values()):
            n = sum(int(b[3].max()) for b in bands.values())
            bands = {SAME: first[:3] + (np.array([n]),)}  # e.g. a schedule: one line, not several on top
        ls = DIAG_STYLES.get(column, ("-", ""))[0]
        for c, (x, m, s, count) in bands.items():
            color = "0.25" if c == SAME else colors[c]
            draw_band(ax, x, m, s, color, f"{c} ({n_label(count)})", linestyle=ls, linewidth=1.0)


def diagnostics(group: Group, cache: dict) -> list[Plot]:
    group = group.picked("selected")
    runs = group.runs
    plots = []
    setting_colors = noise_colors(group.cols)
    for r in group.rows_present:
        sub = runs[runs["row"] == r]
        frames = {d: f for d in sub["run_dir"] if (f := metrics_frame(d, cache)) is not None}
        columns = _diag_columns(list(frames.values()))
        if not columns:
            continue
        panels = _diag_panels(columns)
        ncol = min(len(panels), 4)
        nrow = -(-len(panels) // ncol)
        fig = new_figure(COLUMN_WIDTH if ncol == 1 else min(TEXT_WIDTH, 0.4 + 1.8 * ncol), 0.8 + 1.7 * nrow)
        axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (present, title, ylab, ref) in zip(axes.flat, panels):
            _diag_axis(ax, group, sub, frames, present, setting_colors)
            if ref is not None:
                ax.axhline(ref, color="0.4", linewidth=0.8, linestyle=":")
            ax.set_title(title)
            ax.set_ylabel(ylab)
            ax.set_xlabel("epoch")
            epoch_axis(ax)
        handles, labels = legend_entries(axes)
        if any(c in columns for c in DIAG_STYLES):
            from matplotlib.lines import Line2D

            for _column, (ls, lab) in DIAG_STYLES.items():
                handles.append(Line2D([], [], color="0.3", linestyle=ls, linewidth=1.0))
                labels.append(lab)
        legend(fig, handles, labels, 3)
        caption = (f"{group.dataset} / {group.model}, {r}: the method's own per-epoch values from metrics.csv "
                   f"({', '.join(c for p, *_ in panels for c in p)}), one line per noise setting; {over(group)} "
                   "(band: ± std; legend: n runs per line). weight AUC: the probability that a clean sample's "
                   "weight exceeds a corrupted one's (0.5: no separation; uses the clean labels, for evaluation "
                   "only)." + left_out(group))
        plots.append(Plot(f"{group.stem}_diagnostics_{_slug(r)}", caption, fig,
                          f"{r}: method diagnostics ({group.dataset} / {group.model})"))
    return plots
