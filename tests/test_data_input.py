"""Bad or scarce data input: exact split sizes, too-small splits, NOISYBENCH_DOWNLOAD=false with no
network touched, and error messages that name config keys which exist (as typed on the command line)."""
from __future__ import annotations

import re
import urllib.request
import zipfile
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import nb
from conftest import group_options
from omegaconf import OmegaConf

from noisybench.config import build
from noisybench.data import download as nbdownload
from noisybench.data import idx, multiwoz, sms_spam, split_pool, youtube_spam
from noisybench.data.digits import load_digits
from noisybench.data.synthwoz import load_synthwoz
from noisybench.data.text import TfidfFeatures, stratified_split
from noisybench.errors import ConfigError, DataError
from noisybench.pipeline import build_data

# a config key as a user types it: `data_dir=...` or `<group>.<key>...=...`
KEY = re.compile(r"(?<![\w.])((?:dataset|noise|model|method|optim|trainer)(?:\.[A-Za-z_]+)+|data_dir)=")
_ABSENT = object()


def keys_named(message: str) -> list[str]:
    return KEY.findall(message)


def assert_names_existing_keys(message: str, cfg, *required: str) -> None:
    """One line; every `key=` it names exists in the composed config; the required ones are named."""
    assert "\n" not in message and "Traceback" not in message
    named = keys_named(message)
    for key in required:
        assert key in named, f"{key!r} not named in: {message}"
    for key in named:
        assert OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT, f"{key} is not a config key: {message}"


def write_tsv(path: Path, rows: list[tuple[str, str]], header=("index", "sentence1", "label")) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = ["\t".join(header)] + [f"{i}\t{t}\t{y}" for i, (t, y) in enumerate(rows)]
    path.write_text("\n".join(lines) + "\n")


# ---- exact split sizes ---------------------------------------------------------------------------

DISTRIBUTIONS = {
    "5/5/5": [0] * 5 + [1] * 5 + [2] * 5,
    "90/10": [0] * 90 + [1] * 10,
    "one class": [3] * 7,
    "singletons": list(range(6)),
    "skewed": [0] * 50 + [1] * 3 + [2] * 1 + [3] * 2,
    "strings": ["b", "a", "c", "a", "b", "a", "a", "c", "b", "a", "a"],
    "shuffled 7/4/2": list(np.random.default_rng(0).permutation([0] * 7 + [1] * 4 + [2] * 2)),
    "two": [0, 1],
}


