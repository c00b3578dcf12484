"""Every check of a composed config that needs no data: run before any directory is written
(by preflight for every job of a sweep, by `noisybench noise`, and by the runner)."""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from noisybench.config import build, resolve_device
from noisybench.errors import ConfigError
from noisybench.loggers import build_all
from noisybench.schema import check


def check_trainer(t: DictConfig) -> None:
    if not int(t.epochs) >= 1:
        raise ConfigError(f"trainer.epochs={t.epochs} must be >= 1")
    if not int(t.batch_size) >= 1:
        raise ConfigError(f"trainer.batch_size={t.batch_size} must be >= 1")
    if not int(t.eval_every) >= 1:
        raise ConfigError(f"trainer.eval_every={t.eval_every} must be >= 1")
    every = t.get("checkpoint_every", 1)
    if isinstance(every, bool) or not isinstance(every, int) or every < 0:
        raise ConfigError(f"trainer.checkpoint_every={every} must be a whole number of epochs >= 0 "
                          "(0 = checkpoints only on Ctrl-C/SIGTERM)")
    if not isinstance(t.get("keep_checkpoint", False), bool):
        raise ConfigError(f"trainer.keep_checkpoint={t.keep_checkpoint} must be true or false")
    late = [e for e in (t.get("save_weights_at") or []) if int(e) > int(t.epochs)]
    if late:
        raise ConfigError(f"trainer.save_weights_at has epoch {late[0]} but the run has trainer.epochs={t.epochs}; "
                          "give epochs from 1 to trainer.epochs (or null for five spread over the run)")
    resolve_device(str(t.device))


OBJECTIVES = ("val_selected", "val_last")


def validate(cfg: DictConfig) -> None:
    """Every check that needs no data: run before any directory is written."""
    check(cfg)  # every key is read by something, every value has its type and range (no coercion)
    check_trainer(cfg.trainer)
    if cfg.get("objective", "val_selected") not in OBJECTIVES:
        raise ConfigError(f"objective={cfg.objective} is not a validation score; use {' or '.join(OBJECTIVES)} "
                          "(tuning on test labels would be the oracle)")
    build(cfg.noise)
    build(cfg.method)(num_classes=2)  # hyperparameter checks do not depend on the class count
    try:
        build(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(1))])
    except ValueError as e:
        raise ConfigError(f"optim.optimizer: {e}") from None
    build_all(cfg)  # trackers (logger=...): a missing package is one line naming the pip command
    data_dir = cfg.get("data_dir")
    if data_dir and Path(str(data_dir)).expanduser().exists() and not Path(str(data_dir)).expanduser().is_dir():
        raise ConfigError(f"data_dir={data_dir} is a file, not a directory; give the dataset cache directory, "
                          "e.g. data_dir=~/.cache/noisybench")
    if cfg.dataset.get("subset") is not None and int(cfg.dataset.subset) < 1:
        raise ConfigError(f"dataset.subset={cfg.dataset.subset} must be a positive number of samples (or null for all)")
    if not 0.0 <= float(cfg.dataset.val_fraction) < 1.0:
        raise ConfigError(f"dataset.val_fraction={cfg.dataset.val_fraction} is outside [0, 1)")
