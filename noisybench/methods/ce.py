"""Cross-entropy: the standard baseline (in float32 whatever the logits' dtype: bf16 autocast)."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from noisybench.methods.base import LossMethod, at_least_float32


class CrossEntropy(LossMethod):
    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(at_least_float32(logits), targets, reduction="none")
