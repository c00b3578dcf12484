"""End-to-end training through the real config tree (in-process, tiny subsets)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from conftest import group_options

from noisybench.errors import ConfigError, DataError
from noisybench.pipeline import build_data
from noisybench.tasks import make_task
from noisybench.train import run

RECORD_KEYS = {
    "dataset", "model", "method", "noise", "realized_noise_rate", "seed", "noise_seed", "epochs", "metric",
    "test_last", "test_selected", "selected_epoch", "test_best", "memorized_noisy_frac", "train_time_s",
    "device", "versions", "git_revision", "config",
}


def noise_overrides(noise: str) -> list[str]:
    extra = {"none": [], "asymmetric": ["noise.rate=0.4", "noise.map=pairflip"]}  # mnist1d has no class map
    return [f"noise={noise}"] + extra.get(noise, ["noise.rate=0.4"])


# noises of dialogue states (dst*) are trained in test_dst.py; real (CIFAR-N) needs CIFAR files,
# trained on generated ones in test_images.py
@pytest.mark.parametrize("noise", [n for n in group_options("noise") if not n.startswith("dst") and n != "real"])
@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_trains_under_every_noise(make_cfg, tmp_path, method, noise):
    cfg = make_cfg(f"method={method}", *noise_overrides(noise))
    record = run(cfg, tmp_path, progress=False)
    assert RECORD_KEYS <= set(record)
    assert record["method"]["name"] == method and record["noise"]["type"] == noise
    assert record["metric"] == "acc" and 0.0 <= record["test_last"] <= 1.0
    on_disk = json.loads((tmp_path / "result.json").read_text())
    assert on_disk["test_last"] == record["test_last"]
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [int(r["epoch"]) for r in rows] == [0, 1]
    noise_json = json.loads((tmp_path / "noise.json").read_text())
    T = np.array(noise_json["transition_matrix"])
    assert T.shape == (10, 10) and np.allclose(T.sum(1), 1.0)


@pytest.mark.parametrize("model", group_options("model"))
@pytest.mark.parametrize("dataset", group_options("dataset"))
def test_every_model_on_every_dataset(make_cfg, tmp_path, model, dataset):
    cfg = make_cfg(f"dataset={dataset}", f"model={model}", "trainer.epochs=1", "trainer.threads=1")
    if "search_dirs" in cfg.dataset.loader:  # only what tests generate or embed: never full-size system datasets
        cfg.dataset.loader.search_dirs = []
    try:
        make_task(cfg.dataset).build_data(cfg)
    except (DataError, ConfigError) as e:  # needs files or a download (tested with generated files elsewhere)
        pytest.skip(f"{dataset} is not available offline: {e}")
    try:
        record = run(cfg, tmp_path, progress=False)
    except ConfigError as e:
        if "does not fit" not in str(e) and "pip install" not in str(e):
            raise
        pytest.skip(f"model={model} does not apply to dataset={dataset} here: {e}")
    assert record["dataset"] == dataset and record["model"] == model


def test_training_seed_does_not_change_noise_and_noise_seed_does(make_cfg):
    a, _ = build_data(make_cfg("seed=0"))
    b, _ = build_data(make_cfg("seed=5"))
    c, _ = build_data(make_cfg("seed=0", "noise.seed=1"))
    assert torch.equal(a.y_train, b.y_train) and torch.equal(a.y_val, b.y_val)
    assert not torch.equal(a.y_train, c.y_train)


def test_validation_is_noisy_held_out_and_test_is_clean(make_cfg):
    ds, report = build_data(make_cfg("noise.rate=0.4", tiny=False))
    assert len(ds.y_train) + len(ds.y_val) == report["num_samples"] == 8000
    assert len(ds.y_val) == 800 and len(ds.y_test) == 2000
    val_rate = (ds.y_val != ds.y_val_clean).float().mean().item()
    assert 0.30 < val_rate < 0.42  # inclusive 40 % on 10 classes: 36 % expected
    assert report["realized_noise_rate"] == pytest.approx(0.36, abs=0.02)
    # the held-out validation samples are not in the training split
    tr = {tuple(r) for r in ds.x_train[:, :8].tolist()}
    assert not any(tuple(r) in tr for r in ds.x_val[:, :8].tolist())


def test_subset_takes_n_training_samples(make_cfg):
    ds, _ = build_data(make_cfg("dataset.subset=300"))
    assert len(ds.y_train) == 300 and len(ds.y_val) == 800


def test_same_seed_reproduces_the_run(make_cfg, tmp_path):
    r1 = run(make_cfg("seed=3"), tmp_path / "a", progress=False)
    r2 = run(make_cfg("seed=3"), tmp_path / "b", progress=False)
    assert r1["test_last"] == r2["test_last"] and r1["memorized_noisy_frac"] == r2["memorized_noisy_frac"]


def test_selected_epoch_maximises_noisy_validation(make_cfg, tmp_path):
    record = run(make_cfg("trainer.epochs=4"), tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    vals = [float(r["val"]) for r in rows]
    assert record["selected_epoch"] == int(np.argmax(vals))
    assert record["test_selected"] == pytest.approx(float(rows[record["selected_epoch"]]["test"]))
    assert record["test_best"] == pytest.approx(max(float(r["test"]) for r in rows))
    assert record["test_last"] == pytest.approx(float(rows[-1]["test"]))


def test_dal_schedule_is_logged_per_epoch(make_cfg, tmp_path):
    run(make_cfg("method=dal", "trainer.epochs=4", "method.q_start=0.5", "method.q_end=2.5"), tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "metrics.csv")))
    assert [float(r["q"]) for r in rows] == pytest.approx([0.5, 1.0, 1.5, 2.0])
    assert float(rows[1]["lambda"]) == 0.0 and float(rows[3]["lambda"]) > 0


def test_a_nan_loss_stops_the_run_marked_diverged(make_cfg, tmp_path):
    cfg = make_cfg("optim.optimizer.lr=1e30", "optim.optimizer.momentum=0.0", "trainer.epochs=3")
    record = run(cfg, tmp_path, progress=False)
    d = record["diverged"]
    assert d is not None and d["epoch"] == 0 and "lower the learning rate" in d["message"]
    assert json.loads((tmp_path / "result.json").read_text())["diverged"]["epoch"] == 0
    assert len(list(csv.DictReader(open(tmp_path / "metrics.csv")))) == 1  # stopped in the epoch it diverged


def test_a_finite_explosion_is_diverged_too_and_the_threshold_is_a_key(make_cfg, tmp_path):
    cfg = make_cfg("optim=adam", "optim.optimizer.lr=1e6", "trainer.epochs=3")
    d = run(cfg, tmp_path / "a", progress=False)["diverged"]
    assert d is not None and d["max_train_loss"] == 1e4
    assert d["train_loss"] > 1e4 or d["train_loss"] != d["train_loss"]
    ok = run(make_cfg("trainer.epochs=2"), tmp_path / "b", progress=False)
    assert ok["diverged"] is None
    # a threshold below any loss: every run diverges in its first epoch
    assert run(make_cfg("trainer.epochs=2", "trainer.max_train_loss=1e-9"), tmp_path / "c",
               progress=False)["diverged"]["epoch"] == 0


