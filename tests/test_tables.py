"""Tables: one configuration per cell, varied keys as labels, duplicates counted once, refusal to
average runs that share a seed, and `report --tune` on sweeps whose answer is known."""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pandas as pd
import pytest

from noisybench.cli import main
from noisybench.report.layout import ReportError
from noisybench.report.records import load_runs
from noisybench.report.tables import tables, to_markdown
from noisybench.report.writers import write_report

BASE = {
    "seed": 0, "data_dir": None,
    "dataset": {"name": "mnist1d", "subset": None, "val_fraction": 0.1},
    "noise": {"name": "symmetric", "rate": 0.4, "seed": 0, "include_true_class": True, "sampling": "bernoulli"},
    "model": {"name": "cnn1d", "channels": 25},
    "method": {"name": "ce", "_target_": "noisybench.methods.ce.CrossEntropy", "_partial_": True},
    "optim": {"name": "sgd", "optimizer": {"lr": 0.05, "weight_decay": 5e-4},
              "scheduler": {"name": "cosine", "T_max": 10}},
    "trainer": {"epochs": 10, "batch_size": 128, "progress": False, "device": "cpu"},
}


def write_run(root: Path, name: str, *, val: float, test: float, method: str = "ce", hp: dict | None = None,
              **overrides) -> Path:
    """A finished run directory with a result.json whose config has `overrides` (dotted keys)."""
    cfg = copy.deepcopy(BASE)
    cfg["method"]["name"] = method
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split("__")
        node = cfg
        for p in parents:
            node = node[p]
        node[leaf] = value
    record = {
        "dataset": "mnist1d", "model": "cnn1d", "method": {"name": method, **(hp or {})},
        "noise": {"type": cfg["noise"]["name"], "rate": cfg["noise"]["rate"], "include_true_class": True,
                  "sampling": "bernoulli", "seed": cfg["noise"]["seed"]},
        "realized_noise_rate": 0.36, "seed": cfg["seed"], "noise_seed": cfg["noise"]["seed"],
        "epochs": cfg["trainer"]["epochs"], "metric": "acc", "test_last": test, "val_last": val,
        "test_selected": test, "val_selected": val, "selected_epoch": 3, "test_best": test, "best_epoch": 3,
        "config": cfg,
    }
    d = root / name
    d.mkdir(parents=True)
    (d / "result.json").write_text(json.dumps(record))
    return d


def lr_sweep(root: Path) -> None:
    """lr 0.001 is better on validation, lr 0.2 on test: tuning must pick 0.001."""
    for seed in (0, 1):
        write_run(root, f"lr0.001-s{seed}", val=0.80 + seed / 100, test=0.50 + seed / 100,
                  seed=seed, optim__optimizer__lr=0.001)
        write_run(root, f"lr0.2-s{seed}", val=0.60 + seed / 100, test=0.90 + seed / 100,
                  seed=seed, optim__optimizer__lr=0.2)


def test_each_cell_is_one_configuration(tmp_path):
    lr_sweep(tmp_path)
    df, _ = load_runs([tmp_path])
    (title, _, table), *_ = list(tables(df, ["last"]))
    assert list(table.index) == ["ce, lr=0.001", "ce, lr=0.2"]
    assert table.loc["ce, lr=0.001", "symmetric 0.4"] == "50.50 ± 0.71 (2)"
    assert table.loc["ce, lr=0.2", "symmetric 0.4"] == "90.50 ± 0.71 (2)"
    assert "varied: lr in {0.001, 0.2}" in title and "trainer.epochs=10" in title
    summary = write_report([tmp_path], tmp_path / "out")
    csv = pd.read_csv(tmp_path / "out" / "summary.csv")
    assert sorted(csv["optim.optimizer.lr"]) == [0.001, 0.001, 0.2, 0.2]
    assert "_config" not in csv.columns and len(summary) == 4


def test_noise_keys_go_to_columns_and_derived_keys_are_named_once(tmp_path):
    for seed in (0, 1):
        for epochs in (5, 10):
            write_run(tmp_path, f"e{epochs}-s{seed}", val=0.5, test=0.5 + epochs / 100, seed=seed,
                      trainer__epochs=epochs, optim__scheduler__T_max=epochs)
        for mp in ("a", "b"):
            write_run(tmp_path, f"m{mp}-s{seed}", val=0.5, test=0.4, seed=seed, noise__map=mp)
    df, _ = load_runs([tmp_path])
    (title, _, table), *_ = list(tables(df, ["last"]))
    assert "T_max" not in title and "epochs in {5, 10}" in title
    assert any("map=a" in c for c in table.columns)


def test_a_key_of_one_noise_type_is_not_a_label(tmp_path):
    """asymmetric noise has `noise.map`, instance noise `noise.std`, symmetric neither: the column's noise name
    already says it, so no `map=None` / `std=None` in the labels; a value swept within one type still is."""
    for seed in (0, 1):
        write_run(tmp_path, f"sym{seed}", val=0.5, test=0.5, seed=seed)
        write_run(tmp_path, f"asym{seed}", val=0.5, test=0.6, seed=seed, noise__name="asymmetric",
                  noise__map="fashion_mnist")
        for std in (0.1, 0.2):
            write_run(tmp_path, f"inst{std}-{seed}", val=0.5, test=0.7, seed=seed, noise__name="instance",
                      noise__std=std)
    df, _ = load_runs([tmp_path])
    ((title, _, table),) = list(tables(df, ["last"]))
    assert "map" not in title and "map=" not in "".join(table.columns)
    assert "std=0.1" in "".join(table.columns) and "std=0.2" in "".join(table.columns)


