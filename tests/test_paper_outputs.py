"""Outputs that go into a paper: the best and second value per column marked (Markdown, HTML, LaTeX; never
in the CSV), LaTeX that escapes every special character and compiles where a LaTeX engine is installed,
and figures without a baked-in title, with n on every band, an error bar for one noise level, axes fitted
to the data, a chance line near the data, a readable heatmap, `figures.md`, and `plot --tune`."""
from __future__ import annotations

import json
import math
import shutil
import subprocess

import numpy as np
import pytest
from test_plot import write_run as write_full_run
from test_tables import lr_sweep, write_run

from noisybench.cli import main
from noisybench.report.latex import escape, to_latex
from noisybench.report.marks import Stats, column_marks
from noisybench.report.records import load_runs
from noisybench.report.tables import to_csv, to_markdown

SPECIAL = "a&b_c#1 $x$ 50% ^~\\{y}"  # every LaTeX special character in one method name


def _methods(root, names_and_scores: dict[str, list[float]]) -> None:
    for name, scores in names_and_scores.items():
        for seed, score in enumerate(scores):
            write_run(root, f"{abs(hash(name))}-{seed}", val=score, test=score, method=name, seed=seed)


# ---- marks ----------------------------------------------------------------------------------------
def test_column_marks_rule():
    s = lambda m, sd=1.0, n=3: Stats(m, sd, n)  # noqa: E731
    assert column_marks({"a": s(90), "b": s(85), "c": s(80)}) == {"a": "best", "b": "second"}
    # within one std of the best (the best cell's std) is bold too; the next one underlined
    assert column_marks({"a": s(90, 2.0), "b": s(88.5), "c": s(80), "d": s(80.004)}) == {
        "a": "best", "b": "best", "c": "second", "d": "second"}  # c and d print the same: a tie
    assert column_marks({"a": s(90)}) == {}  # one ranked row: nothing to mark
    assert column_marks({"a": s(99), "a [ORACLE: clean labels]": s(100), "b": s(50)}) == {"a": "best", "b": "second"}
    assert column_marks({"a": s(90), "b": Stats(math.nan, math.nan, 0), "c": s(70)}) == {"a": "best", "c": "second"}
    # a lower-is-better score: the lowest mean is best, within one std above it too
    assert column_marks({"a": s(10, 2.0), "b": s(11.5), "c": s(20)}, lower_is_better=True) == {
        "a": "best", "b": "best", "c": "second"}


def test_markdown_and_html_mark_best_and_second_csv_does_not(tmp_path):
    _methods(tmp_path, {"ce": [0.50, 0.52], "gce": [0.70, 0.72], "dal": [0.60, 0.62]})
    df, _ = load_runs([tmp_path])
    md = to_markdown(df, kinds=["last"])
    assert "| gce | **71.00** ± 1.41 (2) |" in md and "| dal | <u>61.00</u> ± 1.41 (2) |" in md
    assert "| ce | 51.00 ± 1.41 (2) |" in md and "Bold: the best mean of each column" in md
    assert "**" not in to_markdown(df, kinds=["last"], marks=False)
    assert "**" not in to_csv(df, kinds=["last"]) and "<u>" not in to_csv(df, kinds=["last"])
    assert main(["report", str(tmp_path), "-k", "last", "-f", "html,csv,latex", "-o", str(tmp_path / "o")]) == 0
    html = (tmp_path / "o" / "report.html").read_text()
    assert "<strong>71.00</strong> ± 1.41 (2)" in html and "<u>61.00</u> ± 1.41 (2)" in html
    assert r"\textbf{71.00}" in (tmp_path / "o" / "table.tex").read_text()
    assert main(["report", str(tmp_path), "-k", "last", "-f", "latex,md", "--no-marks", "-o", str(tmp_path / "p")]) == 0
    assert r"\textbf" not in (tmp_path / "p" / "table.tex").read_text()
    assert "**" not in (tmp_path / "p" / "table.md").read_text()


