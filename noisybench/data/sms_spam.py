"""SMS Spam Collection (Almeida, Gómez Hidalgo & Yamakami, 2011; UCI, CC BY 4.0): ham (0) / spam (1).

Two ways in:
1. `data_dir/sms_spam/{train,valid,test}.tsv` in STORM's format (header `index sentence1 label`,
   no quoting; its split is 4,502 / 500 / 500, lower-cased). Used as-is when present.
2. Otherwise the original UCI archive in `data_dir/sms_spam/raw/` (placed there by hand, or downloaded
   when `download` is true and the network allows; `download: false` never touches the network) is
   read, the 5,574 messages are lower-cased, and a seeded stratified split of the same sizes
   (4,502 / 500 / 500; the remaining 72 messages are left out) is written as those three TSV files.
   This split is NOT STORM's exact split: for bit-exact comparisons with the paper put its files in
   place.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from noisybench.data import Pool
from noisybench.data.text import SPLITS, ensure_split_files, load_split_dir, stratified_split, write_tsv
from noisybench.errors import DataError
from noisybench.utils import resolve_data_dir

URL = "https://archive.ics.uci.edu/static/public/228/sms+spam+collection.zip"
ARCHIVE = "sms+spam+collection.zip"
SIZES = (4502, 500, 500)


def split_from_archive(archive: Path, out_dir: Path, seed: int = 0) -> None:
    try:
        with zipfile.ZipFile(archive) as z:
            raw = z.read("SMSSpamCollection").decode("utf-8", errors="replace")
    except (zipfile.BadZipFile, KeyError, OSError) as e:
        raise DataError(f"{archive} is not the UCI SMS Spam archive ({e}); delete it to re-download") from None
    texts, labels = [], []
    for n, line in enumerate(io.StringIO(raw), start=1):
        if not line.strip():
            continue
        tag, sep, text = line.rstrip("\n").partition("\t")
        if not sep or tag not in ("ham", "spam"):
            raise DataError(f"{archive}: line {n} is not '<ham|spam><TAB><message>'; delete the archive to re-download")
        texts.append(text.lower())
        labels.append(int(tag == "spam"))
    y = np.array(labels)
    if len(y) < sum(SIZES):
        raise DataError(f"{archive} has {len(y)} messages, fewer than the {sum(SIZES)} of the split "
                        f"{'/'.join(map(str, SIZES))}; it is not the full UCI archive, delete it to re-download")
    for split, idx in zip(SPLITS, stratified_split(y, SIZES, seed)):
        write_tsv(out_dir / f"{split}.tsv", [texts[i] for i in idx], y[idx].tolist())


def load_sms_spam(data_dir: str | None = None, split_seed: int = 0, download: bool = True) -> Pool:
    """STORM's split when its files are in place, else a split of the UCI archive (placed by hand, or
    downloaded when `download` is true; with download false the network is never touched)."""
    root = resolve_data_dir(data_dir) / "sms_spam"
    ensure_split_files("sms_spam", root, ARCHIVE, URL, download, "put STORM's split as train.tsv, valid.tsv, test.tsv",
                       lambda archive, out: split_from_archive(archive, out, split_seed))
    return load_split_dir(root, "sentence1", "label", class_names=["ham", "spam"], name="sms_spam")
