"""Figures from run and sweep directories (`noisybench plot`, and the figures of `report -f html`).

Runs are found, loaded and grouped exactly as `noisybench report` does (`records`, `layout`): one
set of figures per (dataset, model, metric); a line is a row of the report's tables (a method with the
hyperparameters that vary), an x position or a panel is one of its noise columns. Failed and unfinished
runs are never found; diverged runs are left out of every figure and named in its caption.

- accuracy_vs_noise: the test metric against the nominal noise rate, one line per method row, mean ± std
  band over seeds; last epoch and selected by the (noisy) validation split side by side; dotted lines:
  each row's clean (noise 0) level, when the runs include one.
- learning_curves: one panel per (method row, noise column): the metric on the noisy training labels, on
  the noisy validation split and on the clean test set, and over the corrupted training samples the
  share predicted as their noisy label (memorised) and as their clean label; mean ± std band over seeds;
  markers: the epoch selected on validation and the ORACLE best test epoch of each seed.
- diagnostics_<row>: a method's own metrics.csv columns over epochs (DAL's q and λ, STORM's mean weight of
  clean and corrupted samples and weight_auc).
- weights_<row>: histograms of the per-sample weights of clean and corrupted training samples at the
  epochs saved in sample_weights.npz (`trainer.save_weights_at`), and a last column per class: the share
  of each class's clean and corrupted samples with w < 0.05 (noisybench.class_weights).
- transition_matrices: the realised transition matrix of each noise column (noise.json).

Style (`noisybench.report.draw`): sized for print, the Okabe-Ito colour-blind-safe palette, axes
labelled with units; matplotlib's object API (no global pyplot state). matplotlib and PIL are
imported inside the functions that draw: they are slow to import, and only `noisybench plot` and
`noisybench report -f html` draw.
"""
from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from noisybench.class_weights import LOW, STARVED
from noisybench.noise.report import draw_heatmap
from noisybench.report.draw import (
    COLUMN_WIDTH,
    LINESTYLES,
    MARKERS,
    METHOD_COLORS,
    PALETTE,
    STYLE,
    TEXT_WIDTH,
    epoch_ticks,
    legend,
    legend_entries,
    new_figure,
    noise_colors,
    stack,
    suptitle,
)
from noisybench.report.layout import METRIC_TITLES, check_replicates, table_layout
from noisybench.report.weights import auc, class_panel
from noisybench.report.weights import load as _weights
from noisybench.utils import atomic_output, atomic_write_bytes

FORMATS = ("png", "pdf")
# metrics.csv columns every classification/DST run writes; anything else is a method's own diagnostic
STANDARD = {"epoch", "train_loss", "lr", "val", "test", "train_noisy", "memorized_noisy_frac", "memorized_clean_frac"}
# learning-curve lines: (metrics.csv column, label, colour, line style)
CURVES = (("train_noisy", "train (noisy labels)", PALETTE[1], "-"),
          ("val", "validation (noisy labels)", PALETTE[4], "-"),
          ("test", "test (clean labels)", PALETTE[0], "-"),
          ("memorized_noisy_frac", "memorised: corrupted → noisy label", PALETTE[3], "--"),
          ("memorized_clean_frac", "corrected: corrupted → clean label", PALETTE[2], "--"))
# diagnostic panels: (columns drawn together, title, y label, reference line or None)
DIAG_PANELS = ((("q",), "DAL: GCE exponent q", "q", None),
               (("lambda",), "DAL: bootstrap weight λ", "λ", None),
               (("mean_weight_clean", "mean_weight_corrupted"), "mean per-sample weight", "weight", None),
               (("weight_auc",), "weight AUC", "AUC, clean vs corrupted", 0.5),
               (("starved_max_share_clean", "starved_max_share"), "most starved class", "share with w < 0.05", 0.25),
               (("min_class_mean_weight",), "lowest class mean", "weight", None))
