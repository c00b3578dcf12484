"""Every output format by name, and `write_report`: summary.csv plus the tables in each format."""
from __future__ import annotations

from collections.abc import Iterable
from html import escape
from pathlib import Path

import pandas as pd

from noisybench.report.html import to_html
from noisybench.report.latex import to_latex
from noisybench.report.layout import CONFIG_COL
from noisybench.report.records import left_out_note, load_runs
from noisybench.report.tables import DEFAULT_KINDS, to_csv, to_markdown
from noisybench.utils import atomic_write_text

WRITERS = {"md": ("table.md", to_markdown), "csv": ("table.csv", to_csv), "latex": ("table.tex", to_latex),
           "html": ("report.html", to_html)}


def write_report(paths: Iterable[Path | str], out_dir: Path, formats: Iterable[str] = ("md",),
                 kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = (), marks: bool = True) -> pd.DataFrame:
    """summary.csv (one row per counted run) plus the tables in each format, written atomically; the
    Markdown and LaTeX tables end with the runs left out (failed, unfinished, duplicates). `marks`: each
    column's best mean bold, the second underlined (not in the CSV)."""
    df, left_out = load_runs(paths)
    note = left_out_note(left_out)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "summary.csv", df.drop(columns=[CONFIG_COL], errors="ignore").to_csv(index=False))
    for fmt in formats:
        filename, writer = WRITERS[fmt]
        text = writer(df, kinds, tune, marks) if not df.empty else "No finished runs.\n"
        if fmt == "md":
            text += f"\n{note}\n"
        elif fmt == "latex":
            text += f"% {note}\n"
        elif fmt == "html":
            text = text.replace("</body>", f"<p class=\"note\">{escape(note)}</p></body>")
        atomic_write_text(out_dir / filename, text)
    return df
