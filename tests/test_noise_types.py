"""Noise injectors checked against their definitions, the noise cache key, and `noisybench noise`."""
from __future__ import annotations

import json

import numpy as np
import pytest

from noisybench.errors import ConfigError
from noisybench.noise import transition_matrix
from noisybench.noise.asymmetric import CIFAR100_SUPERCLASSES, MAPS, AsymmetricNoise
from noisybench.noise.cache import cached, noise_key
from noisybench.noise.instance import InstanceNoise, truncated_normal_mean


def balanced(k: int, per_class: int) -> np.ndarray:
    return np.repeat(np.arange(k), per_class)


@pytest.mark.parametrize("map_name,dataset,k", [("cifar10", "cifar10", 10), ("mnist", "mnist", 10),
                                                ("fashion_mnist", "fashion_mnist", 10),
                                                ("cifar100_superclass", "cifar100", 100),
                                                ("cifar100_blocks", "cifar100", 100), ("pairflip", "anything", 7)])
def test_asymmetric_moves_mass_only_along_map_at_rate(map_name, dataset, k):
    per_class = 4000 if k <= 10 else 1000
    y = balanced(k, per_class)
    inj = AsymmetricNoise(rate=0.3, map=map_name, dataset=dataset, seed=1)
    counts, T = transition_matrix(y, inj(y, k), k)
    target = inj.targets(k)
    for c in range(k):
        off = np.delete(np.arange(k), [c, target[c]])
        assert counts[c, off].sum() == 0, f"class {c} leaked outside its map"
        if target[c] == c:
            assert T[c, c] == 1.0
        else:  # binomial sd at p=0.3: 0.0072 (n=4000), 0.0145 (n=1000); 5 sd tolerance
            assert abs(T[c, target[c]] - 0.3) < 5 * np.sqrt(0.21 / per_class)


def test_asymmetric_maps_match_published_definitions():
    assert MAPS["cifar10"][1] == {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}
    sup = MAPS["cifar100_superclass"][1]
    assert sup[4] == 30 and sup[95] == 4 and sup[41] == 69 and sup[89] == 41  # beaver->dolphin, whale->beaver
    assert sorted(c for g in CIFAR100_SUPERCLASSES for c in g) == list(range(100))
    blocks = MAPS["cifar100_blocks"][1]
    assert blocks[0] == 1 and blocks[4] == 0 and blocks[99] == 95
    assert list(AsymmetricNoise(0.5, map="pairflip").targets(5)) == [1, 2, 3, 4, 0]


def test_asymmetric_exact_sampling_flips_exact_count_per_source_class():
    y = balanced(10, 1000)
    noisy = AsymmetricNoise(rate=0.4, map="cifar10", dataset="cifar10", sampling="exact", seed=3)(y, 10)
    changed = np.bincount(y[noisy != y], minlength=10)
    assert list(changed) == [0, 0, 400, 400, 400, 400, 0, 0, 0, 400]


def test_asymmetric_refuses_what_it_cannot_serve():
    with pytest.raises(ConfigError, match="pairflip"):
        AsymmetricNoise(0.4, map="auto", dataset="mnist1d")
    with pytest.raises(ConfigError, match="pairflip"):
        AsymmetricNoise(0.4, map="cifar10", dataset="mnist")
    with pytest.raises(ConfigError, match="pairflip"):
        AsymmetricNoise(0.4, map="cifar10")(balanced(5, 2), 5)  # wrong class count
    with pytest.raises(ConfigError, match="one of"):
        AsymmetricNoise(0.4, map="nope")


def _instance_data(n=6000, k=10, d=64, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 1, 8, 8)).astype(np.uint8)  # raw "pixels"
    return x, rng.integers(0, k, size=n)


@pytest.mark.parametrize("rate", [0.2, 0.4])
def test_instance_rate_matches_truncated_normal_mean_and_is_deterministic(rate):
    x, y = _instance_data()
    inj = InstanceNoise(rate=rate, seed=5)
    noisy = inj(y, 10, features=x)
    expected = truncated_normal_mean(rate, 0.1)
    assert abs(expected - {0.2: 0.2055, 0.4: 0.4000}[rate]) < 1e-3
    assert abs(np.mean(noisy != y) - expected) < 0.02  # sd of the mean ~0.0065 at n=6000
    assert np.array_equal(noisy, InstanceNoise(rate=rate, seed=5)(y, 10, features=x))
    assert not np.array_equal(noisy, InstanceNoise(rate=rate, seed=6)(y, 10, features=x))


