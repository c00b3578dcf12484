"""Evaluation metrics on predicted labels. All return 0-dim tensors (no host sync here).

Conventions follow scikit-learn: F1 of the positive class (label 1) with 0 when undefined; macro-F1
averages over the labels present in the targets or the predictions; Matthews correlation uses the
multiclass formula (Gorodkin 2004), 0 when undefined.
"""
from __future__ import annotations

import torch


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    return (pred == target).float().mean()


def _f1(pred: torch.Tensor, target: torch.Tensor, label: int | torch.Tensor) -> torch.Tensor:
    tp = ((pred == label) & (target == label)).sum()
    denom = (pred == label).sum() + (target == label).sum()  # = 2tp + fp + fn
    return torch.where(denom > 0, 2.0 * tp / denom.clamp(min=1), torch.zeros((), device=pred.device))


def f1_positive(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """F1 of class 1 (e.g. spam): the headline metric of imbalanced binary tasks."""
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    return _f1(pred, target, 1).float()


def macro_f1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    labels = torch.unique(torch.cat([pred, target]))
    return torch.stack([_f1(pred, target, c) for c in labels]).float().mean()


def mcc(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    k = int(torch.max(torch.cat([pred, target])).item()) + 1  # host sync: once per evaluation
    cm = torch.bincount(target * k + pred, minlength=k * k).reshape(k, k).double()
    t, p, c, s = cm.sum(1), cm.sum(0), cm.trace(), cm.sum()
    num = c * s - (p * t).sum()
    den = torch.sqrt((s * s - (p * p).sum()) * (s * s - (t * t).sum()))
    return torch.where(den > 0, num / den.clamp(min=1e-300),
                       torch.zeros((), dtype=den.dtype, device=den.device)).float()


def memorization(pred: torch.Tensor, noisy: torch.Tensor, clean: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Over the corrupted training samples (noisy != clean): the fraction predicted as their noisy
    label (memorised) and as their clean label (corrected). NaN when nothing is corrupted."""
    corrupted = noisy != clean
    return accuracy(pred[corrupted], noisy[corrupted]), accuracy(pred[corrupted], clean[corrupted])


def detection(loss: torch.Tensor, corrupted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """How well a per-sample training loss (lower = clean) tells the clean training samples from the
    corrupted ones (noisy label != clean label; the clean labels score, they never train):

    - AUC: P(a clean sample's loss < a corrupted one's), ties counted 1/2 (= sklearn's
      roc_auc_score(clean, -loss)); 0.5: no separation, 1: every clean sample below every corrupted one;
    - noisy_in_lowk: the share of corrupted samples among the k lowest-loss samples, k = the number of
      clean samples (the small-loss selection of Co-teaching with the true clean count; 0: perfect, the
      noise rate: chance). Ties at the k-th loss are broken by sample index.

    Both NaN when nothing (or everything) is corrupted. Computed on the CPU in float64 (one host copy
    of the N losses per evaluation)."""
    loss = loss.detach().reshape(-1).double().cpu()
    bad = corrupted.detach().reshape(-1).bool().cpu()
    n_bad = int(bad.sum())
    n_clean = bad.numel() - n_bad
    if n_bad == 0 or n_clean == 0:
        nan = torch.tensor(float("nan"), dtype=torch.float64)
        return nan, nan.clone()
    _, inverse, counts = torch.unique(loss, sorted=True, return_inverse=True, return_counts=True)
    ranks = (torch.cumsum(counts, 0) - (counts - 1) / 2.0).double()[inverse]  # 1-based, ties averaged
    auc = (ranks[bad].sum() - n_bad * (n_bad + 1) / 2.0) / (n_bad * n_clean)
    lowest = torch.argsort(loss, stable=True)[:n_clean]
    return auc, bad[lowest].double().mean()


# Metrics a dataset config may name as its headline in `dataset.metric`; all are logged for
# datasets that list them in `dataset.extra_metrics`.
METRICS = {"acc": accuracy, "f1": f1_positive, "macro_f1": macro_f1, "mcc": mcc}


# Dialogue state tracking: states are [turns, slots] tensors of value ids (none and dontcare are ids).
def joint_goal_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """JGA (TripPy `metric_dst.py`): the fraction of turns whose predicted cumulative state equals
    the gold one in EVERY slot, `none` and `dontcare` included."""
    if target.shape[0] == 0:
        return torch.tensor(float("nan"), device=target.device)
    return (pred == target).all(dim=1).float().mean()


def slot_accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The fraction of (turn, slot) cells with the gold value, `none` included."""
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    return (pred == target).float().mean()


def gate_f1(pred: torch.Tensor, target: torch.Tensor, gate: int) -> torch.Tensor:
    """F1 of one gate class over all (turn, slot) cells; 0 when the class is neither predicted nor gold."""
    if target.numel() == 0:
        return torch.tensor(float("nan"), device=target.device)
    return _f1(pred.reshape(-1), target.reshape(-1), gate).float()
