"""The GPU fast path: bf16 autocast, channels_last and (opt-in) torch.compile, chosen by trainer keys.

- `trainer.precision`: auto (bf16 autocast on a CUDA device that supports bfloat16, else fp32), fp32,
  or bf16 (autocast on any device, including the CPU: how the tests exercise it). Weights, optimizer
  state and gradients stay float32 (autocast casts per op), so no GradScaler is needed (bf16 has
  float32's exponent range) and checkpoints are the same as fp32 runs'. Losses are float32: the loss
  methods compute them from float32 logits (`methods.base.at_least_float32`); STORM's features and Ω
  run in float32 too.
- `trainer.channels_last`: auto (on with bf16 autocast for a model with Conv2d layers on 4-D inputs:
  cuDNN's bf16 convolutions are fastest in NHWC), true, false.
- `trainer.compile`: false (default) or true: the model's forward is compiled in place
  (`nn.Module.compile`, so state_dict keys and checkpoints stay the same).

The runner enters `autocast()` around every training step and every evaluation, each step in its own
context (autocast's cache of bf16 weight copies must not outlive an optimizer step).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from omegaconf import DictConfig

from noisybench.errors import ConfigError

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class FastPath:
    precision: str  # effective: fp32 or bf16
    channels_last: bool
    compile: bool
    device_type: str

    def autocast(self):
        """bf16 autocast on the run's device, or nothing (fp32)."""
        if self.precision == "bf16":
            return torch.autocast(self.device_type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """The model in channels_last and/or compiled, as chosen (in place: the same module)."""
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if self.compile:
            model.compile()
        return model

    def record(self) -> dict:
        """What result.json says the run used."""
        return {"precision": self.precision, "channels_last": self.channels_last, "compile": self.compile}


def _bf16_supported(device: torch.device) -> bool:
    if device.type != "cuda":
        return True  # CPU autocast takes bfloat16 everywhere (slow without native support, never wrong)
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # older torch without the keyword
        return bool(torch.cuda.is_bf16_supported())


def resolve(trainer: DictConfig, device: torch.device, x_train: torch.Tensor | None = None,
            model: torch.nn.Module | None = None) -> FastPath:
    """The effective fast path of a run on `device` (x_train and model decide channels_last=auto)."""
    precision = str(trainer.get("precision", "auto"))
    if precision not in PRECISIONS:
        raise ConfigError(f"trainer.precision={precision} is unknown; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" and _bf16_supported(device) else "fp32"
    elif precision == "bf16" and not _bf16_supported(device):
        raise ConfigError(f"trainer.precision=bf16 but {device} has no native bfloat16 support; "
                          "use trainer.precision=fp32 (or auto)")
    conv = (x_train is not None and x_train.dim() == 4 and model is not None
            and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()))
    cl = trainer.get("channels_last", "auto")
    channels_last = (precision == "bf16" and conv) if cl == "auto" else bool(cl) and conv
    return FastPath(precision, channels_last, bool(trainer.get("compile", False)), device.type)


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor onto `device`; to a GPU from pinned memory without blocking the host."""
    if device.type == "cuda" and t.device.type == "cpu":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)
