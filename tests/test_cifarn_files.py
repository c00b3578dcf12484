"""The real CIFAR-N label files (Wei et al., ICLR 2022) through the `noise=real` path, and the
loader's refusal of files that are not plain numpy label arrays.

The published files are not part of the project: they are read from `shared/data/cifar-n/` beside
the repository (or from $NOISYBENCH_CIFARN_DIR); the tests that need them skip when they are absent.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from noisybench.config import build
from noisybench.data.cifarn import _load_pt, load_human_labels
from noisybench.errors import DataError


def cifarn_dir() -> Path:
    env = os.environ.get("NOISYBENCH_CIFARN_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar-n"


# (dataset, file, label set, num classes, noise rate in % that the file holds, published rate in %)
RATES = [
    # the paper and the authors' README say 9.03 %; the published file holds 4,505 of 50,000
    # changed labels, i.e. 9.01 % (10 labels fewer): we check what the file holds
    ("cifar10", "CIFAR-10_human.pt", "aggre", 10, 9.01, 9.03),
    ("cifar10", "CIFAR-10_human.pt", "random1", 10, 17.23, 17.23),
    ("cifar10", "CIFAR-10_human.pt", "worse", 10, 40.21, 40.21),
    ("cifar100", "CIFAR-100_human.pt", "noisy", 100, 40.20, 40.20),
]


@pytest.mark.parametrize("dataset,file,label_set,num_classes,in_file,published", RATES,
                         ids=[f"{r[0]}-{r[2]}" for r in RATES])
def test_published_files_give_the_published_noise_rates(make_cfg, dataset, file, label_set, num_classes,
                                                        in_file, published):
    folder = cifarn_dir()
    if not (folder / file).is_file():
        pytest.skip(f"{file} not found in {folder} (set NOISYBENCH_CIFARN_DIR to the CIFAR-N folder)")
    # the real config tree, pointed at the folder that holds the files: noise=real as a run builds it
    cfg = make_cfg(f"dataset={dataset}", "noise=real", f"noise.label_set={label_set}", "noise.download=false",
                   f"noise.data_dir={folder.parent}", f"dataset.human_labels.folder={folder.name}")
    injector = build(cfg.noise)
    # the CIFAR images are not needed: the file's own clean labels stand in for the dataset's
    clean = np.asarray(_load_pt(folder / file)["clean_label"], dtype=np.int64)
    assert clean.shape == (50_000,) and clean.min() == 0 and clean.max() == num_classes - 1
    noisy = injector(clean, num_classes)
    rate = 100.0 * float(np.mean(noisy != clean))
    print(f"\n{file} {label_set}: noise rate {rate:.2f} % ({int(np.sum(noisy != clean))} of {len(clean)}; "
          f"published {published:.2f} %)")
    assert round(rate, 2) == pytest.approx(in_file, abs=1e-9)
    assert abs(in_file - published) <= 0.02


# -- files that are not plain numpy label arrays --------------------------------------------------

def torch_zip(path: Path, pkl: bytes, folder: str = "archive") -> Path:
    """A file in torch's zip layout (`<folder>/data.pkl`) holding the pickle `pkl`."""
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{folder}/data.pkl", pkl)
        z.writestr(f"{folder}/version", "3\n")
    return path


def torch_legacy(path: Path, pkl: bytes) -> Path:
    """A file in torch's legacy (pre-1.6) layout: magic number, protocol, sys_info, then `pkl`."""
    head = b"".join(pickle.dumps(x, protocol=2) for x in
                    (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True}))
    path.write_bytes(head + pkl)
    return path


def labels_pickle(spelling: str) -> bytes:
    """A protocol-2 pickle of a label dict whose arrays name numpy's helpers as `spelling`
    (`numpy.core` as numpy 1 writes it, `numpy._core` as numpy 2 does)."""
    pkl = pickle.dumps({"clean_label": np.arange(6), "noisy_label": np.array([0, 1, 2, 3, 4, 0])}, protocol=2)
    for current in (b"numpy._core.multiarray", b"numpy.core.multiarray"):
        pkl = pkl.replace(current + b"\n", spelling.encode() + b".multiarray\n")
    assert spelling.encode() + b".multiarray\n" in pkl
    return pkl


@pytest.mark.parametrize("spelling", ["numpy.core", "numpy._core"])
@pytest.mark.parametrize("layout", [torch_zip, torch_legacy])
def test_numpy_1_and_2_pickles_load_in_both_layouts(tmp_path, spelling, layout):
    path = layout(tmp_path / "CIFAR-100_human.pt", labels_pickle(spelling))
    d = _load_pt(path)
    assert np.array_equal(d["clean_label"], np.arange(6)) and d["noisy_label"].dtype == np.int64
    labels = load_human_labels(path, "noisy_label", "clean_label", np.arange(6), download=False)
    assert labels.tolist() == [0, 1, 2, 3, 4, 0]


