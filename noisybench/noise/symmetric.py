"""Symmetric (uniform) label noise, both published conventions.

- ``include_true_class: true`` (inclusive; DivideMix, ELR, MW-Net, DAL's label files): a selected
  label is replaced by a class drawn uniformly from ALL K classes, so the realised corruption rate
  is rate*(K-1)/K (36 % at nominal 40 % with K = 10). This is the default.
- ``include_true_class: false`` (exclusive; Co-teaching, APL): the new class is drawn uniformly from
  the OTHER K-1 classes, so the realised rate is the nominal rate. With K = 2 this is a plain flip.

``sampling``: ``bernoulli`` selects each sample independently with probability `rate` (DAL's files);
``exact`` selects exactly round(rate * N) samples uniformly without replacement (DivideMix / GJS
style). With the exclusive convention, ``exact`` changes exactly that many labels.
"""
from __future__ import annotations

import numpy as np

from noisybench.errors import ConfigError
from noisybench.noise import NoiseInjector
from noisybench.schema import Seed

SAMPLING = ("bernoulli", "exact")


class SymmetricNoise(NoiseInjector):
    def __init__(self, rate: float = 0.4, include_true_class: bool = True, sampling: str = "bernoulli",
                 seed: Seed = 0, apply_to_val: bool = True) -> None:
        super().__init__(rate, seed, apply_to_val)
        if sampling not in SAMPLING:
            raise ConfigError(f"noise.sampling={sampling!r} is unknown; use one of {', '.join(SAMPLING)}")
        if not isinstance(include_true_class, bool):
            raise ConfigError(f"noise.include_true_class={include_true_class!r} must be true or false")
        self.include_true_class = include_true_class
        self.sampling = sampling

    def corrupt(self, labels, num_classes, rng, features):
        n = len(labels)
        if num_classes < 2:
            raise ConfigError("symmetric noise needs at least 2 classes")
        if self.sampling == "bernoulli":
            selected = np.flatnonzero(rng.random(n) < self.rate)
        else:
            selected = np.sort(rng.choice(n, size=int(round(self.rate * n)), replace=False))
        noisy = labels.copy()
        if self.include_true_class:
            noisy[selected] = rng.integers(0, num_classes, size=len(selected))
        else:
            noisy[selected] = (labels[selected] + rng.integers(1, num_classes, size=len(selected))) % num_classes
        return noisy

    def spec(self) -> dict:
        return {**super().spec(), "include_true_class": self.include_true_class, "sampling": self.sampling}