SAME = "every noise setting (identical)"
DIAG_STYLES = {"mean_weight_clean": ("-", "clean samples"), "mean_weight_corrupted": ("--", "corrupted samples"),
               "starved_max_share": ("-.", "all samples of a class")}


class Plot(NamedTuple):
    name: str  # file stem
    caption: str
    figure: object  # matplotlib.figure.Figure


class Group(NamedTuple):
    """The runs of one table set (dataset, model, metric), with the report's labels."""
    dataset: str
    model: str
    metric: str
    stem: str  # file-name prefix
    runs: pd.DataFrame  # + row, col, family, rate, clean; diverged runs left out
    rows: list[str]  # row labels in table order
    cols: list[str]  # column labels in table order
    seeds: list[int]
    diverged: list[str]  # run dirs left out

    @property
    def rows_present(self) -> list[str]:
        """The row labels that have runs (diverged ones left out), in table order."""
        present = set(self.runs["row"])
        return [r for r in self.rows if r in present]


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", s.replace("=", "-")).strip("_") or "x"


def _rate(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def groups(df: pd.DataFrame) -> list[Group]:
    """The report's table sets of `df` (from `records.load_runs`), with row/column labels per
    run."""
    out = []
    pairs = df.groupby(["dataset", "model"])["metric"].nunique()
    for (dataset, model, metric), group in df.groupby(["dataset", "model", "metric"]):
        rows, cols, row_order, col_order, *_ = table_layout(group)
        check_replicates(group, rows, cols)  # the report refuses to average such runs; so do the figures
        g = group.copy()
        g["row"], g["col"] = rows, cols
        fam, rates, clean = [], [], []
        for t, r, c in zip(g["noise_type"], g["noise_rate"], g["col"]):
            r = _rate(r)
            none = t in (None, "none") or (isinstance(t, float) and math.isnan(t))
            rates.append(0.0 if none else r)
            clean.append(none or r == 0.0)
            fam.append("none" if none else c if r is None else c.replace(f"{t} {r:g}", str(t), 1))
        g["family"], g["rate"], g["clean"] = fam, rates, clean
        diverged = g["diverged"].astype(bool) if "diverged" in g else pd.Series(False, index=g.index)
        stem = f"{dataset}_{model}" + (f"_{metric}" if pairs[(dataset, model)] > 1 else "")
        out.append(Group(str(dataset), str(model), str(metric), _slug(stem), g[~diverged].reset_index(drop=True),
                         row_order, col_order, sorted(int(s) for s in g["seed"].unique()),
                         sorted(g.loc[diverged, "run_dir"].tolist())))
    return out


# ---- drawing helpers ----------------------------------------------------------------------------
def _row_styles(group: Group) -> dict[str, dict]:
    """Colour per method (fixed for the known ones), line style and marker per variant of that method
    (e.g. its lr values)."""
    method_of = {r: group.runs.loc[group.runs["row"] == r, "method"].iloc[0] for r in group.rows_present}
    spare = [c for c in PALETTE if c not in METHOD_COLORS.values()]
    colors = dict(METHOD_COLORS)
    for m in dict.fromkeys(method_of.values()):
        if m not in colors:
            colors[m] = spare[sum(k not in METHOD_COLORS for k in colors) % len(spare)]
    variant: dict[str, int] = {}
    styles = {}
    for r, m in method_of.items():
        i = variant[m] = variant.get(m, -1) + 1
        k = list(colors).index(m)
        styles[r] = {"color": colors[m], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                     "marker": MARKERS[(k + i) % len(MARKERS)]}
    return styles



def _scale(metric: str) -> float:
    return 100.0  # every metric is shown in % (MCC as x100), as in the tables


def _ylabel(metric: str) -> str:
    return METRIC_TITLES.get(metric, f"test {metric}")


def _num(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")  # None (e.g. no validation split: no selected epoch) -> NaN


def _mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def _over(group: Group) -> str:
    return f"mean ± std over seeds {group.seeds}"


def _left_out(group: Group) -> str:
    if not group.diverged:
        return ""
    shown = ", ".join(Path(d).name for d in group.diverged[:3]) + (", ..." if len(group.diverged) > 3 else "")
    return f" Left out: {len(group.diverged)} diverged run(s) ({shown})."


# ---- accuracy vs noise rate ---------------------------------------------------------------------
KIND_PANELS = (("test_last", "last epoch"), ("test_selected", "selected on noisy validation"))


def accuracy_vs_noise(group: Group) -> list[Plot]:
    runs = group.runs
    noisy = runs[~runs["clean"]]
    if noisy.empty:
        return []
    styles = _row_styles(group)
    scale = _scale(group.metric)
    numeric = [f for f in dict.fromkeys(noisy.sort_values("col", key=lambda c: c.map(group.cols.index))["family"])
               if noisy.loc[noisy["family"] == f, "rate"].notna().all()]
    categorical = noisy[~noisy["family"].isin(numeric)]
    plots = []
    panels = [(f, noisy[noisy["family"] == f]) for f in numeric]
    if not categorical.empty:
        panels.append((None, categorical))
    for family, sub in panels:
        fig = new_figure(COLUMN_WIDTH * 2 if len(group.rows_present) > 6 else COLUMN_WIDTH + 0.6, 2.9)
        axes = fig.subplots(1, 2, sharey=True)
        if family is not None:
            xs = sorted(set(sub["rate"]) | ({0.0} if runs["clean"].any() else set()))
            ticks = [(x, f"{100 * x:g}") for x in xs]
            xlabel = "noise rate (%)"
        else:  # settings without a rate (CIFAR-N label sets): points with error bars, no line between them
            cats = ["clean"] * bool(runs["clean"].any()) + [c for c in group.cols if c in set(sub["col"])]
            ticks = list(enumerate(cats))
            xlabel = "noise setting"
        present = group.rows_present
        for ax, (column, title) in zip(axes, KIND_PANELS):
            for k, r in enumerate(present):
                clean_vals = _num(runs.loc[(runs["row"] == r) & runs["clean"], column]) * scale
                pts = []
                for x, lab in ticks:
                    if family is not None:
                        sel = sub[(sub["row"] == r) & (sub["rate"] == x)]
                        vals = (_num(sel[column]) * scale) if x != 0.0 or not sel.empty else clean_vals
                    else:
                        vals = clean_vals if lab == "clean" else _num(
                            sub.loc[(sub["row"] == r) & (sub["col"] == lab), column]) * scale
                    m, s, n = _mean_std(vals)
                    if n:
                        pts.append((x, m, s))
                if not pts:
                    continue
                st = styles[r]
                x, m, s = map(np.array, zip(*pts))
                if family is None:
                    shift = 0.5 * (k - (len(present) - 1) / 2) / max(1, len(present))  # side by side
                    ax.errorbar(x + shift, m, yerr=s, color=st["color"], linestyle="none", marker=st["marker"],
                                capsize=2, elinewidth=0.8, label=r)
                    continue
                ax.plot(x, m, color=st["color"], linestyle=st["linestyle"], marker=st["marker"], label=r)
                ax.fill_between(x, m - s, m + s, color=st["color"], alpha=0.15, linewidth=0)
                cm, _, cn = _mean_std(clean_vals)
                if cn:
                    ax.axhline(cm, color=st["color"], linestyle=":", linewidth=0.8, alpha=0.8)
            ax.set_title(title)
            ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks],
                          rotation=0 if family is not None else 30, ha="center" if family is not None else "right")
            ax.set_xlabel(xlabel)
        suptitle(fig, f"{group.dataset} / {group.model}: " + (f"{family} label noise, nominal rate" if family else
                                                                "label noise settings"))
        axes[0].set_ylabel(_ylabel(group.metric))
        handles, labels = axes[0].get_legend_handles_labels()
        if runs["clean"].any() and family is not None:
            from matplotlib.lines import Line2D

            handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=0.8))
            labels.append("clean (noise 0) level")
        legend(fig, handles, labels, 3)
        suffix = "" if len(panels) == 1 else "_" + (_slug(family) if family else "other")
        what = f"nominal {family} noise rate" if family else "noise setting"
        bars = "band" if family else "error bars"
        caption = (f"{group.dataset} / {group.model}: {_ylabel(group.metric)} vs {what}, at the last epoch (left) "
                   f"and at the epoch selected on the noisy validation split (right); {_over(group)} ({bars}: ± std)"
                   + ("; dotted: each method's clean (noise 0) level" if runs["clean"].any() and family else "")
                   + "." + _left_out(group))
        plots.append(Plot(f"{group.stem}_accuracy_vs_noise{suffix}", caption, fig))
    return plots


