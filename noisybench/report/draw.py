"""The figures' house style and the matplotlib helpers every figure uses.

Sized for print (3.4 in column / 7 in text width, 7-8 pt text), the Okabe-Ito colour-blind-safe
palette. Built with matplotlib's object API (no global pyplot state). matplotlib is imported inside
the functions: it is slow to import, and `noisybench report` without figures never needs it.
"""
from __future__ import annotations

import textwrap

# Okabe & Ito (2008): distinguishable with every common colour-vision deficiency (yellow last: weak on white)
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000", "#F0E442")
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
COLUMN_WIDTH, TEXT_WIDTH = 3.4, 7.0  # inches: one column / the full text width of a two-column paper
STYLE = {
    "font.size": 8, "axes.titlesize": 8, "axes.labelsize": 8, "legend.fontsize": 7, "xtick.labelsize": 7,
    "ytick.labelsize": 7, "figure.titlesize": 8, "lines.linewidth": 1.2, "lines.markersize": 3.5,
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "grid.linewidth": 0.5, "legend.frameon": False, "pdf.fonttype": 42, "ps.fonttype": 42,
    "svg.fonttype": "none", "savefig.dpi": 150,
    # labels come from records (method names, hyperparameter values, class names): `$x$` or `a_b$` is text,
    # never mathtext (which would draw it as a formula, or fail on a bad one)
    "text.parse_math": False,
}
# a method keeps its colour in every figure (CE, the baseline, black); others take the rest in turn
METHOD_COLORS = {"ce": PALETTE[6], "gce": PALETTE[0], "dal": PALETTE[1], "storm": PALETTE[2]}


def new_figure(width: float, height: float):
    """A constrained-layout figure on its own Agg canvas (no pyplot, no GUI backend)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def noise_colors(cols: list[str]) -> dict[str, tuple]:
    """Noise settings in table order on plasma (perceptually ordered, colour-blind safe: dark blue to
    orange; its pale yellow end left out)."""
    from matplotlib import colormaps

    cmap = colormaps["plasma"]
    n = len(cols)
    return {c: cmap(0.8 * i / max(1, n - 1)) for i, c in enumerate(cols)}


def epoch_ticks():  # whole epochs, at 1-2-2.5-5 steps
    from matplotlib.ticker import MaxNLocator

    return MaxNLocator(nbins=5, integer=True, steps=[1, 2, 2.5, 5, 10])


def _chars(fig, fontsize: float) -> int:
    """About how many characters of text at `fontsize` fit across the figure."""
    return max(12, int(fig.get_figwidth() * 72 / (0.55 * fontsize)))


def suptitle(fig, text: str) -> None:
    fig.suptitle("\n".join(textwrap.wrap(text, _chars(fig, STYLE["figure.titlesize"]))))


def stack(label: str, width: int = 18) -> str:
    """A long row label (`storm (bn_scope=batch, weight_norm=class_mass)`) on several lines, for a
    y-axis label: broken after the method name, at its commas and, in a still long part, after `=`."""
    if len(label) <= width:
        return label
    lines = label.replace(" (", "\n(", 1).replace(", ", ",\n").split("\n")
    return "\n".join(ln.replace("=", "=\n", 1) if len(ln) > width else ln for ln in lines)


def legend_entries(axes) -> tuple[list, list]:
    """Every labelled artist of the axes once (the first of each label), for one figure legend."""
    handles, labels = [], []
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    return handles, labels


def legend(fig, handles: list, labels: list[str], most: int) -> None:
    """The figure's legend under the axes, in as many columns (at most `most`) as its labels fit."""
    if not labels:
        return
    longest = max(len(lab) for lab in labels) + 5  # the handle and the gap
    fit = max(1, _chars(fig, STYLE["legend.fontsize"]) // longest)
    fig.legend(handles, labels, loc="outside lower center", ncol=max(1, min(most, fit, len(labels))))

