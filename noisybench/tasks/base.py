"""The task protocol (see noisybench.tasks) and the loss view reweighting methods work on."""
from __future__ import annotations

from typing import Any, NamedTuple

import torch
from omegaconf import DictConfig

from noisybench.config import build
from noisybench.errors import ConfigError, NoisybenchError


class LossTerms(NamedTuple):
    loss: torch.Tensor  # [M] per-sample losses (the method's forward)
    logits: torch.Tensor  # [M, K]
    target: torch.Tensor  # [M] (noisy) targets
    group: torch.Tensor  # [M] sub-problem of each sample (DST: slot index; classification: 0)
    row: torch.Tensor  # [M] batch row of each sample
    share: float  # weight of the sample losses in the row loss (DST gate: alpha = 0.8)
    rest: torch.Tensor  # [B] the rest of each row's loss, not reweighted
    plain: bool = False  # one sample per batch row, in row order, and rest == 0 (classification)


def combine(terms: LossTerms, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Per-row losses [B]: rest + share * sum over the row's samples of (weight *) loss."""
    per_sample = terms.loss if weight is None else weight * terms.loss
    return terms.rest.index_add(0, terms.row, terms.share * per_sample)


class Task:
    """Base class; see the module docstring."""

    kind = "task"
    model_hint = ""
    dataset_name = "this"  # set by make_task from dataset.name (for messages)

    def __init__(self, metric: str, extra_metrics: list[str] | None = None) -> None:
        self.metric = str(metric)
        self.extra_metrics = [m for m in (extra_metrics or []) if m != self.metric]

    def build_data(self, cfg: DictConfig):
        raise NotImplementedError

    def model_kwargs(self, ds) -> dict[str, Any]:
        raise NotImplementedError

    def build_model(self, model_cfg: DictConfig, ds) -> torch.nn.Module:
        """The model, checked to take the dataset's inputs: one forward pass on the first training
        samples (`probe_batch`). A model that cannot is a one-line ConfigError naming a model that can,
        before anything is trained or written. The check draws nothing from torch's RNG."""
        name = model_cfg.get("name", "?")
        factory = build(model_cfg)  # (a broken registry entry fails here, as before)
        try:
            model = factory(**self.model_kwargs(ds))
        except TypeError as e:  # arguments of another task's model (e.g. model=dst on images)
            raise ConfigError(f"model={name} does not fit this {self.kind} dataset ({e}); "
                              f"use {self.model_hint}") from None
        except NoisybenchError:
            raise  # the model's own one-line message (e.g. cnn28 on sequences)
        except OSError:
            raise  # files or network (e.g. a pretrained encoder's download), not the input shape
        except Exception as e:
            raise self._misfit(name, ds, e) from None
        x = self.probe_batch(ds)
        if x is None or len(x) == 0:
            return model
        rng, was_training = torch.get_rng_state(), model.training
        try:
            model.eval()  # no dropout draws, no BatchNorm statistics updated
            with torch.no_grad():
                model(x)
        except NoisybenchError:
            raise
        except Exception as e:
            raise self._misfit(name, ds, e) from None
        finally:
            model.train(was_training)
            torch.set_rng_state(rng)  # the run draws exactly what it drew without the check
        return model

    def probe_batch(self, ds) -> torch.Tensor | None:
        """A tiny batch of training inputs as the model receives them, on the CPU (where it is built)."""
        return ds.x_train[:2].cpu()

    def suggest_models(self, input_shape: tuple[int, ...], failed: str) -> str:
        """What to use instead of model=`failed` on inputs of this per-sample shape."""
        return self.model_hint

    def _misfit(self, name: str, ds, e: Exception) -> ConfigError:
        shape = tuple(int(d) for d in ds.input_shape)
        first = next((ln.strip() for ln in str(e).splitlines() if ln.strip()), "")
        what = f"{type(e).__name__}: {first}" if first else type(e).__name__
        return ConfigError(f"model={name} cannot take dataset={self.dataset_name}'s inputs of shape {shape} "
                           f"({what}); use {self.suggest_models(shape, name)}")

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

    def sample_classes(self, targets: torch.Tensor) -> torch.Tensor:
        """[N * sample_groups] the class of each sample, row-major (the one label per sample; DST: the
        gate label of each (turn, slot)): the per-class weight statistics (noisybench.class_weights)."""
        return targets.reshape(-1)

    def losses(self, method, outputs, targets) -> torch.Tensor:
        """Per-row losses [B] of a batch (what the default train step averages)."""
        return combine(self.loss_terms(method, outputs, targets))

    def evaluate(self, model: torch.nn.Module, ds, batch_size: int) -> dict[str, float | None]:
        raise NotImplementedError
