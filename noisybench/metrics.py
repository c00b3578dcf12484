"""Evaluation metrics on predicted labels. All return 0-dim tensors (no host sync here)."""
from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    return (pred == target).float().mean()


def memorization(pred: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the corrupted training samples (noisy != clean): the fraction predicted as their noisy
    label (memorised) and as their clean label (corrected). NaN when nothing is corrupted."""
    corrupted = noisy != clean
    return accuracy(pred[corrupted], noisy[corrupted]), accuracy(pred[corrupted], clean[corrupted])


# Headline metrics a dataset config may name in `dataset.metric`.
METRICS = {"acc": accuracy}