# ---- learning curves ----------------------------------------------------------------------------
def _metrics(run_dir: str, cache: dict) -> pd.DataFrame | None:
    if run_dir not in cache:
        try:
            frame = pd.read_csv(Path(run_dir) / "metrics.csv")
            cache[run_dir] = frame if "epoch" in frame else None
        except (OSError, ValueError, pd.errors.ParserError):
            cache[run_dir] = None
    return cache[run_dir]


def _band(frames: list[pd.DataFrame], column: str) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """Per epoch: (epochs counted from 1, mean, std) of `column` over the runs that logged it."""
    parts = [f[["epoch", column]].dropna() for f in frames if column in f]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return None
    allv = pd.concat(parts)
    allv[column] = pd.to_numeric(allv[column], errors="coerce")
    stats = allv.dropna().groupby("epoch")[column].agg(["mean", "std", "count"]).sort_index()
    if stats.empty:
        return None
    return stats.index.to_numpy() + 1, stats["mean"].to_numpy(), stats["std"].fillna(0.0).to_numpy()


def learning_curves(group: Group, cache: dict) -> list[Plot]:
    runs = group.runs
    frames = {d: _metrics(d, cache) for d in runs["run_dir"]}
    have = runs[[frames[d] is not None for d in runs["run_dir"]]]
    if have.empty:
        return []
    rows = [r for r in group.rows_present if (have["row"] == r).any()]
    cols = [c for c in group.cols if (have["col"] == c).any()]
    scale = _scale(group.metric)
    width = max(5.0, min(TEXT_WIDTH, 1.0 + 1.75 * len(cols)))  # at least the legend's width
    fig = new_figure(width, 0.9 + 1.35 * len(rows))
    axes = np.atleast_2d(fig.subplots(len(rows), len(cols), sharex=True, sharey=True, squeeze=False))
    for i, r in enumerate(rows):
        for j, c in enumerate(cols):
            ax = axes[i, j]
            cell = have[(have["row"] == r) & (have["col"] == c)]
            fs = [frames[d] for d in cell["run_dir"]]
            for column, label, color, ls in CURVES:
                band = _band(fs, column) if fs else None
                if band is None:
                    continue
                x, m, s = band
                ax.plot(x, m * scale, color=color, linestyle=ls, linewidth=1.0, label=label)
                ax.fill_between(x, (m - s) * scale, (m + s) * scale, color=color, alpha=0.15, linewidth=0)
            for _, run in cell.iterrows():  # each seed: the selected epoch (valid) and the ORACLE best epoch
                if not pd.isna(run["selected_epoch"]) and not pd.isna(run["test_selected"]):
                    ax.plot(run["selected_epoch"] + 1, run["test_selected"] * scale, linestyle="none", marker="^",
                            markersize=3.5, color="black", label="test at the validation-selected epoch")
                if not pd.isna(run["best_epoch"]) and not pd.isna(run["test_best"]):
                    ax.plot(run["best_epoch"] + 1, run["test_best"] * scale, linestyle="none", marker="x",
                            markersize=4, color="black", label="ORACLE: best test epoch")
            if not fs:
                ax.text(0.5, 0.5, "no runs", transform=ax.transAxes, ha="center", va="center", color="0.5")
            if i == 0:
                ax.set_title(c)
            if j == 0:
                ax.set_ylabel(f"{stack(r)}\n(%)", fontsize=7)
            if i == len(rows) - 1:
                ax.set_xlabel("epoch")
            ax.set_ylim(-2, 102)
            ax.xaxis.set_major_locator(epoch_ticks())
    handles, labels = legend_entries(axes)
    legend(fig, handles, labels, 2)
    caption = (f"{group.dataset} / {group.model}: learning curves per method (rows) and noise setting (columns): "
               f"{METRIC_TITLES.get(group.metric, group.metric).replace('test ', '', 1)} on the noisy training "
               "labels, the noisy validation split and the clean test set; dashed, over the corrupted training "
               "samples: the share predicted as their noisy label (memorised) and as their clean label; "
               f"{_over(group)} (band: ± std). ▲ each seed's epoch selected on validation; × each seed's ORACLE "
               "best test epoch (chosen on test labels: not a valid selection)." + _left_out(group))
    return [Plot(f"{group.stem}_learning_curves", caption, fig)]


