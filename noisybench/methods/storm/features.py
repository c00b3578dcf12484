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

Computed on the host in float64, whatever the model's device and precision, by a few compiled loops
(numba; compiled on first use and cached on disk): a few thousand numbers per step, for which even
numpy's per-operation cost (about 1 µs, ~150 operations) was most of STORM's fixed cost per step on
a small model. Group sums run over the memory in its row order. Inputs may be numpy arrays or tensors
on any device (copied to the host once); features carry no gradient. tests/test_storm.py checks every
function against independent per-sample Python loops and `statistics.NormalDist`.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from numba import njit

from noisybench.methods.storm.host import host

EPS = 1e-8  # the code's std for singleton groups and its σ floor in the overlap
NUM_FULL = 19
NUM_LOSS = 2  # the paper's "w/o extra features" ablation: the detached loss and CAT
_SQRT2 = math.sqrt(2.0)
_JIT = {"cache": True, "nogil": True, "error_model": "numpy"}  # (numpy: a 0/0 is nan, not an exception)


def _floats(t) -> np.ndarray:
    """float32 arrays stay float32 (read in place; the kernels compute in float64), others float64."""
    a = host(t, None) if isinstance(t, torch.Tensor) else np.asarray(t)
    return a if a.dtype in (np.float32, np.float64) else a.astype(np.float64)


@njit(**_JIT)
def _pass_stats(losses, logits, more_losses, more_logits, target, out):
    G0, B, K = logits.shape
    G = G0 + more_logits.shape[0]
    pm, loss = np.empty(G), np.empty(G)
    for b in range(B):
        votes, agree0 = 0, 0
        for g in range(G):
            row = logits[g, b] if g < G0 else more_logits[g - G0, b]
            loss[g] = losses[g, b] if g < G0 else more_losses[g - G0, b]
            best, arg = np.float64(row[0]), 0
            for k in range(1, K):
                v = np.float64(row[k])
                if v > best:  # the first largest logit, as argmax
                    best, arg = v, k
            z = 0.0
            for k in range(K):
                z += math.exp(np.float64(row[k]) - best)
            pm[g] = 1.0 / z  # the largest softmax probability
            agree = 1 if arg == target[b] else 0
            votes += agree
            if g == 0:
                agree0 = agree
        lmean, pmean = loss.sum() / G, pm.sum() / G
        lvar, pvar = 0.0, 0.0
        for g in range(G):
            lvar += (loss[g] - lmean) ** 2
            pvar += (pm[g] - pmean) ** 2
        out[b, 0], out[b, 2] = lmean, pmean
        out[b, 1] = math.sqrt(lvar / (G - 1)) if G > 1 else 0.0  # (G = 1: the code's nan -> 0)
        out[b, 3] = math.sqrt(pvar / (G - 1)) if G > 1 else 0.0
        # majority vote over the passes; a tie (exactly G/2 agreeing passes) goes to pass 0
        out[b, 4] = agree0 if 2 * votes == G else (1.0 if 2 * votes > G else 0.0)


def pass_stats(losses, logits, targets, more_losses=None, more_logits=None) -> np.ndarray:
    """[G, B] losses and [G, B, K] logits -> [B, 5] columns (ℓ̄, ℓ̆, p̄, p̆, CAT), float64. More passes
    may come as separate arrays (`more_losses` [G', B], `more_logits` [G', B, K]: passes G..G+G'-1)."""
    losses, logits = _floats(losses), _floats(logits)
    if more_losses is None:
        more_losses, more_logits = losses[:0], logits[:0]
    more_losses, more_logits = _floats(more_losses), _floats(more_logits)
    out = np.empty((logits.shape[1], 5))
    _pass_stats(*(np.ascontiguousarray(a) for a in (losses, logits, more_losses, more_logits)),
                np.ascontiguousarray(host(targets, np.int64)), out)
    return out


@njit(**_JIT)
def _kl(mu_p, sd_p, mu_q, sd_q):
    if sd_p == 0.0 or sd_q == 0.0:
        return 0.0
    return math.log(sd_q / sd_p) + (sd_p ** 2 + (mu_p - mu_q) ** 2) / (2.0 * sd_q ** 2) - 0.5


