"""Text datasets: TSV split dirs (incl. malformed ones), UCI archives, TF-IDF, metrics, presets."""
from __future__ import annotations

import csv
import io
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import group_options
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from noisybench import metrics
from noisybench.data import sms_spam, youtube_spam
from noisybench.data.text import load_split_dir, stratified_split
from noisybench.errors import DataError
from noisybench.pipeline import build_data
from noisybench.report.records import load_summary
from noisybench.report.tables import to_markdown
from noisybench.train import run

WORDS = {"pos": ["great", "fine", "lovely", "good"], "neg": ["awful", "bad", "poor", "ugly"]}


def write_split(path: Path, n: int, seed: int, labels=("neg", "pos"), extra_word: str | None = None) -> None:
    rng = np.random.default_rng(seed)
    lines = ["index\tsentence1\tlabel"]
    for i in range(n):
        lab = labels[i % len(labels)]
        words = list(rng.choice(WORDS[lab], 3)) + ["the", "movie"]
        if extra_word and i == 0:
            words.append(extra_word)
        lines.append(f"{i}\t{' '.join(words)}\t{lab}")
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture
def text_dir(tmp_path) -> Path:
    d = tmp_path / "reviews"
    d.mkdir()
    write_split(d / "train.tsv", 120, 0)
    write_split(d / "valid.tsv", 30, 1)
    write_split(d / "test.tsv", 40, 2, extra_word="zanzibar")
    return d


def test_split_dir_maps_string_labels_and_keeps_given_validation(text_dir):
    pool = load_split_dir(text_dir)
    assert pool.info["label_map"] == {"neg": 0, "pos": 1} and pool.num_classes == 2
    assert len(pool.y_train) == 150 and len(pool.val_index) == 30 and len(pool.y_test) == 40
    assert pool.val_index.tolist() == list(range(120, 150))


def test_numeric_labels_map_in_numeric_order(tmp_path):
    (tmp_path / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta b\t10\n1\tc d\t2\n2\te f\t2\n")
    assert load_split_dir(tmp_path).info["label_map"] == {"2": 0, "10": 1}


def test_tsv_dataset_trains_and_fits_tfidf_on_train_only(make_cfg, text_dir, tmp_path):
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={text_dir}", "model=linear", "noise.rate=0.2",
                   "dataset.subset=null")
    ds, _ = build_data(cfg)
    assert ds.x_train.shape[1] == ds.x_test.shape[1] == ds.info["features"]["vocabulary_size"]
    record = run(cfg, tmp_path / "run", progress=False)
    assert record["dataset"] == "tsv" and record["dataset_info"]["label_map"] == {"neg": 0, "pos": 1}
    # the word that occurs only in test.tsv is not in the vocabulary fitted on train
    from noisybench.data import split_indices
    from noisybench.data.text import TfidfFeatures

    pool = load_split_dir(text_dir)
    train_idx, _ = split_indices(pool, 0.1, 0)
    feats = TfidfFeatures().fit(pool.x_train[train_idx])
    assert "zanzibar" not in feats.vectorizer.vocabulary_ and "lovely" in feats.vectorizer.vocabulary_


def test_tsv_without_valid_and_test_holds_them_out(make_cfg, tmp_path):
    write_split(tmp_path / "train.tsv", 100, 0)
    ds, _ = build_data(make_cfg("dataset=tsv", f"dataset.loader.path={tmp_path}", "dataset.subset=null"))
    assert len(ds.y_test) == 20 and len(ds.y_val) == 8 and len(ds.y_train) == 72


