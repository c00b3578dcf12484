"""Linear classifier (multinomial logistic regression) with dropout on the input features.

STORM's spam experiments use a single Linear(tfidf_dim, 2) on TF-IDF features, with the features
dropped out (STORM's extra forward passes need dropout)."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from noisybench.schema import Probability


class Linear(nn.Module):
    def __init__(self, input_shape: Sequence[int], num_classes: int, dropout: Probability = 0.0) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(math.prod(input_shape), num_classes)

    @staticmethod
    def _flat(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)

    def stages(self) -> list:
        return [self._flat, self.dropout, self.fc]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(x.flatten(1)))
