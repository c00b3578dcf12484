"""Early-Learning Regularization (Liu et al., "Early-Learning Regularization Prevents Memorization of
Noisy Labels", NeurIPS 2020), as the authors' public code computes it (shengliu66/ELR, `ELR/model/
loss.py`, class `elr_loss`):

    p   = softmax(logits) clamped to [1e-4, 1 - 1e-4]
    t_i ← β t_i + (1 - β) p_i / Σ_k p_ik          (per training sample i, p detached; t starts at 0)
    L   = CE(logits, y) + λ · log(1 - <t_i, p_i>)

t is the temporal ensemble of the model's predictions of every training sample, indexed by the
batch's indices (`Batch.index`); it is updated before the loss is taken, as in the code. It is a
buffer [N, K] of the method, so it is in the checkpoint and a resumed run continues exactly. The
paper's CIFAR-10 setting is λ = 3, β = 0.7 (the defaults); CIFAR-100: λ = 7, β = 0.9.

Departures: per-sample losses (the code returns the batch mean of each term; the mean of the sum is
the same). Only the ELR loss: ELR+ (two networks, weight averaging, mixup) is a different method.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, LossMethod, at_least_float32
from noisybench.schema import PositiveFloat, Probability

P_CLAMP = 1e-4  # the public code's clamp of the softmax


def elr_update(target: torch.Tensor, logits: torch.Tensor, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(new targets of the batch's samples, the clamped softmax p with its gradient)."""
    p = torch.softmax(at_least_float32(logits), dim=1).clamp(P_CLAMP, 1.0 - P_CLAMP)
    p_ = p.detach()
    return beta * target + (1.0 - beta) * (p_ / p_.sum(dim=1, keepdim=True)), p


class ELR(LossMethod):
    def __init__(self, num_classes: int, lam: PositiveFloat = 3.0, beta: Probability = 0.7) -> None:
        super().__init__(num_classes)
        self.lam, self.beta = float(lam), float(beta)
        self.register_buffer("target", torch.zeros(0, self.num_classes))  # [N, K] from on_train_start
        self._index: torch.Tensor | None = None

    def on_train_start(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> None:
        if y_train.dim() != 1:
            raise ConfigError("method=elr needs one label per sample (a classification dataset); "
                              f"this {getattr(self.task, 'kind', 'dataset')} dataset has structured labels")
        self.target = torch.zeros(len(y_train), self.num_classes, dtype=self.target.dtype, device=y_train.device)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
        self._index = batch.index  # the samples `forward` is called on: their targets
        try:
            return super().train_step(model, optimizer, batch)
        finally:
            self._index = None

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = at_least_float32(logits)
        ce = F.cross_entropy(logits, targets, reduction="none")
        if self._index is None:
            raise RuntimeError("ELR's loss needs the batch's sample indices: call train_step, not the loss alone")
        index = self._index.to(self.target.device)
        t, p = elr_update(self.target[index], logits, self.beta)
        self.target[index] = t.to(self.target.dtype)
        return ce + self.lam * torch.log(1.0 - (t.to(p.dtype) * p).sum(dim=1))
