"""A method that lives outside noisybench: Symmetric Cross Entropy (Wang et al., "Symmetric Cross
Entropy for Robust Learning with Noisy Labels", ICCV 2019), as a `LossMethod` subclass.

    SCE = alpha * CE + beta * RCE,   RCE = -sum_k p_k log q_k = -log(1e-4) * (1 - p_y)

where q is the one-hot label clamped to [1e-4, 1] (as the paper's code) and p the
softmax clamped to [1e-7, 1]. The paper's CIFAR-10 setting is alpha = 0.1, beta = 1.0.

Used from the user's config directory (conf/method/sce.yaml) with
    PYTHONPATH=examples/user_method noisybench train -cd examples/user_method/conf method=sce
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from noisybench.errors import ConfigError
from noisybench.methods.base import LossMethod, at_least_float32

# the one-hot clamp: log(Q_MIN) stands in for log 0. The paper quotes A = -4; its code clamps
# at 1e-4 and takes the natural log (-9.21), as here.
Q_MIN = 1e-4
P_MIN = 1e-7  # the softmax clamp of the reference code


class SymmetricCrossEntropy(LossMethod):
    def __init__(self, num_classes: int, alpha: float = 0.1, beta: float = 1.0) -> None:
        super().__init__(num_classes)
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            # ConfigError: one `noisybench: error:` line before anything is written (exit 2)
            raise ConfigError(f"method.alpha={alpha}, method.beta={beta}: "
                              "both must be >= 0, not both 0")
        self.alpha, self.beta = float(alpha), float(beta)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = at_least_float32(logits)  # losses in float32 under bf16 autocast
        ce = F.cross_entropy(logits, targets, reduction="none")
        p = torch.softmax(logits, dim=1).clamp(min=P_MIN, max=1.0)
        p_y = p.gather(1, targets.unsqueeze(1)).squeeze(1)
        rce = -math.log(Q_MIN) * (1.0 - p_y)
        return self.alpha * ce + self.beta * rce

    def hparams(self) -> dict:
        # recorded in result.json under method (the base class records none)
        return {"alpha": self.alpha, "beta": self.beta}