@pytest.mark.parametrize("case, expect", [
    ("missing_column", "no column 'sentence1'"),
    ("empty_split", "no rows"),
    ("unseen_label", "never seen in train.tsv"),
    ("no_train", "no train.tsv"),
    ("bad_fields", "fields"),
    ("one_class", "single label"),
])
def test_malformed_split_dirs_raise_clear_errors(tmp_path, case, expect):
    write_split(tmp_path / "train.tsv", 20, 0)
    if case == "missing_column":
        (tmp_path / "valid.tsv").write_text("index\ttext\tlabel\n0\thello\tpos\n")
    elif case == "empty_split":
        (tmp_path / "test.tsv").write_text("index\tsentence1\tlabel\n")
    elif case == "unseen_label":
        (tmp_path / "test.tsv").write_text("index\tsentence1\tlabel\n0\thello there\tneutral\n")
    elif case == "no_train":
        (tmp_path / "train.tsv").unlink()
    elif case == "bad_fields":
        (tmp_path / "test.tsv").write_text("index\tsentence1\tlabel\n0\thello\tthere\tpos\n")
    elif case == "one_class":
        (tmp_path / "train.tsv").write_text("index\tsentence1\tlabel\n0\ta\tpos\n1\tb\tpos\n")
    with pytest.raises(DataError, match=expect) as e:
        load_split_dir(tmp_path)
    assert "\n" not in str(e.value)


def test_tsv_without_path_is_a_config_error(make_cfg):
    from noisybench.errors import ConfigError

    with pytest.raises(ConfigError, match="dataset.loader.path"):
        build_data(make_cfg("dataset=tsv"))


@pytest.mark.parametrize("name", ["acc", "f1", "macro_f1", "mcc"])
def test_metrics_match_scikit_learn(name):
    rng = np.random.default_rng(0)
    ref = {"acc": accuracy_score, "f1": f1_score, "mcc": matthews_corrcoef,
           "macro_f1": lambda y, p: f1_score(y, p, average="macro")}[name]
    for k in (2, 3) if name != "f1" else (2,):
        y = rng.integers(0, k, 200)
        p = np.where(rng.random(200) < 0.7, y, rng.integers(0, k, 200))
        got = float(metrics.METRICS[name](torch.as_tensor(p), torch.as_tensor(y)))
        assert got == pytest.approx(ref(y, p), abs=1e-6)
    # degenerate: nothing predicted positive
    y, p = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0])
    assert float(metrics.f1_positive(p, y)) == 0.0 == f1_score(y.numpy(), p.numpy(), zero_division=0)
    assert float(metrics.mcc(p, y)) == 0.0


@pytest.mark.parametrize("method", group_options("method"))
def test_every_method_trains_on_text(make_cfg, text_dir, tmp_path, method):
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={text_dir}", "dataset.metric=f1", "model=linear",
                   "model.dropout=0.1", f"method={method}", "trainer.epochs=1", "trainer.batch_size=64",
                   "dataset.subset=null")
    record = run(cfg, tmp_path, progress=False)
    assert record["metric"] == "f1"
    assert set(record["test_other_metrics"]["last"]) == {"acc", "macro_f1", "mcc"}


def test_clean_validation_option(make_cfg, text_dir, tmp_path):
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={text_dir}", "model=linear", "noise.rate=0.6",
                   "noise.include_true_class=false", "noise.apply_to_val=false", "dataset.subset=null")
    ds, report = build_data(cfg)
    assert torch.equal(ds.y_val, ds.y_val_clean) and (ds.y_train != ds.y_train_clean).any()
    assert report["applied_to"].startswith("train") and report["num_samples"] == 120
    run(cfg, tmp_path, progress=False)
    record = json.loads((tmp_path / "result.json").read_text())
    assert record["noise"]["apply_to_val"] is False
    assert "(clean val)" in to_markdown(load_summary([tmp_path]))


def make_sms_archive(path: Path, n_ham: int = 4800, n_spam: int = 774) -> None:
    lines = [f"ham\tHello friend number {i} see you" for i in range(n_ham)]
    lines += [f"spam\tWIN a FREE prize {i} call now" for i in range(n_spam)]
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("SMSSpamCollection", "\n".join(lines) + "\n")
        z.writestr("readme", "generated for tests")


