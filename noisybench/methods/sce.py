"""Symmetric Cross Entropy (Wang et al., "Symmetric Cross Entropy for Robust Learning with Noisy
Labels", ICCV 2019), as the authors' public code computes it (HanxunH/SCELoss-Reproduce, `loss.py`,
class `SCELoss`):

    SCE = α · CE(p, y) + β · RCE(p, y),   RCE = -Σ_k p_k log q_k

p is the softmax clamped to [1e-7, 1] and q the one-hot label clamped to [1e-4, 1]: log 0 in the
reverse cross entropy becomes log 1e-4 = -9.21 (the paper writes A = log 0 := -4; the code, and this
file, use the clamp). Because p is clamped, RCE is the sum over the clamped p_k (not exactly
-log(1e-4)·(1 - p_y)), as in the code. The paper's CIFAR-10 setting is α = 0.1, β = 1.0 (the
defaults); CIFAR-100 uses α = 6.0, β = 0.1.

Departure: per-sample losses (the code returns the batch mean; the runner takes the mean).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from noisybench.errors import ConfigError
from noisybench.methods.base import LossMethod, at_least_float32

P_MIN = 1e-7  # the softmax clamp of the public code
Q_MIN = 1e-4  # the one-hot clamp: log(Q_MIN) stands in for log 0


def rce_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Reverse cross entropy -Σ_k p_k log q_k with the public code's clamps (shared with APL)."""
    p = torch.softmax(at_least_float32(logits), dim=1).clamp(min=P_MIN, max=1.0)
    off = torch.ones_like(p).scatter_(1, targets.unsqueeze(1), 0.0)  # 1 where q_k = Q_MIN, 0 at the label
    return -math.log(Q_MIN) * (p * off).sum(dim=1)  # log q_y = log 1 = 0


def term_weights(alpha: float, beta: float, paper: str) -> tuple[float, float]:
    """The two terms' weights α, β of SCE and APL, checked (`paper`: the published setting's overrides)."""
    alpha, beta = float(alpha), float(beta)
    if alpha < 0 or beta < 0 or alpha + beta == 0:
        raise ConfigError(f"method.alpha={alpha:g}, method.beta={beta:g}: both must be >= 0 and not both 0 "
                          f"(the paper's CIFAR-10 setting: {paper})")
    return alpha, beta


class SymmetricCrossEntropy(LossMethod):
    def __init__(self, num_classes: int, alpha: float = 0.1, beta: float = 1.0) -> None:
        super().__init__(num_classes)
        self.alpha, self.beta = term_weights(alpha, beta, "method.alpha=0.1 method.beta=1.0")

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = at_least_float32(logits)
        return self.alpha * F.cross_entropy(logits, targets, reduction="none") + self.beta * rce_loss(logits, targets)