@njit(**_JIT)
def _overlap(mu_a, sd_a, mu_b, sd_b):
    sd_a, sd_b = max(sd_a, EPS), max(sd_b, EPS)
    if sd_b < sd_a:  # X gets the smaller σ, as NormalDist does, so dv >= 0
        mx, sx, my, sy = mu_b, sd_b, mu_a, sd_a
    else:
        mx, sx, my, sy = mu_a, sd_a, mu_b, sd_b
    vx, vy = sx * sx, sy * sy
    dv, dm = vy - vx, abs(my - mx)
    if dv == 0.0:  # equal σ: 2Φ(-dm/(2σ))
        return math.erfc(dm / (2.0 * sx * _SQRT2))
    a = mx * vy - my * vx
    b = sx * sy * math.sqrt(dm * dm + dv * math.log(vy / vx))
    x1, x2 = (a + b) / dv, (a - b) / dv
    # Φ((x - μ)/σ) = erfc((μ - x)/(σ√2))/2
    c0, c1 = 0.5 * math.erfc((my - x1) / (sy * _SQRT2)), 0.5 * math.erfc((mx - x1) / (sx * _SQRT2))
    c2, c3 = 0.5 * math.erfc((my - x2) / (sy * _SQRT2)), 0.5 * math.erfc((mx - x2) / (sx * _SQRT2))
    return 1.0 - (abs(c0 - c1) + abs(c2 - c3))


@njit(**_JIT)
def _kl_overlap_many(mu_p, sd_p, mu_q, sd_q, kl, ovl):
    for i in range(len(mu_p)):
        kl[i] = _kl(mu_p[i], sd_p[i], mu_q[i], sd_q[i])
        ovl[i] = _overlap(mu_p[i], sd_p[i], mu_q[i], sd_q[i])


def _pairs(*vs) -> tuple[np.ndarray, ...]:
    arrays = np.broadcast_arrays(*(host(v) for v in vs))
    return tuple(np.ascontiguousarray(a, dtype=np.float64).ravel() for a in arrays)


def gaussian_kl(mu_p, sd_p, mu_q, sd_q) -> np.ndarray:
    """D_KL(N(mu_p, sd_p) || N(mu_q, sd_q)); 0 where either σ is 0 (the code's `gaussian_KL`)."""
    args = _pairs(mu_p, sd_p, mu_q, sd_q)
    kl, ovl = np.empty(len(args[0])), np.empty(len(args[0]))
    _kl_overlap_many(*args, kl, ovl)
    return kl.reshape(np.broadcast_shapes(*(np.shape(host(v)) for v in (mu_p, sd_p, mu_q, sd_q))))


def gaussian_overlap(mu_a, sd_a, mu_b, sd_b) -> np.ndarray:
    """Overlap coefficient of two normals, `statistics.NormalDist.overlap` vectorised (σ >= 1e-8)."""
    args = _pairs(mu_a, sd_a, mu_b, sd_b)
    kl, ovl = np.empty(len(args[0])), np.empty(len(args[0]))
    _kl_overlap_many(*args, kl, ovl)
    return ovl.reshape(np.broadcast_shapes(*(np.shape(host(v)) for v in (mu_a, sd_a, mu_b, sd_b))))


@njit(**_JIT)
def _window(stats, slot, clock, old_stats, old_slot, old_stamp, size, num_slots):
    """The newest `size` rows per slot of the batch (later rows newer) and the old window (each slot's
    rows newest first), laid out by slot, newest first (= a stable sort by slot of [batch reversed,
    old window], keeping the first `size` of each slot)."""
    B, N = len(slot), len(old_slot)
    keep = np.zeros(num_slots, np.int64)
    for i in range(B):
        if slot[i] < 0 or slot[i] >= num_slots:
            raise ValueError("memory slot out of range")
        keep[slot[i]] += 1
    for i in range(N):
        if old_slot[i] < 0 or old_slot[i] >= num_slots:
            raise ValueError("memory slot out of range")
        keep[old_slot[i]] += 1
    fill, end, total = np.empty(num_slots, np.int64), np.empty(num_slots, np.int64), 0
    for s in range(num_slots):
        keep[s] = min(keep[s], size)
        fill[s] = total
        total += keep[s]
        end[s] = total
    new_stats, new_slot, new_stamp = np.empty((total, 5)), np.empty(total, np.int64), np.empty(total, np.int64)
    for i in range(B - 1, -1, -1):
        s = slot[i]
        if fill[s] < end[s]:
            j = fill[s]
            new_stats[j, :] = stats[i, :]
            new_slot[j], new_stamp[j] = s, clock + i
            fill[s] += 1
    for i in range(N):
        s = old_slot[i]
        if fill[s] < end[s]:
            j = fill[s]
            new_stats[j, :] = old_stats[i, :]
            new_slot[j], new_stamp[j] = s, old_stamp[i]
            fill[s] += 1
    return new_stats, new_slot, new_stamp


