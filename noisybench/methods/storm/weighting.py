"""The weight normalisations s(w) of the rescaled loss share (M/B) s(w) Σ_m w_m ℓ_m (`weight_norm`:
none, weight_sum, mass, class_sum, class_mass; docs/methods/storm.md), its value, its closed-form
w-gradient and the batch loss the model trains on. `heads` = the number of Ω heads (classes)."""
from __future__ import annotations

import math

import torch

from noisybench.tasks import LossTerms

WEIGHT_NORMS = ("class_mass", "class_sum", "mass", "none", "weight_sum")


def scale(norm: str, heads: int, w: torch.Tensor, loss: torch.Tensor,
          head: torch.Tensor) -> torch.Tensor:
    """s(w) with the rescaled sample loss s(w) Σ_m w_m ℓ_m; `loss` holds detached values.

    none: 1/M (the paper's Σ w ℓ, as a mean); weight_sum: 1/Σw (MW-Net's PGC script);
    mass: Σℓ / (Σ wℓ M), the public DST code's mass preservation (the loss value stays the
    unweighted mean; only the RELATIVE weights matter). The factor is differentiable in w (the
    meta-gradient includes its derivative) and constant in θ, else L would not depend on w.
    """
    if norm == "none":
        return torch.ones((), dtype=w.dtype, device=w.device) / len(w)
    if norm == "weight_sum":
        return 1.0 / w.sum().clamp(min=1e-12)
    K = heads
    if norm == "class_sum":  # per sample: (M_c / M) / Σ_{j in c} w_j for its Ω head c
        mass = w.new_zeros(K).index_add(0, head, w).clamp(min=1e-12)
        share = torch.bincount(head, minlength=K).to(w.dtype) / len(w)
        return (share / mass)[head]
    if norm == "class_mass":  # per sample: Σ_c ℓ / (Σ_c wℓ M) over its Ω head c
        num = loss.new_zeros(K).index_add(0, head, loss)
        den = w.new_zeros(K).index_add(0, head, w * loss).clamp(min=1e-12)
        return (num / den)[head] / len(w)
    return loss.sum() / ((w * loss).sum().clamp(min=1e-12) * len(w))


def rescaled(norm: str, heads: int, share: float, values: torch.Tensor, w: torch.Tensor, rows: int,
             ell: torch.Tensor, head: torch.Tensor):
    """The reweighted part of the batch loss, share (M/B) s(w) Σ_m w_m ℓ_m, where the batch loss is
    L(w) = mean_r rest_r + this: with w = 1 it is the unweighted mean row loss (classification:
    s(w) Σ w ℓ). `values` = the sample losses' values (for `mass`); `ell` = the sample losses, or
    their directional derivatives."""
    return share * (len(w) / rows) * (scale(norm, heads, w, values, head) * w * ell).sum()


def rescaled_grad(norm: str, heads: int, share: float, values: torch.Tensor, w: torch.Tensor,
                  rows: int, ell: torch.Tensor, head: torch.Tensor) -> torch.Tensor:
    """d`_rescaled`/dw at w (all arguments values), in closed form: the few vector operations of the
    meta-gradient's objective cost more through autograd than Ω's own backward. With c = share M/B
    and E = Σ w ℓ (over the batch, or over the sample's Ω head class k for the class norms):
      none: c ℓ_j / M;  weight_sum: c (ℓ_j − E/W) / W, W = Σw;
      mass: c (Σv/M) (ℓ_j − E v_j/D) / D, D = Σ w v;  class_sum: c (M_k/M) (ℓ_j − E_k/W_k) / W_k;
      class_mass: c (V_k/M) (ℓ_j − E_k v_j/D_k) / D_k
    (v = the losses' values). A clamped sum (< 1e-12) is a constant, as for autograd through the
    clamp. tests/test_storm.py checks every norm against autograd through `rescaled`."""
    c = share * (len(w) / rows)
    M = len(w)
    if norm == "none":
        return ell * (c / M)
    if norm == "weight_sum":  # (the default: its few operations)
        total = w.sum()
        den = total.clamp(min=1e-12)
        mean = torch.where(total >= 1e-12, torch.dot(w, ell) / den, 0.0)
        return (ell - mean) * (c / den)
    if norm == "mass":
        mass = w * values  # D = Σ w v
        total = mass.sum()
        den = total.clamp(min=1e-12)
        alive = (total >= 1e-12).to(w.dtype)
        return (c * values.sum() / M) * (ell - alive * values * ((w * ell).sum() / den)) / den
    K = heads
    mass = w if norm == "class_sum" else w * values
    total = w.new_zeros(K).index_add(0, head, mass)
    den = total.clamp(min=1e-12)
    alive = (total >= 1e-12).to(w.dtype)
    E = w.new_zeros(K).index_add(0, head, w * ell)
    if norm == "class_sum":
        scale = c * torch.bincount(head, minlength=K).to(w.dtype) / M
        dmass = torch.ones_like(w)
    else:
        scale = c * values.new_zeros(K).index_add(0, head, values) / M
        dmass = values
    return (scale / den)[head] * (ell - (alive * E / den)[head] * dmass)


