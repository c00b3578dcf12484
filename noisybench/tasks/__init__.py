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

from omegaconf import DictConfig

from noisybench.config import build
from noisybench.tasks.base import LossTerms, Task, combine
from noisybench.tasks.classification import ClassificationTask

__all__ = ["LossTerms", "Task", "combine", "make_task"]


def make_task(dataset_cfg: DictConfig) -> Task:
    """The dataset's task (`dataset.task`, a partial taking metric and extra_metrics), else classification."""
    metric, extra = str(dataset_cfg.get("metric", "acc")), list(dataset_cfg.get("extra_metrics") or [])
    if dataset_cfg.get("task") is not None:
        task = build(dataset_cfg.task)(metric=metric, extra_metrics=extra)
    else:
        task = ClassificationTask(metric=metric, extra_metrics=extra)
    task.dataset_name = str(dataset_cfg.get("name", task.dataset_name))
    return task
