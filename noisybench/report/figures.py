"""Figures from run and sweep directories (`noisybench plot`, and the figures of `report -f html`).

Runs are found, loaded and grouped exactly as `noisybench report` does (`records`, `layout`, `groups`):
one set of figures per (dataset, model, metric); a line is a row of the report's tables (a method with
the hyperparameters that vary), an x position or a panel is one of its noise columns. Failed and
unfinished runs are never found; diverged runs are left out of every figure and named in its caption.
The families, one module each:

- noise_figures:  accuracy_vs_noise (also tuned per cell, as `report --tune`), transition_matrices
- epoch_figures:  learning_curves, diagnostics_<row>
- weight_figures: weights_<row>

For a paper: no title drawn into the figure (the caption carries it: `figures.md`, written beside the
figures, has one caption per figure and the runs it draws; `--titles` draws them), every band labelled
with its n, vector PDF and 300-dpi PNG. Style (`noisybench.report.draw`): sized for print, the Okabe-Ito
colour-blind-safe palette, axes labelled with units; matplotlib's object API (no global pyplot state).
matplotlib and PIL are imported inside the functions that draw: they are slow to import, and only
`noisybench plot` and `noisybench report -f html` draw.
"""
from __future__ import annotations

import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import pandas as pd

from noisybench import __version__
from noisybench.report.draw import STYLE, suptitle
from noisybench.report.epoch_figures import diagnostics, learning_curves
from noisybench.report.groups import Group, Plot, groups, provenance
from noisybench.report.noise_figures import accuracy_vs_noise, transition_matrices
from noisybench.report.weight_figures import sample_weight_histograms
from noisybench.report.weights import auc
from noisybench.utils import atomic_output, atomic_write_bytes, atomic_write_text

__all__ = ["FORMATS", "Group", "Plot", "accuracy_vs_noise", "auc", "captions", "diagnostics", "figures", "groups",
           "learning_curves", "png_bytes", "sample_weight_histograms", "save", "transition_matrices"]

FORMATS = ("png", "pdf")
DPI = 300  # PNG resolution for print (the PDF is vector)
CAPTIONS = "figures.md"
# the saved file is the drawing's bounding box (nothing clipped at the figure's edge, e.g. a right-hand
# panel's title) plus a thin margin
TIGHT = {"bbox_inches": "tight", "pad_inches": 0.03}
CAPTIONS_TUNED = "figures_tuned.md"  # `plot --tune` into the same directory keeps the untuned captions


def figures(df: pd.DataFrame, titles: bool = False, tune: Iterable[str] = ()) -> list[Plot]:
    """Every figure of the runs in `df` (a `records.load_runs` table), one table set after another.
    `titles`: draw each figure's title into it (off: papers put it in the caption). `tune`: config
    keys chosen per cell as `report --tune` chooses them (the figures' names end in `_tuned`; the
    transition matrices, which tuning does not change, are left to the untuned call)."""
    from matplotlib import rc_context

    cache: dict = {}
    out: list[Plot] = []
    for group in groups(df, tune):
        with rc_context(STYLE):
            plots = (accuracy_vs_noise(group) + learning_curves(group, cache) + diagnostics(group, cache)
                     + sample_weight_histograms(group) + ([] if group.tuned else transition_matrices(group)))
            for plot in plots if titles else ():
                suptitle(plot.figure, plot.title)
        for plot in plots:
            name = plot.name if not group.tuned or plot.name.endswith("_tuned") else plot.name + "_tuned"
            runs = provenance(group.picked("selected") if "accuracy_vs_noise" not in name else group)
            out.append(plot._replace(name=name, runs=runs))
    return out


def captions(plots: Sequence[Plot], formats: Iterable[str], command: str = "") -> str:
    """figures.md: per figure its title, caption, files and the runs it draws (for a paper's captions)."""
    formats = list(formats)
    head = ["# Figures", "",
            f"Written by noisybench {__version__}" + (f" (`{command}`)" if command else "") + ". Per figure: "
            "what it shows and which runs it draws. The titles are not drawn into the figures (a paper puts them "
            "in the caption); `noisybench plot --titles` draws them.", ""]
    parts = []
    for p in plots:
        files = ", ".join(f"`{p.name}.{f}`" for f in formats)
        image = [f"![{p.title or p.name}]({p.name}.png)", ""] if "png" in formats else []
        parts += [f"## {p.name}", "", *image, f"**{p.title}.** {p.caption}" if p.title else p.caption, "",
                  f"Files: {files}. Runs: {p.runs}", ""]
    return "\n".join(head + parts)


def save(plot: Plot, out_dir: Path, formats: Iterable[str] = FORMATS, dpi: int | None = None) -> list[Path]:
    """Write `plot` as each format into `out_dir` (atomically); returns the paths."""
    from matplotlib import rc_context

    paths = []
    for fmt in formats:
        path = Path(out_dir) / f"{plot.name}.{fmt}"
        if fmt == "png":
            atomic_write_bytes(path, png_bytes(plot, dpi or DPI))
        else:
            meta = {"CreationDate": None} if fmt == "pdf" else None  # the same runs give the same PDF
            with rc_context(STYLE), atomic_output(path) as f:
                plot.figure.savefig(f, format=fmt, dpi=dpi or DPI, metadata=meta, **TIGHT)
        paths.append(path)
    return paths


def save_all(plots: Sequence[Plot], out_dir: Path, formats: Iterable[str] = FORMATS, dpi: int | None = None,
             command: str = "", captions_name: str = CAPTIONS) -> list[Path]:
    """Every figure, then their captions file beside them (written last: it names only files that
    exist)."""
    formats = list(formats)
    paths = [p for plot in plots for p in save(plot, out_dir, formats, dpi)]
    atomic_write_text(Path(out_dir) / captions_name, captions(plots, formats, command))
    return paths + [Path(out_dir) / captions_name]


def png_bytes(plot: Plot, dpi: int = 150) -> bytes:
    """The figure as a PNG of 256 colours (no dithering): a third of the size of the full-colour file,
    the same to the eye (flat colours and anti-aliased lines)."""
    from matplotlib import rc_context
    from PIL import Image  # matplotlib's own dependency

    buf = io.BytesIO()
    with rc_context(STYLE):
        plot.figure.savefig(buf, format="png", dpi=dpi, metadata={"Software": None}, **TIGHT)
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    out = io.BytesIO()
    method = getattr(Image, "Quantize", Image).MEDIANCUT  # Pillow < 9.1: the module-level constants
    dither = getattr(Image, "Dither", Image).NONE
    image.quantize(colors=256, method=method, dither=dither).save(out, "png", optimize=True)
    return out.getvalue()