@njit(**_JIT)
def _group_mean_std(values, group, count, mean, std):
    """Per-group mean and unbiased std of the columns of `values` [N, C]; std = EPS for size <= 1.
    Sums in row order."""
    G, C = mean.shape
    mean[:] = 0.0
    var = np.zeros((G, C))
    for i in range(len(group)):
        for c in range(C):
            mean[group[i], c] += values[i, c]
    for g in range(G):
        for c in range(C):
            mean[g, c] /= max(count[g], 1)
    for i in range(len(group)):
        for c in range(C):
            var[group[i], c] += (values[i, c] - mean[group[i], c]) ** 2
    for g in range(G):
        for c in range(C):
            std[g, c] = math.sqrt(var[g, c] / max(count[g] - 1, 1)) if count[g] > 1 else EPS


@njit(**_JIT)
def _features(mem_stats, mem_slot, stats, slot, num_slots, out):
    G2, N, B = 2 * num_slots, len(mem_slot), len(slot)
    group = np.empty(N, np.int64)
    count = np.zeros(G2, np.int64)
    for i in range(N):
        group[i] = mem_slot[i] * 2 + int(mem_stats[i, 4])
        count[group[i]] += 1
    mean, std = np.empty((G2, 4)), np.empty((G2, 4))
    _group_mean_std(mem_stats, group, count, mean, std)
    # every member compared with its group's means (the code's `_update_batch_kl`), then their group statistics
    d = np.empty((N, 2))
    for i in range(N):
        g = group[i]
        d[i, 0] = _kl(mem_stats[i, 0], mem_stats[i, 1], mean[g, 0], mean[g, 1])
        d[i, 1] = _overlap(mem_stats[i, 0], mem_stats[i, 1], mean[g, 0], mean[g, 1])
    d_mean, d_std = np.empty((G2, 2)), np.empty((G2, 2))
    _group_mean_std(d, group, count, d_mean, d_std)
    for b in range(B):  # (value, group mean, group std) per quantity, then CAT
        g = slot[b] * 2 + int(stats[b, 4])
        for q in range(4):
            out[b, 3 * q], out[b, 3 * q + 1], out[b, 3 * q + 2] = stats[b, q], mean[g, q], std[g, q]
        out[b, 12] = _kl(stats[b, 0], stats[b, 1], mean[g, 0], mean[g, 1])
        out[b, 15] = _overlap(stats[b, 0], stats[b, 1], mean[g, 0], mean[g, 1])
        out[b, 13], out[b, 14], out[b, 16], out[b, 17] = d_mean[g, 0], d_std[g, 0], d_mean[g, 1], d_std[g, 1]
        out[b, 18] = stats[b, 4]


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
        to_t = lambda a: None if a is None else torch.from_numpy(a.copy())  # noqa: E731  (a local helper)
        return {"stats": to_t(self.stats), "slot": to_t(self.slot), "stamp": to_t(self.stamp), "clock": self.clock}

    def load_state_dict(self, state: dict) -> None:
        if state["stats"] is None:
            self.stats = self.slot = self.stamp = None
        else:
            self.stats, self.slot, self.stamp = (host(state["stats"]), host(state["slot"], np.int64),
                                                 host(state["stamp"], np.int64))
        self.clock = int(state["clock"])

    def _slots(self, targets) -> np.ndarray:
        targets = np.ascontiguousarray(host(targets, np.int64))
        return targets if self.separate else np.zeros_like(targets)

    def update(self, stats, targets, size: int) -> None:
        """Append a batch (in batch order, so later samples count as newer), keep `size` per class."""
        stats, slot = np.ascontiguousarray(host(stats)), self._slots(targets)
        if self.stats is None:
            self.stats, self.slot, self.stamp = np.empty((0, 5)), np.empty(0, np.int64), np.empty(0, np.int64)
        try:
            self.stats, self.slot, self.stamp = _window(stats, slot, self.clock, self.stats, self.slot, self.stamp,
                                                        int(size), self.num_slots)
        except ValueError:
            raise ValueError(f"a memory slot outside 0..{self.num_slots - 1}") from None
        self.clock += len(slot)

    def features(self, stats, targets) -> np.ndarray:
        """[B, 19] features (float64) of a batch already added with `update` (group stats include it)."""
        stats, slot = np.ascontiguousarray(host(stats)), self._slots(targets)
        out = np.empty((len(slot), NUM_FULL))
        _features(self.stats, self.slot, stats, slot, self.num_slots, out)
        return out
