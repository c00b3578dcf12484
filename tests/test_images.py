"""Image datasets from small files written in the real formats, augmentation, models, and every
experiment preset composed and trained for one epoch on generated data. Nothing downloads."""
from __future__ import annotations

import gzip
import json
import pickle

import numpy as np
import pytest
import torch

from noisybench.data.augment import BatchTransform
from noisybench.data.cifar import load_cifar
from noisybench.data.idx import load_idx_dataset, read_idx
from noisybench.errors import ConfigError, DataError

OFFLINE = ["dataset.loader.download=false"]


def write_idx(path, arr: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + arr.astype(np.uint8).tobytes())


def make_idx(folder, n_train=60, n_test=20, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28)),
              "train-labels-idx1-ubyte": np.arange(n_train) % 10,
              "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28)),
              "t10k-labels-idx1-ubyte": np.arange(n_test) % 10}
    for name, a in arrays.items():
        write_idx(folder / f"{name}.gz", a)
    return arrays


def make_cifar(root, dataset="cifar10", per_batch=8, n_test=10, seed=0):
    """Pickle batches in torchvision's layout; returns the training labels in file order."""
    import torchvision.datasets as tvd

    tv = {"cifar10": tvd.CIFAR10, "cifar100": tvd.CIFAR100}[dataset]
    k, key = (10, "labels") if dataset == "cifar10" else (100, "fine_labels")
    rng = np.random.default_rng(seed)
    folder = root / tv.base_folder
    folder.mkdir(parents=True, exist_ok=True)
    labels = []
    for name, n in [(f, per_batch) for f, _ in tv.train_list] + [(f, n_test) for f, _ in tv.test_list]:
        y = rng.integers(0, k, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072)).astype(np.uint8), key.encode(): y}, f)
        if (name, n) in [(f, per_batch) for f, _ in tv.train_list]:
            labels += y
    names_key = "label_names" if dataset == "cifar10" else "fine_label_names"
    with open(folder / tv.meta["filename"], "wb") as f:
        pickle.dump({names_key: [f"c{i}" for i in range(k)]}, f)
    return np.array(labels)


def make_cifarn(root, clean, dataset="cifar10", seed=0):
    rng = np.random.default_rng(seed)
    k = 10 if dataset == "cifar10" else 100
    noisy = np.where(rng.random(len(clean)) < 0.4, rng.integers(0, k, len(clean)), clean)
    keys = (["aggre_label", "worse_label", "random_label1", "random_label2", "random_label3"]
            if dataset == "cifar10" else ["noisy_label"])
    d = {"clean_label": clean.copy(), **{key: noisy.copy() for key in keys}}
    (root / "cifar-n").mkdir(parents=True, exist_ok=True)
    name = "CIFAR-10_human.pt" if dataset == "cifar10" else "CIFAR-100_human.pt"
    torch.save(d, root / "cifar-n" / name)
    return noisy


# -- loaders --------------------------------------------------------------------------------------

def test_idx_loader_reads_gz_files_from_data_dir_then_search_dirs(tmp_path):
    arrays = make_idx(tmp_path / "data" / "fashion_mnist")
    pool = load_idx_dataset("fashion_mnist", data_dir=str(tmp_path / "data"), download=False)
    assert pool.x_train.shape == (60, 1, 28, 28) and pool.x_train.dtype == np.uint8
    assert np.array_equal(pool.x_train[:, 0], arrays["train-images-idx3-ubyte"])
    assert np.array_equal(pool.y_test, arrays["t10k-labels-idx1-ubyte"]) and pool.class_names[9] == "Ankle boot"
    make_idx(tmp_path / "system", n_train=30)
    pool = load_idx_dataset("mnist", data_dir=str(tmp_path / "empty"), search_dirs=[str(tmp_path / "system")],
                            download=False)
    assert len(pool.y_train) == 30


def test_idx_loader_errors_name_the_three_ways(tmp_path):
    with pytest.raises(DataError) as e:
        load_idx_dataset("fashion_mnist", data_dir=str(tmp_path), search_dirs=[str(tmp_path / "sys")], download=False)
    msg = str(e.value)
    assert "\n" not in msg and "data_dir" in msg and "sys" in msg and "download" in msg
    (tmp_path / "bad").write_bytes(b"\x01\x02\x03\x04")
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "bad")


