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

from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import torch
from torch import nn

from noisybench.schema import META_KEYS, _target, _unwrap, parameters


def at_least_float32(logits: torch.Tensor) -> torch.Tensor:
    """Logits for a loss: bf16/fp16 ones (autocast, noisybench.fastpath) in float32, others as they are
    (float64 stays float64). Losses are never computed in half precision."""
    return logits.float() if logits.dtype in (torch.bfloat16, torch.float16) else logits


def config_hparams(node: dict) -> dict[str, Any]:
    """A method's hyperparameters from its config node (the resolved `cfg.method`, a dict): every key the
    constructor receives, not `name` / `_target_` / `_partial_` and the like. A nested method node
    (STORM's `base_loss`) gives `base_loss=<its name>` and `base_loss.<key>`. A whole number given to a
    `float` parameter is recorded as a float (`method.q=1` -> 1.0), as the constructor uses it."""
    target = _target(node["_target_"]) if isinstance(node.get("_target_"), str) else None
    hints = parameters(target)[1] if target is not None else {}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in META_KEYS or str(key).startswith("_"):
            continue
        if isinstance(value, dict) and "_target_" in value:
            if "name" in value:
                out[key] = value["name"]
            out.update({f"{key}.{k}": v for k, v in config_hparams(value).items()})
            continue
        if _unwrap(hints.get(key))[0] is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        out[key] = value
    return out


class Batch(NamedTuple):
    x: torch.Tensor
    y: torch.Tensor  # noisy labels
    index: torch.Tensor  # positions in the training split (for per-sample state)


class Builders(NamedTuple):
    """What `LossMethod.on_model` gets to build models and optimizers of its own, as the runner builds
    the run's: `model(seed)` a fresh model of the run's architecture (the dataset's normalisation
    included), on the run's device with the fast path applied, initialised from torch's generator
    seeded with `seed` (the run's random streams are left as they were); `optimizer(params)` the
    run's optimizer (`optim.optimizer`: same class and hyperparameters) over `params`."""

    model: Callable[[int], nn.Module]
    optimizer: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]


class LossMethod(nn.Module):
    #: True only when a method is configured to learn from CLEAN validation labels (e.g. STORM with
    #: meta_source=clean_val); the runner then calls `on_clean_validation` and records
    #: `uses_clean_labels: true` in result.json.
    needs_clean_validation: bool = False
    #: True only when a method is configured to use the run's realised noise transition matrix (it is
    #: computed from the CLEAN training labels; e.g. forward correction with transition=oracle): the
    #: runner calls `on_transition_matrix` and records `uses_clean_labels: true`.
    needs_transition_matrix: bool = False
    #: True only when a method is configured to use the NOMINAL noise rate of the run's config
    #: (`noise.rate`: what the experimenter set, not computed from clean labels, yet side information
    #: a method on real data does not have; e.g. Co-teaching's forget rate): the runner calls
    #: `on_noise_rate` and records `uses_noise_rate: true` in result.json.
    needs_noise_rate: bool = False
    #: True when a method adapts to its own scores on the NOISY validation split (the split every run
    #: already evaluates for model selection; e.g. STORM's sharpness=auto): the runner calls
    #: `on_validation` after every evaluated epoch, and only when the validation labels carry the
    #: noise (noise.apply_to_val=true; clean validation labels are never passed).
    needs_validation_scores: bool = False

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

    def on_transition_matrix(self, transition: torch.Tensor) -> None:
        """Called once before training, and only if `needs_transition_matrix`: the realised [K, K]
        matrix T[i, j] = P(noisy label j | clean label i) of the run (noise.json)."""

    def on_noise_rate(self, rate: float | None) -> None:
        """Called once before training, and only if `needs_noise_rate`: the config's `noise.rate`
        (None for a noise without one, e.g. noise=real)."""

    def on_validation(self, epoch: int, score: float, metric: str) -> None:
        """After every evaluated epoch (0-based), only if `needs_validation_scores` and the validation
        labels are noisy: the epoch's validation score in the dataset's metric (`acc`, `f1`, `jga`...)."""

    def on_model(self, model: nn.Module, optimizer: torch.optim.Optimizer, builders: Builders) -> None:
        """Called once before training (after `on_train_start`, before a checkpoint is loaded) with the
        run's model and optimizer: a method that trains models of its own (Co-teaching's second
        network) builds them here with `builders`, so that they are in its `state_dict()` when a
        resumed run loads it. The run's model stays the one evaluated."""

    @property
    def uses_noise_rate(self) -> bool:
        """Whether this method, as configured, uses the config's nominal noise rate (side information)."""
        return bool(self.needs_noise_rate)

    @property
    def uses_clean_labels(self) -> bool:
        """Whether this method, as configured, learns from anything computed from clean labels."""
        return bool(self.needs_clean_validation or self.needs_transition_matrix)

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
        """Values recorded in result.json under `method` beyond the config's keys, which are recorded
        already (`config_hparams`): derived ones only (e.g. what STORM switched on). Optional."""
        return {}

    def result_extras(self, noise_report: dict) -> dict:
        """Entries for result.json's `method_result` when the record is written, given the run's noise
        report (with the realised `transition_matrix`: for evaluation only, a method must not train on
        it), e.g. forward correction's estimated T and its error. Scalars also reach summary.csv."""
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
