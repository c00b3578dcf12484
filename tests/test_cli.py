"""The command line: errors, a single run, a multirun with tables, report, unique run dirs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from cli_helpers import nb

from noisybench.cli import main


@pytest.mark.parametrize("args, expect", [
    (["noise.rate=1.5"], "noise.rate"),
    (["noise.rate=-0.1"], "noise.rate"),
    (["method=gce", "method.q=0"], "method.q"),
    (["method=dal", "method.q_start=0.8", "method.q_end=0.8"], "q_end"),
    (["trainer.epochs=0"], "trainer.epochs"),
    (["noise=none", "noise.rate=0.3"], "noise=symmetric"),
    (["noise.sampling=sometimes"], "sampling"),
    (["foo=1"], "foo"),
    (["method.qq=0.5"], "qq"),
    (["method=nosuchmethod"], "ce, coteaching, dal, elr"),
    (["-m", "noise.rate=0.2,1.2"], "noise.rate"),
])
def test_bad_input_one_line_error_nonzero_exit_no_result(args, expect, capsys, cli_env, monkeypatch, tmp_path):
    for k, v in cli_env.items():
        monkeypatch.setenv(k, v)
    code = main(["train", *args, "experiment=smoke"])
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1, err
    assert err.startswith("noisybench: error:") and expect in err
    assert not list(tmp_path.rglob("result.json"))


def test_help_lists_subcommands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "report" in out


def test_unknown_subcommand(capsys):
    assert main(["trian"]) == 2
    assert "unknown command" in capsys.readouterr().err


def test_single_run_prints_result_path(cli_env, tmp_path):
    p = nb("train", "experiment=smoke", "method=dal", "noise.rate=0.4", env=cli_env)
    assert p.returncode == 0, p.stderr
    path = Path(p.stdout.split("result: ")[1].split()[0])
    record = json.loads(path.read_text())
    assert record["method"] == {"name": "dal", "q_start": 0.6, "q_end": 1.5, "bootstrap": "soft"}
    assert record["noise"]["rate"] == 0.4 and record["noise"]["include_true_class"] is True
    assert str(tmp_path / "outputs") in str(path)


def test_runtime_error_is_one_line_and_leaves_no_result(cli_env, tmp_path):
    # found only with the data: the subset is larger than the training split
    p = nb("train", "experiment=smoke", "dataset.subset=100000", "trainer.epochs=3", env=cli_env)
    assert p.returncode == 2
    assert len(p.stderr.strip().splitlines()) == 1 and "use dataset.subset=" in p.stderr
    assert not list(tmp_path.rglob("result.json"))
    assert list(tmp_path.rglob("failed.json"))


def test_two_jobs_started_together_get_distinct_dirs(cli_env, tmp_path):
    cmd = [sys.executable, "-m", "noisybench.cli", "train", "experiment=smoke"]
    procs = [subprocess.Popen(cmd, env=cli_env, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    _outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(list((tmp_path / "outputs").rglob("result.json"))) == 2


def test_multirun_writes_summary_and_tables_and_report_rebuilds_them(cli_env, tmp_path):
    p = nb("train", "-m", "experiment=smoke", "method=ce,gce,dal", "noise.rate=0.2,0.4", "seed=0,1",
           env=cli_env)
    assert p.returncode == 0, p.stderr
    (sweep,) = list((tmp_path / "multirun").glob("*/*"))
    summary = pd.read_csv(sweep / "summary.csv")
    assert len(summary) == 12
    assert set(summary["method"]) == {"ce", "gce", "dal"} and set(summary["seed"]) == {0, 1}
    table = (sweep / "table.md").read_text()
    assert "last epoch" in table and "selected by validation (noisy labels" in table and "ORACLE" in table
    assert "| method | symmetric 0.2 | symmetric 0.4 |" in table
    for m in ("ce", "gce", "dal"):
        assert f"| {m} |" in table
    assert table.count("(2)") == 3 * 3 * 2  # 3 kinds x 3 methods x 2 noise settings, 2 seeds each

    out = tmp_path / "report"
    r = nb("report", str(sweep), "-o", str(out), "-f", "md,csv,latex", env=cli_env)
    assert r.returncode == 0, r.stderr
    assert (out / "table.md").read_text() == table
    assert "\\begin{tabular}" in (out / "table.tex").read_text()
    assert len(pd.read_csv(out / "summary.csv")) == 12


def test_report_merges_sweeps_and_labels_varying_hyperparameters(cli_env, tmp_path):
    for q in ("0.5", "0.9"):
        p = nb("train", "-m", "experiment=smoke", "method=gce", f"method.q={q}", "seed=0,1", env=cli_env)
        assert p.returncode == 0, p.stderr
    sweeps = [str(s) for s in (tmp_path / "multirun").glob("*/*")]
    r = nb("report", *sweeps, env=cli_env)
    assert r.returncode == 0, r.stderr
    assert "| gce (q=0.5) |" in r.stdout and "| gce (q=0.9) |" in r.stdout


def test_report_on_empty_dir_fails(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) != 0


def test_table_column_labels_name_the_noise():
    from noisybench.report.records import _noise_label

    assert _noise_label({"type": "real", "label_set": "worse", "seed": 0}) == "real worse"
    assert _noise_label({"type": "dst_real"}) == "dst_real"
    assert _noise_label({"type": "symmetric", "rate": 0.4, "include_true_class": False}) == "symmetric 0.4 excl"
    assert _noise_label({"type": "none"}) == "none"