def class_boost(w: torch.Tensor, head: torch.Tensor, heads: int, floor: float) -> torch.Tensor:
    """The factor φ_m >= 1 that lifts every Ω head's (class's) mean weight in the batch to at least
    `floor` times the batch's mean weight (`class_floor`): φ = max(1, floor · mean(w) / mean_c(w)) for
    sample m of class c; 1 where the floor does not bind. Values only: φ is a constant for every
    gradient (the model's and Ω's meta-gradient see the weights φ ⊙ w with φ fixed)."""
    count = torch.bincount(head, minlength=heads).to(w.dtype)
    mass = w.new_zeros(heads).index_add(0, head, w)
    need = floor * w.mean() * count  # the class's mass at the floor
    phi = torch.where(mass < need, need / mass.clamp(min=1e-12), torch.ones_like(mass))
    return phi[head]


def sharpen(w: torch.Tensor, tau: float) -> tuple[torch.Tensor, torch.Tensor]:
    """`sharpness` τ: w' = σ(τ logit w) and dw'/dw = τ w'(1 − w') / (w(1 − w)), elementwise.

    Ω's last BatchNorm has no affine parameters, so per head its logit difference z1 − z0 has mean 0
    and a standard deviation of at most 2: a group holding half a class's rows cannot go below
    σ(−2) ≈ 0.12. τ > 1 widens that range (τ = 1: the paper; the caller skips this). Differentiable
    in w; the closed-form meta-gradient takes dw'/dw by the chain rule (`STORM._rescaled_grad`)."""
    eps = torch.finfo(w.dtype).eps
    wc = w.clamp(eps, 1.0 - eps)
    out = torch.sigmoid(tau * (torch.log(wc) - torch.log1p(-wc)))
    return out, tau * out * (1.0 - out) / (wc * (1.0 - wc))


AUTO_TARGET = 0.02  # sharpness=auto: the weight the corrupted group may reach at most (two-group model)
AUTO_MAX = 4.0  # sharpness=auto: the largest τ it chooses


def auto_sharpness(noise_bound: float) -> float:
    """`sharpness=auto`: τ from an upper bound η of the share of corrupted labels (1 − the best accuracy on
    the noisy validation split). Two groups per class, clean (share 1 − η, logit +a) and corrupted (η,
    logit −b), with Ω's last BatchNorm's mean 0 and variance ≤ 4 give b ≤ 2 √((1 − η) / η); τ is what
    takes σ(−τ b) down to AUTO_TARGET: logit(1 − AUTO_TARGET) / b, within [1, AUTO_MAX]. τ = 1 (the paper)
    for η ≤ 0.21, 1.5 at η = 0.38, 2.2 at 0.55."""
    eta = min(max(float(noise_bound), 1e-6), 1.0 - 1e-6)
    b = 2.0 * ((1.0 - eta) / eta) ** 0.5
    tau = math.log((1.0 - AUTO_TARGET) / AUTO_TARGET) / b
    return min(max(tau, 1.0), AUTO_MAX)


def coefficients(norm: str, heads: int, terms: LossTerms, w: torch.Tensor, rows: int,
                 head: torch.Tensor) -> torch.Tensor:
    """c_m = dL/dℓ_m = share (M/B) s(w) w_m for weights held constant: L(w) = mean_r rest_r + Σ_m c_m ℓ_m."""
    c = terms.share * (len(w) / rows)
    if w.device.type == "cpu" and norm in ("none", "weight_sum"):  # s(w) a number: on a CPU, read
        # it (no device to wait for) and scale once
        s = 1.0 / len(w) if norm == "none" else 1.0 / max(float(w.sum()), 1e-12)
        return (w * (c * s)).to(terms.loss.dtype)
    return (c * (scale(norm, heads, w, terms.loss.detach(), head) * w)).to(terms.loss.dtype)


def batch_loss(norm: str, heads: int, terms: LossTerms, w: torch.Tensor, rows: int,
               head: torch.Tensor, coef: torch.Tensor | None = None) -> torch.Tensor:
    """L(w) for weights w held constant (the model's loss at this step; `coef` = `coefficients`
    if known)."""
    coef = coefficients(norm, heads, terms, w, rows, head) if coef is None else coef
    weighted = torch.dot(coef, terms.loss)
    return weighted if terms.plain else terms.rest.sum() / rows + weighted
