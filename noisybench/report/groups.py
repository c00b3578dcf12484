"""What a figure draws: the runs of one table set (dataset, model, metric) with the report's row and column
labels (`Group`), optionally with tuned keys chosen per cell as `report --tune` chooses them, and the
helpers every figure family shares: line styles per row, means and stds over seeds, the `n` behind a
band, per-epoch bands from metrics.csv, and the provenance line of the caption file.
"""
from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd

from noisybench.report.draw import LINESTYLES, MARKERS, METHOD_COLORS, PALETTE
from noisybench.report.layout import (
    CONFIG_COL,
    METRIC_TITLES,
    TUNE_SCORE,
    check_replicates,
    chosen_text,
    config_value,
    table_layout,
    tuned_choice,
)
from noisybench.report.runfiles import read_metrics
from noisybench.rundir import read_json_object

# the kinds a tuned figure chooses per cell (as the report's tables): accuracy vs noise draws both; every
# other figure draws the runs chosen for the validation-selected table
TUNED_KINDS = ("last", "selected")


class Plot(NamedTuple):
    name: str  # file stem
    caption: str
    figure: object  # matplotlib.figure.Figure
    title: str = ""  # drawn only with `noisybench plot --titles` (papers put it in the caption)
    runs: str = ""  # which runs the figure draws (the caption file's provenance line)


class Group(NamedTuple):
    """The runs of one table set (dataset, model, metric), with the report's labels."""
    dataset: str
    model: str
    metric: str
    stem: str  # file-name prefix
    runs: pd.DataFrame  # + row, col, family, rate, clean (+ pick_last, pick_selected, chosen when tuned)
    rows: list[str]  # row labels in table order
    cols: list[str]  # column labels in table order
    seeds: list[int]
    diverged: list[str]  # run dirs left out
    tuned: tuple[str, ...] = ()  # the tuned keys' short names (empty: not tuned)

    @property
    def rows_present(self) -> list[str]:
        """The row labels that have runs (diverged ones left out), in table order."""
        present = set(self.runs["row"])
        return [r for r in self.rows if r in present]

    def picked(self, kind: str = "selected") -> Group:
        """The group with only the runs chosen per cell for `kind` (all runs when not tuned)."""
        if not self.tuned:
            return self
        return self._replace(runs=self.runs[self.runs[f"pick_{kind}"]].reset_index(drop=True))


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "_", s.replace("=", "-")).strip("_") or "x"


def _rate(v) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def _families(g: pd.DataFrame) -> tuple[list, list, list]:
    fam, rates, clean = [], [], []
    for t, r, c in zip(g["noise_type"], g["noise_rate"], g["col"]):
        r = _rate(r)
        none = t in (None, "none") or (isinstance(t, float) and math.isnan(t))
        rates.append(0.0 if none else r)
        clean.append(none or r == 0.0)
        fam.append("none" if none else c if r is None else c.replace(f"{t} {r:g}", str(t), 1))
    return fam, rates, clean


def _tune(g: pd.DataFrame, tune: list[str], names: dict) -> tuple[str, ...]:
    """Mark in `g` the runs of the setting chosen per cell for each kind (`report --tune`'s rule: the best
    mean validation score over seeds, diverged runs included as the report counts them)."""
    configs = [json.loads(c) for c in g[CONFIG_COL]]
    tuned = [t for t in tune if any(t in c for c in configs)]
    if not tuned:
        return ()
    g["choice"] = [tuple(config_value(c.get(t)) for t in tuned) for c in configs]
    g["chosen"] = [chosen_text(names, tuned, ch) for ch in g["choice"]]
    check_replicates(g, list(g["row"]), list(g["col"]), list(g["choice"]))
    for kind in TUNED_KINDS:
        g["score"] = g[TUNE_SCORE[kind]]
        best = {cell: tuned_choice(sub) for cell, sub in g.groupby(["row", "col"], sort=False)}
        g[f"pick_{kind}"] = [best[(r, c)] == ch for r, c, ch in zip(g["row"], g["col"], g["choice"])]
    return tuple(names[t] for t in tuned)