def test_cifar_loaders_read_pickle_batches_and_check_md5(tmp_path):
    y10 = make_cifar(tmp_path, "cifar10")
    pool = load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=False)
    assert pool.x_train.shape == (40, 3, 32, 32) and pool.x_train.dtype == np.uint8
    assert np.array_equal(pool.y_train, y10) and pool.num_classes == 10 and pool.class_names[0] == "c0"
    with pytest.raises(DataError, match="MD5"):
        load_cifar("cifar10", data_dir=str(tmp_path), download=False, verify=True)
    make_cifar(tmp_path, "cifar100")
    pool = load_cifar("cifar100", data_dir=str(tmp_path), download=False, verify=False)
    assert pool.num_classes == 100 and len(pool.y_train) == 8  # CIFAR-100 has a single training file
    with pytest.raises(DataError, match="download"):
        load_cifar("cifar10", data_dir=str(tmp_path / "none"), download=False)


def test_real_noise_uses_cifarn_labels_and_checks_them(tmp_path):
    from noisybench.noise.real import RealNoise

    clean = make_cifar(tmp_path, "cifar10")
    noisy = make_cifarn(tmp_path, clean)
    hl = {"file": "CIFAR-10_human.pt", "clean_key": "clean_label", "label_sets": {"worse": "worse_label"}}
    inj = RealNoise("worse", dataset="cifar10", human_labels=hl, data_dir=str(tmp_path), download=False)
    assert np.array_equal(inj(clean, 10), noisy)
    with pytest.raises(DataError, match="does not match"):
        inj(np.roll(clean, 1), 10)
    with pytest.raises(ConfigError, match="one of worse"):
        RealNoise("aggre", dataset="cifar10", human_labels=hl)
    with pytest.raises(ConfigError, match="symmetric"):
        RealNoise("worse", dataset="fashion_mnist", human_labels=None)


# -- augmentation and models ----------------------------------------------------------------------

def test_batch_augmentation_crops_and_flips_per_sample():
    x = torch.arange(2 * 3 * 4 * 4, dtype=torch.uint8).view(2, 3, 4, 4).repeat(64, 1, 1, 1)
    t = BatchTransform([0.5] * 3, [0.25] * 3, crop_padding=2, hflip=True)
    a = t.augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and a.dtype == torch.uint8
    assert torch.equal(a, t.augment(x, torch.Generator().manual_seed(0)))
    # each output is a shifted (zero-padded) and maybe mirrored window of its own input
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(8):
        windows = [padded[i, :, r:r + 4, c:c + 4] for r in range(5) for c in range(5)]
        assert any(torch.equal(a[i], w) or torch.equal(a[i], w.flip(-1)) for w in windows)
    assert len({a[i].sum().item() for i in range(0, 128, 2)}) > 3  # not one shift for the whole batch
    norm = t.normalizer()(torch.full((1, 3, 1, 1), 255, dtype=torch.uint8))
    assert torch.allclose(norm, torch.full((1, 3, 1, 1), 2.0))
    plain = BatchTransform([0.5], [0.5])
    assert not plain.augments


@pytest.mark.parametrize("cfg", [dict(blocks=(2, 2, 2, 2)), dict(blocks=(3, 4, 6, 3)),
                                 dict(blocks=(2, 2, 2, 2), preact=True)])
def test_cifar_resnets_shape_and_no_maxpool(cfg):
    from noisybench.models.resnet import ResNet

    m = ResNet((3, 32, 32), 7, width=8, **cfg)
    assert m(torch.zeros(2, 3, 32, 32)).shape == (2, 7)
    assert m.stem.kernel_size == (3, 3) and m.stem.stride == (1, 1)
    assert not any(isinstance(x, torch.nn.MaxPool2d) for x in m.modules())
    with pytest.raises(ConfigError, match="model="):
        ResNet((40,), 10)


def test_resnet18_and_34_parameter_counts_match_the_cifar_variants():
    from noisybench.models.resnet import ResNet

    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731  (a local helper)
    assert count(ResNet((3, 32, 32), 10)) == 11173962  # kuangliu/pytorch-cifar ResNet18
    assert count(ResNet((3, 32, 32), 10, blocks=(3, 4, 6, 3))) == 21282122  # ResNet34


# -- presets and the runner on generated data ------------------------------------------------------

