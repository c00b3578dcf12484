"""Reports read records as written by someone we do not trust: a result.json of another shape (a list
where an object belongs, an int method name, a seed as a string, a config nested without end), a link
out of the sweep, a directory that cannot be listed, metrics.csv / noise.json / sample_weights.npz of
another shape, `$...$` in a label: each is named under the tables or drawn as text, never a traceback
from `noisybench report` or `noisybench plot`; tables that cannot be written leave no stale file."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from test_plot import write_run as write_full_run
from test_tables import write_run

from noisybench.cli import main
from noisybench.report.layout import ReportError
from noisybench.report.records import find_runs, load_runs
from noisybench.report.writers import write_report

ODD = {
    "method is a list": lambda r: r.update(method=[["name", "ce"]]),
    "method.name is 5": lambda r: r["method"].update(name=5),
    "seed is '2'": lambda r: r.update(seed="2"),
    "dataset is an object": lambda r: r.update(dataset={"name": "mnist1d"}),
    "noise is a list": lambda r: r.update(noise=[0.4]),
    "noise.rate is '0.4'": lambda r: r["noise"].update(rate="0.4"),
    "config is a list": lambda r: r.update(config=[1]),
    "selected_epoch is '3'": lambda r: r.update(selected_epoch="3"),
    "best_epoch is a list": lambda r: r.update(best_epoch=[3]),
    "metric is a list": lambda r: r.update(metric=["acc"]),
    "method_metrics is a list": lambda r: r.update(method_metrics=[1]),
    "uses_clean_labels is 'no'": lambda r: r.update(uses_clean_labels="no"),
    "identity is a list": lambda r: r.update(identity=[1]),
    "nests more than 32 levels": lambda r: r["config"].update(deep=json.loads("[" * 40 + "]" * 40)),
    "no key 'seed'": lambda r: r.pop("seed"),
    "result.json is not a JSON object": lambda r: None,  # the record in a list: below
}


def _odd_sweep(root, why: str):
    write_run(root, "s0", val=0.80, test=0.50, seed=0)
    write_run(root, "s1", val=0.82, test=0.52, seed=1)
    bad = write_run(root, "s2", val=0.81, test=0.60, seed=2)
    record = json.loads((bad / "result.json").read_text())
    ODD[why](record)
    (bad / "result.json").write_text(json.dumps([record] if why.startswith("result.json") else record))
    return bad


@pytest.mark.parametrize("why", list(ODD))
def test_a_record_of_another_shape_is_named_not_a_traceback(tmp_path, capsys, why):
    bad = _odd_sweep(tmp_path / "sweep", why)
    assert main(["report", str(tmp_path / "sweep"), "-k", "last"]) == 0
    out = capsys.readouterr().out
    assert "51.00 ± 1.41 (2)" in out  # the two good runs, tabled
    footer = out.strip().splitlines()[-1]
    assert footer.startswith("Not in the tables: 1 skipped (unreadable)") and f"{bad} ({why}" in footer, footer
    assert main(["plot", str(tmp_path / "sweep"), "-o", str(tmp_path / "fig"), "-f", "png"]) == 0
    out = capsys.readouterr().out
    assert f"{bad} ({why}" in out.strip().splitlines()[-1]


def test_a_record_too_deep_to_parse_is_one_line(tmp_path, capsys):
    bad = _odd_sweep(tmp_path, "seed is '2'")
    (bad / "result.json").write_text('{"config": ' + "[" * 100_000 + "]" * 100_000 + "}")
    assert main(["report", str(tmp_path), "-k", "last"]) == 0
    assert f"{bad} (result.json is not valid JSON)" in capsys.readouterr().out


def test_a_symlinked_run_directory_is_named_and_not_followed(tmp_path, capsys):
    sweep, elsewhere = tmp_path / "sweep", tmp_path / "elsewhere"
    write_run(sweep, "s0", val=0.80, test=0.50, seed=0)
    write_run(sweep, "s1", val=0.82, test=0.52, seed=1)
    outside = write_run(elsewhere, "s2", val=0.81, test=0.90, seed=2)
    (sweep / "s2").symlink_to(outside, target_is_directory=True)
    assert (sweep / "s2", "symlinked") in find_runs([sweep])
    df, left_out = load_runs([sweep])
    assert len(df) == 2 and left_out["symlinked"] == [f"{sweep / 's2'} -> {outside}"]
    assert main(["report", str(sweep), "-k", "last"]) == 0
    out = capsys.readouterr().out
    assert "51.00 ± 1.41 (2)" in out  # the run behind the link is not in the mean
    assert f"1 symbolic link(s) not followed (they may lead out of the directories given; give the target as a " \
           f"PATH to include it): {sweep / 's2'} -> {outside}" in out
    assert main(["report", str(sweep), str(outside), "-k", "last"]) == 0  # named as a PATH: counted
    out = capsys.readouterr().out
    assert "64.00 ± 22.54 (3)" in out and "Every run found is in the tables." in out


def test_a_symlinked_result_file_is_named(tmp_path):
    write_run(tmp_path, "s0", val=0.80, test=0.50, seed=0)
    other = write_run(tmp_path / "x", "s1", val=0.82, test=0.52, seed=1)
    run = tmp_path / "s1"
    run.mkdir()
    (run / "result.json").symlink_to(other / "result.json")
    _, left_out = load_runs([tmp_path / "s0", run])
    assert left_out["symlinked"] == [f"{run} (result.json -> {other / 'result.json'})"]


def test_a_directory_that_cannot_be_listed_is_named(tmp_path, monkeypatch, capsys):
    write_run(tmp_path, "s0", val=0.80, test=0.50, seed=0)
    locked = tmp_path / "locked"
    locked.mkdir()
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path) == str(locked):
            raise PermissionError(13, "Permission denied", str(locked))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)  # what a chmod 000 directory does (root reads it anyway)
    _, left_out = load_runs([tmp_path])
    assert left_out["unreadable"] == [f"{locked} (cannot be listed: Permission denied)"]
    assert main(["report", str(tmp_path), "-k", "last"]) == 0
    assert f"1 skipped (unreadable): {locked} (cannot be listed: Permission denied)" in capsys.readouterr().out


def test_a_result_json_that_is_a_directory_is_unreadable_not_unfinished(tmp_path):
    write_run(tmp_path, "s0", val=0.80, test=0.50, seed=0)
    (tmp_path / "s1" / "result.json").mkdir(parents=True)
    _, left_out = load_runs([tmp_path])
    assert left_out["unfinished"] == [] and left_out["unreadable"] == [
        f"{tmp_path / 's1'} (result.json is not a regular file)"]


# ---- tables that cannot be written ----------------------------------------------------------------
def test_tables_that_cannot_be_written_leave_no_stale_file(tmp_path, capsys):
    write_run(tmp_path, "a", val=0.5, test=0.5, method__hidden=1)
    write_report([tmp_path], tmp_path, formats=["md", "csv", "latex"])
    assert (tmp_path / "table.md").is_file() and (tmp_path / "table.tex").is_file()
    write_run(tmp_path, "b", val=0.5, test=0.6, method__hidden=2)  # one cell, one seed, two configurations
    with pytest.raises(ReportError, match="same seed 0"):
        write_report([tmp_path], tmp_path)
    assert not any((tmp_path / f).exists() for f in ("table.md", "table.csv", "table.tex", "report.html"))
    (tmp_path / "table.md").write_text("stale")
    assert main(["report", str(tmp_path), "-o", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "fall in one table cell" in err[0]
    assert not (tmp_path / "table.md").exists()


def test_the_sweep_callback_leaves_no_stale_table(tmp_path, caplog):
    from omegaconf import OmegaConf

    from noisybench.report.callback import SweepTablesCallback

    write_run(tmp_path, "a", val=0.5, test=0.5, method__hidden=1)
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    SweepTablesCallback()._write(config)
    assert "50.00 (1)" in (tmp_path / "table.md").read_text()
    write_run(tmp_path, "b", val=0.5, test=0.6, method__hidden=2)
    SweepTablesCallback()._write(config)  # a warning, and no table.md of the earlier job
    assert "could not write sweep tables" in caplog.text and not (tmp_path / "table.md").exists()


# ---- figures: files of another shape, special characters ------------------------------------------
@pytest.fixture
def small_sweep(tmp_path):
    root = tmp_path / "sweep"
    for method in ("ce", "storm"):
        for rate in (0.0, 0.4):
            for seed in (0, 1):
                write_full_run(root, method, rate, seed)
    return root


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


FILES = {
    "metrics.csv epochs as text": ("ce", lambda d: (d / "metrics.csv").write_text(
        "epoch,test,val\na,b,c\nx,0.5,0.4\n")),
    "metrics.csv binary": ("ce", lambda d: (d / "metrics.csv").write_bytes(b"\xff\xfe\x00\x01\n\x00")),
    "noise.json a list": ("ce", lambda d: (d / "noise.json").write_text("[1, 2]")),
    "noise.json matrix of text": ("ce", lambda d: (d / "noise.json").write_text(
        json.dumps({"transition_matrix": [["a", "b"], ["c", "d"]], "realized_noise_rate": "x"}))),
    # a noise without a transition matrix (dialogue-state noise, real noise): nothing is missing
    "noise.json without a matrix": ("ce", lambda d: (d / "noise.json").write_text('{"type": "dst", "rate": 0.2}')),
    "noise.json names an int": ("ce", lambda d: (d / "noise.json").write_text(
        json.dumps({"transition_matrix": np.eye(3).tolist(), "class_names": 5, "realized_noise_rate": [1]}))),
    "weights truncated": ("storm", lambda d: _truncate(d / "sample_weights.npz")),
    "weights 1-d": ("storm", lambda d: np.savez(d / "sample_weights.npz", epoch=np.array([0]), weights=np.ones(5),
                                                corrupted=np.zeros(5, bool))),
    "weights negative classes": ("storm", lambda d: np.savez(
        d / "sample_weights.npz", epoch=np.array([0]), weights=np.ones((1, 9)), corrupted=np.zeros(9, bool),
        classes=np.full(9, -3))),
}


@pytest.mark.parametrize("case", list(FILES))
def test_run_files_of_another_shape_leave_the_run_out_of_that_figure(small_sweep, tmp_path, capsys, case):
    method, spoil = FILES[case]
    spoil(small_sweep / f"method={method},noise.rate=0.4,seed=0")
    assert main(["plot", str(small_sweep), "-o", str(tmp_path / "fig"), "-f", "png"]) == 0
    out = capsys.readouterr().out
    assert "figures from 8 runs" in out
    run_dir = small_sweep / f"method={method},noise.rate=0.4,seed=0"
    footer = out.strip().splitlines()[-1]
    if case in ("noise.json names an int", "noise.json without a matrix"):  # (drawn without the class names)
        assert footer == "Every run found is in the figures."
    else:
        name = case.split()[0].replace("weights", "sample_weights.npz")
        assert footer == ("Missing from the figures that need the file: 1 run(s) with a file that cannot be read "
                          f"or has another shape: {run_dir} ({name}).")


def test_mathtext_in_labels_is_drawn_as_text(small_sweep):
    from matplotlib import rc_context
    from matplotlib.text import Text

    from noisybench.report.draw import STYLE
    from noisybench.report.figures import figures, png_bytes

    name = r"$\frac{$ storm_$x^2$"  # bad mathtext: matplotlib would raise while drawing it
    for d in small_sweep.iterdir():
        record = json.loads((d / "result.json").read_text())
        if record["method"]["name"] == "storm":
            record["method"]["name"] = name
            (d / "result.json").write_text(json.dumps(record))
        noise = json.loads((d / "noise.json").read_text())
        noise["class_names"] = [f"${i}$" for i in range(10)]
        (d / "noise.json").write_text(json.dumps(noise))
    plots = figures(load_runs([small_sweep])[0])
    assert plots
    texts = []
    for plot in plots:
        assert png_bytes(plot, dpi=40)[:4] == b"\x89PNG"  # drawn: no mathtext parse error
        with rc_context(STYLE):
            texts += [t for t in plot.figure.findobj(Text) if t.get_text()]
    assert any(name in t.get_text() for t in texts) and any(t.get_text() == "$3$" for t in texts)
    assert not [t.get_text() for t in texts if "$" in t.get_text() and t.get_parse_math()]


def test_plot_of_a_directory_holding_only_a_link_names_it(tmp_path, capsys):
    outside = write_run(tmp_path / "elsewhere", "s0", val=0.8, test=0.5)
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "s0").symlink_to(outside, target_is_directory=True)
    assert main(["plot", str(tmp_path / "sweep")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("holds no finished run (finished runs have a result.json); it has 1 "
                                             "symlinked run(s)")