def groups(df: pd.DataFrame, tune: Iterable[str] = ()) -> list[Group]:
    """The report's table sets of `df` (from `records.load_runs`), with row/column labels per run; with
    `tune`, rows without the tuned keys and each cell's chosen setting marked (`Group.picked`)."""
    tune = list(tune)
    out = []
    pairs = df.groupby(["dataset", "model"])["metric"].nunique()
    for (dataset, model, metric), group in df.groupby(["dataset", "model", "metric"]):
        rows, cols, row_order, col_order, names, *_ = table_layout(group, tune)
        g = group.copy()
        g["row"], g["col"] = rows, cols
        tuned = _tune(g, tune, names)
        if not tuned:
            check_replicates(group, rows, cols)  # the report refuses to average such runs; so do the figures
        g["family"], g["rate"], g["clean"] = _families(g)
        diverged = g["diverged"].astype(bool) if "diverged" in g else pd.Series(False, index=g.index)
        stem = f"{dataset}_{model}" + (f"_{metric}" if pairs[(dataset, model)] > 1 else "")
        out.append(Group(str(dataset), str(model), str(metric), _slug(stem), g[~diverged].reset_index(drop=True),
                         row_order, col_order, sorted(int(s) for s in g["seed"].unique()),
                         sorted(g.loc[diverged, "run_dir"].tolist()), tuned))
    return out


# ---- styles and statistics ----------------------------------------------------------------------
def row_styles(group: Group) -> dict[str, dict]:
    """Colour per method (fixed for the known ones), line style and marker per variant of that method
    (e.g. its lr values)."""
    method_of = {r: group.runs.loc[group.runs["row"] == r, "method"].iloc[0] for r in group.rows_present}
    present = list(dict.fromkeys(method_of.values()))
    colors = {m: c for m, c in METHOD_COLORS.items() if m in present}  # the known methods keep theirs
    # the others take the colours no method of this figure uses, in turn (the palette's 8 before any repeats)
    spare = [c for c in PALETTE if c not in colors.values()]
    for m in present:
        if m not in colors:
            colors[m] = spare[sum(k not in METHOD_COLORS for k in colors) % len(spare)]
    colors.update({m: c for m, c in METHOD_COLORS.items() if m not in colors})  # (order of the marker index)
    variant: dict[str, int] = {}
    styles = {}
    for r, m in method_of.items():
        i = variant[m] = variant.get(m, -1) + 1
        k = list(colors).index(m)
        styles[r] = {"color": colors[m], "linestyle": LINESTYLES[i % len(LINESTYLES)],
                     "marker": MARKERS[(k + i) % len(MARKERS)]}
    return styles


SCALE = 100.0  # every metric is shown in % (MCC as x100), as in the tables


def ylabel(metric: str) -> str:
    return METRIC_TITLES.get(metric, f"test {metric}")


def num(values: pd.Series) -> pd.Series:
    return pd.to_numeric(values, errors="coerce")  # None (e.g. no validation split: no selected epoch) -> NaN


def mean_std(values: Iterable[float]) -> tuple[float, float, int]:
    v = np.array([x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))], dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def n_label(counts: Iterable[int]) -> str:
    """`n=3`, or `n=2–3` when the points of a line rest on different numbers of runs."""
    c = sorted({int(x) for x in counts if x})
    if not c:
        return "n=0"
    return f"n={c[0]}" if len(c) == 1 else f"n={c[0]}–{c[-1]}"


def over(group: Group) -> str:
    return f"mean ± std over seeds {group.seeds}"


def left_out(group: Group) -> str:
    if not group.diverged:
        return ""
    shown = ", ".join(Path(d).name for d in group.diverged[:3]) + (", ..." if len(group.diverged) > 3 else "")
    return f" Left out: {len(group.diverged)} diverged run(s) ({shown})."