def size_tuples(n: int, rng: np.random.Generator) -> list[list[int]]:
    out = [[n], [0, n], [n, 0], [1, n - 1], [n - 1, 1], [n // 2, n - n // 2]]
    if n >= 3:
        out += [[1, 1, n - 2], [n - 2, 1, 1], [n // 3, n // 3, n - 2 * (n // 3)]]
    for _ in range(6):  # random partitions of n, and of less than n (the rest is left out)
        parts = int(rng.integers(1, 5))
        cuts = np.sort(rng.integers(0, n + 1, parts - 1))
        sizes = np.diff(np.concatenate([[0], cuts, [n]])).tolist()
        out.append(sizes)
        out.append(sizes[:-1] + [max(0, sizes[-1] - int(rng.integers(0, sizes[-1] + 1)))])
    return [s for s in out if all(v >= 0 for v in s)]


def check_split(labels, sizes, seed) -> list[np.ndarray]:
    y = np.asarray(labels)
    n = len(y)
    parts = stratified_split(y, sizes, seed)
    assert [len(p) for p in parts] == list(sizes), (sizes, seed)
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) and ((joined >= 0) & (joined < n)).all()
    if sum(sizes) == n:  # a partition: every sample in exactly one part
        assert sorted(joined.tolist()) == list(range(n))
    for c in np.unique(y):  # stratified: each class's count is its share rounded down or up
        count = int(np.sum(y == c))
        for p, size in zip(parts, sizes):
            share = count * size / n
            assert np.floor(share) <= np.sum(y[p] == c) <= np.ceil(share), (c, size, sizes, seed)
    return parts


def test_the_reported_case_5_5_5_into_2_and_13():
    y = np.array([0] * 5 + [1] * 5 + [2] * 5)
    for seed in range(10):
        small, big = check_split(y, [2, 13], seed)
        assert len(small) == 2 and len(big) == 13 and len(np.union1d(small, big)) == 15


@pytest.mark.parametrize("name", list(DISTRIBUTIONS))
def test_stratified_split_sizes_are_exact(name):
    y = DISTRIBUTIONS[name]
    rng = np.random.default_rng(len(y))
    for sizes in size_tuples(len(y), rng):
        for seed in range(5):
            check_split(y, sizes, seed)


def test_stratified_split_property_random_labels():
    rng = np.random.default_rng(2024)
    for _ in range(300):
        n = int(rng.integers(1, 60))
        y = rng.integers(0, int(rng.integers(1, 8)), n)
        for sizes in size_tuples(n, rng)[-4:]:
            check_split(y, sizes, int(rng.integers(1000)))


def test_stratified_split_is_deterministic_for_a_seed():
    y = np.array(DISTRIBUTIONS["skewed"])
    a = stratified_split(y, [10, 20, 26], 7)
    b = stratified_split(y, [10, 20, 26], 7)
    assert all(np.array_equal(p, q) for p, q in zip(a, b))
    c = stratified_split(y, [10, 20, 26], 8)
    assert any(not np.array_equal(p, q) for p, q in zip(a, c))


@pytest.mark.parametrize("sizes", [[10, 6], [-1, 16], [16, 1]])
def test_stratified_split_rejects_impossible_sizes(sizes):
    with pytest.raises(DataError, match="cannot split 15 examples") as e:
        stratified_split(np.array(DISTRIBUTIONS["5/5/5"]), sizes, 0)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("n, frac", [(10, 0.1), (45, 0.1), (7, 0.5), (100, 0.3), (3, 0.34), (1000, 0.05)])
def test_validation_split_sizes_add_up(n, frac):
    for seed in range(3):
        train, val = split_pool(n, frac, seed)
        assert len(train) + len(val) == n and len(val) == round(frac * n) >= 1
        assert sorted(np.concatenate([train, val]).tolist()) == list(range(n))


@pytest.mark.parametrize("n, frac, what", [(4, 0.1, "no validation samples"), (1, 0.5, "no validation samples"),
                                           (3, 0.9, "no training samples"), (0, 0.1, "empty")])
def test_validation_split_that_leaves_a_side_empty_is_an_error(make_cfg, n, frac, what):
    with pytest.raises(DataError, match=what) as e:
        split_pool(n, frac, 0)
    assert_names_existing_keys(str(e.value), make_cfg("dataset=tsv", tiny=False))
    if n >= 2:  # a workable value is suggested
        suggestion = re.search(r"dataset\.val_fraction=([0-9.]+) or", str(e.value))
        train, val = split_pool(n, float(suggestion.group(1)), 0)
        assert len(train) >= 1 and len(val) >= 1


def test_zero_val_fraction_is_still_allowed():
    train, val = split_pool(5, 0.0, 0)
    assert len(train) == 5 and len(val) == 0


# ---- too few rows in a TSV directory -------------------------------------------------------------

def test_two_row_train_tsv_is_one_line_error(make_cfg, tmp_path):
    write_tsv(tmp_path / "train.tsv", [("good film", "pos"), ("bad film", "neg")])
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={tmp_path}", "model=linear", "dataset.subset=null")
    with pytest.raises(DataError, match="no validation samples") as e:
        build_data(cfg)
    assert_names_existing_keys(str(e.value), cfg, "dataset.val_fraction")
    assert "train.tsv" in str(e.value) and "valid.tsv" in str(e.value)


@pytest.mark.slow  # the same command is a case of tests/test_bad_input.py (in-process, fast)
def test_two_row_train_tsv_on_the_command_line(cli_env, tmp_path):
    write_tsv(tmp_path / "d" / "train.tsv", [("good film", "pos"), ("bad film", "neg")])
    r = nb("train", "dataset=tsv", f"dataset.loader.path={tmp_path / 'd'}", "model=linear", "trainer.epochs=1",
           "trainer.device=cpu", "trainer.progress=false", env=cli_env)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("noisybench: error:")]
    assert len(errors) == 1 and "dataset.val_fraction=" in errors[0], r.stderr


def test_test_holdout_that_leaves_no_training_rows(make_cfg, tmp_path):
    write_tsv(tmp_path / "train.tsv", [("good film", "pos"), ("bad film", "neg")])
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={tmp_path}", "dataset.loader.test_fraction=0.8")
    with pytest.raises(DataError, match="leaves none for training") as e:
        build_data(cfg)
    assert_names_existing_keys(str(e.value), cfg, "dataset.loader.test_fraction")


def test_smallest_workable_tsv_trains_on_every_split(make_cfg, tmp_path):
    write_tsv(tmp_path / "train.tsv", [("good film", "pos"), ("bad film", "neg")] * 4)  # 8 rows: 2 / 1 / 5
    ds, _ = build_data(make_cfg("dataset=tsv", f"dataset.loader.path={tmp_path}", "dataset.subset=null"))
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (5, 1, 2)


def test_digits_test_fraction_is_a_config_error():
    for bad in (0.0, 1.0, 0.001):
        with pytest.raises(ConfigError, match=r"dataset\.loader\.test_fraction="):
            load_digits(test_fraction=bad)


# ---- NOISYBENCH_DOWNLOAD=false: no network, one line listing the ways in -----------------------

@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test."""
    calls = []

    def refuse(*a, **k):
        calls.append(a)
        raise AssertionError(f"network touched: {a[:1]}")

    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(nbdownload, "fetch", refuse)
    for module in (sms_spam, youtube_spam, multiwoz):  # the loaders that import it by name
        if hasattr(module, "fetch"):
            monkeypatch.setattr(module, "fetch", refuse)
    return calls


@pytest.mark.parametrize("dataset, ways", [
    ("sms_spam", ["train.tsv, valid.tsv, test.tsv", sms_spam.ARCHIVE]),
    ("youtube_spam", ["train.tsv, valid.tsv, test.tsv", youtube_spam.ARCHIVE]),
    ("multiwoz", ["data.json", "MultiWOZ_2.1.zip"]),
])
def test_download_false_never_touches_the_network(make_cfg, monkeypatch, tmp_path, no_network, dataset, ways):
    monkeypatch.setenv("NOISYBENCH_DOWNLOAD", "false")
    cfg = make_cfg(f"dataset={dataset}", tiny=False)
    assert cfg.dataset.loader.download is False
    with pytest.raises(DataError) as e:
        build(cfg.dataset.loader)(data_dir=str(tmp_path))
    msg = str(e.value)
    assert_names_existing_keys(msg, cfg, "data_dir", "dataset.loader.download")
    assert all(w in msg for w in ways) and str(tmp_path) in msg and "NOISYBENCH_DOWNLOAD=false" in msg
    assert not no_network and not list(tmp_path.rglob("*.part"))


@pytest.mark.parametrize("dataset", ["sms_spam", "youtube_spam", "multiwoz"])
def test_download_follows_the_environment(make_cfg, monkeypatch, dataset):
    monkeypatch.setenv("NOISYBENCH_DOWNLOAD", "true")
    assert make_cfg(f"dataset={dataset}", tiny=False).dataset.loader.download is True
    monkeypatch.delenv("NOISYBENCH_DOWNLOAD")
    assert make_cfg(f"dataset={dataset}", tiny=False).dataset.loader.download is True
    monkeypatch.setenv("NOISYBENCH_DOWNLOAD", "false")
    assert make_cfg(f"dataset={dataset}", "dataset.loader.download=true", tiny=False).dataset.loader.download is True


def test_download_false_uses_a_placed_sms_archive(tmp_path, no_network):
    from test_text import make_sms_archive

    make_sms_archive(tmp_path / "sms_spam" / "raw" / sms_spam.ARCHIVE)
    pool = sms_spam.load_sms_spam(str(tmp_path), download=False)
    assert pool.info["splits"] == {"train": 4502, "valid": 500, "test": 500}
    assert len(pool.y_train) == 5002 and not no_network


def test_download_false_uses_a_placed_multiwoz_zip(tmp_path, no_network):
    from test_dst import write_multiwoz

    write_multiwoz(tmp_path / "src", "2.1", area_label="centre")
    archive = tmp_path / "multiwoz" / "2.1" / "raw" / "MultiWOZ_2.1.zip"
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as z:
        for f in (tmp_path / "src" / "multiwoz" / "2.1").iterdir():
            z.write(f, f"MultiWOZ_2.1/{f.name}")
    pool = multiwoz.load_multiwoz(str(tmp_path), "2.1", "2.1", download=False)
    assert [d.id for d in pool.test] == ["TEST1.json"] and not no_network


def test_youtube_archive_too_small_to_split(tmp_path, no_network):
    archive = tmp_path / "youtube_spam" / "raw" / youtube_spam.ARCHIVE
    archive.parent.mkdir(parents=True)
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("Youtube01.csv", "COMMENT_ID,AUTHOR,DATE,CONTENT,CLASS\na,b,c,hello,0\nd,e,f,buy now,1\n")
    with pytest.raises(DataError, match="too few") as e:
        youtube_spam.load_youtube_spam(str(tmp_path), download=False)
    assert "\n" not in str(e.value)


# ---- messages name keys that exist ---------------------------------------------------------------

def test_no_train_tsv_names_dataset_loader_path(make_cfg, tmp_path):
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={tmp_path}")
    with pytest.raises(DataError, match="no train.tsv") as e:
        build_data(cfg)
    assert_names_existing_keys(str(e.value), cfg, "dataset.loader.path")
    assert "dataset.path" not in str(e.value)


@pytest.mark.parametrize("key, header", [("label_column", ("index", "sentence1", "class")),
                                         ("text_column", ("index", "text", "label"))])
def test_missing_column_names_dataset_loader_column(make_cfg, tmp_path, key, header):
    write_tsv(tmp_path / "train.tsv", [("good film", "pos"), ("bad film", "neg")] * 4, header=header)
    cfg = make_cfg("dataset=tsv", f"dataset.loader.path={tmp_path}")
    with pytest.raises(DataError, match="has no column") as e:
        build_data(cfg)
    assert_names_existing_keys(str(e.value), cfg, f"dataset.loader.{key}")
    assert f"dataset.{key}" not in str(e.value)


def test_missing_column_in_a_preset_names_no_loader_key(make_cfg, tmp_path):
    """sms_spam has fixed columns: the message must not point at keys it does not have."""
    for split in ("train", "valid", "test"):
        write_tsv(tmp_path / "sms_spam" / f"{split}.tsv", [("hi", "0"), ("win", "1")], header=("i", "text", "label"))
    cfg = make_cfg("dataset=sms_spam", tiny=False)
    with pytest.raises(DataError, match="STORM's format") as e:
        build(cfg.dataset.loader)(data_dir=str(tmp_path))
    assert_names_existing_keys(str(e.value), cfg)
    assert "column=" not in str(e.value)


def test_bad_idx_file_names_top_level_data_dir(make_cfg, tmp_path):
    folder = tmp_path / "mnist"
    folder.mkdir()
    for stem in idx.FILES.values():
        (folder / stem).write_bytes(b"not an idx file")
    cfg = make_cfg("dataset=mnist", tiny=False)
    with pytest.raises(DataError, match="not an IDX file") as e:
        idx.load_idx_dataset("mnist", str(tmp_path), download=False)
    assert_names_existing_keys(str(e.value), cfg, "data_dir")
    assert "dataset.loader.data_dir" not in str(e.value)


def test_synthwoz_size_message_names_full_keys(make_cfg):
    cfg = make_cfg("dataset=synthwoz", tiny=False)
    with pytest.raises(ConfigError) as e:
        load_synthwoz(num_train=1, num_test=0)
    assert_names_existing_keys(str(e.value), cfg, "dataset.loader.num_train", "dataset.loader.num_test")


def test_empty_tfidf_vocabulary_names_feature_keys(make_cfg):
    cfg = make_cfg("dataset=tsv", tiny=False)
    with pytest.raises(DataError, match="TF-IDF") as e:
        TfidfFeatures(stop_words="english").fit(np.array(["the a", "an the"], dtype=object))
    assert_names_existing_keys(str(e.value), cfg, "dataset.features.min_df", "dataset.features.stop_words")


SOURCES = sorted(p for p in (Path(__file__).resolve().parents[1] / "noisybench" / "data").glob("*.py"))
CONFIGS = sorted((Path(__file__).resolve().parents[1] / "conf" / "dataset").glob("*.yaml"))


def test_every_dataset_key_named_in_data_code_and_configs_exists(make_cfg):
    """Each `dataset.<key>` written in noisybench/data/*.py or conf/dataset/*.yaml (messages,
    docstrings, comments) is a key of at least one composed dataset config."""
    cfgs = [make_cfg(f"dataset={name}", tiny=False) for name in group_options("dataset")]
    named = {}
    for path in [*SOURCES, *CONFIGS]:
        for m in re.finditer(r"(?<![\w.])dataset(?:\.[a-z_]+)+(?!\w)(?!\.[a-z_])", path.read_text()):
            named.setdefault(m.group(0), path.name)
    assert "dataset.loader.path" in named and "dataset.val_fraction" in named
    missing = {k: where for k, where in named.items()
               if all(OmegaConf.select(c, k, default=_ABSENT) is _ABSENT for c in cfgs)}
    assert not missing, f"keys named that no dataset config has: {missing}"
    for path in SOURCES:  # the top-level data directory is `data_dir`, never under the loader
        assert "dataset.loader.data_dir" not in path.read_text(), path.name
