"""STORM's per-sample rescaler features (Heck et al., AAAI 2025, "Input Features to Ω", Eq. 4,
Table 1; public code `utils_storm.py` classes `Results` and `Filter`, `storm.py` `call_rescaler`).

From G forward passes with dropout, per sample: ℓ̄, ℓ̆ (mean, std of its loss over the passes),
p̄, p̆ (mean, std of its max softmax probability) and CAT (prediction agrees with the label in at
least half of the passes, ties broken by pass 0). A `GroupMemory` keeps the last `size` samples per
target class; a sample's group is (its class, its CAT). The 19 features, in the code's order:

    ℓ̄, mean_g ℓ̄, std_g ℓ̄,  ℓ̆, mean_g ℓ̆, std_g ℓ̆,  p̄, mean_g p̄, std_g p̄,  p̆, mean_g p̆, std_g p̆,
    KL, mean_g KL, std_g KL,  OVL, mean_g OVL, std_g OVL,  CAT

KL and OVL compare N(ℓ̄, ℓ̆) with N(mean_g ℓ̄, mean_g ℓ̆) (closed-form KL, 0 when a σ is 0; the
overlap coefficient of `statistics.NormalDist`, σ floored at 1e-8); their group statistics are over
every member of the group, each compared with the group's current means. Stds over passes and over
groups are unbiased (torch.std); a group of size <= 1 gets std 1e-8 (the code's `eps`).

Computed on the host with numpy in float64, whatever the model's device and precision: a few hundred
numbers per step, for which numpy's per-operation cost (about 1 µs) is a fraction of a torch
operation's (the ~100 operations of the features were most of STORM's fixed cost per step on a small
model). Inputs may be numpy arrays or tensors on any device (copied to the host once); everything is
vectorised over classes and groups (bincounts, no Python loop over samples or classes); features carry
no gradient.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from scipy.special import erfc

EPS = 1e-8  # the code's std for singleton groups and its σ floor in the overlap
NUM_FULL = 19
NUM_LOSS = 2  # the paper's "w/o extra features" ablation: the detached loss and CAT


def host(t, dtype=np.float64) -> np.ndarray:
    """A tensor (any device) or array as a numpy array of `dtype` on the host."""
    if isinstance(t, torch.Tensor):
        t = t.detach()
        if t.device.type != "cpu" or t.dtype in (torch.bfloat16, torch.float16):
            t = t.to("cpu", torch.float64 if t.is_floating_point() else t.dtype)
        t = t.numpy()
    return np.asarray(t, dtype=dtype)


def pass_stats(losses, logits, targets) -> np.ndarray:
    """[G, B] losses and [G, B, K] logits -> [B, 5] columns (ℓ̄, ℓ̆, p̄, p̆, CAT), float64."""
    losses, logits, targets = host(losses), host(logits), host(targets, np.int64)
    G = losses.shape[0]
    pred = logits.argmax(axis=2)
    pmax = 1.0 / np.exp(logits - logits.max(axis=2, keepdims=True)).sum(axis=2)  # the largest softmax probability
    agree = pred == targets[None]
    votes = agree.sum(axis=0)
    # majority vote over the passes; a tie (exactly G/2 agreeing passes) goes to pass 0
    cat = np.where(2 * votes == G, agree[0], 2 * votes > G)
    both = np.stack([losses, pmax], axis=2)  # [G, B, 2]: one mean and one std for both quantities
    out = np.empty((losses.shape[1], 5))
    out[:, 0:4:2], out[:, 4] = both.mean(axis=0), cat
    # (G = 1: the code's nan -> 0)
    out[:, 1:4:2] = both.std(axis=0, ddof=1) if G > 1 else 0.0
    return out


def gaussian_kl(mu_p, sd_p, mu_q, sd_q) -> np.ndarray:
    """D_KL(N(mu_p, sd_p) || N(mu_q, sd_q)); 0 where either σ is 0 (the code's `gaussian_KL`)."""
    mu_p, sd_p, mu_q, sd_q = (host(v) for v in (mu_p, sd_p, mu_q, sd_q))
    zero = (sd_p == 0) | (sd_q == 0)
    sp, sq = np.where(zero, 1.0, sd_p), np.where(zero, 1.0, sd_q)
    kl = np.log(sq / sp) + (sp ** 2 + (mu_p - mu_q) ** 2) / (2 * sq ** 2) - 0.5
    return np.where(zero, 0.0, kl)


def gaussian_overlap(mu_a, sd_a, mu_b, sd_b) -> np.ndarray:
    """Overlap coefficient of two normals, `statistics.NormalDist.overlap` vectorised (σ >= 1e-8)."""
    mu_a, sd_a, mu_b, sd_b = (host(v) for v in (mu_a, sd_a, mu_b, sd_b))
    sd_a, sd_b = np.maximum(sd_a, EPS), np.maximum(sd_b, EPS)
    swap = sd_b < sd_a  # X gets the smaller σ, as NormalDist does, so dv >= 0
    mx, sx = np.where(swap, mu_b, mu_a), np.where(swap, sd_b, sd_a)
    my, sy = np.where(swap, mu_a, mu_b), np.where(swap, sd_a, sd_b)
    vx, vy = sx ** 2, sy ** 2
    dv, dm = vy - vx, np.abs(my - mx)
    equal = dv == 0
    dv_safe = np.where(equal, 1.0, dv)
    a = mx * vy - my * vx
    b = sx * sy * np.sqrt(dm ** 2 + dv * np.log(vy / vx))
    x1, x2 = (a + b) / dv_safe, (a - b) / dv_safe
    # the four normal CDFs Φ((x - μ)/σ) = erfc((μ - x)/(σ√2))/2, one erfc call; the equal-σ case 2Φ(-dm/(2σ))
    # only where it applies
    r2 = math.sqrt(2.0)
    c = 0.5 * erfc(np.stack([(my - x1) / (sy * r2), (mx - x1) / (sx * r2), (my - x2) / (sy * r2),
                             (mx - x2) / (sx * r2)]))
    out = 1.0 - (np.abs(c[0] - c[1]) + np.abs(c[2] - c[3]))
    if equal.any():
        out[equal] = 2.0 * (0.5 * erfc(dm[equal] / (2.0 * sx[equal] * r2)))
    return out


def _group_mean_std(values: np.ndarray, group: np.ndarray, count: np.ndarray, num_groups: int):
    """Per-group mean and unbiased std of the columns of `values` [N, C]; std = EPS for size <= 1."""
    C = values.shape[1]
    cell = (group[:, None] * C + np.arange(C)).ravel()  # (group, column) cells: one bincount for all columns
    sums = np.bincount(cell, weights=values.ravel(), minlength=num_groups * C).reshape(num_groups, C)
    n = count.astype(np.float64)[:, None]
    mean = sums / np.maximum(n, 1)
    dev = (values - mean[group]) ** 2
    var = np.bincount(cell, weights=dev.ravel(), minlength=num_groups * C).reshape(num_groups, C) / np.maximum(n - 1, 1)
    std = np.where(n > 1, np.sqrt(var), EPS)
    return mean, std


class GroupMemory:
    """The code's `Filter`: the last `size` samples per class (newest kept), grouped by CAT. Host arrays.

    With `separate_classes=False` all samples share one class slot (`--no_class_separation`).
    """

    def __init__(self, num_classes: int, separate_classes: bool = True) -> None:
        self.num_slots = int(num_classes) if separate_classes else 1
        self.separate = separate_classes
        self.clear()

    def clear(self) -> None:
        self.stats: np.ndarray | None = None  # [N, 5]: ℓ̄, ℓ̆, p̄, p̆, CAT
        self.slot: np.ndarray | None = None  # [N] class slot
        self.stamp: np.ndarray | None = None  # [N] insertion order (larger = newer)
        self.clock = 0

    def state_dict(self) -> dict:
        """The window (as CPU tensors: checkpoints load with weights_only) and the clock."""
        to_t = lambda a: None if a is None else torch.from_numpy(a.copy())  # noqa: E731
        return {"stats": to_t(self.stats), "slot": to_t(self.slot), "stamp": to_t(self.stamp), "clock": self.clock}

    def load_state_dict(self, state: dict) -> None:
        if state["stats"] is None:
            self.stats = self.slot = self.stamp = None
        else:
            self.stats, self.slot, self.stamp = (host(state["stats"]), host(state["slot"], np.int64),
                                                 host(state["stamp"], np.int64))
        self.clock = int(state["clock"])

    def update(self, stats, targets, size: int) -> None:
        """Append a batch (in batch order, so later samples count as newer), keep `size` per class."""
        stats, targets = host(stats), host(targets, np.int64)
        B = stats.shape[0]
        slot = targets if self.separate else np.zeros_like(targets)
        stamp = np.arange(self.clock, self.clock + B)
        self.clock += B
        # newest first: the batch reversed, then the window, which is kept by class and newest first
        stats, slot, stamp = stats[::-1], slot[::-1], stamp[::-1]
        if self.stats is not None:
            stats, slot, stamp = (np.concatenate([stats, self.stats]), np.concatenate([slot, self.slot]),
                                  np.concatenate([stamp, self.stamp]))
        # rank by recency inside each class: a stable sort by class keeps newest first (the order of
        # np.lexsort((-stamp, slot)); a radix sort on small keys)
        order = np.argsort(slot.astype(np.int16) if self.num_slots < 1 << 15 else slot, kind="stable")
        counts = np.bincount(slot, minlength=self.num_slots)
        start = np.cumsum(counts) - counts
        rank = np.arange(len(order)) - start[slot[order]]
        keep = order[rank < size]
        self.stats, self.slot, self.stamp = stats[keep], slot[keep], stamp[keep]

    def features(self, stats, targets) -> np.ndarray:
        """[B, 19] features (float64) of a batch already added with `update` (group stats include it)."""
        stats, targets = host(stats), host(targets, np.int64)
        G2 = 2 * self.num_slots
        mem_group = self.slot * 2 + self.stats[:, 4].astype(np.int64)
        count = np.bincount(mem_group, minlength=G2)
        mean, std = _group_mean_std(self.stats[:, :4], mem_group, count, G2)  # [G2, 4]
        slot = targets if self.separate else np.zeros_like(targets)
        g = slot * 2 + stats[:, 4].astype(np.int64)
        # every member compared with its group's means (the code's `_update_batch_kl`), and the batch
        # with its groups' means: one evaluation for both (the memory's N rows, then the batch's B)
        N = len(mem_group)
        both = np.concatenate([mem_group, g])
        mu, sd = np.concatenate([self.stats[:, 0], stats[:, 0]]), np.concatenate([self.stats[:, 1], stats[:, 1]])
        kl_all = gaussian_kl(mu, sd, mean[both, 0], mean[both, 1])
        ovl_all = gaussian_overlap(mu, sd, mean[both, 0], mean[both, 1])
        d_mean, d_std = _group_mean_std(np.stack([kl_all[:N], ovl_all[:N]], 1), mem_group, count, G2)

        out = np.empty((len(g), NUM_FULL))  # (value, group mean, group std) per quantity, then CAT
        out[:, 0:12:3], out[:, 12], out[:, 15] = stats[:, :4], kl_all[N:], ovl_all[N:]
        out[:, 1:12:3], out[:, 13:18:3] = mean[g], d_mean[g]
        out[:, 2:12:3], out[:, 14:18:3] = std[g], d_std[g]
        out[:, 18] = stats[:, 4]
        return out
