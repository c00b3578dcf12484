"""Learning-rate schedules of our own. A schedule with `interval = "step"` is stepped by the runner after
every optimizer step (the others once per epoch) and, when its constructor takes `total_steps`, gets
the run's number of optimizer steps (epochs × batches per epoch) from the runner."""
from __future__ import annotations

import torch

from noisybench.schema import PositiveInt, Probability


class LinearWarmup(torch.optim.lr_scheduler.LambdaLR):
    """Linear warm-up from 0 over the first `warmup_fraction` of the steps, then linear decay to 0 at the
    last step: Hugging Face's `get_linear_schedule_with_warmup`, which TripPy and STORM's DST code use
    (10 % warm-up)."""

    interval = "step"

    def __init__(self, optimizer: torch.optim.Optimizer, total_steps: PositiveInt,
                 warmup_fraction: Probability = 0.1, last_epoch: int = -1) -> None:
        self.total_steps, self.warmup_steps = int(total_steps), int(warmup_fraction * total_steps)
        super().__init__(optimizer, self.factor, last_epoch)

    def factor(self, step: int) -> float:
        if step < self.warmup_steps:
            return float(step) / float(max(1, self.warmup_steps))
        return max(0.0, float(self.total_steps - step) / float(max(1, self.total_steps - self.warmup_steps)))
