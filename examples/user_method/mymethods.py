"""A method that lives outside noisybench: soft bootstrapping (Reed et al., "Training Deep Neural
Networks on Noisy Labels with Bootstrapping", ICLR 2015 workshop), as a `LossMethod` subclass.

    L = -sum_k (beta * t_k + (1 - beta) * p_k) * log p_k

where t is the one-hot (noisy) label and p the model's softmax: the target is the label mixed with
the model's own prediction. beta = 1 is cross-entropy; the paper's soft setting is beta = 0.95.
As in the paper's formula, the prediction in the target is not detached.

Used from the user's config directory (conf/method/bootstrap.yaml) with
    PYTHONPATH=examples/user_method noisybench train -cd examples/user_method/conf method=bootstrap
"""
from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F

from noisybench.methods.base import LossMethod, at_least_float32
from noisybench.schema import Range


class SoftBootstrapping(LossMethod):
    # the annotation is the schema: method.beta=1.5 or method.beta=abc is one `noisybench: error:` line
    def __init__(self, num_classes: int, beta: Annotated[float, Range(0.0, 1.0)] = 0.95) -> None:
        super().__init__(num_classes)
        self.beta = float(beta)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = at_least_float32(logits)  # losses in float32 under bf16 autocast
        log_p = F.log_softmax(logits, dim=1)
        target = self.beta * F.one_hot(targets, logits.shape[1]).to(log_p.dtype) + (1 - self.beta) * log_p.exp()
        return -(target * log_p).sum(dim=1)
