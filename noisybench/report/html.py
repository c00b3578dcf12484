"""The one-file HTML report (`noisybench report -f html`): per (dataset, model, metric) its tables
and its figures, the PNGs embedded as data: URIs, so the page reads offline."""
from __future__ import annotations

import base64
from collections.abc import Iterable
from html import escape

import pandas as pd

from noisybench import __version__
from noisybench.report.figures import figures, png_bytes
from noisybench.report.layout import METRIC_TITLES
from noisybench.report.marks import MARKS_NOTE, mark_text, table_marks
from noisybench.report.tables import DEFAULT_KINDS, tables

HTML_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; max-width: 1100px;
       margin: 2em auto; padding: 0 1em; color: #1a1a1a; line-height: 1.4; }
h1 { font-size: 1.5em; } h2 { font-size: 1.25em; border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 2em; }
h3 { font-size: 1em; font-weight: 600; margin: 1.5em 0 .4em; }
table { border-collapse: collapse; font-size: .9em; margin-bottom: .5em; }
th, td { border-bottom: 1px solid #ddd; padding: .25em .7em; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { border-bottom: 2px solid #444; }
.oracle { border-left: 4px solid #D55E00; padding-left: .8em; }
.badge { background: #D55E00; color: white; font-size: .75em; padding: .1em .45em; border-radius: 3px;
         margin-right: .4em; }
figure { margin: 1.5em 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { font-size: .85em; color: #333; max-width: 800px; }
.note { font-size: .85em; color: #555; }
"""


def to_html(df: pd.DataFrame, kinds: Iterable[str] = DEFAULT_KINDS, tune: Iterable[str] = (),
            marks: bool = True) -> str:
    """One self-contained HTML page: per (dataset, model, metric) its tables and its figures (PNG
    embedded as data: URIs; no external file, script, font or link), readable offline. With `tune`, the
    tuned tables and the tuned figures; with `marks`, each column's best mean bold, the second
    underlined."""
    kinds = list(kinds)
    parts = [f"<p class=\"note\">{len(df)} runs; noisybench {escape(__version__)}. Cells: mean ± std (n) over "
             "seeds, in %. Tables marked ORACLE select on test labels: not a valid protocol, shown because papers "
             "report it." + (" Tables and figures show the tuned keys' chosen value per cell." if tune else "")
             + (" " + escape(MARKS_NOTE) if marks else "") + "</p>"]
    for (dataset, model, metric), sub in df.groupby(["dataset", "model", "metric"]):
        parts.append(f"<h2>{escape(f'{dataset} / {model}: {METRIC_TITLES.get(metric, metric)}')}</h2>")
        for title, kind, t in tables(sub, kinds, tune):
            oracle = kind == "best"
            ranks = table_marks(t) if marks else {}
            head = "".join(f"<th>{escape(str(c))}</th>" for c in ["method", *t.columns])
            body = "".join(f"<tr><td>{escape(str(i))}</td>" + "".join(
                f"<td>{mark_text(escape(str(v)), ranks.get((i, c)), '<strong>{}</strong>', '<u>{}</u>')}</td>"
                for c, v in zip(t.columns, row)) + "</tr>" for i, row in zip(t.index, t.values))
            badge = '<span class="badge">ORACLE</span>' if oracle else ""
            cls = ' class="oracle"' if oracle else ""
            parts.append(f"<section{cls}><h3>{badge}{escape(title)}</h3>"
                         f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></section>")
        for plot in figures(sub, tune=tune):
            data = base64.b64encode(png_bytes(plot, dpi=150)).decode("ascii")
            width = round(plot.figure.get_figwidth() * 130)  # px: a 7-inch figure fills the page
            parts.append(f"<figure><img src=\"data:image/png;base64,{data}\" width=\"{width}\" "
                         f"alt=\"{escape(plot.name)}\"><figcaption><b>{escape(plot.title)}.</b> {escape(plot.caption)} "
                         f"Runs: {escape(plot.runs.replace('`', ''))}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>noisybench report</title>"
            f"<style>{HTML_STYLE}</style></head><body><h1>noisybench report</h1>\n" + "\n".join(parts)
            + "\n</body></html>\n")
