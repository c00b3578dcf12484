"""Per-dataset input transform: on-the-fly normalisation and batched augmentation on tensors.

Images stay uint8 in memory (CIFAR-10's training set is 150 MB as uint8, 600 MB as float32).
`BatchTransform.normalizer()` is a module the runner puts in front of the model, so every caller
of the model (training step, evaluation, a step method's extra batches) sees normalised floats.
`augment` works on a whole batch on the training device and is applied to training batches only:
random crop after zero padding (zero = black, as torchvision pads the raw image before Normalize)
and a horizontal flip with probability 1/2 — the standard CIFAR recipe.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from noisybench.errors import ConfigError


class Normalize(nn.Module):
    """x -> (x / scale - mean) / std per channel; accepts uint8 or float input."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float) -> None:
        super().__init__()
        self.scale = float(scale)
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / self.scale - self.mean) / self.std


class BatchTransform:
    def __init__(self, mean: Sequence[float], std: Sequence[float], scale: float = 255.0,
                 crop_padding: int = 0, hflip: bool = False) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ConfigError(f"dataset.transform: mean {list(mean)} and std {list(std)} need one value per channel")
        if any(float(s) <= 0 for s in std):
            raise ConfigError(f"dataset.transform.std={list(std)} must be positive")
        if int(crop_padding) < 0:
            raise ConfigError(f"dataset.transform.crop_padding={crop_padding} must be >= 0 (0 = no random crop)")
        self.mean, self.std, self.scale = [float(m) for m in mean], [float(s) for s in std], float(scale)
        self.crop_padding, self.hflip = int(crop_padding), bool(hflip)

    @property
    def augments(self) -> bool:
        return self.crop_padding > 0 or self.hflip

    def normalizer(self) -> nn.Module:
        return Normalize(self.mean, self.std, self.scale)

    def augment(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Random crop (pad `crop_padding` px) and/or horizontal flip of a (B, C, H, W) batch."""
        b, _, h, w = x.shape
        p = self.crop_padding
        if p:
            padded = nn.functional.pad(x, (p, p, p, p))
            oy = torch.randint(0, 2 * p + 1, (b, 1, 1), generator=generator, device=x.device)
            ox = torch.randint(0, 2 * p + 1, (b, 1, 1), generator=generator, device=x.device)
            rows = (oy + torch.arange(h, device=x.device).view(1, h, 1)).expand(b, h, w)
            cols = (ox + torch.arange(w, device=x.device).view(1, 1, w)).expand(b, h, w)
            flat = (rows * (w + 2 * p) + cols).view(b, 1, h * w).expand(-1, x.shape[1], -1)
            x = padded.flatten(2).gather(2, flat).view_as(x)
        if self.hflip:
            flip = torch.rand(b, generator=generator, device=x.device) < 0.5
            x = torch.where(flip.view(b, 1, 1, 1), x.flip(-1), x)
        return x

    def describe(self) -> dict:
        return {"mean": self.mean, "std": self.std, "scale": self.scale,
                "crop_padding": self.crop_padding, "hflip": self.hflip}
