"""The detection score of every method: how well the per-sample training loss (plain cross-entropy
against the noisy labels) separates the clean training samples from the corrupted ones. The formula
against scikit-learn, the runner writing it for every method, and the report and figures showing it
(with a reweighting method's weight AUC beside it) without counting an undefined score (noise 0) as a
bad one."""
from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest
import torch
from conftest import group_options
from test_tables import write_run as write_record

from noisybench.cli import main
from noisybench.metrics import detection
from noisybench.report.records import left_out_note, load_runs
from noisybench.report.tables import to_markdown
from noisybench.train import run


@pytest.mark.parametrize("seed", range(5))
def test_auc_and_low_k_share_match_their_definitions(seed):
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(seed)
    n = 300
    bad = torch.rand(n, generator=g) < 0.3
    # rounded losses: many ties, counted 1/2 each
    loss = torch.round((torch.rand(n, generator=g) + 0.4 * bad) * 10) / 10
    auc, lowk = detection(loss, bad)
    clean = ~bad
    assert float(auc) == pytest.approx(sklearn_metrics.roc_auc_score(clean.numpy(), -loss.numpy()), abs=1e-12)
    k = int(clean.sum())
    order = np.argsort(loss.numpy(), kind="stable")[:k]
    assert float(lowk) == pytest.approx(bad.numpy()[order].mean(), abs=1e-12)


def test_perfect_random_and_reversed_separation():
    bad = torch.tensor([False, False, False, True, True])
    assert [float(v) for v in detection(torch.tensor([0.1, 0.2, 0.3, 0.9, 1.0]), bad)] == [1.0, 0.0]
    auc, lowk = detection(torch.tensor([0.9, 1.0, 0.8, 0.1, 0.2]), bad)
    assert float(auc) == 0.0 and float(lowk) == pytest.approx(2 / 3)
    assert float(detection(torch.ones(5), bad)[0]) == 0.5  # all tied: chance


@pytest.mark.parametrize("corrupted", [torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)])
def test_undefined_without_both_kinds_of_sample(corrupted):
    assert all(math.isnan(float(v)) for v in detection(torch.rand(4), corrupted))


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_records_the_score(make_cfg, tmp_path, method):
    record = run(make_cfg(f"method={method}", "noise.rate=0.4"), tmp_path, progress=False)
    on_disk = json.loads((tmp_path / "result.json").read_text())
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert on_disk["detect_auc"] == record["detect_auc"] == pytest.approx(float(rows[-1]["detect_auc"]))
    assert 0.0 <= record["detect_auc"] <= 1.0 and 0.0 <= record["detect_noisy_in_lowk"] <= 1.0
    sel = record["selected_epoch"]
    assert record["detect_auc_selected"] == pytest.approx(float(rows[sel]["detect_auc"]))
    hist = record["detection"]
    assert hist["epoch"] == [0, 1] and hist["auc"][-1] == record["detect_auc"] and "cross-entropy" in hist["score"]
    assert f"detect_auc={record['detect_auc']:.4f}" in (tmp_path / "train.log").read_text()
    if method == "storm":  # its own weight AUC stays beside it
        assert "weight_auc" in rows[-1] and "weight_auc" in record["method_metrics"]


def test_evaluation_scores_the_model_cross_entropy_on_the_noisy_labels(make_cfg):
    """The task's evaluation applies the formula to plain CE of the model's logits against the NOISY
    training labels, whatever the method (one pass with the predictions)."""
    from noisybench.tasks import make_task

    cfg = make_cfg("noise.rate=0.4", "method=gce")
    task = make_task(cfg.dataset)
    ds, _ = task.build_data(cfg)
    torch.manual_seed(0)
    model = task.build_model(cfg.model, ds)
    row = task.evaluate(model, ds, batch_size=50)
    with torch.no_grad():
        model.eval()
        loss = torch.nn.functional.cross_entropy(model(ds.x_train.float()), ds.y_train, reduction="none")
    auc, lowk = detection(loss, ds.y_train != ds.y_train_clean)
    assert (ds.y_train != ds.y_train_clean).any()
    assert row["detect_auc"] == pytest.approx(float(auc), abs=1e-6)
    assert row["detect_noisy_in_lowk"] == pytest.approx(float(lowk), abs=1e-6)


def test_no_noise_gives_no_score_and_no_complaint(make_cfg, tmp_path):
    record = run(make_cfg("noise=none"), tmp_path / "clean", progress=False)
    assert record["detect_auc"] is None and record["detect_noisy_in_lowk"] is None
    assert set(record["detection"]["auc"]) == {None}
    run(make_cfg("noise.rate=0.4"), tmp_path / "noisy", progress=False)
    df, left_out = load_runs([tmp_path])
    assert left_out_note(left_out) == "Every run found is in the tables."
    md = to_markdown(df, kinds=["detection"])
    assert "detection AUC" in md and "nan" not in md.lower()
    row = next(line for line in md.splitlines() if line.startswith("| ce"))
    assert row.split("|")[2].strip() == "–" and "(1)" in row.split("|")[3]  # none: no score; 0.4: one run


