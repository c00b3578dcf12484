"""The best and second-best value of each table column, as a paper marks them (bold, underlined).

The rule, per column (a noise setting) of one table, over the rows that have a value there:
- best (bold): the highest mean, and every mean within one standard deviation of it (the best cell's std
  over seeds: those rows are not told apart by the runs); ties included;
- second (underlined): the highest mean of the rows that are not bold, and its ties;
- means are compared as printed (two decimals, in %), so equal-looking cells get the same mark; a column
  with fewer than two ranked rows gets no mark;
- rows that learnt from clean labels (`[ORACLE: clean labels]`) are not ranked: an upper bound, not a rival;
  nor are a method's own scores shown beside the detection score (`[weight AUC]`): another quantity.
The scores are higher-is-better unless a table says otherwise (`table.attrs["lower_is_better"]`, set by
`tables.tables` for the kinds in `LOWER_IS_BETTER`: there the lowest mean is best and "within one std"
counts upwards). `noisybench report --no-marks` turns the marks off.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

MARKS_NOTE = ("Bold: the best mean of each column and every mean within one std (the best cell's) of it; "
              "underlined: the best of the other rows; rows that learnt from clean labels (and a method's own weight "
              "AUC beside the detection score) are not ranked.")
UNRANKED = ("[ORACLE: clean labels]", "[weight AUC]")  # rows (by a label part) that are not ranked
LOWER_IS_BETTER = {"detection_lowk"}  # table kinds (`report -k`) whose scores are better when lower


class Stats(NamedTuple):
    """One cell: mean and std over its runs (in %), n runs, how many of them diverged, the tuned choice."""
    mean: float
    std: float
    n: int
    diverged: int = 0
    chosen: str = ""


def cell_stats(values: pd.Series, diverged: pd.Series | None = None, chosen: str = "") -> Stats:
    """The statistics of one cell's scores (a fraction; NaN: left out); std 0 for one run."""
    n_div = int(diverged[values.notna()].sum()) if diverged is not None else 0
    v = values.dropna().astype(float) * 100
    if v.empty:
        return Stats(math.nan, math.nan, 0, n_div, chosen)
    return Stats(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v), n_div, chosen)


def column_marks(stats: dict[str, Stats], lower_is_better: bool = False) -> dict[str, str]:
    """{row: "best" | "second"} for one column's cells {row: Stats} (rows without a mark left out)."""
    sign = -1.0 if lower_is_better else 1.0  # rank -mean: the same rule for lower-is-better scores
    ranked = {r: (round(sign * s.mean, 2), round(s.std, 2)) for r, s in stats.items()
              if s.n and math.isfinite(s.mean) and not any(u in r for u in UNRANKED)}
    if len(ranked) < 2:
        return {}
    top = max(m for m, _ in ranked.values())
    spread = max(sd for m, sd in ranked.values() if m == top)
    out = {r: "best" for r, (m, _) in ranked.items() if m >= round(top - spread, 2)}
    rest = [m for r, (m, _) in ranked.items() if r not in out]
    if rest:
        second = max(rest)
        out.update({r: "second" for r, (m, _) in ranked.items() if r not in out and m == second})
    return out


def table_marks(table: pd.DataFrame) -> dict[tuple[str, str], str]:
    """{(row, column): mark} of a table from `tables.tables` (its `attrs["stats"]`)."""
    stats = table.attrs.get("stats", {})
    out = {}
    for c in table.columns:
        col = {r: stats[(r, c)] for r in table.index if (r, c) in stats}
        out.update({(r, c): m for r, m in column_marks(col, table.attrs.get("lower_is_better", False)).items()})
    return out


def mark_text(text: str, mark: str | None, bold: str, second: str) -> str:
    """`text` (a cell as printed: `51.00 ± 1.00 (3)`) with its mean wrapped: `bold`/`second` are format
    strings with one `{}`, e.g. `**{}**`."""
    if not mark or not text or text[0] not in "-0123456789":
        return text
    mean, _, rest = text.partition(" ")
    return (bold if mark == "best" else second).format(mean) + (" " + rest if rest else "")
