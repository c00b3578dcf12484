"""Small 1-D CNN for MNIST-1D: the `ConvBase` of the MNIST-1D paper (Greydanus, 2020).

Three conv layers (kernel 5 stride 2, then 3, 3; `channels` filters each, ReLU) and a linear head.
An input of shape (L,) is treated as one channel; (C, L) as C channels.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from noisybench.errors import ConfigError
from noisybench.schema import PositiveInt, Probability


class CNN1D(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, channels: PositiveInt = 25,
                 dropout: Probability = 0.0) -> None:
        super().__init__()
        if len(input_shape) not in (1, 2):
            raise ConfigError(f"model=cnn1d does not fit inputs of shape {tuple(input_shape)}: it needs (L,) or (C, L) "
                              "sequences; use model=cnn28 or model=mlp for images")
        in_ch = 1 if len(input_shape) == 1 else int(input_shape[0])
        self.features = nn.Sequential(
            nn.Conv1d(in_ch, channels, 5, stride=2, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=1, padding=1), nn.ReLU(),
            nn.Conv1d(channels, channels, 3, stride=1, padding=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.drop = nn.Dropout(dropout)
        with torch.no_grad():
            width = self.features(torch.zeros(1, in_ch, int(input_shape[-1]))).shape[1]
        self.head = nn.Linear(width, num_classes)

    @staticmethod
    def _channels(x: torch.Tensor) -> torch.Tensor:
        return x.unsqueeze(1) if x.dim() == 2 else x

    def stages(self) -> list:
        return [self._channels, self.features, self.drop, self.head]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(self._channels(x))))
