"""`noisybench plot` and `noisybench report -f html`: the figures of a sweep (files written, PNG and PDF
valid, diverged runs left out and named), the self-contained HTML page (no external reference; rendered
by headless Chromium when it is installed), the per-sample weights the runner saves (and keeps across
a resume), and the one-line errors."""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess

import numpy as np
import pytest
import torch

from noisybench.cli import main
from noisybench.config import weight_epochs
from noisybench.errors import ConfigError
from noisybench.record import WEIGHTS
from noisybench.record import save_weights as _save_weights
from noisybench.rundir import Interrupted
from noisybench.train import run

EPOCHS, N = 6, 200
CONFIG = {
    "seed": 0, "data_dir": None,
    "dataset": {"name": "mnist1d", "subset": None, "val_fraction": 0.1, "metric": "acc"},
    "noise": {"name": "symmetric", "rate": 0.4, "seed": 0, "include_true_class": True, "sampling": "bernoulli"},
    "model": {"name": "cnn1d", "channels": 25},
    "method": {"name": "ce"},
    "optim": {"name": "sgd", "optimizer": {"lr": 0.05}, "scheduler": {"name": "cosine"}},
    "trainer": {"epochs": EPOCHS, "batch_size": 128},
}
STEMS = ["accuracy_vs_noise", "learning_curves", "diagnostics_dal", "diagnostics_storm", "weights_storm",
         "transition_matrices"]


def write_run(root, method: str, rate: float, seed: int, diverged: bool = False):
    """A finished run directory as the runner writes it: result.json, metrics.csv, noise.json and, for
    storm, sample_weights.npz (through the runner's own writer). CE memorises (its test accuracy falls
    while its fit of the noisy training labels rises); the others do not."""
    rng = np.random.default_rng(hash((method, rate, seed)) % 2**32)
    cfg = copy.deepcopy(CONFIG)
    cfg["seed"], cfg["noise"]["rate"], cfg["method"]["name"] = seed, rate, method
    t = np.arange(EPOCHS) / (EPOCHS - 1)
    memorises = method == "ce" and rate > 0
    test = 0.9 - rate * (0.6 * t if memorises else 0.1) + rng.normal(0, 0.01, EPOCHS)
    rows = {"epoch": np.arange(EPOCHS), "train_loss": 2 - t, "lr": 0.05 * (1 - t),
            "val": test * (1 - rate), "test": test, "train_noisy": (1 - rate) * 0.9 + (rate * t if memorises else 0),
            "memorized_noisy_frac": (0.1 + 0.7 * t if memorises else 0.1 + 0 * t) if rate else [None] * EPOCHS,
            "memorized_clean_frac": (0.8 - 0.6 * t if memorises else 0.8 + 0 * t) if rate else [None] * EPOCHS}
    if method == "dal":
        rows.update(q=0.6 + 0.9 * t, **{"lambda": np.clip(2 * t - 1, 0, None)})
    if method == "storm":
        rows.update(mean_weight=0.5 + 0 * t, mean_weight_clean=0.5 + 0.1 * t,
                    mean_weight_corrupted=(0.5 - 0.2 * t) if rate else [None] * EPOCHS,
                    weight_auc=(0.5 + 0.4 * t) if rate else [None] * EPOCHS)
    d = root / f"method={method},noise.rate={rate},seed={seed}"
    d.mkdir(parents=True)
    import pandas as pd

    pd.DataFrame(rows).to_csv(d / "metrics.csv", index=False)
    sel = int(np.argmax(rows["val"]))
    best = int(np.argmax(test))
    record = {
        "dataset": "mnist1d", "model": "cnn1d", "method": {"name": method}, "metric": "acc",
        "noise": {"type": "symmetric", "rate": rate, "include_true_class": True, "sampling": "bernoulli", "seed": 0},
        "realized_noise_rate": rate * 0.9, "seed": seed, "noise_seed": 0, "epochs": EPOCHS,
        "test_last": float(test[-1]), "val_last": float(rows["val"][-1]), "test_selected": float(test[sel]),
        "val_selected": float(rows["val"][sel]), "selected_epoch": sel, "test_best": float(test[best]),
        "best_epoch": best, "memorized_noisy_frac": None, "num_classes": 10,
        "diverged": {"message": "diverged"} if diverged else None,
        "config": cfg,
    }
    (d / "result.json").write_text(json.dumps(record))
    k = 10
    T = np.full((k, k), rate / k) + np.eye(k) * (1 - rate)
    noise = {"type": "symmetric", "rate": rate, "realized_noise_rate": rate * 0.9,
             "class_names": [str(i) for i in range(k)], "transition_matrix": T.tolist()}
    (d / "noise.json").write_text(json.dumps(noise))
    if method == "storm":
        corrupted = torch.from_numpy(rng.random(N) < rate)
        saved = {e: np.where(corrupted.numpy(), rng.beta(2, 2 + e, N), rng.beta(2 + e, 2, N)).astype(np.float16)
                 for e in (0, 2, 5)}
        _save_weights(d, saved, corrupted)
    return d


