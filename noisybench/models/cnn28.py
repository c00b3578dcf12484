"""Small CNN for 28x28 images (MNIST, Fashion-MNIST), sized for a CPU.

conv3x3(c) - ReLU - maxpool2 - conv3x3(2c) - ReLU - maxpool2 - linear(hidden) - ReLU - linear(K).
With the default c = 16 and hidden = 128 it has 0.2 M parameters and trains one epoch of
Fashion-MNIST's 60,000 images in a few seconds to tens of seconds on a 2-core CPU; that is enough
capacity to memorise noisy labels of a few thousand samples within tens of epochs.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from noisybench.errors import ConfigError
from noisybench.schema import PositiveInt, Probability


class CNN28(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: PositiveInt = 16,
                 hidden: PositiveInt = 128, dropout: Probability = 0.0) -> None:
        super().__init__()
        if len(input_shape) not in (2, 3) or min(input_shape[-2:]) < 4:
            raise ConfigError(f"model=cnn28 does not fit inputs of shape {tuple(input_shape)}: it needs "
                              "(C, H, W) or (H, W) images; use model=mlp or model=cnn1d")
        in_ch = int(input_shape[0]) if len(input_shape) == 3 else 1
        c = int(channels)
        self.features = nn.Sequential(
            nn.Conv2d(in_ch, c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(),
        )
        with torch.no_grad():
            width = self.features(torch.zeros(1, in_ch, *input_shape[-2:])).shape[1]
        self.head = nn.Sequential(nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_classes))

    @staticmethod
    def _channels(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 3 else x

    def stages(self) -> list:
        return [self._channels, self.features, *self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(self._channels(x)))