def compose(overrides):
    from hydra import compose as hydra_compose

    from noisybench.checks import validate
    from noisybench.config import CONFIG_NAME, hydra_context, register_resolvers

    register_resolvers()
    with hydra_context():
        cfg = hydra_compose(CONFIG_NAME, overrides=overrides)
    validate(cfg)
    return cfg


SHRINK = ["trainer.epochs=1", "trainer.batch_size=16", "trainer.eval_batch_size=64", "trainer.device=cpu",
          "trainer.progress=false"]


@pytest.mark.parametrize("preset,dataset", [("dal_cifar10", "cifar10"), ("dal_cifar100", "cifar100"),
                                            ("gce_cifar10", "cifar10"), ("gce_cifar100", "cifar100"),
                                            ("fmnist_cpu", "fashion_mnist")])
def test_every_preset_composes_and_trains_on_generated_data(tmp_path, preset, dataset):
    from noisybench.train import run

    if dataset == "fashion_mnist":
        make_idx(tmp_path / "fashion_mnist")
        extra = ["dataset.subset=null"]  # the preset's subset (8000) is larger than the generated data
    else:
        make_cifar(tmp_path, dataset)
        extra = ["dataset.loader.verify=false", "model.width=8"]  # a narrow ResNet keeps the test fast
    full = compose([f"experiment={preset}"])
    assert full.dataset.name == dataset and full.trainer.epochs in (24, 120, 150)
    cfg = compose([f"experiment={preset}", f"data_dir={tmp_path}", *OFFLINE, *SHRINK, *extra])
    rec = run(cfg, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "result.json").read_text())["dataset"] == dataset
    assert rec["test_last"] is not None


def test_preset_numbers_match_the_papers():
    dal = compose(["experiment=dal_cifar10"])
    assert (dal.model.name, dal.optim.optimizer.lr, dal.optim.optimizer.weight_decay, dal.trainer.batch_size,
            dal.trainer.epochs, dal.optim.scheduler.T_max, dal.method.q_start, dal.method.q_end) == \
        ("resnet18", 0.01, 1e-4, 128, 150, 150, 0.6, 1.5)
    assert dal.noise.include_true_class and dal.noise.sampling == "bernoulli"
    assert dal.dataset.transform.crop_padding == 4 and dal.dataset.transform.hflip
    g100 = compose(["experiment=gce_cifar100"])
    assert (g100.model.name, g100.trainer.epochs, list(g100.optim.scheduler.milestones), g100.method.q) == \
        ("resnet34", 150, [80, 120], 0.7)
    assert list(compose(["experiment=gce_cifar10"]).optim.scheduler.milestones) == [40, 80]
    assert compose(["experiment=dal_cifar100", "noise=asymmetric"]).noise.map == "cifar100_superclass"


def test_real_and_asymmetric_noise_through_the_runner(tmp_path):
    from noisybench.train import run

    clean = make_cifar(tmp_path, "cifar10", per_batch=20)
    noisy = make_cifarn(tmp_path, clean)
    base = ["dataset=cifar10", "model=mlp", "model.hidden=[16]", f"data_dir={tmp_path}",
            "dataset.loader.verify=false", "dataset.val_fraction=0", *OFFLINE, *SHRINK]
    rec = run(compose([*base, "noise=real", "noise.label_set=aggre", "noise.download=false"]), tmp_path / "r",
              progress=False)
    assert rec["realized_noise_rate"] == pytest.approx(float(np.mean(noisy != clean)))
    rep = json.loads((tmp_path / "r" / "noise.json").read_text())
    assert rep["label_set"] == "aggre" and rep["from_cache"] is False
    rec = run(compose([*base, "noise=asymmetric", "noise.rate=0.4"]), tmp_path / "a", progress=False)
    T = np.array(json.loads((tmp_path / "a" / "noise.json").read_text())["transition_matrix"])
    assert T[0, 0] == 1.0 and T[0].sum() == pytest.approx(1.0)  # airplane is not a source class


def test_float_datasets_still_train(tmp_path):
    from noisybench.train import run

    rec = run(compose(["dataset=digits", "model=mlp", f"data_dir={tmp_path}", "noise=instance",
                       "noise.rate=0.2", "dataset.subset=64", *SHRINK]), tmp_path / "d", progress=False)
    assert rec["realized_noise_rate"] > 0.1


def test_real_noise_refuses_datasets_without_human_labels(tmp_path):
    with pytest.raises(ConfigError, match="cifar10"):
        compose(["dataset=digits", "noise=real"])