def test_a_file_of_torch_tensors_still_loads(tmp_path):
    path = tmp_path / "t.pt"
    torch.save({"clean_label": torch.arange(4), "worse_label": torch.tensor([0, 1, 1, 3])}, path)
    labels = load_human_labels(path, "worse_label", "clean_label", np.arange(4), download=False)
    assert labels.tolist() == [0, 1, 1, 3]


class Evil:
    """Unpickling this runs a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch '{self.marker}'",)


def evil_pickles(marker: Path) -> dict[str, bytes]:
    evil = {"clean_label": np.arange(3), "worse_label": Evil(marker)}
    return {"protocol2": pickle.dumps(evil, protocol=2),  # GLOBAL 'posix system'
            "protocol5": pickle.dumps(evil, protocol=5),  # STACK_GLOBAL
            # builtins.eval behind a numpy-looking first entry
            "eval": pickle.dumps(np.arange(2), protocol=2)[:-1]  # without STOP
            + b"cbuiltins\neval\n(V__import__('os').system('touch " + str(marker).encode() + b"')\ntR."}


@pytest.mark.parametrize("kind", ["protocol2", "eval"])
def test_the_crafted_pickles_are_live(tmp_path, kind):
    """Plain pickle runs them (a harmless `touch`): the refusal below is what stops them."""
    marker = tmp_path / "ran"
    pickle.loads(evil_pickles(marker)[kind])
    assert marker.exists()


@pytest.mark.parametrize("kind", ["protocol2", "protocol5", "eval", "torch.save", "legacy", "with-tensors"])
def test_a_malicious_file_is_refused_and_runs_nothing(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = tmp_path / "CIFAR-10_human.pt"
    pickles = evil_pickles(marker)
    if kind == "torch.save":
        torch.save({"clean_label": np.arange(3), "worse_label": Evil(marker)}, path)
    elif kind == "with-tensors":  # torch globals first: handed to torch's weights-only loader, which refuses
        torch.save({"clean_label": torch.arange(3), "worse_label": Evil(marker)}, path)
    elif kind == "legacy":
        torch_legacy(path, pickles["protocol2"])
    else:
        torch_zip(path, pickles[kind])
    with pytest.raises(DataError) as e:
        load_human_labels(path, "worse_label", "clean_label", np.arange(3), download=False)
    msg = str(e.value)
    assert "\n" not in msg and "refusing" in msg and ("system" in msg or "eval" in msg), msg
    assert "delete" not in msg
    assert not marker.exists(), "the file ran code while being refused"


def test_a_truncated_or_damaged_file_is_called_corrupt(tmp_path):
    good = tmp_path / "good.pt"
    torch.save({"clean_label": np.arange(5000), "worse_label": np.arange(5000)}, good)
    data = good.read_bytes()
    cases = {"truncated": data[: len(data) // 2], "empty": b"",
             "legacy-truncated": torch_legacy(tmp_path / "l.pt", labels_pickle("numpy.core")).read_bytes()[:-40]}
    damaged = bytearray(data)
    start = data.index(b"clean_label")  # inside archive/data.pkl: the zip's CRC no longer matches
    damaged[start + 200: start + 216] = b"\xff" * 16
    cases["damaged"] = bytes(damaged)
    url = "https://example.org/CIFAR-10_human.pt"
    for name, content in cases.items():
        path = tmp_path / f"{name}.pt"
        path.write_bytes(content)
        with pytest.raises(DataError) as e:
            load_human_labels(path, "worse_label", "clean_label", np.arange(5000), url=url, download=False)
        msg = str(e.value)
        assert "\n" not in msg and "corrupt" in msg and url in msg and "download it again" in msg, (name, msg)
        assert "delete" not in msg
    # the intact file loads: no error on a good file
    assert load_human_labels(good, "worse_label", "clean_label", np.arange(5000), download=False).shape == (5000,)


def test_errors_on_a_good_file_do_not_blame_the_file(tmp_path):
    path = torch_zip(tmp_path / "CIFAR-10_human.pt", labels_pickle("numpy.core"))
    with pytest.raises(DataError) as e:  # the wrong dataset's labels: the file itself is fine
        load_human_labels(path, "noisy_label", "clean_label", np.arange(6)[::-1].copy(), download=False)
    assert "does not match" in str(e.value) and "corrupt" not in str(e.value) and "delete" not in str(e.value)
