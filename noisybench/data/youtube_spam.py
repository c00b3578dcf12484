"""YouTube Spam Collection (Alberto, Lochter & Almeida, 2015; UCI, CC BY 4.0): comments on five
videos, ham (0) / spam (1).

Two ways in, as for sms_spam:
1. `data_dir/youtube_spam/{train,valid,test}.tsv` (STORM / AGRA format; their split is
   1,586 / 120 / 250).
2. Otherwise the UCI archive (five CSV files, columns COMMENT_ID, AUTHOR, DATE, CONTENT, CLASS) in
   `data_dir/youtube_spam/raw/` (placed there by hand, or downloaded unless `download: false`) is
   read and all 1,956 comments are split, seeded and stratified, into 1,586 / 120 / 250, written as
   those TSV files (tabs and newlines in comments become spaces).
"""
from __future__ import annotations

import csv
import io
import zipfile
from pathlib import Path

import numpy as np

from noisybench.data import Pool
from noisybench.data.text import SPLITS, ensure_split_files, load_split_dir, stratified_split, write_tsv
from noisybench.errors import DataError
from noisybench.utils import resolve_data_dir

URL = "https://archive.ics.uci.edu/static/public/380/youtube+spam+collection.zip"
ARCHIVE = "youtube+spam+collection.zip"
SIZES = (1586, 120, 250)


def split_from_archive(archive: Path, out_dir: Path, seed: int = 0) -> None:
    texts, labels = [], []
    try:
        with zipfile.ZipFile(archive) as z:
            names = sorted(n for n in z.namelist() if n.lower().endswith(".csv") and "__macosx" not in n.lower())
            if not names:
                raise KeyError("no CSV files")
            for name in names:
                reader = csv.DictReader(io.StringIO(z.read(name).decode("utf-8-sig", errors="replace")))
                for row in reader:
                    texts.append(row["CONTENT"])
                    labels.append(int(row["CLASS"]))
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError) as e:
        raise DataError(f"{archive} is not the UCI YouTube Spam archive ({e}); delete it to re-download") from None
    y = np.array(labels)
    sizes = SIZES if len(y) >= sum(SIZES) else _scaled(len(y))
    if min(sizes) < 1:
        raise DataError(f"{archive} has only {len(y)} comments, too few for a train/valid/test split; "
                        "it is not the UCI archive, delete it to re-download")
    for split, idx in zip(SPLITS, stratified_split(y, sizes, seed)):
        write_tsv(out_dir / f"{split}.tsv", [texts[i] for i in idx], y[idx].tolist())


def _scaled(n: int) -> tuple[int, int, int]:
    """Sizes in the proportions of SIZES that add up to exactly n."""
    val, test = max(1, round(n * SIZES[1] / sum(SIZES))), max(1, round(n * SIZES[2] / sum(SIZES)))
    return n - val - test, val, test


def load_youtube_spam(data_dir: str | None = None, split_seed: int = 0, download: bool = True) -> Pool:
    """The STORM/AGRA split when its files are in place, else a split of the UCI archive (placed by
    hand, or downloaded when `download` is true; with download false the network is never touched)."""
    root = resolve_data_dir(data_dir) / "youtube_spam"
    ensure_split_files("youtube_spam", root, ARCHIVE, URL, download, "put train.tsv, valid.tsv, test.tsv",
                       lambda archive, out: split_from_archive(archive, out, split_seed))
    return load_split_dir(root, "sentence1", "label", class_names=["ham", "spam"], name="youtube_spam")
