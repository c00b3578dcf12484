"""Generalized Cross Entropy (Zhang & Sabuncu, "Generalized Cross Entropy Loss for Training Deep
Neural Networks with Noisy Labels", NeurIPS 2018), the plain L_q loss (not the truncated variant).

    L_q(x, y) = (1 - p_y^q) / q,  with the softmax clamped to [1e-6, 1] before taking p_y

as in the DAL code's `GCE` class. q -> 0 recovers CE, q = 1 is MAE (up to a factor 2).
Computed in float32 from bf16 logits (autocast): p_y^q near the 1e-6 clamp needs float32's mantissa.
"""
from __future__ import annotations

import torch

from noisybench.errors import ConfigError
from noisybench.methods.base import LossMethod, at_least_float32

P_MIN = 1e-6  # the clamp of the reference code: keeps p_y^q and its gradient finite


def gce_loss(logits: torch.Tensor, targets: torch.Tensor, q: float | torch.Tensor) -> torch.Tensor:
    p = torch.softmax(at_least_float32(logits), dim=1).clamp(min=P_MIN, max=1.0)
    p_y = p.gather(1, targets.unsqueeze(1)).squeeze(1)
    return (1.0 - p_y.pow(q)) / q


class GCE(LossMethod):
    def __init__(self, num_classes: int, q: float = 0.7) -> None:
        super().__init__(num_classes)
        if not float(q) > 0:
            raise ConfigError(f"method.q={q} must be > 0 (GCE's exponent; the paper's default is 0.7)")
        self.q = float(q)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return gce_loss(logits, targets, self.q)
