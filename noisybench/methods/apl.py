"""Active Passive Loss NCE+RCE (Ma et al., "Normalized Loss Functions for Deep Learning with Noisy
Labels", ICML 2020), as the authors' public code computes it (HanxunH/Active-Passive-Losses,
`loss.py`, classes `NormalizedCrossEntropy`, `ReverseCrossEntropy`, `NCEandRCE`):

    NCE = -log p_y / (-Σ_k log p_k)           (log_softmax, no clamp)
    RCE = -Σ_k p_k log q_k                    (p clamped to [1e-7, 1], one-hot q to [1e-4, 1]; as SCE)
    APL = α · NCE + β · RCE

The paper's CIFAR-10 setting for NCE+RCE is α = 1, β = 1 (the defaults); CIFAR-100 uses α = 10,
β = 0.1. Only the NCE+RCE member of the family is implemented (the one the paper recommends).

Departure: per-sample losses (the code returns the batch mean; the runner takes the mean).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from noisybench.methods.base import LossMethod, at_least_float32
from noisybench.methods.sce import rce_loss, term_weights


def nce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    log_p = F.log_softmax(at_least_float32(logits), dim=1)
    return log_p.gather(1, targets.unsqueeze(1)).squeeze(1) / log_p.sum(dim=1)


class NCEandRCE(LossMethod):
    def __init__(self, num_classes: int, alpha: float = 1.0, beta: float = 1.0) -> None:
        super().__init__(num_classes)
        self.alpha, self.beta = term_weights(alpha, beta, "method.alpha=1 method.beta=1")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = at_least_float32(logits)
        return self.alpha * nce_loss(logits, targets) + self.beta * rce_loss(logits, targets)
