"""Showing a realised transition matrix: as text for the terminal and as a heatmap PNG."""
from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisybench.utils import atomic_output

_FULL_MATRIX_MAX = 20  # above this many classes, print the per-class summary instead of all of T


def format_matrix(T: np.ndarray, counts: np.ndarray, names: Sequence[str] | None = None) -> str:
    """T[true, noisy] as a table for K <= 20; else one line per true class (keep rate, top flip)."""
    k = len(T)
    names = [str(n) for n in (names or range(k))]
    if k <= _FULL_MATRIX_MAX:
        w = max(5, *(len(n[:12]) for n in names))
        head = " " * (w + 1) + " ".join(f"{n[:5]:>5}" for n in names)
        rows = [f"{names[i][:12]:>{w}} " + " ".join(f"{v:5.2f}" for v in T[i]) for i in range(k)]
        return "\n".join(["T[true, noisy] (rows: true class, columns: noisy label)", head, *rows])
    lines = ["per true class: kept fraction, most frequent wrong label (its fraction), distinct wrong labels"]
    for i in range(k):
        off = T[i].copy()
        off[i] = -1
        j = int(off.argmax())
        lines.append(f"{names[i][:16]:>16}  keep {T[i, i]:.3f}  -> {names[j][:16]} ({T[i, j]:.3f})  "
                     f"{int((counts[i] > 0).sum() - (counts[i, i] > 0))} targets")
    return "\n".join(lines)


def text_color(rgba) -> str:
    """Black or white, whichever contrasts more with a cell of colour `rgba` (WCAG relative luminance:
    black when the luminance exceeds 0.179, where the two contrasts are equal)."""
    lin = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    return "black" if 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2] > 0.179 else "white"


def draw_heatmap(ax, T: np.ndarray, names: Sequence[str] | None = None, fontsize: float = 7,
                 colorbar: bool = True, percent: bool = False):
    """T[true, noisy] on the axes `ax` (values written in the cells for K <= 20, as fractions with two
    decimals or, with `percent`, as whole percentages: narrower; the colour scale in the same unit, so a
    colour bar reads like the cells); the numbers black or white by their cell's luminance. Drawn as a
    mesh of cells (vector in a PDF); returns it."""
    k = len(T)
    scale = 100.0 if percent else 1.0
    values = np.asarray(T, dtype=float) * scale
    im = ax.pcolormesh(np.arange(k + 1) - 0.5, np.arange(k + 1) - 0.5, values, vmin=0.0, vmax=scale,
                       cmap="viridis", edgecolors="none")
    ax.set_xlim(-0.5, k - 0.5)
    ax.set_ylim(k - 0.5, -0.5)  # row 0 at the top, as a matrix is read
    ax.set_aspect("equal")
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if k <= _FULL_MATRIX_MAX:
        labels = [str(n) for n in (names or range(k))]
        ax.set_xticks(range(k), labels, rotation=90, parse_math=False)  # a class named `$x$` is text, not TeX
        ax.set_yticks(range(k), labels, parse_math=False)
        for i in range(k):
            for j in range(k):
                if T[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * T[i, j]:.0f}" if percent else f"{T[i, j]:.2f}", ha="center",
                            va="center", fontsize=fontsize, color=text_color(im.cmap(im.norm(values[i, j]))))
    ax.set_xlabel("noisy label")
    ax.set_ylabel("true class")
    return im


def save_heatmap(T: np.ndarray, path: Path | str, names: Sequence[str] | None = None, title: str = "") -> None:
    """Write a heatmap of T as PNG (matplotlib's object API: no global pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    k = len(T)
    size = min(12.0, 3.0 + 0.45 * k)
    fig = Figure(figsize=(size, size * 0.9))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    draw_heatmap(ax, T, names)
    ax.set_title("\n".join(textwrap.wrap(title, width=max(30, int(size * 8)))), fontsize=9,  # fits the figure
                 parse_math=False)
    fig.tight_layout()
    with atomic_output(path) as f:  # the usual file permissions, never a half-written PNG
        fig.savefig(f, format="png", dpi=100)
