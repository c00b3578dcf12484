"""Text classification data: split directories of TSV files, and TF-IDF features.

A split directory holds `train.tsv` and optionally `valid.tsv` and `test.tsv`: tab-separated, a
header row, no quoting (the format of STORM's spam splits: `index<TAB>sentence1<TAB>label`).
Labels may be any strings; they are mapped to ids in an order that depends on nothing but the labels
(`label_mapping`: numeric order when every label is a number, else code-point order of the strings) and
the mapping is recorded with each run.
"""
from __future__ import annotations

import csv
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from noisybench.data import Pool
from noisybench.data import download as nbdownload  # (fetch looked up when called: tests patch it)
from noisybench.errors import ConfigError, DataError
from noisybench.utils import atomic_write_text

SPLITS = ("train", "valid", "test")


def read_tsv(path: Path, text_column: str, label_column: str,
             column_fix: str | None = None) -> tuple[list[str], list[str]]:
    """Texts and label strings of one split file. `column_fix` is what to tell the user when a
    column is missing (default: the `dataset=tsv` loader keys that name the columns)."""
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not UTF-8 text ({e.reason}); re-save it as UTF-8") from None
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror}") from None
    if not rows:
        raise DataError(f"{path} is empty; it needs a header row with '{text_column}' and '{label_column}'")
    header = rows[0]
    for col, key in ((text_column, "text_column"), (label_column, "label_column")):
        if col not in header:
            fix = column_fix or f"set dataset.loader.{key}=<one of them>"
            raise DataError(f"{path} has no column '{col}' (its columns: {', '.join(header)}); {fix}")
    ti, li = header.index(text_column), header.index(label_column)
    texts, labels = [], []
    for n, row in enumerate(rows[1:], start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DataError(f"{path} line {n} has {len(row)} fields, the header has {len(header)}; "
                            "the file must be tab-separated without quoting (no tabs inside texts)")
        texts.append(row[ti])
        labels.append(row[li].strip())
    if not texts:
        raise DataError(f"{path} has a header but no rows; every split needs at least one example")
    return texts, labels


def _number(label: str) -> float | None:
    """The label's value when it is a number (NaN is not: it has no place in an order), else None."""
    try:
        value = float(label)
    except ValueError:
        return None
    return None if math.isnan(value) else value


def label_mapping(labels: Sequence[str], where: str = "the labels") -> dict[str, int]:
    """Label string -> class id, in an order that depends on the labels only (never on hash seeds):
    by value when every label is a number (`-1` < `2` < `10`), else by the strings' code points (`''` <
    `0` < `Ham` < `ham` < `nan` < `spam`; a `nan` or empty label makes the order textual). Labels that
    spell one number in several ways (`1`, `01`, `1.0`) are refused (DataError naming them): as text
    they would be several classes, which is hardly what the file means."""
    uniq = sorted(set(labels))
    values = {v: _number(v) for v in uniq}
    spellings: dict[float, list[str]] = {}
    for v, x in values.items():
        if x is not None:
            spellings.setdefault(x, []).append(v)
    clash = [sorted(group, key=len) for group in spellings.values() if len(group) > 1]
    if clash:
        shown = "; ".join(", ".join(group) for group in clash[:3])
        raise DataError(f"{where} spell one number several ways ({shown}): they would be different classes; "
                        "write each class's label one way (e.g. 1, not 01 or 1.0)")
    if all(x is not None for x in values.values()):
        uniq = sorted(uniq, key=lambda v: values[v])
    return {v: i for i, v in enumerate(uniq)}


def _allocate(counts: Sequence[int], sizes: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Integer K x P table: row k sums to counts[k], column p to sizes[p] (sum(sizes) must equal
    sum(counts)), and every cell is its proportional share counts[k] * sizes[p] / n rounded down or
    up (controlled rounding). The cells rounded up are the largest remainders (ties in seeded
    random order), corrected by augmenting paths where that greedy choice would break a margin;
    such a table always exists because the unrounded shares are one."""
    counts, sizes = np.asarray(counts, dtype=np.int64), np.asarray(sizes, dtype=np.int64)
    n = int(counts.sum())
    K, P = len(counts), len(sizes)
    if n == 0:
        return np.zeros((K, P), dtype=np.int64)
    share = np.outer(counts, sizes)  # exact integers: the share of cell (k, p) is share / n
    table, rem = share // n, share % n
    row_need = counts - table.sum(axis=1)
    col_need = sizes - table.sum(axis=0)
    up = np.zeros((K, P), dtype=bool)  # cells rounded up
    tie = rng.random((K, P))
    for flat in np.lexsort((tie.ravel(), -rem.ravel())):
        k, p = divmod(int(flat), P)
        if rem[k, p] > 0 and row_need[k] > 0 and col_need[p] > 0:
            up[k, p] = True
            row_need[k] -= 1
            col_need[p] -= 1
    while row_need.any():  # greedy got stuck: move round-ups along an alternating path
        start = int(np.flatnonzero(row_need > 0)[0])
        parent_col: dict[int, int] = {}  # column -> row it was reached from
        parent_row: dict[int, int] = {start: -1}  # row -> column it was reached from
        frontier, end = [start], None
        while frontier and end is None:
            nxt = []
            for k in frontier:
                for p in np.flatnonzero((rem[k] > 0) & ~up[k]):
                    p = int(p)
                    if p in parent_col:
                        continue
                    parent_col[p] = k
                    if col_need[p] > 0:
                        end = p
                        break
                    for k2 in np.flatnonzero(up[:, p]):
                        if int(k2) not in parent_row:
                            parent_row[int(k2)] = p
                            nxt.append(int(k2))
                if end is not None:
                    break
            frontier = nxt
        if end is None:  # impossible when the margins are consistent
            raise RuntimeError(f"no stratified allocation of classes {counts.tolist()} into {sizes.tolist()}")
        col_need[end] -= 1
        row_need[start] -= 1
        p = end
        while True:
            k = parent_col[p]
            up[k, p] = True
            back = parent_row[k]
            if back == -1:
                break
            up[k, back] = False
            p = back
    return table + up


def stratified_split(labels: np.ndarray, sizes: Sequence[int], seed: int) -> list[np.ndarray]:
    """Seeded stratified split into disjoint parts of exactly the given sizes.

    Each class's count in each part is its proportional share rounded down or up (largest
    remainders first), with every part exactly its size and every class used exactly once: when
    the sizes sum to len(labels) every sample is in exactly one part; when they sum to less, the
    rest (also stratified) is left out. Deterministic for a seed."""
    labels = np.asarray(labels)
    n = len(labels)
    sizes = [int(s) for s in sizes]
    if any(s < 0 for s in sizes) or sum(sizes) > n:
        raise DataError(f"cannot split {n} examples into parts of sizes {sizes}")
    rng = np.random.default_rng(seed)
    classes = np.unique(labels)
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in classes]
    columns = sizes + ([n - sum(sizes)] if sum(sizes) < n else [])  # the left-out rest, if any
    table = _allocate([len(b) for b in by_class], columns, rng)
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    for members, row in zip(by_class, table):
        bounds = np.concatenate([[0], np.cumsum(row)])
        for p in range(len(sizes)):
            parts[p].append(members[bounds[p]:bounds[p + 1]])
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, dtype=np.int64) for p in parts]


def write_tsv(path: Path, texts: Sequence[str], labels: Sequence[int]) -> None:
    """Write a split in the STORM format (atomically); tabs/newlines inside texts become spaces."""
    lines = ["index\tsentence1\tlabel"]
    lines += [f"{i}\t{' '.join(t.split())}\t{y}" for i, (t, y) in enumerate(zip(texts, labels))]
    atomic_write_text(path, "\n".join(lines) + "\n")


def load_split_dir(path: str | Path, text_column: str = "sentence1", label_column: str = "label",
                   test_fraction: float = 0.2, split_seed: int = 0,
                   class_names: Sequence[str] | None = None, name: str = "tsv") -> Pool:
    """Pool from a split directory. Without valid.tsv the runner holds out `dataset.val_fraction`
    of train; without test.tsv a seeded stratified `test_fraction` of train becomes the test set."""
    path = Path(path).expanduser()
    if not (path / "train.tsv").is_file():
        raise DataError(f"no train.tsv in {path}; set dataset.loader.path=DIR to a directory with train.tsv "
                        "(and optionally valid.tsv, test.tsv)")
    # the preset datasets (sms_spam, ...) have fixed columns: there is no loader key to change
    column_fix = None if name == "tsv" else (
        f"it is not in STORM's format (header index, {text_column}, {label_column}); replace it, or delete "
        f"the .tsv files in {path} to have them made again from the archive")
    raw = {s: read_tsv(path / f"{s}.tsv", text_column, label_column, column_fix)
           for s in SPLITS if (path / f"{s}.tsv").is_file()}
    mapping = label_mapping(raw["train"][1], f"labels in {path / 'train.tsv'}")
    for split in ("valid", "test"):
        if split in raw:
            unseen = sorted(set(raw[split][1]) - set(mapping))
            if unseen:
                respelt = [f"{u} (train.tsv: {t})" for u in unseen for t in mapping
                           if _number(u) is not None and _number(u) == _number(t)]
                raise DataError(f"{path / (split + '.tsv')} has labels never seen in train.tsv: "
                                f"{', '.join(unseen[:5])}; every label must occur in the training split"
                                + (f", spelt the same way ({', '.join(respelt[:3])})" if respelt else ""))
    if len(mapping) < 2:
        raise DataError(f"{path / 'train.tsv'} has a single label ({next(iter(mapping))}); need at least 2 classes")
    texts = list(raw["train"][0])
    y = np.array([mapping[v] for v in raw["train"][1]], dtype=np.int64)
    if "test" in raw:
        x_test, y_test = np.array(raw["test"][0], dtype=object), np.array([mapping[v] for v in raw["test"][1]])
    else:
        if not 0 < test_fraction < 1:
            raise ConfigError(f"dataset.loader.test_fraction={test_fraction} must be in (0, 1) "
                              "when there is no test.tsv")
        n_test = max(1, int(round(test_fraction * len(y))))
        if n_test >= len(y):
            raise DataError(f"{path / 'train.tsv'} has {len(y)} rows and there is no test.tsv: holding out "
                            f"dataset.loader.test_fraction={test_fraction} ({n_test} rows) as the test set leaves "
                            "none for training; add rows to train.tsv, add a test.tsv, or lower it, e.g. "
                            "dataset.loader.test_fraction=0.2")
        test_idx, train_idx = stratified_split(y, [n_test, len(y) - n_test], split_seed)
        x_test, y_test = np.array(texts, dtype=object)[test_idx], y[test_idx]
        texts, y = [texts[i] for i in train_idx], y[train_idx]
    val_index = None
    if "valid" in raw:
        val_index = np.arange(len(texts), len(texts) + len(raw["valid"][0]))
        texts += raw["valid"][0]
        y = np.concatenate([y, [mapping[v] for v in raw["valid"][1]]]).astype(np.int64)
    names = list(class_names) if class_names else list(mapping)
    return Pool(np.array(texts, dtype=object), y, x_test, np.asarray(y_test, dtype=np.int64),
                num_classes=len(mapping), class_names=names, val_index=val_index,
                info={"source": name, "path": str(path), "label_map": mapping,
                      "splits": {s: len(raw[s][0]) for s in raw}})


def load_tsv(data_dir: str | None = None, path: str | None = None, **kwargs) -> Pool:
    """`dataset=tsv`: the user's own split directory (`dataset.loader.path`)."""
    if not path:
        raise ConfigError("dataset=tsv needs dataset.loader.path=<directory with train.tsv [valid.tsv test.tsv]>")
    return load_split_dir(path, **kwargs)


class TfidfFeatures:
    """scikit-learn's TfidfVectorizer, fitted on the training split only; dense float32 output.

    Dense rather than sparse: at spam-benchmark sizes (a few thousand documents, ~10^4 terms) a
    dense matrix of tens of MB makes batch indexing and the linear layer plain tensor ops."""

    def __init__(self, lowercase: bool = True, ngram_range: Sequence[int] = (1, 1), min_df: int | float = 1,
                 max_df: float = 1.0, max_features: int | None = None, sublinear_tf: bool = False,
                 stop_words: str | None = None) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self.params = dict(lowercase=lowercase, ngram_range=tuple(ngram_range), min_df=min_df, max_df=max_df,
                           max_features=max_features, sublinear_tf=sublinear_tf, stop_words=stop_words)
        self.vectorizer = TfidfVectorizer(dtype=np.float32, **self.params)

    def fit(self, texts: np.ndarray) -> TfidfFeatures:
        try:
            self.vectorizer.fit(list(texts))
        except ValueError as e:  # e.g. an empty vocabulary
            raise DataError(f"TF-IDF could not be fitted on the training texts: {e}; check that the text "
                            "column holds the texts and the TF-IDF pruning, e.g. dataset.features.min_df=1 "
                            "dataset.features.max_df=1.0 dataset.features.stop_words=null") from None
        return self

    def transform(self, texts: np.ndarray) -> np.ndarray:
        return self.vectorizer.transform(list(texts)).toarray()

    def describe(self) -> dict:
        return {"type": "tfidf", "vocabulary_size": len(self.vectorizer.vocabulary_), **self.params}


def ensure_split_files(name: str, root: Path, archive_name: str, url: str, download: bool, first_way: str,
                       split_archive) -> None:
    """train/valid/test.tsv in `root`, else made by `split_archive(archive, root)` from the dataset's
    archive in `root/raw/` (placed by hand, or downloaded when `download` is true; with download false
    the network is never touched and a missing archive is one line listing the ways to provide it)."""
    if all((root / f"{s}.tsv").is_file() for s in SPLITS):
        return
    archive = root / "raw" / archive_name
    ways = (f"{first_way} in {root} (or set data_dir=DIR to a directory with {name}/ in it), or place "
            f"{archive_name} in {root / 'raw'}")
    if not archive.is_file():
        if not download:
            raise DataError(f"{name}: no train.tsv, valid.tsv, test.tsv in {root} and no {archive_name} in "
                            f"{root / 'raw'}, and downloading is off (dataset.loader.download=false, "
                            f"the default under NOISYBENCH_DOWNLOAD=false); {ways}, or allow the download "
                            "(dataset.loader.download=true, needs network)")
        archive = nbdownload.fetch(url, archive, hint=ways)
    split_archive(archive, root)