def test_tuned_cells_are_marked_by_the_chosen_setting(tmp_path):
    lr_sweep(tmp_path)
    for seed in (0, 1):
        write_run(tmp_path, f"gce-{seed}", val=0.9, test=0.3 + seed / 100, method="gce", seed=seed,
                  optim__optimizer__lr=0.2)
    df, _ = load_runs([tmp_path])
    md = to_markdown(df, kinds=["last"], tune=["optim.optimizer.lr"])
    assert "| ce | **50.50** ± 0.71 (2) [lr=0.001] |" in md and "| gce | <u>30.50</u> ± 0.71 (2) [lr=0.2] |" in md


# ---- LaTeX ----------------------------------------------------------------------------------------
def test_latex_escapes_every_special_character():
    assert escape(SPECIAL) == (r"a\&b\_c\#1 \$x\$ 50\% \textasciicircum{}\textasciitilde{}\textbackslash{}"
                               r"\{y\}")
    assert escape("± – |") == r"$\pm$ -- \textbar{}"


def _engine() -> list[str] | None:
    if shutil.which("pdflatex"):
        return ["pdflatex", "-interaction=nonstopmode", "-halt-on-error"]
    if shutil.which("tectonic"):
        return ["tectonic"]
    return None


def test_latex_table_with_special_names_has_booktabs_marks_and_compiles(tmp_path):
    _methods(tmp_path / "runs", {SPECIAL: [0.50, 0.52, 0.51], "gce": [0.70, 0.72, 0.71], "ce": [0.6, 0.6]})
    tex = to_latex(load_runs([tmp_path / "runs"])[0], kinds=["last", "best"])
    assert r"\toprule" in tex and r"\midrule" in tex and r"\bottomrule" in tex
    assert r"\begin{table}[t]" in tex and "table*" not in tex  # one noise column: fits one paper column
    assert r"a\&b\_c\#1 \$x\$ 50\% \textasciicircum{}" in tex
    assert r"\textbf{71.00}{\scriptsize\,$\pm$1.00}" in tex  # the best, compact: mean ± std, n in the caption
    assert r"\underline{60.00}{\scriptsize\,$\pm$0.00\,(n=2)}" in tex and "n = 3 runs" in tex  # another n
    engine = _engine()
    if engine is None:
        pytest.skip("no LaTeX engine (pdflatex or tectonic) installed: escaping checked, compiling skipped")
    doc = tmp_path / "doc.tex"
    doc.write_text("\\documentclass[twocolumn]{article}\n\\usepackage[T1]{fontenc}\n\\usepackage{booktabs}\n"
                   "\\begin{document}\n" + tex + "\n\\end{document}\n")
    done = subprocess.run([*engine, doc.name], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and (tmp_path / "doc.pdf").is_file(), done.stdout[-2000:]


# ---- figures --------------------------------------------------------------------------------------
def _groups(paths, tune=()):
    from noisybench.report.groups import groups

    return groups(load_runs(paths)[0], tune)


def test_no_title_by_default_and_titles_on_request(tmp_path):
    from noisybench.report.figures import figures

    for seed in (0, 1):
        write_full_run(tmp_path / "s", "ce", 0.4, seed)
    df = load_runs([tmp_path / "s"])[0]
    assert all(p.figure._suptitle is None for p in figures(df))
    titled = figures(df, titles=True)
    assert all(p.figure._suptitle is not None and p.figure._suptitle.get_text() for p in titled)
    assert main(["plot", str(tmp_path / "s"), "--titles", "-f", "png"]) == 0
    assert "mnist1d / cnn1d" in (tmp_path / "s" / "figures" / "figures.md").read_text()


def test_one_noise_level_gets_visible_error_bars_with_n(tmp_path):
    from noisybench.report.noise_figures import accuracy_vs_noise

    for method in ("ce", "gce"):
        for seed in (0, 1, 2):
            write_full_run(tmp_path / "s", method, 0.4, seed)
    (group,) = _groups([tmp_path / "s"])
    (plot,) = accuracy_vs_noise(group)
    last = plot.figure.axes[0]
    assert len(last.containers) == 2  # one error bar per method, side by side
    for bars in last.containers:
        (segments,) = bars.lines[2]
        heights = [abs(seg[1][1] - seg[0][1]) for seg in segments.get_segments()]
        assert heights and min(heights) > 0  # ± std over three seeds, drawn
        assert bars.get_label().endswith("(n=3)")
    assert "error bars: ± std" in plot.caption


def test_learning_curves_fit_the_data_and_chance_shows_when_near(tmp_path):
    from noisybench.report.epoch_figures import learning_curves
    from noisybench.report.noise_figures import accuracy_vs_noise

    for seed in (0, 1):
        write_full_run(tmp_path / "clean", "gce", 0.0, seed)  # every curve between about 80 and 92 %
    (plot,) = learning_curves(_groups([tmp_path / "clean"])[0], {})
    lo, hi = plot.figure.axes[0].get_ylim()
    assert 80 < lo < 90 and 90 < hi < 96  # not 0-100
    # a noisy setting near chance (10 classes: 10 %): the chance line is drawn; far above it, it is not
    for seed in (0, 1):
        for rate in (0.0, 0.8):
            d = write_full_run(tmp_path / "hard", "ce", rate, seed)
            r = json.loads((d / "result.json").read_text())
            r["test_last"] = r["test_selected"] = 0.12 + seed / 100 if rate else 0.5
            (d / "result.json").write_text(json.dumps(r))
    (plot,) = accuracy_vs_noise(_groups([tmp_path / "hard"])[0])
    assert [ln.get_ydata()[0] for ln in plot.figure.axes[0].get_lines() if ln.get_label() == "chance level"] == [10]
    assert "chance level (1/K = 10 %, K = 10)" in plot.caption
    for seed in (0, 1):
        write_full_run(tmp_path / "easy", "ce", 0.2, seed)
    (plot,) = accuracy_vs_noise(_groups([tmp_path / "easy"])[0])
    assert "chance level" not in [ln.get_label() for ln in plot.figure.axes[0].get_lines()]
    assert "lies far below the axis" in plot.caption


def test_heatmap_text_contrasts_with_its_cell_and_matches_the_colour_bar():
    from noisybench.noise.report import draw_heatmap
    from noisybench.report.draw import new_figure

    T = np.full((4, 4), 0.1) + np.eye(4) * 0.6  # diagonal 70 %: a light cell; off-diagonal 10 %: dark
    ax = new_figure(3, 3).add_subplot()
    im = draw_heatmap(ax, T, percent=True, colorbar=False)
    assert im.norm.vmax == 100 and im.get_array().max() == pytest.approx(70)  # the cells and the bar in %
    colors = {(t.get_position(), t.get_text()): t.get_color() for t in ax.texts}
    assert colors[((0, 0), "70")] == "black" and colors[((1, 0), "10")] == "white"
    im = draw_heatmap(new_figure(3, 3).add_subplot(), T)  # `noisybench noise`: fractions, bar 0-1
    assert im.norm.vmax == 1


def test_plot_tune_draws_the_tuned_figure(tmp_path, capsys):
    from noisybench.report.noise_figures import accuracy_vs_noise

    lr_sweep(tmp_path / "s")  # lr 0.001 wins on validation (50.5 % test), lr 0.2 on test (90.5 %)
    (group,) = _groups([tmp_path / "s"], ["optim.optimizer.lr"])
    assert group.rows == ["ce"] and group.tuned == ("lr",)
    (plot,) = accuracy_vs_noise(group)
    assert plot.name.endswith("_accuracy_vs_noise_tuned")
    last, selected = plot.figure.axes[:2]
    (bars,) = last.containers
    assert bars.lines[0].get_ydata()[0] == pytest.approx(50.5)  # the validation-chosen lr, not the best test
    assert [t.get_text() for t in last.texts] == ["0.001"] and [t.get_text() for t in selected.texts] == ["0.001"]
    assert "Chosen lr for symmetric 0.4: ce: 0.001 (last), 0.001 (selected)" in plot.caption
    out = tmp_path / "figs"
    assert main(["plot", str(tmp_path / "s"), "--tune", "optim.optimizer.lr", "-o", str(out)]) == 0
    assert (out / "mnist1d_cnn1d_accuracy_vs_noise_tuned.pdf").is_file()
    assert "--tune optim.optimizer.lr" in (out / "figures_tuned.md").read_text() and not (out / "figures.md").exists()
    assert main(["report", str(tmp_path / "s"), "--tune", "optim.optimizer.lr", "-f", "html", "-o", str(out)]) == 0
    assert 'alt="mnist1d_cnn1d_accuracy_vs_noise_tuned"' in (out / "report.html").read_text()  # the tuned figure
    capsys.readouterr()
    assert main(["plot", str(tmp_path / "s"), "--tune", "optim.optimizer.lrr", "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("noisybench: error: --tune optim.optimizer.lrr")


def test_plot_tune_a_method_key_beside_a_method_without_it(tmp_path):
    """`plot --tune method.sharpness` over STORM runs of two sharpness values and CE runs (no such key): one
    storm line with the chosen value at its point, CE drawn without one, both in the caption's words."""
    from noisybench.report.noise_figures import accuracy_vs_noise

    for seed in (0, 1):
        for tau, val, test in ((1.0, 0.5, 0.60), (2.0, 0.7, 0.80)):
            write_run(tmp_path / "s", f"storm{tau}-s{seed}", val=val, test=test, method="storm",
                      hp={"sharpness": tau}, seed=seed, method__sharpness=tau)
        write_run(tmp_path / "s", f"ce-s{seed}", val=0.6, test=0.7, seed=seed)
    (group,) = _groups([tmp_path / "s"], ["method.sharpness"])
    assert sorted(group.rows) == ["ce", "storm"] and group.tuned == ("sharpness",)
    (plot,) = accuracy_vs_noise(group)
    last = plot.figure.axes[0]
    assert [t.get_text() for t in last.texts] == ["2"]
    assert "storm: 2 (last), 2 (selected)" in plot.caption and "ce:" not in plot.caption


def test_png_is_300_dpi_and_pdf_is_vector(tmp_path):
    for seed in (0, 1):
        write_full_run(tmp_path / "s", "ce", 0.4, seed)
    assert main(["plot", str(tmp_path / "s"), "-o", str(tmp_path / "f")]) == 0
    from PIL import Image

    png = Image.open(tmp_path / "f" / "mnist1d_cnn1d_transition_matrices.png")
    pdf = (tmp_path / "f" / "mnist1d_cnn1d_transition_matrices.pdf").read_bytes()
    assert png.width >= 3 * 300 * 0.9  # a figure at least 3 inches wide, 300 dots per inch
    # the heatmap is a mesh of vector cells; the one bitmap is the colour bar's gradient (matplotlib's)
    assert pdf.count(b"/Subtype /Image") == 1


def test_up_to_eight_methods_in_one_figure_get_eight_colours():
    """The known methods keep their colours; the others take the colours no method of the figure uses,
    so six baselines without CE/GCE/DAL do not share a colour (the palette has 8)."""
    from types import SimpleNamespace

    import pandas as pd

    from noisybench.report.draw import METHOD_COLORS
    from noisybench.report.groups import row_styles

    def colours(methods):
        runs = pd.DataFrame({"row": methods, "method": methods})
        styles = row_styles(SimpleNamespace(runs=runs, rows_present=methods))
        return {m: styles[m]["color"] for m in methods}

    six = colours(["apl", "coteaching", "elr", "forward", "sce", "storm"])
    assert len(set(six.values())) == 6 and six["storm"] == METHOD_COLORS["storm"]
    nine = colours(["ce", "gce", "dal", "storm", "apl", "coteaching", "elr", "forward", "sce"])
    assert {nine[m] for m in ("ce", "gce", "dal", "storm")} == set(METHOD_COLORS.values())
    assert len(set(nine.values())) == 8  # nine methods, eight colours: one repeats (markers differ)
