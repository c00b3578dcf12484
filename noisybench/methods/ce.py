"""Cross-entropy: the standard baseline."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from noisybench.methods.base import LossMethod


class CrossEntropy(LossMethod):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, targets, reduction="none")