def test_noise_seed_tied_to_seed_is_a_replicate(tmp_path):
    for seed in (0, 1, 2):
        write_run(tmp_path, f"s{seed}", val=0.5, test=0.5, seed=seed, noise__seed=seed)
    df, _ = load_runs([tmp_path])
    (_, _, table), *_ = list(tables(df, ["last"]))
    assert list(table.index) == ["ce"] and table.iloc[0, 0].endswith("(3)")


def test_two_runs_of_a_cell_with_one_seed_are_refused(tmp_path):
    # they differ only in a method key the method label does not show: not averaged, refused
    write_run(tmp_path, "a", val=0.5, test=0.5, method__hidden=1)
    write_run(tmp_path, "b", val=0.5, test=0.6, method__hidden=2)
    df, _ = load_runs([tmp_path])
    with pytest.raises(ReportError, match="same seed 0"):
        to_markdown(df)


def test_tune_picks_the_best_validation_value_not_the_best_test(tmp_path, capsys):
    lr_sweep(tmp_path)
    for seed in (0, 1):  # a second method where the larger lr wins on validation
        write_run(tmp_path, f"gce-lr0.001-s{seed}", val=0.3, test=0.3, method="gce", hp={"q": 0.7}, seed=seed,
                  optim__optimizer__lr=0.001)
        write_run(tmp_path, f"gce-lr0.2-s{seed}", val=0.7, test=0.6 + seed / 10, method="gce", hp={"q": 0.7},
                  seed=seed, optim__optimizer__lr=0.2)
    assert main(["report", str(tmp_path), "--tune", "optim.optimizer.lr", "-k", "selected,best", "--no-marks"]) == 0
    out = capsys.readouterr().out
    assert "| ce | 50.50 ± 0.71 (2) [lr=0.001] |" in out
    assert "| gce | 65.00 ± 7.07 (2) [lr=0.2] |" in out
    assert "tuned lr (chosen per cell by the best mean val_selected over seeds" in out
    assert "| ce | 90.50 ± 0.71 (2) [lr=0.2] |" in out and "ORACLE: chosen by mean test score" in out


def test_tune_a_method_key_added_at_its_default_is_one_row(tmp_path, capsys):
    """`--tune method.sharpness` over runs of sharpness 1 (the default: the run's identity leaves the key out,
    rundir.ADDED_AT_DEFAULT) and 2: one storm row, the value chosen per cell by validation; CE, which has no
    such key, is a plain row beside it."""
    for seed in (0, 1):
        for tau, val, test in ((1.0, 0.5, 0.60), (2.0, 0.7, 0.80)):
            storm = dict(BASE["method"], name="storm", sharpness=tau)
            write_run(tmp_path, f"storm{tau}-s{seed}", val=val, test=test + seed / 100, method="storm",
                      hp={"sharpness": tau}, seed=seed, method__sharpness=storm["sharpness"])
        write_run(tmp_path, f"ce-s{seed}", val=0.6, test=0.7, seed=seed)
    assert main(["report", str(tmp_path), "--tune", "method.sharpness", "-k", "last", "--no-marks"]) == 0
    out = capsys.readouterr().out
    assert "| storm | 80.50 ± 0.71 (2) [sharpness=2] |" in out
    assert "| ce | 70.00 ± 0.00 (2) |" in out
    assert "storm (sharpness" not in out and "[sharpness=None]" not in out and "[]" not in out


def test_tune_unknown_key_is_one_line_error(tmp_path, capsys):
    lr_sweep(tmp_path)
    assert main(["report", str(tmp_path), "--tune", "optim.optimizer.lrr"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "optim.optimizer.lr" in err and err.startswith("noisybench: error:")


def test_runs_that_learnt_from_clean_labels_are_marked_oracle(tmp_path):
    """Forward correction with the realised T (and STORM's clean_val) learn from clean labels: their
    rows say so; the estimated T's error reaches summary.csv."""
    for t, clean in (("estimated", False), ("oracle", True)):
        d = write_run(tmp_path, t, val=0.5, test=0.5, method="forward", hp={"transition": t},
                      method__transition=t)
        record = json.loads((d / "result.json").read_text())
        record.update(uses_clean_labels=clean, method_result={"T_mae": 0.05} if not clean else {})
        (d / "result.json").write_text(json.dumps(record))
    df, _ = load_runs([tmp_path])
    assert sorted(df["method_label"]) == ["forward (transition=estimated)",
                                          "forward (transition=oracle) [ORACLE: clean labels]"]
    assert df.set_index("method_label")["method_T_mae"]["forward (transition=estimated)"] == 0.05
    assert "| forward (transition=oracle) [ORACLE: clean labels] |" in to_markdown(df)