# ---- method diagnostics -------------------------------------------------------------------------
def _diag_columns(frames: list[pd.DataFrame]) -> list[str]:
    cols: dict[str, None] = {}
    for f in frames:
        for c in f.columns:
            if c in STANDARD or c.startswith("test_") or pd.to_numeric(f[c], errors="coerce").notna().sum() == 0:
                continue
            cols[c] = None
    return list(cols)


def diagnostics(group: Group, cache: dict) -> list[Plot]:
    runs = group.runs
    plots = []
    setting_colors = noise_colors(group.cols)
    for r in group.rows_present:
        sub = runs[runs["row"] == r]
        frames = {d: _metrics(d, cache) for d in sub["run_dir"]}
        frames = {d: f for d, f in frames.items() if f is not None}
        columns = _diag_columns(list(frames.values()))
        if not columns:
            continue
        panels = []
        for cols_, title, ylabel, ref in DIAG_PANELS:
            present = [c for c in cols_ if c in columns]
            if present:
                panels.append((present, title, ylabel, ref))
        known = {c for p, *_ in DIAG_PANELS for c in p}
        if {"mean_weight_clean", "mean_weight_corrupted"} <= set(columns):
            known.add("mean_weight")  # the mean over both: shown by its two parts
        panels += [([c], c, "value", None) for c in columns if c not in known]
        ncol = min(len(panels), 4)
        nrow = -(-len(panels) // ncol)
        fig = new_figure(COLUMN_WIDTH if ncol == 1 else min(TEXT_WIDTH, 0.4 + 1.8 * ncol), 0.8 + 1.7 * nrow)
        axes = fig.subplots(nrow, ncol, squeeze=False, sharex=True)
        for ax in axes.flat[len(panels):]:
            ax.set_visible(False)
        for ax, (present, title, ylabel, ref) in zip(axes.flat, panels):
            for column in present:
                bands = {c: _band([frames[d] for d in sub.loc[sub["col"] == c, "run_dir"] if d in frames], column)
                         for c in group.cols}
                bands = {c: b for c, b in bands.items() if b is not None}
                first = next(iter(bands.values()), None)
                if len(bands) > 1 and all(len(b[0]) == len(first[0]) and np.allclose(b[0], first[0])
                                          and np.allclose(b[1], first[1], equal_nan=True) for b in bands.values()):
                    bands = {SAME: first}  # e.g. a schedule: one line, not several drawn on top of each other
                ls = DIAG_STYLES.get(column, ("-", ""))[0]
                for c, (x, m, s) in bands.items():
                    color = "0.25" if c == SAME else setting_colors[c]
                    ax.plot(x, m, color=color, linestyle=ls, linewidth=1.0, label=c)
                    ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, linewidth=0)
            if ref is not None:
                ax.axhline(ref, color="0.4", linewidth=0.8, linestyle=":")
            ax.set_title(title)
            ax.set_ylabel(ylabel)
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(epoch_ticks())
        handles, labels = legend_entries(axes)
        if any(c in columns for c in DIAG_STYLES):
            from matplotlib.lines import Line2D

            for _column, (ls, lab) in DIAG_STYLES.items():
                handles.append(Line2D([], [], color="0.3", linestyle=ls, linewidth=1.0))
                labels.append(lab)
        legend(fig, handles, labels, 3)
        suptitle(fig, f"{r}: method diagnostics ({group.dataset} / {group.model})")
        caption = (f"{group.dataset} / {group.model}, {r}: the method's own per-epoch values from metrics.csv "
                   f"({', '.join(c for p, *_ in panels for c in p)}), one line per noise setting; {_over(group)} "
                   "(band: ± std). weight AUC: the probability that a clean sample's weight exceeds a corrupted "
                   "one's (0.5: no separation; uses the clean labels, for evaluation only)."
                   + _left_out(group))
        plots.append(Plot(f"{group.stem}_diagnostics_{_slug(r)}", caption, fig))
    return plots


