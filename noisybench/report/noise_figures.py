"""Figures over the noise settings: the test metric against the noise rate (also tuned per cell, as
`report --tune`), and the realised transition matrices.

- accuracy_vs_noise: one line per table row, mean ± std band over seeds (a single noise level, or settings
  without a rate such as CIFAR-N label sets: points with error bars, side by side); last epoch and selected
  on the (noisy) validation split side by side; dotted: each row's clean (noise 0) level; dash-dotted: the
  chance level (1/K for accuracy, 0 for MCC) when it lies near the data. The legend gives each row's n.
- accuracy_vs_noise_tuned: the same with the tuned keys chosen per (row, noise setting) by the best mean
  validation score over seeds (val_last for the last epoch, val_selected for the selected one), the chosen
  value written at each point.
- transition_matrices: the realised T[true, noisy] of each noise setting (noise.json), in %, the numbers
  black or white by the luminance of their cell.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from noisybench.noise.report import draw_heatmap
from noisybench.report.draw import COLUMN_WIDTH, TEXT_WIDTH, legend, new_figure
from noisybench.report.groups import (
    SCALE,
    Group,
    Plot,
    _slug,
    fit_percent_axis,
    left_out,
    mean_std,
    n_label,
    num,
    num_classes,
    over,
    row_styles,
    ylabel,
)
from noisybench.report.runfiles import read_noise

KIND_PANELS = (("test_last", "last epoch", "last"), ("test_selected", "selected on validation", "selected"))
CHANCE = {"acc": "1/K", "mcc": "0"}  # metrics with a chance level the figure can draw


def _panels(group: Group) -> list[tuple[str | None, pd.DataFrame]]:
    """(noise family, its noisy runs) per figure: one per family with a rate; settings without one together."""
    noisy = group.runs[~group.runs["clean"]]
    if noisy.empty:
        return []
    order = noisy.sort_values("col", key=lambda c: c.map(group.cols.index))["family"]
    numeric = [f for f in dict.fromkeys(order) if noisy.loc[noisy["family"] == f, "rate"].notna().all()]
    panels: list = [(f, noisy[noisy["family"] == f]) for f in numeric]
    categorical = noisy[~noisy["family"].isin(numeric)]
    if not categorical.empty:
        panels.append((None, categorical))
    return panels


def _ticks(group: Group, family: str | None, sub: pd.DataFrame) -> list[tuple[float, str]]:
    has_clean = bool(group.runs["clean"].any())
    if family is not None:
        return [(x, f"{100 * x:g}") for x in sorted(set(sub["rate"]) | ({0.0} if has_clean else set()))]
    cats = ["clean"] * has_clean + [c for c in group.cols if c in set(sub["col"])]
    return list(enumerate(cats))


def _points(group: Group, family: str | None, ticks: list, column: str, kind: str) -> dict[str, list]:
    """Per row: [(x, mean, std, n, chosen setting)] of `column` (the runs chosen for `kind` when tuned)."""
    runs = group.picked(kind).runs
    out = {}
    for r in group.rows_present:
        mine = runs[runs["row"] == r]
        pts = []
        for x, lab in ticks:
            if family is not None:
                sel = mine[(mine["family"] == family) & (mine["rate"] == x) & ~mine["clean"]]
                if sel.empty and x == 0.0:
                    sel = mine[mine["clean"]]
            else:
                sel = mine[mine["clean"]] if lab == "clean" else mine[(mine["col"] == lab) & ~mine["clean"]]
            m, s, n = mean_std(num(sel[column]) * SCALE)
            if n:
                chosen = sel["chosen"].iloc[0] if "chosen" in sel else ""
                pts.append((x, m, s, n, chosen))
        out[r] = pts
    return out


def _chance(group: Group, ax) -> str:
    """Draw the chance level when it lies near the data (within half the data's span below it); return
    the caption's words for it."""
    if group.metric not in CHANCE:
        return ""
    k = num_classes(group) if group.metric == "acc" else None
    if group.metric == "acc" and not k:
        return ""
    level = 100.0 / k if k else 0.0
    what = f"chance level (1/K = {level:.3g} %, K = {k})" if k else "chance level (MCC 0)"
    lo, hi = ax.get_ylim()
    if level < lo - 0.5 * (hi - lo):
        return f"; the {what} lies far below the axis and is not drawn"
    for a in ax.figure.axes:
        a.axhline(level, color="0.45", linestyle="-.", linewidth=0.8, label="chance level")
    return f"; dash-dotted: the {what}"


def _draw_panel(ax, group: Group, pts: dict, labels: dict, styles: dict, points_only: bool) -> None:
    rows = group.rows_present
    for k, r in enumerate(rows):
        if not pts[r]:
            continue
        st = styles[r]
        x, m, s = (np.array([p[i] for p in pts[r]], dtype=float) for i in range(3))
        if points_only:  # settings without a rate, or one level only: points with error bars, side by side
            x = x + 0.5 * (k - (len(rows) - 1) / 2) / max(1, len(rows))
            ax.errorbar(x, m, yerr=s, color=st["color"], linestyle="none", marker=st["marker"],
                        capsize=2.5, elinewidth=0.9, label=labels[r])
        else:
            ax.plot(x, m, color=st["color"], linestyle=st["linestyle"], marker=st["marker"], label=labels[r])
            ax.fill_between(x, m - s, m + s, color=st["color"], alpha=0.15, linewidth=0)
        for xi, mi, p in zip(x, m, pts[r]) if group.tuned else ():
            if not p[4]:  # a method without the tuned key (CE beside a tuned method.sharpness): nothing chosen
                continue
            value = p[4].split("=", 1)[1] if len(group.tuned) == 1 else p[4]
            ax.annotate(value, (xi, mi), textcoords="offset points", xytext=(0, 3.5), ha="center",
                        va="bottom", fontsize=5.5, color=st["color"])


def _clean_levels(ax, group: Group, styles: dict, kind: str, column: str) -> None:
    runs = group.picked(kind).runs
    for r in group.rows_present:
        cm, _, cn = mean_std(num(runs.loc[(runs["row"] == r) & runs["clean"], column]) * SCALE)
        if cn:
            ax.axhline(cm, color=styles[r]["color"], linestyle=":", linewidth=0.8, alpha=0.8)


def _one_figure(group: Group, family: str | None, sub: pd.DataFrame) -> tuple[object, str]:
    """One accuracy-vs-noise figure (last epoch | selected); returns it and the caption's extra words."""
    from matplotlib.lines import Line2D

    styles = row_styles(group)
    ticks = _ticks(group, family, sub)
    points_only = family is None or len(ticks) == 1
    pts = {kind: _points(group, family, ticks, column, kind) for column, _, kind in KIND_PANELS}
    labels = {r: f"{r} ({n_label(p[3] for kind in pts for p in pts[kind][r])})" for r in group.rows_present}
    fig = new_figure(COLUMN_WIDTH * 2 if len(group.rows_present) > 6 else COLUMN_WIDTH, 2.9)  # one column
    axes = fig.subplots(1, 2, sharey=True)
    clean = bool(group.runs["clean"].any()) and family is not None and len(ticks) > 1
    for ax, (column, title, kind) in zip(axes, KIND_PANELS):
        ax.set_xticks([t for t, _ in ticks], [lab for _, lab in ticks],
                      rotation=0 if family is not None else 30, ha="center" if family is not None else "right")
        _draw_panel(ax, group, pts[kind], labels, styles, points_only)
        if group.tuned:
            ax.margins(y=0.1)  # room for the chosen values written above the points
        if clean:
            _clean_levels(ax, group, styles, kind, column)
        ax.set_title(title)
        ax.set_xlabel("noise rate (%)" if family is not None else "noise setting")
        if len(ticks) == 1:
            ax.set_xlim(ticks[0][0] - 0.5, ticks[0][0] + 0.5)
    axes[0].set_ylabel(ylabel(group.metric))
    chance = _chance(group, axes[0])
    fit_percent_axis(axes[0], group.metric)
    handles, labs = axes[0].get_legend_handles_labels()
    rows_first = sorted(range(len(labs)), key=lambda i: labs[i] not in labels.values())  # stable: rows, then lines
    handles, labs = [handles[i] for i in rows_first], [labs[i] for i in rows_first]
    if clean:
        handles.append(Line2D([], [], color="0.3", linestyle=":", linewidth=0.8))
        labs.append("clean (noise 0) level")
    if group.tuned:
        handles.append(Line2D([], [], linestyle="none"))
        labs.append(f"numbers: chosen {', '.join(group.tuned)}")
    legend(fig, handles, labs, 3)
    extra = ("; dotted: each row's clean (noise 0) level" if clean else "") + chance
    return fig, extra


def _tuned_words(group: Group) -> str:
    keys = ", ".join(group.tuned)
    cols = [c for c in group.cols if c in set(group.runs["col"])]
    chosen = []
    for r in group.rows_present:
        per = []
        for _, _, kind in KIND_PANELS:
            runs = group.picked(kind).runs
            mine = dict(zip(runs.loc[runs["row"] == r, "col"], runs.loc[runs["row"] == r, "chosen"]))
            values = [mine[c].split("=", 1)[1] if len(group.tuned) == 1 else mine[c] for c in cols if mine.get(c)]
            per.append(" / ".join(values))
        if any(per):  # (a row without the tuned key, e.g. CE beside a tuned method.sharpness: nothing chosen)
            chosen.append(f"{r}: {per[0]} (last), {per[1]} (selected)")
    return (f" {keys} chosen per (row, noise setting) as `noisybench report --tune` chooses: the best mean "
            "validation score over seeds (val_last for the left panel, val_selected for the right); the chosen "
            f"value is written at each point. Chosen {keys} for {' / '.join(cols)}: {'; '.join(chosen)}.")


def accuracy_vs_noise(group: Group) -> list[Plot]:
    panels = _panels(group)
    plots = []
    for family, sub in panels:
        fig, extra = _one_figure(group, family, sub)
        suffix = ("" if len(panels) == 1 else "_" + (_slug(family) if family else "other")) + (
            "_tuned" if group.tuned else "")
        what = f"nominal {family} noise rate" if family else "noise setting"
        bars = "band" if family and len(_ticks(group, family, sub)) > 1 else "error bars"
        caption = (f"{group.dataset} / {group.model}: {ylabel(group.metric)} vs {what}, at the last epoch (left) "
                   f"and at the epoch selected on the noisy validation split (right); {over(group)} ({bars}: "
                   f"± std; legend: n, the number of runs behind each point){extra}."
                   + (_tuned_words(group) if group.tuned else "") + left_out(group))
        title = f"{group.dataset} / {group.model}: " + (f"{family} label noise, nominal rate" if family else
                                                         "label noise settings")
        title += f" (tuned: {', '.join(group.tuned)})" if group.tuned else ""
        plots.append(Plot(f"{group.stem}_accuracy_vs_noise{suffix}", caption, fig, title))
    return plots


# ---- realised transition matrices ---------------------------------------------------------------
def _matrices(group: Group) -> list[tuple]:
    runs = group.runs
    mats = []
    for c in group.cols:
        for d in runs.loc[(runs["col"] == c) & ~runs["clean"], "run_dir"]:
            noise = read_noise(d)  # None: no noise.json, or one that is not a square matrix of numbers
            if noise is not None:
                mats.append((c, *noise))
                break
    return mats


def transition_matrices(group: Group) -> list[Plot]:
    mats = _matrices(group)
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
        ax.set_title(c + (f" (realised {100 * realised:.1f} %)" if realised is not None else ""))
    for ax in axes.flat[len(mats):]:
        ax.set_visible(False)
    fig.colorbar(im, ax=axes, shrink=0.8, label="P(noisy label | true class) (%)")
    caption = (f"{group.dataset} / {group.model}: the realised transition matrix T[true, noisy] of each noise "
               "setting (from the noise.json of one of its runs; rows sum to 100 %; cell values and colour bar "
               "in %; cells under 0.5 % left blank).")
    return [Plot(f"{group.stem}_transition_matrices", caption, fig,
                 f"{group.dataset}: realised transition matrices")]
