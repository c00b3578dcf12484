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

Everything is vectorised over classes and groups (scatter sums, no Python loop over samples or
classes) and computed in float64 (float32 on MPS, which has no float64); features carry no gradient.
"""
from __future__ import annotations

import math

import torch

EPS = 1e-8  # the code's std for singleton groups and its σ floor in the overlap
NUM_FULL = 19
NUM_LOSS = 2  # the paper's "w/o extra features" ablation: the detached loss and CAT


def pass_stats(losses: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[G, B] losses and [G, B, K] logits -> [B, 5] columns (ℓ̄, ℓ̆, p̄, p̆, CAT)."""
    G = losses.shape[0]
    pmax, pred = torch.softmax(logits, dim=2).max(dim=2)
    agree = pred == targets.unsqueeze(0)
    votes = agree.sum(dim=0)
    # majority vote over the passes; a tie (exactly G/2 agreeing passes) goes to pass 0
    cat = torch.where(2 * votes == G, agree[0], 2 * votes > G)
    std = (lambda t: t.std(dim=0)) if G > 1 else (lambda t: torch.zeros_like(t[0]))  # the code's nan -> 0
    return torch.stack([losses.mean(0), std(losses), pmax.mean(0), std(pmax), cat.to(losses.dtype)], dim=1)


def gaussian_kl(mu_p: torch.Tensor, sd_p: torch.Tensor, mu_q: torch.Tensor, sd_q: torch.Tensor) -> torch.Tensor:
    """D_KL(N(mu_p, sd_p) || N(mu_q, sd_q)); 0 where either σ is 0 (the code's `gaussian_KL`)."""
    zero = (sd_p == 0) | (sd_q == 0)
    sp, sq = torch.where(zero, 1.0, sd_p), torch.where(zero, 1.0, sd_q)
    kl = torch.log(sq / sp) + (sp ** 2 + (mu_p - mu_q) ** 2) / (2 * sq ** 2) - 0.5
    return torch.where(zero, torch.zeros_like(kl), kl)


