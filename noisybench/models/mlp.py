"""Multi-layer perceptron on the flattened input (`input_dropout` drops input features, e.g. TF-IDF)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from noisybench.schema import PositiveInt, Probability


class MLP(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[PositiveInt] = (256, 256),
                 dropout: Probability = 0.0, input_dropout: Probability = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten(), nn.Dropout(input_dropout)]
        width = math.prod(input_shape)
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)

    def stages(self) -> list:
        return list(self.net)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