def num_classes(group: Group) -> int | None:
    """The number of classes of the group's runs (result.json `num_classes`; None when no run says)."""
    for d in group.runs["run_dir"]:
        record = read_json_object(Path(d) / "result.json")[0] or {}  # (the report read it; it may have changed)
        k = record.get("num_classes")
        if isinstance(k, int) and not isinstance(k, bool) and k > 1:
            return k
    return None


def provenance(group: Group) -> str:
    """Which runs a figure draws: their directories' parents (the sweep directories), methods, seeds and
    how many runs; for the caption file."""
    runs = group.runs
    dirs = sorted({str(Path(d).parent) for d in runs["run_dir"]})
    shown = ", ".join(f"`{d}`" for d in dirs[:4]) + (f" and {len(dirs) - 4} more" if len(dirs) > 4 else "")
    methods = ", ".join(dict.fromkeys(str(m) for m in runs["method"]))
    tuned = f"; tuned per cell: {', '.join(group.tuned)}" if group.tuned else ""
    return (f"{len(runs)} finished runs under {shown}; methods {methods}; seeds {group.seeds}; "
            f"{len(group.rows_present)} rows x {len(set(runs['col']))} noise settings{tuned}.")


# ---- per-epoch values (metrics.csv) -------------------------------------------------------------
def metrics_frame(run_dir: str, cache: dict) -> pd.DataFrame | None:
    """The run's metrics.csv (None: absent, unreadable or of another shape; noisybench.report.runfiles)."""
    return read_metrics(run_dir, cache)


def epoch_band(frames: list[pd.DataFrame], column: str):
    """Per epoch: (epochs counted from 1, mean, std, n) of `column` over the runs that logged it."""
    parts = [f[["epoch", column]].dropna() for f in frames if column in f]
    parts = [p for p in parts if not p.empty]
    if not parts:
        return None
    allv = pd.concat(parts)
    allv[column] = pd.to_numeric(allv[column], errors="coerce")
    stats = allv.dropna().groupby("epoch")[column].agg(["mean", "std", "count"]).sort_index()
    if stats.empty:
        return None
    return (stats.index.to_numpy() + 1, stats["mean"].to_numpy(), stats["std"].fillna(0.0).to_numpy(),
            stats["count"].to_numpy())


POINT_MARKERS = {"-": "o", "--": "s", "-.": "^", ":": "D"}


def epoch_axis(ax) -> None:
    """Whole epochs on the x axis; a single epoch centred with one tick (not 0.95 ... 1.05)."""
    from noisybench.report.draw import epoch_ticks

    ax.xaxis.set_major_locator(epoch_ticks())
    lo, hi = ax.get_xlim()
    if hi - lo < 2:
        c = round((lo + hi) / 2)
        ax.set_xlim(c - 1, c + 1)


def draw_band(ax, x, m, s, color, label: str | None = None, **line) -> None:
    """A mean line with its ± std band; a single point gets a visible error bar instead (a band of one
    point has no width)."""
    x, m, s = np.asarray(x, dtype=float), np.asarray(m, dtype=float), np.asarray(s, dtype=float)
    if len(x) == 1:  # the marker tells the line styles apart (a point has no dashes)
        marker = line.get("marker") or POINT_MARKERS.get(line.get("linestyle", "-"), "o")
        ax.errorbar(x, m, yerr=s, color=color, capsize=2.5, elinewidth=0.9, label=label, marker=marker,
                    linestyle="none")
        return
    ax.plot(x, m, color=color, label=label, **line)
    ax.fill_between(x, m - s, m + s, color=color, alpha=0.15, linewidth=0)


def fit_percent_axis(ax, metric: str, pad: float = 0.04) -> None:
    """Fit a % axis to what is drawn (matplotlib's autoscale), never far past the metric's range (0 to
    100; -100 to 100 for MCC)."""
    bottom = -100.0 if metric == "mcc" else 0.0
    lo, hi = ax.get_ylim()
    span = max(hi - lo, 1e-9)
    ax.set_ylim(max(lo, bottom - pad * span), min(hi, 100 + pad * span))