def test_sms_from_a_placed_uci_archive(tmp_path, monkeypatch):
    make_sms_archive(tmp_path / "sms_spam" / "raw" / sms_spam.ARCHIVE)
    monkeypatch.setattr("urllib.request.urlopen", lambda *a, **k: pytest.fail("must not download"))
    pool = sms_spam.load_sms_spam(str(tmp_path))
    assert pool.info["splits"] == {"train": 4502, "valid": 500, "test": 500}
    assert pool.class_names == ["ham", "spam"]
    spam_share = [np.mean(pool.y_train[pool.val_index]), np.mean(pool.y_test)]
    assert all(abs(s - 774 / 5574) < 0.01 for s in spam_share)  # stratified
    assert (tmp_path / "sms_spam" / "train.tsv").read_text().startswith("index\tsentence1\tlabel\n")
    assert "hello friend" in (tmp_path / "sms_spam" / "train.tsv").read_text()  # lower-cased


def test_youtube_from_a_placed_uci_archive(tmp_path):
    archive = tmp_path / "youtube_spam" / "raw" / youtube_spam.ARCHIVE
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as z:
        for v in range(1, 6):
            buf = io.StringIO()
            w = csv.writer(buf)
            w.writerow(["COMMENT_ID", "AUTHOR", "DATE", "CONTENT", "CLASS"])
            for i in range(392):
                w.writerow([f"id{v}_{i}", "someone", "2015",
                            f"check my\tchannel\n{i}" if i % 2 else f"nice song {i}", i % 2])
            z.writestr(f"Youtube0{v}-video.csv", buf.getvalue())
    pool = youtube_spam.load_youtube_spam(str(tmp_path))
    assert pool.info["splits"] == {"train": 1586, "valid": 120, "test": 250}


def test_download_failure_names_the_ways_in(tmp_path, monkeypatch):
    def offline(*a, **k):
        raise OSError("network is unreachable")

    monkeypatch.setattr("urllib.request.urlopen", offline)
    with pytest.raises(DataError, match="could not download .*put STORM's split as train.tsv"):
        sms_spam.load_sms_spam(str(tmp_path))
    assert not list(tmp_path.rglob("*.part"))


def test_stratified_split_sizes_and_disjointness():
    y = np.array([0] * 90 + [1] * 10)
    parts = stratified_split(y, [50, 20, 20], seed=0)
    assert [len(p) for p in parts] == [50, 20, 20]
    assert len(np.unique(np.concatenate(parts))) == 90
    assert [int(y[p].sum()) for p in parts] == [5, 2, 2]


def test_storm_spam_preset_composes(make_cfg):
    cfg = make_cfg("experiment=storm_spam", tiny=False)
    assert cfg.dataset.name == "sms_spam" and cfg.model.name == "linear" and cfg.optim.name == "adam"
    assert cfg.optim.optimizer.lr == 5e-2 and cfg.trainer.epochs == 10 and cfg.trainer.batch_size == 32
    assert cfg.noise.include_true_class is False and cfg.noise.apply_to_val is False
    assert cfg.optim.scheduler._target_ is None


SMS_DIR = os.environ.get("NOISYBENCH_SPAM_DIR")


@pytest.mark.skipif(not SMS_DIR or not (Path(SMS_DIR) / "sms_spam" / "train.tsv").is_file(),
                    reason="set NOISYBENCH_SPAM_DIR to a directory holding sms_spam/{train,valid,test}.tsv")
def test_real_sms_split_one_epoch(make_cfg, tmp_path):
    cfg = make_cfg("experiment=storm_spam", f"data_dir={SMS_DIR}", "trainer.epochs=1", "noise.rate=0.0", tiny=False)
    record = run(cfg, tmp_path, progress=False)
    assert record["num_train"] == 4502 and record["num_val"] == 500 and record["num_test"] == 500
    assert record["metric"] == "f1" and record["test_last"] > 0.8
