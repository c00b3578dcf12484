"""Label-noise injectors: clean labels (+ features) -> noisy labels.

Every injector draws from its own `numpy.random.Generator` seeded by `noise.seed`, so the
training seed never changes the noise. `transition_matrix` counts the realised T[true, noisy].
"""
from __future__ import annotations

import numpy as np

from noisybench.errors import ConfigError
from noisybench.schema import Seed


class NoiseInjector:
    """Base class. Subclasses implement `corrupt(labels, num_classes, rng, features)`."""

    def __init__(self, rate: float = 0.0, seed: Seed = 0, apply_to_val: bool = True) -> None:
        if not isinstance(apply_to_val, bool):
            raise ConfigError(f"noise.apply_to_val={apply_to_val!r} must be true or false")
        # false: the validation split keeps clean labels (papers that select on a clean validation set)
        self.apply_to_val = apply_to_val
        try:
            rate = float(rate)
        except (TypeError, ValueError):
            raise ConfigError(f"noise.rate={rate!r} is not a number; "
                              "use a value in [0, 1), e.g. noise.rate=0.4") from None
        if not 0.0 <= rate < 1.0:
            raise ConfigError(f"noise.rate={rate} is outside [0, 1); use e.g. noise.rate=0.4")
        self.rate = rate
        self.seed = int(seed)

    def __call__(self, labels: np.ndarray, num_classes: int, features: np.ndarray | None = None) -> np.ndarray:
        labels = np.asarray(labels, dtype=np.int64)
        rng = np.random.default_rng(self.seed)
        noisy = self.corrupt(labels, num_classes, rng, features)
        assert noisy.shape == labels.shape
        return noisy.astype(np.int64)

    def corrupt(self, labels, num_classes, rng, features):  # pragma: no cover - abstract
        raise NotImplementedError

    def spec(self) -> dict:
        """Every field that defines the noise (recorded with each run)."""
        return {"rate": self.rate, "seed": self.seed, "apply_to_val": self.apply_to_val}


def transition_matrix(clean: np.ndarray, noisy: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """(counts, T): counts[i, j] = #samples with true class i and noisy label j; T row-normalised.

    A class with no samples gets an all-zero row in T.
    """
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(counts, (np.asarray(clean), np.asarray(noisy)), 1)
    rows = counts.sum(axis=1, keepdims=True)
    T = np.divide(counts, rows, out=np.zeros(counts.shape, dtype=np.float64), where=rows > 0)
    return counts, T