def _with_detection(root, name, auc, seed=0, method="ce", weight_auc=None):
    d = write_record(root, name, val=0.8, test=0.5, seed=seed, method=method)
    rec = json.loads((d / "result.json").read_text())
    rec.update(detect_auc=auc, detect_auc_selected=auc, detect_noisy_in_lowk=0.1)
    if weight_auc is not None:
        rec["method_metrics"] = {"weight_auc": weight_auc}
    (d / "result.json").write_text(json.dumps(rec))
    return d


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -0.1])
def test_a_detection_score_out_of_range_is_named(tmp_path, bad):
    _with_detection(tmp_path, "s0", 0.9, seed=0)
    _with_detection(tmp_path, "s1", bad, seed=1)
    df, left_out = load_runs([tmp_path])
    assert len(left_out["bad_scores"]) == 1 and "detect_auc=" in left_out["bad_scores"][0]
    assert "90.00 (1)" in to_markdown(df, kinds=["detection"])  # the bad one is in no mean


def test_the_detection_table_puts_the_weight_auc_beside_it(tmp_path, capsys):
    for seed in (0, 1):
        _with_detection(tmp_path, f"ce{seed}", 0.6 + seed / 10, seed=seed)
        _with_detection(tmp_path, f"st{seed}", 0.8, seed=seed, method="storm", weight_auc=0.7 + seed / 10)
    assert main(["report", str(tmp_path), "-k", "detection,last", "--no-marks"]) == 0
    out = capsys.readouterr().out
    detection_table, last_table = out.split("### ")[1:3]
    rows = [ln.split("|")[1].strip() for ln in detection_table.splitlines() if ln.startswith("| ") and "---" not in ln]
    assert rows == ["method", "ce", "storm", "storm [weight AUC]"]
    assert "| storm [weight AUC] | 75.00 ± 7.07 (2) |" in detection_table
    assert "| ce | 65.00 ± 7.07 (2) |" in detection_table
    assert "weight AUC" not in last_table and "P(clean sample's training CE" in detection_table
    assert main(["report", str(tmp_path), "-k", "detection"]) == 0  # marks: the weight AUC is not ranked
    marked = capsys.readouterr().out
    assert "| storm | **80.00** ± 0.00 (2) |" in marked and "| ce | <u>65.00</u> ± 7.07 (2) |" in marked
    assert "| storm [weight AUC] | 75.00 ± 7.07 (2) |" in marked


def test_fewer_corrupted_samples_among_the_lowest_losses_is_better(tmp_path, capsys):
    for seed in (0, 1):
        for method, lowk in (("ce", 0.30), ("gce", 0.10)):
            d = _with_detection(tmp_path, f"{method}{seed}", 0.7, seed=seed, method=method)
            rec = json.loads((d / "result.json").read_text())
            rec["detect_noisy_in_lowk"] = lowk + seed / 100
            (d / "result.json").write_text(json.dumps(rec))
    assert main(["report", str(tmp_path), "-k", "detection_lowk"]) == 0
    out = capsys.readouterr().out
    assert "| gce | **10.50** ± 0.71 (2) |" in out and "| ce | <u>30.50</u> ± 0.71 (2) |" in out


def test_the_learning_curves_draw_the_score(tmp_path):
    from matplotlib import rc_context

    from noisybench.report.draw import STYLE
    from noisybench.report.figures import groups, learning_curves

    for seed in (0, 1):
        d = write_record(tmp_path, f"s{seed}", val=0.8, test=0.5, seed=seed)
        with open(d / "metrics.csv", "w") as f:
            f.write("epoch,train_loss,val,test,detect_auc\n0,2.0,0.5,0.5,0.9\n1,1.5,0.6,0.6,0.7\n")
    with rc_context(STYLE):
        (plot,) = learning_curves(groups(load_runs([tmp_path])[0])[0], {})
    caption, fig = plot.caption, plot.figure
    (line,) = [ln for ln in fig.axes[0].get_lines() if ln.get_label() == "detection AUC of the training loss"]
    assert list(line.get_ydata()) == pytest.approx([90.0, 70.0])
    assert "detection AUC" in caption


def test_a_task_without_the_score_records_none():
    """DST (several decisions per sample) has no detection score: result.json says null, not a made-up value."""
    from noisybench.record import detection_history

    assert detection_history([{"epoch": 0, "test": 0.5}, {"epoch": 1, "test": 0.6}]) is None
    hist = detection_history([{"epoch": 0, "detect_auc": None, "detect_noisy_in_lowk": None},
                              {"epoch": 2, "detect_auc": 0.7, "detect_noisy_in_lowk": 0.2}])
    assert hist["epoch"] == [0, 2] and hist["auc"] == [None, 0.7] and hist["noisy_in_lowk"] == [None, 0.2]


def test_old_records_without_the_score_table_as_empty_cells(tmp_path):
    write_record(tmp_path, "old", val=0.8, test=0.5)  # a result.json written before the score existed
    df, left_out = load_runs([tmp_path])
    assert left_out["bad_scores"] == []
    md = to_markdown(df, kinds=["detection"])
    assert "| ce | – |" in md