def _cdf(x: torch.Tensor, mu: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
    return 0.5 * torch.erfc((mu - x) / (sd * math.sqrt(2.0)))


def gaussian_overlap(mu_a: torch.Tensor, sd_a: torch.Tensor, mu_b: torch.Tensor, sd_b: torch.Tensor) -> torch.Tensor:
    """Overlap coefficient of two normals, `statistics.NormalDist.overlap` vectorised (σ >= 1e-8)."""
    sd_a, sd_b = sd_a.clamp(min=EPS), sd_b.clamp(min=EPS)
    swap = sd_b < sd_a  # X gets the smaller σ, as NormalDist does, so dv >= 0
    mx, sx = torch.where(swap, mu_b, mu_a), torch.where(swap, sd_b, sd_a)
    my, sy = torch.where(swap, mu_a, mu_b), torch.where(swap, sd_a, sd_b)
    vx, vy = sx ** 2, sy ** 2
    dv, dm = vy - vx, (my - mx).abs()
    equal = dv == 0
    dv_safe = torch.where(equal, torch.ones_like(dv), dv)
    a = mx * vy - my * vx
    b = sx * sy * torch.sqrt(dm ** 2 + dv * torch.log(vy / vx))
    x1, x2 = (a + b) / dv_safe, (a - b) / dv_safe
    unequal = 1.0 - ((_cdf(x1, my, sy) - _cdf(x1, mx, sx)).abs() + (_cdf(x2, my, sy) - _cdf(x2, mx, sx)).abs())
    same_var = 2.0 * _cdf(-dm, torch.zeros_like(dm), 2.0 * sx)  # = 2 Φ(-dm / (2σ))
    return torch.where(equal, same_var, unequal)


def _group_mean_std(values: torch.Tensor, group: torch.Tensor, count: torch.Tensor, num_groups: int):
    """Per-group mean and unbiased std of the columns of `values` [N, C]; std = EPS for size <= 1."""
    C = values.shape[1]
    sums = values.new_zeros(num_groups, C).index_add_(0, group, values)
    n = count.to(values.dtype).unsqueeze(1)
    mean = sums / n.clamp(min=1)
    dev = (values - mean[group]) ** 2
    var = values.new_zeros(num_groups, C).index_add_(0, group, dev) / (n - 1).clamp(min=1)
    std = torch.where(n > 1, var.sqrt(), torch.full_like(var, EPS))
    return mean, std


class GroupMemory:
    """The code's `Filter`: the last `size` samples per class (newest kept), grouped by CAT.

    With `separate_classes=False` all samples share one class slot (`--no_class_separation`).
    """

    def __init__(self, num_classes: int, separate_classes: bool = True) -> None:
        self.num_slots = int(num_classes) if separate_classes else 1
        self.separate = separate_classes
        self.clear()

    def clear(self) -> None:
        self.stats: torch.Tensor | None = None  # [N, 5]: ℓ̄, ℓ̆, p̄, p̆, CAT
        self.slot: torch.Tensor | None = None  # [N] class slot
        self.stamp: torch.Tensor | None = None  # [N] insertion order (larger = newer)
        self.clock = 0

    def state_dict(self) -> dict:
        """The window (tensors by reference) and the clock, for checkpoints."""
        return {"stats": self.stats, "slot": self.slot, "stamp": self.stamp, "clock": self.clock}

    def load_state_dict(self, state: dict) -> None:
        self.stats, self.slot, self.stamp = state["stats"], state["slot"], state["stamp"]
        self.clock = int(state["clock"])

    def to(self, device: torch.device) -> "GroupMemory":
        if self.stats is not None:
            self.stats, self.slot, self.stamp = (t.to(device) for t in (self.stats, self.slot, self.stamp))
        return self

    def update(self, stats: torch.Tensor, targets: torch.Tensor, size: int) -> None:
        """Append a batch (in batch order, so later samples count as newer), keep `size` per class."""
        B = stats.shape[0]
        slot = targets if self.separate else torch.zeros_like(targets)
        stamp = torch.arange(self.clock, self.clock + B, device=stats.device)
        self.clock += B
        if self.stats is not None:
            stats, slot, stamp = (torch.cat([self.stats, stats]), torch.cat([self.slot, slot]),
                                  torch.cat([self.stamp, stamp]))
        # rank by recency inside each class: sort newest first, then (stably) by class
        order = torch.argsort(stamp, descending=True)
        order = order[torch.sort(slot[order], stable=True).indices]
        counts = torch.bincount(slot[order], minlength=self.num_slots)
        start = torch.cumsum(counts, 0) - counts
        rank = torch.arange(len(order), device=order.device) - start[slot[order]]
        keep = order[rank < size]
        self.stats, self.slot, self.stamp = stats[keep], slot[keep], stamp[keep]

    def features(self, stats: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """[B, 19] features of a batch already added with `update` (group stats include it)."""
        G2 = 2 * self.num_slots
        group_of = lambda slot, cat: slot * 2 + cat.long()  # noqa: E731
        mem_group = group_of(self.slot, self.stats[:, 4])
        count = torch.bincount(mem_group, minlength=G2)
        mean, std = _group_mean_std(self.stats[:, :4], mem_group, count, G2)  # [G2, 4]
        slot = targets if self.separate else torch.zeros_like(targets)
        g = group_of(slot, stats[:, 4])
        # every member compared with its group's means (the code's `_update_batch_kl`), and the batch
        # with its groups' means: one evaluation for both (the memory's N rows, then the batch's B)
        N = len(mem_group)
        both = torch.cat([mem_group, g])
        mu, sd = torch.cat([self.stats[:, 0], stats[:, 0]]), torch.cat([self.stats[:, 1], stats[:, 1]])
        kl_all = gaussian_kl(mu, sd, mean[both, 0], mean[both, 1])
        ovl_all = gaussian_overlap(mu, sd, mean[both, 0], mean[both, 1])
        m_kl, m_ovl, kl, ovl = kl_all[:N], ovl_all[:N], kl_all[N:], ovl_all[N:]
        d_mean, d_std = _group_mean_std(torch.stack([m_kl, m_ovl], 1), mem_group, count, G2)

        own = torch.cat([stats[:, :4], kl[:, None], ovl[:, None]], dim=1)  # [B, 6]
        gm = torch.cat([mean[g], d_mean[g]], dim=1)
        gs = torch.cat([std[g], d_std[g]], dim=1)
        triples = torch.stack([own, gm, gs], dim=2).reshape(len(g), 18)  # value, group mean, group std
        return torch.cat([triples, stats[:, 4:5]], dim=1)
