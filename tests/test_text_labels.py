"""TSV labels map to class ids in an order fixed by the labels alone (never by PYTHONHASHSEED, also with a
`nan` or empty label), and labels that spell one number several ways are refused in one line."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from noisybench.data.text import label_mapping, load_split_dir
from noisybench.errors import DataError

LABELS = ["1", "0", "nan", "2", "", "spam", "Ham", "-1", "10"]
MAP_IN_A_SUBPROCESS = ("import json, sys; from noisybench.data.text import load_split_dir; "
                       "pool = load_split_dir(sys.argv[1]); "
                       "print(json.dumps([pool.info['label_map'], pool.y_train.tolist(), pool.y_test.tolist()]))")


def _split_dir(root, labels):
    root.mkdir(parents=True, exist_ok=True)
    rows = [f"{i}\tword{i} text{i % 7}\t{label}" for i, label in enumerate(labels * 4)]
    (root / "train.tsv").write_text("index\tsentence1\tlabel\n" + "\n".join(rows) + "\n")
    return root


@pytest.mark.parametrize("labels", [["1", "0", "nan", "2"], ["b", "", "a", "nan", "3"]])
def test_the_mapping_is_the_same_under_every_hash_seed(tmp_path, labels):
    d = _split_dir(tmp_path / "data", labels)
    seen = set()
    for hash_seed in ("0", "1", "2", "3", "4", "5"):  # set order differs between hash seeds; the mapping must not
        env = dict(os.environ, PYTHONHASHSEED=hash_seed)
        out = subprocess.run([sys.executable, "-c", MAP_IN_A_SUBPROCESS, str(d)], capture_output=True, text=True,
                             env=env, check=True).stdout
        seen.add(out)
    assert len(seen) == 1, seen
    label_map = json.loads(seen.pop())[0]
    assert label_map == {v: i for i, v in enumerate(sorted(labels))}  # with a nan or empty label: text order


def test_the_order_is_documented_numbers_by_value_else_text():
    assert label_mapping(["10", "2", "-1"]) == {"-1": 0, "2": 1, "10": 2}
    assert label_mapping(["10", "2", "nan"]) == {"10": 0, "2": 1, "nan": 2}  # NaN is no number: text order
    assert list(label_mapping(LABELS)) == ["", "-1", "0", "1", "10", "2", "Ham", "nan", "spam"]


@pytest.mark.parametrize("labels, named", [(["1", "01", "1.0", "0"], "1, 01, 1.0"), (["0", "-0", "a"], "0, -0"),
                                           (["2", "2.00", "nan"], "2, 2.00")])
def test_labels_that_spell_one_number_several_ways_are_refused(tmp_path, labels, named):
    d = _split_dir(tmp_path, labels)
    with pytest.raises(DataError) as e:
        load_split_dir(d)
    message = str(e.value)
    assert "\n" not in message and f"spell one number several ways ({named})" in message
    assert str(d / "train.tsv") in message and "write each class's label one way" in message


def test_a_respelt_label_in_test_tsv_is_named(tmp_path):
    d = _split_dir(tmp_path, ["0", "1"])
    (d / "test.tsv").write_text("index\tsentence1\tlabel\n0\tx y\t1.0\n1\tz w\t0\n")
    respelt = r"never seen in train.tsv: 1.0; .* spelt the same way \(1.0 \(train.tsv: 1\)\)"
    with pytest.raises(DataError, match=respelt):
        load_split_dir(d)


def test_the_cli_refuses_respelt_labels_in_one_line(tmp_path, cli_env):
    d = _split_dir(tmp_path / "data", ["1", "01", "0"])
    p = subprocess.run([sys.executable, "-m", "noisybench", "train", "dataset=tsv", f"dataset.loader.path={d}",
                        "model=linear", f"hydra.run.dir={tmp_path / 'run'}"], capture_output=True, text=True,
                       env=cli_env, cwd=tmp_path)
    err = p.stderr.strip().splitlines()
    assert p.returncode != 0 and len(err) == 1 and err[0].startswith("noisybench: error:"), p.stderr
    assert "spell one number several ways (1, 01)" in err[0]
