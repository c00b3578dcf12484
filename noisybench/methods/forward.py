"""Forward loss correction (Patrini et al., "Making Deep Neural Networks Robust to Label Noise: a Loss
Correction Approach", CVPR 2017), as the authors' public code computes it (giorgiop/loss-correction,
`loss.py` `robust('forward', P)` and `noise.py` `NoiseEstimator`):

    p    = softmax(logits) clamped to [1e-7, 1 - 1e-7]        (Keras' epsilon)
    loss = -log (p T)_y                                        T[i, j] = P(noisy j | clean i)

T is either
- `transition: oracle`: the run's realised transition matrix (noise.json), computed from the CLEAN
  training labels, so result.json says `uses_clean_labels: true`: an upper bound, like the ORACLE
  epoch, not a valid protocol; corrected from the first step; or
- `transition: estimated` (default): the paper's anchor-point estimator on the softmax of a model
  trained with CE on the noisy training data: for every class i, among the training samples take the
  one with the highest p_i below the 97th percentile of p_i (np.percentile, interpolation 'higher',
  as the code's `filter_outlier=True`), and T[i, :] = its p. result.json (`method_result`) holds the
  estimated T, its mean and largest absolute error against the realised one, and when it was taken.

Departures. (1) The paper trains the CE model to the end, estimates T, then trains a NEW model with the
corrected loss; here one run does both: CE for `warmup_epochs` (null: half of trainer.epochs, which
may be a fraction of an epoch with trainer.epochs=1), then T is estimated from the current model (eval
mode, the unaugmented training split) and training continues from it with the corrected loss, under
the run's one learning-rate schedule. (2) The public estimator zeroes the top 3% of column i in
place (`robust_eta = eta_corr[:, i]` is a view), so later rows of T read a partly zeroed matrix; this
file works on a copy, as the paper's equation does. (3) Per-sample losses (the runner takes the mean).
"""
from __future__ import annotations

import math
from typing import Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from noisybench.errors import ConfigError
from noisybench.methods.base import Batch, LossMethod, at_least_float32
from noisybench.schema import PositiveFloat, PositiveInt

EPS = 1e-7  # Keras' K.epsilon(), the clip of the public code
PERCENTILE = 97.0  # the public code's outlier filter


def forward_loss(logits: torch.Tensor, targets: torch.Tensor, transition: torch.Tensor) -> torch.Tensor:
    p = torch.softmax(at_least_float32(logits), dim=1).clamp(EPS, 1.0 - EPS)
    with torch.autocast(device_type=p.device.type, enabled=False):  # the product in float32 (bf16 fast path)
        q = p @ transition.to(p.dtype)
    return -torch.log(q.gather(1, targets.unsqueeze(1)).squeeze(1))


def anchor_point_estimate(probs: np.ndarray, percentile: float = PERCENTILE) -> np.ndarray:
    """T from softmax outputs [N, K] of a CE-trained model (Patrini et al., Eq. 9 with the outlier filter)."""
    K = probs.shape[1]
    T = np.empty((K, K), dtype=np.float64)
    for i in range(K):
        column = probs[:, i].copy()
        column[column >= np.percentile(column, percentile, method="higher")] = 0.0
        T[i] = probs[int(np.argmax(column))]
    return T


class ForwardCorrection(LossMethod):
    def __init__(self, num_classes: int, transition: Literal["estimated", "oracle"] = "estimated",
                 warmup_epochs: Optional[PositiveFloat] = None, estimate_batch_size: PositiveInt = 1024) -> None:
        super().__init__(num_classes)
        self.transition = transition
        self.warmup_epochs = None if warmup_epochs is None else float(warmup_epochs)
        self.estimate_batch_size = int(estimate_batch_size)
        self.needs_transition_matrix = transition == "oracle"
        self.T: torch.Tensor | None = None
        self._x: torch.Tensor | None = None
        self._n = 0
        self._epoch, self._batch, self._bs = 0, 0, None  # the position in training (for the warm-up)
        self._estimated_at: float | None = None
        self._warmup: float | None = None  # in epochs, set at the first epoch

    def on_train_start(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> None:
        if y_train.dim() != 1:
            raise ConfigError("method=forward needs one label per sample (a classification dataset); "
                              f"this {getattr(self.task, 'kind', 'dataset')} dataset has structured labels")
        self._x, self._n = x_train, len(y_train)

    def on_transition_matrix(self, transition: torch.Tensor) -> None:
        self.T = transition.float()

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        if self.transition == "estimated" and self.warmup_epochs is not None and self.warmup_epochs >= num_epochs:
            raise ConfigError(f"method.warmup_epochs={self.warmup_epochs:g} leaves no epoch for the corrected loss "
                              f"(trainer.epochs={num_epochs}); give fewer, or null for half the epochs")
        self._warmup = self.warmup_epochs if self.warmup_epochs is not None else num_epochs / 2
        self._epoch, self._batch = epoch, 0

    def _estimate(self, model: nn.Module) -> None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            probs = torch.cat([torch.softmax(at_least_float32(model(self._x[i:i + self.estimate_batch_size])), 1)
                               for i in range(0, self._n, self.estimate_batch_size)])
        model.train(was_training)
        T = anchor_point_estimate(probs.double().cpu().numpy())
        self.T = torch.tensor(T, dtype=torch.float32, device=probs.device)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
        if self.T is None:
            self._bs = self._bs or len(batch.index)
            progress = self._epoch + self._batch / math.ceil(self._n / self._bs)
            if progress >= self._warmup:
                self._estimate(model)
                self._estimated_at = progress
        self._batch += 1
        return super().train_step(model, optimizer, batch)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        if self.T is None:  # the CE warm-up
            return F.cross_entropy(at_least_float32(logits), targets, reduction="none")
        return forward_loss(logits, targets, self.T.to(logits.device))

    def get_extra_state(self) -> dict:
        return {"T": self.T, "epoch": self._epoch, "batch": self._batch, "bs": self._bs,
                "estimated_at": self._estimated_at, "warmup": self._warmup}

    def set_extra_state(self, state: dict) -> None:
        self.T = state["T"]
        self._epoch, self._batch, self._bs = int(state["epoch"]), int(state["batch"]), state["bs"]
        self._estimated_at = state["estimated_at"]
        if state["warmup"] is not None:
            self._warmup = float(state["warmup"])

    def result_extras(self, noise_report: dict) -> dict:
        if self.transition == "oracle":
            return {"transition": "oracle (the realised T, from clean labels)"}
        out = {"transition": "estimated", "T_estimated_at_epoch": self._estimated_at,
               "T_estimated": None, "T_mae": None, "T_max_abs_error": None}
        if self.T is not None:
            T = self.T.double().cpu().numpy()
            out["T_estimated"] = T.round(6).tolist()
            real = np.asarray(noise_report.get("transition_matrix", []), dtype=np.float64)
            if real.shape == T.shape:
                out["T_mae"] = float(np.abs(T - real).mean())
                out["T_max_abs_error"] = float(np.abs(T - real).max())
        return out

    def state(self) -> dict:
        return {"corrected": float(self.T is not None)}
