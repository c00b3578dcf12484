"""Plain nn.Modules. Each takes `input_shape` and `num_classes` from the runner.

Optional protocol `stages() -> list of callables` (their composition is `forward`): lets a step
method that runs several dropout passes (STORM) compute the deterministic part before the first
active dropout layer once and repeat only the rest (`split_at_dropout`). Models without it are
simply run whole for every pass.
"""
from __future__ import annotations

from collections.abc import Callable

from torch import nn


def has_active_dropout(module) -> bool:
    return isinstance(module, nn.Module) and any(
        isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0 for m in module.modules())


def _compose(fns: list) -> Callable:
    def run(x):
        for fn in fns:
            x = fn(x)
        return x
    return run


def _stages_and_cut(model: nn.Module) -> tuple[list, int]:
    """The model's `stages()` (empty if it declares none) and the index of the first with active dropout."""
    stages = list(model.stages()) if getattr(model, "stages", None) is not None else []
    return stages, next((i for i, s in enumerate(stages) if has_active_dropout(s)), len(stages))


def split_at_dropout(model: nn.Module) -> tuple[Callable, Callable] | None:
    """(trunk, head) with model(x) == head(trunk(x)) and no active dropout in trunk, or None when
    the model does not declare `stages()` or its first stage is already stochastic."""
    stages, cut = _stages_and_cut(model)
    if not stages or cut == 0:
        return None
    return _compose(stages[:cut]), _compose(stages[cut:])


def leading_dropout(model: nn.Module) -> tuple[nn.Dropout, Callable] | None:
    """When the second part of `split_at_dropout` starts with a plain nn.Dropout layer: that layer and
    the stages after it (so a caller can apply the dropout itself), else None."""
    stages, cut = _stages_and_cut(model)
    if 0 < cut < len(stages) and type(stages[cut]) is nn.Dropout:
        return stages[cut], _compose(stages[cut + 1:])
    return None
