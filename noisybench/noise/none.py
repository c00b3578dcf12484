"""No noise: the labels are returned unchanged."""
from __future__ import annotations

from noisybench.errors import ConfigError
from noisybench.noise import NoiseInjector
from noisybench.schema import Seed


class NoNoise(NoiseInjector):
    def __init__(self, rate: float = 0.0, seed: Seed = 0, apply_to_val: bool = True) -> None:
        super().__init__(rate, seed, apply_to_val)
        if self.rate != 0.0:
            raise ConfigError(f"noise=none corrupts nothing but noise.rate={self.rate}; "
                              "use noise=symmetric noise.rate=<rate> (or drop noise.rate)")

    def corrupt(self, labels, num_classes, rng, features):
        return labels.copy()
