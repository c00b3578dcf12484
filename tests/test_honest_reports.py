"""Reports never hide a run: scores that are not finite or outside their metric's range are named under
the tables and never enter a mean; the footer says every run is in the tables only when it is."""
from __future__ import annotations

import json
import math

import pytest
from test_tables import write_run

from noisybench.cli import main
from noisybench.report.records import left_out_note, load_runs
from noisybench.report.tables import to_markdown
from noisybench.report.writers import write_report


def _sweep(root, bad: float):
    write_run(root, "s0", val=0.80, test=0.50, seed=0)
    write_run(root, "s1", val=0.82, test=0.52, seed=1)
    write_run(root, "s2", val=0.81, test=bad, seed=2)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), 19.07, -0.2])
def test_a_bad_score_is_named_and_never_enters_a_mean(tmp_path, bad):
    _sweep(tmp_path, bad)
    df, left_out = load_runs([tmp_path])
    assert len(df) == 3  # the run stays (its validation scores are fine) ...
    assert left_out["bad_scores"] and str(tmp_path / "s2") in left_out["bad_scores"][0]
    assert "test_last=" in left_out["bad_scores"][0]
    md = to_markdown(df, kinds=["last"])
    assert "51.00 ± 1.41 (2)" in md  # ... but its bad score is in no mean: (50 + 52) / 2 over 2 runs
    assert "inf" not in md and "nan" not in md and "1907" not in md
    note = left_out_note(left_out)
    assert "Every run found is in the tables" not in note
    assert "1 run(s) with a score that is not finite or outside its metric's range" in note and "s2" in note


def test_the_footer_of_written_tables_names_them(tmp_path):
    _sweep(tmp_path, float("nan"))
    write_report([tmp_path], tmp_path)
    text = (tmp_path / "table.md").read_text()
    assert "Left out of their cells (never in a mean)" in text and "s2 (test_last=nan" in text
    assert "Every run found" not in text


def test_report_cli_prints_the_footer(tmp_path, capsys):
    _sweep(tmp_path, 1907.0)
    assert main(["report", str(tmp_path), "-k", "last"]) == 0
    out = capsys.readouterr().out
    assert "51.00 ± 1.41 (2)" in out and "test_last=1907.0" in out


def test_a_clean_sweep_still_says_every_run_is_in(tmp_path):
    _sweep(tmp_path, 0.51)
    df, left_out = load_runs([tmp_path])
    assert left_out_note(left_out) == "Every run found is in the tables."
    assert "51.00 ± 1.00 (3)" in to_markdown(df, kinds=["last"])


def test_a_none_score_is_not_a_bad_score(tmp_path):
    d = write_run(tmp_path, "noval", val=0.8, test=0.5)
    rec = json.loads((d / "result.json").read_text())
    rec.update(test_selected=None, val_selected=None, val_last=None)  # no validation split: legitimately absent
    (d / "result.json").write_text(json.dumps(rec))
    df, left_out = load_runs([tmp_path])
    assert left_out["bad_scores"] == [] and len(df) == 1 and not math.isnan(df["test_last"].iloc[0])


def test_mcc_may_be_negative(tmp_path):
    d = write_run(tmp_path, "mcc", val=-0.2, test=-0.1)
    rec = json.loads((d / "result.json").read_text())
    rec["metric"] = "mcc"
    (d / "result.json").write_text(json.dumps(rec))
    assert load_runs([tmp_path])[1]["bad_scores"] == []
