"""Asymmetric (class-dependent) label noise: each source class c flips to map(c) with probability
`rate`; all other classes keep their labels.

Maps (`noise.map`; `auto` takes the dataset config's `asymmetric_map`):
- ``cifar10``: truck->automobile, bird->airplane, cat->dog, dog->cat, deer->horse
  (Patrini et al. 2017; used by DAL, APL, GJS, ...). Overall corruption is about rate/2.
- ``cifar100_superclass``: each fine class -> the next fine class of its true superclass, in
  ascending index order, cyclically (GJS `datasets/cifar.py`; DAL's label files). DAL's default.
- ``cifar100_blocks``: classes 5i..5i+4 treated as a group, i -> i+1 cyclically within the block
  (APL / ALFs / lnl_sr). NOT the same as the superclass rule: the blocks are index ranges.
- ``mnist``: 2->7, 3->8, 5<->6, 7->1 (Patrini et al. 2017).
- ``fashion_mnist`` (ours; no common standard exists): visually confusable garments, one target
  per source like the CIFAR-10 map: T-shirt/top->Shirt, Pullover<->Coat, Sandal->Sneaker,
  Sneaker->Ankle boot.
- ``pairflip``: i -> i+1 mod K for every class (Co-teaching's pair flip); works on any dataset.

``sampling``: ``bernoulli`` flips each sample of a source class independently (DAL's files);
``exact`` flips exactly round(rate * n_c) samples of each source class c (APL's CIFAR-10 rule).
"""
from __future__ import annotations

import numpy as np

from noisybench.errors import ConfigError
from noisybench.noise import NoiseInjector
from noisybench.schema import Seed

# CIFAR-100 superclasses as sorted fine-label indices (the "coarse_labels" of the python batches).
CIFAR100_SUPERCLASSES = [
    [4, 30, 55, 72, 95], [1, 32, 67, 73, 91], [54, 62, 70, 82, 92], [9, 10, 16, 28, 61],
    [0, 51, 53, 57, 83], [22, 39, 40, 86, 87], [5, 20, 25, 84, 94], [6, 7, 14, 18, 24],
    [3, 42, 43, 88, 97], [12, 17, 37, 68, 76], [23, 33, 49, 60, 71], [15, 19, 21, 31, 38],
    [34, 63, 64, 66, 75], [26, 45, 77, 79, 99], [2, 11, 35, 46, 98], [27, 29, 44, 78, 93],
    [36, 50, 65, 74, 80], [47, 52, 56, 59, 96], [8, 13, 48, 58, 90], [41, 69, 81, 85, 89],
]


def _cycles(groups: list[list[int]]) -> dict[int, int]:
    return {g[i]: g[(i + 1) % len(g)] for g in groups for i in range(len(g))}


# name -> (number of classes, {source: target}, datasets it is defined for; None = any)
MAPS: dict[str, tuple[int | None, dict[int, int], tuple[str, ...] | None]] = {
    "cifar10": (10, {9: 1, 2: 0, 3: 5, 5: 3, 4: 7}, ("cifar10",)),
    "cifar100_superclass": (100, _cycles(CIFAR100_SUPERCLASSES), ("cifar100",)),
    "cifar100_blocks": (100, _cycles([list(range(5 * i, 5 * i + 5)) for i in range(20)]), ("cifar100",)),
    "mnist": (10, {2: 7, 3: 8, 5: 6, 6: 5, 7: 1}, ("mnist",)),
    "fashion_mnist": (10, {0: 6, 2: 4, 4: 2, 5: 7, 7: 9}, ("fashion_mnist",)),
    "pairflip": (None, {}, None),
}
SAMPLING = ("bernoulli", "exact")


class AsymmetricNoise(NoiseInjector):
    def __init__(self, rate: float = 0.4, map: str | None = "auto", dataset: str | None = None,
                 sampling: str = "bernoulli", seed: Seed = 0, apply_to_val: bool = True) -> None:
        super().__init__(rate, seed, apply_to_val)
        self.dataset = dataset
        if map in (None, "auto", "none"):
            raise ConfigError(f"dataset {dataset!r} defines no asymmetric map; use noise.map=pairflip "
                              f"(i -> i+1 mod K, any dataset)")
        if map not in MAPS:
            raise ConfigError(f"noise.map={map!r} is unknown; use one of {', '.join(MAPS)}")
        allowed = MAPS[map][2]
        if allowed is not None and dataset is not None and dataset not in allowed:
            raise ConfigError(f"noise.map={map} is defined for {', '.join(allowed)}, not for dataset {dataset}; "
                              f"use noise.map=pairflip (or drop noise.map to use the dataset's own map)")
        if sampling not in SAMPLING:
            raise ConfigError(f"noise.sampling={sampling!r} is unknown; use one of {', '.join(SAMPLING)}")
        self.map, self.sampling = map, sampling

    def targets(self, num_classes: int) -> np.ndarray:
        """target[c] for every class c (c itself for classes that do not flip)."""
        k, pairs, _ = MAPS[self.map]
        if k is not None and k != num_classes:
            raise ConfigError(f"noise.map={self.map} is for {k} classes but the dataset has {num_classes}; "
                              "use noise.map=pairflip")
        if self.map == "pairflip":
            return (np.arange(num_classes) + 1) % num_classes
        t = np.arange(num_classes)
        t[list(pairs)] = list(pairs.values())
        return t

    def corrupt(self, labels, num_classes, rng, features):
        target = self.targets(num_classes)
        noisy = labels.copy()
        if self.sampling == "bernoulli":
            flip = rng.random(len(labels)) < self.rate
        else:
            flip = np.zeros(len(labels), dtype=bool)
            for c in np.flatnonzero(target != np.arange(num_classes)):
                members = np.flatnonzero(labels == c)
                flip[rng.choice(members, size=int(round(self.rate * len(members))), replace=False)] = True
        noisy[flip] = target[labels[flip]]
        return noisy

    def spec(self) -> dict:
        return {**super().spec(), "map": self.map, "sampling": self.sampling, "dataset": self.dataset}