# ---- per-sample weights (loader, AUC and per-class panel: noisybench.report.weights) ---------------
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


def sample_weight_histograms(group: Group) -> list[Plot]:
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
            for j, e in enumerate(epochs + [epochs[-1]] * per_class):
                ax = axes[i, j]
                w_all, bad_all, cls_all = _pooled([saved[d] for d in sub.loc[sub["col"] == c, "run_dir"] if d in saved],
                                                  e, j == len(epochs))
                if w_all and j == len(epochs):
                    class_panel(ax, np.concatenate(w_all), np.concatenate(bad_all), np.concatenate(cls_all))
                    if i == 0:
                        ax.set_title(f"by class, epoch {e + 1}")
                    ax.set_ylabel(f"share with w < {LOW}", fontsize=7)
                    if i == len(cols) - 1:
                        ax.set_xlabel("class (noisy label)")
                    continue
                if w_all:
                    w, bad = np.concatenate(w_all), np.concatenate(bad_all)
                    lo, hi = (float(w.min()), float(w.max())) if len(w) else (0.0, 1.0)
                    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 41)
                    for mask, color, lab in ((~bad, PALETTE[0], "clean samples"),
                                             (bad, PALETTE[3], "corrupted samples")):
                        if mask.any():
                            ax.hist(w[mask], bins=bins, density=True, histtype="stepfilled", alpha=0.3, color=color)
                            ax.hist(w[mask], bins=bins, density=True, histtype="step", color=color, linewidth=1.0,
                                    label=lab)
                    if bad.any() and (~bad).any():
                        ax.text(0.97, 0.93, f"AUC {auc(w[~bad], w[bad]):.2f}", transform=ax.transAxes,
                                ha="right", va="top", fontsize=6.5)
                else:
                    ax.text(0.5, 0.5, "not saved", transform=ax.transAxes, ha="center", va="center", color="0.5")
                ax.set_yticks([])
                if i == 0:
                    ax.set_title(f"after epoch {e + 1}")
                if j == 0:
                    ax.set_ylabel(f"{stack(c)}\ndensity", fontsize=7)
                if i == len(cols) - 1:
                    ax.set_xlabel("per-sample weight")
        handles, labels = legend_entries(axes)
        legend(fig, handles, labels, 2)
        suptitle(fig, f"{r}: per-sample weights ({group.dataset} / {group.model})")
        caption = (f"{group.dataset} / {group.model}, {r}: distribution of the per-sample weights of the clean and "
                   "the corrupted training samples (each sample's last weight in that epoch; seeds pooled; "
                   "sample_weights.npz), rows: noise setting, columns: epoch. AUC: the probability that a clean "
                   "sample's weight exceeds a corrupted one's (the clean labels are used for this plot only)."
                   + (f" Last column: per class (noisy label), the share of its clean (blue) and corrupted (red) "
                      f"samples with weight < {LOW} at the last drawn epoch; dotted: {STARVED}, above which a class's "
                      "clean samples count as starved." if per_class else "")
                   + _left_out(group))
        plots.append(Plot(f"{group.stem}_weights_{_slug(r)}", caption, fig))
    return plots


