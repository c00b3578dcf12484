"""Real (human) label noise: CIFAR-10N / CIFAR-100N (Wei et al., ICLR 2022).

The dataset config declares which human label sets exist (`dataset.human_labels`: file name,
download URL, the key of the clean labels, and label-set name -> key in the file); this injector
replaces the training labels by the chosen set. A dataset without `human_labels` is refused.
Nothing is random here: `seed` is recorded but unused.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from noisybench.data.cifarn import load_human_labels
from noisybench.errors import ConfigError
from noisybench.noise import NoiseInjector
from noisybench.schema import Seed
from noisybench.utils import resolve_data_dir


class RealNoise(NoiseInjector):
    def __init__(self, label_set: str = "worse", dataset: str | None = None,
                 human_labels: Mapping[str, Any] | None = None, data_dir: str | None = None,
                 download: bool = True, seed: Seed = 0, apply_to_val: bool = True) -> None:
        super().__init__(0.0, seed, apply_to_val)
        if not human_labels:
            raise ConfigError(f"dataset {dataset!r} has no human label sets; real noise exists for cifar10 "
                              "(CIFAR-10N) and cifar100 (CIFAR-100N); use noise=symmetric, asymmetric or instance")
        sets = dict(human_labels["label_sets"])
        if label_set not in sets:
            raise ConfigError(f"noise.label_set={label_set!r} does not exist for {dataset}; "
                              f"use one of {', '.join(sets)}")
        self.label_set, self.dataset, self.download = label_set, dataset, bool(download)
        self.key, self.file = sets[label_set], str(human_labels["file"])
        self.url, self.clean_key = human_labels.get("url"), str(human_labels["clean_key"])
        self.folder = resolve_data_dir(data_dir) / str(human_labels.get("folder", "cifar-n"))

    def corrupt(self, labels, num_classes, rng, features):
        noisy = load_human_labels(self.folder / self.file, self.key, self.clean_key, labels,
                                  url=self.url, download=self.download)
        if noisy.min() < 0 or noisy.max() >= num_classes:
            raise ConfigError(f"label set {self.label_set} has labels outside 0..{num_classes - 1}; "
                              f"it does not belong to dataset {self.dataset}")
        return noisy

    def spec(self) -> dict:
        # no rate: the noise is whatever the annotators produced (see realized_noise_rate)
        return {"seed": self.seed, "apply_to_val": self.apply_to_val, "label_set": self.label_set,
                "dataset": self.dataset, "file": self.file}
