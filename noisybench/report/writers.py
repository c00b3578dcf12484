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
    column's best mean bold, the second underlined (not in the CSV). When the tables cannot be made (e.g.
    two runs of one cell share a seed), no table file of an earlier call is left in `out_dir` to pass for
    the current one: they are removed, and the error is raised."""
    df, left_out = load_runs(paths)
    note = left_out_note(left_out)
    out_dir = Path(out_dir)
    atomic_write_text(out_dir / "summary.csv", df.drop(columns=[CONFIG_COL], errors="ignore").to_csv(index=False))
    texts = {}
    try:
        for fmt in formats:  # every table made before any is written: all of this call's, or none
            filename, writer = WRITERS[fmt]
            text = writer(df, kinds, tune, marks) if not df.empty else "No finished runs.\n"
            texts[filename] = _with_note(fmt, text, note)
    except Exception:
        remove_tables(out_dir)
        raise
    for filename, text in texts.items():
        atomic_write_text(out_dir / filename, text)
    return df


def _with_note(fmt: str, text: str, note: str) -> str:
    if fmt == "md":
        return text + f"\n{note}\n"
    if fmt == "latex":
        return text + f"% {note}\n"
    if fmt == "html":
        return text.replace("</body>", f"<p class=\"note\">{escape(note)}</p></body>")
    return text


def remove_tables(out_dir: Path) -> list[Path]:
    """Remove the table files (every format's) in `out_dir`, as stale; returns those removed."""
    removed = []
    for filename, _ in WRITERS.values():
        path = Path(out_dir) / filename
        if path.is_symlink() or path.is_file():
            path.unlink()
            removed.append(path)
    return removed