# ---- realised transition matrices ---------------------------------------------------------------
def transition_matrices(group: Group) -> list[Plot]:
    runs = group.runs
    mats = []
    for c in group.cols:
        for d in runs.loc[(runs["col"] == c) & ~runs["clean"], "run_dir"]:
            try:
                noise = json.loads((Path(d) / "noise.json").read_text())
                T = np.array(noise["transition_matrix"], dtype=float)
            except (OSError, ValueError, KeyError, TypeError):
                continue
            if T.ndim == 2 and T.shape[0] == T.shape[1] and T.size:
                mats.append((c, T, noise.get("class_names"), noise.get("realized_noise_rate")))
                break
    if not mats:
        return []
    ncol = min(3, len(mats))
    nrow = -(-len(mats) // ncol)
    side = 2.25 if ncol > 1 else COLUMN_WIDTH - 0.4
    fig = new_figure(min(TEXT_WIDTH, side * ncol + 0.5), side * nrow + 0.3)
    axes = fig.subplots(nrow, ncol, squeeze=False)
    im = None
    for ax, (c, T, names, realised) in zip(axes.flat, mats):
        k = len(T)
        im = draw_heatmap(ax, T, names, fontsize=max(4, min(6.5, 60 / k)), colorbar=False, percent=True)
        ax.tick_params(labelsize=max(4, min(7, 70 / k)))
        ax.grid(False)
        ax.set_title(c + (f" (realised {realised:.3f})" if realised is not None else ""))
    for ax in axes.flat[len(mats):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="P(noisy label | true class)")
    caption = (f"{group.dataset} / {group.model}: the realised transition matrix T[true, noisy] of each noise "
               "setting (from the noise.json of one of its runs; rows sum to 1; cell values in %).")
    return [Plot(f"{group.stem}_transition_matrices", caption, fig)]


# ---- all figures --------------------------------------------------------------------------------
def figures(df: pd.DataFrame) -> list[Plot]:
    """Every figure of the runs in `df` (a `records.load_runs` table), one table set after
    another."""
    from matplotlib import rc_context

    cache: dict = {}
    out: list[Plot] = []
    for group in groups(df):
        with rc_context(STYLE):
            out += accuracy_vs_noise(group)
            out += learning_curves(group, cache)
            out += diagnostics(group, cache)
            out += sample_weight_histograms(group)
            out += transition_matrices(group)
    return out


def save(plot: Plot, out_dir: Path, formats: Iterable[str] = FORMATS, dpi: int | None = None) -> list[Path]:
    """Write `plot` as each format into `out_dir` (atomically); returns the paths."""
    from matplotlib import rc_context

    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"{plot.name}.{fmt}"
        if fmt == "png":
            atomic_write_bytes(path, png_bytes(plot, dpi or STYLE["savefig.dpi"]))
        else:
            meta = {"CreationDate": None} if fmt == "pdf" else None  # the same runs give the same PDF
            with rc_context(STYLE), atomic_output(path) as f:
                plot.figure.savefig(f, format=fmt, dpi=dpi or STYLE["savefig.dpi"], metadata=meta)
        paths.append(path)
    return paths


def png_bytes(plot: Plot, dpi: int = 150) -> bytes:
    """The figure as a PNG of 256 colours (no dithering): a third of the size of the full-colour file,
    the same to the eye (flat colours and anti-aliased lines)."""
    from matplotlib import rc_context
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    with rc_context(STYLE):
        plot.figure.savefig(buf, format="png", dpi=dpi, metadata={"Software": None})
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    method = getattr(Image, "Quantize", Image).MEDIANCUT  # Pillow < 9.1: the module-level constants
    dither = getattr(Image, "Dither", Image).NONE
    image.quantize(colors=256, method=method, dither=dither).save(out, "png", optimize=True)
    return out.getvalue()
