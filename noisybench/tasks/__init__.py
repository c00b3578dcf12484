"""Tasks: what the runner needs to know about the *shape* of a problem.

The runner is written against this protocol, never against a dataset name. A task, chosen by the
dataset config (`dataset.task`; default: one label per sample, `ClassificationTask`), owns:

- `build_data(cfg) -> (Dataset, noise report)`;
- `build_model(model_cfg, ds)`: the model config instantiated with the task's runtime arguments;
- `loss_terms(method, outputs, targets) -> LossTerms` and `losses(...)`: how a loss method's
  per-sample `forward(logits, targets)` applies to the model's outputs;
- `evaluate(model, ds, batch_size) -> dict`: the headline metric on the noisy validation and clean
  test splits, the dataset's extra metrics, and memorisation diagnostics.

`LossTerms` is the view reweighting methods (STORM) work on: a flat list of *samples* -- for
classification the batch rows, for DST the (turn, slot) gate decisions -- each with its loss, logits,
target and group (DST: the slot), plus the share `share` of these losses in a row's loss and the
unweighted remainder `rest` per row (DST: the value and refer losses). The row loss is
`rest[row] + share * sum of (weight *) loss over the row's samples` (`combine`).
"""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig

from noisybench.errors import ConfigError


class LossTerms(NamedTuple):
    loss: torch.Tensor  # [M] per-sample losses (the method's forward)
    logits: torch.Tensor  # [M, K]
    target: torch.Tensor  # [M] (noisy) targets
    group: torch.Tensor  # [M] sub-problem of each sample (DST: slot index; classification: 0)
    row: torch.Tensor  # [M] batch row of each sample
    share: float  # weight of the sample losses in the row loss (DST gate: alpha = 0.8)
    rest: torch.Tensor  # [B] the rest of each row's loss, not reweighted


def combine(terms: LossTerms, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row losses [B]: rest + share * sum over the row's samples of (weight *) loss."""
    per_sample = terms.loss if weight is None else weight * terms.loss
    return terms.rest.index_add(0, terms.row, terms.share * per_sample)


class Task:
    """Base class; see the module docstring."""

    kind = "task"
    model_hint = ""

    def __init__(self, metric: str, extra_metrics: list[str] | None = None) -> None:
        self.metric = str(metric)
        self.extra_metrics = [m for m in (extra_metrics or []) if m != self.metric]

    def build_data(self, cfg: DictConfig):
        raise NotImplementedError

    def model_kwargs(self, ds) -> dict[str, Any]:
        raise NotImplementedError

    def build_model(self, model_cfg: DictConfig, ds) -> torch.nn.Module:
        from noisybench.config import build

        try:
            return build(model_cfg)(**self.model_kwargs(ds))
        except TypeError as e:
            raise ConfigError(f"model={model_cfg.name} does not fit this {self.kind} dataset ({e}); "
                              f"use {self.model_hint}") from None

    def num_classes(self, ds) -> int:
        """The class count a loss method is built with."""
        return int(ds.num_classes)

    def loss_terms(self, method, outputs, targets) -> LossTerms:
        raise NotImplementedError

    def sample_groups(self, targets: torch.Tensor) -> int:
        """Samples per row in `loss_terms` (classification 1; DST: one gate decision per slot)."""
        return 1

    def sample_corrupted(self, corrupted: torch.Tensor) -> torch.Tensor:
        """[N * sample_groups] which samples have a corrupted target, row-major, from the runner's
        `y_train != y_train_clean` (diagnostics of reweighting methods only)."""
        return corrupted.reshape(-1)

    def losses(self, method, outputs, targets) -> torch.Tensor:
        """Per-row losses [B] of a batch (what the default train step averages)."""
        return combine(self.loss_terms(method, outputs, targets))

    def evaluate(self, model: torch.nn.Module, ds, batch_size: int) -> dict[str, float | None]:
        raise NotImplementedError


def make_task(dataset_cfg: DictConfig) -> Task:
    """The dataset's task (`dataset.task`, a partial taking metric and extra_metrics), else classification."""
    from noisybench.config import build
    from noisybench.tasks.classification import ClassificationTask

    metric, extra = str(dataset_cfg.get("metric", "acc")), list(dataset_cfg.get("extra_metrics") or [])
    if dataset_cfg.get("task") is not None:
        return build(dataset_cfg.task)(metric=metric, extra_metrics=extra)
    return ClassificationTask(metric=metric, extra_metrics=extra)
