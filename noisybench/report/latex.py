"""The tables as LaTeX for a paper: booktabs rules, every special character escaped (a method, dataset or
noise name may hold `& % $ # _ { } ~ ^ \\`), compact cells that fit a two-column paper, and each column's
best mean bold and the second underlined (`noisybench.report.marks`).

A cell is `51.00{\\scriptsize ±1.41}`: the mean, the std over seeds in small type, and the number of runs
only where it differs from the table's usual n (named in the caption). Needs `\\usepackage{booktabs}`;
nothing else beyond LaTeX itself (pdflatex, xelatex, lualatex or tectonic).
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import pandas as pd

from noisybench.report.marks import MARKS_NOTE, Stats, table_marks
from noisybench.report.tables import DEFAULT_KINDS, tables

# LaTeX's special characters and the Unicode the tables print, as text-mode LaTeX (one pass, so the
# replacement's own backslashes and braces are never escaped again)
_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
            "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "<": r"\textless{}",
            ">": r"\textgreater{}", "|": r"\textbar{}", "±": r"$\pm$", "–": "--", "—": "---", "×": r"$\times$",
            "→": r"$\rightarrow$", "λ": r"$\lambda$", "≥": r"$\geq$", "≤": r"$\leq$", "\u00a0": "~"}
COLUMN_CHARS = 50  # about how many characters of \small text fit one column of a two-column paper (3.3 in)


def escape(text) -> str:
    """`text` as LaTeX text: every special character escaped."""
    return "".join(_ESCAPES.get(ch, ch) for ch in str(text))


def _parts(st: Stats | None, usual_n: int) -> tuple[str, list[str]]:
    """A cell's mean and its small-type parts (± std, n where unusual, diverged runs, the tuned value), as
    plain text."""
    if st is None or not st.n:
        return "--", []
    small = [f"±{st.std:.2f}"] if st.n > 1 else []
    notes = ([f"n={st.n}"] if st.n != usual_n else []) + ([f"{st.diverged} div."] if st.diverged else [])
    if notes:
        small.append("(" + ", ".join(notes) + ")")
    if st.chosen:  # one tuned key: its value only (the caption names the key)
        small.append(f"[{st.chosen.split('=', 1)[1] if st.chosen.count('=') == 1 else st.chosen}]")
    return f"{st.mean:.2f}", small


def _cell(st: Stats | None, mark: str | None, usual_n: int) -> str:
    mean, small = _parts(st, usual_n)
    mean = rf"\textbf{{{mean}}}" if mark == "best" else rf"\underline{{{mean}}}" if mark == "second" else mean
    return mean + (r"{\scriptsize\," + r"\,".join(escape(x) for x in small) + "}" if small else "")


def _width(t: pd.DataFrame, stats: dict, usual_n: int) -> float:
    """About how many characters of small text the table is wide (small type counted at 0.7)."""
    def cell(r, c) -> float:
        mean, small = _parts(stats.get((r, c)), usual_n)
        return len(mean) + 0.7 * (len(" ".join(small)) + bool(small))

    cols = [max([len(str(c)), *(cell(r, c) for r in t.index)]) + 1 for c in t.columns]
    return max(len(str(r)) for r in [*t.index, "method"]) + 1 + sum(cols)


def latex_table(title: str, t: pd.DataFrame, marks: bool = True) -> str:
    """One table of `tables.tables` as a LaTeX table float (booktabs)."""
    stats = t.attrs.get("stats", {})
    counts = Counter(s.n for s in stats.values() if s.n)
    usual_n = counts.most_common(1)[0][0] if counts else 0
    ranks = table_marks(t) if marks else {}
    env = "table*" if _width(t, stats, usual_n) > COLUMN_CHARS else "table"  # too wide: over both columns
    title = title.replace("mean ± std (n) over", "mean ± std over")  # n: once below, not in every cell
    caption = escape(title) + (f". n = {usual_n} runs per cell (other n in parentheses)" if usual_n else "")
    caption += (". " + escape(MARKS_NOTE) if marks else ".")
    lines = [rf"\begin{{{env}}}[t]", r"\centering", r"\small", r"\setlength{\tabcolsep}{4pt}",
             r"\caption{" + caption + "}", r"\begin{tabular}{l" + "r" * len(t.columns) + "}", r"\toprule",
             "method & " + " & ".join(escape(c) for c in t.columns) + r" \\", r"\midrule"]
    for r in t.index:
        cells = [_cell(stats.get((r, c)), ranks.get((r, c)), usual_n) for c in t.columns]
        lines.append(escape(r) + " & " + " & ".join(cells) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", rf"\end{{{env}}}", ""]
    return "\n".join(lines)


def to_latex(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = (),
             marks: bool = True) -> str:
    head = "% noisybench tables; in the preamble: \\usepackage{booktabs}\n"
    return head + "\n".join(latex_table(title, t, marks) for title, _, t in tables(df, kinds, tune))