def test_instance_noise_is_per_class_and_concentrated_on_raw_pixels():
    x, y = _instance_data(n=5000)
    noisy = InstanceNoise(rate=0.4, seed=0)(y, 10, features=x)
    counts, _ = transition_matrix(y, noisy, 10)
    off = counts.copy()
    np.fill_diagonal(off, 0)
    # raw pixels make the softmax nearly one-hot: each row's flips concentrate on few targets,
    # and rows differ (one projection per true class)
    top_share = off.max(axis=1) / off.sum(axis=1)
    assert top_share.mean() > 0.2
    assert len(set(off.argmax(axis=1))) >= 4


def test_instance_needs_features():
    with pytest.raises(ConfigError, match="symmetric"):
        InstanceNoise(0.4)(np.zeros(10, dtype=int), 2)


def test_cache_key_changes_with_every_field(tmp_path):
    y = balanced(3, 10)
    base = dict(dataset="fashion_mnist", loader={"dataset": "fashion_mnist", "data_dir": "a"},
                noise_type="asymmetric", spec={"rate": 0.4, "seed": 0, "map": "fashion_mnist",
                                                "sampling": "bernoulli", "dataset": "fashion_mnist"},
                clean_labels=y, num_classes=3)
    key0 = noise_key(**base)[0]
    variants = [
        {**base, "dataset": "mnist"},
        {**base, "loader": {"dataset": "fashion_mnist", "subset_generator": 1}},
        {**base, "noise_type": "pairflip"},
        {**base, "clean_labels": y[::-1].copy()},
        {**base, "num_classes": 4},
    ] + [{**base, "spec": {**base["spec"], f: v}} for f, v in
         (("rate", 0.2), ("seed", 1), ("map", "pairflip"), ("sampling", "exact"), ("dataset", "mnist"))]
    keys = {noise_key(**v)[0] for v in variants}
    assert key0 not in keys and len(keys) == len(variants)
    assert noise_key(**base, split="test")[0] != key0
    # where the files live is not part of the noise definition
    assert noise_key(**{**base, "loader": {"dataset": "fashion_mnist", "data_dir": "b"}})[0] == key0

    calls = []
    key, payload = noise_key(**base)
    first, hit1 = cached(tmp_path, key, payload, 30, lambda: calls.append(1) or y.copy())
    second, hit2 = cached(tmp_path, key, payload, 30, lambda: calls.append(1) or y.copy())
    # a hit is checked against a fresh draw (a forged entry is not trusted), so the generator runs both times
    assert (hit1, hit2, len(calls)) == (False, True, 2) and np.array_equal(first, second)
    assert json.loads((tmp_path / f"{key}.json").read_text())["noise"]["map"] == "fashion_mnist"


def test_noise_command_writes_noise_json_and_heatmap(tmp_path, capsys):
    from noisybench.cli import main

    out = tmp_path / "n"
    rc = main(["noise", "dataset=digits", "noise=instance", "noise.rate=0.4", f"data_dir={tmp_path / 'data'}",
               "-o", str(out)])
    assert rc == 0
    rep = json.loads((out / "noise.json").read_text())
    assert abs(rep["realized_noise_rate"] - 0.4) < 0.06 and len(rep["transition_matrix"]) == 10
    assert (out / "transition_matrix.png").stat().st_size > 1000
    assert "realised noise rate" in capsys.readouterr().out
    # the second call reuses the cached labels
    main(["noise", "dataset=digits", "noise=instance", "noise.rate=0.4", f"data_dir={tmp_path / 'data'}",
          "-o", str(out)])
    assert json.loads((out / "noise.json").read_text())["from_cache"] is True


def test_noise_command_reports_bad_input_in_one_line(tmp_path, capsys):
    from noisybench.cli import main

    rc = main(["noise", "dataset=digits", "noise=asymmetric", f"data_dir={tmp_path}", "-o", str(tmp_path / "x")])
    err = capsys.readouterr().err.strip()
    assert rc != 0 and "pairflip" in err and "\n" not in err
    assert not (tmp_path / "x").exists()