@pytest.fixture
def sweep(tmp_path):
    root = tmp_path / "sweep"
    for method in ("ce", "gce", "dal", "storm"):
        for rate in (0.0, 0.4):
            for seed in (0, 1):
                write_run(root, method, rate, seed)
    return root


def _png_ok(path) -> None:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000, path
    from matplotlib.image import imread

    img = imread(path)
    assert img.shape[0] > 200 and img.shape[1] > 300 and img.std() > 0.01, path  # drawn, not blank


def _pdf_ok(path) -> None:
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and b"%%EOF" in data[-64:], path
    assert b"CreationDate" not in data  # the same runs give the same file


def test_plot_writes_every_figure_as_png_and_pdf(sweep, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["plot", str(sweep), "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    for stem in STEMS:
        _png_ok(out / f"mnist1d_cnn1d_{stem}.png")
        _pdf_ok(out / f"mnist1d_cnn1d_{stem}.pdf")
    expected = sorted(["figures.md", *(f"mnist1d_cnn1d_{s}.{f}" for s in STEMS for f in ("png", "pdf"))])
    assert sorted(p.name for p in out.iterdir()) == expected
    captions = (out / "figures.md").read_text()  # one caption per figure, naming the runs it draws
    assert captions.count("\n## ") == len(STEMS) and f"`{sweep}`" in captions
    assert "16 finished runs" in captions and "seeds [0, 1]" in captions
    assert "6 figures from 16 runs" in printed and "Every run found is in the figures." in printed
    # GCE has no diagnostics of its own and no weights: no figure for it
    assert not list(out.glob("*gce*"))


def test_plot_defaults_to_the_sweep_dir_and_takes_formats(sweep, capsys):
    assert main(["plot", str(sweep), "-f", "svg"]) == 0
    files = sorted(f for f in (sweep / "figures").iterdir() if f.name != "figures.md")
    assert len(files) == len(STEMS) and all(f.suffix == ".svg" for f in files)
    assert "<svg" in files[0].read_text()[:2000]


def test_figures_group_like_the_report_and_leave_diverged_runs_out(sweep, tmp_path, capsys):
    from noisybench.report.figures import figures, groups
    from noisybench.report.records import load_runs

    bad = write_run(sweep, "ce", 0.4, 7, diverged=True)
    (tmp_path / "failed").mkdir()
    (tmp_path / "failed" / "failed.json").write_text(json.dumps({"error": "boom"}))
    df, left_out = load_runs([sweep, tmp_path / "failed"])
    (group,) = groups(df)
    assert group.rows == ["ce", "dal", "gce", "storm"] and group.cols == ["symmetric 0", "symmetric 0.4"]
    assert group.diverged == [str(bad)] and str(bad) not in set(group.runs["run_dir"])
    plots = {p.name: p for p in figures(df)}
    assert set(plots) == {f"mnist1d_cnn1d_{s}" for s in STEMS}
    assert "Left out: 1 diverged run(s)" in plots["mnist1d_cnn1d_accuracy_vs_noise"].caption
    assert "ORACLE" in plots["mnist1d_cnn1d_learning_curves"].caption
    # the lines are the report's rows: one per method, the clean level drawn as a reference
    ax = plots["mnist1d_cnn1d_accuracy_vs_noise"].figure.axes[0]
    assert [ln.get_label() for ln in ax.get_lines()
            if not ln.get_label().startswith("_")] == [f"{r} (n=2)" for r in group.rows]
    assert main(["plot", str(sweep), str(tmp_path / "failed"), "-o", str(tmp_path / "o")]) == 1  # no finished run
    assert main(["plot", str(sweep), "-o", str(tmp_path / "o"), "-f", "png"]) == 0
    out = capsys.readouterr().out
    assert "16 runs" in out and "1 diverged runs left out of the figures" in out


def test_the_learning_curves_show_ce_memorising(sweep):
    """What the figure is for: at noise 0.4, CE's memorised share rises and its test accuracy falls;
    DAL's does not (the synthetic runs are made so; the panel must draw exactly those numbers)."""
    from matplotlib import rc_context

    from noisybench.report.draw import STYLE
    from noisybench.report.figures import groups, learning_curves
    from noisybench.report.records import load_runs

    with rc_context(STYLE):
        (plot,) = learning_curves(groups(load_runs([sweep])[0])[0], {})
    fig = plot.figure
    axes = fig.axes[:8]  # rows ce, dal, gce, storm x columns noise 0, 0.4
    ce_noisy, dal_noisy = axes[1], axes[3]

    def line(ax, label):
        (ln,) = [ln for ln in ax.get_lines() if ln.get_label() == label]
        return ln.get_ydata()

    mem = line(ce_noisy, "memorised: corrupted → noisy label")
    assert mem[-1] - mem[0] > 50  # percent points
    assert line(ce_noisy, "test (clean labels)")[-1] < line(ce_noisy, "test (clean labels)")[0] - 15
    assert np.ptp(line(dal_noisy, "memorised: corrupted → noisy label")) < 1
    assert ce_noisy.get_title() == "symmetric 0.4 (n=2)" and "ce" in axes[0].get_ylabel()


def test_settings_without_a_rate_are_points_beside_the_clean_level(tmp_path):
    """CIFAR-N style label sets have no rate: one x position each (no line between them), the
    noise=none runs as `clean`; a run without a selected epoch (no validation split) is no point."""
    from matplotlib import rc_context

    from noisybench.report.draw import STYLE
    from noisybench.report.figures import accuracy_vs_noise, groups
    from noisybench.report.records import load_runs

    for seed in (0, 1):
        for noise in ({"type": "none"}, {"type": "real", "label_set": "worse"}, {"type": "real", "label_set": "aggre"}):
            d = write_run(tmp_path / "s", "ce", 0.3, seed)
            d = d.rename(d.with_name(f"{noise.get('label_set', 'none')}-{seed}"))
            r = json.loads((d / "result.json").read_text())
            r["noise"] = {**noise, "seed": 0}
            r["config"]["noise"] = {"name": noise["type"], "seed": 0, **{k: v for k, v in noise.items() if k != "type"}}
            if noise["type"] == "none":
                r["test_selected"] = r["selected_epoch"] = r["val_selected"] = None
            (d / "result.json").write_text(json.dumps(r))
    (group,) = groups(load_runs([tmp_path / "s"])[0])
    assert group.cols == ["none", "real aggre", "real worse"] and group.runs["clean"].sum() == 2
    with rc_context(STYLE):
        (plot,) = accuracy_vs_noise(group)
    last, selected = plot.figure.axes[:2]
    assert [t.get_text() for t in last.get_xticklabels()] == ["clean", "real aggre", "real worse"]
    (bars,) = last.containers  # one method: one set of error bars, three points
    assert len(bars.lines[0].get_xdata()) == 3 and bars.lines[0].get_linestyle() == "None"
    assert len(selected.containers[0].lines[0].get_xdata()) == 2  # no selected epoch without validation
    assert "error bars: ± std" in plot.caption


def test_html_report_is_one_self_contained_file(sweep, tmp_path, capsys):
    out = tmp_path / "rep"
    assert main(["report", str(sweep), "-f", "html,md", "-o", str(out)]) == 0
    html = (out / "report.html").read_text()
    assert html.startswith("<!DOCTYPE html>") and html.rstrip().endswith("</html>")
    assert not re.search(r"""\b(href|xlink:href)\s*=""", html, re.I)  # no link to anything
    srcs = re.findall(r"""\bsrc\s*=\s*["']([^"']*)""", html, re.I)
    assert len(srcs) == len(STEMS) and all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r"(https?:|//[a-z0-9.-]+\.[a-z]{2,}/|@import|url\()", html, re.I)
    assert "<script" not in html.lower()
    assert html.count("<table>") == 3 and 'class="badge">ORACLE<' in html  # the oracle table is marked
    assert "Every run found is in the tables." in html
    assert " ± " in html and "mnist1d / cnn1d: test accuracy (%)" in html
    # without -o the page goes to standard output (for a pipe)
    one = next(sweep.glob("method=dal,noise.rate=0.4,*"))
    assert main(["report", str(one), "-f", "html", "-k", "last"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("<table>") == 1 and printed.count("data:image/png;base64,") == 4


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium here (Debian: apt-get install chromium)")
def test_html_report_renders_in_headless_chromium(sweep, tmp_path):
    out = tmp_path / "rep"
    assert main(["report", str(sweep), "-f", "html", "-o", str(out)]) == 0
    shot = tmp_path / "shot.png"
    proc = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           f"--user-data-dir={tmp_path / 'profile'}", f"--screenshot={shot}", "--window-size=1200,2400",
                           (out / "report.html").as_uri()], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOME": str(tmp_path)})
    assert shot.is_file(), proc.stderr[-2000:]
    from matplotlib.image import imread

    img = imread(shot)[..., :3]
    assert img.shape[:2] == (2400, 1200)
    # the page has text and figures: many rows hold non-white pixels, and colours beyond greys
    inked = (img < 0.9).any(axis=2).any(axis=1).mean()
    colourful = (img.max(axis=2) - img.min(axis=2) > 0.3).any(axis=1).mean()
    assert inked > 0.3 and colourful > 0.05, (inked, colourful)


def test_weight_auc_is_the_rank_statistic():
    from sklearn.metrics import roc_auc_score

    from noisybench.report.figures import auc

    rng = np.random.default_rng(0)
    clean, bad = rng.random(300).round(2), (rng.random(200) * 0.8).round(2)  # many ties
    labels = np.r_[np.ones(300), np.zeros(200)]
    assert auc(clean, bad) == pytest.approx(roc_auc_score(labels, np.r_[clean, bad]), abs=1e-12)
    assert auc(np.ones(3), np.zeros(2)) == 1.0 and auc(np.zeros(3), np.zeros(2)) == 0.5


# ---- errors: one line each ----------------------------------------------------------------------
@pytest.mark.parametrize("case", ["missing", "empty", "failed-only", "format", "out-is-file", "two-paths-no-out",
                                  "tune-unknown-key"])
def test_plot_errors_are_one_line(case, sweep, tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    failed = tmp_path / "failed" / "run"
    failed.mkdir(parents=True)
    (failed / "failed.json").write_text(json.dumps({"error": "boom"}))
    (tmp_path / "afile").write_text("x")
    argv, code, expect = {
        "missing": (["plot", str(tmp_path / "nope")], 2, "no such path"),
        "empty": (["plot", str(empty)], 1, "holds no finished run (finished runs have a result.json); it holds no run"),
        "failed-only": (["plot", str(tmp_path / "failed")], 1, "it has 1 failed run(s)"),
        "format": (["plot", str(sweep), "-f", "png,jpeg"], 2, "unknown format jpeg"),
        "out-is-file": (["plot", str(sweep), "-o", str(tmp_path / "afile")], 2, "is a file"),
        "two-paths-no-out": (["plot", str(sweep), str(sweep)], 2, "-o DIR"),
        "tune-unknown-key": (["plot", str(sweep), "--tune", "optim.lr"], 2, "--tune optim.lr: no run has this"),
    }[case]
    assert main(argv) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noisybench: error:") and expect in err[0], err
    assert not (empty / "figures").exists()


# ---- per-sample weights from the runner ---------------------------------------------------------
def test_default_weight_epochs_spread_over_the_run(make_cfg):
    assert weight_epochs(make_cfg("trainer.epochs=100").trainer) == {0, 24, 49, 74, 99}
    assert weight_epochs(make_cfg("trainer.epochs=2").trainer) == {0, 1}
    assert weight_epochs(make_cfg("trainer.epochs=5", "trainer.save_weights_at=[2,5]").trainer) == {1, 4}
    assert weight_epochs(make_cfg("trainer.save_weights_at=[]").trainer) == set()
    from noisybench.checks import validate

    with pytest.raises(ConfigError, match="save_weights_at has epoch 9 but the run has trainer.epochs=2"):
        validate(make_cfg("trainer.save_weights_at=[1,9]"))
    with pytest.raises(ConfigError, match="trainer.save_weights_at=.*must be a list of whole numbers >= 1"):
        validate(make_cfg("trainer.save_weights_at=[0]"))


def test_storm_saves_its_weights_ce_none_and_the_identity_ignores_the_key(make_cfg, tmp_path):
    cfg = make_cfg("method=storm", "trainer.save_weights_at=[2]")
    run(cfg, tmp_path / "storm", progress=False)
    with np.load(tmp_path / "storm" / WEIGHTS) as z:
        assert z["epoch"].tolist() == [1] and z["weights"].dtype == np.float16
        assert z["weights"].shape == (1, len(z["corrupted"])) and z["corrupted"].dtype == bool
        assert z["corrupted"].any() and np.isfinite(z["weights"]).all()  # every sample weighted each epoch
    run(make_cfg("method=ce"), tmp_path / "ce", progress=False)
    assert not (tmp_path / "ce" / WEIGHTS).exists()
    # not part of the run's identity: the same run with other save epochs is the same (finished) run
    again = run(make_cfg("method=storm", "trainer.save_weights_at=[1,2]"), tmp_path / "storm", progress=False)
    assert again.get("skipped") is True
    assert main(["plot", str(tmp_path / "storm"), str(tmp_path / "ce"), "-o", str(tmp_path / "figs"), "-f", "png"]) == 0
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert "mnist1d_cnn1d_weights_storm.png" in names and "mnist1d_cnn1d_learning_curves.png" in names


def test_saved_weights_survive_a_resume(make_cfg, tmp_path, monkeypatch):
    """Interrupted after epoch 2 of 3 (SIGTERM at the end of the epoch) and resumed: the file holds
    every saved epoch, equal to an uninterrupted run's."""
    from noisybench.methods.storm import STORM

    args = ("method=storm", "trainer.epochs=3", "trainer.save_weights_at=[1,2,3]")
    run(make_cfg(*args), tmp_path / "whole", progress=False)
    calls = {"n": 0}
    original = STORM.epoch_metrics

    def stop_after_second(self, corrupted):
        calls["n"] += 1
        if calls["n"] == 2:
            os.kill(os.getpid(), signal.SIGTERM)  # caught by the runner: it checkpoints at the epoch's end
        return original(self, corrupted)

    monkeypatch.setattr(STORM, "epoch_metrics", stop_after_second)
    with pytest.raises(Interrupted):
        run(make_cfg(*args), tmp_path / "resumed", progress=False)
    with np.load(tmp_path / "resumed" / WEIGHTS) as z:
        assert z["epoch"].tolist() == [0, 1]
    run(make_cfg(*args), tmp_path / "resumed", progress=False)
    with np.load(tmp_path / "whole" / WEIGHTS) as a, np.load(tmp_path / "resumed" / WEIGHTS) as b:
        assert a["epoch"].tolist() == b["epoch"].tolist() == [0, 1, 2]
        np.testing.assert_array_equal(a["weights"], b["weights"])
        np.testing.assert_array_equal(a["corrupted"], b["corrupted"])
