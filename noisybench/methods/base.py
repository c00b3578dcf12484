"""The method protocol the runner calls.

A *loss method* (CE, GCE, DAL) implements `forward(logits, targets) -> per-sample losses` and may
react to the epoch in `on_epoch_start`. The default `train_step` does one optimizer step on the mean
loss. A *step method* (STORM, anything meta-learned) overrides `train_step` and owns the whole step.

State for checkpoints: a method is an `nn.Module`, so `state_dict()` holds its parameters and
buffers (and those of its submodules, e.g. STORM's rescaler and base loss); everything else a method
keeps between steps (schedule position, memories, its own optimizers and random generators, a
pending update) it returns from `get_extra_state()` and takes back in `set_extra_state()`. The
runner saves `state_dict()` at any batch boundary and, on resume, builds a fresh method, calls
`on_train_start` (and `on_clean_validation`) as for a new run, then `load_state_dict(...)`; training
then continues with new model and optimizer objects (loaded from their own state dicts) and must give
the same numbers as never stopping. Mid-epoch, `on_epoch_start` is NOT called again after loading.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss: bf16/fp16 ones (autocast, noisybench.fastpath) in float32, others as they are
    (float64 stays float64). Losses are never computed in half precision."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


class Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor  # noisy labels
    index: torch.Tensor  # positions in the training split (for per-sample state)


class LossMethod(nn.Module):
    #: True only when a method is configured to learn from CLEAN validation labels (e.g. STORM with
    #: meta_source=clean_val); the runner then calls `on_clean_validation` and records
    #: `uses_clean_labels: true` in result.json.
    needs_clean_validation: bool = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        # set by the runner: applies `forward` to a task's structured outputs (noisybench.tasks);
        # None = one label per sample
        self.task = None

    def on_train_start(self, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> None:
        """Called once before training with the training split (NOISY labels only) and the
        training seed; step methods that draw extra batches (e.g. STORM's meta batch) keep them."""

    def on_clean_validation(self, x_val: torch.Tensor, y_val_clean: torch.Tensor) -> None:
        """Called once before training, and only if `needs_clean_validation`: the validation split
        with its CLEAN labels."""

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Called before every epoch (0-based). Schedules live here, not in the runner."""

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def batch_losses(self, outputs, targets: torch.Tensor) -> torch.Tensor:
        """Per-row losses of a batch: `forward` itself for one label per sample; a task with several
        heads (DST: gate, value and refer per slot) applies `forward` to each and combines them."""
        return self(outputs, targets) if self.task is None else self.task.losses(self, outputs, targets)

    def train_step(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Batch) -> torch.Tensor:
        """One optimisation step; returns the batch's mean loss as a detached device tensor."""
        loss = self.batch_losses(model(batch.x), batch.y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    def hparams(self) -> dict:
        """Hyperparameters recorded with each run."""
        return {}

    def state(self) -> dict:
        """Schedule values for this epoch, logged in metrics.csv (e.g. DAL's q and lambda)."""
        return {}

    def epoch_metrics(self, corrupted: torch.Tensor) -> dict:
        """Diagnostics at the end of each epoch, given which training samples were corrupted
        (bool, training split order). For evaluation only: a method must not train on it.
        Merged into the metrics.csv row; the last epoch's values go into result.json."""
        return {}

    def sample_weights(self) -> torch.Tensor | None:
        """The latest per-sample weight of every training sample ([N * task.sample_groups(y)],
        training-split order, NaN for a sample not weighted yet this epoch), or None for a method
        without per-sample weights. Read at the end of the epochs in `trainer.save_weights_at` (the
        runner writes them to sample_weights.npz with the corrupted mask) and of every evaluated epoch
        (per-class statistics: noisybench.class_weights); evaluation only."""
        return None
