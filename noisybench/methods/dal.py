"""Dynamics-Aware Loss (Li et al., "Dynamics-Aware Loss for Learning with Label Noise", 2023;
official code XiuchuanLi/DAL, `utils/losses.py` classes GCE/BS/DAL and the schedule in `cifar.py`).

For 0-based epoch e of E:

    q(e)  = q_s + (q_e - q_s) * e / E
    t0    = (1 - q_s) * E / (q_e - q_s)              # the (real-valued) epoch where q crosses 1
    λ(e)  = max(0, (e - t0) / (E - t0))
    loss  = GCE_q(e) + λ(e) * H(p) / (q(e) * ln K),  H(p) = -Σ_k p_k log(p_k + 1e-6)

H is the entropy of the model's own prediction: the official code's final "soft bootstrapping"
(commit f4817bec). `bootstrap: hard` gives its first release's hard bootstrapping, -log p_max.
The schedule is piecewise constant per epoch, as in the official code.

Deliberate departures: λ is set to 0 whenever q(e) <= 1. The published formula gives a positive
(even > 1) λ when q_e <= 1 (e.g. q_s = 0.6, q_e = 0.9 gives λ(0) = 4); the intended semantics is
"bootstrap only once q has passed 1", which the guard enforces and which agrees with the formula
whenever q_s < 1 < q_e. q_e <= q_s is rejected (q must grow; q_e = q_s divides by zero).
K in ln K is the width of the logits passed in (= num_classes for classification); for DST's padded
value heads it is the padded width, i.e. the largest number of values of any slot.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from noisybench.errors import ConfigError
from noisybench.methods.base import LossMethod, at_least_float32
from noisybench.methods.gce import gce_loss

ENTROPY_EPS = 1e-6  # inside the log, as in the official BS loss
BOOTSTRAP = ("soft", "hard")


def dal_schedule(epoch: int, num_epochs: int, q_start: float, q_end: float) -> tuple[float, float]:
    """(q, λ) for a 0-based epoch."""
    q = q_start + (q_end - q_start) * epoch / num_epochs
    if q <= 1.0:
        return q, 0.0
    t0 = (1.0 - q_start) * num_epochs / (q_end - q_start)
    return q, max(0.0, (epoch - t0) / (num_epochs - t0))


class DAL(LossMethod):
    def __init__(self, num_classes: int, q_start: float = 0.6, q_end: float = 1.5,
                 bootstrap: str = "soft") -> None:
        super().__init__(num_classes)
        q_start, q_end = float(q_start), float(q_end)
        if q_start <= 0:
            raise ConfigError(f"method.q_start={q_start} must be > 0 (the paper's default is 0.6)")
        if q_end <= q_start:
            raise ConfigError(f"method.q_end={q_end} must be greater than method.q_start={q_start}: "
                              "DAL's q grows over training (defaults 0.6 -> 1.5)")
        if bootstrap not in BOOTSTRAP:
            raise ConfigError(f"method.bootstrap={bootstrap!r} is unknown; use soft (entropy) or hard (-log p_max)")
        if num_classes < 2:
            raise ConfigError("DAL needs at least 2 classes")
        self.q_start, self.q_end, self.bootstrap = q_start, q_end, bootstrap
        self.q, self.lam = q_start, 0.0

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        self.q, self.lam = dal_schedule(epoch, num_epochs, self.q_start, self.q_end)

    def get_extra_state(self) -> dict:
        return {"q": self.q, "lam": self.lam}  # the schedule position (checkpoints)

    def set_extra_state(self, state: dict) -> None:
        self.q, self.lam = float(state["q"]), float(state["lam"])

    def bootstrap_term(self, logits: torch.Tensor) -> torch.Tensor:
        if self.bootstrap == "hard":
            return F.cross_entropy(logits, logits.argmax(dim=1), reduction="none")
        p = torch.softmax(logits, dim=1)
        return -(p * torch.log(p + ENTROPY_EPS)).sum(dim=1)

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = at_least_float32(logits)  # GCE's p^q and the entropy term in float32 (bf16 autocast gives bf16 logits)
        loss = gce_loss(logits, targets, self.q)
        if self.lam > 0:
            # K = the logits' width (a DST task calls the loss on heads with different class counts)
            loss = loss + self.lam * self.bootstrap_term(logits) / (self.q * math.log(logits.shape[1]))
        return loss

    def state(self) -> dict:
        return {"q": self.q, "lambda": self.lam}
